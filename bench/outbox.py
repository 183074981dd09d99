#!/usr/bin/env python3
"""The outbox's cost and speed, against the simulator. Not part of CI.

1. Drain rate: a backlog of 10,000 pending receipts is written straight into
   the store (what 10,000 answers `202` leave behind while Vipps is down),
   then one or two gateways start on it and deliver it; the figure is
   receipts delivered per second, from the gateways listening to the last
   delivery. For SQLite (one replica) and PostgreSQL (one and two replicas).
2. The 202 path beside the synchronous one, on each store: wrk posts
   10-line receipts to one gateway (on SQLite, then on PostgreSQL), with and
   without `Prefer: respond-async`; throughput, p50 and p99 of each, and the
   ratio 202 / 201, the worker delivering meanwhile; and the simulator's CPU
   per request and resident size, which must stay level for the ratio to
   hold.
3. The 202 path while Vipps is down, on SQLite: OUTAGE_BACKLOG receipts
   pending already (the merchant's backlog after a while of an outage), the
   gateway's Vipps a closed port; wrk posts 10-line receipts with
   `Prefer: respond-async` (3 runs of 5 s), and the backlog grows.
4. Merchants sharing the worker, on SQLite: one merchant's backlog of
   FAIR_BACKLOG receipts, delivered at its rate (`resilience.rate_per_second`
   200, the default), and another merchant's one receipt that fell due
   after all of them; the seconds from the gateway's start until that
   receipt is delivered, and how many of the backlog were delivered by then.

Run through `bench/run --outbox [OUT_DIR]` (it builds the binary and
installs wrk); PostgreSQL comes from Debian's packages (installed when
missing) and runs as a throwaway cluster on a free loopback port. Writes
OUT_DIR/outbox.md (bench/results by default).
"""

import csv
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

BACKLOG = 10_000
OUTAGE_MAX_PENDING = 1_000_000
OUTAGE_BACKLOG = 20_000
FAIR_BACKLOG = 2_000
FAIR_RATE = 200
SECOND = {"msn": "654321", "client_id": "second-client-id",
          "client_secret": bench.DEMO["client_secret"], "subscription_key": bench.DEMO["subscription_key"]}


