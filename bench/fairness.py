#!/usr/bin/env python3
"""Fairness under saturation: one heavy tenant and three light tenants on a
saturated simulated fleet, with and without the gateway's Virtual Token
Counter (VTC; Sheng et al., "Fairness in Serving Large Language Models",
OSDI 2024).

Target (the project's issue): the light tenants' P99 TTFT with VTC stays
within 1.5x of their solo run; without VTC, show how far it degrades.

Fleet (fresh processes for every run): two `brix engine-sim --gpu h100
--time-scale TS --max-num-seqs N` behind one `brix gateway --routing-strategy
least-request`. Modes:
  none  the gateway forwards every request at once; the engines queue FIFO
        beyond their N running sequences (the baseline "without VTC");
  vtc   `--fairness vtc --max-inflight-per-pod N`: the gateway lets at most
        N x 2 requests into the fleet (= the fleet's batch capacity), the rest
        wait in per-tenant queues served by smallest virtual counter. A tenant
        holding its fair share of slots may not take the last --fair-reserve
        of them (gateway default; idle headroom so a light request starts at
        once); repeat 1 also runs the reserve values in FAIR_RESERVE_SWEEP.
N sets how coarse a "slot" is: a light tenant's request that finds the fleet
full waits for some request to finish, about 1/C. With N = 32 (64 slots,
C ~ 37 req/s) the default reserve is ~6 slots and that wait is rare; with
N = 8 (16 slots, FAIR_SEQS=8 FAIR_TIME_SCALE=0.5) the reserve is one slot, the
light tenants (30% of C in all, ~5 slots) often find it taken, and 1/C is
longer than a solo TTFT. TS = 1.0 keeps the client at ~40 req/s and ~4k SSE
events/s wall, which one Python process and two cores sustain.
The tenant of a request is its `user` header (no users are configured, so the
gateway does no rate limiting).

Workload: streaming chat completions, prompt 200-500 tokens of random words
(a random nonce first, so prefix caching does not help), max_tokens 64-128
with ignore_eos (the engine produces exactly max_tokens). Open-loop Poisson
arrivals per tenant; the same seeded schedules are used in every mode of a
repeat (common random numbers), so the modes differ only in the gateway.
  1. capacity: closed loop, 3N concurrent requests per engine, no fairness:
     completed requests/s = C (wall).
  2. rates: each light tenant offers LIGHT_FRAC x C, the heavy tenant
     HEAVY_X x a light tenant's rate. Defaults 0.1 and 10: lights 10% of
     capacity each (0.4 of a fair quarter share), heavy 100% of capacity
     (4x a fair share, 10x a light tenant); 130% offered in all -> saturated.
  3. runs, per repeat: solo (the three lights alone, mode none), mixed/none,
     mixed/vtc (order alternates between repeats); once: solo/vtc (VTC costs
     nothing when the fleet is not saturated), and mixed/vtc with each
     --fair-reserve of FAIR_RESERVE_SWEEP (skipped if the gateway has no such
     flag).
After DURATION wall seconds of arrivals, the run waits until every light
request has finished (bounded by the client timeout), then cancels what is
left (the heavy tenant's backlog). Heavy throughput counts the tokens
received inside the arrival window only.

TTFT = first SSE event carrying content - request written (loadgen.py), so it
includes time queued in the gateway or in the engine. Times are reported in
simulated seconds (wall / TS); ratios do not depend on that. A request that
never got a first token (timeout, error status) counts as TTFT = infinity in
the percentiles, so it cannot make a P99 look better. Headline: pooled P99 TTFT of the
three light tenants in a mixed run / the same in the solo run of the same
repeat; median (min..max) over repeats.

Writes bench/results/fairness.{json,md}; process logs bench/results/fair-*.log.
Knobs (environment): FAIR_DURATION (60 wall s), FAIR_REPEATS (3), FAIR_SEQS (N,
32), FAIR_TIME_SCALE (1.0), FAIR_LIGHT_FRAC (0.1), FAIR_HEAVY_X (10),
FAIR_CAP_SECONDS (20), FAIR_TIMEOUT (client timeout, 150 wall s),
FAIR_SOLO_VTC (1), FAIR_RESERVE_SWEEP ("0,0.3"; "" for none), FAIR_OUT (results
file name, "fairness"). About 14 minutes with the defaults.
"""
import asyncio
import atexit
import bisect
import json
import math
import os
import random
import signal
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import common as c  # noqa: E402
import gw_common as g  # noqa: E402
import loadgen  # noqa: E402

