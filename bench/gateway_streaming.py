#!/usr/bin/env python3
"""Streaming (SSE) through the brix gateway vs nginx and haproxy: time to first
byte and the delay each proxy adds to every event.

Upstream: bench/peers/sse_server.py, a fake vLLM that stamps every SSE event
with its CLOCK_MONOTONIC send time and, like a batching engine, emits one
event per open stream on a global tick (STREAM_INTERVAL_MS), all streams in
the same tick. The client (bench/sse_client.py, this process) stamps each
chunk on arrival, so the one-way delay of every single event is measured
exactly; engine-sim was not used because its token times follow a GPU model
and would add their own jitter to a difference of two distributions.

STREAMS concurrent streams x EVENTS events, connections opened first, in two
scenarios:
  staggered  requests spread evenly over one interval, each stream with its own
             event clock: events never coincide, so TTFB and event delay are the
             path's own latency (the number to compare against direct);
  burst      all requests at once and all streams' events on the same tick, as
             a batching engine emits them: shows how each proxy handles 32
             events at once, but the Python ends (server and client sharing a
             core) add ~1 ms of queueing of their own, so the differences
             between paths are small next to that floor.
Paths, in a rotated order each repeat:
  direct   client -> sse_server
  brix     brix gateway --workers 1 --no-access-log
  nginx    nginx, 1 worker, proxy_buffering off, keep-alive upstream pool
  haproxy  haproxy, 1 thread, http mode, keep-alive (+ option http-no-delay
           as "haproxy-nd", the setting its manual gives for interactive bodies)
Layout: proxy on CPU 1; server and client on CPU 0. TTFB = first event
received - request written. Per-event delay uses every event after the first.
Added = proxy - the direct path's median over repeats. Writes
bench/results/gateway_streaming.{json,md}.
"""
import asyncio
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import common as c  # noqa: E402
import gw_common as g  # noqa: E402
import loadgen  # noqa: E402
import sse_client  # noqa: E402

REPEATS = int(os.environ.get("STREAM_REPEATS", "5"))
STREAMS = int(os.environ.get("STREAM_STREAMS", "32"))
EVENTS = int(os.environ.get("STREAM_EVENTS", "100"))
INTERVAL_MS = float(os.environ.get("STREAM_INTERVAL_MS", "20"))
VARIANTS = os.environ.get("STREAM_VARIANTS", "direct,brix,nginx,haproxy,haproxy-nd").split(",")
FOREIGN_MAX = float(os.environ.get("STREAM_FOREIGN_MAX", "15"))
RETRIES = int(os.environ.get("STREAM_RETRIES", "3"))
PROXY_CPU, CLIENT_CPU = "1", "0"
PATH = "/v1/chat/completions"
P = loadgen.percentile


SCENARIOS = os.environ.get("STREAM_SCENARIOS", "staggered,burst").split(",")


def body(events, pattern):
    return {"model": "llama-3-8b", "stream": True, "max_tokens": events, "bench_pattern": pattern,
            "messages": [{"role": "user", "content": "Stream me a story about paged attention."}]}


async def run_streams(port, n, events, scenario="burst"):
    ps = await sse_client.open_streams("127.0.0.1", port, n)
    bad = [p for p in ps if isinstance(p, Exception)]
    ps = [p for p in ps if not isinstance(p, Exception)]
    if scenario == "burst":
        for p in ps:
            p.send("127.0.0.1", port, PATH, body(events, "tick"))
    else:
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.002
        for k, p in enumerate(ps):
            loop.call_at(t0 + k * INTERVAL_MS / 1000 / max(1, len(ps)), p.send, "127.0.0.1", port,
                         PATH, body(events, "own"))
    try:
        await asyncio.wait_for(asyncio.gather(*[p.done for p in ps]),
                               timeout=events * INTERVAL_MS / 1000 * 3 + 10)
    except asyncio.TimeoutError:
        pass
    for p in ps:
        if p.tr:
            p.tr.close()
    return ps, bad


