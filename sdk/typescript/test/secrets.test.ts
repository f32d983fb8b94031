/** Secrets through the client, checked against the server's REST answers. */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { Runta } from "../src/index.js";
import { RuntaServer, fakeValue } from "./server.js";
import { countingFetch } from "./util.js";

let server: RuntaServer;
before(async () => {
  server = await RuntaServer.start();
});
after(() => server.stop());

test("create, get, update, list, delete", async () => {
  const { apiKey } = await server.newTenant();
  const runta = new Runta({ apiUrl: server.url, apiKey });

  const created = await runta.secrets.create("github-token", fakeValue(), {
    cacheTtlSecs: 60,
    displayName: "GitHub",
  });
  assert.match(created.id, /^sec_/);
  assert.deepEqual(
    [created.name, created.display_name, created.cache_ttl_secs, created.version],
    ["github-token", "GitHub", 60, 1],
  );
  assert.deepEqual(await runta.secrets.get("github-token"), created);

  const defaults = await runta.secrets.create("internal-api", fakeValue());
  assert.equal(defaults.cache_ttl_secs, 300);
  assert.equal(defaults.display_name, null);

  const bumped = await runta.secrets.update("github-token", { value: fakeValue("v2") });
  assert.deepEqual([bumped.version, bumped.display_name, bumped.cache_ttl_secs], [2, "GitHub", 60]);
  const renamed = await runta.secrets.update("github-token", { displayName: "GitHub CI", cacheTtlSecs: 0 });
  assert.deepEqual([renamed.version, renamed.display_name, renamed.cache_ttl_secs], [2, "GitHub CI", 0]);
  const cleared = await runta.secrets.update("github-token", { displayName: null });
  assert.equal(cleared.display_name, null);
  const rest = await server.rest("GET", "/v1/secrets/github-token", apiKey);
  assert.equal(rest.body.display_name, null);
  assert.equal(rest.body.cache_ttl_secs, 0);

  assert.deepEqual(
    (await runta.secrets.list()).map((s) => s.name),
    ["github-token", "internal-api"],
  );
  assert.equal(await runta.secrets.delete("github-token"), undefined);
  assert.equal((await server.rest("GET", "/v1/secrets/github-token", apiKey)).status, 404);
});

test("list follows every page: 105 secrets are two pages of the server's 100", async () => {
  const { apiKey } = await server.newTenant();
  const runta = new Runta({ apiUrl: server.url, apiKey });
  const names = Array.from({ length: 105 }, (_, i) => `s-${String(i).padStart(3, "0")}`);
  for (const name of names) await runta.secrets.create(name, fakeValue(name));

  const counted = countingFetch();
  try {
    assert.deepEqual(
      (await runta.secrets.list()).map((s) => s.name),
      names,
    );
    assert.equal(counted.calls.length, 2);
    assert.match(counted.calls[1]!.url, /cursor=/);
    counted.calls.length = 0;
    assert.deepEqual(
      (await runta.secrets.list({ pageSize: 20 })).map((s) => s.name),
      names,
    );
    assert.equal(counted.calls.length, 6);
    assert.ok(counted.calls.every((c) => c.url.includes("limit=20")));
  } finally {
    counted.restore();
  }
});
