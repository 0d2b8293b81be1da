#!/usr/bin/env python3
"""The rate-limit check's own latency with Redis on loopback.

The brix gateway (1 worker) with a rate-limited user whose users and
counters are in a redis-server (pinned to CPU 0 beside wrk and the upstream
nginx of bench/gateway_proxy.py), driven by wrk -c1 for CHECK_SECONDS with
bench/wrk/post.lua (every request carries `user: bench`). The gateway times
each check (one EVALSHA round trip from its worker loop) in
brix_gateway_ratelimit_check_seconds; this script reads that histogram for
the gateway on its own core (CPU 1: cross-core wake-ups) and on CPU 0 with
the rest. The end-to-end cost of the limits (check + the charge after the
response) is the brix+redis row of bench/gateway_proxy.py.
Writes bench/results/ratelimit_check.{json,md}.
"""
import json
import os
import re
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(__file__))
import common as c  # noqa: E402
import gw_common as g  # noqa: E402

SECONDS = int(os.environ.get("CHECK_SECONDS", "5"))
REPEATS = int(os.environ.get("CHECK_REPEATS", "3"))
USER = "bench:rpm=1000000000,tpm=1000000000000"


def histogram(port):
    m = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics").read().decode()
    b = [(float(x), float(y)) for x, y in
         re.findall(r'brix_gateway_ratelimit_check_seconds_bucket\{le="([^"+]+)"\} (\S+)', m)]
    n = float(re.search(r'brix_gateway_ratelimit_check_seconds_count (\S+)', m).group(1))
    s = float(re.search(r'brix_gateway_ratelimit_check_seconds_sum (\S+)', m).group(1))
    return n, s, b


def p50_us(n, b):
    """Median by linear interpolation inside the histogram bucket."""
    prev_le, prev_c = 0.0, 0.0
    for le, cnt in b:
        if cnt >= n / 2:
            return (prev_le + (le - prev_le) * (n / 2 - prev_c) / max(1.0, cnt - prev_c)) * 1e6
        prev_le, prev_c = le, cnt
    return float("nan")


def main():
    build = g.snapshot_brix()
    procs, rows = [], []
    try:
        up, up_port = g.start_upstream_nginx("0")
        procs.append(up)
        rport = c.free_port()
        rs = subprocess.Popen(["taskset", "-c", "0", "redis-server", "--port", str(rport),
                               "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        procs.append(rs)
        time.sleep(0.5)
        for rep in range(REPEATS):
            for layout, cpu in (("own core", "1"), ("same core", "0")):
                p, port = g.start_gateway(cpu, [up_port], workers=1, extra=[
                    "--user", USER, "--redis-url", f"redis://127.0.0.1:{rport}"])
                try:
                    subprocess.run(["taskset", "-c", "0", "wrk", "-t1", "-c1", f"-d{SECONDS}s",
                                    "-s", os.path.join(g.WRK_DIR, "post.lua"),
                                    f"http://127.0.0.1:{port}/v1/chat/completions"],
                                   capture_output=True, check=True)
                    n, s, b = histogram(port)
                finally:
                    g.stop(p)
                rows.append({"rep": rep, "layout": layout, "checks": n, "mean_us": s / n * 1e6,
                             "p50_us": p50_us(n, b),
                             "le50": next(cnt for le, cnt in b if le >= 5e-5) / n})
                print(rows[-1], flush=True)
    finally:
        for p in reversed(procs):
            g.stop(p)
        g.cleanup_tmp()
    lines = [f"wrk -c1 for {SECONDS} s, {REPEATS} repeats; median (min..max) of each run's "
             "figure. The check is one EVALSHA round trip (users and GCRA counters in Redis, "
             "Redis' clock), timed by the gateway.", "",
             "| gateway on | checks per run | p50 µs | mean µs | share ≤ 50 µs |", "|---|---|---|---|---|"]
    for layout in ("same core", "own core"):
        r = [x for x in rows if x["layout"] == layout]
        f = g.fmt_spread
        lines.append(f"| {layout} | {f([x['checks'] for x in r])} | "
                     f"{f([x['p50_us'] for x in r], '{:.0f}')} | "
                     f"{f([x['mean_us'] for x in r], '{:.0f}')} | "
                     f"{f([x['le50'] * 100 for x in r], '{:.0f}')}% |")
    lines += ["", "Target (issue 6): an RPM+TPM check against Redis on loopback adds ≤ 50 µs p50. "
              "Reproduce: `python3 bench/ratelimit_check.py` (`CHECK_SECONDS`, `CHECK_REPEATS`).",
              "", g.build_line(build)]
    md = "\n".join(lines) + "\n"
    os.makedirs(c.RESULTS, exist_ok=True)
    with open(os.path.join(c.RESULTS, "ratelimit_check.json"), "w") as f:
        json.dump({"build": build, "rows": rows}, f, indent=1)
    with open(os.path.join(c.RESULTS, "ratelimit_check.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
