/**
 * Where the server is and which credentials to present, resolved as the `runta` CLI does it, so
 * code works wherever the CLI does: options, then `RUNTA_API_URL` / `RUNTA_API_KEY` /
 * `RUNTA_OPERATOR_TOKEN`, then the files `runta serve` writes into its data directory
 * (`RUNTA_DATA_DIR`, default `./runta-data`) and `http://127.0.0.1:8080`.
 *
 * Credential files are read when a call first needs one, not at construction.
 */

import { readFileSync } from "node:fs";
import { join } from "node:path";

import { AuthenticationError } from "./errors.js";

export const DEFAULT_API_URL = "http://127.0.0.1:8080";
const DEFAULT_DATA_DIR = "./runta-data";

function env(name: string): string | undefined {
  const value = typeof process === "undefined" ? undefined : process.env[name];
  return value === "" ? undefined : value;
}

/**
 * A bearer credential. It lives in a private field, so neither `util.inspect` nor
 * `JSON.stringify` of a client shows it, and neither does any error about it: a credential that
 * could not go into a header (whitespace or control characters inside, non-ASCII) is refused
 * here, before `fetch` could quote it in its own error.
 */
export class Credential {
  #value: string | undefined;
  #source = "";
  readonly #envName: string;
  readonly #path: string;
  readonly #option: string;

  constructor(given: string | undefined, envName: string, path: string, option: string) {
    this.#envName = envName;
    this.#path = path;
    this.#option = option;
    if (given) {
      this.#value = given;
      this.#source = `the ${option} option`;
    } else if (env(envName) !== undefined) {
      this.#value = env(envName);
      this.#source = envName;
    }
  }

  /** The credential; throws {@link AuthenticationError} (before any request) when there is none
   * or it cannot be sent. */
  get(): string {
    if (this.#value === undefined) {
      try {
        this.#value = readFileSync(this.#path, "utf8");
      } catch {
        this.#value = "";
      }
      this.#source = this.#path;
    }
    const value = this.#value.trim();
    if (!value) {
      throw new AuthenticationError(
        `no credential: pass ${this.#option}, set ${this.#envName}, or run where \`runta serve\` ` +
          `keeps its data directory (${this.#path} not found)`,
        { code: "no_credential" },
      );
    }
    if (!/^[\x21-\x7e]+$/.test(value)) {
      throw new AuthenticationError(
        `the credential from ${this.#source} holds whitespace, control or non-ASCII characters; ` +
          "it is not a runta key or token",
        { code: "invalid_credential" },
      );
    }
    return value;
  }
}

export interface Settings {
  apiUrl: string;
  apiKey: Credential;
  operatorToken: Credential;
}

export function resolveSettings(apiUrl?: string, apiKey?: string, operatorToken?: string): Settings {
  const url = apiUrl || env("RUNTA_API_URL") || DEFAULT_API_URL;
  if (!/^https?:\/\//.test(url)) {
    throw new TypeError(`apiUrl '${url}' must start with http:// or https://`);
  }
  const dataDir = env("RUNTA_DATA_DIR") ?? DEFAULT_DATA_DIR;
  return {
    apiUrl: url.replace(/\/+$/, ""),
    apiKey: new Credential(apiKey, "RUNTA_API_KEY", join(dataDir, "api-key"), "apiKey"),
    operatorToken: new Credential(
      operatorToken,
      "RUNTA_OPERATOR_TOKEN",
      join(dataDir, "operator-token"),
      "operatorToken",
    ),
  };
}
