/**
 * The HTTPS interception CA certificate (`GET /v1/ca.pem`): public, so it needs no key, and the
 * PEM text comes back as the server sent it. The 404 of a server without a CA (a PostgreSQL
 * deployment without `interception.ca_cert_file`) comes from a stub answering exactly what runta
 * answers: the embedded default always has a CA.
 */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createServer, type Server } from "node:http";
import type { AddressInfo } from "node:net";
import { join } from "node:path";
import { after, afterEach, before, test } from "node:test";

import { AuthenticationError, NotFoundError, Runta, RuntaError } from "../src/index.js";
import { RuntaServer, scratchDir } from "./server.js";
import { countingFetch } from "./util.js";

const BEGIN = "-----BEGIN CERTIFICATE-----";
const NO_CA_MESSAGE =
  "this server has no HTTPS interception CA (interception.ca_cert_file is not configured)";

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

/** No RUNTA_* variables and a working directory without ./runta-data: no key anywhere. */
function keyless(): void {
  for (const name of Object.keys(process.env)) {
    if (name.startsWith("RUNTA_") && name !== "RUNTA_BIN") delete process.env[name];
  }
  process.chdir(scratchDir("runta-ca-"));
}

/** The CA the embedded default generated into its data directory. */
const servedCa = (): string => readFileSync(join(server.dataDir, "ca.pem"), "utf8").trim();

test("the PEM, without a key and without sending one", async () => {
  keyless();
  const runta = new Runta({ apiUrl: server.url });
  const { calls, restore } = countingFetch();
  let pem: string;
  try {
    pem = await runta.caCertificate();
  } finally {
    restore();
  }
  assert.ok(pem.startsWith(BEGIN), pem);
  assert.ok(pem.trim().endsWith("-----END CERTIFICATE-----"));
  assert.equal(pem.trim(), servedCa());
  assert.equal(calls.length, 1);
  const [call] = calls;
  assert.deepEqual([call!.method, new URL(call!.url).pathname], ["GET", "/v1/ca.pem"]);
  assert.equal(call!.headers["Authorization"], undefined);
  assert.equal(call!.headers["Accept"], "application/x-pem-file, application/json");
  // Without a key, a keyed call is still refused before sending.
  await assert.rejects(runta.secrets.list(), AuthenticationError);
});

test("a client with a key gets the same", async () => {
  const { apiKey } = await server.newTenant();
  const runta = new Runta({ apiUrl: server.url, apiKey });
  assert.equal((await runta.caCertificate()).trim(), servedCa());
});

test("404 interception_disabled from a server without a CA", async () => {
  keyless();
  const stub: Server = createServer((_request, response) => {
    const body = JSON.stringify({ error: { code: "interception_disabled", message: NO_CA_MESSAGE } });
    response.writeHead(404, { "Content-Type": "application/json" }).end(body);
  });
  await new Promise<void>((resolve) => stub.listen(0, "127.0.0.1", resolve));
  try {
    const { port } = stub.address() as AddressInfo;
    const runta = new Runta({ apiUrl: `http://127.0.0.1:${port}` });
    await assert.rejects(runta.caCertificate(), (e: unknown) => {
      assert.ok(e instanceof NotFoundError && e instanceof RuntaError);
      assert.deepEqual([e.status, e.code, e.message], [404, "interception_disabled", NO_CA_MESSAGE]);
      return true;
    });
  } finally {
    await new Promise<void>((resolve) => stub.close(() => resolve()));
  }
});
