// Parameter injection as the page describes it ("setting `param` instead of `header`"), with
// the tenant-wide listing it names, written the way the page's snippets are.
import { Runta } from "runta";
const runta = new Runta();
const runtime = runta.runtime("worker");

const secret = await runta.secrets.create("maps-key", process.env.OPENAI_API_KEY!);
const rule = await runtime.secrets.createRule("maps.example.com", {
  path: "/geo/*",
  injection: { credential: "maps-key", param: "key" },
});
console.log(rule.id, (await runta.secrets.listRules()).length, secret.cache_ttl_secs);
