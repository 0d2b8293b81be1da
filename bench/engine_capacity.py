#!/usr/bin/env python3
"""Capacity of one `brix engine-sim` process: 1,000 concurrent SSE streams at
--time-scale 1, all decoding at once (--gpu h100: max-num-seqs 1024), while we
sample the engine's CPU time and RSS from /proc.

Target (issue #3): <= 25% of one core and <= 200 MB RSS, so that a fleet of 16
fits beside the gateway on 2 cores. Baseline: those limits, and the same run
with the streams idle (waiting in the queue, --max-num-seqs 1).
Writes bench/results/engine_capacity.{json,md}.
"""
import asyncio
import json
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import common as c  # noqa: E402
import loadgen  # noqa: E402

STREAMS = int(os.environ.get("CAPACITY_STREAMS", "1000"))
REPEATS = int(os.environ.get("CAPACITY_REPEATS", "3"))
WINDOW_S = float(os.environ.get("CAPACITY_WINDOW", "20"))
MAX_TOKENS = 100000  # streams outlive the window; they are cut by the client


async def run_once(pid, port, rng):
    tasks = []
    results = [loadgen.Result() for _ in range(STREAMS)]
    for i in range(STREAMS):
        body = {"prompt": [rng.randrange(1000, 100000) for _ in range(64)],
                "max_tokens": 4000, "ignore_eos": True, "stream": True}
        tasks.append(asyncio.ensure_future(
            loadgen.stream_request("127.0.0.1", port, "/v1/completions", body, res=results[i])))
    # let every stream connect and the batch fill
    await asyncio.sleep(5)
    open_streams = sum(1 for r in results if r.status == 200 and r.error is None)
    cpu0, t0 = c.proc_cpu_seconds(pid), time.monotonic()
    tok0 = sum(len(r.events) for r in results)
    rss = []
    while time.monotonic() - t0 < WINDOW_S:
        await asyncio.sleep(1)
        rss.append(c.proc_rss_mb(pid))
    cpu1, t1 = c.proc_cpu_seconds(pid), time.monotonic()
    tok1 = sum(len(r.events) for r in results)
    text = c.metrics(port)
    running = c.metric(text, "vllm:num_requests_running")
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"open_streams": open_streams, "running": running,
            "cpu_pct": (cpu1 - cpu0) / (t1 - t0) * 100, "rss_max_mb": max(rss),
            "tokens_per_s": (tok1 - tok0) / (t1 - t0)}


def main():
    rng = random.Random(11)
    runs = {"active": [], "idle": []}
    for rep in range(REPEATS):
        for mode in ("active", "idle"):
            extra = ["--gpu", "h100", "--time-scale", "1", "--max-num-seqs",
                     "1024" if mode == "active" else "1", "--max-model-len", "8192",
                     "--log-level", "warn"]
            p, port = c.start_engine(extra, f"capacity-{mode}-{rep}.log")
            try:
                r = asyncio.run(run_once(p.pid, port, rng))
            finally:
                c.stop(p)
            r["rep"] = rep
            runs[mode].append(r)
            print(mode, r, flush=True)
    with open(os.path.join(c.RESULTS, "engine_capacity.json"), "w") as f:
        json.dump(runs, f, indent=1)

    def row(mode, label):
        rs = runs[mode]
        def s(k, fmt):
            v = [r[k] for r in rs]
            return f"{fmt.format(statistics.mean(v))} ({fmt.format(min(v))}..{fmt.format(max(v))})"
        return (f"| {label} | {s('open_streams', '{:.0f}')} | {s('running', '{:.0f}')} | "
                f"{s('tokens_per_s', '{:.0f}')} | {s('cpu_pct', '{:.1f}')} | {s('rss_max_mb', '{:.1f}')} |")
    md = (f"{STREAMS} concurrent streams, {REPEATS} runs, {WINDOW_S:.0f} s window, mean (min..max):\n\n"
          "| engine-sim | open streams | running | tokens/s streamed | CPU % of one core | RSS MB |\n"
          "|---|---|---|---|---|---|\n"
          + row("active", "all decoding (h100, max-num-seqs 1024)") + "\n"
          + row("idle", "baseline: queued, 1 decoding (max-num-seqs 1)") + "\n\n"
          + f"Target: <= 25% CPU and <= 200 MB RSS with >= 1,000 streams.\n")
    with open(os.path.join(c.RESULTS, "engine_capacity.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
