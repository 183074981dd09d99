#!/usr/bin/env python3
"""The gateway's cost against nginx, HAProxy and a direct call, measured side
by side.

Run through `bench/run` (which builds the release binary and installs wrk,
nginx and HAProxy), or with --gateway-bin for a binary built elsewhere;
--baseline PATH measures a second build of the gateway (the one before a
change) in the same rounds. Every figure it writes comes from this run:
results.json (raw) and results.md (the tables BENCHMARKS.md quotes).

Placement (2-core machine): the servers under test (simulator, and nginx or
the gateway in front of it) share CPU 0; wrk runs alone on CPU 1. Every server
runs one worker (simulator --workers 1, nginx worker_processes 1, HAProxy
nbthread 1, gateway workers = 1) and every load uses the same wrk threads and
connections. With --spread, every server runs two workers instead and
nothing is pinned: servers and wrk share both CPUs, as a front on a small
machine of its own would run (the placement of issue 27's first table).
"""

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import zlib
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Where cargo put the release builds: CARGO_TARGET_DIR when set (bench/run
# builds there too), the repository's target/ otherwise.
TARGET = Path(os.environ.get("CARGO_TARGET_DIR") or ROOT / "target")
BIN = TARGET / "release" / "vipps-order-gateway"
BARE = TARGET / "release" / "bare-forwarder"
HYPER = TARGET / "release" / "hyper-forwarder"
LIB = ROOT / "bench" / "lib"
SERVER_CPU = "0"
LOAD_CPU = "1"
# Workers (processes, threads) of every server under test; --spread: 2.
WORKERS = 1
CLK_TCK = os.sysconf("SC_CLK_TCK")
DEMO = {
    "msn": "123456",
    "client_id": "demo-client-id",
    "client_secret": "demo-client-secret",
    "subscription_key": "demo-subscription-key",
}
SYSTEM_HEADERS = {
    "Vipps-System-Name": "vipps-order-gateway",
    "Vipps-System-Version": "0.1.0",
    "Vipps-System-Plugin-Name": "vipps-order-gateway",
    "Vipps-System-Plugin-Version": "0.1.0",
}


def log(*a):
    print(*a, file=sys.stderr, flush=True)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------- processes


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(port, path="/healthz", timeout=20.0, proc=None, ok=False):
    """Polls until GET path answers (any status; with `ok`, a 200); returns
    seconds waited."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if proc is not None and proc.poll() is not None:
            raise BenchError(f"process exited with {proc.returncode} before answering")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
                if s.recv(16).startswith(b"HTTP/1.1 200" if ok else b"HTTP/1.1"):
                    return time.monotonic() - start
        except OSError:
            pass
        time.sleep(0.002)
    raise BenchError(f"nothing answered on port {port} within {timeout}s")


class Proc:
    """A server pinned to a CPU, with its CPU time and memory readable."""

    def __init__(self, name, argv, workdir, env=None, cpu=None):
        cpu = cpu or SERVER_CPU
        self.name = name
        self.logfile = open(workdir / f"{name}.log", "ab")
        self.spawned = time.monotonic()
        self.popen = subprocess.Popen(
            ["taskset", "-c", cpu, *argv],
            stdout=self.logfile,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
        self.started = time.monotonic()

    def pids(self):
        """The process and its children (nginx: master and worker)."""
        pids = [self.popen.pid]
        try:
            out = subprocess.run(["pgrep", "-P", str(self.popen.pid)], capture_output=True, text=True).stdout
            pids += [int(p) for p in out.split()]
        except OSError:
            pass
        return pids

    def cpu_times(self):
        """(user, kernel) CPU seconds of the process and its children."""
        user = kernel = 0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
                user += int(fields[11])
                kernel += int(fields[12])
            except (OSError, IndexError):
                pass
        return user / CLK_TCK, kernel / CLK_TCK

    def cpu_seconds(self):
        return sum(self.cpu_times())

    def status_kb(self, key):
        total = 0
        for pid in self.pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith(key + ":"):
                        total += int(line.split()[1])
            except OSError:
                pass
        return total

    def stop(self):
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(10)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self.logfile.close()


def http(method, port, path, body=None, headers=None, timeout=30):
    data = None
    headers = dict(headers or {})
    if body is not None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        headers.setdefault("Content-Type", "application/json")
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw else None)
    except urllib.error.HTTPError as e:
        raw = e.read()
        try:
            return e.code, json.loads(raw)
        except ValueError:
            return e.code, raw.decode(errors="replace")


# ---------------------------------------------------------------- simulator


class Sim:
    def __init__(self, workdir, workers=None, request_log=False):
        workers = workers or WORKERS
        self.port = free_port()
        self.proc = Proc("simulator", [str(BIN), "simulate", "--listen", f"127.0.0.1:{self.port}",
                                       "--workers", str(workers)], workdir,
                         env={"RUST_LOG": "warn"})
        wait_http(self.port, "/_simulator/counters", proc=self.proc.popen)
        st, _ = http("PUT", self.port, "/_simulator/settings", {"requestLog": request_log})
        if st != 200:
            raise BenchError(f"simulator settings: {st}")

    def add_merchants(self, merchants):
        conn = __import__("http.client").client.HTTPConnection("127.0.0.1", self.port)
        for m in merchants:
            body = json.dumps({"msn": m["msn"], "clientId": m["client_id"],
                               "clientSecret": m["client_secret"], "subscriptionKey": m["subscription_key"]})
            conn.request("POST", "/_simulator/merchants", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            r.read()
            if r.status != 201:
                raise BenchError(f"adding merchant {m['msn']}: {r.status}")
        conn.close()

    def token(self, m=DEMO):
        st, body = http("POST", self.port, "/accesstoken/get", b"", {
            "client_id": m["client_id"], "client_secret": m["client_secret"],
            "Ocp-Apim-Subscription-Key": m["subscription_key"], "Merchant-Serial-Number": m["msn"],
            **SYSTEM_HEADERS})
        if st != 200:
            raise BenchError(f"token fetch: {st} {body}")
        return body["access_token"]

    def vipps_headers(self, token, m=DEMO):
        return {"Authorization": f"Bearer {token}", "Ocp-Apim-Subscription-Key": m["subscription_key"],
                "Merchant-Serial-Number": m["msn"], **SYSTEM_HEADERS}

    def counters(self):
        return http("GET", self.port, "/_simulator/counters")[1]

    def stop(self):
        self.proc.stop()


# ---------------------------------------------------------------- nginx and gateway


def start_bare_forwarder(workdir, sim, token, binary=BARE):
    """bench/bare-forwarder: actix-web + awc forwarding with static headers
    and nothing else, the framework's floor for the gateway's proxy; with
    `binary=HYPER`, bench/hyper-forwarder, the same on hyper."""
    port = free_port()
    headers = [f"{k}={v}" for k, v in sim.vipps_headers(token).items()]
    proc = Proc(binary.name, [str(binary), str(port), f"http://127.0.0.1:{sim.port}", *headers], workdir)
    wait_http(port, "/healthz", proc=proc.popen)
    return proc, port


def run_nginx(workdir, name, http_body, connections=4096):
    """An nginx (WORKERS workers, in the foreground) under workdir/name, serving
    `http_body` (the `http` block's contents; `{ndir}` in it names the
    directory), with its own temp paths; returns its Proc."""
    ndir = workdir / name
    for sub in ("logs", "tmp"):
        (ndir / sub).mkdir(parents=True, exist_ok=True)
    conf = f"""
daemon off;
worker_processes {WORKERS};
error_log {ndir}/logs/error.log warn;
pid {ndir}/nginx.pid;
events {{ worker_connections {connections}; }}
http {{
    client_body_temp_path {ndir}/tmp/body;
    proxy_temp_path {ndir}/tmp/proxy;
    fastcgi_temp_path {ndir}/tmp/fastcgi;
    uwsgi_temp_path {ndir}/tmp/uwsgi;
    scgi_temp_path {ndir}/tmp/scgi;
{http_body.replace("{ndir}", str(ndir))}
}}
"""
    path = ndir / "nginx.conf"
    path.write_text(conf)
    return Proc(name, ["nginx", "-p", str(ndir), "-c", str(path)], workdir)


def start_nginx(workdir, sim, token):
    port = free_port()
    inject = "\n".join(f'            proxy_set_header {k} "{v}";'
                       for k, v in sim.vipps_headers(token).items())
    proc = run_nginx(workdir, "nginx", f"""
    access_log {{ndir}}/logs/access.log;
    client_max_body_size 4m;
    client_body_buffer_size 4m;
    upstream vipps {{
        server 127.0.0.1:{sim.port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200 "ok"; }}
        location / {{
            proxy_pass http://vipps;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Authorization "";
            proxy_set_header Ocp-Apim-Subscription-Key "";
{inject}
        }}
    }}""")
    wait_http(port, "/healthz", proc=proc.popen)
    return proc, port


def gateway_config(workdir, sim_port, merchants, name="gateway", level="info"):
    port = free_port()
    lines = [
        f'listen = "127.0.0.1:{port}"',
        f"workers = {WORKERS}",
        "[log]", 'format = "json"', f'level = "{level}"',
        "[upstream]", f'base_url = "http://127.0.0.1:{sim_port}"',
        "[resilience]",
        "# the per-merchant guards must not cap a benchmark's throughput",
        "rate_per_second = 0", "max_concurrent = 100000",
        "[limits]", "json_body = 1048576",
    ]
    for m in merchants:
        lines += ["[[merchants]]", f'msn = "{m["msn"]}"', f'client_id = "{m["client_id"]}"',
                  'client_secret_env = "BENCH_CLIENT_SECRET"', 'subscription_key_env = "BENCH_SUBSCRIPTION_KEY"']
    path = workdir / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path, port


def start_haproxy(workdir, sim, token):
    """HAProxy (Debian's 2.6) in front of the simulator, as nginx is: one
    thread on the servers' CPU, connections to the simulator kept and
    shared (`http-reuse always`), the same Vipps headers set on every
    request."""
    port = free_port()
    hdir = workdir / "haproxy"
    hdir.mkdir(parents=True, exist_ok=True)
    inject = "\n".join(f'    http-request set-header {k} "{v}"'
                       for k, v in sim.vipps_headers(token).items())
    conf = f"""
global
    nbthread {WORKERS}
    maxconn 8192
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    option http-keep-alive
    http-reuse always
frontend front
    bind 127.0.0.1:{port}
    http-request return status 200 content-type text/plain string ok if {{ path /healthz }}
    http-request del-header Authorization
    http-request del-header Ocp-Apim-Subscription-Key
{inject}
    default_backend vipps
backend vipps
    server simulator 127.0.0.1:{sim.port}
"""
    path = hdir / "haproxy.cfg"
    path.write_text(conf)
    proc = Proc("haproxy", ["haproxy", "-db", "-f", str(path)], workdir)
    wait_http(port, "/healthz", proc=proc.popen)
    return proc, port


class VippsNginx:
    """An nginx playing Vipps for the receipt-forwarding cases: it answers
    the token call with a fixed token and every receipt POST with a 201
    and a receipt id, storing nothing, so a proxy's own cost is what
    changes from one front to the next. Shaped like Sim where the fronts
    read it (port, proc, token, vipps_headers, stop)."""

    TOKEN = "bench-vipps-nginx-token"

    def __init__(self, workdir):
        self.port = free_port()
        token = json.dumps({"token_type": "Bearer", "expires_in": "3600", "ext_expires_in": "3600",
                            "access_token": self.TOKEN})
        self.proc = run_nginx(workdir, "vipps-nginx", f"""
    access_log off;
    client_max_body_size 4m;
    client_body_buffer_size 4m;
    default_type application/json;
    keepalive_requests 1000000;
    server {{
        listen 127.0.0.1:{self.port};
        location = /healthz {{ return 200 "ok"; }}
        location = /accesstoken/get {{ return 200 '{token}'; }}
        location ~ ^/order-management/v2/[a-z]+/receipts/[^/]+$ {{
            return 201 '"0b5e3bb4-7d6e-4a5f-9f1c-3c1d2e4f5a6b"';
        }}
    }}""")
        wait_http(self.port, "/healthz", proc=self.proc.popen)

    def token(self, m=DEMO):
        return self.TOKEN

    vipps_headers = Sim.vipps_headers

    def stop(self):
        self.proc.stop()


def start_otlp_sink(workdir):
    """An OTLP/HTTP receiver that takes every batch and keeps nothing (nginx
    answering 200 to POST /v1/traces), for the cases with trace export on."""
    port = free_port()
    proc = run_nginx(workdir, "otlp-sink", f"""
    access_log off;
    client_max_body_size 64m;
    server {{
        listen 127.0.0.1:{port};
        location = /healthz {{ return 200 "ok"; }}
        location = /v1/traces {{ return 200; }}
    }}""", connections=256)
    wait_http(port, "/healthz", proc=proc.popen)
    return proc, port


def spans_dropped(port):
    """gateway_trace_spans_dropped_total, summed over its reasons."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(l.rsplit(" ", 1)[1]) for l in text.splitlines()
               if l.startswith("gateway_trace_spans_dropped_total{"))