def measure_once(name, proc, port, scenario, srv_pid):
    asyncio.run(run_streams(port, 4, 5))  # warm the upstream pools
    cpu0 = g.tree_cpu_s(proc.pid) if proc else 0.0
    o0 = g.tree_cpu_s(srv_pid) + g.self_cpu_s()
    u0, t0 = g.cpu_busy(), time.monotonic()
    ps, bad = asyncio.run(run_streams(port, STREAMS, EVENTS, scenario))
    u1, t1 = g.cpu_busy(), time.monotonic()
    cpu = (g.tree_cpu_s(proc.pid) - cpu0) if proc else 0.0
    others = g.tree_cpu_s(srv_pid) + g.self_cpu_s() - o0
    ttfb = [p.ttfb for p in ps if p.ttfb is not None]
    delays = [d for p in ps for (i, d) in p.delays if i >= 2]
    events = sum(p.events for p in ps)
    errors = len(bad) + sum(1 for p in ps if p.error or p.status != 200 or p.events != EVENTS)
    r = {"streams": STREAMS, "events": events, "errors": errors,
         "error_samples": [str(x) for x in bad[:3]] + [p.error for p in ps if p.error][:3],
         "ttfb_p50_us": P(ttfb, 50) * 1e6, "ttfb_p99_us": P(ttfb, 99) * 1e6,
         "ttfb_max_us": max(ttfb) * 1e6 if ttfb else float("nan"),
         "ev_p50_us": P(delays, 50) * 1e6, "ev_p90_us": P(delays, 90) * 1e6,
         "ev_p99_us": P(delays, 99) * 1e6, "ev_p999_us": P(delays, 99.9) * 1e6,
         "ev_max_us": max(delays) * 1e6 if delays else float("nan"),
         "proxy_cpu_s": cpu, "proxy_us_per_event": cpu / max(1, events) * 1e6,
         "cpu_util": g.cpu_util(u0, u1), "secs": t1 - t0,
         "foreign_pct": g.foreign_pct(u0, u1, t1 - t0, cpu + others)}
    print(f"  {scenario:9s} {name:10s} ttfb p50 {r['ttfb_p50_us']:7.0f} p99 {r['ttfb_p99_us']:7.0f} us | event "
          f"p50 {r['ev_p50_us']:6.0f} p99 {r['ev_p99_us']:6.0f} p99.9 {r['ev_p999_us']:6.0f} us | "
          f"{events} events, {errors} errors, proxy {r['proxy_us_per_event']:.1f} us CPU/event, "
          f"foreign {r['foreign_pct']:.0f}%", flush=True)
    return r


def measure(name, proc, port, scenario, srv_pid):
    """measure_once, retried while other tenants of the machine use CPU."""
    best = None
    for attempt in range(RETRIES + 1):
        r = measure_once(name, proc, port, scenario, srv_pid)
        r["attempt"] = attempt
        if best is None or r["foreign_pct"] < best["foreign_pct"]:
            best = r
        if r["foreign_pct"] <= FOREIGN_MAX:
            break
    return best


def main():
    build = g.snapshot_brix()
    os.sched_setaffinity(0, {int(CLIENT_CPU)})
    g.raise_nofile(4096)
    procs, runs = [], []
    try:
        srv, sport = g.start_sse_server(CLIENT_CPU, INTERVAL_MS)
        procs.append(srv)
        targets = {"direct": (None, sport)}
        for v in VARIANTS:
            if v == "brix":
                p, port = g.start_gateway(PROXY_CPU, [sport], workers=1)
            elif v == "nginx":
                p, port = g.start_nginx_proxy(PROXY_CPU, sport, buffering=False)
            elif v in ("haproxy", "haproxy-nd"):
                p, port = g.start_haproxy(PROXY_CPU, sport, no_delay=(v == "haproxy-nd"))
            else:
                continue
            procs.append(p)
            targets[v] = (p, port)
        for rep in range(REPEATS):
            order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
            print(f"repeat {rep + 1}/{REPEATS} (load average {g.loadavg():.2f})", flush=True)
            run = {"rep": rep, "loadavg": g.loadavg()}
            for sc in SCENARIOS:
                run[sc] = {}
                for v in order:
                    p, port = targets[v]
                    run[sc][v] = measure(v, p, port, sc, srv.pid)
            runs.append(run)
    finally:
        for p in reversed(procs):
            g.stop(p)
        g.cleanup_tmp()
    out = {"build": build, "repeats": REPEATS, "streams": STREAMS, "events": EVENTS, "interval_ms": INTERVAL_MS,
           "variants": VARIANTS, "scenarios": SCENARIOS, "runs": runs}
    with open(os.path.join(c.RESULTS, "gateway_streaming.json"), "w") as f:
        json.dump(out, f, indent=1)
    md = report(out)
    with open(os.path.join(c.RESULTS, "gateway_streaming.md"), "w") as f:
        f.write(md)
    print(md)


