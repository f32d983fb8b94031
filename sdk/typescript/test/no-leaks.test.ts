/**
 * A secret value passed in never appears in an inspected client or result, an error (message,
 * stack, inspection) or the process's output, whatever happens to the call.
 */

import assert from "node:assert/strict";
import { inspect } from "node:util";
import { after, before, test } from "node:test";

import { AuthenticationError, Runta, RuntaError } from "../src/index.js";
import { RuntaServer, fakeValue } from "./server.js";

let server: RuntaServer;
before(async () => {
  server = await RuntaServer.start();
});
after(() => server.stop());

const show = (value: unknown): string => inspect(value, { depth: 20, showHidden: true });

test("values and keys never in inspections, errors or output", async () => {
  const { apiKey } = await server.newTenant();
  const value = fakeValue("leakcheck");
  const badValue = `${value}\n`; // refused: control character
  const seen: string[] = [];
  const written: string[] = [];
  const stdout = process.stdout.write.bind(process.stdout);
  const stderr = process.stderr.write.bind(process.stderr);
  const capture = (chunk: unknown): boolean => {
    written.push(String(chunk));
    return true;
  };
  process.stdout.write = capture as typeof process.stdout.write;
  process.stderr.write = capture as typeof process.stderr.write;
  try {
    const runta = new Runta({ apiUrl: server.url, apiKey });
    const secret = await runta.secrets.create("leak", value);
    seen.push(show(secret), show(runta), JSON.stringify(runta), show(runta.runtime("w")));
    seen.push(show(await runta.secrets.update("leak", { value: `${value}2` })));

    const failing: (() => Promise<unknown>)[] = [
      () => runta.secrets.create("leak", value), // 409
      () => runta.secrets.create("leak-2", badValue), // 400 naming the field
      () => runta.secrets.update("leak", { value: badValue }),
      () => runta.secrets.update("missing", { value }), // 404
      () => new Runta({ apiUrl: "http://127.0.0.1:9", apiKey, maxRetries: 0 }).secrets.create("leak", value),
    ];
    for (const call of failing) {
      await assert.rejects(call(), (e: unknown) => {
        assert.ok(e instanceof RuntaError);
        seen.push(String(e), e.stack ?? "", show(e), JSON.stringify(e));
        return true;
      });
    }
  } finally {
    process.stdout.write = stdout;
    process.stderr.write = stderr;
  }
  seen.push(written.join(""));
  for (const text of seen) {
    assert.ok(!text.includes(value), `a value leaked into: ${text.slice(0, 200)}`);
    assert.ok(!text.includes(apiKey), `the API key leaked into: ${text.slice(0, 200)}`);
  }
  assert.ok(!server.logText().includes(value), "the server's log holds a value");
});

test("a key that cannot go into a header is refused before fetch could quote it", async () => {
  const runta = new Runta({ apiUrl: server.url, apiKey: "runta_ak_not-sendable\nsecond-line" });
  await assert.rejects(runta.secrets.list(), (e: unknown) => {
    assert.ok(e instanceof AuthenticationError);
    assert.deepEqual([e.status, e.code], [null, "invalid_credential"]);
    assert.ok(!`${String(e)} ${e.stack} ${show(e)}`.includes("not-sendable"));
    return true;
  });
});
