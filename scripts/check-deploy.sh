#!/usr/bin/env bash
# Offline checks of the deployment files (run by `make deploy-check`, part of `make test`):
#   - every Kubernetes manifest in deploy/kubernetes, secrets.example.yaml included, against the
#     schemas of Kubernetes $KUBERNETES_VERSION, strictly (unknown fields are errors), with
#     kubernetes-validate from PyPI, which bundles the schemas: no network, no cluster;
#   - what a schema cannot see: kustomization.yaml lists every manifest but the example
#     secrets, selectors match pod labels, every mount, Secret, ConfigMap, key, port name and
#     $(VAR) is defined, every container has probes on /health over HTTPS and resource requests
#     and limits, the scheduler's DNS discovery names the headless worker Service;
#   - every systemd unit in deploy/systemd with `systemd-analyze verify` (its binaries replaced
#     by stubs, since they need not be installed here; any warning is an error), and every
#     variable its command line uses is set in its example environment file;
#   - every Grafana dashboard in deploy/grafana: JSON, a dashboard (title, schemaVersion,
#     panels), unique panel ids, grid positions that fit and do not overlap, a Prometheus data
#     source variable and `job`/`instance` variables, and every PromQL expression parsed by
#     promql-parser from PyPI (the Rust promql-parser crate's Python binding), naming only the
#     metrics, labels and label values in SCOOT_METRICS below, filtered by $job and $instance;
#     every metric in SCOOT_METRICS is on some dashboard.
# kubernetes-validate, promql-parser and their dependencies are pinned and installed, once, in a
# venv at target/deploy-venv; Debian's python3-venv and systemd are installed if missing.
#
# Usage: scripts/check-deploy.sh [DEPLOY_DIR]   (default: deploy)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.33.0
KUBERNETES_VALIDATE_VERSION=1.37.0
PROMQL_PARSER_VERSION=0.11.0
PINNED=(
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  "promql-parser==$PROMQL_PARSER_VERSION"
  attrs==26.1.0
  importlib_resources==7.1.0
  jsonschema==4.26.0
  jsonschema-specifications==2025.9.1
  packaging==26.4
  PyYAML==6.0.4
  referencing==0.37.0
  rpds-py==2026.9.1
  typing_extensions==4.16.0
)
venv=target/deploy-venv
validate=$venv/bin/kubernetes-validate
deploy=${1:-deploy}

