/**
 * TypeScript SDK of runta egress: store secrets, attach injection rules to runtimes and issue
 * runtime tokens through the admin REST API. Node 18 or later; no dependencies (global `fetch`).
 *
 * ```ts
 * import { Runta } from "runta";
 * const runta = new Runta(); // RUNTA_API_URL, RUNTA_API_KEY
 * await runta.secrets.create("openai-api-key", process.env.OPENAI_API_KEY!, { cacheTtlSecs: 0 });
 * ```
 */

export { Runta, type RuntaOptions } from "./client.js";
export {
  ApiKeys,
  Audit,
  Runtime,
  RuntimeSecrets,
  RuntimeTokens,
  Secrets,
  Tenants,
  type CreateRuleOptions,
  type CreateSecretOptions,
  type ListAuditEventsOptions,
  type ListOptions,
  type UpdateSecretOptions,
} from "./resources.js";
export type {
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
  RuleInjection,
  RuntimeToken,
  Secret,
  Tenant,
} from "./models.js";
export {
  APIConnectionError,
  APITimeoutError,
  AuthenticationError,
  ConflictError,
  InvalidRequestError,
  NotFoundError,
  PermissionDeniedError,
  RuntaError,
  UnavailableError,
  type RuntaErrorOptions,
} from "./errors.js";
export { VERSION } from "./version.js";
