/** The client, {@link Runta}: settings, then the resources over one transport. */

import { DEFAULT_MAX_RETRIES, DEFAULT_TIMEOUT_MS, Transport } from "./http.js";
import { ApiKeys, Audit, Runtime, Secrets, Tenants, getCaCertificate } from "./resources.js";
import { resolveSettings } from "./settings.js";

export interface RuntaOptions {
  /** The admin API's URL; else `RUNTA_API_URL`, else `http://127.0.0.1:8080`. */
  apiUrl?: string | undefined;
  /** A tenant API key; else `RUNTA_API_KEY`, else `./runta-data/api-key`. */
  apiKey?: string | undefined;
  /** The operator token, for tenant calls and `audit.list({ operator: true })`; else `RUNTA_OPERATOR_TOKEN`, else
   * `./runta-data/operator-token`. */
  operatorToken?: string | undefined;
  /** Per attempt; default 30 000. */
  timeoutMs?: number | undefined;
  /** Retries of idempotent calls (GET, PUT, DELETE) on connection failures and 503; default 3. */
  maxRetries?: number | undefined;
}

/**
 * A client of the runta admin API. Settings resolve like the CLI's: options, then
 * `RUNTA_API_URL` / `RUNTA_API_KEY`, then the data directory `runta serve` writes
 * (`./runta-data`, or `RUNTA_DATA_DIR`).
 */
export class Runta {
  readonly secrets: Secrets;
  readonly tenants: Tenants;
  readonly apiKeys: ApiKeys;
  readonly audit: Audit;
  readonly #transport: Transport;

  constructor(options: RuntaOptions = {}) {
    const settings = resolveSettings(options.apiUrl, options.apiKey, options.operatorToken);
    this.#transport = new Transport(
      settings,
      options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      options.maxRetries ?? DEFAULT_MAX_RETRIES,
    );
    this.secrets = new Secrets(this.#transport);
    this.tenants = new Tenants(this.#transport);
    this.apiKeys = new ApiKeys(this.#transport);
    this.audit = new Audit(this.#transport);
  }

  get apiUrl(): string {
    return this.#transport.apiUrl;
  }

  /** A handle on the runtime `name` (nothing is sent until a call is made). */
  runtime(name: string): Runtime {
    return new Runtime(this.#transport, name);
  }

  /** The server's HTTPS interception CA certificate (PEM text), for runtimes to trust. Public:
   * no API key is read or sent. A `NotFoundError` (`interception_disabled`) when the server has
   * no CA. */
  caCertificate(): Promise<string> {
    return getCaCertificate(this.#transport);
  }
}
