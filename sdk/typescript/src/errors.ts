/**
 * Errors thrown by the SDK. Every failure is a {@link RuntaError} with the server's `status`,
 * `code` and `message` (the admin API answers `{"error": {"code", "message"}}`), so one
 * `instanceof` check catches all; subclasses sort them by what the caller does about it.
 *
 * The server never quotes a secret value in a message, and the SDK builds its own messages from
 * the method, the path and the failure's kind only: no error carries a value that was sent.
 */

export interface RuntaErrorOptions {
  /** The HTTP status; `null` when no answer came or the SDK refused the request itself. */
  status?: number | null | undefined;
  code?: string | undefined;
}

export class RuntaError extends Error {
  /** The HTTP status, or `null` when there was no answer (connection failure, timeout) or the
   * request was refused before it was sent. */
  readonly status: number | null;
  /** The server's error code (`not_found`, `secret_in_use`, ...) or the SDK's own
   * (`connection_failed`, `timeout`, `no_credential`). */
  readonly code: string;

  constructor(message: string, options: RuntaErrorOptions = {}) {
    super(message);
    this.name = new.target.name;
    this.status = options.status ?? null;
    this.code = options.code ?? "error";
  }
}

/** 400 (the message names the field), 405 or 413; also thrown before sending a request the SDK
 * can tell is invalid, such as an injection with both `header` and `param`. */
export class InvalidRequestError extends RuntaError {}
/** 401: missing or invalid API key or operator token. */
export class AuthenticationError extends RuntaError {}
/** 403: a valid credential that may not make this call (an API key managing tenants). */
export class PermissionDeniedError extends RuntaError {}
/** 404: no such secret, rule, token or key in the caller's tenant. */
export class NotFoundError extends RuntaError {}
/** 409: already exists, still in use (a secret rules use), or changed concurrently. */
export class ConflictError extends RuntaError {}
/** 503 (database unavailable), 502/504 from a proxy, or no answer at all (the subclasses).
 * Idempotent calls have been retried before this is thrown. */
export class UnavailableError extends RuntaError {}
/** The server could not be reached: connection refused, reset or closed early. */
export class APIConnectionError extends UnavailableError {}
/** The server did not answer within `timeoutMs`. */
export class APITimeoutError extends UnavailableError {}

const BY_STATUS: Record<number, typeof RuntaError> = {
  400: InvalidRequestError,
  405: InvalidRequestError,
  413: InvalidRequestError,
  422: InvalidRequestError,
  401: AuthenticationError,
  403: PermissionDeniedError,
  404: NotFoundError,
  409: ConflictError,
  502: UnavailableError,
  503: UnavailableError,
  504: UnavailableError,
};

/** The error for a non-2xx answer: the server's code and message when the body has the API's
 * error shape, else the status line (a proxy's HTML page is not worth quoting). */
export function errorFromResponse(status: number, statusText: string, body: string): RuntaError {
  let code = "http_error";
  let message = `HTTP ${status} ${statusText}`.trim();
  try {
    const parsed: unknown = JSON.parse(body);
    const detail = isObject(parsed) ? parsed["error"] : undefined;
    if (isObject(detail)) {
      if (typeof detail["code"] === "string") code = detail["code"];
      if (typeof detail["message"] === "string") message = detail["message"];
    }
  } catch {
    // not JSON: keep the status line
  }
  const Class = BY_STATUS[status] ?? RuntaError;
  return new Class(message, { status, code });
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}
