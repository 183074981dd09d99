#!/usr/bin/env python3
"""Offline checks of the Dockerfile and the Helm chart (no cluster, no Docker).

Run by scripts/test with the Python of .build/venv, after the cargo steps:

    python deploy/check_chart.py --gateway target/debug/vipps-order-gateway

Every check prints what it looked at; any failure is listed at the end and
the script exits 1.
"""

from __future__ import annotations

import argparse
import base64
import copy
import ipaddress
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any, Callable

import helm_python as helm
import yaml
from cloudcoil.models.prometheus_operator import v1 as prom
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "vipps-order-gateway"
VALUES = ROOT / "deploy" / "values"
RENDERED = ROOT / ".build" / "rendered"
VENV_BIN = Path(sys.executable).parent

RELEASE = "gw"
NAMESPACE = "payments"
# The chart's lowest supported Kubernetes (Chart.yaml kubeVersion) and the
# newest schemas kubernetes-validate ships.
K8S_VERSIONS = ["1.30.0", "1.37.0"]
CORE_KINDS = {
    "ConfigMap",
    "Secret",
    "Service",
    "ServiceAccount",
    "Deployment",
    "Ingress",
    "HorizontalPodAutoscaler",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "PersistentVolumeClaim",
}
CUSTOM_KINDS: dict[str, type[BaseModel]] = {
    "ServiceMonitor": prom.ServiceMonitor,
    "PrometheusRule": prom.PrometheusRule,
}
OBSERVABILITY_FILES = ["grafana-dashboard.json", "alerts.yaml"]
# gateway.auth.jwt key sources and the [auth.jwt] field each becomes.
KEY_KINDS = {"hs256Secret": "hs256_secret_file", "publicKey": "public_key_file", "jwks": "jwks_file"}

failures: list[str] = []


def check(ok: bool, what: str) -> bool:
    if not ok:
        failures.append(what)
        print(f"  FAIL {what}")
    return ok


def section(title: str) -> None:
    print(f"\n--- {title}")


def load_values(name: str) -> dict[str, Any] | None:
    if name == "default":
        return None
    return yaml.safe_load((VALUES / f"{name}.yaml").read_text())


def render(values: dict[str, Any] | None) -> list[dict[str, Any]]:
    chart = helm.Chart.load(CHART)
    out = chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
    docs = []
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                doc["_template"] = path
                docs.append(doc)
    return docs


def strip(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k != "_template"}


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any] | None:
    found = [d for d in docs if d["kind"] == kind]
    return found[0] if len(found) == 1 else None


# ---------------------------------------------------------------- caller-auth keys


def _probable_prime(bits: int) -> int:
    small = [p for p in range(3, 2000, 2) if all(p % q for q in range(3, int(p**0.5) + 1, 2))]
    while True:
        n = secrets.randbits(bits) | (1 << (bits - 1)) | 1
        if any(n % p == 0 for p in small):
            continue
        d, r = n - 1, 0
        while d % 2 == 0:
            d, r = d // 2, r + 1
        for _ in range(40):
            x = pow(secrets.randbelow(n - 3) + 2, d, n)
            if x in (1, n - 1):
                continue
            for _ in range(r - 1):
                x = pow(x, 2, n)
                if x == n - 1:
                    break
            else:
                break
        else:
            return n


def rsa_public_numbers() -> tuple[int, int]:
    """A fresh RSA-2048 modulus and exponent (the private half is dropped)."""
    e = 65537
    while True:
        p, q = _probable_prime(1024), _probable_prime(1024)
        if p != q and (p - 1) % e and (q - 1) % e:
            return p * q, e


