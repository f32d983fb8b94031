/** The SDK follows the OpenAPI document (docs/openapi.yaml): every /v1 operation has a call. */

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { dirname, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { test } from "node:test";

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
  assert.equal(operations.length, 19);
  const source = readFileSync(resolve(PACKAGE, "src", "resources.ts"), "utf8");
  assert.deepEqual(
    operations.filter((op) => !source.includes(`// ${op}`)),
    [],
  );
});