DURATION = float(os.environ.get("FAIR_DURATION", "60"))
REPEATS = int(os.environ.get("FAIR_REPEATS", "3"))
SEQS = int(os.environ.get("FAIR_SEQS", "32"))
TS = float(os.environ.get("FAIR_TIME_SCALE", "1.0"))
LIGHT_FRAC = float(os.environ.get("FAIR_LIGHT_FRAC", "0.1"))
HEAVY_X = float(os.environ.get("FAIR_HEAVY_X", "10"))
CAP_SECONDS = float(os.environ.get("FAIR_CAP_SECONDS", "20"))
TIMEOUT = float(os.environ.get("FAIR_TIMEOUT", "150"))
SOLO_VTC = os.environ.get("FAIR_SOLO_VTC", "1") == "1"
OUT = os.environ.get("FAIR_OUT", "fairness")
SWEEP = [float(x) for x in os.environ.get("FAIR_RESERVE_SWEEP", "0,0.3").split(",") if x.strip()]
ENGINES = 2
MODEL = "llama-3-8b"
PATH = "/v1/chat/completions"
LIGHTS = ["light-1", "light-2", "light-3"]
HEAVY = "heavy"
HOST = "127.0.0.1"
TARGET = 1.5

WORDS = ("the a of to and in is that for it as with was on be by at this from or an are "
         "model token batch cache prefill decode tenant request queue latency memory kernel "
         "attention layer weight matrix vector scheduler engine gateway router serving "
         "throughput fairness counter virtual share service time first byte stream server "
         "client response prompt output input length block page paged sequence running "
         "waiting admitted dispatch slot capacity fleet pod replica health metric scrape "
         "river mountain garden window coffee paper letter winter summer market station "
         "quickly slowly always never often rarely perhaps maybe certainly clearly").split()

PROCS = []  # every process we started, stopped by its own PID


def stop_all():
    while PROCS:
        g.stop(PROCS.pop(), timeout=10)


def on_signal(signum, frame):
    raise SystemExit(128 + signum)


# ----------------------------------------------------------------- fleet --

def gateway_reserve_default():
    """The gateway's --fair-reserve default, or None when it has no such flag."""
    import re
    import subprocess
    h = subprocess.run([c.BRIX, "gateway", "--help"], capture_output=True, text=True).stdout
    m = re.search(r"--fair-reserve F.*?\(default: ([0-9.]+)\)", h, re.S)
    return float(m.group(1)) if m else None


def start_fleet(mode, tag, reserve=None):
    """Two engines and a gateway; returns (gateway port, engine ports)."""
    eports = []
    for i in range(ENGINES):
        port = c.free_port()
        p = g.spawn([c.BRIX, "engine-sim", "--port", str(port), "--model", MODEL, "--gpu", "h100",
                     "--time-scale", str(TS), "--max-num-seqs", str(SEQS), "--log-level", "warn"],
                    None, f"fair-{tag}-engine{i}.log")
        PROCS.append(p)
        g.wait_http(f"http://{HOST}:{port}/health")
        eports.append(port)
    extra = ["--routing-strategy", "least-request"]
    if mode == "vtc":
        extra += ["--fairness", "vtc", "--max-inflight-per-pod", str(SEQS),
                  "--queue-size", "100000", "--queue-timeout", f"{int(TIMEOUT * 2)}s"]
        if reserve is not None:
            extra += ["--fair-reserve", str(reserve)]
    p, gport = g.start_gateway(None, eports, workers=2, extra=extra,
                               log_path=f"fair-{tag}-gateway.log")
    PROCS.append(p)
    # every pod healthy (and, with VTC, the full capacity open) before load
    deadline = time.time() + 20
    while True:
        text = c.metrics(gport)
        healthy = c.metric(text, "brix_gateway_pod_healthy") or 0
        cap = c.metric(text, "brix_gateway_fair_capacity")
        if healthy >= ENGINES and (mode != "vtc" or (cap or 0) >= SEQS * ENGINES):
            break
        if time.time() > deadline:
            raise RuntimeError(f"gateway not ready: healthy={healthy} capacity={cap}")
        time.sleep(0.1)
    return gport, eports