def pg_bin():
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    if not found:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
                       check=True, env={"DEBIAN_FRONTEND": "noninteractive", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"})
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return found[-1].parent


class Postgres:
    """A throwaway cluster, as scripts/test starts one (as Debian's postgres
    user when run as root)."""

    def __init__(self, workdir):
        self.bin = pg_bin()
        # Its own directory under /tmp: the postgres user cannot enter workdir.
        self.dir = Path(tempfile.mkdtemp(prefix="vog-bench-pg-"))
        self.port = bench.free_port()
        as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if as_pg:
            subprocess.run(["chown", "postgres", str(self.dir)], check=True)
        self.as_pg = as_pg
        subprocess.run([*as_pg, str(self.bin / "initdb"), "-D", str(self.dir / "data"), "-A", "trust", "-U", "vog"],
                       check=True, capture_output=True)
        subprocess.run([*as_pg, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-l", str(self.dir / "log"),
                        "-w", "-o", f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1", "start"],
                       check=True, capture_output=True)

    def url(self, db):
        return f"postgres://vog@127.0.0.1:{self.port}/{db}"

    def psql(self, db, sql):
        out = subprocess.run(["psql", "-X", "-q", "-t", "-A", "-v", "ON_ERROR_STOP=1", self.url(db), "-c", sql],
                             check=True, capture_output=True, text=True)
        return out.stdout.strip()

    def stop(self):
        subprocess.run([*self.as_pg, str(self.bin / "pg_ctl"), "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop"],
                       capture_output=True)


def outbox_config(workdir, sim_port, name, url, extra=""):
    path, port = bench.gateway_config(workdir, sim_port, (bench.DEMO,), name)
    path.write_text(path.read_text() + f'[outbox]\nurl = "{url}"\nbackoff_base = "100ms"\nbackoff_max = "1s"\n{extra}')
    return path, port


def start(workdir, sim_port, name, url, extra=""):
    """A gateway on the outbox store `url`, once listening and its store open
    (migrated); `extra`: more `[outbox]` settings."""
    path, port = outbox_config(workdir, sim_port, name, url, extra)
    env = {"BENCH_CLIENT_SECRET": bench.DEMO["client_secret"], "BENCH_SUBSCRIPTION_KEY": bench.DEMO["subscription_key"]}
    proc = bench.Proc(name, [str(bench.BIN), "serve", "--config", str(path)], workdir, env=env, cpu="0,1")
    bench.wait_http(port, "/healthz", proc=proc.popen)
    logfile = workdir / f"{name}.log"
    deadline = time.monotonic() + 30
    while "outbox store open" not in logfile.read_text(errors="replace"):
        if time.monotonic() > deadline:
            raise bench.BenchError(f"{name}: the outbox store did not open (see {logfile})")
        time.sleep(0.05)
    return proc, port


def sample_payload(workdir, sim):
    """The payload one real 202 stores: a gateway on a scratch SQLite file
    accepts one receipt, and its row is read back."""
    # A file of its own each time: on one shared file, a sample delivered
    # by an earlier call makes this one's answer a synchronous 201.
    db = workdir / f"sample-{uuid.uuid4().hex}.db"
    gw, port = start(workdir, sim.port, "gateway-sample", f"sqlite://{db}")
    try:
        st, body = bench.http("POST", port, f"/v1/merchants/{bench.DEMO['msn']}/orders/sample/receipt",
                              bench.facade_receipt(10), {"Prefer": "respond-async"})
        if st != 202:
            raise bench.BenchError(f"sample receipt: {st} {body}")
    finally:
        gw.stop()
    with sqlite3.connect(db) as c:
        payload, fingerprint = c.execute("SELECT payload, fingerprint FROM deliveries").fetchone()
    return payload, fingerprint


def rows(prefix, payload, fingerprint, now, n=BACKLOG):
    """The backlog: one pending receipt for each of `n` orders."""
    return [(str(uuid.uuid4()), bench.DEMO["msn"], "receipt", "ecom", f"{prefix}-{i}", fingerprint, payload,
             "pending", 0, now, now, now) for i in range(n)]


INSERT = ("INSERT INTO deliveries (id, msn, kind, payment_type, order_id, fingerprint, payload, state, attempts, "
          "created_at, updated_at, next_attempt_at) VALUES ({})")


def fill_sqlite(db, prefix, payload, fingerprint, n=BACKLOG):
    with sqlite3.connect(db) as c:
        c.executemany(INSERT.format(", ".join("?" * 12)), rows(prefix, payload, fingerprint, int(time.time() * 1000), n))


def fill_postgres(pg, db, prefix, payload, fingerprint, workdir):
    backlog = workdir / f"{prefix}.csv"
    with backlog.open("w", newline="") as f:
        csv.writer(f).writerows(rows(prefix, payload, fingerprint, int(time.time() * 1000)))
    cols = "id, msn, kind, payment_type, order_id, fingerprint, payload, state, attempts, created_at, updated_at, next_attempt_at"
    subprocess.run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", pg.url(db), "-c",
                    f"\\copy deliveries ({cols}) FROM '{backlog}' WITH (FORMAT csv)"], check=True)


def delivered_sqlite(db):
    with sqlite3.connect(db, timeout=30) as c:
        return c.execute("SELECT count(*) FROM deliveries WHERE state = 'delivered'").fetchone()[0]


def drain(workdir, sim, store, replicas, pg=None):
    """Seconds for `replicas` gateways to deliver the backlog, and the rate."""
    name = f"{store}-{replicas}"
    payload, fingerprint = sample_payload(workdir, sim)
    if store == "sqlite":
        db = workdir / f"drain-{name}.db"
        url = f"sqlite://{db}"
        # The gateway creates the table; a first start and stop makes it.
        gw, _ = start(workdir, sim.port, f"gateway-{name}-migrate", url)
        gw.stop()
        fill_sqlite(db, f"drain-{name}", payload, fingerprint)
        count = lambda: delivered_sqlite(db)  # noqa: E731
    else:
        db = f"drain_{replicas}"
        pg.psql("postgres", f"CREATE DATABASE {db}")
        url = pg.url(db)
        gw, _ = start(workdir, sim.port, f"gateway-{name}-migrate", url)
        gw.stop()
        fill_postgres(pg, db, f"drain-{name}", payload, fingerprint, workdir)
        count = lambda: int(pg.psql(db, "SELECT count(*) FROM deliveries WHERE state = 'delivered'"))  # noqa: E731
    bench.log(f"outbox drain {name}: {BACKLOG} pending")
    t0 = time.monotonic()
    gws = [start(workdir, sim.port, f"gateway-{name}-{i}", url)[0] for i in range(replicas)]
    try:
        while (n := count()) < BACKLOG:
            if time.monotonic() - t0 > 600:
                raise bench.BenchError(f"drain {name}: {n} of {BACKLOG} after 10 minutes")
            time.sleep(0.2)
        elapsed = time.monotonic() - t0
    finally:
        for g in gws:
            g.stop()
    stored = sim.counters()
    bench.log(f"  {name}: {BACKLOG} in {elapsed:.1f} s, {BACKLOG / elapsed:.0f}/s")
    return {"store": store, "replicas": replicas, "seconds": round(elapsed, 2), "per_second": round(BACKLOG / elapsed),
            "simulator_calls": stored.get("calls", {}).get("receipt")}


