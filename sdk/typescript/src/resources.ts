/**
 * The resources of a client: `secrets` (and the tenant's rules), a runtime's rules and tokens,
 * tenants, API keys, the audit trail and the interception CA certificate. Each method is one request (or one list, page after
 * page) described by the OpenAPI document's operation named in its comment. Request bodies use
 * the REST (snake_case) field names.
 */

import { InvalidRequestError } from "./errors.js";
import { seg, type Transport } from "./http.js";
import type {
  ApiKey,
  AuditAction,
  AuditEvent,
  AuditTargetKind,
  CreatedApiKey,
  CreatedRuntimeToken,
  CreatedTenant,
  Injection,
  Rule,
  RuleFileEntry,
  RuntimeToken,
  Secret,
  Tenant,
} from "./models.js";

/** Options of list calls. */
export interface ListOptions {
  /** Items per request (1..1000); the server's default is 100. Every page is fetched anyway. */
  pageSize?: number | undefined;
}

export interface CreateSecretOptions {
  /** How long the gateway may keep the decrypted value in memory (server default 300; 0: never). */
  cacheTtlSecs?: number | undefined;
  displayName?: string | undefined;
}

export interface UpdateSecretOptions {
  /** A new value: the secret's version goes up by one. */
  value?: string | undefined;
  /** A new display name; `null` clears it, leaving it out keeps it. */
  displayName?: string | null | undefined;
  cacheTtlSecs?: number | undefined;
}

export interface CreateRuleOptions {
  /** A glob on the request path (`/v1/*`); left out: every path. */
  path?: string | null | undefined;
  injection: Injection;
}

/** Filters of `audit.list`, applied by the server. */
export interface ListAuditEventsOptions extends ListOptions {
  /** Only events at or after this time (a `Date` or an RFC 3339 string). */
  since?: Date | string | undefined;
  /** Only events before this time (a `Date` or an RFC 3339 string). */
  until?: Date | string | undefined;
  action?: AuditAction | undefined;
  targetKind?: AuditTargetKind | undefined;
  /** The target's id (`sec_...`, `rule_...`). */
  targetId?: string | undefined;
  /** Present the operator token and see every tenant's events (else the API key: its tenant's). */
  operator?: boolean | undefined;
}

/** A time filter as RFC 3339; an invalid `Date` is refused before anything is sent. */
function timeFilter(name: string, value: Date | string | undefined): string | undefined {
  if (!(value instanceof Date)) return value;
  if (Number.isNaN(value.getTime())) {
    throw new InvalidRequestError(`${name}: an invalid Date`, { code: "invalid_request" });
  }
  return value.toISOString();
}

/** The tenant's secrets (`runta.secrets`), and its rules tenant-wide. */
export class Secrets {
  readonly #t: Transport;

  constructor(transport: Transport) {
    this.#t = transport;
  }

  /** Stores a secret; resolves to its metadata (never the value). */
  create(name: string, value: string, options: CreateSecretOptions = {}): Promise<Secret> {
    // createSecret
    const body: Record<string, unknown> = { name, value };
    if (options.cacheTtlSecs !== undefined) body["cache_ttl_secs"] = options.cacheTtlSecs;
    if (options.displayName !== undefined) body["display_name"] = options.displayName;
    return this.#t.request("POST", "/v1/secrets", { body });
  }

  get(name: string): Promise<Secret> {
    return this.#t.request("GET", `/v1/secrets/${seg(name)}`); // getSecret
  }

  /** Every secret of the tenant, in creation order. */
  list(options: ListOptions = {}): Promise<Secret[]> {
    return this.#t.collect("/v1/secrets", options.pageSize); // listSecrets
  }

  update(name: string, options: UpdateSecretOptions): Promise<Secret> {
    // updateSecret
    const body: Record<string, unknown> = {};
    if (options.value !== undefined) body["value"] = options.value;
    if (options.displayName !== undefined) body["display_name"] = options.displayName;
    if (options.cacheTtlSecs !== undefined) body["cache_ttl_secs"] = options.cacheTtlSecs;
    return this.#t.request("PUT", `/v1/secrets/${seg(name)}`, { body });
  }

  /** Deletes the secret; a `ConflictError` (`secret_in_use`) while rules still use it. */
  async delete(name: string): Promise<void> {
    await this.#t.request("DELETE", `/v1/secrets/${seg(name)}`); // deleteSecret
  }

  /** Every rule of the tenant, all runtimes. */
  listRules(options: ListOptions = {}): Promise<Rule[]> {
    return this.#t.collect("/v1/rules", options.pageSize); // listRules
  }

  getRule(id: string): Promise<Rule> {
    return this.#t.request("GET", `/v1/rules/${seg(id)}`); // getRule
  }

  /** Creates several rules of any runtimes, all or none, from rule-file entries. */
  async createRules(rules: readonly RuleFileEntry[]): Promise<Rule[]> {
    // createRulesBatch
    if (rules.length === 0)
      throw new InvalidRequestError("rules: give at least one rule", { code: "invalid_request" });
    const page = await this.#t.request<{ data: Rule[] }>("POST", "/v1/rules/batch", { body: { rules } });
    return page.data;
  }
}

/** The injection rules of one runtime (`runta.runtime(name).secrets`). */
export class RuntimeSecrets {
  readonly #t: Transport;
  readonly #runtime: string;