def start_gateway(workdir, sim_port, merchants=(DEMO,), name="gateway", level="info", otlp=None, binary=None):
    """The gateway (the build under test, or `binary`) in front of the
    simulator; with `otlp` (a port), exporting every span (sampling ratio
    1.0) to the OTLP receiver there. Returns (proc, port, start): start is
    the seconds from spawning the process to its first 200 on /healthz."""
    path, port = gateway_config(workdir, sim_port, merchants, name, level)
    env = {"BENCH_CLIENT_SECRET": merchants[0]["client_secret"],
           "BENCH_SUBSCRIPTION_KEY": merchants[0]["subscription_key"]}
    if otlp:
        env["VOG_TELEMETRY__OTLP__ENDPOINT"] = f"http://127.0.0.1:{otlp}"
    proc = Proc(name, [str(binary or BIN), "serve", "--config", str(path)], workdir, env=env)
    wait_http(port, "/healthz", proc=proc.popen, ok=True)
    return proc, port, time.monotonic() - proc.spawned


def bench_merchants(n):
    """n merchants sharing the demo secrets (one env var each for all)."""
    return [{"msn": str(100000 + i), "client_id": f"bench-client-{i}",
             "client_secret": DEMO["client_secret"], "subscription_key": DEMO["subscription_key"]}
            for i in range(n)]


# ---------------------------------------------------------------- wrk


def lua_string(s):
    return "[==[" + s + "]==]"


def wrk_script(workdir, name, method, path, headers, body_file=None, msns=None, delay_ms=None):
    """A wrk Lua script. `path` may hold {id} (a per-request unique order id)
    and {msn} (a merchant drawn in turn from msns)."""
    hdrs = ", ".join(f"[ {lua_string(k)} ] = {lua_string(v)}" for k, v in headers.items())
    prefix = f"{name}-{int(time.time() * 1000) % 10**9}"
    msn_list = ", ".join(lua_string(m) for m in (msns or []))
    opener = f'io.open({lua_string(str(body_file))}, "rb")' if body_file else "nil"
    code = f"""
local prefix = {lua_string(prefix)}
local headers = {{ {hdrs} }}
local msns = {{ {msn_list} }}
local body = nil
local counter = 0
local nthreads = 0
function setup(thread)
  nthreads = nthreads + 1
  thread:set("tid", nthreads)
end
function init(args)
  -- a run id from the command line: every run (warm-up included) makes new ids
  prefix = prefix .. "-" .. (args[1] or "0")
  local f = {opener}
  if f then body = f:read("*a"); f:close() end
end
request = function()
  counter = counter + 1
  local p = {lua_string(path)}
  p = p:gsub("{{id}}", prefix .. "-" .. tostring(tid) .. "-" .. counter)
  if #msns > 0 then
    local m = msns[((counter + (tid or 0)) % #msns) + 1]
    p = p:gsub("{{msn}}", m)
    if headers["Merchant-Serial-Number"] then headers["Merchant-Serial-Number"] = m end
  end
  return wrk.format({lua_string(method)}, p, headers, body)
end
"""
    if delay_ms:
        # An exponential think time (mean delay_ms): arrivals are Poisson-like,
        # so the connections do not fire in step and queue behind each other.
        code += f"""
math.randomseed(os.time())
function delay()
  return math.floor(-math.log(1 - math.random()) * {delay_ms} + 0.5)
end
"""
    code += (LIB / "report.lua").read_text()
    path_ = workdir / f"{name}.lua"
    path_.write_text(code)
    return path_