# -------------------------------------------------------------- workload --

def make_body(rng, stream_id):
    ptok = rng.randint(200, 500)
    words, n = [f"[{stream_id}-{rng.getrandbits(48):x}]"], 0
    while n < ptok * 4:  # ~4 characters per token
        w = rng.choice(WORDS)
        words.append(w)
        n += len(w) + 1
    return {"model": MODEL, "stream": True, "max_tokens": rng.randint(64, 128), "ignore_eos": True,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": " ".join(words)}]}


def schedule(tenant, rate, seed):
    """Poisson arrival times (wall s from start) and bodies for one tenant."""
    rng = random.Random(f"{seed}-{tenant}")
    out, t = [], 0.0
    while True:
        t += rng.expovariate(rate)
        if t >= DURATION:
            return out
        out.append((t, make_body(rng, f"{tenant}-{len(out)}")))


class Req:
    __slots__ = ("tenant", "planned", "lag", "res", "timed_out")

    def __init__(self, tenant, planned):
        self.tenant, self.planned, self.lag = tenant, planned, 0.0
        self.res, self.timed_out = loadgen.Result(), False


async def one(port, r, body):
    try:
        await asyncio.wait_for(
            loadgen.stream_request(HOST, port, PATH, body, {"user": r.tenant}, r.res), TIMEOUT)
    except asyncio.TimeoutError:
        r.timed_out = True
        r.res.error = r.res.error or "client timeout"
    except asyncio.CancelledError:
        r.res.error = r.res.error or "cancelled at end of run"


async def scrape(port):
    """GET /metrics on our own loop (no threads); None on failure."""
    try:
        rd, wr = await asyncio.wait_for(asyncio.open_connection(HOST, port), 2)
        wr.write(f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n".encode())
        data = await asyncio.wait_for(rd.read(), 2)
        wr.close()
        return data.decode(errors="replace").split("\r\n\r\n", 1)[-1]
    except (OSError, asyncio.TimeoutError):
        return None


async def sampler(gport, eports, samples, stop):
    while not stop.is_set():
        t = time.perf_counter()
        s = {"t": t}
        text = await scrape(gport)
        if text:
            s["gw_queued"] = c.metric(text, "brix_gateway_fair_queued")
            s["gw_inflight"] = c.metric(text, "brix_gateway_fair_inflight")
            s["gw_expired"] = c.metric(text, "brix_gateway_fair_expired_total")
            s["gw_rejected"] = c.metric(text, "brix_gateway_fair_rejected_total")
        waiting = running = 0.0
        for p in eports:
            text = await scrape(p)
            if text:
                waiting += c.metric(text, "vllm:num_requests_waiting") or 0
                running += c.metric(text, "vllm:num_requests_running") or 0
        s["eng_waiting"], s["eng_running"] = waiting, running
        samples.append(s)
        try:
            await asyncio.wait_for(stop.wait(), 1.0)
        except asyncio.TimeoutError:
            pass


async def drive(gport, eports, scheds):
    """Sends every tenant's schedule open-loop; returns (requests, t0, samples)."""
    loop = asyncio.get_running_loop()
    reqs, tasks, samples = [], [], []
    stop = asyncio.Event()
    samp = asyncio.ensure_future(sampler(gport, eports, samples, stop))
    t0 = time.perf_counter() + 0.2

    async def tenant_loop(tenant, sched):
        for at, body in sched:
            delay = t0 + at - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            r = Req(tenant, at)
            r.lag = time.perf_counter() - (t0 + at)
            reqs.append(r)
            tasks.append(loop.create_task(one(gport, r, body)))

    await asyncio.gather(*[tenant_loop(t, s) for t, s in scheds.items()])
    # wait for every light request (bounded by the client timeout), then cancel the rest
    while True:
        light = [tk for tk, r in zip(tasks, reqs) if r.tenant != HEAVY and not tk.done()]
        if not light:
            break
        await asyncio.wait(light)
    await asyncio.sleep(0.5)
    pending = [tk for tk in tasks if not tk.done()]
    for tk in pending:
        tk.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    stop.set()
    await samp
    return reqs, t0, samples, len(pending)


# --------------------------------------------------------------- measure --

pct = c.pct


def ttft_sim(r):
    return r.res.ttft / TS if r.res.ttft is not None else float("inf")


def summarize(reqs, t0, samples, cancelled):
    end = t0 + DURATION
    out = {"tenants": {}, "cancelled_at_end": cancelled,
           "max_send_lag_ms": max((r.lag for r in reqs), default=0) * 1e3}
    groups = {t: [r for r in reqs if r.tenant == t] for t in sorted({r.tenant for r in reqs})}
    groups["lights"] = [r for r in reqs if r.tenant != HEAVY]
    for name, rs in groups.items():
        ttft = [ttft_sim(r) for r in rs]
        statuses = {}
        for r in rs:
            if r.res.error and "cancelled at end" in r.res.error:
                continue
            if r.res.status != 200 or r.res.error:
                k = ("timeout" if r.timed_out else str(r.res.status) if r.res.status != 200
                     else "stream error")
                statuses[k] = statuses.get(k, 0) + 1
        toks = sum(1 for r in rs for e in r.res.events if t0 <= e <= end)
        done = sum(1 for r in rs if r.res.status == 200 and r.res.error is None and r.res.usage)
        out["tenants"][name] = {
            "sent": len(rs), "completed": done,
            "no_first_token": sum(1 for x in ttft if math.isinf(x)),
            "errors": sum(1 for r in rs if r.res.error and "cancelled at end" not in r.res.error),
            "error_samples": sorted({(r.res.error or "")[:160] for r in rs
                                     if r.res.error and "cancelled at end" not in r.res.error})[:3],
            "status": statuses,
            "ttft_p50_s": pct(ttft, 50), "ttft_p90_s": pct(ttft, 90), "ttft_p99_s": pct(ttft, 99),
            "ttft_max_s": max(ttft) if ttft else float("nan"),
            # tokens received inside the arrival window, per simulated second
            "tokens_per_s": toks / (DURATION / TS)}
    out["fleet_tokens_per_s"] = sum(v["tokens_per_s"] for k, v in out["tenants"].items()
                                    if k != "lights")
    last = samples[-1] if samples else {}
    out["gw_expired_total"] = last.get("gw_expired")
    out["gw_rejected_total"] = last.get("gw_rejected")
    win = [s for s in samples if t0 <= s["t"] <= end]
    for k in ("gw_queued", "gw_inflight", "eng_waiting", "eng_running"):
        v = [s[k] for s in win if s.get(k) is not None]
        out[k + "_mean"] = sum(v) / len(v) if v else None
        out[k + "_max"] = max(v) if v else None
    return out


def run(kind, mode, rates, seed, tag, reserve=None):
    """One run on a fresh fleet; kind solo|mixed; reserve: --fair-reserve (vtc)."""
    scheds = {t: schedule(t, rates["light"], seed) for t in LIGHTS}
    if kind == "mixed":
        scheds[HEAVY] = schedule(HEAVY, rates["heavy"], seed)
    label = mode if reserve is None else f"{mode} --fair-reserve {reserve:g}"
    print(f"  {kind}/{label} (seed {seed}, load average {g.loadavg():.2f}) ...", end="", flush=True)
    try:
        gport, eports = start_fleet(mode, tag, reserve)
        cpu0, w0 = g.self_cpu_s(), time.perf_counter()
        reqs, t0, samples, cancelled = asyncio.run(drive(gport, eports, scheds))
        client_cpu = (g.self_cpu_s() - cpu0) / (time.perf_counter() - w0) * 100
    finally:
        stop_all()
    s = summarize(reqs, t0, samples, cancelled)
    # per-request data for the ideal-scheduler estimate (not written to the JSON)
    s["_ends"] = sorted(r.res.events[-1] - t0 for r in reqs if r.res.events)
    s["_starts"] = sorted(r.res.start - t0 for r in reqs if r.res.start)
    s["_light"] = {f"{r.tenant}@{r.planned:.6f}": (r.res.start - t0 if r.res.start else None,
                                                   ttft_sim(r)) for r in reqs if r.tenant != HEAVY}
    s.update({"kind": kind, "mode": mode, "seed": seed, "fair_reserve": reserve, "client_cpu_pct": client_cpu,
              "loadavg": g.loadavg()})
    L = s["tenants"]["lights"]
    line = (f" lights P99 TTFT {L['ttft_p99_s']:.3f}s (p50 {L['ttft_p50_s']:.3f}s, "
            f"{L['completed']}/{L['sent']} done, {L['errors']} err)")
    if HEAVY in s["tenants"]:
        H = s["tenants"][HEAVY]
        line += (f"; heavy {H['tokens_per_s']:.0f} tok/s, P50 TTFT {H['ttft_p50_s']:.2f}s, "
                 f"{H['errors']} err, {cancelled} cancelled")
    print(line + f"; client CPU {client_cpu:.0f}%, max send lag {s['max_send_lag_ms']:.0f} ms",
          flush=True)
    return s


async def closed_loop(port, conc, secs, rng):
    """conc workers back to back for secs; completions and tokens after warm-up."""
    t_end = time.perf_counter() + secs
    warm = time.perf_counter() + min(5.0, secs / 4)
    done, toks = [], [0]

    async def worker(i):
        while time.perf_counter() < t_end:
            res = loadgen.Result()
            try:
                await asyncio.wait_for(loadgen.stream_request(
                    HOST, port, PATH, make_body(rng, f"cap-{i}"), {"user": "cap"}, res),
                    t_end - time.perf_counter() + 1)
            except asyncio.TimeoutError:
                return
            now = time.perf_counter()
            if res.status == 200 and res.usage and warm <= now <= t_end:
                done.append(now)
            toks[0] += sum(1 for e in res.events if warm <= e <= t_end)

    await asyncio.gather(*[worker(i) for i in range(conc)])
    return len(done) / (t_end - warm), toks[0] / (t_end - warm)


def capacity():
    print(f"capacity: closed loop, {3 * SEQS} concurrent per engine, {CAP_SECONDS:.0f} s ...",
          end="", flush=True)
    try:
        gport, _ = start_fleet("none", "capacity")
        rps, tps = asyncio.run(closed_loop(gport, 3 * SEQS * ENGINES, CAP_SECONDS,
                                           random.Random("capacity")))
    finally:
        stop_all()
    print(f" {rps:.1f} req/s wall = {rps * TS:.2f} req/s simulated, {tps * TS:.0f} tok/s simulated",
          flush=True)
    return rps, tps


# ----------------------------------------------------------------- report --

def spread(xs, fmt="{:.2f}"):
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    if not xs:
        return "—"
    med, lo, hi = g.stats(xs)
    f = lambda v: "∞" if math.isinf(v) else fmt.format(v)  # noqa: E731
    return f"{f(med)} ({f(lo)}..{f(hi)})" if len(xs) > 1 else f(med)


def ratio(a, b):
    return a / b if b and not math.isnan(a) else float("nan")


def report(out):
    reps = out["repeats_data"]
    rd = out["reserve_default"]
    vtc_label = "VTC" + ("" if rd is None else f" (--fair-reserve {rd:g}, default)")
    lines = [
        f"Light tenants' TTFT (3 tenants pooled) on a saturated fleet of {ENGINES} engine-sims "
        f"(h100, --max-num-seqs {SEQS}, --time-scale {TS}) behind the brix gateway "
        f"(least-request; VTC: --max-inflight-per-pod {SEQS}). Capacity C = "
        f"{out['capacity_rps'] * TS:.2f} req/s simulated (closed loop). "
        f"Each light tenant offers {LIGHT_FRAC:.0%} of C, the heavy tenant {HEAVY_X:g}x that "
        f"({LIGHT_FRAC * HEAVY_X:.0%} of C); offered {LIGHT_FRAC * (3 + HEAVY_X):.0%} of C. "
        f"{DURATION:.0f} wall s ({DURATION / TS:.0f} simulated s) of Poisson arrivals per run, "
        f"{len(reps)} repeats; median (min..max) over repeats. Times in simulated seconds; "
        "tokens/s = tokens received inside the arrival window per simulated second. "
        "VTC: Sheng et al., \"Fairness in Serving Large Language Models\", OSDI 2024.", "",
        "| run | light P50 TTFT s | light P90 TTFT s | light P99 TTFT s | **P99 / solo P99** | "
        "light done/sent | heavy tok/s | fleet tok/s | heavy P50 TTFT s | errors | "
        "gateway queue (mean) | engine queue (mean) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|"]

    def row(label, runs, solo=None):
        L = [r["tenants"]["lights"] for r in runs]
        H = [r["tenants"].get(HEAVY) for r in runs]
        rat = "—" if solo is None else "**" + spread(
            [ratio(r["tenants"]["lights"]["ttft_p99_s"], s["tenants"]["lights"]["ttft_p99_s"])
             for r, s in zip(runs, solo)]) + "x**"
        errs = sum(t["errors"] for r in runs for n, t in r["tenants"].items() if n != "lights")
        lines.append(
            f"| {label} | {spread([x['ttft_p50_s'] for x in L], '{:.3f}')} | "
            f"{spread([x['ttft_p90_s'] for x in L], '{:.3f}')} | "
            f"{spread([x['ttft_p99_s'] for x in L], '{:.3f}')} | {rat} | "
            f"{sum(x['completed'] for x in L)}/{sum(x['sent'] for x in L)} | "
            f"{spread([h['tokens_per_s'] for h in H if h], '{:.0f}') if any(H) else '—'} | "
            f"{spread([r['fleet_tokens_per_s'] for r in runs], '{:.0f}')} | "
            f"{spread([h['ttft_p50_s'] for h in H if h], '{:.2f}') if any(H) else '—'} | {errs} | "
            f"{spread([r['gw_queued_mean'] for r in runs], '{:.0f}')} | "
            f"{spread([r['eng_waiting_mean'] for r in runs], '{:.0f}')} |")

    solo = [r["solo"] for r in reps]
    row("solo (lights only), no VTC", solo)
    if out.get("solo_vtc"):
        row(f"solo (lights only), {vtc_label}, repeat 1", [out["solo_vtc"]], [solo[0]])
    row("mixed, no VTC", [r["none"] for r in reps], solo)
    row(f"mixed, **{vtc_label}**", [r["vtc"] for r in reps], solo)
    for x in out["sweep"]:
        row(f"mixed, VTC --fair-reserve {x['fair_reserve']:g}, repeat 1", [x], [solo[0]])

    def r99(r, s):
        return ratio(r["tenants"]["lights"]["ttft_p99_s"], s["tenants"]["lights"]["ttft_p99_s"])
    v = [r99(r["vtc"], r["solo"]) for r in reps]
    n = [r99(r["none"], r["solo"]) for r in reps]
    hv = [ratio(r["vtc"]["tenants"][HEAVY]["tokens_per_s"], r["none"]["tenants"][HEAVY]["tokens_per_s"])
          for r in reps]
    fl = [ratio(r["vtc"]["fleet_tokens_per_s"], r["none"]["fleet_tokens_per_s"]) for r in reps]
    met = sum(x <= TARGET for x in v)
    lines += ["", f"**Headline**: {vtc_label}: light P99 TTFT = {spread(v)}x solo (target <= "
              f"{TARGET}x: {'met' if met == len(v) else 'NOT met'} in {met}/{len(v)} repeats); "
              f"without VTC: {spread(n)}x solo. Heavy tenant tokens/s, VTC / no VTC: {spread(hv)}x; "
              f"fleet tokens/s, VTC / no VTC: {spread(fl)}x.", "",
              "Per light tenant, P99 TTFT / the same tenant's solo P99:", "",
              "| tenant | no VTC | " + vtc_label + " |", "|---|---|---|"]
    for t in LIGHTS:
        def tr(mode):
            return spread([ratio(r[mode]["tenants"][t]["ttft_p99_s"],
                                 r["solo"]["tenants"][t]["ttft_p99_s"]) for r in reps])
        lines.append(f"| {t} | {tr('none')}x | {tr('vtc')}x |")
    interval = 1 / (out["capacity_rps"] * TS)
    solo99 = g.stats([r["solo"]["tenants"]["lights"]["ttft_p99_s"] for r in reps])[0]
    lines += ["", f"Reading: with every fleet slot busy, a light request that is not given a free "
              f"slot waits for one to free; requests complete every 1/C = {interval:.3f} s "
              f"(simulated) on average ({'more' if interval > solo99 else 'less'} than the solo "
              f"P99 TTFT, {solo99:.3f} s). Work-conserving estimate (each light request of a VTC "
              "run gets the very next completion's slot whenever the fleet is full, then takes "
              "its solo TTFT; computed from that run's completion times): P99 = "
              f"{spread([r['ideal']['p99_s'] for r in reps], '{:.3f}')} s = "
              f"{spread([r['ideal']['ratio'] for r in reps])}x solo — roughly the best a gateway "
              "scheduler can do while keeping every slot busy and never preempting; only idle "
              "headroom (--fair-reserve) goes below it, paid in throughput."]
    bad = {}
    runs_all = [(m, r[m]) for r in reps for m in ("solo", "none", "vtc")]
    runs_all += [("vtc-reserve", x) for x in out["sweep"]]
    if out.get("solo_vtc"):
        runs_all.append(("solo-vtc", out["solo_vtc"]))
    for m, r in runs_all:
        for t, tv in r["tenants"].items():
            if t != "lights":
                for st, k in tv["status"].items():
                    bad[f"{m} {t} {st}"] = bad.get(f"{m} {t} {st}", 0) + k
    exp = sum((r.get("gw_expired_total") or 0) + (r.get("gw_rejected_total") or 0)
              for _, r in runs_all)
    lines += ["", "Non-200 answers / timeouts (all runs): " +
              (", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "none") +
              f"; VTC queue expired + rejected: {exp:.0f}. Light requests per run: "
              f"{spread([r['solo']['tenants']['lights']['sent'] for r in reps], '{:.0f}')}; "
              "a request with no first token counts as infinite TTFT. Without VTC the engines' "
              "FIFO queue grows for the whole run (offered > capacity), so that ratio grows with "
              "the run length; with VTC the backlog is the heavy tenant's own, in the gateway "
              "(cancelled at the end of the run, once every light request has finished).",
              "", f"Client: max send lag {max(r['max_send_lag_ms'] for _, r in runs_all):.0f} ms, "
              f"CPU {max(r['client_cpu_pct'] for _, r in runs_all):.0f}% of a core at most. "
              f"Run time {out.get('elapsed_s', 0) / 60:.0f} min. Reproduce: "
              "`python3 bench/fairness.py` (knobs in its docstring).",
              "", g.build_line(out["build"])]
    return "\n".join(lines) + "\n"


def ideal(solo, vtc):
    """Estimate of the best a gateway scheduler can do without preempting: each
    light request of the VTC run goes in at once if fewer than capacity requests
    were outstanding when it was sent, else it gets the very next slot that
    frees (the next completion), then takes its solo TTFT. Returns the pooled
    P99 of those TTFTs (simulated s) and its ratio to the solo P99."""
    ends, starts, xs = vtc["_ends"], vtc["_starts"], []
    for key, (start, _) in vtc["_light"].items():
        if start is None or key not in solo["_light"]:
            continue
        i = bisect.bisect_right(ends, start)
        outstanding = bisect.bisect_left(starts, start) - i
        if outstanding < SEQS * ENGINES:
            wait = 0.0
        else:
            wait = (ends[i] - start) / TS if i < len(ends) else float("inf")
        xs.append(solo["_light"][key][1] + wait)
    p99 = pct(xs, 99)
    return {"p50_s": pct(xs, 50), "p99_s": p99, "ratio": ratio(p99, solo["tenants"]["lights"]["ttft_p99_s"])}


def clean(x):
    """JSON without Infinity/NaN: those become null."""
    if isinstance(x, float) and (math.isinf(x) or math.isnan(x)):
        return None
    if isinstance(x, dict):
        return {k: clean(v) for k, v in x.items() if not k.startswith("_")}
    if isinstance(x, list):
        return [clean(v) for v in x]
    return x


def main():
    signal.signal(signal.SIGTERM, on_signal)
    atexit.register(stop_all)
    atexit.register(g.cleanup_tmp)
    os.makedirs(c.RESULTS, exist_ok=True)
    g.raise_nofile(8192)
    build = g.snapshot_brix()
    t_start = time.time()
    cap_rps, cap_tps = capacity()
    rates = {"light": LIGHT_FRAC * cap_rps, "heavy": HEAVY_X * LIGHT_FRAC * cap_rps}
    print(f"rates (wall): light {rates['light']:.2f} req/s each, heavy {rates['heavy']:.2f} req/s",
          flush=True)
    out = {"build": build, "engines": ENGINES, "max_num_seqs": SEQS, "time_scale": TS,
           "duration_wall_s": DURATION, "light_frac": LIGHT_FRAC, "heavy_x": HEAVY_X,
           "capacity_rps": cap_rps, "capacity_tps": cap_tps, "rates_wall": rates,
           "repeats_data": [], "solo_vtc": None, "sweep": [],
           "reserve_default": gateway_reserve_default()}
    for rep in range(REPEATS):
        print(f"repeat {rep + 1}/{REPEATS}", flush=True)
        d = {"solo": run("solo", "none", rates, rep, f"r{rep}-solo")}
        order = ("none", "vtc") if rep % 2 == 0 else ("vtc", "none")
        for mode in order:
            d[mode] = run("mixed", mode, rates, rep, f"r{rep}-{mode}")
        d["ideal"] = ideal(d["solo"], d["vtc"])
        out["repeats_data"].append(d)
        if rep == 0 and SOLO_VTC:
            out["solo_vtc"] = run("solo", "vtc", rates, 0, "r0-solo-vtc")
        if rep == 0 and out["reserve_default"] is not None:
            for rv in SWEEP:
                x = run("mixed", "vtc", rates, 0, f"r0-vtc-reserve{rv:g}", reserve=rv)
                x["ideal"] = ideal(d["solo"], x)
                out["sweep"].append(x)
    out["elapsed_s"] = time.time() - t_start
    md = report(out)
    with open(os.path.join(c.RESULTS, OUT + ".json"), "w") as f:
        json.dump(clean(out), f, indent=1, default=str)
    with open(os.path.join(c.RESULTS, OUT + ".md"), "w") as f:
        f.write(md)
    print()
    print(md)
    print(f"elapsed {out['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