def commit_groups(port, store):
    """The gateway's commits of asynchronous requests so far, and the
    requests they answered (gateway_outbox_commit_group_size; zeros from a
    build without it)."""
    import urllib.request
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
    found = {}
    for line in text.splitlines():
        for part in ("count", "sum"):
            if line.startswith(f'gateway_outbox_commit_group_size_{part}{{store="{store}"}}'):
                found[part] = float(line.rsplit(" ", 1)[1])
    return found.get("count", 0.0), found.get("sum", 0.0)


def written(server):
    """Bytes `server`'s process has caused to be written to storage so far
    (`write_bytes` of /proc/PID/io): its database files and its log (stdout
    is a file here; the synchronous path's figure is the log alone)."""
    io = dict(line.split(": ") for line in Path(f"/proc/{server.popen.pid}/io").read_text().splitlines())
    return int(io["write_bytes"])


def paths(workdir, sim, seconds, store, url):
    """wrk on the 202 path and the synchronous one, one gateway on `store`
    at `url`."""
    bench.log(f"outbox paths on {store}")
    gw, port = start(workdir, sim.port, f"gateway-paths-{store}", url)
    out = {}
    try:
        body = workdir / "receipt-10.json"
        body.write_text(json.dumps(bench.facade_receipt(10)))
        for label, headers in (("synchronous", {}), ("async-202", {"Prefer": "respond-async"})):
            script = bench.wrk_script(workdir, f"outbox-{label}", "POST",
                                      f"/v1/merchants/{bench.DEMO['msn']}/orders/{{id}}/receipt",
                                      {"Content-Type": "application/json", **headers}, body)
            bench.run_wrk(port, script, 2, 32, servers=[gw])
            before, bytes_before = commit_groups(port, store), written(gw)
            # The simulator's cost too: every 201 and every delivery waits
            # for it, so a simulator that slowed during the sitting would
            # move the ratio (as one that kept every receipt once did).
            runs = [bench.run_wrk(port, script, seconds, 32, servers=[gw, sim.proc]) for _ in range(3)]
            after, bytes_after = commit_groups(port, store), written(gw)
            r = bench.best_of(runs)
            if r["errors"]:
                raise bench.BenchError(f"{label}: {r['errors']} errors")
            commits, answered = after[0] - before[0], after[1] - before[1]
            out[label] = {"rps": round(r["rps"]), "p50_us": r["p50_us"], "p99_us": r["p99_us"],
                          "runs_rps": [round(x["rps"]) for x in runs],
                          "gateway_cpu_us_per_req": round(r["cpu_us_per_req"][gw.name]),
                          "simulator_cpu_us_per_req": [round(x["cpu_us_per_req"][sim.proc.name]) for x in runs],
                          "simulator_rss_mb": round((sim.proc.status_kb("VmRSS") or 0) / 1024),
                          "commits": round(commits), "mean_group": round(answered / commits, 1) if commits else None,
                          "written_bytes_per_req": round((bytes_after - bytes_before) / sum(x["requests"] for x in runs))}
            bench.log(f"  {label}: {r['rps']:.0f} req/s p99 {r['p99_us']} µs")
    finally:
        gw.stop()
    return out