def run_wrk(port, script, seconds, connections, threads=1, servers=()):
    """Runs wrk pinned to the load CPU; returns its figures and the servers'
    CPU seconds used during the run."""
    before = [s.cpu_times() for s in servers]
    load_before = os.getloadavg()[0]
    out = subprocess.run(
        ["taskset", "-c", LOAD_CPU, "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s",
         "--timeout", "10s", "-s", str(script), f"http://127.0.0.1:{port}/", "--", str(time.time_ns())],
        capture_output=True, text=True)
    after = [s.cpu_times() for s in servers]
    m = re.search(r"WRK_JSON (\{.*\})", out.stdout)
    if out.returncode != 0 or not m:
        raise BenchError(f"wrk failed: {out.stdout}\n{out.stderr}")
    r = json.loads(m.group(1))
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = sum(r[k] for k in ("connect_errors", "read_errors", "write_errors", "status_errors", "timeouts"))
    r["cpu_s"] = {s.name: sum(a) - sum(b) for s, a, b in zip(servers, after, before)}
    per_req = lambda v: v * 1e6 / r["requests"] if r["requests"] else None  # noqa: E731
    r["cpu_us_per_req"] = {k: per_req(v) for k, v in r["cpu_s"].items()}
    r["cpu_user_us_per_req"] = {s.name: per_req(a[0] - b[0]) for s, a, b in zip(servers, after, before)}
    r["cpu_kernel_us_per_req"] = {s.name: per_req(a[1] - b[1]) for s, a, b in zip(servers, after, before)}
    r["loadavg_1m_before"] = load_before
    r["loadavg_1m_after"] = os.getloadavg()[0]
    r["connections"] = connections
    return r