LABEL = {"direct": "direct (baseline)", "brix": "**brix gateway**", "nginx": "nginx (buffering off)",
         "haproxy": "haproxy", "haproxy-nd": "haproxy, http-no-delay"}


def report(out):
    variants = out["variants"]
    S = g.fmt_spread
    lines = [
        f"{out['streams']} concurrent streams × {out['events']} events, one event per stream every "
        f"{out['interval_ms']:.0f} ms, {out['repeats']} repeats in a rotated order; median "
        "(min..max) over repeats of each run's percentile. Proxies: 1 worker on CPU 1; SSE server "
        "(bench/peers/sse_server.py) and client on CPU 0. Delays are one-way, from the server's "
        "send stamp to the client's receipt; TTFB = first event received − request written. "
        "Added = proxy − the direct path's median over repeats. *staggered*: requests spread over one "
        "interval, each stream on its own clock (no two events at once: the path's own latency). "
        "*burst*: all requests at once, every stream's event on the same tick (a batching "
        "engine); here the Python server and client queue ~1 ms themselves."]
    for sc in out["scenarios"]:
        runs = [r[sc] for r in out["runs"]]
        lines += ["", f"**{sc}**:", "",
                  "| path | TTFB p50 µs | added | TTFB p99 µs | added | event p50 µs | added | "
                  "event p99 µs | added | event p99.9 µs | proxy CPU µs/event | errors |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for v in variants:
            col = lambda k: [r[v][k] for r in runs]  # noqa: E731
            add = lambda k: "—" if v == "direct" else S(  # noqa: E731
                [r[v][k] - g.stats([q["direct"][k] for q in runs])[0] for r in runs])
            lines.append(
                f"| {LABEL.get(v, v)} | {S(col('ttfb_p50_us'))} | {add('ttfb_p50_us')} | "
                f"{S(col('ttfb_p99_us'))} | {add('ttfb_p99_us')} | {S(col('ev_p50_us'))} | "
                f"{add('ev_p50_us')} | {S(col('ev_p99_us'))} | {add('ev_p99_us')} | "
                f"{S(col('ev_p999_us'))} | "
                f"{'—' if v == 'direct' else S(col('proxy_us_per_event'), '{:.1f}')} | "
                f"{sum(col('errors'))} |")
        if "brix" in variants and "nginx" in variants:
            def pair(k):
                return [r["brix"][k] - r["nginx"][k] for r in runs]
            lines += ["", f"brix − nginx ({sc}, paired): TTFB p50 {S(pair('ttfb_p50_us'))} µs, "
                      f"event p50 {S(pair('ev_p50_us'))} µs, event p99 {S(pair('ev_p99_us'))} µs."]
    fmax = max(r[sc][v]["foreign_pct"] for r in out["runs"] for sc in out["scenarios"]
               for v in variants)
    lines += ["", f"TTFB p99 over {out['streams']} streams is close to their maximum. Other "
              f"tenants' CPU during the runs kept: at most {fmax:.0f}% of a core (runs above "
              f"{FOREIGN_MAX:.0f}% re-run up to {RETRIES} times). "
              "Reproduce: `python3 bench/gateway_streaming.py` (`STREAM_REPEATS`, `STREAM_STREAMS`, "
              "`STREAM_EVENTS`, `STREAM_INTERVAL_MS`, `STREAM_VARIANTS`, `STREAM_SCENARIOS`)."]
    if "build" in out:
        lines += ["", g.build_line(out["build"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
