#!/usr/bin/env python3
"""10,000 concurrent open SSE streams through the brix gateway: its RSS and
error count, with nginx and haproxy under the same load as peers.

Upstream: one bench/peers/sse_server.py (cheap, holds streams open and
trickles one event per stream every CAP_INTERVAL_MS on each stream's own
clock, so events are spread evenly in time). Client: this process, asyncio
protocols (bench/sse_client.py); connections are opened in batches of
CAP_BATCH every CAP_PAUSE_MS and each sends its request as soon as it is
connected. Once all are open we hold them for CAP_WINDOW_S seconds, sampling
the proxy's RSS (VmRSS, summed over its processes) and CPU time from /proc
every second, then count errors: connections refused, non-200 answers, streams
closed or errored before the end, and streams that received no event in the
last two intervals of the window. Proxy on CPU 1 (1 worker/thread each),
server and client on CPU 0; every proxy is started fresh for every run.

fd limits: the gateway needs ~2 fds per stream, so the soft RLIMIT_NOFILE is
raised to the hard limit, and the hard limit too when we are privileged; the
limits each proxy actually got are recorded. Writes
bench/results/gateway_capacity.{json,md}.
"""
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import common as c  # noqa: E402
import gw_common as g  # noqa: E402
import sse_client  # noqa: E402

STREAMS = int(os.environ.get("CAP_STREAMS", "10000"))
# Also run at the largest count whose fds fit under the hard RLIMIT_NOFILE (2 per
# stream in the proxy, plus its own) when that is below STREAMS. CAP_FIT=0: not.
FIT = os.environ.get("CAP_FIT", "1") == "1"
REPEATS = int(os.environ.get("CAP_REPEATS", "3"))
WINDOW_S = float(os.environ.get("CAP_WINDOW_S", "20"))
INTERVAL_MS = float(os.environ.get("CAP_INTERVAL_MS", "1000"))
BATCH = int(os.environ.get("CAP_BATCH", "250"))
PAUSE_MS = float(os.environ.get("CAP_PAUSE_MS", "50"))
VARIANTS = os.environ.get("CAP_VARIANTS", "brix,nginx,haproxy-nd").split(",")
PROXY_CPU, CLIENT_CPU = "1", "0"
PATH = "/v1/chat/completions"
BODY = {"model": "llama-3-8b", "stream": True, "max_tokens": 1000000, "bench_pattern": "own",
        "messages": [{"role": "user", "content": "Keep talking."}]}


def fd_limit(pid):
    for line in open(f"/proc/{pid}/limits"):
        if line.startswith("Max open files"):
            return int(line.split()[3])
    return -1


def rss_parts(pid):
    return {q: c.proc_rss_mb(q) for q in g.tree_pids(pid)}


async def hold(proc, port, n):
    loop = asyncio.get_running_loop()
    ps = []
    t_open0 = time.monotonic()
    for i in range(0, n, BATCH):
        batch = await asyncio.gather(*[loop.create_connection(
            lambda: sse_client.SSEStream(record_delays=False), "127.0.0.1", port)
            for _ in range(min(BATCH, n - i))], return_exceptions=True)
        for b in batch:
            if isinstance(b, Exception):
                ps.append(b)
            else:
                b[1].send("127.0.0.1", port, PATH, BODY)
                ps.append(b[1])
        await asyncio.sleep(PAUSE_MS / 1000)
    open_s = time.monotonic() - t_open0
    await asyncio.sleep(2 * INTERVAL_MS / 1000 + 1)  # every stream has its first events
    streams = [p for p in ps if not isinstance(p, Exception)]
    cpu0, t0 = g.tree_cpu_s(proc.pid), time.monotonic()
    ev0 = sum(p.events for p in streams)
    rss, samples = [], []
    while time.monotonic() - t0 < WINDOW_S:
        await asyncio.sleep(1)
        parts = rss_parts(proc.pid)
        rss.append(sum(parts.values()))
        samples.append(parts)
    mark = {id(p): p.events for p in streams}
    await asyncio.sleep(2 * INTERVAL_MS / 1000)
    cpu1, t1 = g.tree_cpu_s(proc.pid), time.monotonic()
    ev1 = sum(p.events for p in streams)
    # each failed stream counted once, under its first symptom
    refused = [str(p) for p in ps if isinstance(p, Exception)]
    bad_status = [p for p in streams if p.status not in (0, 200)]
    no_head = [p for p in streams if p.status == 0]
    closed = [p for p in streams if p.status == 200 and (p.done.done() or p.error)]
    stalled = [p for p in streams if p.status == 200 and not (p.done.done() or p.error)
               and p.events == mark[id(p)]]
    samples_err = ([*refused[:2]] + [p.error for p in bad_status[:2]] +
                   [p.error for p in closed[:2]] + [f"no response head ({len(no_head)})"
                                                    for _ in no_head[:1]])
    for p in streams:
        if p.tr:
            p.tr.close()
    await asyncio.sleep(1)
    errors = len(refused) + len(bad_status) + len(no_head) + len(closed) + len(stalled)
    last = samples[-1]
    return {"open_s": open_s, "rss_max_mb": max(rss), "rss_last_mb": rss[-1],
            "rss_main_mb": max(last.values()), "nproc": len(last),
            "cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100,
            "events_per_s": (ev1 - ev0) / (t1 - t0),
            "streams": n, "streams_ok": n - errors, "errors": errors,
            "refused": len(refused), "bad_status": len(bad_status), "no_head": len(no_head),
            "closed": len(closed), "stalled": len(stalled), "error_samples": samples_err}


