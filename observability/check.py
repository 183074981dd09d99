#!/usr/bin/env python3
"""Checks the observability assets against a real gateway.

1. Runs the gateway with its built-in simulator (and a metrics-only
   listener), sends test traffic (receipts, reads, images, bad input, unknown
   merchants, a 401 retry, upstream 5xx, a failed token fetch, a dropped
   connection) and scrapes /metrics.
2. `promtool check metrics` on the scrape.
3. `promtool check rules` and `promtool test rules` on the alerts.
4. Every PromQL expression of the Grafana dashboard, with Grafana's
   variables substituted, through `promtool check rules` as a generated
   rules file.
5. Every metric name used by a dashboard query, variable or alert exists in
   the scrape: a panel querying a metric the gateway does not export fails.

Usage: observability/check.py PATH-TO-GATEWAY-BINARY [WORK-DIR]
Standard library only.
"""

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
DASHBOARD = HERE / "grafana-dashboard.json"
ALERTS = HERE / "alerts.yaml"
ALERT_TESTS = HERE / "alerts.test.yaml"

# Grafana's built-in and dashboard variables, as a range query would see them.
GRAFANA_VARS = {
    "__rate_interval": "5m",
    "__interval": "1m",
    "__range": "1h",
    "__range_s": "3600",
    "__interval_ms": "60000",
    "msn": ".*",
    "datasource": "prometheus",
}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
    "group_right", "bool", "offset", "inf", "nan", "atan2",
}


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def substitute(expr):
    """Replaces $var, ${var} and ${var:format} with the values above."""

    def repl(m):
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in GRAFANA_VARS:
            fail(f"unknown Grafana variable ${name} in {expr!r}")
        return GRAFANA_VARS[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", repl, expr)


def metric_names(expr):
    """The metric names a PromQL expression selects.

    Strings, label matchers, ranges and grouping clauses are removed; what
    remains that is an identifier not followed by "(" and not a keyword is a
    metric name.
    """
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    e = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e
    )
    names = set()
    for m in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\b(\s*\()?", e):
        word, call = m.group(1), m.group(2)
        if call or word.lower() in PROMQL_KEYWORDS:
            continue
        names.add(word)
    # A selector given only by matchers: {__name__="x"}.
    names.update(re.findall(r'__name__\s*=\s*"([^"]+)"', expr))
    return names


def self_test():
    cases = {
        'sum by (msn, le) (rate(a_total{msn=~"$msn",x="by"}[5m])) / on (msn) b_count offset 1d > 0.5':
            {"a_total", "b_count"},
        'histogram_quantile(0.99, sum by (le) (rate(c_bucket[1m]))) and bool 1e3':
            {"c_bucket"},
        "time() - e_seconds": {"e_seconds"},
    }
    for expr, want in cases.items():
        got = metric_names(expr)
        if got != want:
            fail(f"name extraction self-test: {expr!r} gave {got}, want {want}")


def http(method, url, body=None, headers=None):
    data = None
    headers = dict(headers or {})
    if body is not None:
        if isinstance(body, (dict, list)):
            data = json.dumps(body).encode()
            headers.setdefault("content-type", "application/json")
        else:
            data = body
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class Gateway:
    """The real binary: `serve --simulator` with a metrics-only listener."""

    def __init__(self, binary):
        env = {k: v for k, v in os.environ.items() if k != "RUST_LOG"}
        env["VOG_METRICS_LISTEN"] = "127.0.0.1:0"
        self.proc = subprocess.Popen(
            [binary, "serve", "--simulator", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        self.port = self.metrics_port = self.sim = None
        self.log = []
        deadline = time.time() + 60
        while self.port is None or self.metrics_port is None or self.sim is None:
            line = self.proc.stdout.readline()
            if not line or time.time() > deadline:
                self.stop()
                fail("gateway did not start:\n" + "".join(self.log))
            self.log.append(line)
            if m := re.search(r"upstream=(http://\S+)", line):
                self.sim = m.group(1)
            if m := re.search(r"gateway listening.*port=(\d+)", line):
                self.port = int(m.group(1))
            if m := re.search(r"metrics listening.*port=(\d+)", line):
                self.metrics_port = int(m.group(1))
        # Keep draining the log so the gateway never blocks on a full pipe.
        threading.Thread(target=self._drain, daemon=True).start()
        self.base = f"http://127.0.0.1:{self.port}"

    def _drain(self):
        for line in self.proc.stdout:
            self.log.append(line)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


RECEIPT = {
    "currency": "NOK",
    "lines": [
        {"id": "sku-1", "name": "Socks", "quantity": "2", "unitPrice": "199.00", "taxPercent": "25"},
        {"id": "ship", "name": "Home delivery", "totalAmount": "49", "taxPercent": "25", "isShipping": True},
    ],
    "expectedTotal": "447.00",
}


def png(height):
    return (
        b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + b"IHDR"
        + (300).to_bytes(4, "big") + height.to_bytes(4, "big")
        + bytes([8, 6, 0, 0, 0, 0, 0, 0, 0])
    )


def traffic(gw):
    """Test traffic that touches every metric family."""
    g, s, msn = gw.base, gw.sim, "123456"

    def expect(status, got, what):
        if got[0] != status:
            fail(f"{what}: expected {status}, got {got[0]} {got[1][:300]!r}")

    for i in range(5):
        expect(201, http("POST", f"{g}/v1/merchants/{msn}/orders/ci-{i}/receipt", RECEIPT), "receipt")
    expect(200, http("GET", f"{g}/v1/merchants/{msn}/orders/ci-0"), "order")
    expect(200, http("PUT", f"{g}/v1/merchants/{msn}/orders/ci-0/category",
                     {"category": "RECEIPT", "url": "https://shop.example/o/0"}), "category")
    expect(201, http("POST", f"{g}/v1/merchants/{msn}/images?imageId=ci-logo", png(300),
                     {"content-type": "image/png"}), "image")
    expect(400, http("POST", f"{g}/v1/merchants/{msn}/orders/ci-bad/receipt", {"currency": "SEK"}), "bad input")
    expect(404, http("GET", f"{g}/v1/merchants/999999/orders/ci-0"), "unknown merchant")
    expect(200, http("GET", f"{g}/healthz"), "healthz")
    # Vipps forgets the token: a 401, a new token, the call again (a retry).
    expect(200, http("POST", f"{s}/_simulator/tokens/expire"), "expire tokens")
    expect(201, http("POST", f"{g}/v1/merchants/{msn}/orders/ci-retry/receipt", RECEIPT), "receipt after 401")
    # Vipps fails once: an upstream 503, retried by the gateway (a retry).
    expect(201, http("POST", f"{s}/_simulator/faults", {"endpoint": "receipt", "status": 503, "times": 1}), "fault")
    expect(201, http("POST", f"{g}/v1/merchants/{msn}/orders/ci-503/receipt", RECEIPT), "receipt after a retried 503")
    # Vipps keeps failing (every attempt): a 503 three times, then dropped connections.
    expect(201, http("POST", f"{s}/_simulator/faults", {"endpoint": "receipt", "status": 503, "times": 3}), "fault")
    expect(502, http("POST", f"{g}/v1/merchants/{msn}/orders/ci-503b/receipt", RECEIPT), "receipt 503")
    expect(201, http("POST", f"{s}/_simulator/faults", {"endpoint": "order", "drop": True, "times": 3}), "fault")
    expect(502, http("GET", f"{g}/v1/merchants/{msn}/orders/ci-0"), "dropped order read")
    # The token endpoint fails once after a 401: a failed fetch; fetches
    # then back off for a second before the gateway recovers.
    expect(200, http("POST", f"{s}/_simulator/tokens/expire"), "expire tokens")
    expect(201, http("POST", f"{s}/_simulator/faults", {"endpoint": "token", "status": 500, "times": 1}), "fault")
    expect(503, http("POST", f"{g}/v1/merchants/{msn}/orders/ci-tokfail/receipt", RECEIPT), "token failure")
    time.sleep(1.2)
    expect(201, http("POST", f"{g}/v1/merchants/{msn}/orders/ci-after/receipt", RECEIPT), "receipt after recovery")
    # An asynchronous receipt, delivered by the outbox's worker; one that
    # Vipps refuses, failed. (The backlog gauges are set from the start.)
    expect(202, http("POST", f"{g}/v1/merchants/{msn}/orders/ci-async/receipt", RECEIPT,
                     {"prefer": "respond-async"}), "async receipt")
    expect(201, http("POST", f"{s}/_simulator/faults", {"endpoint": "receipt", "status": 400, "times": 1}), "fault")
    expect(202, http("POST", f"{g}/v1/merchants/{msn}/orders/ci-async-refused/receipt", RECEIPT,
                     {"prefer": "respond-async"}), "async receipt Vipps refuses")
    deadline = time.time() + 30
    while True:
        status, body = http("GET", f"{g}/v1/merchants/{msn}/deliveries?state=pending")
        if status == 200 and json.loads(body)["deliveries"] == []:
            break
        if time.time() > deadline:
            fail(f"async receipts still pending: {body[:300]!r}")
        time.sleep(0.2)


def parse_exposition(text):
    """Sample names and TYPE/HELP family names of a text exposition."""
    samples, families = set(), set()
    for line in text.splitlines():
        if line.startswith("# TYPE ") or line.startswith("# HELP "):
            families.add(line.split()[2])
        elif line and not line.startswith("#"):
            samples.add(re.match(r"[A-Za-z_:][A-Za-z0-9_:]*", line).group(0))
    return samples, families


def promtool(*args, stdin=None):
    print("+ promtool " + " ".join(args), flush=True)
    r = subprocess.run(["promtool", *args], input=stdin, text=True, capture_output=True)
    sys.stdout.write(r.stdout)
    sys.stderr.write(r.stderr)
    if r.returncode != 0:
        fail(f"promtool {' '.join(args)} exited {r.returncode}")
    return r


def dashboard_queries(dash):
    """(where, expr) of every panel target and every query variable."""
    out = []

    def panels(ps):
        for p in ps:
            yield p
            yield from panels(p.get("panels", []))

    for p in panels(dash.get("panels", [])):
        for t in p.get("targets", []):
            if t.get("expr"):
                out.append((f"panel {p['id']} {p.get('title')!r} target {t.get('refId')}", t["expr"]))
    variables = []
    for v in dash.get("templating", {}).get("list", []):
        if v.get("type") == "query":
            q = v.get("query")
            q = q.get("query") if isinstance(q, dict) else q
            variables.append((f"variable ${v['name']}", q))
    return out, variables


def yaml_quote(s):
    return json.dumps(s)  # a JSON string is a valid YAML double-quoted scalar


def alert_exprs(path):
    """`expr:` values of the rules file (block or inline scalars)."""
    exprs, lines, i = [], path.read_text().splitlines(), 0
    while i < len(lines):
        m = re.match(r"^(\s*)expr:\s*(.*)$", lines[i])
        i += 1
        if not m:
            continue
        indent, rest = len(m.group(1)), m.group(2).strip()
        if rest in ("|", ">", "|-", ">-"):
            block = []
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                block.append(lines[i].strip())
                i += 1
            exprs.append(" ".join(block))
        else:
            exprs.append(rest.strip("'\""))
    return exprs


def main():
    if len(sys.argv) < 2:
        fail("usage: check.py GATEWAY-BINARY [WORK-DIR]")
    binary = sys.argv[1]
    work = Path(sys.argv[2] if len(sys.argv) > 2 else HERE.parent / ".build" / "observability")
    work.mkdir(parents=True, exist_ok=True)
    self_test()

    gw = Gateway(binary)
    try:
        traffic(gw)
        status, body = http("GET", f"http://127.0.0.1:{gw.metrics_port}/metrics")
        if status != 200:
            fail(f"metrics listener answered {status}")
        scrape = body.decode()
        main_status, main_body = http("GET", f"{gw.base}/metrics")
        if main_status != 200 or b"gateway_requests_total" not in main_body:
            fail("the API listener does not serve /metrics")
    finally:
        gw.stop()
    log = "".join(gw.log)
    for secret in ("demo-client-secret", "demo-subscription-key", "Bearer "):
        if secret in log:
            fail(f"the gateway log contains {secret!r}")
    (work / "scrape.txt").write_text(scrape)
    samples, families = parse_exposition(scrape)
    print(f"scraped {len(scrape.splitlines())} lines, {len(families)} families, "
          f"{sum(1 for l in scrape.splitlines() if l and not l.startswith('#'))} series")

    promtool("check", "metrics", stdin=scrape)
    promtool("check", "rules", str(ALERTS))
    promtool("test", "rules", str(ALERT_TESTS))

    dash = json.loads(DASHBOARD.read_text())
    queries, variables = dashboard_queries(dash)
    if not queries:
        fail("the dashboard has no queries")
    rules = ["groups:", "  - name: grafana-dashboard", "    rules:"]
    for n, (where, expr) in enumerate(queries):
        rules.append(f"      - record: dashboard:query_{n}")
        rules.append(f"        expr: {yaml_quote(substitute(expr))}")
        rules.append(f"        labels: {{query: {yaml_quote(where)}}}")
    generated = work / "dashboard-rules.yaml"
    generated.write_text("\n".join(rules) + "\n")
    promtool("check", "rules", str(generated))

    used = []
    for where, expr in queries:
        used.append((f"dashboard {where}", expr, metric_names(substitute(expr))))
    for where, query in variables:
        m = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", substitute(query))
        if not m:
            fail(f"dashboard {where}: unsupported query {query!r}")
        used.append((f"dashboard {where}", query, metric_names(m.group(1))))
    for expr in alert_exprs(ALERTS):
        used.append(("alert", expr, metric_names(expr)))
    if len([u for u in used if u[0] == "alert"]) < 4:
        fail("fewer alert expressions found than expected; is alerts.yaml readable?")
    missing = []
    for where, expr, names in used:
        if not names:
            fail(f"{where}: no metric name found in {expr!r}")
        for name in sorted(names - samples):
            missing.append(f"{where}: {name} (in {expr!r})")
    if missing:
        fail("metrics used but not in the scrape after test traffic:\n  " + "\n  ".join(missing))
    print(f"OK: {len(queries)} dashboard queries, {len(variables)} variables and "
          f"{len([u for u in used if u[0] == 'alert'])} alert expressions use only exported metrics")


if __name__ == "__main__":
    main()