def fairness(workdir, sim):
    """Seconds until a second merchant's receipt, due after a first
    merchant's backlog of FAIR_BACKLOG delivered at FAIR_RATE a second, is
    delivered; and the backlog's receipts delivered by then."""
    bench.log(f"outbox fairness: {FAIR_BACKLOG} pending of one merchant at {FAIR_RATE}/s, one of another after them")
    sim.add_merchants([SECOND])
    payload, fingerprint = sample_payload(workdir, sim)
    db = workdir / f"fair-{uuid.uuid4().hex}.db"
    gw, _ = start(workdir, sim.port, f"gateway-fair-migrate-{db.stem}", f"sqlite://{db}")
    gw.stop()
    fill_sqlite(db, "fair", payload, fingerprint, FAIR_BACKLOG)
    second = rows("fair-second", payload, fingerprint, int(time.time() * 1000) + 1, 1)
    second[0] = (second[0][0], SECOND["msn"]) + second[0][2:]
    with sqlite3.connect(db) as c:
        c.executemany(INSERT.format(", ".join("?" * 12)), second)
    # Both merchants, the first's deliveries paced at its rate.
    path, port = bench.gateway_config(workdir, sim.port, (bench.DEMO, SECOND), f"gateway-fair-{db.stem}")
    text = path.read_text().replace("rate_per_second = 0", f"rate_per_second = {FAIR_RATE}")
    path.write_text(text + f'[outbox]\nurl = "sqlite://{db}"\n')
    env = {"BENCH_CLIENT_SECRET": bench.DEMO["client_secret"], "BENCH_SUBSCRIPTION_KEY": bench.DEMO["subscription_key"]}
    t0 = time.monotonic()
    gw = bench.Proc(f"gateway-fair-{db.stem}", [str(bench.BIN), "serve", "--config", str(path)], workdir, env=env, cpu="0,1")
    try:
        while True:
            with sqlite3.connect(db, timeout=30) as c:
                done = dict(c.execute("SELECT msn, count(*) FROM deliveries WHERE state = 'delivered' GROUP BY msn"))
            if done.get(SECOND["msn"]):
                break
            if time.monotonic() - t0 > 300:
                raise bench.BenchError("fairness: the second merchant's receipt not delivered within 5 minutes")
            time.sleep(0.05)
        elapsed = time.monotonic() - t0
    finally:
        gw.stop()
    first = done.get(bench.DEMO["msn"], 0)
    bench.log(f"  fairness: delivered after {elapsed:.2f} s, {first} of the backlog delivered by then")
    return {"backlog": FAIR_BACKLOG, "rate": FAIR_RATE, "seconds": round(elapsed, 2), "backlog_delivered": first}


def outage(workdir, sim, seconds=5):
    """wrk on the 202 path of a gateway on SQLite whose Vipps is down (a
    closed port), OUTAGE_BACKLOG receipts pending already: the merchant's
    backlog grows by every request."""
    bench.log(f"outbox 202 while Vipps is down, {OUTAGE_BACKLOG} pending")
    payload, fingerprint = sample_payload(workdir, sim)
    db = workdir / f"outage-{uuid.uuid4().hex}.db"
    down = bench.free_port()
    # Names of their own: `start` looks for the store's opening in the log.
    gw, _ = start(workdir, down, f"gateway-outage-migrate-{db.stem}", f"sqlite://{db}")
    gw.stop()
    fill_sqlite(db, "outage", payload, fingerprint, OUTAGE_BACKLOG)
    # The merchant's bound out of the way: the case measures the 202, and
    # its runs store more than the default 100,000.
    gw, port = start(workdir, down, f"gateway-{db.stem}", f"sqlite://{db}",
                     f"max_pending_per_merchant = {OUTAGE_MAX_PENDING}\n")
    try:
        body = workdir / "receipt-10.json"
        body.write_text(json.dumps(bench.facade_receipt(10)))
        script = bench.wrk_script(workdir, "outbox-outage", "POST",
                                  f"/v1/merchants/{bench.DEMO['msn']}/orders/{{id}}/receipt",
                                  {"Content-Type": "application/json", "Prefer": "respond-async"}, body)
        runs = [bench.run_wrk(port, script, seconds, 32, servers=[gw]) for _ in range(3)]
    finally:
        gw.stop()
    r = bench.best_of(runs)
    # Every answer a 202: the backlog stays below outbox.max_pending_per_merchant.
    if any(x["errors"] for x in runs):
        raise bench.BenchError(f"outage: errors in runs {[x['errors'] for x in runs]}")
    with sqlite3.connect(db) as c:
        pending = c.execute("SELECT count(*) FROM deliveries WHERE state = 'pending'").fetchone()[0]
    bench.log(f"  outage: {r['rps']:.0f} req/s p99 {r['p99_us']} µs, {pending} pending after")
    return {"rps": round(r["rps"]), "p50_us": r["p50_us"], "p99_us": r["p99_us"],
            "runs_rps": [round(x["rps"]) for x in runs], "gateway_cpu_us_per_req": round(r["cpu_us_per_req"][gw.name]),
            "pending_before": OUTAGE_BACKLOG, "pending_after": pending}


