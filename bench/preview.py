#!/usr/bin/env python3
"""How long the simulator takes to lay out a large receipt page.

    bench/run --preview                 # builds the release binary first
    python3 bench/preview.py --bin target/release/vipps-order-gateway

Starts `simulate` on a free loopback port, stores receipts of 1, 100 and
500 lines (and 1,000 orders for the index) through its Order Management
API, then fetches each page `--requests` times, one after another, and
reports the latency of a whole answer (request sent to last byte read) as
min, median, p95 and max. Fails when a 500-line page's slowest answer
takes 200 ms or more. Writes bench/results/preview.{json,md}.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MSN = "123456"
LIMIT_MS = 200.0


def start(binary: str) -> tuple[subprocess.Popen, int]:
    proc = subprocess.Popen(
        [binary, "simulate", "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    deadline = time.time() + 30
    while time.time() < deadline:
        line = proc.stdout.readline() if proc.stdout else ""
        if m := re.search(r"simulator listening.*port=(\d+)", line):
            return proc, int(m.group(1))
        if not line and proc.poll() is not None:
            break
    proc.kill()
    sys.exit("the simulator did not start")


def call(port: int, method: str, path: str, body: object | None = None, headers: dict | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", method=method,
        data=json.dumps(body).encode() if body is not None else None,
        headers={"content-type": "application/json", **(headers or {})},
    )
    with urllib.request.urlopen(req, timeout=30) as resp:
        return resp.status, resp.read()


def receipt(lines: int) -> dict:
    """A receipt whose lines add up, at two rates."""
    order_lines = []
    for i in range(lines):
        rate = 2500 if i % 2 == 0 else 1500
        unit, quantity = 1234 + i, 3
        gross = unit * quantity
        tax = (gross * rate * 2 + (10000 + rate)) // (2 * (10000 + rate))
        order_lines.append({
            "name": f"Item {i} with a name of some length", "id": f"sku-{i}",
            "totalAmount": gross, "totalAmountExcludingTax": gross - tax, "totalTaxAmount": tax,
            "taxRate": rate, "unitInfo": {"unitPrice": unit, "quantity": str(quantity), "quantityUnit": "PCS"},
            "productUrl": f"https://shop.example/p/{i}",
        })
    return {"orderLines": order_lines, "bottomLine": {
        "currency": "NOK", "posId": "pos-1", "receiptNumber": "1",
        "barcode": {"format": "CODE 128", "data": "BENCH-0001"}}}


def timed(port: int, path: str, accept: str, n: int) -> tuple[list[float], int]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    times, size = [], 0
    for _ in range(n):
        t0 = time.perf_counter()
        conn.request("GET", path, headers={"Accept": accept})
        resp = conn.getresponse()
        body = resp.read()
        times.append((time.perf_counter() - t0) * 1000)
        if resp.status != 200:
            sys.exit(f"GET {path}: {resp.status}")
        size = len(body)
    conn.close()
    return times, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    parser.add_argument("--bin", default=f"{target}/release/vipps-order-gateway")
    parser.add_argument("--requests", type=int, default=50)
    args = parser.parse_args()

    proc, port = start(args.bin)
    try:
        headers = {"client_id": "demo-client-id", "client_secret": "demo-client-secret",
                   "Ocp-Apim-Subscription-Key": "demo-subscription-key", "Merchant-Serial-Number": MSN}
        token = json.loads(call(port, "POST", "/accesstoken/get", None, headers)[1])["access_token"]
        om = {"Authorization": f"Bearer {token}", "Ocp-Apim-Subscription-Key": "demo-subscription-key",
              "Merchant-Serial-Number": MSN}
        for lines in (1, 100, 500):
            call(port, "POST", f"/order-management/v2/ecom/receipts/lines-{lines}", receipt(lines), om)
        for i in range(997):
            call(port, "POST", f"/order-management/v2/ecom/receipts/order-{i:04}", receipt(3), om)
        cases = [(f"{lines} lines", f"/_simulator/orders/{MSN}/ecom/lines-{lines}", "text/html") for lines in (1, 100, 500)]
        cases.append(("500 lines, JSON twin", f"/_simulator/orders/{MSN}/ecom/lines-500", "application/json"))
        cases.append(("index of 1,000 orders", "/_simulator/orders", "text/html"))
        results = []
        for name, path, accept in cases:
            timed(port, path, accept, 3)  # warm-up
            times, size = timed(port, path, accept, args.requests)
            times.sort()
            row = {"case": name, "bytes": size, "requests": len(times), "min_ms": times[0],
                   "median_ms": statistics.median(times), "p95_ms": times[int(0.95 * (len(times) - 1))],
                   "max_ms": times[-1]}
            results.append(row)
            print(f"{name:24} {size:>9} B  min {row['min_ms']:7.2f}  median {row['median_ms']:7.2f}  "
                  f"p95 {row['p95_ms']:7.2f}  max {row['max_ms']:7.2f} ms")
    finally:
        proc.terminate()
        proc.wait(timeout=10)

    out = ROOT / "bench" / "results"
    out.mkdir(parents=True, exist_ok=True)
    (out / "preview.json").write_text(json.dumps(results, indent=2) + "\n")
    md = ["| page | bytes | min ms | median ms | p95 ms | max ms |", "|---|---:|---:|---:|---:|---:|"]
    md += [f"| {r['case']} | {r['bytes']} | {r['min_ms']:.2f} | {r['median_ms']:.2f} | {r['p95_ms']:.2f} | {r['max_ms']:.2f} |" for r in results]
    (out / "preview.md").write_text("\n".join(md) + "\n")
    worst = next(r for r in results if r["case"] == "500 lines")["max_ms"]
    if worst >= LIMIT_MS:
        print(f"FAIL: a 500-line page took {worst:.1f} ms (limit {LIMIT_MS:.0f} ms)")
        return 1
    print(f"a 500-line page: at most {worst:.1f} ms (limit {LIMIT_MS:.0f} ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
