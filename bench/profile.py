#!/usr/bin/env python3
"""Profiles the gateway's hot path: a proxied read, a façade read and a 10-line façade
receipt under wrk, sampled with `perf record -e cpu-clock` (a software clock:
hardware counters are not available in every VM) on the gateway and the
simulator. Writes the top symbols to bench/results/profile-*.txt.

Run through `bench/run --profile` (it builds the binary first);
`bench/run --profile --instructions` counts user-space instructions per
request with callgrind instead (bench/results/instructions.md).
"""

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402


def top(data, limit=40):
    out = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,symbol",
                          "--stdio", "-g", "none", "--percent-limit", "0.5"],
                         capture_output=True, text=True).stdout
    lines = [l.rstrip() for l in out.splitlines() if "%" in l and not l.startswith("#")]
    return "\n".join(lines[:limit])


DISPATCH = "h1::dispatcher::Dispatcher<T,S,B,X,U> as core::future::future::Future>::poll"


def inclusive(data):
    """callgrind_annotate's inclusive table: [(instructions, symbol)]."""
    out = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=99.9", str(data)],
                         capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        m = bench.re.match(r"\s*([\d,]+) \(\s*[\d.]+%\)\s+\S*?:(.*?) \[", line)
        if m:
            rows.append((int(m.group(1).replace(",", "")), m.group(2)))
    return rows


def instructions(out):
    """User-space instructions per request under callgrind (valgrind counts
    instructions, not time, so the figures repeat on a busy machine): the
    gateway's proxy, façade read and 10-line receipt, and the bare actix-web +
    awc forwarder, each serving 4 wrk connections for 10 s. Per request = the
    inclusive count of actix-http's connection dispatcher (every request's
    work, start-up excluded) ÷ requests answered."""
    wd = Path(bench.tempfile.mkdtemp(prefix="vog-callgrind-"))
    args = type("Args", (), {"connections": 4, "seconds": 10, "runs": 1})()
    lines = ["# User-space instructions per request (valgrind --tool=callgrind, 4 connections, 10 s)",
             "", "| server | case | requests | instructions per request |", "|---|---|---|---|"]
    tops = []
    for server, case in (("gateway", "proxy"), ("bare-forwarder", "proxy"), ("gateway", "read"),
                         ("gateway", "receipt")):
        sim = bench.Sim(wd)
        proc = None
        try:
            vh = sim.vipps_headers(sim.token())
            run = bench.Run(args, wd)
            run.check(sim.port, "POST", "/order-management/v2/ecom/receipts/bench-read", vh,
                      run.vipps_receipt(sim, bench.facade_receipt(10)))
            data = wd / f"callgrind-{server}-{case}.out"
            vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={data}"]
            if server == "gateway":
                config, port = bench.gateway_config(wd, sim.port, (bench.DEMO,), "callgrind")
                env = {"BENCH_CLIENT_SECRET": bench.DEMO["client_secret"],
                       "BENCH_SUBSCRIPTION_KEY": bench.DEMO["subscription_key"]}
                proc = bench.Proc(f"callgrind-{case}", [*vg, str(bench.BIN), "serve", "--config", str(config)],
                                  wd, env=env)
            else:
                port = bench.free_port()
                headers = [f"{k}={v}" for k, v in vh.items()]
                proc = bench.Proc("callgrind-bare", [*vg, str(bench.BARE), str(port),
                                                     f"http://127.0.0.1:{sim.port}", *headers], wd)
            bench.wait_http(port, "/healthz", timeout=120, proc=proc.popen)
            if case == "proxy":
                hdr = {"Merchant-Serial-Number": bench.DEMO["msn"]} if server == "gateway" else {}
                script = bench.wrk_script(wd, f"cg-{server}", "GET", "/vipps/order-management/v2/ecom/bench-read", hdr)
            elif case == "read":
                script = bench.wrk_script(wd, "cg-read", "GET", "/v1/merchants/123456/orders/bench-read", {})
            else:
                body = run.write_body("cg-receipt-10.json", bench.facade_receipt(10))
                script = bench.wrk_script(wd, "cg-receipt", "POST", "/v1/merchants/123456/orders/{id}/receipt",
                                          {"Content-Type": "application/json"}, body)
            r = bench.run_wrk(port, script, args.seconds, args.connections)
            if r["errors"]:
                raise bench.BenchError(f"{server} {case}: {r['errors']} errors")
            proc.popen.send_signal(15)
            proc.popen.wait(timeout=120)
            rows = inclusive(data)
            total = next(n for n, sym in rows if DISPATCH in sym)
            lines.append(f"| {server} | {case} | {r['requests']} | {total // r['requests']:,} |")
            if server == "gateway":
                own = [(n, sym) for n, sym in rows if "vipps_order_gateway::" in sym][:15]
                tops.append(f"\n# gateway {case}: the gateway's own functions, inclusive instructions per request\n"
                            + "\n".join(f"{n // r['requests']:>9,}  {sym}" for n, sym in own))
        finally:
            if proc and proc.popen.poll() is None:
                proc.popen.kill()
            sim.stop()
    text = "\n".join(lines) + "\n" + "\n".join(tops) + "\n"
    (out / "instructions.md").write_text(text)
    print(text)


