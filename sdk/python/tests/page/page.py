# The product page's Python snippets, verbatim, in the page's order. Only the creation of the
# runtime handle is added; the page uses the module-level `runta` after `import runta`, whose
# default client reads RUNTA_API_URL and RUNTA_API_KEY. tests/test_page.py runs this file.
import runta
runtime = runta.runtime("worker")

# --- Store a secret ---
import os
secret = runta.secrets.create("openai-api-key", os.environ["OPENAI_API_KEY"], cache_ttl_secs=0)

# --- Add an injection rule ---
from runta import Injection
rule = runtime.secrets.create_rule(
    "https://api.openai.com",
    path="/v1/*",
    injection=Injection(credential="openai-api-key", header="Authorization", value="Bearer ${credential}"),
)

# --- List and delete rules ---
for rule in runtime.secrets.list_rules():
    print(rule.id, rule.host_pattern, rule.path_pattern)
runtime.secrets.delete_rules(rule.id)
