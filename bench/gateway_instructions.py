#!/usr/bin/env python3
"""Instructions per proxied request in the brix gateway's worker thread, counted by callgrind:
this build against another (BRIX_BASELINE_BIN, e.g. the commit before a change) in one run.

Wall-clock throughput on this shared 2-core machine moves by ±20 % between repeats
(bench/gateway_proxy.py reports that spread), too much to show that a change costs "nothing";
callgrind counts instructions, which repeat exactly for the same binary and inputs. Each binary
runs `brix gateway --workers 1` under `valgrind --tool=callgrind --separate-threads=yes` in
front of the benchmark's fixed nginx upstream (bench/peers/nginx-upstream.conf), health checks
and scrapes set to an hour so the control thread stays quiet; one keep-alive client sends N1
then, in a second run, N2 requests of the ~1 KB chat body. Per request = (worker(N2) -
worker(N1)) / (N2 - N1), which removes start-up and shutdown. The worker is the thread whose
count grows the most.

Command: BRIX_BASELINE_BIN=/path/to/old/brix python3 bench/gateway_instructions.py
(N1=500, N2=2500; writes bench/results/gateway_instructions.md). A benchmark, not a test.
"""
import glob
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import common as c  # noqa: E402
import gw_common as g  # noqa: E402

N1 = int(os.environ.get("N1", "500"))
N2 = int(os.environ.get("N2", "2500"))
BODY = json.dumps({"model": "llama-3-8b", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "x" * 900}]}).encode()
HDRS = {"content-type": "application/json", "user": "bench"}


def post(conn):
    conn.request("POST", "/v1/chat/completions", body=BODY, headers=HDRS)
    r = conn.getresponse()
    r.read()
    return r.status


def run(binary, n, up_port, out):
    port = c.free_port()
    for f in glob.glob(out + ".*"):
        os.unlink(f)
    p = subprocess.Popen(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                          f"--callgrind-out-file={out}.%p", binary, "gateway", "--port", str(port),
                          "--worker-urls", f"http://127.0.0.1:{up_port}", "--workers", "1",
                          "--no-access-log", "--log-level", "warn", "--health-interval", "1h",
                          "--scrape-interval", "1h"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while True:
        try:
            if post(http.client.HTTPConnection("127.0.0.1", port, timeout=5)) == 200:
                break
        except OSError:
            pass
        if time.time() > deadline:
            p.kill()
            sys.exit(f"{binary}: the gateway did not serve under valgrind")
        time.sleep(0.2)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    for _ in range(n):
        assert post(conn) == 200
    p.send_signal(signal.SIGTERM)
    p.wait(120)
    totals = []
    for f in glob.glob(out + ".*"):
        with open(f) as fh:
            for line in fh:
                if line.startswith(("totals:", "summary:")):
                    totals.append(int(line.split()[1]))
                    break
    return sorted(totals)


def per_request(binary, up_port, tag):
    a = run(binary, N1, up_port, os.path.join(g.TMP, f"cg.{tag}.{N1}"))
    b = run(binary, N2, up_port, os.path.join(g.TMP, f"cg.{tag}.{N2}"))
    worker = max(y - x for x, y in zip(a, b)) / (N2 - N1)
    return worker, (sum(b) - sum(a)) / (N2 - N1)


def main():
    base = os.environ.get("BRIX_BASELINE_BIN")
    if not shutil.which("valgrind"):
        sys.exit("gateway_instructions: valgrind is not installed")
    build = g.snapshot_brix()
    os.makedirs(c.RESULTS, exist_ok=True)
    up, up_port = g.start_upstream_nginx("0")
    rows = []
    try:
        bins = [("this build", c.BRIX)] + ([("baseline (BRIX_BASELINE_BIN)", base)] if base else [])
        for i, (name, b) in enumerate(bins):
            w, t = per_request(b, up_port, str(i))
            rows.append((name, w, t))
            print(f"{name}: {w:.0f} instructions per request in the worker, {t:.0f} in all threads",
                  flush=True)
    finally:
        g.stop(up)
        g.cleanup_tmp()
    lines = ["| build | instructions / request, worker thread | all threads |", "|---|---|---|"]
    lines += [f"| {n} | {w:,.0f} | {t:,.0f} |" for n, w, t in rows]
    if len(rows) == 2:
        lines += ["", f"This build / baseline: {rows[0][1] / rows[1][1]:.3f}× "
                      f"({rows[0][1] - rows[1][1]:+,.0f} instructions per request in the worker)."]
    lines += ["", f"callgrind, {N2 - N1} requests (the difference of a {N2}- and a {N1}-request run), "
                  "`--workers 1 --no-access-log`, ~1 KB chat POST through a fixed upstream. "
                  f"brix build: {build['path']} at commit {build['commit']}."]
    md = "\n".join(lines) + "\n"
    with open(os.path.join(c.RESULTS, "gateway_instructions.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
