#!/usr/bin/env python3
"""Profiles the gateway's hot path: a proxied read, a façade read and a 10-line façade
receipt under wrk, sampled with `perf record -e cpu-clock` (a software clock:
hardware counters are not available in every VM) on the gateway and the
simulator. Writes the top symbols to bench/results/profile-*.txt.

Run through `bench/run --profile` (it builds the binary first);
`bench/run --profile --instructions [OUT_DIR]` counts user-space
instructions per request with callgrind instead (OUT_DIR/instructions.md,
bench/results by default); `--bin PATH` measures another build of the
gateway, to compare two commits; `--only gateway:proxy,...` runs some of the
instruction cases.
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
    # perf pads each row to the widest symbol and ends it with empty columns.
    lines = [bench.re.sub(r"(\s+-)*\s*$", "", l) for l in out.splitlines()
             if "%" in l and not l.startswith("#")]
    return "\n".join(lines[:limit])


def seeded_simulator(wd, args):
    """A simulator holding the order the read cases fetch, and a bench.Run."""
    sim = bench.Sim(wd)
    run = bench.Run(args, wd)
    run.check(sim.port, "POST", "/order-management/v2/ecom/receipts/bench-read",
              sim.vipps_headers(sim.token()), run.vipps_receipt(sim, bench.facade_receipt(10)))
    return sim, run


def case_script(wd, run, case, name, proxy_headers):
    """The wrk script of a profiled case: proxy, read or receipt."""
    if case == "proxy":
        return bench.wrk_script(wd, name, "GET", "/vipps/order-management/v2/ecom/bench-read", proxy_headers)
    if case == "read":
        return bench.wrk_script(wd, name, "GET", "/v1/merchants/123456/orders/bench-read", {})
    body = run.write_body(f"{name}-receipt-10.json", bench.facade_receipt(10))
    return bench.wrk_script(wd, name, "POST", "/v1/merchants/123456/orders/{id}/receipt",
                            {"Content-Type": "application/json"}, body)


DISPATCH = "h1::dispatcher::Dispatcher<T,S,B,X,U> as core::future::future::Future>::poll"
LOCAL_SET = "tokio::task::local::LocalSet::tick"


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


def callgrind_control(command, pid):
    subprocess.run(["callgrind_control", command, str(pid)], check=True, capture_output=True)


def program_total(data):
    """Every thread's instructions in a callgrind dump."""
    for line in Path(data).read_text().splitlines():
        if line.startswith("totals:") or line.startswith("summary:"):
            return int(line.split()[1])
    raise bench.BenchError(f"no totals in {data}")


ALL_CASES = (("gateway", "proxy"), ("bare-forwarder", "proxy"), ("hyper-forwarder", "proxy"),
             ("gateway", "read"), ("gateway", "receipt"))


def instructions(out, cases=ALL_CASES):
    """User-space instructions per request under callgrind (valgrind counts
    instructions, not time, so the figures repeat on a busy machine): the
    gateway's proxy, façade read and 10-line receipt, and the bare actix-web +
    awc and hyper forwarders, each serving 4 wrk connections for 10 s after a
    1 s warm-up (tokens fetched, connections open). Counters are zeroed after
    the warm-up and dumped before the stop (callgrind_control), so start-up
    and shutdown are left out. Two figures per request:
    - whole process: every thread's instructions ÷ requests answered (the
      upstream connection tasks, the log writer thread and the timers
      included);
    - dispatcher: the inclusive count of actix-http's connection dispatcher
      ÷ requests (for the hyper forwarder the tokio LocalSet that runs every
      task), the figure earlier reports give."""
    wd = Path(bench.tempfile.mkdtemp(prefix="vog-callgrind-"))
    args = type("Args", (), {"connections": 4, "seconds": 10, "runs": 1})()
    lines = ["# User-space instructions per request (valgrind --tool=callgrind, 4 connections, 10 s after a 1 s warm-up)",
             "", "| server | case | requests | whole process per request | dispatcher per request |",
             "|---|---|---|---|---|"]
    tops = []
    for server, case in cases:
        sim, run = seeded_simulator(wd, args)
        proc = None
        try:
            vh = sim.vipps_headers(sim.token())
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
                binary = bench.BARE if server == "bare-forwarder" else bench.HYPER
                proc = bench.Proc(f"callgrind-{server}", [*vg, str(binary), str(port),
                                                         f"http://127.0.0.1:{sim.port}", *headers], wd)
            bench.wait_http(port, "/healthz", timeout=120, proc=proc.popen)
            hdr = {"Merchant-Serial-Number": bench.DEMO["msn"]} if server == "gateway" else {}
            script = case_script(wd, run, case, f"cg-{server}-{case}", hdr)
            bench.run_wrk(port, script, 1, args.connections)
            callgrind_control("--zero", proc.popen.pid)
            r = bench.run_wrk(port, script, args.seconds, args.connections)
            callgrind_control("--dump", proc.popen.pid)
            if r["errors"]:
                raise bench.BenchError(f"{server} {case}: {r['errors']} errors")
            proc.popen.send_signal(15)
            proc.popen.wait(timeout=120)
            data = data.with_name(data.name + ".1")
            rows = inclusive(data)
            anchor = LOCAL_SET if server == "hyper-forwarder" else DISPATCH
            total = next(n for n, sym in rows if anchor in sym)
            whole = program_total(data)
            lines.append(f"| {server} | {case} | {r['requests']} | {whole // r['requests']:,} "
                         f"| {total // r['requests']:,} |")
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
    print(f"callgrind data (callgrind_annotate --inclusive=yes FILE): {wd}")


def main():
    if any(a in ("-h", "--help") for a in sys.argv[1:]):
        print(__doc__)
        return
    if "--bin" in sys.argv:
        # Another build of the gateway, to compare instruction counts.
        i = sys.argv.index("--bin")
        bench.BIN = Path(sys.argv[i + 1]).resolve()
        del sys.argv[i:i + 2]
    cases = ALL_CASES
    if "--only" in sys.argv:
        # Some of the instruction cases, as server:case (gateway:proxy,hyper-forwarder:proxy).
        i = sys.argv.index("--only")
        cases = tuple(tuple(c.split(":", 1)) for c in sys.argv[i + 1].split(","))
        if any(c not in ALL_CASES for c in cases):
            sys.exit(f"--only takes some of {','.join(':'.join(c) for c in ALL_CASES)}")
        del sys.argv[i:i + 2]
    unknown = [a for a in sys.argv[1:] if a.startswith("-") and a != "--instructions"]
    if unknown:
        sys.exit(f"unknown option {unknown[0]}; see --help")
    if "--instructions" in sys.argv:
        sys.argv.remove("--instructions")
        out = Path(sys.argv[1] if len(sys.argv) > 1 else bench.ROOT / "bench" / "results")
        out.mkdir(parents=True, exist_ok=True)
        instructions(out, cases)
        return
    out = Path(sys.argv[1] if len(sys.argv) > 1 else bench.ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    wd = Path(bench.tempfile.mkdtemp(prefix="vog-profile-"))
    args = type("Args", (), {"connections": 32, "seconds": 8, "runs": 1})()
    for case in ("proxy", "read", "receipt"):
        sim, run = seeded_simulator(wd, args)
        gw = None
        try:
            gw, port, _ = bench.start_gateway(wd, sim.port)
            script = case_script(wd, run, case, f"profile-{case}", {"Merchant-Serial-Number": bench.DEMO["msn"]})
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
