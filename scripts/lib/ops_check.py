#!/usr/bin/env python3
"""Checks of the operations artefacts, run by scripts/test-ops (with the virtualenv's Python,
which has PyYAML through kubernetes-validate):

  configmaps RUNTA_BIN [--write] [--out DIR]
      Every ConfigMap under deploy/kubernetes with a `# render: runta envoy bootstrap ...`
      comment must hold exactly what that command renders, with its mode's placeholder token
      (--example: runta_gw_CHANGE_ME for a gateway, runta_rt_CHANGE_ME for a sidecar) once;
      --write rewrites the data instead.
      --out DIR: also write each Envoy configuration found in a ConfigMap (rendered or not) to
      DIR/<configmap>.yaml, for `envoy --mode validate`.
  manifests
      The kustomizations list every manifest; pods are hardened (non-root, read-only root
      filesystem, no privilege escalation, capabilities dropped, resources); Services, PDBs
      and NetworkPolicies select pods that exist; volumes name ConfigMaps that exist and the
      Secrets docs/operations.md tells operators to create; runta.toml's secret files are all
      mounted; runta's probes are the ones documented.
  render-args FILE [--without FLAG]... [--set FLAG VALUE]...
      The `runta` arguments of FILE's `# render:` line (each ended by NUL), with FLAG removed
      or its value replaced (clap refuses a flag given twice).
  toml SECRETS_DIR OUT
      runta.toml from the ConfigMap runta-config with /run/secrets/runta moved to SECRETS_DIR.
  container FILE NAME CONTAINER (command|env)
      A container's command and args (each ended by NUL), or its env as NAME=VALUE lines.
  projected FILE NAME
      The files the volume `secrets` of FILE's workload NAME projects (one per line).
  dashboard
      deploy/grafana/runta.json is a well-formed Grafana dashboard.
  alerts
      Every alert has a severity, a summary, a description and a runbook anchor that is a
      heading of docs/operations.md, and alerts_test.yaml has a case where it fires and one
      where it stays silent.
  names
      The metric names the dashboard and the alert rules reference (one per line).
  metrics RUNTA_METRICS ENVOY_STATS
      Every runta_* name referenced exists in RUNTA_METRICS (runta's /metrics), every envoy_*
      name in ENVOY_STATS (Envoy's /stats/prometheus), and nothing else is referenced but the
      series Prometheus makes itself (up).
"""
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DASHBOARD = ROOT / "deploy" / "grafana" / "runta.json"
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yaml"
DOCS = ROOT / "docs" / "operations.md"
# The placeholder token `--example` renders, by --mode: the gateway's init container swaps in
# the gateway token, a sidecar's its runtime's runtime token.
PLACEHOLDERS = {"gateway": "runta_gw_CHANGE_ME", "sidecar": "runta_rt_CHANGE_ME"}
# The Secrets operators create (docs/operations.md), and the keys each must hold.
SECRETS = {
    "runta-server": {"database-url", "operator-token", "encryption-key-k1"},
    "runta-gateway-token": {"token"},
    "runta-interception-ca": {"ca.pem", "ca.key"},
    "runta-runtime-token-worker": {"token"},
}
# Series Prometheus records itself, not scraped from a target.
PROMETHEUS_SERIES = {"up"}

failures = []


def fail(message):
    if message in failures:
        return
    failures.append(message)
    print(f"FAIL: {message}", file=sys.stderr)


def finish(what):
    if failures:
        print(f"{what}: {len(failures)} problem(s)", file=sys.stderr)
        sys.exit(1)
    print(f"{what}: ok")


def manifest_files():
    return sorted(p for p in K8S.rglob("*.yaml") if p.name != "kustomization.yaml")


def documents(path):
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def all_documents():
    return [(p, d) for p in manifest_files() for d in documents(p)]


def rel(path):
    return path.relative_to(ROOT)


# --- configmaps -------------------------------------------------------------------------------

RENDER = re.compile(r"^# render: runta (envoy bootstrap .*)$", re.M)
DATA_LINE = "  envoy.yaml: |\n"


