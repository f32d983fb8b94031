/**
 * A real `runta serve` for the tests: started on free ports in a temporary data directory,
 * stopped (and restartable on the same port, with the same data) by the test that owns it.
 *
 * The binary is `$RUNTA_BIN`, else the repository's `target/debug/runta`. Without it the tests
 * fail: this suite exists to run against the real server.
 */

import { spawn, type ChildProcess } from "node:child_process";
import { randomUUID } from "node:crypto";
import {
  accessSync,
  constants,
  closeSync,
  mkdtempSync,
  openSync,
  readFileSync,
  rmSync,
  statSync,
} from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

const HERE = dirname(fileURLToPath(import.meta.url));
/** sdk/typescript/.test-build/test -> the repository root. */
const REPO = resolve(HERE, "..", "..", "..", "..");
const LISTENING = /admin API listening on http:\/\/127\.0\.0\.1:(\d+)/;

export function runtaBin(): string {
  const path = process.env["RUNTA_BIN"] || join(REPO, "target", "debug", "runta");
  try {
    accessSync(path, constants.X_OK);
  } catch {
    throw new Error(`no runta binary at ${path}: build it (cargo build) or set RUNTA_BIN`);
  }
  return path;
}

/** Obviously fake secret values: never shaped like a real provider key. */
export const fakeValue = (label = randomUUID().slice(0, 8)): string => `sk-test-not-real-${label}`;

const running = new Set<ChildProcess>();
const scratch = new Set<string>();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
  for (const dir of scratch) rmSync(dir, { recursive: true, force: true });
});

/** A fresh temporary directory, removed when the test process exits. */
export function scratchDir(prefix: string): string {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  scratch.add(dir);
  return dir;
}

export interface RestAnswer {
  status: number;
  body: any;
}

export class RuntaServer {
  readonly dataDir: string;
  readonly logPath: string;
  port = 0;
  #child: ChildProcess | undefined;

  constructor() {
    const root = scratchDir("runta-sdk-ts-");
    this.dataDir = join(root, "data");
    this.logPath = join(root, "serve.log");
  }

  static async start(): Promise<RuntaServer> {
    return new RuntaServer().start();
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get apiKey(): string {
    return readFileSync(join(this.dataDir, "api-key"), "utf8").trim();
  }

  get operatorToken(): string {
    return readFileSync(join(this.dataDir, "operator-token"), "utf8").trim();
  }

  /** Starts the server, on `port` if given (a restart), else on a free port. */
  async start(port?: number): Promise<this> {
    let offset = 0;
    try {
      offset = statSync(this.logPath).size;
    } catch {
      // first start
    }
    const log = openSync(this.logPath, "a");
    const child = spawn(
      runtaBin(),
      [
        "serve",
        "--data-dir",
        this.dataDir,
        "--admin-listen",
        `127.0.0.1:${port ?? 0}`,
        "--grpc-listen",
        "127.0.0.1:0",
      ],
      { stdio: ["ignore", log, log] },
    );
    closeSync(log);
    running.add(child);
    this.#child = child;
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const found = LISTENING.exec(readFileSync(this.logPath).subarray(offset).toString("utf8"));
      if (found?.[1]) {
        this.port = Number(found[1]);
        return this;
      }
      if (child.exitCode !== null) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    await this.stop();
    throw new Error(`runta serve did not start; its log:\n${this.logText().slice(-4000)}`);
  }

  async stop(): Promise<void> {
    const child = this.#child;
    this.#child = undefined;
    if (!child) return;
    running.delete(child);
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = new Promise<void>((r) => child.once("exit", () => r()));
    child.kill("SIGCONT");
    child.kill("SIGTERM");
    const timer = setTimeout(() => child.kill("SIGKILL"), 10_000);
    await exited;
    clearTimeout(timer);
  }

  /** SIGSTOP: the port still accepts connections but nothing answers (a hung server). */
  pause(): void {
    this.#child?.kill("SIGSTOP");
  }

  resume(): void {
    this.#child?.kill("SIGCONT");
  }

  logText(): string {
    try {
      return readFileSync(this.logPath, "utf8");
    } catch {
      return "";
    }
  }

  /** A plain HTTP call, independent of the SDK: how the tests check what the SDK did. */
  async rest(method: string, path: string, key: string, body?: unknown): Promise<RestAnswer> {
    const init: RequestInit = {
      method,
      headers: { Authorization: `Bearer ${key}`, "Content-Type": "application/json" },
    };
    if (body !== undefined) init.body = JSON.stringify(body);
    const response = await fetch(this.url + path, init);
    const text = await response.text();
    return { status: response.status, body: text ? JSON.parse(text) : undefined };
  }

  /** A fresh tenant (through the operator token), so tests cannot see each other's data. */
  async newTenant(): Promise<{ name: string; apiKey: string }> {
    const name = `t-${randomUUID().slice(0, 12)}`;
    const { status, body } = await this.rest("POST", "/v1/tenants", this.operatorToken, { name });
    if (status !== 201) throw new Error(`creating a tenant: ${status} ${JSON.stringify(body)}`);
    return { name, apiKey: body.api_key };
  }
}
