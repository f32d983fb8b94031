// The product page's TypeScript snippets, verbatim, in the page's order. Only the creation of
// the `runta` and `runtime` handles is added. scripts/test-sdk type-checks this file with
// `tsc --strict` in a fresh project that installed the packed package; test/page.test.ts runs it.
import { Runta } from "runta";
const runta = new Runta();
const runtime = runta.runtime("worker");

// --- Store a secret ---
const secret = await runta.secrets.create("openai-api-key", process.env.OPENAI_API_KEY!, { cacheTtlSecs: 0 });

// --- Add an injection rule ---
const rule = await runtime.secrets.createRule("https://api.openai.com", {
  path: "/v1/*",
  injection: { credential: "openai-api-key", header: "Authorization", value: "Bearer ${credential}" },
});

// --- List and delete rules ---
for (const rule of await runtime.secrets.listRules()) {
  console.log(rule.id, rule.host_pattern, rule.path_pattern);
}
await runtime.secrets.deleteRule(rule.id);