def best_of(runs):
    """The run with the median throughput (figures stay from one run)."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    return ordered[len(ordered) // 2]


# ---------------------------------------------------------------- cases


# The receipt-forwarding cases (issue 27's table): a 10-line Vipps receipt
# POSTed through each proxy to an nginx playing Vipps.
PROXY_RECEIPT = ("nginx_proxy_receipt", "haproxy_proxy_receipt", "gateway_proxy_receipt")
# The gateway cases that --baseline measures on the build before as well.
BASELINE_CASES = ("gateway_proxy", "gateway_facade_read", "gateway_facade_receipt", "gateway_proxy_receipt")


def receipt_lines(n):
    return [{"id": f"sku-{i}", "name": f"Item number {i}", "quantity": "2", "unitPrice": "199.00",
             "taxPercent": "25"} for i in range(n)]


def facade_receipt(n):
    return {"currency": "NOK", "lines": receipt_lines(n), "expectedTotal": f"{398 * n}.00"}


def png(size, height=200):
    """A PNG of exactly `size` bytes: signature, IHDR (with a valid CRC) and
    an ancillary chunk of padding; the gateway reads only magic and height."""
    ihdr = struct.pack(">IIBBBBB", 400, height, 8, 2, 0, 0, 0)
    head = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    pad = size - len(head) - 12
    chunk = b"bnCh" + bytes(pad)
    return head + struct.pack(">I", pad) + chunk + struct.pack(">I", zlib.crc32(chunk))


class Run:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = workdir
        self.results = {}

    def check(self, port, method, path, headers, body=None, want=(200, 201)):
        st, answer = http(method, port, path, body, headers)
        if st not in want:
            raise BenchError(f"probe {method} {path} answered {st}: {str(answer)[:300]}")
        return answer

    def measure(self, name, port, script, servers, connections=None, seconds=None, runs=None):
        a = self.args
        connections = connections or a.connections
        seconds = seconds or a.seconds
        run_wrk(port, script, min(2, seconds), connections, servers=servers)  # warm-up
        results = []
        for i in range(runs or a.runs):
            r = run_wrk(port, script, seconds, connections, servers=servers)
            if r["errors"]:
                raise BenchError(f"{name}: {r['errors']} errors in a run ({r})")
            results.append(r)
            log(f"  {name} run {i + 1}: {r['rps']:.0f} req/s p50 {r['p50_us']} µs p99 {r['p99_us']} µs")
        chosen = best_of(results)
        chosen["runs_rps"] = [round(r["rps"]) for r in results]
        chosen["peak_rss_kb"] = {s.name: s.status_kb("VmHWM") for s in servers}
        return chosen

    # -- cases 1-3 (reads), 4 (receipts) and 5 (receipts forwarded)
    def setup_case(self, case, sim):
        """Starts the front of a side-by-side case in front of `sim` (a
        VippsNginx for the forwarded receipts) and probes it; returns (port,
        script, servers, path). A case ending in `_baseline` is its plain
        case on the baseline build."""
        wd = self.workdir
        read_path = "/order-management/v2/ecom/bench-read"
        servers = []
        baseline = case.endswith("_baseline")
        base = case.removesuffix("_baseline")
        try:
            token = sim.token()
            vh = sim.vipps_headers(token)
            receipt10 = facade_receipt(10)
            if base not in PROXY_RECEIPT:
                # a stored order for the read cases
                self.check(sim.port, "POST", "/order-management/v2/ecom/receipts/bench-read", vh,
                           self.vipps_receipt(sim, receipt10))
            if base in PROXY_RECEIPT:
                # the same ready Vipps receipt through every front, each
                # setting the same Vipps headers
                hdr = {"Merchant-Serial-Number": DEMO["msn"], "Content-Type": "application/json"}
                path, method = "/order-management/v2/ecom/receipts/{id}", "POST"
                body = self.write_body("vipps-receipt-10.json", self.ready_receipt(receipt10))
                if base == "nginx_proxy_receipt":
                    front, port = start_nginx(wd, sim, token)
                elif base == "haproxy_proxy_receipt":
                    front, port = start_haproxy(wd, sim, token)
                else:
                    front, port, _ = start_gateway(wd, sim.port, name="gateway-baseline" if baseline else "gateway",
                                                   binary=self.args.baseline if baseline else None)
                    path = "/vipps" + path
                servers = [front, sim.proc]
            elif case == "direct":
                servers = [sim.proc]
                port, path, hdr, method, body = sim.port, read_path, vh, "GET", None
            elif case in ("bare_forwarder", "hyper_forwarder"):
                bf, port = start_bare_forwarder(wd, sim, sim.token(), BARE if case == "bare_forwarder" else HYPER)
                servers = [bf, sim.proc]
                path, hdr, method, body = "/vipps" + read_path, {}, "GET", None
            elif case == "haproxy":
                hp, port = start_haproxy(wd, sim, sim.token())
                servers = [hp, sim.proc]
                hdr = {"Merchant-Serial-Number": DEMO["msn"]}
                path, method, body = read_path, "GET", None
            elif case in ("nginx", "nginx_receipt"):
                ng, port = start_nginx(wd, sim, sim.token())
                servers = [ng, sim.proc]
                hdr = {"Merchant-Serial-Number": DEMO["msn"]}
                if case == "nginx":
                    path, method, body = read_path, "GET", None
                else:
                    method = "POST"
                    path = "/order-management/v2/ecom/receipts/{id}"
                    body = self.write_body("vipps-receipt-10.json", self.vipps_receipt(sim, receipt10))
                    hdr["Content-Type"] = "application/json"
            else:
                sink, otlp = None, None
                if case.endswith("_otlp"):
                    sink, otlp = start_otlp_sink(wd)
                    servers.append(sink)
                elif case.endswith("_otlp_down"):
                    otlp = free_port()  # nothing listens there: every export fails
                gw, port, _ = start_gateway(wd, sim.port, level="warn" if case.endswith("_warn") else "info",
                                            otlp=otlp, name="gateway-baseline" if baseline else "gateway",
                                            binary=self.args.baseline if baseline else None)
                servers = [gw, sim.proc] + ([sink] if sink else [])
                if base in ("gateway_proxy", "gateway_proxy_otlp", "gateway_proxy_otlp_down"):
                    hdr = {"Merchant-Serial-Number": DEMO["msn"]}
                    path, method, body = "/vipps" + read_path, "GET", None
                elif base in ("gateway_facade_read", "gateway_facade_read_warn"):
                    hdr = {}
                    path, method, body = f"/v1/merchants/{DEMO['msn']}/orders/bench-read", "GET", None
                else:
                    hdr = {"Content-Type": "application/json"}
                    method = "POST"
                    path = f"/v1/merchants/{DEMO['msn']}/orders/{{id}}/receipt"
                    body = self.write_body("facade-receipt-10.json", receipt10)
            probe_path = path.replace("{id}", f"probe-{case}")
            self.check(port, method, probe_path, hdr, body.read_bytes() if body else None)
        except BaseException:
            for srv in servers:
                if srv is not sim.proc:
                    srv.stop()
            raise
        return port, wrk_script(wd, case, method, path, hdr, body), servers, path

    def side_by_side(self):
        """The reads, then the receipts, each group measured in rounds: one run
        of every case of the group, then the next round, so that a slow
        stretch of the machine falls on every front of the group alike. The
        read cases stay up across the rounds (they store nothing); each
        receipt run gets a fresh simulator and front, so that every run starts
        from the same empty simulator (which holds at most 10,000 orders; before
        3555fbd it kept every receipt, gigabytes of them, and slowed as it
        grew).
        The forwarded receipts go to an nginx playing Vipps, which stores
        nothing: those fronts stay up across the rounds too. With
        --baseline, each gateway case of BASELINE_CASES runs right after
        itself on the baseline build, in the same rounds."""
        a, wd = self.args, self.workdir
        out = {}
        groups = ((("direct", "nginx", "haproxy", "gateway_proxy", "gateway_proxy_otlp", "gateway_proxy_otlp_down", "bare_forwarder", "hyper_forwarder",
                    "gateway_facade_read", "gateway_facade_read_warn"), False),
                  (("nginx_receipt", "gateway_facade_receipt", "gateway_facade_receipt_otlp"), True),
                  (PROXY_RECEIPT, False))
        if a.baseline:
            groups = tuple((sum(((c, c + "_baseline") if c in BASELINE_CASES else (c,) for c in group), ()), fresh)
                           for group, fresh in groups)

        def start(case, c):
            sim = VippsNginx(wd) if case.removesuffix("_baseline") in PROXY_RECEIPT else Sim(wd)
            c.update(sim=sim, servers=[sim.proc], case=case)
            port, script, servers, path = self.setup_case(case, sim)
            c.update(port=port, script=script, servers=servers, path=path)
            run_wrk(port, script, min(2, a.seconds), a.connections, servers=servers)  # warm-up

        def stop(c):
            if "sim" not in c:
                return
            if "_otlp" in c["case"]:
                # Export on: what the gateway could not hand to the receiver.
                c["dropped"] = c.get("dropped", 0) + spans_dropped(c["port"])
            for srv in c["servers"]:
                rss = srv.status_kb("VmHWM")
                if rss is not None:
                    c["peak"][srv.name] = max(c["peak"].get(srv.name, 0), rss)
                if srv is not c["sim"].proc:
                    srv.stop()
            c["sim"].stop()
            del c["sim"]

        for group, fresh in groups:
            live = {case: {"runs": [], "peak": {}} for case in group}
            try:
                for i in range(a.runs):
                    for case in group:
                        c = live[case]
                        if case in out:
                            continue
                        try:
                            if "sim" not in c:
                                start(case, c)
                            r = run_wrk(c["port"], c["script"], a.seconds, a.connections, servers=c["servers"])
                            if r["errors"]:
                                raise BenchError(f"{case}: {r['errors']} errors in a run ({r})")
                        except BenchError as e:
                            log(f"case {case} FAILED: {e}")
                            out[case] = {"failed": str(e)}
                            stop(c)
                            continue
                        c["runs"].append(r)
                        log(f"  {case} round {i + 1}: {r['rps']:.0f} req/s p50 {r['p50_us']} µs p99 {r['p99_us']} µs")
                        if fresh:
                            stop(c)
            finally:
                for c in live.values():
                    stop(c)
            for case in group:
                if case in out:
                    continue
                c = live[case]
                chosen = best_of(c["runs"])
                chosen["runs_rps"] = [round(r["rps"]) for r in c["runs"]]
                # Every round's figures, for ratios taken round by round.
                chosen["rounds"] = [{k: r[k] for k in ("rps", "p50_us", "p99_us", "p999_us", "cpu_us_per_req")}
                                    for r in c["runs"]]
                chosen["peak_rss_kb"] = c["peak"]
                if "dropped" in c:
                    chosen["spans_dropped"] = c["dropped"]
                if case in ("direct", "nginx", "gateway_proxy", "gateway_facade_read"):
                    chosen["probe_path"] = c["path"]
                out[case] = chosen
        self.results["cases"] = out

    def ready_receipt(self, facade):
        """vipps_receipt, taken from a simulator of its own when not known yet
        (the nginx playing Vipps does not translate)."""
        if len(facade["lines"]) not in getattr(self, "_vipps_receipts", {}):
            sim = Sim(self.workdir)
            try:
                self.vipps_receipt(sim, facade)
            finally:
                sim.stop()
        return self._vipps_receipts[len(facade["lines"])]

    def vipps_receipt(self, sim, facade):
        """The Vipps receipt the gateway sends for a façade receipt: read from
        the gateway's own answer, so nginx forwards exactly the same body."""
        if not hasattr(self, "_vipps_receipts"):
            self._vipps_receipts = {}
        key = len(facade["lines"])
        if key not in self._vipps_receipts:
            gw, port, _ = start_gateway(self.workdir, sim.port, name="gateway-probe")
            try:
                answer = self.check(port, "POST", f"/v1/merchants/{DEMO['msn']}/orders/translate-{key}-{time.time_ns()}/receipt",
                                    {}, facade)
                self._vipps_receipts[key] = answer["receipt"]
            finally:
                gw.stop()
        return self._vipps_receipts[key]

    def write_body(self, name, value):
        p = self.workdir / name
        p.write_bytes(value if isinstance(value, bytes) else json.dumps(value).encode())
        return p

    # -- latency added over direct at (about) half load
    def half_load(self):
        """Direct, nginx, the proxy and the façade read at about half the
        slowest read case's maximum, taken in rounds like the side-by-side
        reads: each front runs once per round, and the latency a front adds
        is its percentile minus the direct call's in the same round (the
        median of the rounds is reported, with the range)."""
        a, wd = self.args, self.workdir
        cases = self.results["cases"]
        order = ("direct", "nginx", "gateway_proxy", "gateway_facade_read")
        limits = [cases[c]["rps"] for c in order if "rps" in cases.get(c, {})]
        if not limits:
            return
        rate = min(limits) / 2
        conns = a.connections
        delay_ms = max(1, round(conns / rate * 1000))
        seconds = max(a.seconds, 10)
        out = {"target_rps": round(rate), "connections": conns, "delay_ms": delay_ms, "runs": a.runs,
               "seconds": seconds}
        live = {}
        try:
            for case in order:
                if "failed" in cases.get(case, {"failed": "not run"}):
                    out[case] = {"failed": cases.get(case, {}).get("failed", "not run")}
                    continue
                sim = Sim(wd)
                live[case] = {"sim": sim, "servers": [sim.proc], "runs": []}
                try:
                    token = sim.token()
                    vh = sim.vipps_headers(token)
                    self.check(sim.port, "POST", "/order-management/v2/ecom/receipts/bench-read", vh,
                               self.vipps_receipt(sim, facade_receipt(10)))
                    if case == "direct":
                        port, hdr = sim.port, vh
                    elif case == "nginx":
                        ng, port = start_nginx(wd, sim, sim.token())
                        hdr = {"Merchant-Serial-Number": DEMO["msn"]}
                        live[case]["servers"].insert(0, ng)
                    else:
                        gw, port, _ = start_gateway(wd, sim.port)
                        hdr = {"Merchant-Serial-Number": DEMO["msn"]} if case == "gateway_proxy" else {}
                        live[case]["servers"].insert(0, gw)
                    script = wrk_script(wd, f"half-{case}", "GET", cases[case]["probe_path"], hdr, delay_ms=delay_ms)
                    live[case].update(port=port, script=script)
                    run_wrk(port, script, min(2, a.seconds), conns, servers=live[case]["servers"])  # warm-up
                except BenchError as e:
                    out[case] = {"failed": str(e)}
            for i in range(a.runs):
                for case in order:
                    c = live.get(case)
                    if c is None or case in out:
                        continue
                    r = run_wrk(c["port"], c["script"], seconds, conns, servers=c["servers"])
                    if r["errors"]:
                        out[case] = {"failed": f"{r['errors']} errors in a run ({r})"}
                        continue
                    c["runs"].append(r)
                    log(f"  half load {case} round {i + 1}: {r['rps']:.0f} req/s p50 {r['p50_us']} µs "
                        f"p99 {r['p99_us']} µs")
        finally:
            for c in live.values():
                for srv in c["servers"]:
                    srv.stop()
        for case in order:
            if case in out:
                continue
            runs = live[case]["runs"]
            row = {k: statistics.median(r[k] for r in runs) for k in ("rps", "p50_us", "p99_us", "p999_us")}
            row["rounds"] = [{k: r[k] for k in ("rps", "p50_us", "p99_us", "p999_us")} for r in runs]
            out[case] = row
        self.results["half_load"] = out

    # -- token fetches under 1,000 concurrent callers on 10 cold merchants
    def token_storm(self):
        wd = self.workdir
        merchants = bench_merchants(10)
        sim = Sim(wd)
        gw = None
        try:
            sim.add_merchants(merchants)
            gw, port, _ = start_gateway(wd, sim.port, merchants, name="gateway-tokens")
            statuses = asyncio.run(storm(port, [f"/v1/merchants/{merchants[i % 10]['msn']}/orders/storm-{i}"
                                                for i in range(1000)]))
            fetches = sim.counters()["tokenFetches"]
            total = sum(fetches.get(m["msn"], 0) for m in merchants)
            self.results["token_storm"] = {
                "callers": 1000, "merchants": 10, "token_fetches": total,
                "per_merchant": {m["msn"]: fetches.get(m["msn"], 0) for m in merchants},
                "statuses": statuses}
            log(f"token storm: {total} fetches, statuses {statuses}")
        finally:
            if gw:
                gw.stop()
            sim.stop()

    # -- memory and start time against the number of merchants
    def merchants_scale(self):
        """Start time (spawn to the first 200 on /healthz, 3 starts) and
        memory (idle RSS, and VmHWM after a wrk run of façade receipts spread
        over every merchant) with 1, 1,000 and 10,000 merchants; issue 27's
        limits are read at 1,000 (memory) and 10,000 (start). With
        --baseline, the baseline build the same way, size by size."""
        builds = [("merchants", "gateway", None)]
        if self.args.baseline:
            builds.append(("merchants_baseline", "gateway-baseline", self.args.baseline))
        for key, _, _ in builds:
            self.results[key] = {}
        for n in (1, 1000, 10000):
            for key, name, binary in builds:
                self.results[key][str(n)] = self.merchants_at(n, f"{name}-{n}", binary)

    def merchants_at(self, n, name, binary):
        a, wd = self.args, self.workdir
        merchants = [DEMO] if n == 1 else bench_merchants(n)
        sim = Sim(wd)
        gw = None
        try:
            if n > 1:
                sim.add_merchants(merchants)
            starts, idle = [], None
            for i in range(3):
                gw, port, start = start_gateway(wd, sim.port, merchants, name=name, binary=binary)
                starts.append(start)
                time.sleep(0.3)
                idle = gw.status_kb("VmRSS")
                if i < 2:
                    gw.stop()
            # under load: 10-line receipts spread over every merchant
            body = self.write_body("facade-receipt-10.json", facade_receipt(10))
            script = wrk_script(wd, f"scale-{n}", "POST", "/v1/merchants/{msn}/orders/{id}/receipt",
                                {"Content-Type": "application/json"}, body,
                                msns=[m["msn"] for m in merchants])
            log(f"merchants {n} ({name})")
            r = self.measure(f"scale-{n}", port, script, [gw, sim.proc], runs=1,
                             seconds=max(a.seconds, 10))
            return {"start_s": starts, "start_median_s": statistics.median(starts),
                    "idle_rss_kb": idle, "peak_rss_under_load_kb": r["peak_rss_kb"][name],
                    "load": r,
                    "token_fetches": sum(sim.counters()["tokenFetches"].values())}
        finally:
            if gw:
                gw.stop()
            sim.stop()

    # -- latency against receipt size and image size
    def sizes(self):
        """Each size gets a fresh simulator and gateway, so peak RSS is that
        size's (the simulator keeps every receipt it stores)."""
        a, wd = self.args, self.workdir
        out = {"receipt_lines": {}, "image_bytes": {}}
        jobs = [("receipt_lines", n) for n in (1, 10, 100, 1000)] + \
               [("image_bytes", n) for n in (10_000, 100_000, 1_000_000, 2_000_000)]
        for kind, n in jobs:
            sim = Sim(wd)
            gw = None
            try:
                gw, port, _ = start_gateway(wd, sim.port)
                if kind == "receipt_lines":
                    body = self.write_body(f"facade-receipt-{n}.json", facade_receipt(n))
                    ctype, name = "application/json", f"receipt-{n}"
                    path = f"/v1/merchants/{DEMO['msn']}/orders/{{id}}/receipt"
                else:
                    body = self.write_body(f"image-{n}.png", png(n))
                    ctype, name = "image/png", f"image-{n}"
                    path = f"/v1/merchants/{DEMO['msn']}/images?imageId={{id}}"
                self.check(port, "POST", path.replace("{id}", f"probe-{n}"), {"Content-Type": ctype},
                           body.read_bytes())
                script = wrk_script(wd, name, "POST", path, {"Content-Type": ctype}, body)
                log(name)
                r = self.measure(name, port, script, [gw, sim.proc], connections=a.size_connections, runs=1)
                r["body_bytes"] = body.stat().st_size
                out[kind][str(n)] = r
            finally:
                if gw:
                    gw.stop()
                sim.stop()
        self.results["sizes"] = out

    # -- the simulator's own ceiling, with its request log on and off
    def sim_ceiling(self):
        wd = self.workdir
        out = {}
        for logging in (True, False):
            sim = Sim(wd, request_log=logging)
            try:
                vh = sim.vipps_headers(sim.token())
                self.check(sim.port, "POST", "/order-management/v2/ecom/receipts/bench-read", vh,
                           self.vipps_receipt(sim, facade_receipt(10)))
                script = wrk_script(wd, f"sim-log-{logging}", "GET", "/order-management/v2/ecom/bench-read", vh)
                log(f"simulator ceiling, request log {'on' if logging else 'off'}")
                out["request_log_on" if logging else "request_log_off"] = self.measure(
                    f"sim-{logging}", sim.port, script, [sim.proc], runs=1)
            finally:
                sim.stop()
        self.results["simulator_ceiling"] = out