def run_one(v, n, hard):
    procs = []
    try:
        srv, sport = g.start_sse_server(CLIENT_CPU, INTERVAL_MS, log_name="gw-capacity-sse.log")
        procs.append(srv)
        if v == "brix":
            p, port = g.start_gateway(PROXY_CPU, [sport], workers=1,
                                      extra=["--max-connections", str(n + 1000)])
        elif v == "nginx":
            # worker_connections well above the fd limit: nginx starts "reusing"
            # (closing) connections when its slots run short, before the fds do
            p, port = g.start_nginx_proxy(PROXY_CPU, sport, buffering=False,
                                          nofile=min(hard, 2 * n + 1000),
                                          worker_connections=4 * n + 1000)
        elif v in ("haproxy", "haproxy-nd"):
            p, port = g.start_haproxy(PROXY_CPU, sport, no_delay=(v == "haproxy-nd"),
                                      # haproxy refuses to start if 2*maxconn+14 fds
                                      # do not fit; beyond maxconn it queues
                                      maxconn=min(n + 1000, (hard - 100) // 2))
        procs.append(p)
        time.sleep(0.5)
        idle = sum(rss_parts(p.pid).values())
        limits = {q: fd_limit(q) for q in g.tree_pids(p.pid)}
        r = asyncio.run(hold(p, port, n))
        r["rss_idle_mb"] = idle
        r["fd_limits"] = sorted(set(limits.values()))
        r["alive"] = p.poll() is None
        return r
    finally:
        for q in reversed(procs):
            g.stop(q)


def main():
    build = g.snapshot_brix()
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    need = 2 * STREAMS + 1000  # the proxy: 2 per stream (client and upstream side)
    soft, hard, note = g.raise_nofile(need)
    print(f"RLIMIT_NOFILE {soft}/{hard} {note}", flush=True)
    counts = [STREAMS]
    fit = (hard - 200) // 2
    if FIT and fit < STREAMS:
        counts.append(fit)
    runs = []
    try:
        for rep in range(REPEATS):
            order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
            run = {"rep": rep}
            for n in counts:
                run[str(n)] = {}
                for v in order:
                    r = run_one(v, n, hard)
                    run[str(n)][v] = r
                    print(f"  {n} {v:10s} {r['streams_ok']}/{n} ok, {r['errors']} errors "
                          f"(refused {r['refused']}, status {r['bad_status']}, no head "
                          f"{r['no_head']}, closed {r['closed']}, stalled {r['stalled']}), RSS max "
                          f"{r['rss_max_mb']:.1f} MB (idle {r['rss_idle_mb']:.1f}), CPU "
                          f"{r['cpu_pct']:.1f}%, {r['events_per_s']:.0f} events/s, opened in "
                          f"{r['open_s']:.1f}s, fd limit {r['fd_limits']} "
                          f"{r['error_samples'][:2]}", flush=True)
                    time.sleep(2)
            runs.append(run)
    finally:
        g.cleanup_tmp()
    out = {"build": build, "counts": counts, "repeats": REPEATS, "window_s": WINDOW_S,
           "interval_ms": INTERVAL_MS, "variants": VARIANTS, "rlimit": [soft, hard],
           "rlimit_note": note, "runs": runs}
    with open(os.path.join(c.RESULTS, "gateway_capacity.json"), "w") as f:
        json.dump(out, f, indent=1)
    md = report(out)
    with open(os.path.join(c.RESULTS, "gateway_capacity.md"), "w") as f:
        f.write(md)
    print(md)


LABEL = {"brix": "**brix gateway**", "nginx": "nginx (buffering off)", "haproxy": "haproxy",
         "haproxy-nd": "haproxy, http-no-delay"}


def report(out):
    variants = out["variants"]
    S = g.fmt_spread
    lim = out["rlimit"]
    lines = [
        f"Concurrent SSE streams held open for {out['window_s']:.0f} s, one event per stream every "
        f"{out['interval_ms']:.0f} ms, {out['repeats']} runs per proxy (fresh processes each run); "
        "median (min..max). 1 worker/thread per proxy on CPU 1; upstream "
        "(bench/peers/sse_server.py) and client on CPU 0. RSS is VmRSS summed over the proxy's "
        "processes (nginx: master + worker). Errors: streams refused, answered non-200, never "
        "answered, ended early, or silent for the last two intervals; each stream counted once.",
        "",
        "| streams | proxy | streams OK | errors | RSS max MB | RSS idle MB | KB per stream | CPU % "
        "of one core | events/s relayed |",
        "|---|---|---|---|---|---|---|---|---|"]
    for n in out["counts"]:
        runs = [r[str(n)] for r in out["runs"]]
        for v in variants:
            col = lambda k: [r[v][k] for r in runs]  # noqa: E731
            kb = [(r[v]["rss_max_mb"] - r[v]["rss_idle_mb"]) * 1024 / n for r in runs]
            lines.append(f"| {n:,} | {LABEL.get(v, v)} | {S(col('streams_ok'))} | "
                         f"{sum(col('errors'))} | {S(col('rss_max_mb'), '{:.1f}')} | "
                         f"{S(col('rss_idle_mb'), '{:.1f}')} | {S(kb, '{:.1f}')} | "
                         f"{S(col('cpu_pct'), '{:.1f}')} | {S(col('events_per_s'))} |")
    if "brix" in variants:
        for n in out["counts"]:
            runs = [r[str(n)] for r in out["runs"]]
            rss = g.stats([r["brix"]["rss_max_mb"] for r in runs])[2]
            errs = sum(r["brix"]["errors"] for r in runs)
            samples = sorted({e[:110] for r in runs for e in r["brix"]["error_samples"] if e})[:1]
            why = ""
            if errs and 2 * n + 10 > lim[1]:
                why = (f" — fd exhaustion, not a gateway fault: {n:,} streams need {2 * n:,} "
                       f"sockets plus the process's own fds, above the hard limit of {lim[1]:,}; "
                       "brix answers each stream it cannot connect upstream with a clean 502 "
                       "(nginx: 500; haproxy leaves them unaccepted)")
            lines += ["", f"Target (issue 4): gateway RSS ≤ 200 MB and no errors at 10,000 streams. "
                      f"At {n:,} streams: RSS max {rss:.1f} MB "
                      f"({'meets' if rss <= 200 else 'FALLS SHORT'}), {errs} errors over "
                      f"{len(runs)} runs ({'meets' if errs == 0 else 'FALLS SHORT'}{why})"
                      + (f"; e.g. `{samples[0]}…`" if samples else "") + "."]
    lines += ["", f"fd limit (RLIMIT_NOFILE soft/hard) of every process: {lim[0]}/{lim[1]}"
              + (f"; {out['rlimit_note']}" if out["rlimit_note"] else "") + ". A proxy needs two "
              "fds per stream (client + upstream connection) plus its own, so with a hard limit "
              f"of {lim[1]} a single process cannot hold {lim[1] // 2:,} streams: the largest "
              "count that fits is run as well. "
              "Reproduce: `python3 bench/gateway_capacity.py` (`CAP_STREAMS`, `CAP_FIT`, "
              "`CAP_REPEATS`, `CAP_WINDOW_S`, `CAP_INTERVAL_MS`, `CAP_VARIANTS`)."]
    if "build" in out:
        lines += ["", g.build_line(out["build"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
