/** The SDK follows the OpenAPI document (docs/openapi.yaml): every /v1 operation has a call, and
 * the audit event type carries exactly the REST fields of its schema. */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

import type { AuditEvent } from "../src/index.js";

const PACKAGE = resolve(dirname(fileURLToPath(import.meta.url)), "..", "..");
const DOC = readFileSync(resolve(PACKAGE, "..", "..", "docs", "openapi.yaml"), "utf8");

test("every /v1 operation of the OpenAPI document has a call", () => {
  const paths = DOC.slice(DOC.indexOf("\npaths:"), DOC.indexOf("\ncomponents:"));
  const operations: string[] = [];
  let v1 = false;
  for (const line of paths.split("\n")) {
    const path = /^ {2}(\/\S*):$/.exec(line);
    if (path) v1 = path[1]!.startsWith("/v1/");
    const op = /^ {6}operationId: (\w+)$/.exec(line);
    if (op && v1) operations.push(op[1]!);
  }
  assert.equal(operations.length, 21);
  const source = readFileSync(resolve(PACKAGE, "src", "resources.ts"), "utf8");
  assert.deepEqual(
    operations.filter((op) => !source.includes(`// ${op}`)),
    [],
  );
});

/** The `required` list of a schema of `components.schemas` (a one-line flow sequence). */
function requiredOf(schema: string): string[] {
  const start = DOC.indexOf(`\n    ${schema}:\n`);
  assert.ok(start > 0, schema);
  const found = /^ {6}required: \[([^\]]*)\]$/m.exec(DOC.slice(start, start + 2000));
  assert.ok(found, schema);
  return found[1]!.split(",").map((name) => name.trim());
}

test("AuditEvent carries exactly the REST fields", () => {
  // Every key of the interface, and nothing else (the compiler checks both directions).
  const fields: Record<keyof AuditEvent, true> = {
    id: true,
    seq: true,
    time: true,
    tenant_id: true,
    actor: true,
    action: true,
    target_kind: true,
    target_id: true,
    target_name: true,
    request_id: true,
    outcome: true,
    prev_hash: true,
    hash: true,
  };
  assert.deepEqual(Object.keys(fields).sort(), requiredOf("AuditEvent").sort());
});
