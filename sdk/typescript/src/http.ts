/**
 * Sending calls with the global `fetch`: credentials, a timeout per attempt, the User-Agent,
 * retries, error mapping and pagination.
 *
 * Retries: only idempotent calls (GET, PUT, DELETE) are retried, on connection failures and on
 * 503, with exponential backoff and jitter. A POST is never retried: it may have been applied
 * before the connection broke, and a retry could create a second secret, rule or token.
 *
 * `fetch` is looked up on `globalThis` at call time, so a runtime's own (or an instrumented) one
 * is used. Nothing here logs; error messages name the method, path and failure, never a body.
 */

import {
  APIConnectionError,
  APITimeoutError,
  InvalidRequestError,
  RuntaError,
  errorFromResponse,
} from "./errors.js";
import type { Settings } from "./settings.js";
import { VERSION } from "./version.js";

export const DEFAULT_TIMEOUT_MS = 30_000;
export const DEFAULT_MAX_RETRIES = 3;
const BASE_DELAY_MS = 500;
const MAX_DELAY_MS = 8_000;
const IDEMPOTENT = new Set(["GET", "PUT", "DELETE"]);

/** Which credential a call presents; `"none"`: the endpoint is public, nothing is read or sent. */
export type Auth = "apiKey" | "operator" | "none";
export type Method = "GET" | "POST" | "PUT" | "DELETE";

export interface RequestOptions {
  body?: unknown;
  query?: Record<string, string | undefined>;
  auth?: Auth;
  /** The media type of an answer that is text, not JSON: the call resolves to the text as it
   * came. Error answers are JSON either way. */
  text?: string;
}

const userAgent = (): string => {
  const node = typeof process === "undefined" ? "unknown" : process.version;
  return `runta-typescript/${VERSION} (node ${node})`;
};

/** A percent-encoded path segment: a name or id can never change the route. */
export const seg = (value: string): string => encodeURIComponent(value);

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

interface Page<T> {
  data?: T[];
  next_cursor?: string | null;
}

export class Transport {
  readonly #settings: Settings;
  readonly #timeoutMs: number;
  readonly #maxRetries: number;

  constructor(settings: Settings, timeoutMs: number, maxRetries: number) {
    if (!(timeoutMs > 0)) throw new TypeError("timeoutMs must be a positive number");
    if (!(Number.isInteger(maxRetries) && maxRetries >= 0)) {
      throw new TypeError("maxRetries must be an integer, 0 or more");
    }
    this.#settings = settings;
    this.#timeoutMs = timeoutMs;
    this.#maxRetries = maxRetries;
  }

  get apiUrl(): string {
    return this.#settings.apiUrl;
  }

  /** Sends one call; resolves to its JSON answer (`undefined` for 204), or its text for a
   * `text` call. */
  async request<T>(method: Method, path: string, options: RequestOptions = {}): Promise<T> {
    const auth = options.auth ?? "apiKey";
    const headers: Record<string, string> = {
      "User-Agent": userAgent(),
      Accept: options.text === undefined ? "application/json" : `${options.text}, application/json`,
    };
    if (auth !== "none") {
      const credential = (auth === "apiKey" ? this.#settings.apiKey : this.#settings.operatorToken).get();
      headers["Authorization"] = `Bearer ${credential}`;
    }
    let body: string | undefined;
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(options.body);
    }
    const url = this.#url(path, options.query);
    for (let retries = 0; ; retries++) {
      const mayRetry = IDEMPOTENT.has(method) && retries < this.#maxRetries;
      let response: Response;
      let text: string;
      try {
        const init: RequestInit = { method, headers, signal: AbortSignal.timeout(this.#timeoutMs) };
        if (body !== undefined) init.body = body;
        response = await globalThis.fetch(url, init);
        text = await response.text();
      } catch (error) {
        const failure = this.#classify(error, method, path);
        if (failure instanceof APIConnectionError && isNetworkFailure(error) && mayRetry) {
          await sleep(backoff(retries));
          continue;
        }
        throw failure;
      }
      if (response.status === 503 && mayRetry) {
        await sleep(backoff(retries));
        continue;
      }
      if (response.ok && options.text !== undefined) return text as T;
      return read<T>(response, text, method, path);
    }
  }

  /** Sends a list call page after page (`?limit=&cursor=`, plus `filters`) until `next_cursor`
   * is null. */
  async collect<T>(
    path: string,
    pageSize?: number,
    auth: Auth = "apiKey",
    filters: Record<string, string | undefined> = {},
  ): Promise<T[]> {
    if (pageSize !== undefined && !(Number.isInteger(pageSize) && pageSize >= 1 && pageSize <= 1000)) {
      throw new InvalidRequestError("pageSize: must be an integer from 1 to 1000", {
        code: "invalid_request",
      });
    }
    const items: T[] = [];
    let cursor: string | undefined;
    for (;;) {
      const query = { ...filters, limit: pageSize === undefined ? undefined : String(pageSize), cursor };
      const page = await this.request<Page<T>>("GET", path, { query, auth });
      items.push(...(page.data ?? []));
      if (!page.next_cursor) return items;
      cursor = page.next_cursor;
    }
  }

  #url(path: string, query: Record<string, string | undefined> = {}): string {
    const params = new URLSearchParams();
    for (const [key, value] of Object.entries(query)) {
      if (value !== undefined) params.set(key, value);
    }
    const search = params.toString();
    return `${this.#settings.apiUrl}${path}${search ? `?${search}` : ""}`;
  }

  /** The error for a failed attempt, built from the failure's kind, never from the request. */
  #classify(error: unknown, method: string, path: string): RuntaError {
    const where = this.#settings.apiUrl;
    if (error instanceof Error && (error.name === "TimeoutError" || error.name === "AbortError")) {
      return new APITimeoutError(
        `${method} ${path}: the runta server at ${where} did not answer within ${this.#timeoutMs} ms`,
        { code: "timeout" },
      );
    }
    return new APIConnectionError(
      `${method} ${path}: cannot reach the runta server at ${where}: ${describe(error)}`,
      { code: "connection_failed" },
    );
  }
}

/** A failure of the connection itself (refused, reset, closed early): undici's "fetch failed"
 * TypeError with the system error as its cause. Anything else would fail again. */
function isNetworkFailure(error: unknown): boolean {
  return error instanceof TypeError && error.cause !== undefined;
}

/** Exponential backoff with jitter: half the ceiling plus up to half again. */
function backoff(retriesDone: number): number {
  const ceiling = Math.min(MAX_DELAY_MS, BASE_DELAY_MS * 2 ** retriesDone);
  return ceiling / 2 + Math.random() * (ceiling / 2);
}

/** What went wrong with the connection: undici puts the system error (ECONNREFUSED, ...) in
 * `cause`. Without one, only the error's name: its message may quote the request. */
function describe(error: unknown): string {
  if (!(error instanceof Error)) return "unknown error";
  const cause = error.cause as { code?: unknown; message?: unknown } | undefined;
  if (cause && typeof cause.code === "string") return cause.code;
  if (cause && typeof cause.message === "string") return cause.message;
  return `the request could not be sent (${error.name})`;
}

function read<T>(response: Response, text: string, method: string, path: string): T {
  if (!response.ok) throw errorFromResponse(response.status, response.statusText, text);
  if (response.status === 204 || text === "") return undefined as T;
  try {
    return JSON.parse(text) as T;
  } catch {
    throw new RuntaError(`${method} ${path}: the server answered with something that is not JSON`, {
      status: response.status,
      code: "invalid_response",
    });
  }
}
