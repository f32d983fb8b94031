/** Runtime tokens, tenants (operator token) and API keys. */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { ConflictError, NotFoundError, PermissionDeniedError, Runta } from "../src/index.js";
import { RuntaServer } from "./server.js";

let server: RuntaServer;
before(async () => {
  server = await RuntaServer.start();
});
after(() => server.stop());

test("runtime tokens: create, list, revoke", async () => {
  const { apiKey } = await server.newTenant();
  const runta = new Runta({ apiUrl: server.url, apiKey });
  const tokens = runta.runtime("worker").tokens;
  const first = await tokens.create();
  const second = await tokens.create();
  assert.match(first.token, /^runta_rt_/);
  assert.equal(first.revoked_at, null);
  assert.deepEqual(
    (await tokens.list({ pageSize: 1 })).map((t) => t.id),
    [first.id, second.id],
  );

  await tokens.revoke(first.id);
  const listed = await tokens.list();
  assert.notEqual(listed[0]!.revoked_at, null);
  assert.equal(listed[1]!.revoked_at, null);
  assert.deepEqual(await runta.runtime("builder").tokens.list(), []);
  await assert.rejects(tokens.revoke("rtk_does_not_exist"), NotFoundError);
});

test("tenants with the operator token", async () => {
  const operator = new Runta({ apiUrl: server.url, operatorToken: server.operatorToken });
  const created = await operator.tenants.create("acme-ts");
  assert.equal(created.tenant.name, "acme-ts");
  assert.match(created.api_key, /^runta_ak_/);
  const names = (await operator.tenants.list({ pageSize: 2 })).map((t) => t.name);
  assert.ok(names.includes("default") && names.includes("acme-ts"));
  await assert.rejects(
    operator.tenants.create("acme-ts"),
    (e: unknown) => e instanceof ConflictError && e.code === "already_exists",
  );

  const acme = new Runta({ apiUrl: server.url, apiKey: created.api_key, operatorToken: created.api_key });
  assert.deepEqual(await acme.secrets.list(), []);
  await assert.rejects(
    acme.tenants.list(),
    (e: unknown) => e instanceof PermissionDeniedError && e.status === 403,
  );
});

test("API keys: create, list, delete, not the last one", async () => {
  const { apiKey } = await server.newTenant();
  const runta = new Runta({ apiUrl: server.url, apiKey });
  const ci = await runta.apiKeys.create({ name: "ci" });
  assert.equal(ci.name, "ci");
  const unnamed = await runta.apiKeys.create();
  assert.equal(unnamed.name, null);
  const keys = await runta.apiKeys.list({ pageSize: 1 });
  assert.equal(keys.length, 3);
  assert.deepEqual(
    keys.slice(1).map((k) => k.id),
    [ci.id, unnamed.id],
  );

  const asCi = new Runta({ apiUrl: server.url, apiKey: ci.key });
  for (const key of await asCi.apiKeys.list()) {
    if (key.id !== ci.id) await asCi.apiKeys.delete(key.id);
  }
  await assert.rejects(
    asCi.apiKeys.delete(ci.id),
    (e: unknown) => e instanceof ConflictError && e.code === "last_api_key",
  );
});
