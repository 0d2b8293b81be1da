#!/usr/bin/env python3
"""Small non-streaming POSTs through the brix gateway vs nginx and haproxy.

Every proxy forwards a ~1 KB chat-completions body (bench/wrk/post.lua, model
llama-3-8b) to the same fast upstream: one nginx worker answering a fixed
~600-byte OpenAI body (bench/peers/nginx-upstream.conf), which also serves the
/health, /v1/models and /metrics the brix gateway needs. Side by side in one
run, each repeat in a rotated order:

  direct    wrk -> upstream (baseline)
  brix      brix gateway --workers 1 --no-access-log
  brix+log  the same with its default access log on (one line per request)
  brix+mem  brix with a rate-limited user (RPM and TPM checked, usage charged) in memory
  brix+redis the same with users and counters in a redis-server (pinned beside the
            upstream): one EVALSHA for the check and one for the charge per request
  brix-base another brix binary (BRIX_BASELINE_BIN, e.g. the previous release) configured
            like `brix`: before/after comparisons of a change in one run
  nginx     nginx, 1 worker, keep-alive upstream pool (bench/peers/nginx-proxy.conf)
  haproxy   haproxy, 1 thread, http mode, keep-alive, http-reuse always

CPU layout (2 cores): each proxy gets one worker/thread pinned to CPU 1 (all
of its processes/threads: brix's control thread, nginx's master); wrk (1
thread) and the upstream (1 worker) share CPU 0. Two measurements:

  * throughput: wrk -t1 -c64 for THROUGHPUT_S seconds. Requests/s, latency
    p50/p99 under that load, and the proxy's own CPU time per request from
    /proc. A proxy cheaper than ~20 us/request is capped by CPU 0 (wrk +
    upstream), not by itself, so "requests per proxy CPU-second" (= req/s one
    fully busy core would give) is reported too: that is the fair capacity
    comparison when the measured req/s of two proxies hit the same cap.
  * unloaded latency: wrk -t1 -c1 for LATENCY_S seconds, in two layouts:
    "same core" (the proxy re-pinned to CPU 0 beside wrk and the upstream: no
    cross-core wake-ups, so the added latency is the proxy's own processing)
    and "own core" (proxy on CPU 1: adds four cross-core wake-ups of an idle
    vCPU per request, which on this KVM guest costs ~150 us whatever the
    proxy). Added latency = proxy - direct, paired within each repeat.

The machine is shared: CPU time not used by our processes ("foreign") is
measured from /proc/stat for every sample, and a sample is retried (up to
RETRIES times, keeping the quietest) when it exceeds FOREIGN_MAX % of a core.
Writes bench/results/gateway_proxy.{json,md}.
"""
import json
import os
import shutil
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import common as c  # noqa: E402
import gw_common as g  # noqa: E402

REPEATS = int(os.environ.get("PROXY_REPEATS", "3"))
THROUGHPUT_S = int(os.environ.get("PROXY_THROUGHPUT_S", "10"))
LATENCY_S = int(os.environ.get("PROXY_LATENCY_S", "5"))
CONNS = int(os.environ.get("PROXY_CONNS", "64"))
FOREIGN_MAX = float(os.environ.get("PROXY_FOREIGN_MAX", "10"))
RETRIES = int(os.environ.get("PROXY_RETRIES", "5"))
BASELINE_BIN = os.environ.get("BRIX_BASELINE_BIN")
VARIANTS = os.environ.get("PROXY_VARIANTS",
                          "direct,brix,brix+log,brix+mem,brix+redis,nginx,haproxy"
                          + (",brix-base" if BASELINE_BIN else "")).split(",")
# every request carries `user: bench` (post.lua); this user's limits are never reached
BENCH_USER = "bench:rpm=1000000000,tpm=1000000000000"
PROXY_CPU, CLIENT_CPU = "1", "0"
LUA = os.path.join(g.WRK_DIR, "post.lua")
PATH = "/v1/chat/completions"


def pin(pid, cpus):
    for q in g.tree_pids(pid):
        subprocess.run(["taskset", "-a", "-p", "-c", cpus, str(q)], capture_output=True, check=False)


