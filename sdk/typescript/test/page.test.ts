/**
 * The product page's TypeScript (test/page/page.ts, verbatim) run as a user runs it: compiled
 * with `tsc --strict` in a fresh project that installed the packed package (scripts/test-sdk
 * prepares it and names it in RUNTA_SDK_PAGE_APP), then run by node with RUNTA_API_URL /
 * RUNTA_API_KEY set, against a real server. What it did is checked with plain HTTP.
 *
 * Stage one runs the page up to "List and delete rules" (page-create.js) and checks the
 * created secret and rule; stage two runs the whole page from a clean tenant and checks that the
 * rule it printed is gone while the secret stays.
 */

import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { existsSync } from "node:fs";
import { join } from "node:path";
import { after, before, test } from "node:test";

import { RuntaServer, fakeValue } from "./server.js";

const app = process.env["RUNTA_SDK_PAGE_APP"];
const missing = !app || !existsSync(join(app, "page.js"));
const skip =
  missing && process.env["CI"] !== "true"
    ? "RUNTA_SDK_PAGE_APP not prepared (scripts/test-sdk does it)"
    : false;

let server: RuntaServer;
before(async () => {
  if (!skip) server = await RuntaServer.start();
});
after(() => server?.stop());

function runPage(file: string, apiKey: string, value: string): string {
  assert.ok(!missing, "RUNTA_SDK_PAGE_APP must name the prepared project (scripts/test-sdk)");
  const env: NodeJS.ProcessEnv = Object.fromEntries(
    Object.entries(process.env).filter(([k]) => !k.startsWith("RUNTA_")),
  );
  Object.assign(env, { RUNTA_API_URL: server.url, RUNTA_API_KEY: apiKey, OPENAI_API_KEY: value });
  const out = execFileSync(process.execPath, [join(app!, file)], {
    cwd: app,
    env,
    encoding: "utf8",
    timeout: 60_000,
  });
  assert.ok(!out.includes(value));
  return out;
}

test("the page's snippets: create, then list and delete", { skip }, async () => {
  const { apiKey } = await server.newTenant();
  const value = fakeValue("page");

  runPage("page-create.js", apiKey, value);
  let secret = await server.rest("GET", "/v1/secrets/openai-api-key", apiKey);
  assert.equal(secret.status, 200);
  assert.equal(secret.body.cache_ttl_secs, 0);
  const rules = (await server.rest("GET", "/v1/runtimes/worker/rules", apiKey)).body.data;
  assert.equal(rules.length, 1);
  assert.equal(rules[0].host_pattern, "api.openai.com");
  assert.equal(rules[0].path_pattern, "/v1/*");
  assert.deepEqual(rules[0].injection, {
    credential: "openai-api-key",
    header: "Authorization",
    param: null,
    value: "Bearer ${credential}",
  });

  assert.equal((await server.rest("DELETE", `/v1/rules/${rules[0].id}`, apiKey)).status, 204);
  assert.equal((await server.rest("DELETE", "/v1/secrets/openai-api-key", apiKey)).status, 204);
  const lines = runPage("page.js", apiKey, value).trim().split("\n");
  assert.equal(lines.length, 1);
  const [ruleId, host, path] = lines[0]!.split(" ");
  assert.match(ruleId!, /^rule_/);
  assert.deepEqual([host, path], ["api.openai.com", "/v1/*"]);
  assert.equal((await server.rest("GET", `/v1/rules/${ruleId}`, apiKey)).status, 404);
  assert.deepEqual((await server.rest("GET", "/v1/runtimes/worker/rules", apiKey)).body.data, []);
  secret = await server.rest("GET", "/v1/secrets/openai-api-key", apiKey);
  assert.equal(secret.body.cache_ttl_secs, 0);
});

test("parameter injection with { param }", { skip }, async () => {
  const { apiKey } = await server.newTenant();
  const [ruleId, tenantWide, ttl] = runPage("param.js", apiKey, fakeValue("param")).trim().split(" ");
  assert.deepEqual([tenantWide, ttl], ["1", "300"]);
  const rule = await server.rest("GET", `/v1/rules/${ruleId}`, apiKey);
  assert.equal(rule.status, 200);
  assert.deepEqual(rule.body.injection, {
    credential: "maps-key",
    header: null,
    param: "key",
    value: "${credential}",
  });
  assert.equal(rule.body.host_pattern, "maps.example.com");
});
