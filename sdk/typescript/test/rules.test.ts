/** Injection rules: per runtime, tenant-wide, in batches, and the injection's own check. */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { InvalidRequestError, Runta, type Injection } from "../src/index.js";
import { RuntaServer, fakeValue } from "./server.js";

let server: RuntaServer;
before(async () => {
  server = await RuntaServer.start();
});
after(() => server.stop());

async function tenantWithSecret(): Promise<{ runta: Runta; apiKey: string }> {
  const { apiKey } = await server.newTenant();
  const runta = new Runta({ apiUrl: server.url, apiKey });
  await runta.secrets.create("openai-api-key", fakeValue(), { cacheTtlSecs: 0 });
  return { runta, apiKey };
}

test("create, list per runtime and tenant-wide, get, delete", async () => {
  const { runta, apiKey } = await tenantWithSecret();
  const worker = runta.runtime("worker");
  const header = await worker.secrets.createRule("https://api.openai.com", {
    path: "/v1/*",
    injection: { credential: "openai-api-key", header: "Authorization", value: "Bearer ${credential}" },
  });
  assert.match(header.id, /^rule_/);
  assert.deepEqual(
    [header.runtime, header.host_pattern, header.path_pattern],
    ["worker", "api.openai.com", "/v1/*"],
  );
  assert.deepEqual(header.injection, {
    credential: "openai-api-key",
    header: "Authorization",
    param: null,
    value: "Bearer ${credential}",
  });

  const param = await worker.secrets.createRule("*.example.com:8443", {
    injection: { credential: "openai-api-key", param: "key" },
  });
  assert.equal(param.path_pattern, null);
  assert.deepEqual(param.injection, {
    credential: "openai-api-key",
    header: null,
    param: "key",
    value: "${credential}",
  });

  const other = await runta.runtime("builder").secrets.createRule("api.github.com", {
    injection: { credential: "openai-api-key", header: "X-Token" },
  });
  assert.deepEqual(
    (await worker.secrets.listRules()).map((r) => r.id),
    [header.id, param.id],
  );
  assert.deepEqual(
    (await runta.secrets.listRules()).map((r) => r.id),
    [header.id, param.id, other.id],
  );
  assert.deepEqual(await runta.secrets.getRule(param.id), param);

  await worker.secrets.deleteRule(header.id);
  await worker.secrets.deleteRules(param.id, other.id);
  assert.deepEqual((await server.rest("GET", "/v1/rules", apiKey)).body.data, []);
});

test("rule lists follow every page", async () => {
  const { runta } = await tenantWithSecret();
  const worker = runta.runtime("worker");
  const ids: string[] = [];
  for (let i = 0; i < 7; i++) {
    const rule = await worker.secrets.createRule(`api${i}.example.com`, {
      injection: { credential: "openai-api-key", header: "X-Key" },
    });
    ids.push(rule.id);
  }
  assert.deepEqual(
    (await worker.secrets.listRules({ pageSize: 2 })).map((r) => r.id),
    ids,
  );
  assert.deepEqual(
    (await runta.secrets.listRules({ pageSize: 3 })).map((r) => r.id),
    ids,
  );
});

test("batch from the rule-file shape, all or none", async () => {
  const { runta, apiKey } = await tenantWithSecret();
  const created = await runta.secrets.createRules([
    {
      runtime: "worker",
      host: "api.openai.com",
      path: "/v1/*",
      credential: "openai-api-key",
      inject: { header: "Authorization", value: "Bearer ${credential}" },
    },
    { runtime: "batcher", host: "api.example.com", credential: "openai-api-key", inject: { param: "token" } },
  ]);
  assert.deepEqual(
    created.map((r) => [r.runtime, r.host_pattern, r.path_pattern, r.injection.param]),
    [
      ["worker", "api.openai.com", "/v1/*", null],
      ["batcher", "api.example.com", null, "token"],
    ],
  );

  await assert.rejects(
    runta.secrets.createRules([
      { runtime: "w", host: "a.example.com", credential: "openai-api-key", inject: { header: "X" } },
      { runtime: "w", host: "b.example.com", credential: "no-such-secret", inject: { header: "X" } },
    ]),
    (err: unknown) =>
      err instanceof InvalidRequestError && err.status === 400 && err.message.includes("rules[1].credential"),
  );
  assert.equal((await server.rest("GET", "/v1/rules", apiKey)).body.data.length, 2);
});

test("an injection needs exactly one of header and param, checked before any request", async () => {
  // A client pointed at a closed port: the validation error comes first, not a connection error.
  const runta = new Runta({ apiUrl: "http://127.0.0.1:9", apiKey: "runta_ak_unused", maxRetries: 0 });
  const both = { credential: "x", header: "A", param: "b" } as unknown as Injection;
  const neither = { credential: "x" } as unknown as Injection;
  for (const injection of [both, neither]) {
    await assert.rejects(
      runta.runtime("worker").secrets.createRule("api.openai.com", { injection }),
      (err: unknown) => err instanceof InvalidRequestError && err.status === null,
    );
  }
  await assert.rejects(runta.secrets.list({ pageSize: 0 }), InvalidRequestError);
});

/** Compile-time only (never called): `tsc` fails the build if either line stops being an error. */
export function injectionTypeNeedsExactlyOneTarget(runta: Runta): void {
  const rules = runta.runtime("w").secrets;
  // @ts-expect-error both header and param
  void rules.createRule("a.example.com", { injection: { credential: "c", header: "h", param: "p" } });
  // @ts-expect-error neither header nor param
  void rules.createRule("a.example.com", { injection: { credential: "c" } });
}