def main():
    out = Path(sys.argv[1] if len(sys.argv) > 1 else bench.ROOT / "bench" / "results")
    out.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="vog-bench-outbox-"))
    sim = bench.Sim(workdir, workers=2)
    pg = Postgres(workdir)
    try:
        drains = [drain(workdir, sim, "sqlite", 1), drain(workdir, sim, "postgres", 1, pg),
                  drain(workdir, sim, "postgres", 2, pg)]
        pg.psql("postgres", "CREATE DATABASE paths")
        path_figures = {"sqlite": paths(workdir, sim, 10, "sqlite", f"sqlite://{workdir / 'paths.db'}"),
                        "postgres": paths(workdir, sim, 10, "postgres", pg.url("paths"))}
        down = outage(workdir, sim)
        fair = fairness(workdir, sim)
    finally:
        pg.stop()
        sim.stop()
    lines = [f"# The outbox: drain rate and the 202 path ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
             f"{bench.machine()['nproc']} CPUs, {bench.machine()['git']})", "",
             f"Drain: {BACKLOG:,} pending 10-line receipts in the store, delivered to the simulator by the gateways "
             "(from start to the last delivery).", "",
             "| store | replicas | seconds | receipts/s |", "|---|---|---|---|"]
    lines += [f"| {d['store']} | {d['replicas']} | {d['seconds']} | {d['per_second']:,} |" for d in drains]
    lines += ["", "The 202 path beside the synchronous one (wrk, 32 connections, 10-line receipts, the median of 3 runs "
              "of 10 s; one gateway per store, its worker delivering meanwhile):", "",
              "| store | path | req/s | p50 ms | p99 ms | gateway CPU µs/req | mean commit group | KB written/req | runs req/s "
              "| simulator CPU µs/req (runs) | simulator MB resident after |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for store, figures in path_figures.items():
        for label, r in (("synchronous 201", figures["synchronous"]), ("Prefer: respond-async, 202", figures["async-202"])):
            group = "—" if r["mean_group"] is None else r["mean_group"]
            lines.append(f"| {store} | {label} | {r['rps']:,} | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} "
                         f"| {r['gateway_cpu_us_per_req']} | {group} | {r['written_bytes_per_req'] / 1000:.1f} | {r['runs_rps']} "
                         f"| {r['simulator_cpu_us_per_req']} | {r['simulator_rss_mb']} |")
    lines.append("")
    for store, figures in path_figures.items():
        s, a = figures["synchronous"], figures["async-202"]
        figures["ratio_202_201"] = round(a["rps"] / s["rps"], 2)
        lines.append(f"- {store}: 202 / 201 throughput {a['rps'] / s['rps']:.2f}×, p99 {a['p99_us'] / s['p99_us']:.2f}×")
    lines += ["", f"The 202 path while Vipps is down, on SQLite ({OUTAGE_BACKLOG:,} receipts pending at the start; "
              "wrk, 32 connections, the median of 3 runs of 5 s):", "",
              "| req/s | p50 ms | p99 ms | gateway CPU µs/req | pending after | runs req/s |", "|---|---|---|---|---|---|",
              f"| {down['rps']:,} | {down['p50_us'] / 1000:.2f} | {down['p99_us'] / 1000:.2f} "
              f"| {down['gateway_cpu_us_per_req']} | {down['pending_after']:,} | {down['runs_rps']} |"]
    lines += ["", f"Merchants sharing the worker, on SQLite: {FAIR_BACKLOG:,} receipts of one merchant pending, "
              f"delivered at its rate ({FAIR_RATE}/s), and one of another merchant due after them:", "",
              "| seconds until the other merchant's receipt is delivered | of the backlog delivered by then |",
              "|---|---|", f"| {fair['seconds']} | {fair['backlog_delivered']:,} |"]
    text = "\n".join(lines) + "\n"
    (out / "outbox.md").write_text(text)
    (out / "outbox.json").write_text(json.dumps({"drains": drains, "paths": path_figures, "outage": down,
                                                 "fairness": fair}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
