/** Every class of error, from the real server (and from no server at all). */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import {
  APIConnectionError,
  APITimeoutError,
  AuthenticationError,
  ConflictError,
  InvalidRequestError,
  NotFoundError,
  Runta,
  RuntaError,
  UnavailableError,
} from "../src/index.js";
import { RuntaServer, fakeValue } from "./server.js";

let server: RuntaServer;
before(async () => {
  server = await RuntaServer.start();
});
after(() => server.stop());

async function tenantClient(): Promise<Runta> {
  const { apiKey } = await server.newTenant();
  return new Runta({ apiUrl: server.url, apiKey });
}

test("404 not found", async () => {
  const runta = await tenantClient();
  await assert.rejects(runta.secrets.get("missing"), (e: unknown) => {
    assert.ok(e instanceof NotFoundError && e instanceof RuntaError);
    assert.deepEqual([e.status, e.code, e.name], [404, "not_found", "NotFoundError"]);
    assert.match(e.message, /missing/);
    return true;
  });
  await assert.rejects(runta.runtime("worker").secrets.deleteRule("rule_missing"), NotFoundError);
});

test("409 conflict: a secret rules still use, and a duplicate", async () => {
  const runta = await tenantClient();
  await runta.secrets.create("openai-api-key", fakeValue());
  const rule = await runta.runtime("worker").secrets.createRule("api.openai.com", {
    injection: { credential: "openai-api-key", header: "Authorization" },
  });
  await assert.rejects(runta.secrets.delete("openai-api-key"), (e: unknown) => {
    assert.ok(e instanceof ConflictError);
    assert.deepEqual([e.status, e.code], [409, "secret_in_use"]);
    assert.ok(e.message.includes(rule.id));
    return true;
  });
  await assert.rejects(
    runta.secrets.create("openai-api-key", fakeValue()),
    (e: unknown) => e instanceof ConflictError && e.code === "already_exists",
  );
});

test("400 invalid: the message names the field", async () => {
  const runta = await tenantClient();
  const cases: [() => Promise<unknown>, string][] = [
    [() => runta.secrets.create("Bad Name", fakeValue()), "name"],
    [() => runta.secrets.create("ok", fakeValue(), { cacheTtlSecs: -1 }), "cache_ttl_secs"],
    [
      () => runta.runtime("worker").secrets.createRule("*", { injection: { credential: "ok", header: "X" } }),
      "host",
    ],
    [
      () =>
        runta
          .runtime("worker")
          .secrets.createRule("a.example.com", { injection: { credential: "nope", header: "X" } }),
      "injection.credential",
    ],
    [() => runta.secrets.update("ok", {}), "body"],
  ];
  for (const [call, field] of cases) {
    await assert.rejects(call(), (e: unknown) => {
      assert.ok(e instanceof InvalidRequestError, String(e));
      assert.deepEqual([e.status, e.code], [400, "invalid_request"]);
      assert.ok(e.message.includes(field), `${e.message} names ${field}`);
      return true;
    });
  }
});

test("401 with a bad key", async () => {
  const bad = new Runta({ apiUrl: server.url, apiKey: "runta_ak_not_a_real_key" });
  await assert.rejects(
    bad.secrets.list(),
    (e: unknown) => e instanceof AuthenticationError && e.status === 401 && e.code === "unauthenticated",
  );
});

test("unavailable: a stopped server", async () => {
  const own = await RuntaServer.start();
  const runta = new Runta({ apiUrl: own.url, apiKey: own.apiKey, maxRetries: 1 });
  await own.stop();
  await assert.rejects(runta.secrets.list(), (e: unknown) => {
    assert.ok(e instanceof APIConnectionError && e instanceof UnavailableError);
    assert.deepEqual([e.status, e.code], [null, "connection_failed"]);
    assert.ok(e.message.includes(own.url));
    return true;
  });
});

test("timeout: a hung (SIGSTOPped) server", async () => {
  const own = await RuntaServer.start();
  try {
    const runta = new Runta({ apiUrl: own.url, apiKey: own.apiKey, timeoutMs: 500, maxRetries: 0 });
    await runta.secrets.list();
    own.pause();
    try {
      await assert.rejects(
        runta.secrets.list(),
        (e: unknown) => e instanceof APITimeoutError && e.code === "timeout",
      );
    } finally {
      own.resume();
    }
    assert.deepEqual(await runta.secrets.list(), []);
  } finally {
    await own.stop();
  }
});
