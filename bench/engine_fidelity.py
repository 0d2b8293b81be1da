#!/usr/bin/env python3
"""Fidelity of `brix engine-sim` against its own latency model.

Runs engine-sim at --time-scale 1 (real time) and measures, as a client:
  * TTFT vs prompt length: one request at a time, max_tokens 1, prompts given
    as random token ids (so nothing is a prefix-cache hit);
  * ITL vs batch size: B concurrent streams of 32-token prompts, 200 tokens
    each (ignore_eos); the mean gap between tokens 50..150 of every stream.
The baseline is the profile's formula (data/gpu_profiles.yaml) evaluated
here, independently of the C code, including chunked prefill.
Writes bench/results/engine_fidelity.json and plots in bench/plots/.
"""
import asyncio
import json
import math
import os
import random
import statistics
import sys

sys.path.insert(0, os.path.dirname(__file__))
import common as c  # noqa: E402
import loadgen  # noqa: E402

GPU = os.environ.get("FIDELITY_GPU", "a100")
REPEATS = int(os.environ.get("FIDELITY_REPEATS", "3"))
PROMPT_LENS = [16, 128, 512, 1024, 2048, 4096, 7000]
BATCHES = [1, 8, 32, 64, 128, 256]
DECODE_TOKENS = 200
WINDOW = (50, 150)


def expected_ttft(p, L, budget):
    t, left = 0.0, L
    while left > 0:
        n = min(left, budget)
        t += max(p["prefill_min"], p["prefill_per_token"] * n + p["prefill_base"])
        left -= n
    return t


def expected_itl(p, B, prompt, k):
    ctx = B * (prompt + k)
    return p["decode_per_ctx_token"] * ctx + p["decode_base"] + p["decode_per_seq"] * B


async def ttft_run(port, L, rng):
    body = {"prompt": [rng.randrange(1000, 100000) for _ in range(L)], "max_tokens": 1,
            "stream": True, "ignore_eos": True}
    r = await loadgen.stream_request("127.0.0.1", port, "/v1/completions", body)
    assert r.status == 200 and r.ttft is not None, r.error
    return r.ttft


async def itl_run(port, B, rng):
    reqs = []
    for _ in range(B):
        body = {"prompt": [rng.randrange(1000, 100000) for _ in range(32)],
                "max_tokens": DECODE_TOKENS, "ignore_eos": True, "stream": True}
        reqs.append(loadgen.stream_request("127.0.0.1", port, "/v1/completions", body))
    res = await asyncio.gather(*reqs)
    gaps = []
    for r in res:
        assert r.status == 200 and len(r.events) == DECODE_TOKENS, (r.status, r.error, len(r.events))
        ev = r.events[WINDOW[0]:WINDOW[1] + 1]
        gaps.append((ev[-1] - ev[0]) / (len(ev) - 1))
    return statistics.mean(gaps)


def main():
    prof = c.load_profiles()[GPU]
    budget = int(prof["max_num_batched_tokens"])
    rng = random.Random(7)
    out = {"gpu": GPU, "repeats": REPEATS, "ttft": [], "itl": []}
    for rep in range(REPEATS):
        p, port = c.start_engine(["--gpu", GPU, "--time-scale", "1", "--max-model-len", "8192"],
                                 f"fidelity-{rep}.log")
        try:
            for L in PROMPT_LENS:
                m = asyncio.run(ttft_run(port, L, rng))
                out["ttft"].append({"rep": rep, "L": L, "measured": m,
                                    "expected": expected_ttft(prof, L, budget)})
            for B in BATCHES:
                m = asyncio.run(itl_run(port, B, rng))
                k = (WINDOW[0] + WINDOW[1]) / 2
                out["itl"].append({"rep": rep, "B": B, "measured": m,
                                   "expected": expected_itl(prof, B, 32, k)})
        finally:
            c.stop(p)
    os.makedirs(c.RESULTS, exist_ok=True)
    with open(os.path.join(c.RESULTS, "engine_fidelity.json"), "w") as f:
        json.dump(out, f, indent=1)

    def table(rows, key, unit):
        lines = [f"| {key} | expected ({unit}) | measured mean ({unit}) | error mean | error range |",
                 "|---|---|---|---|---|"]
        worst = 0.0
        for v in sorted({r[key] for r in rows}):
            rs = [r for r in rows if r[key] == v]
            errs = [(r["measured"] - r["expected"]) / r["expected"] * 100 for r in rs]
            worst = max(worst, max(abs(e) for e in errs))
            lines.append(f"| {v} | {rs[0]['expected'] * 1000:.1f} | "
                         f"{statistics.mean(r['measured'] for r in rs) * 1000:.1f} | "
                         f"{statistics.mean(errs):+.1f}% | {min(errs):+.1f}% .. {max(errs):+.1f}% |")
        return "\n".join(lines), worst

    t1, w1 = table(out["ttft"], "L", "ms")
    t2, w2 = table(out["itl"], "B", "ms")
    dat = os.path.join(c.RESULTS, "fidelity_ttft.dat")
    with open(dat, "w") as f:
        for r in out["ttft"]:
            f.write(f"{r['L']} {r['expected'] * 1000} {r['measured'] * 1000}\n")
    dat2 = os.path.join(c.RESULTS, "fidelity_itl.dat")
    with open(dat2, "w") as f:
        for r in out["itl"]:
            f.write(f"{r['B']} {r['expected'] * 1000} {r['measured'] * 1000}\n")
    c.gnuplot(f"""set terminal svg size 640,400 dynamic
set output '{c.PLOTS}/fidelity_ttft.svg'
set title 'engine-sim TTFT vs prompt length ({GPU}, time-scale 1)'
set xlabel 'prompt tokens'; set ylabel 'TTFT (ms)'; set key left top; set grid
plot '{dat}' using 1:2 with lines lw 2 title 'profile formula', '' using 1:3 with points pt 7 title 'measured (client)'
set output '{c.PLOTS}/fidelity_itl.svg'
set title 'engine-sim inter-token latency vs batch size ({GPU}, time-scale 1)'
set xlabel 'concurrent streams (batch size)'; set ylabel 'ITL (ms)'
plot '{dat2}' using 1:2 with lines lw 2 title 'profile formula', '' using 1:3 with points pt 7 title 'measured (client)'
""")
    md = (f"### TTFT vs prompt length ({GPU}, {REPEATS} runs)\n\n{t1}\n\n"
          f"### ITL vs batch size ({GPU}, {REPEATS} runs; mean gap of tokens {WINDOW[0]}..{WINDOW[1]})\n\n{t2}\n\n"
          f"Worst single-run error: TTFT {w1:.1f}%, ITL {w2:.1f}%.\n")
    with open(os.path.join(c.RESULTS, "engine_fidelity.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    main()