def render(runta_bin, args):
    argv = [runta_bin] + shlex.split(args)
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def cmd_configmaps(argv):
    runta_bin = argv[0]
    write = "--write" in argv
    out = Path(argv[argv.index("--out") + 1]) if "--out" in argv else None
    rendered_any = 0
    for path in manifest_files():
        text = path.read_text()
        match = RENDER.search(text)
        if match:
            rendered_any += 1
            expected = render(runta_bin, match.group(1))
            args = shlex.split(match.group(1))
            mode = args[args.index("--mode") + 1] if "--mode" in args else None
            placeholder = PLACEHOLDERS.get(mode)
            if placeholder is None:
                fail(f"{rel(path)}: the `# render:` line needs --mode gateway or --mode sidecar")
            elif expected.count(placeholder) != 1:
                fail(f"{rel(path)}: render it with --example: the placeholder token {placeholder} "
                     f"must be in it once (found {expected.count(placeholder)})")
            for other in set(PLACEHOLDERS.values()) - {placeholder}:
                if other in expected:
                    fail(f"{rel(path)}: carries the placeholder {other} of another mode")
            if write:
                head, sep, _ = text.partition(DATA_LINE)
                if not sep:
                    raise SystemExit(f"{rel(path)}: no line {DATA_LINE.strip()!r} to write after")
                body = "".join(
                    ("    " + line if line.strip() else "\n")
                    for line in expected.splitlines(keepends=True)
                )
                path.write_text(head + DATA_LINE + body)
                print(f"wrote {rel(path)}")
            else:
                [doc] = documents(path)
                actual = doc["data"]["envoy.yaml"]
                if actual != expected:
                    import difflib

                    diff = "".join(
                        list(
                            difflib.unified_diff(
                                actual.splitlines(True),
                                expected.splitlines(True),
                                "configmap",
                                "rendered",
                            )
                        )[:40]
                    )
                    fail(
                        f"{rel(path)} differs from `runta {match.group(1)}`; "
                        f"`.venv/bin/python scripts/lib/ops_check.py configmaps target/debug/runta --write` "
                        f"regenerates it:\n{diff}"
                    )
        if out is not None:
            for doc in documents(path):
                if doc.get("kind") == "ConfigMap" and "envoy.yaml" in doc.get("data", {}):
                    target = out / f"{doc['metadata']['name']}.yaml"
                    target.write_text(doc["data"]["envoy.yaml"])
                    print(target)
    if rendered_any < 2:
        fail(f"expected the gateway and the sidecar ConfigMaps to carry `# render:`, found {rendered_any}")
    finish("Envoy ConfigMaps equal to what runta renders" if not write else "configmaps")


# --- manifests --------------------------------------------------------------------------------


def pod_specs(doc):
    """(name, pod spec, pod labels) of a workload document."""
    kind = doc.get("kind")
    if kind == "Pod":
        return doc["spec"], doc["metadata"].get("labels", {})
    if kind in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        template = doc["spec"]["template"]
        return template["spec"], template["metadata"].get("labels", {})
    return None, None


def selects(selector, labels):
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_kustomization(directory):
    kust = yaml.safe_load((directory / "kustomization.yaml").read_text())
    listed = kust.get("resources", [])
    present = sorted(p.name for p in directory.glob("*.yaml") if p.name != "kustomization.yaml")
    for name in listed:
        if not (directory / name).is_file():
            fail(f"{rel(directory)}/kustomization.yaml lists {name}, which does not exist")
    for name in present:
        if name not in listed:
            fail(f"{rel(directory)}/kustomization.yaml does not list {name}")
    if len(listed) != len(set(listed)):
        fail(f"{rel(directory)}/kustomization.yaml lists a file twice")


