/** Settings resolve like the CLI's; the User-Agent, the default timeout, the version. */

import assert from "node:assert/strict";
import { cpSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { after, afterEach, before, test } from "node:test";

import { AuthenticationError, Runta, VERSION } from "../src/index.js";
import { RuntaServer, fakeValue, scratchDir } from "./server.js";
import { countingFetch } from "./util.js";

let server: RuntaServer;
before(async () => {
  server = await RuntaServer.start();
});
after(() => server.stop());

const saved = { ...process.env };
const savedCwd = process.cwd();
afterEach(() => {
  process.env = { ...saved };
  process.chdir(savedCwd);
});

/** No RUNTA_* variables and a working directory without ./runta-data. */
function cleanEnv(): string {
  for (const name of Object.keys(process.env)) {
    if (name.startsWith("RUNTA_") && name !== "RUNTA_BIN") delete process.env[name];
  }
  const dir = scratchDir("runta-settings-");
  process.chdir(dir);
  return dir;
}

test("defaults; no credential is refused before any request", async () => {
  cleanEnv();
  const runta = new Runta();
  assert.equal(runta.apiUrl, "http://127.0.0.1:8080");
  await assert.rejects(
    runta.secrets.list(),
    (e: unknown) => e instanceof AuthenticationError && e.status === null && e.code === "no_credential",
  );
  assert.throws(() => new Runta({ apiUrl: "127.0.0.1:8080" }), TypeError);
});

test("options, then the environment, then the data directory", async () => {
  const dir = cleanEnv();
  const { apiKey } = await server.newTenant();
  cpSync(join(server.dataDir, "api-key"), join(dir, "runta-data", "api-key"));
  process.env["RUNTA_API_URL"] = server.url;
  await new Runta().secrets.create("from-data-dir", fakeValue());
  assert.equal((await server.rest("GET", "/v1/secrets/from-data-dir", server.apiKey)).status, 200);

  process.env["RUNTA_API_KEY"] = apiKey;
  await new Runta().secrets.create("from-env", fakeValue());
  assert.equal((await server.rest("GET", "/v1/secrets/from-env", apiKey)).status, 200);
  process.env["RUNTA_API_KEY"] = "runta_ak_wrong";
  await new Runta({ apiKey }).secrets.create("from-option", fakeValue());
  assert.equal((await server.rest("GET", "/v1/secrets/from-option", apiKey)).status, 200);
  await assert.rejects(new Runta().secrets.list(), AuthenticationError);

  delete process.env["RUNTA_API_KEY"];
  process.env["RUNTA_DATA_DIR"] = server.dataDir;
  process.chdir(tmpdir());
  assert.ok((await new Runta().secrets.list()).some((s) => s.name === "from-data-dir"));
  assert.ok((await new Runta().tenants.list()).some((t) => t.name === "default"));
});

test("User-Agent, a timeout by default, version", async () => {
  const counted = countingFetch();
  try {
    await new Runta({ apiUrl: server.url, apiKey: server.apiKey }).secrets.list();
  } finally {
    counted.restore();
  }
  assert.ok(counted.calls[0]!.headers["User-Agent"]!.startsWith(`runta-typescript/${VERSION} `));
  assert.ok(counted.calls[0]!.hasSignal, "a timeout by default");
  const pkg = JSON.parse(
    readFileSync(join(dirname(fileURLToPath(import.meta.url)), "..", "..", "package.json"), "utf8"),
  );
  assert.equal(pkg.version, VERSION);
});