def _der(tag: int, body: bytes) -> bytes:
    n = len(body)
    length = bytes([n]) if n < 128 else bytes([0x80 | ((n.bit_length() + 7) // 8)]) + n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag]) + length + body


def _der_int(v: int) -> bytes:
    return _der(0x02, v.to_bytes(v.bit_length() // 8 + 1, "big"))


def _b64url(v: int) -> str:
    return base64.urlsafe_b64encode(v.to_bytes((v.bit_length() + 7) // 8, "big")).rstrip(b"=").decode()


def make_auth_key(kind: str) -> str:
    """Key material of one kind the gateway loads: an HS256 secret of 64
    bytes, a PEM RSA public key (PKCS#1), or a JWKS with one RSA key."""
    if kind == "hs256Secret":
        return secrets.token_urlsafe(48) + "\n"
    n, e = rsa_public_numbers()
    if kind == "publicKey":
        der = base64.encodebytes(_der(0x30, _der_int(n) + _der_int(e))).decode().replace("\n", "")
        lines = [der[i : i + 64] for i in range(0, len(der), 64)]
        return "-----BEGIN RSA PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END RSA PUBLIC KEY-----\n"
    return json.dumps({"keys": [{"kty": "RSA", "kid": "chart-check", "use": "sig", "alg": "RS256", "n": _b64url(n), "e": _b64url(e)}]})


def snake(key: str) -> str:
    return re.sub(r"([A-Z])", lambda m: "_" + m.group(1).lower(), key)


# ---------------------------------------------------------------- observability


def check_observability_copies() -> None:
    section("observability files: chart copies equal the originals")
    for name in OBSERVABILITY_FILES:
        original = ROOT / "observability" / name
        copy_ = CHART / "files" / name
        if not check(original.is_file(), f"{original.relative_to(ROOT)} exists"):
            continue
        if not check(copy_.is_file(), f"{copy_.relative_to(ROOT)} exists"):
            continue
        same = original.read_bytes() == copy_.read_bytes()
        check(same, f"{copy_.relative_to(ROOT)} is byte-identical to observability/{name}")
        print(f"  {name}: {original.stat().st_size} bytes, identical={same}")
    rules = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
    groups = rules.get("groups") if isinstance(rules, dict) else None
    if check(isinstance(groups, list) and groups, "alerts.yaml is a rules file (groups: [...])"):
        nrules = sum(len(g.get("rules", [])) for g in groups)
        print(f"  alerts.yaml: {len(groups)} group(s), {nrules} rule(s)")
    dashboard = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
    check(isinstance(dashboard.get("panels"), list), "the dashboard JSON has panels")
    check(bool(dashboard.get("title")), "the dashboard JSON has a title")


# ---------------------------------------------------------------- Dockerfile


def check_dockerfile() -> None:
    section("Dockerfile: hadolint and what the chart relies on")
    hadolint = shutil.which("hadolint", path=str(VENV_BIN)) or shutil.which("hadolint")
    if check(hadolint is not None, "hadolint is installed"):
        version = subprocess.run([hadolint, "--version"], capture_output=True, text=True).stdout.strip()
        res = subprocess.run(
            [hadolint, "--failure-threshold", "info", "Dockerfile"],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
        print(f"  {version}: exit {res.returncode}")
        if res.stdout.strip():
            print(res.stdout)
        check(res.returncode == 0, "hadolint finds nothing in Dockerfile")
    lines = [line.strip() for line in (ROOT / "Dockerfile").read_text().splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    froms = [line for line in instructions if line.upper().startswith("FROM ")]
    check(len(froms) >= 2, "the Dockerfile has a build stage and a runtime stage")
    check(
        "distroless" in froms[-1] or "slim" in froms[-1],
        "the runtime stage is a distroless or slim image",
    )
    users = [line.split()[1] for line in instructions if line.upper().startswith("USER ")]
    check(bool(users) and users[-1].split(":")[0] not in ("0", "root"), "the image runs as a non-root user")
    check(
        bool(users) and users[-1].split(":")[0].isdigit(),
        "USER is numeric, so runAsNonRoot can verify it",
    )
    exposed = {p for line in instructions if line.upper().startswith("EXPOSE ") for p in line.split()[1:]}
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    for port in (defaults["service"]["port"], defaults["metrics"]["port"]):
        check(str(port) in exposed, f"the Dockerfile exposes the chart's port {port}")
    print(f"  stages={len(froms)} user={users[-1] if users else None} exposed={sorted(exposed)}")
    dockerignore = (ROOT / ".dockerignore").read_text()
    check("!src/" in dockerignore and "!Cargo.lock" in dockerignore, ".dockerignore lets the sources in")
    # sqlx::migrate!("migrations/...") reads them when the binary is built.
    check("!migrations/" in dockerignore, ".dockerignore lets the outbox's migrations in")
    check(
        any(line.split()[:2] == ["COPY", "migrations"] for line in instructions),
        "the Dockerfile copies the outbox's migrations into the build",
    )
    # askama reads templates/ when the binary is built.
    check("!templates/" in dockerignore, ".dockerignore lets the simulator's page templates in")
    check(
        any(line.split()[:2] == ["COPY", "templates"] for line in instructions),
        "the Dockerfile copies the simulator's page templates into the build",
    )


# ---------------------------------------------------------------- docs

# Values documented as one row, not key by key.
OPAQUE_VALUES = ("Selector", "annotations", "labels", "resources", "SecurityContext", "securityContext", "strategy")


def value_keys(values: dict[str, Any], prefix: str = "") -> list[str]:
    keys = []
    for key, value in values.items():
        path = prefix + key
        if isinstance(value, dict) and value and not path.endswith(OPAQUE_VALUES):
            keys.extend(value_keys(value, path + "."))
        else:
            keys.append(path)
    return keys


def check_values_documented() -> None:
    section("every value is in the chart README's table")
    readme = (CHART / "README.md").read_text()
    keys = value_keys(yaml.safe_load((CHART / "values.yaml").read_text()))
    for key in keys:
        parent, _, last = key.rpartition(".")
        documented = f"`{key}`" in readme or (f"`.{last}`" in readme and f"`{parent}." in readme)
        check(documented, f"helm/vipps-order-gateway/README.md documents `{key}`")
    print(f"  {len(keys)} values looked up")


# ---------------------------------------------------------------- lint


def check_lint(scenarios: list[str]) -> None:
    section("helm lint --strict")
    for name in scenarios:
        report = helm.lint(CHART, load_values(name), strict=True, namespace=NAMESPACE)
        bad = [m for m in report["messages"] if m["severity"] >= 2]
        for m in report["messages"]:
            print(f"  [{name}] severity {m['severity']} {m['path']}: {m['error']}")
        check(not bad and not report["errors"], f"helm lint --strict passes with {name} values")
        print(f"  [{name}] charts linted: {report['total_charts_linted']}, warnings or errors: {len(bad)}")


# ---------------------------------------------------------------- schemas


def unknown_fields(given: Any, known: Any, path: str = "") -> list[str]:
    """Fields of `given` that the model dropped (it ignores extra fields)."""
    out: list[str] = []
    if isinstance(given, dict) and isinstance(known, dict):
        for key, value in given.items():
            if key not in known:
                out.append(f"{path}{key}")
            else:
                out.extend(unknown_fields(value, known[key], f"{path}{key}."))
    elif isinstance(given, list) and isinstance(known, list):
        for i, (g, k) in enumerate(zip(given, known)):
            out.extend(unknown_fields(g, k, f"{path}{i}."))
    return out


def validate_custom(doc: dict[str, Any]) -> list[str]:
    """Validates a prometheus-operator resource against the published models."""
    model = CUSTOM_KINDS[doc["kind"]]
    try:
        parsed = model.model_validate(doc)
    except Exception as err:  # pydantic.ValidationError
        return [str(err)]
    problems = []
    if doc.get("apiVersion") != "monitoring.coreos.com/v1":
        problems.append(f"apiVersion {doc.get('apiVersion')}")
    known = parsed.model_dump(by_alias=True, exclude_unset=True, mode="json")
    problems += [f"unknown field {f}" for f in unknown_fields(doc, known)]
    if doc["kind"] == "ServiceMonitor":
        if not doc["spec"].get("endpoints"):
            problems.append("no endpoints")
    if doc["kind"] == "PrometheusRule":
        for g in doc["spec"]["groups"]:
            for r in g.get("rules") or []:
                if ("alert" in r) == ("record" in r):
                    problems.append(f"rule in {g['name']} needs exactly one of alert/record")
    return problems


def check_schemas(name: str, docs: list[dict[str, Any]]) -> dict[str, int]:
    outdir = RENDERED / name
    shutil.rmtree(outdir, ignore_errors=True)
    outdir.mkdir(parents=True)
    counts: dict[str, int] = {}
    core_files = []
    for i, doc in enumerate(docs):
        kind = doc["kind"]
        counts[kind] = counts.get(kind, 0) + 1
        body = strip(doc)
        path = outdir / f"{i:02d}-{kind.lower()}-{doc['metadata']['name']}.yaml"
        path.write_text(yaml.safe_dump(body, sort_keys=False))
        if kind in CORE_KINDS:
            core_files.append(path)
        elif kind in CUSTOM_KINDS:
            problems = validate_custom(body)
            check(not problems, f"[{name}] {kind}/{doc['metadata']['name']} matches the prometheus-operator model: {problems}")
        else:
            check(False, f"[{name}] {kind} is neither a known core kind nor a known custom resource")
    validator = shutil.which("kubernetes-validate", path=str(VENV_BIN))
    if check(validator is not None, "kubernetes-validate is installed") and core_files:
        for version in K8S_VERSIONS:
            res = subprocess.run(
                [validator, "--strict", "--no-warn", "-k", version, *map(str, core_files)],
                capture_output=True,
                text=True,
            )
            passed = res.stdout.count(" passed for resource ")
            if res.returncode != 0:
                print(res.stdout + res.stderr)
            check(
                res.returncode == 0 and passed == len(core_files),
                f"[{name}] kubernetes-validate --strict -k {version}: {passed}/{len(core_files)} passed",
            )
            print(f"  [{name}] kubernetes-validate --strict -k {version}: {passed}/{len(core_files)} core manifests passed")
    ncustom = sum(counts.get(k, 0) for k in CUSTOM_KINDS)
    print(f"  [{name}] {len(docs)} manifests: {dict(sorted(counts.items()))}; {ncustom} checked against prometheus-operator models")
    return counts


# ---------------------------------------------------------------- semantics


def subset(small: dict[str, str], big: dict[str, str]) -> bool:
    return all(big.get(k) == v for k, v in small.items())


def gateway_toml(docs: list[dict[str, Any]]) -> dict[str, Any]:
    cms = [d for d in docs if d["kind"] == "ConfigMap" and "gateway.toml" in d.get("data", {})]
    return tomllib.loads(cms[0]["data"]["gateway.toml"])


# ---------------------------------------------------------------- NetworkPolicy egress

# A destination of the gateway's traffic: a pod (its labels and its
# namespace's labels) or an address range, and a TCP or UDP port.
Pod = tuple[dict[str, str], dict[str, str]]


def selector_matches(selector: dict[str, Any] | None, labels: dict[str, str]) -> bool:
    """Kubernetes label-selector semantics; {} matches everything."""
    if selector is None:
        return False
    if not subset(selector.get("matchLabels") or {}, labels):
        return False
    for e in selector.get("matchExpressions") or []:
        key, op, vals = e["key"], e["operator"], e.get("values") or []
        ok = {
            "In": key in labels and labels[key] in vals,
            "NotIn": key not in labels or labels[key] not in vals,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }.get(op, False)
        if not ok:
            return False
    return True


def labels_selected_by(selector: dict[str, Any] | None) -> dict[str, str]:
    """Labels of an object the selector selects (when one can exist)."""
    labels = dict((selector or {}).get("matchLabels") or {})
    for e in (selector or {}).get("matchExpressions") or []:
        if e["operator"] == "In" and e.get("values"):
            labels.setdefault(e["key"], e["values"][0])
        elif e["operator"] == "Exists":
            labels.setdefault(e["key"], "present")
    return labels


def port_admitted(ports: list[dict[str, Any]] | None, port: int, protocol: str) -> bool:
    """Whether a rule's `ports` admit port/protocol (no ports: every port).
    A named port is not counted: the destination's port names are unknown."""
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if isinstance(p["port"], int) and (p["port"] == port or p["port"] <= port <= p.get("endPort", p["port"])):
            return True
    return False


def peer_admits(peer: dict[str, Any], dest: Pod | ipaddress.IPv4Network | ipaddress.IPv6Network, policy_ns: str) -> bool:
    if isinstance(dest, tuple):
        # A pod: selector peers only (an ipBlock of pod IPs is left to the CNI).
        pod_labels, ns_labels = dest
        if "ipBlock" in peer:
            return False
        if "namespaceSelector" in peer:
            ns_ok = selector_matches(peer["namespaceSelector"], ns_labels)
        else:
            ns_ok = ns_labels.get("kubernetes.io/metadata.name") == policy_ns
        pod_ok = selector_matches(peer["podSelector"], pod_labels) if "podSelector" in peer else True
        return ns_ok and pod_ok
    # An address range: wholly inside the ipBlock and outside its exceptions.
    block = peer.get("ipBlock")
    if block is None:
        return False
    cidr = ipaddress.ip_network(block["cidr"], strict=False)
    if cidr.version != dest.version or not dest.subnet_of(cidr):  # type: ignore[arg-type]
        return False
    return not any(dest.overlaps(ipaddress.ip_network(x, strict=False)) for x in block.get("except") or [])


def egress_admits(
    policies: list[dict[str, Any]],
    pod_labels: dict[str, str],
    dest: Pod | ipaddress.IPv4Network | ipaddress.IPv6Network,
    port: int,
    protocol: str = "TCP",
) -> tuple[bool, list[str]]:
    """Whether the gateway's pods may open port/protocol to dest under these
    NetworkPolicies, and the names of the policies that isolate the pods'
    egress. Egress is allowed when no policy selecting the pods isolates
    it, or when a rule of one of those that do admits it (policies add up)."""
    isolating = []
    admitted = False
    for np in policies:
        spec = np["spec"]
        ns = np["metadata"].get("namespace", NAMESPACE)
        if ns != NAMESPACE or not selector_matches(spec.get("podSelector", {}), pod_labels):
            continue
        types = spec.get("policyTypes") or (["Ingress", "Egress"] if "egress" in spec else ["Ingress"])
        if "Egress" not in types:
            continue
        isolating.append(np["metadata"]["name"])
        for rule in spec.get("egress") or []:
            if not port_admitted(rule.get("ports"), port, protocol):
                continue
            peers = rule.get("to")
            if not peers or any(peer_admits(peer, dest, ns) for peer in peers):
                admitted = True
    return admitted or not isolating, isolating


def service_namespace(host: str) -> str | None:
    """The namespace a cluster Service name points into (NAME.NS.svc[.cluster.local])."""
    m = re.fullmatch(r"[^.]+\.([^.]+)\.svc(\.cluster\.local)?\.?", host)
    return m.group(1) if m else None


def outbox_database(values: dict[str, Any]) -> tuple[str, int, list[Any]]:
    """The outbox database's host, port and destinations, from the values
    alone: the port of networkPolicy.egress.outboxDatabase.port, else of the
    URL, else 5432; each CIDR as a range, and the pod its selectors name (in
    the namespace its Service name says, or the release's)."""
    url = values["gateway"]["outbox"]["postgres"]["url"]
    hostport = url.split("://", 1)[1].split("@", 1)[1].split("/", 1)[0]
    m = re.fullmatch(r"(\[[^\]]+\]|[^:]+)(?::(\d+))?", hostport)
    assert m, url
    host = m.group(1).strip("[]")
    db = values["networkPolicy"]["egress"].get("outboxDatabase") or {}
    port = db.get("port") or int(m.group(2) or 5432)
    dests: list[Any] = [ipaddress.ip_network(c, strict=False) for c in db.get("cidrs") or []]
    try:
        address = ipaddress.ip_address(host)
        dests.append(ipaddress.ip_network(address))
    except ValueError:
        pass
    if db.get("namespaceSelector") is not None or db.get("podSelector") is not None:
        # The namespace: the one the Service name says, else the selector's
        # (a made-up one when it names none), else the release's.
        ns_labels = labels_selected_by(db.get("namespaceSelector"))
        if service_namespace(host):
            ns_name = service_namespace(host)
        elif db.get("namespaceSelector") is not None:
            ns_name = ns_labels.get("kubernetes.io/metadata.name", "database-namespace")
        else:
            ns_name = NAMESPACE
        ns_labels["kubernetes.io/metadata.name"] = ns_name
        dests.append((labels_selected_by(db.get("podSelector")), ns_labels))
    return host, port, dests


def otlp_receiver(values: dict[str, Any]) -> tuple[str, int, list[Any]]:
    """The OTLP receiver's host, port and destinations, from the values
    alone: networkPolicy.egress.otlp.port, else the endpoint URL's port,
    else 443 (https) or 4318 (http); its CIDRs, and the pod its selectors
    name (in the namespace its Service name says, or the release's)."""
    url = values["gateway"]["telemetry"]["otlpEndpoint"]
    scheme, rest = url.split("://", 1)
    hostport = rest.split("/", 1)[0]
    m = re.fullmatch(r"(\[[^\]]+\]|[^:]+)(?::(\d+))?", hostport)
    assert m, url
    host = m.group(1).strip("[]")
    otlp = values["networkPolicy"]["egress"].get("otlp") or {}
    port = otlp.get("port") or int(m.group(2) or (443 if scheme == "https" else 4318))
    dests: list[Any] = [ipaddress.ip_network(c, strict=False) for c in otlp.get("cidrs") or []]
    if otlp.get("namespaceSelector") is not None or otlp.get("podSelector") is not None:
        ns_labels = labels_selected_by(otlp.get("namespaceSelector"))
        ns_name = service_namespace(host) or ns_labels.get("kubernetes.io/metadata.name", NAMESPACE)
        ns_labels["kubernetes.io/metadata.name"] = ns_name
        dests.append((labels_selected_by(otlp.get("podSelector")), ns_labels))
    return host, port, dests


def describe(dest: Any) -> str:
    if isinstance(dest, tuple):
        return f"pod {dest[0]} in namespace {dest[1].get('kubernetes.io/metadata.name')}"
    return str(dest)


def check_peer_egress(name: str, docs: list[dict[str, Any]], what: str, peer: tuple[str, int, list[Any]], pod_labels: dict[str, str]) -> int:
    """The NetworkPolicies selecting the gateway's pods admit `what` (the
    outbox's database, the OTLP receiver: its host, port and destinations
    from the values) at each destination, on its port. Returns the number
    of destinations looked at."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    host, port, dests = peer
    check(bool(dests), f"[{name}] the values name where {what} is")
    for dest in dests:
        ok, isolating = egress_admits(policies, pod_labels, dest, port)
        check(ok, f"[{name}] NetworkPolicy {isolating} admits {what} {host}:{port} at {describe(dest)}")
        print(f"  [{name}] {what} {host}:{port}/TCP at {describe(dest)}: {'admitted' if ok else 'BLOCKED'} by {isolating}")
    return len(dests)


def reference_policy(values: dict[str, Any], pod_labels: dict[str, str], port: int) -> dict[str, Any]:
    """A NetworkPolicy that admits DNS, Vipps and the outbox's database as
    the values say, written here (not rendered) so the self-test does not
    depend on the chart: the self-test breaks it on purpose."""
    eg = values["networkPolicy"]["egress"]
    db = eg["outboxDatabase"]
    peers: list[dict[str, Any]] = [{"ipBlock": {"cidr": c}} for c in db.get("cidrs") or []]
    selector = {k: db[k] for k in ("namespaceSelector", "podSelector") if db.get(k) is not None}
    if selector:
        peers.append(copy.deepcopy(selector))
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": "reference"},
        "spec": {
            "podSelector": {"matchLabels": pod_labels},
            "policyTypes": ["Ingress", "Egress"],
            "egress": [
                {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
                 "to": [{"namespaceSelector": eg["dnsNamespaceSelector"], "podSelector": eg["dnsPodSelector"]}]},
                {"ports": [{"port": p, "protocol": "TCP"} for p in eg["vippsPorts"]],
                 "to": [{"ipBlock": {"cidr": c}} for c in eg["vippsCidrs"]]},
                {"ports": [{"port": port, "protocol": "TCP"}], "to": peers},
            ],
        },
    }


def self_test_database_egress() -> None:
    """The database check on deliberately broken policies: each must be
    refused, or the check proves nothing. Runs on a policy written here
    from the value sets' database, not on the chart's render."""
    section("self-test: the outbox-database egress check refuses blocking policies")
    n = 0

    def expect(ok: bool, what: str) -> None:
        nonlocal n
        n += 1
        check(ok, f"self-test: {what}")

    pod_labels = {"app.kubernetes.io/name": "vipps-order-gateway", "app.kubernetes.io/instance": RELEASE}
    for name in ("outbox-postgres", "outbox-postgres-cidr"):
        values = helm.Chart.load(CHART).merge_values(load_values(name))
        _, port, dests = outbox_database(values)
        policy = reference_policy(values, pod_labels, port)

        def admitted(policies: list[dict[str, Any]], p: int = port) -> bool:
            return all(egress_admits(policies, pod_labels, d, p)[0] for d in dests)

        def broken(mutate: Callable[[dict[str, Any]], Any]) -> list[dict[str, Any]]:
            np = copy.deepcopy(policy)
            mutate(np)
            return [np]

        def db_rule(np: dict[str, Any]) -> dict[str, Any]:
            (rule,) = [r for r in np["spec"]["egress"] if r["ports"][0]["port"] == port]
            return rule

        def other_pods(np: dict[str, Any]) -> None:
            np["metadata"]["name"] += "-other"
            np["spec"]["podSelector"] = {"matchLabels": {"app.kubernetes.io/name": "other"}}

        def without_db(np: dict[str, Any]) -> None:
            np["spec"]["egress"].remove(db_rule(np))

        expect(admitted([policy]), f"[{name}] the reference policy admits the database")
        refused: dict[str, list[dict[str, Any]]] = {
            "no rule for the database (DNS and Vipps only)": broken(without_db),
            "the database rule on another port": broken(lambda np: db_rule(np)["ports"][0].update(port=port + 1)),
            "the database rule for UDP only": broken(lambda np: db_rule(np)["ports"][0].update(protocol="UDP")),
            "the database rule on a named port": broken(lambda np: db_rule(np)["ports"][0].update(port="postgresql")),
            "the database admitted only by a policy for other pods": broken(without_db) + broken(lambda np: other_pods(np)),
        }
        if name == "outbox-postgres":
            refused |= {
                "the pod selector alone (the release's namespace)": broken(lambda np: db_rule(np)["to"][0].pop("namespaceSelector")),
                "another namespace": broken(lambda np: db_rule(np)["to"][0]["namespaceSelector"]["matchLabels"].update({"kubernetes.io/metadata.name": "other"})),
                "other pods": broken(lambda np: db_rule(np)["to"][0]["podSelector"]["matchLabels"].update({"app.kubernetes.io/name": "mysql"})),
                "the replicas, not the primary": broken(lambda np: db_rule(np)["to"][0]["podSelector"]["matchExpressions"][0].update(values=["replica"])),
                "an ipBlock instead of the pods": broken(lambda np: db_rule(np).update(to=[{"ipBlock": {"cidr": "10.0.0.0/8"}}])),
            }
        else:
            refused |= {
                "a narrower range": broken(lambda np: db_rule(np)["to"][0]["ipBlock"].update(cidr="203.0.113.16/29")),
                "another range": broken(lambda np: db_rule(np)["to"][0]["ipBlock"].update(cidr="203.0.113.32/28")),
                "the range excepted": broken(lambda np: db_rule(np)["to"][0]["ipBlock"].update({"cidr": "203.0.113.0/24", "except": ["203.0.113.20/32"]})),
                "a pod selector instead of the range": broken(lambda np: db_rule(np).update(to=[{"podSelector": {}}])),
            }
        for what, policies in refused.items():
            expect(not admitted(policies), f"[{name}] refuses a policy with {what}")
        print(f"  [{name}] {len(refused)} blocking policies refused: {'; '.join(refused)}")
        # And admits what does let the traffic through.
        allowed: dict[str, list[dict[str, Any]]] = {
            "a database rule with no ports (every port)": broken(lambda np: db_rule(np).pop("ports")),
            "a database rule with no peers (everywhere)": broken(lambda np: db_rule(np).pop("to")),
            "a policy that does not isolate egress": broken(lambda np: np["spec"].update(policyTypes=["Ingress"])),
            "the database rule in a second policy for the same pods": broken(without_db) + [copy.deepcopy(policy)],
        }
        for what, policies in allowed.items():
            expect(admitted(policies), f"[{name}] admits {what}")
        print(f"  [{name}] the reference policy and {len(allowed)} admitting variants of it admitted")
    print(f"  {n} self-test cases")


SIMULATOR_TEMPLATE = "templates/simulator.yaml"


def is_simulator(doc: dict[str, Any]) -> bool:
    return doc["_template"].endswith(SIMULATOR_TEMPLATE)


def check_semantics(name: str, docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    # The gateway's own resources; the simulator's are checked by check_simulator.
    dep = one([d for d in docs if not is_simulator(d)], "Deployment")
    svc = one([d for d in docs if not is_simulator(d)], "Service")
    if not check(dep is not None and svc is not None, f"[{name}] one Deployment and one Service"):
        return
    assert dep is not None and svc is not None
    pod = dep["spec"]["template"]
    pod_labels = pod["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    container_ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    service_ports = {p["name"]: p for p in svc["spec"]["ports"]}
    toml = gateway_toml(docs)
    n = 0

    def expect(ok: bool, what: str) -> None:
        nonlocal n
        n += 1
        check(ok, f"[{name}] {what}")

    expect(subset(svc["spec"]["selector"], pod_labels), "the Service selects the pods")
    expect(subset(dep["spec"]["selector"]["matchLabels"], pod_labels), "the Deployment selects its pods")
    for pname, p in service_ports.items():
        expect(p["targetPort"] in container_ports, f"Service port {pname} targets a container port")
    expect(container_ports.get("http") == int(toml["listen"].rsplit(":", 1)[1]), "container port http is the gateway's listen port")
    if values["metrics"]["enabled"]:
        expect("metrics_listen" in toml, "metrics on: gateway.toml sets metrics_listen")
        expect(
            container_ports.get("metrics") == int(toml.get("metrics_listen", ":0").rsplit(":", 1)[1]),
            "container port metrics is metrics_listen's port",
        )
        expect("metrics" in service_ports, "metrics on: the Service has a port named metrics")
    else:
        expect("metrics_listen" not in toml and "metrics" not in service_ports, "metrics off: no metrics listener or port")

    # Probes and hardening.
    expect(container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, "liveness probe GET /healthz on http")
    expect(container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, "readiness probe GET /readyz on http")
    sc = container["securityContext"]
    psc = pod["spec"]["securityContext"]
    expect(sc.get("readOnlyRootFilesystem") is True, "read-only root filesystem")
    expect(sc.get("allowPrivilegeEscalation") is False, "no privilege escalation")
    expect(sc.get("capabilities", {}).get("drop") == ["ALL"], "every capability dropped")
    expect(psc.get("runAsNonRoot") is True and psc.get("runAsUser", 0) != 0, "runs as a non-root user")
    expect(container["args"][:3] == ["serve", "--config", "/etc/vipps-order-gateway/gateway.toml"], "runs serve --config with the mounted file")
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    expect("/etc/vipps-order-gateway/gateway.toml" in mounts, "gateway.toml is mounted where serve reads it")

    # Drain: the kubelet waits longer than the gateway drains.
    grace = int(toml["shutdown_grace"].rstrip("s"))
    sleep = container.get("lifecycle", {}).get("preStop", {}).get("sleep", {}).get("seconds", 0)
    tgps = pod["spec"]["terminationGracePeriodSeconds"]
    expect(tgps > grace + sleep, f"terminationGracePeriodSeconds {tgps} > shutdown_grace {grace}s + preStop sleep {sleep}s")
    expect(grace == values["gateway"]["shutdownGraceSeconds"], "shutdown_grace comes from gateway.shutdownGraceSeconds")
    annotations = pod["metadata"].get("annotations", {})
    expect(len(annotations.get("checksum/config", "")) == 64, "pods carry the config checksum")

    # Replicas.
    if values["autoscaling"]["enabled"]:
        hpa = one(docs, "HorizontalPodAutoscaler")
        expect("replicas" not in dep["spec"], "with the HPA on, the Deployment leaves replicas to it")
        expect(hpa is not None and hpa["spec"]["scaleTargetRef"]["name"] == dep["metadata"]["name"], "the HPA scales the Deployment")
    else:
        expect(dep["spec"]["replicas"] == values["replicaCount"], f"replicas = {values['replicaCount']}")
    pdb = one(docs, "PodDisruptionBudget")
    if values["podDisruptionBudget"]["enabled"]:
        expect(pdb is not None and subset(pdb["spec"]["selector"]["matchLabels"], pod_labels), "the PDB covers the pods")

    # Merchants: every secret path in gateway.toml is a key of a mounted Secret.
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    chart_secrets = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Secret"}
    merchants = toml.get("merchants", [])
    expect(len(merchants) == len(values["merchants"]), f"gateway.toml lists the {len(values['merchants'])} merchant(s)")
    for m, given in zip(merchants, values["merchants"]):
        expect("client_secret" not in m and "clientSecret" not in json.dumps(m), f"merchant {m['msn']}: no secret value in the ConfigMap")
        for key, field in (("client_secret", "client_secret_file"), ("subscription_key", "subscription_key_file")):
            path = m[field]
            directory, filename = path.rsplit("/", 1)
            mount = mounts.get(directory)
            ok = mount is not None and "subPath" not in mount
            expect(ok, f"merchant {m['msn']}: {directory} is a whole-directory mount (refreshed on rotation)")
            if not ok:
                continue
            secret = volumes[mount["name"]].get("secret", {})
            items = {i["path"]: i["key"] for i in secret.get("items", [])}
            expect(items.get(filename) == key, f"merchant {m['msn']}: {filename} is key {key} of the Secret")
            want = given.get("existingSecret")
            if want:
                expect(secret.get("secretName") == want, f"merchant {m['msn']}: mounts existingSecret {want}")
                expect(want not in chart_secrets, f"merchant {m['msn']}: the chart does not create existingSecret {want}")
            else:
                made = chart_secrets.get(secret.get("secretName"), {})
                expect(key in made.get("data", {}), f"merchant {m['msn']}: the chart-made Secret has key {key}")

    # Settings rendered only when set, so the gateway's defaults apply otherwise
    # (Helm drops null values when it merges, so a key may be missing).
    gw = values["gateway"]
    for table in ("resilience", "proxy"):
        want = {snake(k): v for k, v in (gw.get(table) or {}).items() if v is not None}
        expect(toml.get(table, {}) == want, f"[{table}] holds exactly the values set: {want}")
    # The outbox: off by default (no store outlives a pod); on, either a
    # SQLite file on the chart's PersistentVolumeClaim (one replica, pods
    # replaced with Recreate) or PostgreSQL with its password from a Secret.
    ob = gw["outbox"]
    tob = toml.get("outbox", {})
    expect(tob.get("enabled") is ob["enabled"], f"[outbox] enabled = {ob['enabled']}")
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    if not ob["enabled"]:
        expect(set(tob) == {"enabled"} and not claims, "outbox off: no store, no PersistentVolumeClaim")
    elif ob["store"] == "sqlite":
        url = tob.get("url", "")
        directory = url.removeprefix("sqlite://").rsplit("/", 1)[0]
        mount = mounts.get(directory)
        volume = volumes.get(mount["name"], {}) if mount else {}
        claim = claims.get(volume.get("persistentVolumeClaim", {}).get("claimName", ""))
        expect(url.startswith("sqlite:///") and mount is not None and not mount.get("readOnly"),
               f"outbox on SQLite: {url}'s directory is a writable mount")
        expect(claim is not None and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
               and claim["spec"]["resources"]["requests"]["storage"] == ob["sqlite"]["size"],
               "outbox on SQLite: the mount is the chart's ReadWriteOnce PersistentVolumeClaim of the given size")
        expect(claim is not None and claim["spec"].get("storageClassName") == ob["sqlite"].get("storageClassName"),
               "outbox on SQLite: the claim's storage class is the value's")
        expect(dep["spec"]["strategy"] == {"type": "Recreate"}, "outbox on SQLite: pods are replaced with Recreate")
        expect(dep["spec"]["replicas"] == 1 and one(docs, "HorizontalPodAutoscaler") is None,
               "outbox on SQLite: one replica, no autoscaler")
    else:
        pg = ob["postgres"]
        expect(tob.get("url") == pg["url"], "outbox on PostgreSQL: [outbox] url is the value's")
        path = tob.get("password_file", "")
        directory, filename = path.rsplit("/", 1) if "/" in path else ("", "")
        mount = mounts.get(directory)
        secret = volumes.get(mount["name"], {}).get("secret", {}) if mount else {}
        items = {i["path"]: i["key"] for i in secret.get("items", [])}
        expect(mount is not None and mount.get("readOnly") is True and "subPath" not in mount,
               f"outbox on PostgreSQL: {directory} is a read-only whole-Secret mount")
        expect(secret.get("secretName") == pg["existingSecret"] and items.get(filename) == pg["key"],
               f"outbox on PostgreSQL: {path} is key {pg['key']} of Secret {pg['existingSecret']}")
        expect(not claims, "outbox on PostgreSQL: no PersistentVolumeClaim")
    for key, field in (("maxAge", "max_age"), ("retention", "retention"), ("maxPendingPerMerchant", "max_pending_per_merchant"),
                       ("groupCommitWait", "group_commit_wait")):
        expect(tob.get(field) == (ob.get(key) if ob["enabled"] else None), f"outbox.{field} only when gateway.outbox.{key} is set")
    for key in ("connectTimeout", "tokenMargin"):
        expect(toml["upstream"].get(snake(key)) == gw["upstream"].get(key), f"upstream.{snake(key)} only when gateway.upstream.{key} is set")

    # Caller auth: [auth.jwt] names a key file of a Secret mounted as a directory.
    auth = gw["auth"]
    toml_auth = toml.get("auth", {})
    expect(toml_auth.get("mode") == auth["mode"], f"auth.mode = {auth['mode']!r}")
    if auth["mode"] == "jwt":
        jwt, tj = auth["jwt"], toml_auth.get("jwt", {})
        expect(tj.get("issuer") == jwt["issuer"] and tj.get("audience") == jwt["audience"], "[auth.jwt] has the issuer and audience")
        expect(tj.get("leeway") == jwt.get("leeway"), "[auth.jwt] leeway only when set")
        given_kinds = [k for k in KEY_KINDS if k in jwt]
        fields = [f for f in KEY_KINDS.values() if f in tj]
        ok = len(given_kinds) == 1 and fields == [KEY_KINDS[given_kinds[0]]]
        expect(ok, f"[auth.jwt] has exactly the key file of {given_kinds}: {fields}")
        if ok:
            src = jwt[given_kinds[0]]
            path = tj[fields[0]]
            directory, filename = path.rsplit("/", 1)
            mount = mounts.get(directory)
            mounted = mount is not None and "subPath" not in mount and mount.get("readOnly") is True
            expect(mounted, f"{path}: {directory} is a read-only whole-Secret mount, no subPath (refreshed on rotation)")
            if mounted:
                secret = volumes[mount["name"]].get("secret", {})
                items = {i["path"]: i["key"] for i in secret.get("items", [])}
                if src.get("existingSecret"):
                    expect(secret.get("secretName") == src["existingSecret"], f"the auth key mounts existingSecret {src['existingSecret']}")
                    expect(items.get(filename) == src["key"], f"{filename} is key {src['key']} of existingSecret")
                    expect(src["existingSecret"] not in chart_secrets, "the chart does not create the auth key's existingSecret")
                else:
                    made = chart_secrets.get(secret.get("secretName"), {})
                    data = made.get("data", {}).get(items.get(filename, ""))
                    expect(data is not None and base64.b64decode(data).decode() == src["value"], f"{filename} is the chart-made Secret's copy of the key")
                    cm_text = json.dumps([d for d in docs if d["kind"] == "ConfigMap"])
                    expect(src["value"].strip() not in cm_text, "the auth key is in no ConfigMap")
    else:
        expect("jwt" not in toml_auth, "auth none: no [auth.jwt]")
        expect(all("/auth" not in p for p in mounts), "auth none: no key mount")

    # Metrics parts.
    sm = one(docs, "ServiceMonitor")
    if values["metrics"]["serviceMonitor"]["enabled"]:
        if sm is None:
            expect(False, "a ServiceMonitor is rendered")
        else:
            expect(subset(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"]), "the ServiceMonitor selects the Service")
            expect(NAMESPACE in sm["spec"].get("namespaceSelector", {}).get("matchNames", [NAMESPACE]), "the ServiceMonitor looks in the release namespace")
            for ep in sm["spec"]["endpoints"]:
                expect(ep.get("port") in service_ports, f"ServiceMonitor port {ep.get('port')!r} is a port name of the Service {sorted(service_ports)}")
                expect(ep.get("path") == "/metrics", "ServiceMonitor path /metrics")
            job_label = sm["spec"].get("jobLabel")
            expect(svc["metadata"]["labels"].get(job_label) == "vipps-order-gateway", "scraped series get job=\"vipps-order-gateway\"")
    else:
        expect(sm is None, "no ServiceMonitor when it is off")
    pr = one(docs, "PrometheusRule")
    if values["metrics"]["prometheusRule"]["enabled"]:
        alerts = yaml.safe_load((CHART / "files" / "alerts.yaml").read_text())
        expect(pr is not None and pr["spec"]["groups"] == alerts["groups"], "the PrometheusRule holds exactly the groups of alerts.yaml")
    else:
        expect(pr is None, "no PrometheusRule when it is off")
    dashboards = [d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-dashboard")]
    gd = values["grafanaDashboard"]
    if gd["enabled"]:
        expect(len(dashboards) == 1, "one dashboard ConfigMap")
        if dashboards:
            d = dashboards[0]
            expect(d["metadata"]["labels"].get(gd["label"]) == gd["labelValue"], f"dashboard labelled {gd['label']}={gd['labelValue']!r} for the sidecar")
            (text,) = d["data"].values()
            original = json.loads((CHART / "files" / "grafana-dashboard.json").read_text())
            expect(json.loads(text) == original, "the dashboard ConfigMap holds grafana-dashboard.json")
            expect(d["metadata"].get("namespace", NAMESPACE) == (gd["namespace"] or NAMESPACE), "dashboard namespace")
    else:
        expect(not dashboards, "no dashboard ConfigMap when it is off")

    # Ingress and NetworkPolicy.
    ing = one(docs, "Ingress")
    if values["ingress"]["enabled"]:
        backends = [p["backend"]["service"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]] if ing else []
        expect(bool(backends) and all(b["name"] == svc["metadata"]["name"] and b["port"]["name"] in service_ports for b in backends), "the Ingress routes to the Service's http port")
    np = one(docs, "NetworkPolicy")
    if values["networkPolicy"]["enabled"]:
        if np is None:
            expect(False, "a NetworkPolicy is rendered")
        else:
            expect(subset(np["spec"]["podSelector"]["matchLabels"], pod_labels), "the NetworkPolicy applies to the pods")
            expect(sorted(np["spec"]["policyTypes"]) == ["Egress", "Ingress"], "the NetworkPolicy restricts ingress and egress")
            for rule in np["spec"]["ingress"]:
                for p in rule["ports"]:
                    expect(p["port"] in container_ports, f"NetworkPolicy ingress port {p['port']} is a container port")
            egress = np["spec"]["egress"]
            dns = [r for r in egress if {(p["port"], p["protocol"]) for p in r["ports"]} >= {(53, "UDP"), (53, "TCP")}]
            expect(len(dns) == 1, "egress to DNS on 53/UDP and 53/TCP")
            nps = [d for d in docs if d["kind"] == "NetworkPolicy"]
            eg = values["networkPolicy"]["egress"]
            kube_dns = (labels_selected_by(eg["dnsPodSelector"]), labels_selected_by(eg["dnsNamespaceSelector"]))
            for proto in ("UDP", "TCP"):
                expect(egress_admits(nps, pod_labels, kube_dns, 53, proto)[0], f"egress admits DNS on 53/{proto}")
            for cidr in eg["vippsCidrs"]:
                for port in eg["vippsPorts"]:
                    expect(egress_admits(nps, pod_labels, ipaddress.ip_network(cidr, strict=False), port)[0], f"egress admits Vipps' {cidr} on {port}")
            want = set(eg["vippsCidrs"])
            rules = 2
            if ob["enabled"] and ob["store"] == "postgres":
                n += check_peer_egress(name, docs, "the outbox's database", outbox_database(values), pod_labels)
                want |= set((eg.get("outboxDatabase") or {}).get("cidrs") or [])
                rules += 1
            if (values["gateway"].get("telemetry") or {}).get("otlpEndpoint"):
                n += check_peer_egress(name, docs, "the OTLP receiver", otlp_receiver(values), pod_labels)
                want |= set((eg.get("otlp") or {}).get("cidrs") or [])
                rules += 1
            if values["simulator"]["enabled"]:
                n += check_simulator_egress(name, docs, values, pod_labels)
                rules += 1
            expect(len(egress) == rules, f"egress to DNS, Vipps and only the peers the values turn on: {rules} rules")
            cidrs = sorted(t["ipBlock"]["cidr"] for r in egress for t in r.get("to", []) if "ipBlock" in t)
            expect(sorted(set(cidrs)) == sorted(want) and len(cidrs) == len(want), f"egress to exactly the Vipps and database CIDRs {cidrs}")
    print(f"  [{name}] {n} assertions on the rendered release")


# ---------------------------------------------------------------- the simulator


def simulator_pod(docs: list[dict[str, Any]]) -> Pod | None:
    """The simulator's pods as a NetworkPolicy destination: their labels in
    the release's namespace."""
    sim = [d for d in docs if is_simulator(d) and d["kind"] == "Deployment"]
    if len(sim) != 1:
        return None
    return sim[0]["spec"]["template"]["metadata"]["labels"], {"kubernetes.io/metadata.name": NAMESPACE}


def check_simulator_egress(name: str, docs: list[dict[str, Any]], values: dict[str, Any], pod_labels: dict[str, str]) -> int:
    """The gateway's NetworkPolicy admits the simulator's pods on their port,
    and only because of its rule for them: without that rule the same
    policy blocks them (so the check can fail)."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    dest = simulator_pod(docs)
    port = values["simulator"]["port"]
    if not check(dest is not None, f"[{name}] one simulator Deployment"):
        return 1
    assert dest is not None
    ok, isolating = egress_admits(policies, pod_labels, dest, port)
    check(ok, f"[{name}] NetworkPolicy {isolating} admits the simulator's pods on {port}/TCP")
    stripped = copy.deepcopy(policies)
    for np in stripped:
        np["spec"]["egress"] = [r for r in np["spec"].get("egress") or []
                                if not any(peer_admits(p, dest, NAMESPACE) for p in r.get("to") or [])]
    check(not egress_admits(stripped, pod_labels, dest, port)[0],
          f"[{name}] without its simulator rule, the NetworkPolicy blocks the simulator (the check can fail)")
    check(not egress_admits(policies, pod_labels, dest, port + 1)[0],
          f"[{name}] the NetworkPolicy admits the simulator on its port only")
    print(f"  [{name}] simulator {describe(dest)} on {port}/TCP: {'admitted' if ok else 'BLOCKED'} by {isolating}")
    return 3


def check_simulator(name: str, docs: list[dict[str, Any]], values: dict[str, Any]) -> None:
    """simulator.enabled: its own Deployment and Service, selected apart from
    the gateway's; simulator.asUpstream: gateway.toml's base URL is its Service."""
    sim_docs = [d for d in docs if is_simulator(d)]
    sim = values["simulator"]
    if not sim["enabled"]:
        check(not sim_docs, f"[{name}] simulator off: nothing of it is rendered")
        return
    dep, svc = one(sim_docs, "Deployment"), one(sim_docs, "Service")
    if not check(dep is not None and svc is not None and len(sim_docs) == 2, f"[{name}] the simulator is one Deployment and one Service"):
        return
    assert dep is not None and svc is not None
    gw_dep = one([d for d in docs if not is_simulator(d)], "Deployment")
    gw_svc = one([d for d in docs if not is_simulator(d)], "Service")
    assert gw_dep is not None and gw_svc is not None
    pod = dep["spec"]["template"]
    labels = pod["metadata"]["labels"]
    gw_labels = gw_dep["spec"]["template"]["metadata"]["labels"]
    (container,) = pod["spec"]["containers"]
    port = sim["port"]
    n = 0

    def expect(ok: bool, what: str) -> None:
        nonlocal n
        n += 1
        check(ok, f"[{name}] simulator: {what}")

    want_args = ["simulate", "--listen", f"0.0.0.0:{port}", "--max-orders", str(sim["maxOrders"])]
    expect(container["args"] == want_args, f"runs {' '.join(want_args)}: {container['args']}")
    expect(container["image"] == gw_dep["spec"]["template"]["spec"]["containers"][0]["image"], "runs the gateway's image")
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    expect(ports == {"http": port}, f"container port http is {port}")
    expect(dep["spec"]["replicas"] == 1 and dep["spec"]["strategy"] == {"type": "Recreate"}, "one replica, replaced with Recreate (its state is in memory)")
    expect(subset(dep["spec"]["selector"]["matchLabels"], labels), "the Deployment selects its pods")
    expect(subset(svc["spec"]["selector"], labels), "its Service selects its pods")
    expect([(p["port"], p["targetPort"]) for p in svc["spec"]["ports"]] == [(port, "http")], f"its Service serves {port} from port http")
    expect(not subset(svc["spec"]["selector"], gw_labels), "its Service does not select the gateway's pods")
    expect(not subset(gw_svc["spec"]["selector"], labels), "the gateway's Service does not select the simulator's pods")
    pdb = one(docs, "PodDisruptionBudget")
    if pdb is not None:
        expect(not subset(pdb["spec"]["selector"]["matchLabels"], labels), "the gateway's PodDisruptionBudget does not cover the simulator")
    for probe in ("livenessProbe", "readinessProbe"):
        expect(container[probe]["httpGet"]["port"] == "http", f"{probe} on port http")
    sc, psc = container["securityContext"], pod["spec"]["securityContext"]
    expect(sc.get("readOnlyRootFilesystem") is True and sc.get("allowPrivilegeEscalation") is False, "read-only root, no privilege escalation")
    expect(psc.get("runAsNonRoot") is True and pod["spec"]["automountServiceAccountToken"] is False, "non-root, no service-account token")
    expect(not container.get("env") and not container.get("volumeMounts"), "no environment and no secret mounted")
    base_url = gateway_toml(docs)["upstream"]["base_url"]
    if sim["asUpstream"]:
        want = f"http://{svc['metadata']['name']}.{NAMESPACE}.svc:{port}"
        expect(base_url == want, f"asUpstream: gateway.toml's base_url is the simulator's Service {want}: {base_url}")
    else:
        expect(base_url == values["gateway"]["upstream"]["baseUrl"], f"not asUpstream: base_url stays gateway.upstream.baseUrl: {base_url}")
    print(f"  [{name}] {n} assertions on the simulator")


def check_simulator_runs(name: str, docs: list[dict[str, Any]], gateway: Path) -> None:
    """The binary runs the simulator's rendered args (on a free loopback
    port instead of the pod's) and holds the orders they set at most."""
    sim = [d for d in docs if is_simulator(d) and d["kind"] == "Deployment"]
    if not sim or not check(gateway.is_file(), f"the gateway binary {gateway} exists (build it first)"):
        return
    args = list(sim[0]["spec"]["template"]["spec"]["containers"][0]["args"])
    args[args.index("--listen") + 1] = "127.0.0.1:0"
    want = int(args[args.index("--max-orders") + 1])
    proc = subprocess.Popen([str(gateway), *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port = None
        assert proc.stdout is not None
        for line in proc.stdout:
            found = re.search(r"simulator listening.*port=(\d+)", line)
            if found:
                port = int(found.group(1))
                break
        if not check(port is not None, f"[{name}] the simulator starts with its rendered args {args}"):
            return
        import urllib.request
        req = urllib.request.Request(f"http://127.0.0.1:{port}/_simulator/settings", method="PUT",
                                     data=b'{"requestLog": true}', headers={"Content-Type": "application/json"})
        held = json.loads(urllib.request.urlopen(req, timeout=30).read())["maxOrders"]
        check(held == want, f"[{name}] the simulator holds at most {want} orders, as rendered: {held}")
    finally:
        proc.kill()
        proc.wait()


def check_gateway_accepts(name: str, docs: list[dict[str, Any]], gateway: Path) -> None:
    """The gateway itself reads the rendered gateway.toml (check-config)."""
    if not check(gateway.is_file(), f"the gateway binary {gateway} exists (build it first)"):
        return
    toml_text = [d for d in docs if d["kind"] == "ConfigMap" and "gateway.toml" in d.get("data", {})][0]["data"]["gateway.toml"]
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "gateway.toml"
        config.write_text(toml_text)
        env = {k: v for k, v in os.environ.items() if not k.startswith("VOG_")}
        merchants = tomllib.loads(toml_text).get("merchants", [])
        # The mount paths do not exist here: point each at a file with a made-up secret.
        for i, m in enumerate(merchants):
            for field in ("client_secret_file", "subscription_key_file"):
                secret = Path(tmp) / f"{m['msn']}-{field}"
                secret.write_text(f"made-up-{field}-{m['msn']}\n")
                env[f"VOG_MERCHANTS__{i}__{field.upper()}"] = str(secret)
        # The caller-auth key, of the kind gateway.toml names: the chart-made
        # Secret's value when there is one, else a freshly made key.
        jwt = tomllib.loads(toml_text).get("auth", {}).get("jwt", {})
        key_kind = "none"
        for kind, field in KEY_KINDS.items():
            if field not in jwt:
                continue
            key_kind = kind
            filename = jwt[field].rsplit("/", 1)[1]
            made = [d for d in docs if d["kind"] == "Secret" and filename in d.get("data", {})]
            text = base64.b64decode(made[0]["data"][filename]).decode() if made else make_auth_key(kind)
            key = Path(tmp) / filename
            key.write_text(text)
            env[f"VOG_AUTH__JWT__{field.upper()}"] = str(key)
        # The OTLP headers file of a mounted Secret: made-up headers.
        headers_file = tomllib.loads(toml_text).get("telemetry", {}).get("otlp", {}).get("headers_file")
        if headers_file:
            made_up = Path(tmp) / "otlp-headers"
            made_up.write_text("Authorization: Bearer made-up-otlp-key\n")
            env["VOG_TELEMETRY__OTLP__HEADERS_FILE"] = str(made_up)
        res = subprocess.run([str(gateway), "check-config", "--config", str(config)], env=env, capture_output=True, text=True, timeout=60)
        if res.returncode != 0:
            print(res.stdout + res.stderr)
        check(res.returncode == 0, f"[{name}] the gateway's check-config accepts the rendered gateway.toml ({len(merchants)} merchant(s), auth key {key_kind})")
        if key_kind != "none":
            check("caller auth Jwt" in res.stdout, f"[{name}] check-config loaded the {key_kind} caller-auth key: {res.stdout.strip()}")
        endpoint = tomllib.loads(toml_text).get("telemetry", {}).get("otlp", {}).get("endpoint")
        check(f"traces {endpoint or 'not exported'}" in res.stdout, f"[{name}] check-config reads the chart's trace export ({endpoint or 'off'}): {res.stdout.strip()}")
        want_version = "2.0" if 'api_version = "2.0"' in Path(config).read_text() else "2.1"
        check(f"Order Management {want_version}" in res.stdout, f"[{name}] check-config reads the chart's Order Management version {want_version}: {res.stdout.strip()}")
        print(f"  [{name}] check-config: exit {res.returncode}, {len(merchants)} merchant(s), auth key {key_kind}, Order Management {want_version}")


# ---------------------------------------------------------------- rolling and refusals


def pod_annotations(values: dict[str, Any] | None) -> dict[str, str]:
    dep = one(render(values), "Deployment")
    assert dep is not None
    return dep["spec"]["template"]["metadata"]["annotations"]


def check_rolls() -> None:
    section("a config or secret change rolls the pods; nothing else does")
    base = load_values("all-on")
    assert base is not None
    before = pod_annotations(base)
    same = pod_annotations(copy.deepcopy(base))
    check(before == same, "rendering twice gives the same pod annotations")

    def changed(mutate: Callable[[dict[str, Any]], None]) -> dict[str, str]:
        v = copy.deepcopy(base)
        mutate(v)
        return pod_annotations(v)

    cases = [
        ("gateway.log.level", lambda v: v["gateway"].update(log={"format": "json", "level": "debug"}), "checksum/config"),
        ("a merchant's clientId", lambda v: v["merchants"][0].update(clientId="another-client"), "checksum/config"),
        ("a chart-made clientSecret", lambda v: v["merchants"][1].update(clientSecret="rotated-secret"), "checksum/secrets"),
        ("secretsRevision", lambda v: v.update(secretsRevision="1"), "vipps-order-gateway/secrets-revision"),
    ]
    for what, mutate, key in cases:
        after = changed(mutate)
        check(after[key] != before[key], f"changing {what} changes the pod annotation {key}")
    after = changed(lambda v: v["merchants"][1].update(clientSecret="rotated-secret"))
    check(after["checksum/config"] == before["checksum/config"], "a secret change leaves checksum/config alone")
    # A chart-made caller-auth key: rotating its value rolls the pods.
    with_key = copy.deepcopy(base)
    with_key["gateway"]["auth"]["jwt"] = {**base["gateway"]["auth"]["jwt"], "jwks": {"value": make_auth_key("jwks")}}
    key_before = pod_annotations(with_key)
    with_key["gateway"]["auth"]["jwt"]["jwks"] = {"value": make_auth_key("jwks")}
    key_after = pod_annotations(with_key)
    check(key_after["checksum/secrets"] != key_before["checksum/secrets"], "rotating a chart-made auth key changes the pod annotation checksum/secrets")
    check(key_after["checksum/config"] == key_before["checksum/config"], "rotating a chart-made auth key leaves checksum/config alone")
    print(f"  {len(cases) + 4} roll checks")


def check_refusals() -> None:
    section("values.schema.json and the templates refuse bad values")
    chart = helm.Chart.load(CHART)
    files = sorted(VALUES.glob("invalid-*.yaml"))
    check(len(files) >= 5, "there are negative values files")
    for f in files:
        expect = next(
            (line.split(":", 1)[1].strip() for line in f.read_text().splitlines() if line.startswith("# expect:")),
            "",
        )
        values = yaml.safe_load(f.read_text())
        try:
            chart.validate_schema(values)
            check(False, f"{f.name}: the schema accepts it")
            continue
        except helm.HelmValuesError as err:
            msg = str(err)
        check(expect != "" and expect in msg, f"{f.name}: the refusal names {expect!r}: {msg.strip()}")
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            check(False, f"{f.name}: rendering succeeds despite the schema")
        except helm.HelmError:
            pass
        report = helm.lint(CHART, values, strict=True)
        check(any(m["severity"] >= 3 for m in report["messages"]) or report["errors"], f"{f.name}: helm lint reports an error")
        print(f"  {f.name}: refused ({msg.strip().splitlines()[-1].strip()})")
    # What a schema cannot say, the templates refuse.
    base = {"merchants": [{"msn": "123456", "clientId": "a", "existingSecret": "s"}]}
    template_cases = {
        "a duplicate msn": {"merchants": base["merchants"] * 2},
        "a NetworkPolicy that admits no caller": {
            "networkPolicy": {
                "enabled": True,
                "ingress": {"fromSameNamespace": False, "controllerNamespaceSelector": None},
                "egress": {"vippsCidrs": ["192.0.2.0/24"]},
            }
        },
        "autoscaling min above max": {"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}},
    }
    for what, values in template_cases.items():
        chart.validate_schema(values)
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            check(False, f"rendering accepts {what}")
        except helm.HelmRenderError as err:
            print(f"  {what}: refused ({str(err).strip().splitlines()[-1][:120]})")
    # The simulator: never beside a production gateway, never an upstream
    # that is not deployed; each refusal says why.
    simulator_base = yaml.safe_load((VALUES / "simulator.yaml").read_text())
    simulator_cases = {
        "the simulator in production": ({**simulator_base, "environment": "production"}, "simulator.enabled is refused with environment: production"),
        "the simulator in production, not as upstream": (
            {**simulator_base, "environment": "production", "simulator": {"enabled": True}},
            "simulator.enabled is refused with environment: production",
        ),
        "the simulator as upstream, not deployed": (
            {**simulator_base, "simulator": {"enabled": False, "asUpstream": True}},
            "simulator.asUpstream points the gateway at the simulator's Service",
        ),
    }
    for what, (values, want) in simulator_cases.items():
        chart.validate_schema(values)
        try:
            chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
            check(False, f"rendering accepts {what}")
        except helm.HelmRenderError as err:
            check(want in str(err), f"{what}: refused naming {want!r}: {str(err).strip()[:200]}")
            print(f"  {what}: refused ({str(err).strip().splitlines()[-1][:160]})")
    production = {**simulator_base, "environment": "production", "simulator": {"enabled": False}}
    docs = render(production)
    check(not any(is_simulator(d) for d in docs), "environment production without the simulator renders, with no simulator")
    # Refused by the templates too, for an install that skips the schema
    # (helm install --skip-schema-validation): the chart without its schema.
    unchecked = {
        "invalid-networkpolicy-outbox-database.yaml": "networkPolicy.egress.outboxDatabase: the outbox is on PostgreSQL",
        "invalid-networkpolicy-otlp.yaml": "networkPolicy.egress.otlp: spans are exported",
    }
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / CHART.name
        shutil.copytree(CHART, bare, ignore=shutil.ignore_patterns("values.schema.json"))
        bare_chart = helm.Chart.load(bare)
        for fname, want in unchecked.items():
            values = yaml.safe_load((VALUES / fname).read_text())
            try:
                bare_chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)
                check(False, f"{fname}: rendering without the schema accepts it")
            except helm.HelmRenderError as err:
                check(want in str(err), f"{fname}: without the schema, the templates refuse it naming {want!r}: {str(err).strip()[:200]}")
                print(f"  {fname} without the schema: refused ({str(err).strip().splitlines()[-1][:160]})")
    print(f"  {len(files)} schema refusals, {len(template_cases) + len(simulator_cases) + len(unchecked)} template refusals")


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--gateway", type=Path, required=True, help="the built vipps-order-gateway binary")
    args = parser.parse_args()
    print(f"helm-python-sdk {helm.__version__} (Helm {helm.helm_sdk_version()})")

    check_observability_copies()
    check_dockerfile()
    check_values_documented()
    self_test_database_egress()
    scenarios = ["default", "metrics", "all-on", "outbox-sqlite", "outbox-postgres", "outbox-postgres-cidr", "simulator"]
    sets = sorted(f.stem for f in VALUES.glob("*.yaml") if not f.stem.startswith("invalid-"))
    check(sets == sorted(scenarios[1:]), f"every value set of deploy/values/ is rendered: {sets}")
    check_lint(scenarios)
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    chart = helm.Chart.load(CHART)
    totals: dict[str, int] = {}
    for name in scenarios:
        section(f"render {name} values")
        given = load_values(name)
        docs = render(given)
        for kind, count in check_schemas(name, docs).items():
            totals[kind] = totals.get(kind, 0) + count
        values = chart.merge_values(given) if given else defaults
        check_semantics(name, docs, values)
        check_simulator(name, docs, values)
        check_simulator_runs(name, docs, args.gateway)
        check_gateway_accepts(name, docs, args.gateway)
    # Every kind of caller-auth key, made by the chart from a value: the
    # rendered release fits together and the gateway loads the key.
    base = load_values("all-on")
    assert base is not None
    for kind in KEY_KINDS:
        name = f"all-on-jwt-{kind}-value"
        section(f"render {name}")
        given = copy.deepcopy(base)
        jwt = {k: v for k, v in given["gateway"]["auth"]["jwt"].items() if k not in KEY_KINDS}
        given["gateway"]["auth"]["jwt"] = {**jwt, kind: {"value": make_auth_key(kind)}}
        docs = render(given)
        for k, count in check_schemas(name, docs).items():
            totals[k] = totals.get(k, 0) + count
        check_semantics(name, docs, chart.merge_values(given))
        check_gateway_accepts(name, docs, args.gateway)
    # The outbox's database at a URL without a port (so 5432); behind a
    # Service whose pods listen on another port (a pooler), so the
    # NetworkPolicy opens networkPolicy.egress.outboxDatabase.port; and
    # outbox.max_pending_per_merchant and outbox.group_commit_wait set.
    variants: list[tuple[str, dict[str, Any], bool]] = []
    given = load_values("outbox-postgres-cidr")
    assert given is not None
    given["gateway"]["outbox"]["postgres"]["url"] = re.sub(r":\d+/", "/", given["gateway"]["outbox"]["postgres"]["url"])
    variants.append(("outbox-postgres-cidr-default-port", given, True))
    base = load_values("outbox-postgres")
    assert base is not None
    given = copy.deepcopy(base)
    given["networkPolicy"]["egress"]["outboxDatabase"]["port"] = 6432
    variants.append(("outbox-postgres-target-port", given, True))
    given = copy.deepcopy(base)
    given["gateway"]["outbox"]["maxPendingPerMerchant"] = 5000
    given["gateway"]["outbox"]["groupCommitWait"] = "5ms"
    variants.append(("outbox-postgres-max-pending", given, True))
    # The simulator deployed beside the gateway but not its upstream, on
    # another port.
    given = load_values("simulator")
    assert given is not None
    given["simulator"].update(asUpstream=False, port=8081, maxOrders=2500)
    variants.append(("simulator-beside", given, True))
    for name, given, run_gateway in variants:
        section(f"render {name}")
        docs = render(given)
        for k, count in check_schemas(name, docs).items():
            totals[k] = totals.get(k, 0) + count
        check_semantics(name, docs, chart.merge_values(given))
        check_simulator(name, docs, chart.merge_values(given))
        check_simulator_runs(name, docs, args.gateway)
        if run_gateway:
            check_gateway_accepts(name, docs, args.gateway)
    check_rolls()
    check_refusals()

    core = sum(c for k, c in totals.items() if k in CORE_KINDS)
    custom = sum(c for k, c in totals.items() if k in CUSTOM_KINDS)
    print(f"\nrendered {sum(totals.values())} manifests over {len(scenarios) + len(KEY_KINDS) + len(variants)} value sets: {core} core (kubernetes-validate, {len(K8S_VERSIONS)} versions), {custom} prometheus-operator")
    if failures:
        print(f"\n{len(failures)} chart check(s) failed:")
        for f in failures:
            print(f"  - {f}")
        return 1
    print("every chart check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