def wrk_once(port, conns, secs, watched):
    """One wrk run pinned to CLIENT_CPU. `watched` maps a name to a pid whose
    process tree's CPU time is measured over the run."""
    cpu0 = {k: g.tree_cpu_s(p) for k, p in watched.items()}
    u0, t0 = g.cpu_busy(), time.monotonic()
    p = subprocess.Popen(["taskset", "-c", CLIENT_CPU, "wrk", "-t1", f"-c{conns}", f"-d{secs}s",
                          "--timeout", "5s", "-s", LUA, f"http://127.0.0.1:{port}{PATH}"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode()
    _, _, ru = os.wait4(p.pid, 0)
    p.wait()
    u1, t1 = g.cpu_busy(), time.monotonic()
    line = [x for x in out.splitlines() if x.startswith("{")]
    if not line:
        raise RuntimeError("wrk failed: " + out)
    r = json.loads(line[-1])
    cpu = {k: g.tree_cpu_s(pid) - cpu0[k] for k, pid in watched.items()}
    wrk_cpu = ru.ru_utime + ru.ru_stime
    ours = sum(cpu.values()) + wrk_cpu
    r["rps"] = r["requests"] / (r["duration_us"] / 1e6)
    r["errors"] = sum(r[k] for k in ("err_connect", "err_read", "err_write", "err_status",
                                     "err_timeout"))
    r["cpu_s"] = cpu
    r["wrk_cpu_s"] = wrk_cpu
    r["cpu_util"] = g.cpu_util(u0, u1)
    r["foreign_pct"] = g.foreign_pct(u0, u1, t1 - t0, ours)
    return r


def wrk_run(port, conns, secs, watched):
    """wrk_once, retried while other tenants of the machine use CPU."""
    best = None
    for attempt in range(RETRIES + 1):
        r = wrk_once(port, conns, secs, watched)
        r["attempt"] = attempt
        if best is None or r["foreign_pct"] < best["foreign_pct"]:
            best = r
        if r["foreign_pct"] <= FOREIGN_MAX:
            break
        print(f"    (foreign CPU {r['foreign_pct']:.0f}% of a core: retrying)", flush=True)
    return best


REDIS_PID = None  # brix+redis's redis-server: its CPU is ours, not another tenant's


def measure(name, proc, port, up_pid):
    watched = {"upstream": up_pid}
    if name == "brix+redis" and REDIS_PID:
        watched["redis"] = REDIS_PID
    if proc is not None:
        watched["proxy"] = proc.pid
    wrk_once(port, CONNS, 2, watched)  # warm the pools
    t = wrk_run(port, CONNS, THROUGHPUT_S, watched)
    if proc is not None:
        t["proxy_us_per_req"] = t["cpu_s"]["proxy"] / max(1, t["requests"]) * 1e6
        t["rps_per_proxy_core"] = t["requests"] / max(1e-9, t["cpu_s"]["proxy"])
    res = {"throughput": t}
    layouts = [("own_core", None), ("same_core", CLIENT_CPU)] if proc else [("same_core", None)]
    for lname, cpus in layouts:
        if cpus:
            pin(proc.pid, cpus)
        try:
            wrk_once(port, 1, 1, watched)
            res["lat_" + lname] = wrk_run(port, 1, LATENCY_S, watched)
        finally:
            if cpus:
                pin(proc.pid, PROXY_CPU)
    if proc is None:
        res["lat_own_core"] = res["lat_same_core"]
    tp = res["throughput"]
    print(f"  {name:9s} c{CONNS}: {tp['rps']:8.0f} req/s p50 {tp['lat_p50_us']} p99 "
          f"{tp['lat_p99_us']} us, proxy {tp.get('proxy_us_per_req', 0):.1f} us CPU/req, "
          f"util {tp['cpu_util']}, foreign {tp['foreign_pct']:.0f}% | c1 own p50/p99 "
          f"{res['lat_own_core']['lat_p50_us']}/{res['lat_own_core']['lat_p99_us']} same "
          f"{res['lat_same_core']['lat_p50_us']}/{res['lat_same_core']['lat_p99_us']} us",
          flush=True)
    return res


def versions():
    def first(cmd):
        r = subprocess.run(cmd, capture_output=True, text=True)
        return (r.stdout + r.stderr).strip().splitlines()[0]
    return {"nginx": first(["nginx", "-v"]), "haproxy": first(["haproxy", "-v"]),
            "wrk": first(["wrk", "-v"]).split("Copyright")[0].strip()}


def main():
    build = g.snapshot_brix()
    os.makedirs(c.RESULTS, exist_ok=True)
    g.raise_nofile(4096)
    procs = []
    runs = []
    try:
        up, up_port = g.start_upstream_nginx(CLIENT_CPU)
        procs.append(up)
        targets = {"direct": (None, up_port)}
        for v in VARIANTS:
            if v == "brix":
                p, port = g.start_gateway(PROXY_CPU, [up_port], workers=1)
            elif v == "brix-base":
                base = os.path.join(g.TMP, "brix-base")
                shutil.copy2(BASELINE_BIN, base)
                build["baseline"] = subprocess.run([base, "--version"], capture_output=True,
                                                   text=True).stdout.strip()
                p, port = g.start_gateway(PROXY_CPU, [up_port], workers=1, binary=base)
            elif v == "brix+log":
                p, port = g.start_gateway(PROXY_CPU, [up_port], workers=1, access_log=True,
                                          log_path=os.path.join(g.TMP, "brix-access.log"))
            elif v == "brix+mem":
                p, port = g.start_gateway(PROXY_CPU, [up_port], workers=1,
                                          extra=["--user", BENCH_USER])
            elif v == "brix+redis":
                rport = c.free_port()
                rs = subprocess.Popen(["taskset", "-c", CLIENT_CPU, "redis-server", "--port",
                                       str(rport), "--bind", "127.0.0.1", "--save", "",
                                       "--appendonly", "no"], stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL)
                procs.append(rs)
                global REDIS_PID
                REDIS_PID = rs.pid
                time.sleep(0.5)
                p, port = g.start_gateway(PROXY_CPU, [up_port], workers=1,
                                          extra=["--user", BENCH_USER, "--redis-url",
                                                 f"redis://127.0.0.1:{rport}"])
            elif v == "nginx":
                p, port = g.start_nginx_proxy(PROXY_CPU, up_port, buffering=True)
            elif v == "haproxy":
                p, port = g.start_haproxy(PROXY_CPU, up_port, no_delay=False)
            else:
                continue
            procs.append(p)
            targets[v] = (p, port)
        for rep in range(REPEATS):
            order = VARIANTS[rep % len(VARIANTS):] + VARIANTS[:rep % len(VARIANTS)]
            print(f"repeat {rep + 1}/{REPEATS} (load average {g.loadavg():.2f})", flush=True)
            run = {"rep": rep, "loadavg": g.loadavg()}
            for v in order:
                p, port = targets[v]
                run[v] = measure(v, p, port, up.pid)
            runs.append(run)
    finally:
        for p in reversed(procs):
            g.stop(p)
        g.cleanup_tmp()
    out = {"build": build, "repeats": REPEATS, "conns": CONNS, "throughput_s": THROUGHPUT_S,
           "latency_s": LATENCY_S, "variants": VARIANTS, "versions": versions(),
           "body_bytes": 1005, "runs": runs}
    with open(os.path.join(c.RESULTS, "gateway_proxy.json"), "w") as f:
        json.dump(out, f, indent=1)
    md = report(out)
    with open(os.path.join(c.RESULTS, "gateway_proxy.md"), "w") as f:
        f.write(md)
    print(md)


LABEL = {"direct": "direct (baseline)", "brix": "**brix gateway**",
         "brix-base": "brix gateway, baseline build (BRIX_BASELINE_BIN)",
         "brix+mem": "brix, RPM+TPM limits in memory",
         "brix+redis": "brix, RPM+TPM limits in Redis",
         "brix+log": "brix gateway, access log on", "nginx": "nginx", "haproxy": "haproxy"}


def report(out):
    runs, variants = out["runs"], out["variants"]
    S = g.fmt_spread

    def col(v, f):
        return [f(r[v]) for r in runs]

    lines = [
        f"{out['repeats']} repeats, variants interleaved in a rotated order; median (min..max). "
        f"Body {out['body_bytes']} B POST, answer 610 B. Proxies: 1 worker each on CPU 1; wrk "
        f"(1 thread) and the upstream nginx (1 worker) on CPU 0. "
        f"{out['versions']['nginx']}, {out['versions']['haproxy']}, {out['versions']['wrk']}.",
        "",
        f"**Throughput**, wrk -t1 -c{out['conns']} -d{out['throughput_s']}s "
        "(latency here is under full load):",
        "",
        "| path | req/s | p50 µs | p99 µs | proxy CPU µs/req | req/s per proxy core | "
        "errors | CPU0 / CPU1 busy % |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in variants:
        tp = lambda k: col(v, lambda m: m["throughput"][k])  # noqa: E731
        per = ("—", "—") if v == "direct" else (
            S(tp("proxy_us_per_req"), "{:.1f}"), S(tp("rps_per_proxy_core")))
        util = (S(col(v, lambda m: m["throughput"]["cpu_util"]["cpu0"])) + " / "
                + S(col(v, lambda m: m["throughput"]["cpu_util"]["cpu1"])))
        lines.append(f"| {LABEL[v]} | {S(tp('rps'))} | {S(tp('lat_p50_us'))} | "
                     f"{S(tp('lat_p99_us'))} | {per[0]} | {per[1]} | {sum(tp('errors'))} | "
                     f"{util} |")
    def base(lay, k):  # the direct path's median over repeats: one noisy sample cannot skew it
        return g.stats([r["direct"][lay][k] for r in runs])[0]

    lines += ["", "**Unloaded latency**, wrk -t1 -c1 -d%ds; added = proxy − the direct path's "
              "median:" % out["latency_s"], "",
              "| path | same core p50 µs | p99 µs | added p50 µs | added p99 µs | own core p50 µs "
              "| p99 µs | added p50 µs | added p99 µs |",
              "|---|---|---|---|---|---|---|---|---|"]
    for v in variants:
        cells = []
        for lay in ("lat_same_core", "lat_own_core"):
            p50 = col(v, lambda m: m[lay]["lat_p50_us"])
            p99 = col(v, lambda m: m[lay]["lat_p99_us"])
            if v == "direct":
                cells += [S(p50), S(p99), "—", "—"]
            else:
                a50 = [x - base(lay, "lat_p50_us") for x in p50]
                a99 = [x - base(lay, "lat_p99_us") for x in p99]
                cells += [S(p50), S(p99), S(a50), S(a99)]
        lines.append(f"| {LABEL[v]} | " + " | ".join(cells) + " |")

    def ratio(a, b, f):
        return [f(r[a]) / f(r[b]) for r in runs if a in r and b in r]

    rps = lambda m: m["throughput"]["rps"]  # noqa: E731
    eff = lambda m: m["throughput"]["rps_per_proxy_core"]  # noqa: E731
    lines += ["", "**Ratios** (paired per repeat):", ""]
    for peer in ("nginx", "haproxy"):
        if "brix" in variants and peer in variants:
            lines.append(f"- brix / {peer}: measured req/s {S(ratio('brix', peer, rps), '{:.2f}')}×, "
                         f"req/s per proxy core {S(ratio('brix', peer, eff), '{:.2f}')}×")
    if "brix" in variants and "brix-base" in variants:
        lines.append(f"- brix / baseline build ({out['build'].get('baseline', '?')}): req/s per proxy "
                     f"core {S(ratio('brix', 'brix-base', eff), '{:.2f}')}×, measured req/s "
                     f"{S(ratio('brix', 'brix-base', rps), '{:.2f}')}×")
    if "brix" in variants and "brix+log" in variants:
        lines.append(f"- brix with access log / without: req/s "
                     f"{S(ratio('brix+log', 'brix', rps), '{:.2f}')}×")
    for v in ("brix+mem", "brix+redis"):
        if "brix" in variants and v in variants:
            add = [r[v]["lat_same_core"]["lat_p50_us"] - r["brix"]["lat_same_core"]["lat_p50_us"]
                   for r in runs]
            lines.append(f"- {v} − brix, unloaded p50 (same core): {S(add, '{:.0f}')} µs added by "
                         f"the limit check; req/s {S(ratio(v, 'brix', rps), '{:.2f}')}× "
                         "(target, issue 6: ≤ 50 µs p50 for Redis on loopback)")
    fmax = max(max(r[v][k]["foreign_pct"] for v in variants for k in ("throughput", "lat_own_core",
                                                                        "lat_same_core"))
               for r in runs)
    if "brix" in variants and "nginx" in variants:
        thr = g.stats(ratio("brix", "nginx", eff))[0]
        a50 = (g.stats([r["brix"]["lat_same_core"]["lat_p50_us"] for r in runs])[0]
               - base("lat_same_core", "lat_p50_us"))
        a99 = (g.stats([r["brix"]["lat_same_core"]["lat_p99_us"] for r in runs])[0]
               - base("lat_same_core", "lat_p99_us"))
        lines += ["", "Target (issue 4): brix throughput ≥ 1.0× nginx; added latency p50 ≤ 50 µs, "
                  "p99 ≤ 300 µs. This run: "
                  f"{thr:.2f}× nginx per proxy core ({'meets' if thr >= 1.0 else 'FALLS SHORT'}); "
                  f"added p50 {a50:.0f} µs ({'meets' if a50 <= 50 else 'FALLS SHORT'}), "
                  f"added p99 {a99:.0f} µs ({'meets' if a99 <= 300 else 'FALLS SHORT'}) "
                  "(same-core layout)."]
    lines += ["", f"Other tenants' CPU during the samples kept: at most {fmax:.0f}% of a core "
              f"(samples above {FOREIGN_MAX:.0f}% were re-run up to {RETRIES} times). "
              "Reproduce: `python3 bench/gateway_proxy.py` (`PROXY_REPEATS`, `PROXY_THROUGHPUT_S`, "
              "`PROXY_LATENCY_S`, `PROXY_CONNS`, `PROXY_VARIANTS`)."]
    if "build" in out:
        lines += ["", g.build_line(out["build"])]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