def check_container(where, container, pod_security):
    sc = container.get("securityContext", {})
    if sc.get("readOnlyRootFilesystem") is not True:
        fail(f"{where}: readOnlyRootFilesystem must be true")
    if sc.get("allowPrivilegeEscalation") is not False:
        fail(f"{where}: allowPrivilegeEscalation must be false")
    if "ALL" not in sc.get("capabilities", {}).get("drop", []):
        fail(f"{where}: capabilities must drop ALL")
    if sc.get("privileged"):
        fail(f"{where}: privileged")
    user = sc.get("runAsUser", pod_security.get("runAsUser"))
    if user in (None, 0):
        fail(f"{where}: needs a non-root runAsUser (here or on the pod)")
    resources = container.get("resources", {})
    for key in ("cpu", "memory"):
        if key not in resources.get("requests", {}):
            fail(f"{where}: no {key} request")
    if "memory" not in resources.get("limits", {}):
        fail(f"{where}: no memory limit")
    image = container.get("image", "")
    if image != "runta" and (":" not in image or image.endswith(":latest")):
        fail(f"{where}: image {image!r} is not pinned to a version")


def cmd_manifests(_argv):
    check_kustomization(K8S)
    for sub in sorted(p for p in K8S.iterdir() if p.is_dir()):
        check_kustomization(sub)
    docs = all_documents()
    configmaps = {}
    pods = []
    for path, doc in docs:
        meta = doc.get("metadata", {})
        if doc.get("kind") == "ConfigMap":
            configmaps[(meta.get("namespace"), meta["name"])] = doc
        if "namespace" not in meta and doc.get("kind") != "Namespace":
            fail(f"{rel(path)}: {doc.get('kind')} {meta.get('name')} names no namespace")
        spec, labels = pod_specs(doc)
        if spec is not None:
            pods.append((path, doc, spec, labels))
    docs_text = DOCS.read_text() if DOCS.is_file() else ""
    for path, doc, spec, labels in pods:
        name = f"{rel(path)}: {doc['kind']} {doc['metadata']['name']}"
        namespace = doc["metadata"].get("namespace")
        ps = spec.get("securityContext", {})
        if ps.get("runAsNonRoot") is not True:
            fail(f"{name}: pod securityContext.runAsNonRoot must be true")
        if ps.get("seccompProfile", {}).get("type") != "RuntimeDefault":
            fail(f"{name}: pod seccompProfile must be RuntimeDefault")
        if spec.get("automountServiceAccountToken") is not False:
            fail(f"{name}: automountServiceAccountToken must be false")
        containers = spec.get("initContainers", []) + spec["containers"]
        for container in containers:
            check_container(f"{name} container {container['name']}", container, ps)
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        mounted = set()
        for container in containers:
            for mount in container.get("volumeMounts", []):
                mounted.add(mount["name"])
                if mount["name"] not in volumes:
                    fail(f"{name}: {container['name']} mounts an undefined volume {mount['name']}")
        for volume in volumes.values():
            if volume["name"] not in mounted:
                fail(f"{name}: volume {volume['name']} is never mounted")
            sources = [volume] + volume.get("projected", {}).get("sources", [])
            for source in sources:
                if "configMap" in source:
                    cm = source["configMap"]["name"]
                    if (namespace, cm) not in configmaps:
                        fail(f"{name}: ConfigMap {namespace}/{cm} is not among the manifests")
                secret = source.get("secret")
                if secret:
                    secret_name = secret.get("secretName") or secret.get("name")
                    if secret_name not in SECRETS:
                        fail(f"{name}: Secret {secret_name} is not one operators are told to create")
                        continue
                    for item in secret.get("items", []):
                        if item["key"] not in SECRETS[secret_name]:
                            fail(f"{name}: Secret {secret_name} has no documented key {item['key']}")
                    if secret_name not in docs_text:
                        fail(f"docs/operations.md does not mention the Secret {secret_name}")
                    for key in SECRETS[secret_name]:
                        if key not in docs_text:
                            fail(f"docs/operations.md does not mention the key {key} of {secret_name}")
    # Every Service, PDB and NetworkPolicy selects some pod of its namespace, and a Service's
    # target ports are ports of that pod.
    for path, doc in docs:
        kind = doc.get("kind")
        meta = doc["metadata"]
        if kind == "Service":
            selector = doc["spec"].get("selector", {})
        elif kind == "PodDisruptionBudget":
            selector = doc["spec"]["selector"].get("matchLabels", {})
        elif kind == "NetworkPolicy":
            selector = doc["spec"]["podSelector"].get("matchLabels", {})
        elif kind == "Deployment":
            selector = doc["spec"]["selector"]["matchLabels"]
            if not selects(selector, doc["spec"]["template"]["metadata"]["labels"]):
                fail(f"{rel(path)}: Deployment {meta['name']}'s selector misses its own pods")
            continue
        else:
            continue
        matching = [
            (d, spec)
            for _, d, spec, labels in pods
            if d["metadata"].get("namespace") == meta.get("namespace") and selects(selector, labels)
        ]
        if not matching:
            fail(f"{rel(path)}: {kind} {meta['name']} selects no pod")
        if kind == "Service":
            for port in doc["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                for d, spec in matching:
                    ports = [p for c in spec["containers"] for p in c.get("ports", [])]
                    if not any(target in (p.get("name"), p["containerPort"]) for p in ports):
                        fail(f"{rel(path)}: Service {meta['name']} targets port {target}, which "
                             f"{d['kind']} {d['metadata']['name']} does not have")
    # runta itself: replicas, probes, configuration files.
    runta = next(
        (d for _, d in docs if d.get("kind") == "Deployment" and d["metadata"]["name"] == "runta"),
        None,
    )
    if runta is None:
        fail("no Deployment runta")
    else:
        if runta["spec"]["replicas"] < 2:
            fail("Deployment runta: several replicas expected")
        [server] = runta["spec"]["template"]["spec"]["containers"]
        probes = {
            "startupProbe": server.get("startupProbe", {}).get("httpGet", {}).get("path"),
            "livenessProbe": server.get("livenessProbe", {}).get("httpGet", {}).get("path"),
            "readinessProbe": server.get("readinessProbe", {}).get("grpc", {}).get("port"),
        }
        if probes != {"startupProbe": "/readyz", "livenessProbe": "/healthz", "readinessProbe": 50051}:
            fail(f"Deployment runta: probes {probes}, not those docs/operations.md describes")
        toml_text = configmaps[("runta", "runta-config")]["data"]["runta.toml"]
        volume = next(
            v for v in runta["spec"]["template"]["spec"]["volumes"] if v["name"] == "secrets"
        )
        projected = {
            item["path"]
            for source in volume["projected"]["sources"]
            for item in source["secret"]["items"]
        }
        referenced = set(re.findall(r'"/run/secrets/runta/([^"]+)"', toml_text))
        if referenced != projected:
            fail(f"runta.toml reads {sorted(referenced)} from /run/secrets/runta, the Deployment "
                 f"projects {sorted(projected)}")
    finish(f"manifests ({len(docs)} objects in {len(manifest_files())} files)")


# --- helpers for scripts/test-ops -------------------------------------------------------------


def cmd_toml(argv):
    secrets_dir, out = argv
    doc = next(d for p, d in all_documents() if d.get("kind") == "ConfigMap"
               and d["metadata"]["name"] == "runta-config")
    text = doc["data"]["runta.toml"]
    if "/run/secrets/runta/" not in text:
        raise SystemExit("runta.toml reads nothing from /run/secrets/runta")
    Path(out).write_text(text.replace("/run/secrets/runta/", secrets_dir.rstrip("/") + "/"))


def cmd_render_args(argv):
    match = RENDER.search((K8S / argv[0]).read_text())
    if not match:
        raise SystemExit(f"{argv[0]}: no `# render:` line")
    args = shlex.split(match.group(1))
    rest = argv[1:]
    while rest:
        if rest[0] == "--without":
            flag, rest = rest[1], rest[2:]
            if flag not in args:
                raise SystemExit(f"{argv[0]}: no {flag} to drop")
            args.remove(flag)
        elif rest[0] == "--set":
            flag, value, rest = rest[1], rest[2], rest[3:]
            if flag in args:
                args[args.index(flag) + 1] = value
            else:
                args += [flag, value]
        else:
            raise SystemExit(f"render-args: unexpected {rest[0]}")
    for word in args:
        print(word, end="\0")


def cmd_projected(argv):
    file, name = argv
    for doc in documents(K8S / file):
        spec, _ = pod_specs(doc)
        if spec is None or doc["metadata"]["name"] != name:
            continue
        for volume in spec.get("volumes", []):
            if volume["name"] == "secrets":
                for source in volume["projected"]["sources"]:
                    for item in source["secret"]["items"]:
                        print(item["path"])
                return
    raise SystemExit(f"no volume secrets in {name} ({file})")


def cmd_container(argv):
    file, name, container_name, what = argv
    for doc in documents(K8S / file):
        spec, _ = pod_specs(doc)
        if spec is None or doc["metadata"]["name"] != name:
            continue
        for container in spec.get("initContainers", []) + spec["containers"]:
            if container["name"] == container_name:
                if what == "command":
                    for word in container.get("command", []) + container.get("args", []):
                        print(word, end="\0")
                else:
                    for env in container.get("env", []):
                        print(f"{env['name']}={env['value']}")
                return
    raise SystemExit(f"no container {container_name} in {name} ({file})")


# --- metric names -----------------------------------------------------------------------------

KEYWORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and",
    "or", "unless", "inf", "nan", "atan2",
}


