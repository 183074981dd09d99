#!/usr/bin/env python3
"""Profiles the gateway's hot path: a proxied read, a façade read and a 10-line façade
receipt under wrk, sampled with `perf record -e cpu-clock` (a software clock:
hardware counters are not available in every VM) on the gateway and the
simulator. Writes the top symbols to bench/results/profile-*.txt.

Run through `bench/run --profile` (it builds the binary first).
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


def main():
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
