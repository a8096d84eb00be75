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
#     variable its command line uses is set in its example environment file.
# kubernetes-validate and its dependencies are pinned and installed, once, in a venv at
# target/deploy-venv; Debian's python3-venv and systemd are installed if missing.
#
# Usage: scripts/check-deploy.sh [DEPLOY_DIR]   (default: deploy)
set -euo pipefail
cd "$(dirname "$0")/.."

KUBERNETES_VERSION=1.33.0
KUBERNETES_VALIDATE_VERSION=1.37.0
PINNED=(
  "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
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
  [ -x "$validate" ] && [ "$("$validate" --version 2>/dev/null)" = "$KUBERNETES_VALIDATE_VERSION" ]
}

if ! installed; then
  if ! python3 -m venv --help >/dev/null 2>&1; then
    echo "installing python3-venv (Debian)" >&2
    apt_install python3-venv
  fi
  echo "installing kubernetes-validate $KUBERNETES_VALIDATE_VERSION from PyPI into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${PINNED[@]}" >&2
  if ! installed; then
    echo "check-deploy: $validate does not report version $KUBERNETES_VALIDATE_VERSION" >&2
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

if [ "$failed" -ne 0 ]; then
  echo "check-deploy: $deploy has errors (above)"
  exit 1
fi
echo "check-deploy: $deploy is valid"