def metric_names(expr):
    """Metric names in a PromQL expression (Grafana's $variables allowed)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)      # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)     # ranges and subqueries
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)    # Grafana variables outside selectors
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*(?![\w.])\s*(\()?", text):
        word = match.group(0).rstrip("( \t\n")
        if match.group(1) or word.lower() in KEYWORDS:
            continue
        # Numbers such as 1e3 never start with a letter; durations were inside [].
        names.add(word)
    return names


def dashboard_exprs():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in panels(dashboard):
        for target in panel.get("targets", []):
            if target.get("expr"):
                exprs.append((f"panel {panel.get('title')!r}", target["expr"]))
    for var in dashboard.get("templating", {}).get("list", []):
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if var.get("type") == "query" and query:
            inner = re.match(r"label_values\((.*),\s*\w+\)$", query)
            exprs.append((f"variable {var['name']}", inner.group(1) if inner else query))
    return exprs


def alert_exprs():
    rules = yaml.safe_load(ALERTS.read_text())
    return [
        (f"alert {rule.get('alert') or rule.get('record')}", rule["expr"])
        for group in rules["groups"]
        for rule in group["rules"]
    ]


def panels(dashboard):
    for panel in dashboard.get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def referenced():
    refs = {}
    for where, expr in dashboard_exprs() + alert_exprs():
        for name in metric_names(expr):
            refs.setdefault(name, []).append(where)
    return refs


def cmd_names(_argv):
    for name in sorted(referenced()):
        print(name)


def exposed(path):
    """Names in a Prometheus text exposition: metric families (HELP/TYPE) and samples."""
    names = set()
    for line in Path(path).read_text().splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            names.add(line.split()[2])
        elif line and not line.startswith("#"):
            names.add(re.match(r"[A-Za-z_:][\w:]*", line).group(0))
    return names


def cmd_metrics(argv):
    runta_text, envoy_text = argv
    runta, envoy = exposed(runta_text), exposed(envoy_text)
    if not any(n.startswith("runta_") for n in runta):
        fail(f"{runta_text} has no runta_* metric at all")
    if not any(n.startswith("envoy_") for n in envoy):
        fail(f"{envoy_text} has no envoy_* metric at all")
    refs = referenced()
    counts = {"runta": 0, "envoy": 0}
    for name, where in sorted(refs.items()):
        if name.startswith("runta_"):
            counts["runta"] += 1
            if name not in runta:
                fail(f"{name} (in {', '.join(sorted(set(where)))}) is not exposed by runta")
        elif name.startswith("envoy_"):
            counts["envoy"] += 1
            if name not in envoy:
                fail(f"{name} (in {', '.join(sorted(set(where)))}) is not exposed by Envoy")
        elif name not in PROMETHEUS_SERIES:
            fail(f"{name} (in {', '.join(sorted(set(where)))}): neither runta's nor Envoy's")
    finish(f"metric names ({counts['runta']} runta_*, {counts['envoy']} envoy_* referenced, "
           f"all exposed)")


# --- dashboard --------------------------------------------------------------------------------


def cmd_dashboard(_argv):
    dashboard = json.loads(DASHBOARD.read_text())
    for key in ("title", "uid", "panels", "schemaVersion", "templating"):
        if key not in dashboard:
            fail(f"dashboard: no {key}")
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    ids = set()
    for panel in panels(dashboard):
        title = panel.get("title")
        if panel.get("id") in ids:
            fail(f"dashboard: panel id {panel.get('id')} twice")
        ids.add(panel.get("id"))
        grid = panel.get("gridPos", {})
        if not all(k in grid for k in ("h", "w", "x", "y")) or grid.get("x", 0) + grid.get("w", 0) > 24:
            fail(f"dashboard: panel {title!r} has a bad gridPos {grid}")
        if panel.get("type") == "row":
            continue
        if not panel.get("targets"):
            fail(f"dashboard: panel {title!r} has no query")
        if not panel.get("description"):
            fail(f"dashboard: panel {title!r} has no description")
        for target in panel.get("targets", []):
            expr = target.get("expr", "")
            for var in re.findall(r"\$\{?(\w+)\}?", expr):
                if var not in variables and not var.startswith("__"):
                    fail(f"dashboard: panel {title!r} uses an undefined variable ${var}")
            if expr.count("(") != expr.count(")") or expr.count("{") != expr.count("}"):
                fail(f"dashboard: panel {title!r}: unbalanced expression {expr}")
        ds = panel.get("datasource", {})
        if ds.get("uid") != "${datasource}":
            fail(f"dashboard: panel {title!r} does not use the $datasource variable")
    titles = " ".join(p.get("title", "").lower() for p in panels(dashboard))
    for topic in ("decisions", "injection", "latency", "cache hit", "secret unavailable",
                  "bad token", "snapshot age", "store errors", "ext_proc", "cluster"):
        if topic not in titles:
            fail(f"dashboard: no panel about {topic}")
    finish(f"dashboard ({len(ids)} panels)")


def anchor(heading):
    """GitHub's anchor of a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def cmd_alerts(_argv):
    rules = yaml.safe_load(ALERTS.read_text())
    tests = yaml.safe_load((ALERTS.parent / "alerts_test.yaml").read_text())
    docs_text = DOCS.read_text() if DOCS.is_file() else ""
    anchors = {anchor(m) for m in re.findall(r"^#+ (.*)$", docs_text, re.M)}
    fires, silent = set(), set()
    for test in tests["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            name = rule.get("alert")
            if not name:
                continue
            names.append(name)
            if rule.get("labels", {}).get("severity") not in ("critical", "warning"):
                fail(f"alert {name}: severity must be critical or warning")
            annotations = rule.get("annotations", {})
            for key in ("summary", "description", "runbook"):
                if not annotations.get(key):
                    fail(f"alert {name}: no {key} annotation")
            runbook = annotations.get("runbook", "")
            doc, _, fragment = runbook.partition("#")
            if doc != "docs/operations.md" or fragment not in anchors:
                fail(f"alert {name}: runbook {runbook} is not a heading of docs/operations.md")
            if name not in fires:
                fail(f"alert {name}: no test case where it fires")
            if name not in silent:
                fail(f"alert {name}: no test case where it stays silent")
    if len(names) != len(set(names)):
        fail("an alert name is used twice")
    finish(f"alerts ({len(names)} alerts: runbooks, firing and silent test cases)")


COMMANDS = {
    "configmaps": cmd_configmaps,
    "manifests": cmd_manifests,
    "render-args": cmd_render_args,
    "toml": cmd_toml,
    "container": cmd_container,
    "projected": cmd_projected,
    "dashboard": cmd_dashboard,
    "alerts": cmd_alerts,
    "names": cmd_names,
    "metrics": cmd_metrics,
}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    COMMANDS[sys.argv[1]](sys.argv[2:])