async def storm(port, paths):
    """Opens one connection per path, then sends every request at once."""
    conns = await asyncio.gather(*[asyncio.open_connection("127.0.0.1", port) for _ in paths])
    for (_, w), p in zip(conns, paths):
        w.write(f"GET {p} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
    await asyncio.gather(*[w.drain() for _, w in conns])

    async def read(r, w):
        data = await r.read()
        w.close()
        return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "none"

    codes = await asyncio.gather(*[read(r, w) for r, w in conns])
    counts = {}
    for c in codes:
        counts[c] = counts.get(c, 0) + 1
    return counts


# ---------------------------------------------------------------- report


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines()
                if l.startswith("model name")), "unknown")
    def ver(cmd):
        try:
            out = subprocess.run(cmd, capture_output=True, text=True)
            return (out.stdout + out.stderr).strip().splitlines()[0]
        except (OSError, IndexError):
            return "unknown"
    return {"nproc": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "wrk": ver(["wrk", "-v"]), "nginx": ver(["nginx", "-v"]), "haproxy": ver(["haproxy", "-v"]),
            "rustc": ver(["rustc", "--version"]),
            "git": ver(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"]),
            "loadavg_at_start": os.getloadavg()}


def ms(us):
    return f"{us / 1000:.2f}"


def placement(res):
    """(workers per server, the servers' CPUs, wrk's CPUs) of a run."""
    if res["args"].get("spread"):
        return 2, "0,1", "0,1"
    return 1, "0", "1"


def forwarding_table(res, rounds, fmt):
    """Issue 27's table: a 10-line receipt forwarded by nginx, HAProxy and the
    gateway (and the baseline build, when given) in the same rounds, with the
    ratios its targets are read from."""
    c = res.get("cases", {})
    if not any(k in c for k in PROXY_RECEIPT):
        return []
    haproxy = re.search(r"version (\d+\.\d+)", res["machine"].get("haproxy", ""))
    baseline = res["args"].get("baseline")
    workers = placement(res)[0]
    many = "s" if workers > 1 else ""
    sides = [("nginx_proxy_receipt", f"nginx ({workers} worker{many}, keep-alive pool)"),
             ("haproxy_proxy_receipt",
              f"HAProxy {haproxy.group(1) if haproxy else ''} ({workers} thread{many}, `http-reuse always`)"),
             ("gateway_proxy_receipt", "the gateway (new build)" if baseline else "the gateway")]
    if baseline:
        sides.append(("gateway_proxy_receipt_baseline", "the gateway (before)"))
    L = ["### Forwarding a 10-line receipt: nginx, HAProxy and the gateway", ""]
    L.append(f"wrk -t1 -c{res['args']['connections']} POSTing the ready Vipps receipt of the 10-line façade receipt "
             "(a new order id per request) through each proxy to an nginx playing Vipps (a 201 for every "
             "receipt, nothing stored); every proxy sets the same static Vipps headers and keeps its "
             "connections to it open. Each front has as many workers and CPUs as in the cases above; "
             f"the figures are the median-throughput run of {res['args']['runs']} rounds"
             + (f"; the gateway before is `{baseline}`, measured in the same rounds." if baseline else "."))
    L.append("")
    L.append("| side | req/s | p50 | p99 |")
    L.append("|---|---|---|---|")
    for k, label in sides:
        r = c.get(k, {"failed": "not run"})
        if "failed" in r:
            L.append(f"| {label} | FAILED: {r['failed'][:120]} | | |")
        else:
            L.append(f"| {label} | {r['rps']:.0f} | {ms(r['p50_us'])} ms | {ms(r['p99_us'])} ms |")
    L.append("")

    def line(label, a, b, f, floor=None, ceiling=None):
        rr = rounds(a, b, f)
        if rr is None:
            return f"- {label}: not measured"
        met = ""
        if floor is not None:
            met = f" (target ≥ {floor:.1f}×: {'met' if rr[0] >= floor else 'missed'})"
        if ceiling is not None:
            met = f" (target ≤ {ceiling:.1f}×: {'met' if rr[0] <= ceiling else 'missed'})"
        return f"- {label}: {fmt(rr, True)}{met}"

    L.append("Ratios, round by round (median, lowest–highest):")
    L.append("")
    L.append(line("throughput, gateway / HAProxy", "gateway_proxy_receipt", "haproxy_proxy_receipt", "rps", floor=1.0))
    L.append(line("throughput, gateway / nginx", "gateway_proxy_receipt", "nginx_proxy_receipt", "rps", floor=0.9))
    L.append(line("p99, gateway / HAProxy", "gateway_proxy_receipt", "haproxy_proxy_receipt", "p99_us", ceiling=1.0))
    L.append(line("p99, gateway / nginx", "gateway_proxy_receipt", "nginx_proxy_receipt", "p99_us", ceiling=1.0))
    L.append(line("throughput, gateway façade receipt / nginx forwarding the ready receipt (to the simulator)",
                  "gateway_facade_receipt", "nginx_receipt", "rps", floor=0.7))
    if baseline:
        L.append(line("throughput, gateway new build / before", "gateway_proxy_receipt",
                      "gateway_proxy_receipt_baseline", "rps"))
        L.append(line("p99, gateway new build / before", "gateway_proxy_receipt",
                      "gateway_proxy_receipt_baseline", "p99_us"))
        L.append(line("throughput, façade receipt new build / before", "gateway_facade_receipt",
                      "gateway_facade_receipt_baseline", "rps"))
    L.append("")
    return L


def markdown(res):
    c = res.get("cases", {})
    workers, server_cpu, load_cpu = placement(res)
    L = []
    L.append(f"Run {res['date']} on {res['machine']['nproc']} CPUs ({res['machine']['cpu']}), "
             f"kernel {res['machine']['kernel']}; commit `{res['machine']['git']}`; "
             f"{res['args']['runs']} runs of {res['args']['seconds']} s per case, taken in rounds across the reads and "
             f"across the receipts (median-throughput run shown), "
             f"wrk 1 thread × {res['args']['connections']} connections on CPU {load_cpu}; "
             f"servers on CPU {server_cpu}, {workers} worker{'s' if workers > 1 else ''} (or threads) each.")
    L.append("")
    if not c:
        L.append("(side-by-side cases not run)")
    L.append("")
    L.append("| case | req/s | p50 ms | p99 ms | p99.9 ms | server CPU µs/req | peak RSS MB | load avg (before→after) | runs req/s |")
    L.append("|---|---|---|---|---|---|---|---|---|")
    names = {"direct": "1 direct (wrk → simulator, GET order)",
             "nginx": "2 nginx → simulator (GET order)",
             "haproxy": "extra: HAProxy → simulator (GET order)",
             "gateway_proxy": "3 gateway proxy `/vipps/...` (GET order)",
             "bare_forwarder": "extra: bare actix-web + awc forwarder (GET order)",
             "hyper_forwarder": "extra: bare hyper forwarder (GET order)",
             "gateway_facade_read": "extra: gateway façade GET order",
             "gateway_facade_read_warn": "extra: gateway façade GET order, `log.level = \"warn\"`",
             "nginx_receipt": "4a nginx, ready-made Vipps receipt (10 lines)",
             "gateway_facade_receipt": "4b gateway façade receipt (10 lines)",
             "gateway_proxy_otlp": "extra: gateway proxy, every span exported over OTLP",
             "gateway_proxy_otlp_down": "extra: gateway proxy, exporting to a receiver that is down",
             "gateway_facade_receipt_otlp": "extra: gateway façade receipt, every span exported over OTLP",
             "nginx_proxy_receipt": "5a nginx → nginx playing Vipps (POST 10-line receipt)",
             "haproxy_proxy_receipt": "5b HAProxy → nginx playing Vipps (POST 10-line receipt)",
             "gateway_proxy_receipt": "5c gateway proxy `/vipps/...` → nginx playing Vipps (POST 10-line receipt)"}
    if res["args"].get("baseline"):
        # each gateway case's baseline row right below it
        names = {k2: v2 for k, v in names.items()
                 for k2, v2 in ((k, v), (k + "_baseline", v + " (baseline)")) if k in BASELINE_CASES or k2 == k}
    for k, label in names.items():
        r = c.get(k, {"failed": "not run"})
        if "failed" in r:
            L.append(f"| {label} | FAILED: {r['failed'][:120]} | | | | | | | |")
            continue
        cpu = ", ".join(f"{n} {v:.1f}" for n, v in r["cpu_us_per_req"].items())
        rss = ", ".join(f"{n} {v / 1024:.1f}" for n, v in r["peak_rss_kb"].items())
        L.append(f"| {label} | {r['rps']:.0f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | {ms(r['p999_us'])} | {cpu} | {rss} | "
                 f"{r['loadavg_1m_before']:.2f}→{r['loadavg_1m_after']:.2f} | {r['runs_rps']} |")
    L.append("")

    def get(k, f):
        r = c.get(k, {})
        return r.get(f) if "failed" not in r else None

    def cpu(k, name):
        r = c.get(k, {})
        return r.get("cpu_us_per_req", {}).get(name) if "failed" not in r else None

    L.append("### CPU per request: user space and kernel")
    L.append("")
    L.append("The kernel part (loopback TCP, waking the other side, the log write) is much the same for every "
             "front; the user-space part is what the front's own code costs.")
    L.append("")
    L.append("| case | process | user µs/req | kernel µs/req |")
    L.append("|---|---|---|---|")
    for k, label in names.items():
        r = c.get(k, {})
        if "failed" in r or "cpu_user_us_per_req" not in r:
            continue
        for n, u in r["cpu_user_us_per_req"].items():
            L.append(f"| {label} | {n} | {u:.1f} | {r['cpu_kernel_us_per_req'][n]:.1f} |")
    L.append("")

    L.append("### Ratios")
    L.append("")
    L.append("Each ratio is taken round by round (the two cases ran in the same round, at most a minute apart) "
             "and the median of the three is shown; throughput and p99 also show the lowest and highest.")
    L.append("")
    L.append("| comparison | throughput | p50 | p99 | p99.9 | front CPU µs/req | target | met |")
    L.append("|---|---|---|---|---|---|---|---|")

    def rounds(a, b, f, name_a=None, name_b=None):
        """a's figure over b's in each round (both ran in it, minutes apart
        at most): the median and the range, or None."""
        ra, rb = c.get(a, {}).get("rounds"), c.get(b, {}).get("rounds")
        if not ra or not rb:
            return None
        pick = (lambda r, n: r[f][n]) if f == "cpu_us_per_req" else (lambda r, n: r[f])
        xs = sorted(pick(x, name_a) / pick(y, name_b) for x, y in zip(ra, rb) if pick(y, name_b))
        return (statistics.median(xs), xs[0], xs[-1]) if xs else None

    def fmt(rr, spread=False):
        if rr is None:
            return "—"
        med, lo, hi = rr
        return f"{med:.2f}× ({lo:.2f}–{hi:.2f})" if spread else f"{med:.2f}×"

    def row(label, a, b, target, met, an, bn):
        L.append(f"| {label} | {fmt(rounds(a, b, 'rps'), True)} | {fmt(rounds(a, b, 'p50_us'))} | "
                 f"{fmt(rounds(a, b, 'p99_us'), True)} | {fmt(rounds(a, b, 'p999_us'))} | "
                 f"{fmt(rounds(a, b, 'cpu_us_per_req', an, bn))} | {target} | {met} |")

    def met_proxy():
        t, p = rounds("gateway_proxy", "nginx", "rps"), rounds("gateway_proxy", "nginx", "p99_us")
        if t is None or p is None:
            return "not measured"
        return "yes" if t[0] >= 1.0 and p[0] <= 1.2 else "no"

    def met_facade():
        t = rounds("gateway_facade_receipt", "nginx_receipt", "rps")
        if t is None:
            return "not measured"
        return "yes" if t[0] >= 0.8 else "no"

    def met_forward(other, floor):
        """Issue 27's proxy targets against `other`: throughput at least
        `floor` times its, p99 no worse."""
        t, p = rounds("gateway_proxy_receipt", other, "rps"), rounds("gateway_proxy_receipt", other, "p99_us")
        if t is None or p is None:
            return "not measured"
        return "yes" if t[0] >= floor and p[0] <= 1.0 else "no"

    row("gateway proxy / nginx", "gateway_proxy", "nginx", "throughput ≥ 1.0×, p99 ≤ 1.2×", met_proxy(), "gateway", "nginx")
    row("gateway proxy / HAProxy", "gateway_proxy", "haproxy", "—", "—", "gateway", "haproxy")
    row("extra: HAProxy / nginx", "haproxy", "nginx", "—", "—", "haproxy", "nginx")
    row("gateway proxy / direct", "gateway_proxy", "direct", "—", "—", "gateway", "simulator")
    row("extra: gateway proxy / bare actix-web + awc forwarder", "gateway_proxy", "bare_forwarder", "—", "—",
        "gateway", "bare-forwarder")
    row("extra: bare actix-web + awc forwarder / nginx", "bare_forwarder", "nginx", "—", "—", "bare-forwarder", "nginx")
    row("extra: gateway proxy / bare hyper forwarder", "gateway_proxy", "hyper_forwarder", "—", "—",
        "gateway", "hyper-forwarder")
    row("extra: bare hyper forwarder / nginx", "hyper_forwarder", "nginx", "—", "—", "hyper-forwarder", "nginx")
    row("gateway façade receipt / nginx receipt", "gateway_facade_receipt", "nginx_receipt", "throughput ≥ 0.8×", met_facade(), "gateway", "nginx")
    for otlp, plain in (("gateway_proxy_otlp", "gateway_proxy"), ("gateway_proxy_otlp_down", "gateway_proxy"),
                        ("gateway_facade_receipt_otlp", "gateway_facade_receipt")):
        if "failed" not in c.get(otlp, {"failed": ""}) and "failed" not in c.get(plain, {"failed": ""}):
            row(f"{otlp} / {plain} (export on / off)", otlp, plain, "reported", "—", "gateway", "gateway")
    row("gateway proxy receipt / HAProxy receipt", "gateway_proxy_receipt", "haproxy_proxy_receipt",
        "throughput ≥ 1.0×, p99 ≤ 1.0×", met_forward("haproxy_proxy_receipt", 1.0), "gateway", "haproxy")
    row("gateway proxy receipt / nginx receipt", "gateway_proxy_receipt", "nginx_proxy_receipt",
        "throughput ≥ 0.9×, p99 ≤ 1.0×", met_forward("nginx_proxy_receipt", 0.9), "gateway", "nginx")
    row("extra: HAProxy receipt / nginx receipt", "haproxy_proxy_receipt", "nginx_proxy_receipt", "—", "—",
        "haproxy", "nginx")
    if res["args"].get("baseline"):
        for k in BASELINE_CASES:
            row(f"{names[k]}: build / baseline", k, k + "_baseline", "reported", "—", "gateway", "gateway-baseline")
    row("extra: gateway façade read / nginx", "gateway_facade_read", "nginx", "—", "—", "gateway", "nginx")
    row("extra: gateway façade read / direct", "gateway_facade_read", "direct", "—", "—", "gateway", "simulator")
    row("extra: façade read, log level warn / info", "gateway_facade_read_warn", "gateway_facade_read", "—", "—", "gateway", "gateway")
    row("nginx / direct", "nginx", "direct", "—", "—", "nginx", "simulator")
    L.append("")
    L += forwarding_table(res, rounds, fmt)

    h = res.get("half_load")
    if h:
        L.append("### Latency added over direct at about half load")
        L.append("")
        L.append(f"wrk has no fixed-rate mode here (wrk2 is not packaged), so each of the {h['connections']} connections "
                 f"waits a random time between requests (`delay()`, exponential with a mean of {h['delay_ms']} ms, so "
                 "arrivals are Poisson-like instead of all connections firing in step): about "
                 f"{h['target_rps']} req/s, half the slowest case's maximum. Closed loop: coordinated omission "
                 "is not corrected.")
        L.append("")
        L.append(f"Taken in {h.get('runs', 1)} rounds of {h.get('seconds', 10)} s per case, like the side-by-side reads; "
                 "each figure is the median of the rounds, and the latency added is taken round by round (the "
                 "case's percentile minus the direct call's in the same round), with the lowest and highest "
                 "round in parentheses. The targets are judged on the medians.")
        L.append("")
        L.append("| case | req/s | p50 ms | p99 ms | p99.9 ms | added p50 ms | added p99 ms | target (≤ 0.3 / ≤ 1 ms) |")
        L.append("|---|---|---|---|---|---|---|---|")
        d = h.get("direct", {})

        def added(r, f):
            if "rounds" not in r or "rounds" not in d:
                return r[f] - d[f], r[f] - d[f], r[f] - d[f]
            xs = sorted(x[f] - y[f] for x, y in zip(r["rounds"], d["rounds"]))
            return statistics.median(xs), xs[0], xs[-1]

        def fmt_added(a):
            med, lo, hi = a
            return f"{ms(med)} ({ms(lo)} – {ms(hi)})" if lo != hi else ms(med)

        for k in ("direct", "nginx", "gateway_proxy", "gateway_facade_read"):
            r = h.get(k, {"failed": "not run"})
            if "failed" in r or "failed" in d:
                L.append(f"| {k} | FAILED: {r.get('failed', d.get('failed', ''))[:120]} | | | | | | |")
                continue
            a50, a99 = added(r, "p50_us"), added(r, "p99_us")
            met = "—" if k in ("direct", "nginx") else ("yes" if a50[0] <= 300 and a99[0] <= 1000 else "no")
            L.append(f"| {k} | {r['rps']:.0f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | {ms(r['p999_us'])} | "
                     f"{fmt_added(a50)} | {fmt_added(a99)} | {met} |")
        L.append("")

    t = res.get("token_storm")
    if t:
        L.append("### Token fetches: 1,000 concurrent callers, 10 cold merchants")
        L.append("")
        L.append(f"{t['token_fetches']} token fetches (target: exactly 10; met: {'yes' if t['token_fetches'] == 10 else 'no'}); "
                 f"per merchant {sorted(set(t['per_merchant'].values()))}; answers by status {t['statuses']} "
                 "(404: the orders do not exist, so every call reached the simulator with a token).")
        L.append("")

    m = res.get("merchants")
    if m:
        L.append("### Merchants: start time and memory")
        L.append("")
        L.append("Start = spawning `serve` to its first 200 on `/healthz` (3 starts). Load: 10-line receipts through "
                 "the façade, spread over every merchant in turn (each merchant fetches its own token); peak RSS "
                 "is the gateway's VmHWM after that run.")
        L.append("")
        builds = [("merchants", "")]
        if res.get("merchants_baseline"):
            builds.append(("merchants_baseline", " (baseline)"))
        L.append("| merchants | start median s (3 starts) | idle RSS MB | peak RSS under load MB | req/s under load | p99 ms | token fetches |")
        L.append("|---|---|---|---|---|---|---|")
        for key, suffix in builds:
            for n, r in res[key].items():
                L.append(f"| {int(n):,}{suffix} | {r['start_median_s']:.3f} ({', '.join(f'{s:.3f}' for s in r['start_s'])}) | "
                         f"{r['idle_rss_kb'] / 1024:.1f} | {r['peak_rss_under_load_kb'] / 1024:.1f} | {r['load']['rps']:.0f} | "
                         f"{ms(r['load']['p99_us'])} | {r['token_fetches']} |")
        L.append("")
        for key, suffix in builds:
            mem = res[key].get("1000", {}).get("peak_rss_under_load_kb")
            start = res[key].get("10000", {}).get("start_median_s")
            mem_text = (f"{mem / 1024:.1f} MB (limit 40 MB): {'met' if mem <= 40 * 1024 else 'missed'}"
                        if mem is not None else "not measured")
            start_text = (f"{start:.3f} s (limit 1 s): {'met' if start <= 1.0 else 'missed'}"
                          if start is not None else "not measured")
            L.append(f"- {'the gateway' if not suffix else 'the baseline'}: peak RSS under load with 1,000 merchants "
                     f"{mem_text}; start with 10,000 merchants {start_text}")
        L.append("")

    s = res.get("sizes")
    if s:
        L.append(f"### Latency against body size (gateway façade, {res['args']['size_connections']} connections)")
        L.append("")
        L.append("| receipt lines | body bytes | req/s | p50 ms | p99 ms | p99.9 ms | gateway CPU µs/req | simulator CPU µs/req | gateway peak RSS MB |")
        L.append("|---|---|---|---|---|---|---|---|---|")
        for n, r in s["receipt_lines"].items():
            L.append(f"| {n} | {r['body_bytes']:,} | {r['rps']:.0f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | "
                     f"{ms(r['p999_us'])} | {r['cpu_us_per_req']['gateway']:.0f} | {r['cpu_us_per_req']['simulator']:.0f} | "
                     f"{r['peak_rss_kb']['gateway'] / 1024:.1f} |")
        L.append("")
        L.append("| image bytes (raw PNG upload) | req/s | p50 ms | p99 ms | p99.9 ms | gateway CPU µs/req | simulator CPU µs/req | gateway peak RSS MB |")
        L.append("|---|---|---|---|---|---|---|---|")
        for n, r in s["image_bytes"].items():
            L.append(f"| {int(n):,} | {r['rps']:.0f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | {ms(r['p999_us'])} | "
                     f"{r['cpu_us_per_req']['gateway']:.0f} | {r['cpu_us_per_req']['simulator']:.0f} | "
                     f"{r['peak_rss_kb']['gateway'] / 1024:.1f} |")
        L.append("")

    sc = res.get("simulator_ceiling")
    if sc:
        L.append("### The simulator's own ceiling (GET order, alone on CPU 0)")
        L.append("")
        L.append("| request log | req/s | p50 ms | p99 ms | CPU µs/req |")
        L.append("|---|---|---|---|---|")
        for k, r in sc.items():
            L.append(f"| {k.replace('request_log_', '')} | {r['rps']:.0f} | {ms(r['p50_us'])} | {ms(r['p99_us'])} | "
                     f"{r['cpu_us_per_req']['simulator']:.1f} |")
        L.append("")
    return "\n".join(L)


def main():
    global BIN, SERVER_CPU, LOAD_CPU, WORKERS
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--seconds", type=int, default=10, help="length of one measured run")
    p.add_argument("--runs", type=int, default=3, help="runs per side-by-side case")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--size-connections", type=int, default=4)
    p.add_argument("--only", default="", help="comma-separated parts: cases,half,tokens,merchants,sizes,sim")
    p.add_argument("--out", default=str(ROOT / "bench" / "results"))
    p.add_argument("--baseline", metavar="PATH",
                   help="another gateway build (the one before a change) measured in the same rounds "
                        "as the build under test: the gateway cases and the merchants part")
    p.add_argument("--spread", action="store_true",
                   help="every server with two workers and nothing pinned (servers and wrk share both CPUs)")
    p.add_argument("--gateway-bin", metavar="PATH",
                   help=f"the gateway build to measure (default {BIN}, which bench/run builds); "
                        "it also serves as the simulator")
    a = p.parse_args()
    WORKERS, SERVER_CPU, LOAD_CPU = placement({"args": vars(a)})
    if a.gateway_bin:
        BIN = Path(a.gateway_bin).resolve()
    if not BIN.exists():
        sys.exit(f"{BIN} is missing: run bench/run (it builds it) or pass --gateway-bin")
    if a.baseline:
        a.baseline = str(Path(a.baseline).resolve())
        if not Path(a.baseline).exists():
            sys.exit(f"--baseline {a.baseline}: no such file")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vog-bench-"))
    run = Run(a, workdir)
    run.results = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine(),
                   "args": vars(a)}
    parts = set(filter(None, a.only.split(","))) or {"cases", "half", "tokens", "merchants", "sizes", "sim"}
    if "sim" in parts:
        run.sim_ceiling()
    if "cases" in parts:
        run.side_by_side()
    if "half" in parts and "cases" in parts:
        run.half_load()
    if "tokens" in parts:
        run.token_storm()
    if "merchants" in parts:
        run.merchants_scale()
    if "sizes" in parts:
        run.sizes()
    run.results["machine"]["loadavg_at_end"] = os.getloadavg()
    (out / "results.json").write_text(json.dumps(run.results, indent=2))
    md = markdown(run.results)
    (out / "results.md").write_text(md + "\n")
    print(md)
    log(f"\nwrote {out}/results.json and results.md (work files in {workdir})")
    failed = [k for k, v in run.results.get("cases", {}).items() if "failed" in v]
    if failed:
        log(f"FAILED cases: {', '.join(failed)}")
        sys.exit(1)
    shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