apt_install() {
  local sudo=""
  if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

installed() {
  [ -x "$validate" ] && [ "$("$validate" --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ] &&
    [ "$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("promql-parser"))' 2>/dev/null)" = "$PROMQL_PARSER_VERSION" ]
}

if ! installed; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    echo "installing python3-venv (Debian)" >&2
    apt_install python3-venv
  fi
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION and promql-parser $PROMQL_PARSER_VERSION from PyPI into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${PINNED[@]}" >&2
  if ! installed; then
    echo "check-deploy: $venv lacks kubernetes-validate $KUBERNETES_VALIDATE_VERSION or promql-parser $PROMQL_PARSER_VERSION" >&2
    exit 1
  fi
fi
if ! command -v systemd-analyze >/dev/null 2>&1; then
  echo "installing systemd (Debian) for systemd-analyze" >&2
  apt_install systemd
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0

# Runs kubernetes-validate on one file; any ERROR, WARN (a kind or apiVersion it has no schema
# for, so nothing was checked) or FATAL line fails it. Sets `objects` (how many passed) and
# `complaints` (the lines that are not a pass).
schema_check() {
  local file=$1 out rc=0
  out=$("$validate" --strict -k "$KUBERNETES_VERSION" "$file" 2>&1) || rc=$?
  objects=$(grep -c '^INFO ' <<<"$out" || true)
  complaints=$(grep -v '^INFO ' <<<"$out" || true)
  [ "$rc" -eq 0 ] && [ -z "$complaints" ] && [ "$objects" -gt 0 ]
}

# The validator itself must refuse a broken manifest, or a pass means nothing.
cat >"$tmp/self-test.yaml" <<'EOF'
apiVersion: apps/v1
kind: Deployment
metadata: {name: broken}
spec:
  replicas: "three"
  selector: {matchLabels: {app: broken}}
  template:
    metadata: {labels: {app: broken}}
    spec: {containers: [{name: c, image: busybox}]}
EOF
if schema_check "$tmp/self-test.yaml"; then
  echo "FAIL kubernetes-validate $KUBERNETES_VALIDATE_VERSION accepted a Deployment with replicas: \"three\""
  exit 1
fi
echo "ok   kubernetes-validate $KUBERNETES_VALIDATE_VERSION refuses a broken Deployment (self-test)"

shopt -s nullglob
manifests=()
for file in "$deploy"/kubernetes/*.yaml; do
  [ "$(basename "$file")" = kustomization.yaml ] || manifests+=("$file")
done
if [ ${#manifests[@]} -eq 0 ]; then
  echo "FAIL no manifests in $deploy/kubernetes"
  exit 1
fi
for file in "${manifests[@]}"; do
  if schema_check "$file"; then
    echo "ok   $file: $objects object(s) valid for Kubernetes $KUBERNETES_VERSION (strict schema)"
  else
    echo "FAIL $file: not valid for Kubernetes $KUBERNETES_VERSION (strict schema)"
    sed 's/^/      /' <<<"$complaints"
    failed=1
  fi
done

# Cross-object checks, one line per file.
if ! "$venv/bin/python" - "$deploy" <<'EOF'; then failed=1; fi
import json
import os
import re
import sys

import yaml

deploy = sys.argv[1]
kdir = os.path.join(deploy, "kubernetes")
NAMESPACE = "scoot"
IMAGE = "scoot-rs:latest"
EXAMPLE_SECRETS = "secrets.example.yaml"
failed = False


def report(path, problems, what):
    global failed
    if problems:
        failed = True
        print(f"FAIL {path}: {what}")
        for problem in problems:
            print(f"      {problem}")
    else:
        print(f"ok   {path}: {what}")


def load(path):
    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


# kustomization.yaml lists every manifest, and not the example secrets.
kustomization = os.path.join(kdir, "kustomization.yaml")
problems = []
listed = []
try:
    listed = load(kustomization)[0].get("resources", [])
except (OSError, IndexError, yaml.YAMLError) as e:
    problems.append(f"cannot read it: {e}")
present = sorted(
    name for name in os.listdir(kdir)
    if name.endswith(".yaml") and name not in ("kustomization.yaml", EXAMPLE_SECRETS)
)
for name in listed:
    if not os.path.isfile(os.path.join(kdir, name)):
        problems.append(f"lists {name}, which does not exist")
for name in present:
    if name not in listed:
        problems.append(f"does not list {name}")
if EXAMPLE_SECRETS in listed:
    problems.append(f"lists {EXAMPLE_SECRETS}: its placeholders would overwrite real secrets")
report(kustomization, problems, f"resources are the {len(present)} manifests, without {EXAMPLE_SECRETS}")

objects = []  # (file, object)
for name in present + [EXAMPLE_SECRETS]:
    path = os.path.join(kdir, name)
    if os.path.isfile(path):
        objects += [(path, obj) for obj in load(path)]


def find(kind, name):
    for _, obj in objects:
        if obj.get("kind") == kind and obj.get("metadata", {}).get("name") == name:
            return obj
    return None


def pod_templates():
    for path, obj in objects:
        if obj.get("kind") in ("Deployment", "StatefulSet", "DaemonSet"):
            yield path, obj, obj["spec"]["template"]


def subset(small, big):
    return all(big.get(k) == v for k, v in (small or {}).items())


def secret_keys(secret):
    return set((secret.get("data") or {}).keys()) | set((secret.get("stringData") or {}).keys())


def check_workload(path, obj, template):
    problems = []
    kind_name = f"{obj['kind']} {obj['metadata']['name']}"
    spec = obj["spec"]
    labels = template.get("metadata", {}).get("labels", {})
    if not subset(spec["selector"].get("matchLabels"), labels):
        problems.append(f"{kind_name}: selector does not match the pod labels")
    if obj["kind"] == "StatefulSet":
        service = find("Service", spec.get("serviceName"))
        if service is None:
            problems.append(f"{kind_name}: serviceName {spec.get('serviceName')} is no Service")
    pod = template["spec"]
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    claims = {c["metadata"]["name"] for c in spec.get("volumeClaimTemplates", [])}
    for vname, volume in volumes.items():
        if "secret" in volume:
            secret = find("Secret", volume["secret"]["secretName"])
            if secret is None:
                problems.append(f"volume {vname}: Secret {volume['secret']['secretName']} is not defined (not even in {EXAMPLE_SECRETS})")
            else:
                for item in volume["secret"].get("items", []):
                    if item["key"] not in secret_keys(secret):
                        problems.append(f"volume {vname}: Secret {secret['metadata']['name']} has no key {item['key']}")
        if "configMap" in volume:
            config = find("ConfigMap", volume["configMap"]["name"])
            if config is None:
                problems.append(f"volume {vname}: ConfigMap {volume['configMap']['name']} is not defined")
    for container in pod["containers"]:
        cname = f"container {container['name']}"
        proc_mount = container.get("securityContext", {}).get("procMount")
        if proc_mount == "Unmasked" and pod.get("hostUsers") is not False:
            problems.append(f"{cname}: procMount Unmasked is refused without hostUsers: false")
        if container.get("image") != IMAGE:
            problems.append(f"{cname}: image {container.get('image')!r}, not {IMAGE}")
        resources = container.get("resources", {})
        for section in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in resources.get(section, {}):
                    problems.append(f"{cname}: no {resource} in resources.{section}")
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        for probe_name in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = container.get(probe_name)
            if probe is None:
                if probe_name != "startupProbe":
                    problems.append(f"{cname}: no {probe_name}")
                continue
            get = probe.get("httpGet")
            if not get or get.get("path") != "/health" or get.get("scheme") != "HTTPS":
                problems.append(f"{cname}: {probe_name} is not an HTTPS GET of /health")
            elif isinstance(get["port"], str) and get["port"] not in ports:
                problems.append(f"{cname}: {probe_name} port {get['port']} is not a container port")
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes and mount["name"] not in claims:
                problems.append(f"{cname}: mount {mount['name']} is neither a volume nor a claim template")
            if "subPath" in mount and mount["name"] in volumes and (
                "secret" in volumes[mount["name"]] or "configMap" in volumes[mount["name"]]
            ):
                problems.append(f"{cname}: mount {mount['name']} uses subPath, so updates never reach it")
        env = {e["name"] for e in container.get("env", [])}
        for arg in container.get("command", []) + container.get("args", []):
            for var in re.findall(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", str(arg)):
                if var not in env:
                    problems.append(f"{cname}: $({var}) is used but not in env")
    return problems


def check_service(obj):
    problems = []
    name = obj["metadata"]["name"]
    selector = obj["spec"].get("selector")
    matches = [t for _, _, t in pod_templates() if subset(selector, t["metadata"].get("labels", {}))]
    if not matches:
        problems.append(f"Service {name}: selector {selector} matches no pod template")
    for port in obj["spec"].get("ports", []):
        target = port.get("targetPort", port["port"])
        for template in matches:
            names = {p.get("name") for c in template["spec"]["containers"] for p in c.get("ports", [])}
            numbers = {p["containerPort"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
            if target not in names and target not in numbers:
                problems.append(f"Service {name}: targetPort {target} is no container port")
    return problems


def check_scheduler_config(obj):
    problems = []
    for key, text in (obj.get("data") or {}).items():
        if not key.endswith(".json"):
            continue
        try:
            config = json.loads(text)
        except json.JSONDecodeError as e:
            problems.append(f"{key}: not JSON: {e}")
            continue
        cluster = config.get("Cluster", {})
        if cluster.get("Type") == "dns":
            m = re.fullmatch(r"([a-z0-9-]+)\.([a-z0-9-]+)\.svc\.cluster\.local", cluster.get("Name", ""))
            service = find("Service", m.group(1)) if m else None
            if service is None or m.group(2) != NAMESPACE:
                problems.append(f"{key}: Cluster.Name {cluster.get('Name')!r} is no Service of namespace {NAMESPACE}")
            elif service["spec"].get("clusterIP") != "None":
                problems.append(f"{key}: Service {m.group(1)} is not headless, so its name has no record per worker")
            elif cluster.get("Port") not in [p["port"] for p in service["spec"].get("ports", [])]:
                problems.append(f"{key}: Cluster.Port {cluster.get('Port')} is not a port of Service {m.group(1)}")
    return problems


by_file = {}
for path, obj in objects:
    by_file.setdefault(path, []).append(obj)
for path, objs in by_file.items():
    problems = []
    for obj in objs:
        kind = obj.get("kind")
        if kind != "Namespace" and obj.get("metadata", {}).get("namespace") != NAMESPACE:
            problems.append(f"{kind} {obj['metadata'].get('name')}: not in namespace {NAMESPACE}")
        if kind in ("Deployment", "StatefulSet", "DaemonSet"):
            problems += check_workload(path, obj, obj["spec"]["template"])
        elif kind == "Service":
            problems += check_service(obj)
        elif kind == "ConfigMap":
            problems += check_scheduler_config(obj)
    report(path, problems, "references, labels, ports, probes and resources agree")

for name in sorted(os.listdir(os.path.join(deploy, "systemd"))):
    if name.endswith(".json"):
        path = os.path.join(deploy, "systemd", name)
        try:
            with open(path) as f:
                json.load(f)
            report(path, [], "is JSON")
        except (OSError, json.JSONDecodeError) as e:
            report(path, [str(e)], "is JSON")

sys.exit(1 if failed else 0)
EOF

# systemd units: verified as they are, but for the binaries, which are stubs here.
units=("$deploy"/systemd/*.service)
if [ ${#units[@]} -eq 0 ]; then
  echo "FAIL no units in $deploy/systemd"
  exit 1
fi
mkdir -p "$tmp/bin" "$tmp/units"
for unit in "${units[@]}"; do
  name=$(basename "$unit")
  for binary in $(grep -o '/usr/local/bin/[A-Za-z0-9_-]*' "$unit" | sort -u); do
    printf '#!/bin/sh\n' >"$tmp/bin/$(basename "$binary")"
    chmod +x "$tmp/bin/$(basename "$binary")"
  done
  sed "s#/usr/local/bin/#$tmp/bin/#g" "$unit" >"$tmp/units/$name"
  rc=0
  out=$(systemd-analyze verify "$tmp/units/$name" 2>&1) || rc=$?
  problems=()
  if [ "$rc" -ne 0 ] || [ -n "$out" ]; then
    problems+=("systemd-analyze verify (exit $rc):")
    while IFS= read -r line; do problems+=("  ${line//$tmp\/units\//}"); done <<<"$out"
  fi
  # Every ${VAR} and $VAR on its command line is set in the environment file it reads.
  envfile=$(sed -n 's#^EnvironmentFile=-\{0,1\}/etc/scoot/##p' "$unit")
  if [ -n "$envfile" ]; then
    if [ ! -f "$deploy/systemd/$envfile" ]; then
      problems+=("reads /etc/scoot/$envfile, but $deploy/systemd/$envfile does not exist")
    else
      for var in $(grep -o '\$[{]\{0,1\}[A-Z_][A-Z0-9_]*' "$unit" | tr -d '${' | sort -u); do
        grep -q "^$var=" "$deploy/systemd/$envfile" || problems+=("uses \$$var, which $envfile does not set")
      done
    fi
  fi
  if [ ${#problems[@]} -eq 0 ]; then
    echo "ok   $unit: systemd-analyze verify is silent; its variables are set in ${envfile:-(no environment file)}"
  else
    echo "FAIL $unit"
    printf '      %s\n' "${problems[@]}"
    failed=1
  fi
done

# Grafana dashboards, one line per file, then one for the metric list as a whole.
if ! "$venv/bin/python" - "$deploy" "$PROMQL_PARSER_VERSION" <<'EOF'; then failed=1; fi
import glob
import json
import os
import re
import sys

import promql_parser as promql

deploy, parser_version = sys.argv[1], sys.argv[2]
failed = False

# What scoot exports (crates/metrics and its callers): the only names a dashboard may use.
# kind, then labels (with the values each may take; None for any value).
SCOOT_METRICS = {
    # scheduler
    "scoot_scheduler_jobs_total": ("counter", {}),
    "scoot_scheduler_tasks_scheduled_total": ("counter", {}),
    "scoot_scheduler_tasks_completed_total": ("counter", {}),
    "scoot_scheduler_tasks_failed_total": ("counter", {}),
    "scoot_scheduler_task_retries_total": ("counter", {}),
    "scoot_scheduler_running_tasks": ("gauge", {}),
    "scoot_scheduler_waiting_tasks": ("gauge", {}),
    "scoot_scheduler_in_progress_jobs": ("gauge", {}),
    "scoot_scheduler_workers": ("gauge", {"state": {"ready", "offline", "lost", "checking"}}),
    "scoot_scheduler_run_job_duration_seconds": ("histogram", {}),
    "scoot_scheduler_job_duration_seconds": ("histogram", {}),
    "scoot_saga_write_duration_seconds": ("histogram", {}),
    # REAPI, served by the scheduler
    "scoot_reapi_execute_requests_total": ("counter", {"outcome": {
        "queued", "cached", "merged", "failed_precondition", "invalid_argument", "error"}}),
    "scoot_reapi_queued_actions": ("gauge", {}),
    "scoot_reapi_queue_wait_seconds": ("histogram", {}),
    "scoot_reapi_action_phase_seconds": ("histogram", {"phase": {
        "queued", "input_fetch", "execution", "output_upload"}}),
    "scoot_reapi_action_cache_lookups_total": ("counter", {"result": {"hit", "miss"}}),
    "scoot_cas_bytes_total": ("counter", {"direction": {"in", "out"}}),
    "scoot_cas_find_missing_requested_total": ("counter", {}),
    "scoot_cas_find_missing_missing_total": ("counter", {}),
    "scoot_reapi_merged_executions": ("gauge", {}),
    # workerserver
    "scoot_worker_running_task": ("gauge", {}),
    "scoot_worker_runs_total": ("counter", {}),
    "scoot_worker_aborts_total": ("counter", {}),
    "scoot_worker_task_duration_seconds": ("histogram", {}),
    "scoot_worker_unhealthy": ("gauge", {}),
    # apiserver
    "scoot_bundlestore_reads_total": ("counter", {}),
    "scoot_bundlestore_writes_total": ("counter", {}),
    "scoot_bundlestore_exists_total": ("counter", {}),
    "scoot_bundlestore_read_duration_seconds": ("histogram", {}),
}
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series

# Every series name a query may select: name -> (metric, is_counter_like, labels).
SERIES = {}
for metric, (kind, labels) in SCOOT_METRICS.items():
    if kind == "histogram":
        SERIES[metric + "_bucket"] = (metric, True, {**labels, "le": None})
        SERIES[metric + "_sum"] = (metric, True, labels)
        SERIES[metric + "_count"] = (metric, True, labels)
    else:
        SERIES[metric] = (metric, kind == "counter", labels)

RATE_FUNCTIONS = {"rate", "irate", "increase"}
# Grafana's own variables, replaced as Grafana would before the query reaches Prometheus.
MACROS = [
    (re.compile(r"\$\{?__(rate_interval|interval|range)\}?"), "5m"),
    (re.compile(r"\$\{?__(interval_ms|range_ms|range_s)\}?"), "300"),
]


def report(path, problems, what):
    global failed
    if problems:
        failed = True
        print(f"FAIL {path}: {what}")
        for problem in problems:
            print(f"      {problem}")
    else:
        print(f"ok   {path}: {what}")


def parse(expr):
    for pattern, value in MACROS:
        expr = pattern.sub(value, expr)
    return promql.parse(expr)


# The parser itself must refuse broken PromQL, or a pass means nothing.
for broken in ('sum(rate(scoot_worker_runs_total[5m])', 'rate(scoot_worker_runs_total)',
               'histogram_quantile(0.5)', 'scoot_worker_runs_total{job=~"$job"'):
    try:
        parse(broken)
    except ValueError:
        continue
    print(f"FAIL promql-parser {parser_version} accepted {broken!r}")
    sys.exit(1)
print(f"ok   promql-parser {parser_version} refuses broken PromQL (self-test)")


def selectors(node):
    found = []

    def visit(n):
        if isinstance(n, promql.VectorSelector):
            found.append(n)
    promql.walk(node, visit)
    return found


def calls(node):
    found = []

    def visit(n):
        if isinstance(n, promql.Call):
            found.append(n)
    promql.walk(node, visit)
    return found


def check_expr(expr, where, used, problems):
    """Parses one query and checks what it selects; adds the metrics it names to `used`."""
    try:
        ast = parse(expr)
    except ValueError as e:
        problems.append(f"{where}: not PromQL ({e}): {expr}")
        return
    for sel in selectors(ast):
        matchers = {m.name: m for m in sel.matchers.matchers}
        names = [sel.name] if sel.name else []
        if "__name__" in matchers:
            m = matchers.pop("__name__")
            if m.op == promql.MatchOp.Equal:
                names.append(m.value)
            else:
                regex = re.compile(m.value)
                names += [s for s in SERIES if regex.fullmatch(s)] or [f"(nothing matches {m.value!r})"]
        if not names:
            problems.append(f"{where}: a selector without a metric name: {expr}")
        for name in names:
            if name not in SERIES:
                problems.append(f"{where}: {name} is not a metric scoot exports")
                continue
            metric, _, labels = SERIES[name]
            used.add(metric)
            for label, m in matchers.items():
                if label in TARGET_LABELS:
                    continue
                if label not in labels:
                    problems.append(f"{where}: {name} has no label {label}")
                elif labels[label] and m.op == promql.MatchOp.Equal and m.value not in labels[label]:
                    problems.append(f"{where}: {name}{{{label}}} is never {m.value!r} (only {', '.join(sorted(labels[label]))})")
        for label in TARGET_LABELS:
            m = matchers.get(label)
            if m is None or m.op != promql.MatchOp.Re or m.value != f"${label}":
                problems.append(f"{where}: a selector not filtered by {label}=~\"${label}\": {sel}")
    for call in calls(ast):
        func = call.func.name
        if func in RATE_FUNCTIONS:
            for sel in selectors(call):
                if sel.name in SERIES and not SERIES[sel.name][1]:
                    problems.append(f"{where}: {func}() of {sel.name}, a gauge")
        if func == "histogram_quantile":
            inner = call.args[1]
            while isinstance(inner, promql.ParenExpr):
                inner = inner.expr
            if isinstance(inner, promql.AggregateExpr) and inner.modifier is not None:
                keeps_le = ("le" in inner.modifier.labels) == (inner.modifier.type == promql.AggModifierType.By)
                if not keeps_le:
                    problems.append(f"{where}: histogram_quantile() of an aggregation that drops le")
            elif isinstance(inner, promql.AggregateExpr):
                problems.append(f"{where}: histogram_quantile() of an aggregation that drops le")
            if not any(sel.name and sel.name.endswith("_bucket") for sel in selectors(inner)):
                problems.append(f"{where}: histogram_quantile() of no _bucket series")

    def check_by(n):
        if isinstance(n, promql.AggregateExpr) and n.modifier is not None and n.modifier.type == promql.AggModifierType.By:
            if any(c.func.name in ("label_replace", "label_join") for c in calls(n.expr)):
                return
            known = set(TARGET_LABELS)
            for sel in selectors(n.expr):
                if sel.name in SERIES:
                    known |= set(SERIES[sel.name][2])
            for label in n.modifier.labels:
                if label not in known:
                    problems.append(f"{where}: aggregates by {label}, which none of its metrics has")
    promql.walk(ast, check_by)


def all_panels(panels):
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels") or [])


def check_dashboard(path, used):
    problems = []
    try:
        with open(path) as f:
            dash = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        return [f"not JSON: {e}"], 0, 0
    if not isinstance(dash, dict):
        return ["not a JSON object"], 0, 0
    if not isinstance(dash.get("title"), str) or not dash["title"]:
        problems.append("no title")
    if not isinstance(dash.get("schemaVersion"), int):
        problems.append("no integer schemaVersion")
    if not isinstance(dash.get("panels"), list) or not dash["panels"]:
        return problems + ["no panels"], 0, 0

    variables = {v.get("name"): v for v in (dash.get("templating") or {}).get("list", [])}
    datasources = set()
    for v in variables.values():
        if v.get("type") == "datasource" and v.get("query") == "prometheus":
            datasources |= {f"${v['name']}", f"${{{v['name']}}}"}
    for i in dash.get("__inputs", []):
        if i.get("type") == "datasource" and i.get("pluginId") == "prometheus":
            datasources |= {f"${{{i['name']}}}"}
    if not datasources:
        problems.append("no Prometheus data source: neither a datasource variable of query "
                        "prometheus nor a __inputs entry")
    for name in ("job", "instance"):
        if name not in variables:
            problems.append(f"no ${name} template variable")

    def check_datasource(ds, where):
        if ds is None:
            return
        if not isinstance(ds, dict) or ds.get("type") != "prometheus" or ds.get("uid") not in datasources:
            problems.append(f"{where}: data source {ds!r} is not the dashboard's Prometheus variable or input")

    for name, v in variables.items():
        if v.get("type") != "query":
            continue
        where = f"variable ${name}"
        check_datasource(v.get("datasource"), where)
        query = v.get("query")
        query = query.get("query", "") if isinstance(query, dict) else (query or "")
        m = re.fullmatch(r"\s*label_values\((.*),\s*([A-Za-z_][A-Za-z0-9_]*)\s*\)\s*", query)
        if not m:
            problems.append(f"{where}: query {query!r} is not label_values(SELECTOR, LABEL)")
            continue
        var_problems = []
        check_expr(m.group(1), where, set(), var_problems)
        # A variable may be filtered by the ones before it, not by itself.
        problems.extend(p for p in var_problems if "a selector not filtered by" not in p)

    panels = list(all_panels(dash["panels"]))
    ids = {}
    cells = {}
    targets = 0
    for panel in panels:
        pid = panel.get("id")
        where = f"panel {pid} {panel.get('title', '')!r}"
        if not isinstance(pid, int) or isinstance(pid, bool):
            problems.append(f"{where}: no integer id")
        elif pid in ids:
            problems.append(f"{where}: id {pid} is taken by panel {ids[pid]!r}")
        else:
            ids[pid] = panel.get("title", "")
        grid = panel.get("gridPos")
        if not isinstance(grid, dict) or not all(isinstance(grid.get(k), int) for k in "hwxy"):
            problems.append(f"{where}: no gridPos with integer h, w, x, y")
        elif grid["x"] < 0 or grid["w"] < 1 or grid["x"] + grid["w"] > 24 or grid["h"] < 1 or grid["y"] < 0:
            problems.append(f"{where}: gridPos {grid} does not fit the 24-column grid")
        elif panel in dash["panels"]:
            for x in range(grid["x"], grid["x"] + grid["w"]):
                for y in range(grid["y"], grid["y"] + grid["h"]):
                    if (x, y) in cells:
                        problems.append(f"{where}: overlaps panel {cells[x, y]}")
                        break
                    cells[x, y] = pid
                else:
                    continue
                break
        if panel.get("type") == "row":
            continue
        check_datasource(panel.get("datasource"), where)
        if not panel.get("targets"):
            problems.append(f"{where}: no targets")
        refs = set()
        for target in panel.get("targets") or []:
            ref = target.get("refId")
            twhere = f"{where} target {ref}"
            if ref in refs:
                problems.append(f"{twhere}: refId used twice")
            refs.add(ref)
            check_datasource(target.get("datasource"), twhere)
            if not isinstance(target.get("expr"), str) or not target["expr"].strip():
                problems.append(f"{twhere}: no expr")
                continue
            targets += 1
            check_expr(target["expr"], twhere, used, problems)
    return problems, len(panels), targets


shown = set()
paths = sorted(glob.glob(os.path.join(deploy, "grafana", "*.json")))
if not paths:
    print(f"FAIL no dashboards in {deploy}/grafana")
    sys.exit(1)
for path in paths:
    used = set()
    problems, panels, targets = check_dashboard(path, used)
    shown |= used
    if problems:
        report(path, problems, "not a valid dashboard")
    else:
        report(path, problems, f"a dashboard of {panels} panels and {targets} PromQL queries "
               f"(valid, over {len(used)} scoot metrics)")
missing = sorted(set(SCOOT_METRICS) - shown)
report(f"{deploy}/grafana", [f"{m} is on no dashboard" for m in missing],
       f"all {len(SCOOT_METRICS)} metrics scoot exports are on a dashboard")

sys.exit(1 if failed else 0)
EOF

if [ "$failed" -ne 0 ]; then
  echo "check-deploy: $deploy has errors (above)"
  exit 1
fi
echo "check-deploy: $deploy is valid"
