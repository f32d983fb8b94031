/**
 * Retries against a real server that is stopped and started again on the same port, with the
 * same data directory, while the client is retrying. Only idempotent calls are retried; a POST
 * fails at once after exactly one attempt.
 */

import assert from "node:assert/strict";
import { afterEach, beforeEach, test } from "node:test";

import { APIConnectionError, Runta, UnavailableError } from "../src/index.js";
import { RuntaServer, fakeValue } from "./server.js";
import { countingFetch } from "./util.js";

let server: RuntaServer;
let counted: ReturnType<typeof countingFetch>;
beforeEach(async () => {
  server = await RuntaServer.start();
  counted = countingFetch();
});
afterEach(async () => {
  counted.restore();
  await server.stop();
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const idempotent: [string, (runta: Runta) => Promise<unknown>][] = [
  ["GET", (runta) => runta.secrets.get("kept")],
  ["PUT", (runta) => runta.secrets.update("kept", { cacheTtlSecs: 42 })],
  ["DELETE", (runta) => runta.secrets.delete("kept")],
  ["GET audit", (runta) => runta.audit.list({ action: "secret.create", targetKind: "secret" })],
];

for (const [label, call] of idempotent) {
  const method = label.split(" ")[0]!;
  test(`${label} survives a restart of the server`, async () => {
    const runta = new Runta({ apiUrl: server.url, apiKey: server.apiKey, maxRetries: 8 });
    await runta.secrets.create("kept", fakeValue());
    const port = server.port;
    await server.stop();
    counted.calls.length = 0;
    const restarted = sleep(600).then(() => server.start(port));
    await call(runta);
    await restarted;
    assert.ok(counted.calls.length >= 2, `${counted.calls.length} attempts`);
    assert.ok(counted.calls.every((c) => c.method === method));
    const rest = await server.rest("GET", "/v1/secrets/kept", server.apiKey);
    if (method === "DELETE") assert.equal(rest.status, 404);
    if (method === "PUT") assert.equal(rest.body.cache_ttl_secs, 42);
  });
}

test("POST is never retried", async () => {
  const runta = new Runta({ apiUrl: server.url, apiKey: server.apiKey, maxRetries: 8 });
  const port = server.port;
  await server.stop();
  counted.calls.length = 0;
  const started = Date.now();
  await assert.rejects(runta.secrets.create("once", fakeValue()), APIConnectionError);
  assert.deepEqual(
    counted.calls.map((c) => c.method),
    ["POST"],
  );
  assert.ok(Date.now() - started < 1000);
  await server.start(port);
  assert.deepEqual(await runta.secrets.list(), []);
});

test("retries give up after maxRetries", async () => {
  const runta = new Runta({ apiUrl: server.url, apiKey: server.apiKey, maxRetries: 2 });
  await server.stop();
  counted.calls.length = 0;
  await assert.rejects(runta.secrets.list(), UnavailableError);
  assert.deepEqual(
    counted.calls.map((c) => c.method),
    ["GET", "GET", "GET"],
  );
});
