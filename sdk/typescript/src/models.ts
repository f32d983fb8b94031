/**
 * What the admin API answers, typed with the REST field names (`host_pattern`,
 * `cache_ttl_secs`), exactly as the OpenAPI document and the CLI's JSON output spell them. Results
 * are the server's JSON objects, so `console.log(rule)` shows what the API sent. Timestamps are
 * RFC 3339 strings in UTC.
 */

/** A secret's metadata. The API never returns the value. */
export interface Secret {
  id: string;
  name: string;
  display_name: string | null;
  /** Seconds the gateway may keep the decrypted value in memory; 0 reads it for every request. */
  cache_ttl_secs: number;
  /** 1 on creation, + 1 with every new value. */
  version: number;
  created_at: string;
  updated_at: string;
}

/** A stored rule's injection: exactly one of `header` and `param` is set. */
export interface RuleInjection {
  credential: string;
  header: string | null;
  param: string | null;
  /** The injected value; `${credential}` stands for the secret's value. */
  value: string;
}

/** An injection rule of one runtime, with its patterns in stored normal form. */
export interface Rule {
  id: string;
  runtime: string;
  /** `api.openai.com`, `*.example.com`, optionally with `:port`. */
  host_pattern: string;
  /** A glob on the path (`*` matches any run of characters), or null: every path. */
  path_pattern: string | null;
  injection: RuleInjection;
  created_at: string;
}

export interface RuntimeToken {
  id: string;
  runtime: string;
  created_at: string;
  revoked_at: string | null;
}

/** A new runtime token; `token` is shown this once. */
export interface CreatedRuntimeToken extends RuntimeToken {
  token: string;
}

export interface Tenant {
  id: string;
  name: string;
  created_at: string;
}

/** A new tenant and its first API key, shown this once. */
export interface CreatedTenant {
  tenant: Tenant;
  api_key: string;
}

export interface ApiKey {
  id: string;
  name: string | null;
  created_at: string;
}

/** A new API key; `key` is shown this once. */
export interface CreatedApiKey extends ApiKey {
  key: string;
}

/** What a change did (`secret.update_value`: a new value, maybe with new metadata;
 * `secret.update_metadata`: the display name or cache TTL only). */
export type AuditAction =
  | "tenant.create"
  | "api_key.create"
  | "api_key.delete"
  | "secret.create"
  | "secret.update_value"
  | "secret.update_metadata"
  | "secret.delete"
  | "rule.create"
  | "rule.batch_create"
  | "rule.delete"
  | "runtime_token.create"
  | "runtime_token.revoke"
  | "keys.rotate";

export type AuditTargetKind = "tenant" | "api_key" | "secret" | "rule" | "runtime_token" | "encryption_key";

/** One recorded admin change. Never holds a secret value, an API key or a token. */
export interface AuditEvent {
  id: string;
  /** The event's place in the hash chain: 1, 2, 3, ... without gaps. */
  seq: number;
  time: string;
  /** Null for a key rotation (no tenant's). */
  tenant_id: string | null;
  /** The API key's id (`key_...`), `operator`, `cli` (`runta keys rotate`) or `server`. */
  actor: string;
  action: AuditAction;
  target_kind: AuditTargetKind;
  /** The target's id (a batch's, comma-separated); null where the request named it by name. */
  target_id: string | null;
  target_name: string | null;
  /** The `x-request-id` of the request that made the change; null outside the API. */
  request_id: string | null;
  /** `failed`: a key rotation that could not re-seal some secrets. */
  outcome: "ok" | "failed";
  prev_hash: string;
  hash: string;
}

interface InjectionBase {
  /** The name of the secret to inject. */
  credential: string;
  /** The injected value, default `${credential}` (the secret's value). */
  value?: string | undefined;
}

/** What a new rule injects: a header or a query parameter, exactly one (checked at compile
 * time here, and again before any request). */
export type Injection =
  | (InjectionBase & { header: string; param?: null | undefined })
  | (InjectionBase & { param: string; header?: null | undefined });

/** One entry of a rule file (`rules:` in YAML), the shape of `POST /v1/rules/batch`. */
export interface RuleFileEntry {
  runtime: string;
  host: string;
  path?: string | null | undefined;
  credential: string;
  inject: {
    header?: string | null | undefined;
    param?: string | null | undefined;
    value?: string | null | undefined;
  };
}
