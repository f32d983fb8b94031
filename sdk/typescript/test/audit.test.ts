/**
 * The audit trail (`runta.audit.list`) against the real server: a change made through the SDK is
 * recorded once, with the API key's id as actor and the request's `x-request-id`; the filters
 * narrow on the server; the operator token sees every tenant; no event holds a secret value.
 */

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { InvalidRequestError, Runta, type AuditEvent } from "../src/index.js";
import { RuntaServer, fakeValue } from "./server.js";

let server: RuntaServer;
before(async () => {
  server = await RuntaServer.start();
});
after(() => server.stop());

const HEX64 = /^[0-9a-f]{64}$/;

interface Answer {
  method: string;
  path: string;
  requestId: string;
}

/** Records the `x-request-id` of every answer while `body` runs, then restores `fetch`. */
async function recordingAnswers<T>(body: (answers: Answer[]) => Promise<T>): Promise<T> {
  const real = globalThis.fetch;
  const answers: Answer[] = [];
  globalThis.fetch = async (input: string | URL | Request, init?: RequestInit) => {
    const response = await real(input, init);
    answers.push({
      method: init?.method ?? "GET",
      path: new URL(String(input)).pathname,
      requestId: response.headers.get("x-request-id") ?? "",
    });
    return response;
  };
  try {
    return await body(answers);
  } finally {
    globalThis.fetch = real;
  }
}

test("a change is recorded once, with the key's id as actor and the request id", async () => {
  const { apiKey, name: tenantName } = await server.newTenant();
  const runta = new Runta({ apiUrl: server.url, apiKey });
  const value = fakeValue("audit");
  const newValue = fakeValue("audit-v2");

  await recordingAnswers(async (answers) => {
    const secret = await runta.secrets.create("audited", value, { displayName: "Audited" });
    assert.equal(answers.length, 1);
    const [created] = answers;
    assert.deepEqual([created!.method, created!.path], ["POST", "/v1/secrets"]);
    assert.ok(created!.requestId);
    const [key, ...more] = await runta.apiKeys.list();
    assert.equal(more.length, 0);

    const events = await runta.audit.list();
    const matching = events.filter((e) => e.action === "secret.create" && e.target_id === secret.id);
    assert.equal(matching.length, 1, JSON.stringify(events));
    const event = matching[0]!;
    assert.equal(event.actor, key!.id);
    assert.match(event.actor, /^key_/);
    assert.equal(event.request_id, created!.requestId);
    assert.deepEqual([event.target_kind, event.target_name, event.outcome], ["secret", "audited", "ok"]);
    assert.match(event.id, /^aud_/);
    assert.ok(event.seq >= 1);
    assert.match(event.hash, HEX64);
    assert.match(event.prev_hash, HEX64);
    // The REST field names, exactly.
    assert.deepEqual(Object.keys(event).sort(), [
      "action",
      "actor",
      "hash",
      "id",
      "outcome",
      "prev_hash",
      "request_id",
      "seq",
      "target_id",
      "target_kind",
      "target_name",
      "tenant_id",
      "time",
    ]);
    // The tenant's key sees its tenant's events only, in seq order.
    assert.equal(new Set(events.map((e) => e.tenant_id)).size, 1);
    assert.notEqual(event.tenant_id, null);
    assert.deepEqual(
      events.map((e) => e.seq),
      events.map((e) => e.seq).sort((a, b) => a - b),
    );

    // Every page: a page of one gives the same list.
    assert.deepEqual(await runta.audit.list({ pageSize: 1 }), events);

    // Filters, answered by the server.
    assert.deepEqual(await runta.audit.list({ action: "secret.create" }), [event]);
    assert.deepEqual(await runta.audit.list({ targetId: secret.id }), [event]);
    assert.deepEqual(
      await runta.audit.list({ targetKind: "secret", action: "secret.create", targetId: secret.id }),
      [event],
    );
    assert.deepEqual(await runta.audit.list({ action: "secret.delete" }), []);
    const at = new Date(event.time);
    const ids = (list: AuditEvent[]) => list.map((e) => e.id);
    assert.ok(ids(await runta.audit.list({ since: at })).includes(event.id));
    assert.ok(
      ids(await runta.audit.list({ since: event.time, until: new Date(at.getTime() + 1000) })).includes(
        event.id,
      ),
    );
    assert.ok(!ids(await runta.audit.list({ until: at })).includes(event.id)); // `until` is exclusive
    assert.ok(!ids(await runta.audit.list({ since: new Date(at.getTime() + 1) })).includes(event.id));
    await assert.rejects(
      runta.audit.list({ since: new Date("not a date") }),
      (e: unknown) => e instanceof InvalidRequestError && e.status === null && /^since:/.test(e.message),
    );
    await assert.rejects(
      runta.audit.list({ action: "secret.frobnicate" as AuditEvent["action"] }),
      (e: unknown) => e instanceof InvalidRequestError && e.status === 400 && e.message.includes("action"),
    );
    await assert.rejects(runta.audit.list({ pageSize: 0 }), InvalidRequestError);

    // A new value is recorded too, and no event holds either value.
    await runta.secrets.update("audited", { value: newValue });
    const put = answers[answers.length - 1]!;
    assert.deepEqual([put.method, put.path], ["PUT", "/v1/secrets/audited"]);
    const [updated, ...others] = await runta.audit.list({ action: "secret.update_value" });
    assert.equal(others.length, 0);
    assert.equal(updated!.target_id, secret.id);
    assert.equal(updated!.request_id, put.requestId);
    const raw = await server.rest("GET", "/v1/audit-events?limit=1000", server.operatorToken);
    assert.equal(raw.status, 200);
    const everything = JSON.stringify(raw.body) + JSON.stringify(await runta.audit.list());
    for (const hidden of [value, newValue, apiKey, server.operatorToken]) {
      assert.ok(!everything.includes(hidden));
    }

    // The operator sees the same event, and other tenants' events; another tenant's key does not.
    const operator = new Runta({ apiUrl: server.url, operatorToken: server.operatorToken });
    assert.deepEqual(
      await operator.audit.list({ operator: true, targetId: secret.id, action: "secret.create" }),
      [event],
    );
    const tenants = new Set((await operator.audit.list({ operator: true })).map((e) => e.tenant_id));
    assert.ok(tenants.has(event.tenant_id) && tenants.size > 1);
    const other = await server.newTenant();
    const stranger = new Runta({ apiUrl: server.url, apiKey: other.apiKey });
    assert.deepEqual(await stranger.audit.list({ targetId: secret.id }), []);
    assert.deepEqual(
      (await stranger.audit.list({ targetKind: "tenant" })).map((e) => e.target_name),
      [other.name],
    );
    assert.notEqual(other.name, tenantName);
  });
});