def main():
    if "--instructions" in sys.argv:
        sys.argv.remove("--instructions")
        out = Path(sys.argv[1] if len(sys.argv) > 1 else bench.ROOT / "bench" / "results")
        out.mkdir(parents=True, exist_ok=True)
        instructions(out)
        return
    out = Path(sys.argv[1] if len(sys.argv) > 1 else bench.ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    wd = Path(bench.tempfile.mkdtemp(prefix="vog-profile-"))
    args = type("Args", (), {"connections": 32, "seconds": 8, "runs": 1})()
    for case in ("proxy", "read", "receipt"):
        sim = bench.Sim(wd)
        gw = None
        try:
            vh = sim.vipps_headers(sim.token())
            run = bench.Run(args, wd)
            run.check(sim.port, "POST", "/order-management/v2/ecom/receipts/bench-read", vh,
                      run.vipps_receipt(sim, bench.facade_receipt(10)))
            gw, port, _ = bench.start_gateway(wd, sim.port)
            if case == "proxy":
                script = bench.wrk_script(wd, "profile-proxy", "GET", "/vipps/order-management/v2/ecom/bench-read",
                                          {"Merchant-Serial-Number": bench.DEMO["msn"]})
            elif case == "read":
                script = bench.wrk_script(wd, "profile-read", "GET", "/v1/merchants/123456/orders/bench-read", {})
            else:
                body = run.write_body("facade-receipt-10.json", bench.facade_receipt(10))
                script = bench.wrk_script(wd, "profile-receipt", "POST", "/v1/merchants/123456/orders/{id}/receipt",
                                          {"Content-Type": "application/json"}, body)
            bench.run_wrk(port, script, 2, args.connections)
            recorders = []
            for name, proc in (("gateway", gw), ("simulator", sim.proc)):
                data = wd / f"{name}-{case}.data"
                recorders.append((name, data, subprocess.Popen(
                    ["perf", "record", "-e", "cpu-clock", "-F", "2000", "-g", "-o", str(data),
                     "-p", str(proc.popen.pid)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)))
            time.sleep(0.5)
            r = bench.run_wrk(port, script, args.seconds, args.connections, servers=[gw, sim.proc])
            for _, _, p in recorders:
                p.send_signal(2)
                p.wait()
            head = (f"# {case}: {r['rps']:.0f} req/s, CPU µs/req "
                    + ", ".join(f"{k} {v:.1f}" for k, v in r["cpu_us_per_req"].items()))
            for name, data, _ in recorders:
                text = head + f"\n# top symbols of the {name} (perf record -e cpu-clock, self time)\n" + top(data)
                (out / f"profile-{case}-{name}.txt").write_text(text + "\n")
                print(text + "\n")
        finally:
            if gw:
                gw.stop()
            sim.stop()


if __name__ == "__main__":
    main()