  constructor(transport: Transport, runtime: string) {
    this.#t = transport;
    this.#runtime = runtime;
  }

  /** Adds a rule: this runtime's requests to `host` (a URL is reduced to host and port) and
   * `path` get the injection. */
  async createRule(host: string, options: CreateRuleOptions): Promise<Rule> {
    // createRule
    const { credential, header, param, value } = options.injection;
    if ((header == null) === (param == null)) {
      throw new InvalidRequestError("injection: give exactly one of header and param", {
        code: "invalid_request",
      });
    }
    const injection: Record<string, unknown> = { credential, header: header ?? null, param: param ?? null };
    if (value !== undefined) injection["value"] = value;
    return this.#t.request("POST", `/v1/runtimes/${seg(this.#runtime)}/rules`, {
      body: { host, path: options.path ?? null, injection },
    });
  }

  listRules(options: ListOptions = {}): Promise<Rule[]> {
    return this.#t.collect(`/v1/runtimes/${seg(this.#runtime)}/rules`, options.pageSize); // listRuntimeRules
  }

  async deleteRule(id: string): Promise<void> {
    await this.#t.request("DELETE", `/v1/rules/${seg(id)}`); // deleteRule
  }

  /** Deletes each rule in turn; stops at the first that fails. */
  async deleteRules(...ids: string[]): Promise<void> {
    for (const id of ids) await this.deleteRule(id);
  }
}

/** The egress tokens of one runtime (`runta.runtime(name).tokens`). */
export class RuntimeTokens {
  readonly #t: Transport;
  readonly #runtime: string;

  constructor(transport: Transport, runtime: string) {
    this.#t = transport;
    this.#runtime = runtime;
  }

  /** A new token; its `token` is shown this once. */
  create(): Promise<CreatedRuntimeToken> {
    return this.#t.request("POST", `/v1/runtimes/${seg(this.#runtime)}/tokens`); // createRuntimeToken
  }

  list(options: ListOptions = {}): Promise<RuntimeToken[]> {
    return this.#t.collect(`/v1/runtimes/${seg(this.#runtime)}/tokens`, options.pageSize); // listRuntimeTokens
  }

  /** Revokes the token at once; the record stays, with `revoked_at`. */
  async revoke(id: string): Promise<void> {
    await this.#t.request("DELETE", `/v1/runtime-tokens/${seg(id)}`); // revokeRuntimeToken
  }
}

/** A handle on one runtime: its rules and tokens. Making one sends nothing. */
export class Runtime {
  readonly name: string;
  readonly secrets: RuntimeSecrets;
  readonly tokens: RuntimeTokens;

  constructor(transport: Transport, name: string) {
    this.name = name;
    this.secrets = new RuntimeSecrets(transport, name);
    this.tokens = new RuntimeTokens(transport, name);
  }
}

/** Tenant management; needs the operator token, not an API key. */
export class Tenants {
  readonly #t: Transport;

  constructor(transport: Transport) {
    this.#t = transport;
  }

  /** A new tenant and its first API key (`api_key`, shown this once). */
  create(name: string): Promise<CreatedTenant> {
    return this.#t.request("POST", "/v1/tenants", { body: { name }, auth: "operator" }); // createTenant
  }

  list(options: ListOptions = {}): Promise<Tenant[]> {
    return this.#t.collect("/v1/tenants", options.pageSize, "operator"); // listTenants
  }
}

/** The API keys of the caller's tenant. */
export class ApiKeys {
  readonly #t: Transport;

  constructor(transport: Transport) {
    this.#t = transport;
  }

  /** A new key; its `key` is shown this once. */
  create(options: { name?: string | undefined } = {}): Promise<CreatedApiKey> {
    const body = options.name === undefined ? {} : { name: options.name };
    return this.#t.request("POST", "/v1/api-keys", { body }); // createApiKey
  }

  list(options: ListOptions = {}): Promise<ApiKey[]> {
    return this.#t.collect("/v1/api-keys", options.pageSize); // listApiKeys
  }

  /** Deletes a key; a `ConflictError` (`last_api_key`) for the tenant's last one. */
  async delete(id: string): Promise<void> {
    await this.#t.request("DELETE", `/v1/api-keys/${seg(id)}`); // deleteApiKey
  }
}

/** The audit trail of admin changes (`runta.audit`). */
export class Audit {
  readonly #t: Transport;

  constructor(transport: Transport) {
    this.#t = transport;
  }

  /** Every matching event, in `seq` order, fetching page after page. */
  async list(options: ListAuditEventsOptions = {}): Promise<AuditEvent[]> {
    // listAuditEvents
    const filters = {
      since: timeFilter("since", options.since),
      until: timeFilter("until", options.until),
      action: options.action,
      target_kind: options.targetKind,
      target_id: options.targetId,
    };
    return this.#t.collect(
      "/v1/audit-events",
      options.pageSize,
      options.operator ? "operator" : "apiKey",
      filters,
    );
  }
}

/** The server's HTTPS interception CA certificate, PEM (`runta.caCertificate()`). Public: no
 * credential is read or sent. A `NotFoundError` (`interception_disabled`) when the server has no
 * CA. */
export function getCaCertificate(transport: Transport): Promise<string> {
  return transport.request("GET", "/v1/ca.pem", { auth: "none", text: "application/x-pem-file" }); // getCaCertificate
}
