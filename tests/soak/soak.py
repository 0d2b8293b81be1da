#!/usr/bin/env python3
"""`make soak`: the whole local cluster (`brix up`: controller, gateway, engine-sim replicas)
under mixed traffic for SOAK_SECONDS (default 600) with the ASan+UBSan build, and memory that
must stay flat.

Traffic, all bounded in rate and count (loopback only):
  * streams read to the end (base model and adapters), some with usage;
  * streams the client abandons after a few events (the gateway must cancel upstream);
  * non-streaming chats and completions, embeddings;
  * bad input: malformed JSON, duplicate and escaped keys, unknown models with fresh random
    names (label bounds), engine administration paths (refused by the gateway);
  * adapter churn: `brix apply -f` / `brix delete adapter` over a fixed set of names;
  * SIGHUP to the gateway (config reload) every RELOAD_S seconds.

What must hold:
  * every response has an expected status (no 5xx but the 503s of adapters still loading);
  * every process stays up; Ctrl-C stops everything with exit 0 and no sanitizer report;
  * after the warm-up (the first WARMUP fraction of the run), the RSS of each process stays
    within SOAK_RSS_TOLERANCE (5 %) of its median over the first minute after warm-up,
    compared on the median of the last minute; so does the live heap of the controller and
    the gateway (brix_heap_live_bytes in their /metrics: the counted allocator's exact
    figure), give or take 256 KiB.
ASan's quarantine is kept small (ASAN_OPTIONS quarantine_size_mb=1) so it fills during the
warm-up instead of looking like growth.
"""
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "integration"))
import harness as h  # noqa: E402

h.BRIX = os.path.abspath(h.BRIX)

SECONDS = int(os.environ.get("SOAK_SECONDS", "600"))
WARMUP = float(os.environ.get("SOAK_WARMUP", "0.3"))
TOL = float(os.environ.get("SOAK_RSS_TOLERANCE", "0.05"))
RELOAD_S = float(os.environ.get("SOAK_RELOAD_S", "10"))
SAMPLE_S = 5.0
# ASan keeps freed memory in a quarantine (256 MB by default) to catch use after
# free; it fills at the rate a process frees, which for the controller is a few
# KB/s, so a large one looks like growth for the whole run. 1 MB fills within
# the warm-up in every process (the integration tests keep the default).
ASAN = "detect_leaks=1:quarantine_size_mb=1:malloc_context_size=8"

TMP = tempfile.mkdtemp(prefix="brix-soak-")
ADAPTERS = [f"churn-{i}" for i in range(6)]
for name in ["sql-lora", "chat-lora"] + ADAPTERS:
    os.makedirs(os.path.join(TMP, "adapters", name), exist_ok=True)
    with open(os.path.join(TMP, "adapters", name, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 8}, f)

GW, API = h.free_port(), h.free_port()
STATE = os.path.join(TMP, "state")
CFG = os.path.join(TMP, "soak.yaml")
with open(CFG, "w") as f:
    f.write(f"""
apiVersion: brix.dev/v1alpha1
kind: Cluster
metadata: {{name: soak}}
spec:
  gateway: {{port: 1, args: [--health-interval, 100ms]}}
  controller:
    port: 2
    stateDir: {STATE}
    args: [--reconcile-interval, 200ms, --adapter-idle-ttl, 20s, --unload-drain, 300ms]
---
apiVersion: model.brix.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: llama}}
spec:
  model: llama-3-8b
  replicas: 2
  engine: {{args: [--time-scale, "0.02", --max-model-len, "4096"]}}
  lora: {{maxLoras: 2, maxCpuLoras: 4}}
---
apiVersion: model.aibrix.ai/v1alpha1
kind: ModelAdapter
metadata: {{name: sql-lora}}
spec:
  baseModel: llama-3-8b
  podSelector: {{matchLabels: {{model.aibrix.ai/name: llama-3-8b}}}}
  artifactURL: file://adapters/sql-lora
  replicas: 1
---
apiVersion: model.aibrix.ai/v1alpha1
kind: ModelAdapter
metadata: {{name: chat-lora}}
spec:
  baseModel: llama-3-8b
  podSelector: {{matchLabels: {{model.aibrix.ai/name: llama-3-8b}}}}
  artifactURL: file://adapters/chat-lora
""")

ENV = {"ASAN_OPTIONS": ASAN, "UBSAN_OPTIONS": "print_stacktrace=1"}
UP = h.Proc(["up", "-c", CFG, "--port", str(GW), "--api-port", str(API),
             "--state-dir", STATE], name="up", env=ENV)
stop_at = [0.0]
errors = []
counts = {}
lock = threading.Lock()


def note(kind, ok, detail=""):
    with lock:
        counts[kind] = counts.get(kind, 0) + 1
        if not ok and len(errors) < 50:
            errors.append(f"{kind}: {detail}")


def cli(*args):
    return subprocess.run([h.BRIX] + list(args) + ["--state-dir", STATE], capture_output=True,
                          text=True, timeout=60, cwd=TMP,
                          env=dict(os.environ, BRIX_SERVER=f"http://127.0.0.1:{API}", **ENV))


def children(pid):
    out = []
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = [int(x) for x in f.read().split()]
    except OSError:
        return out
    for k in kids:
        out.append(k)
        out += children(k)
    return out


def name_of(pid):
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            argv = f.read().split(b"\0")
        return argv[1].decode() if len(argv) > 1 else "?"
    except OSError:
        return None


def rss_kb(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def running():
    return time.time() < stop_at[0]


def chat_body(model, stream, max_tokens=None):
    body = {"model": model, "max_tokens": max_tokens or random.randint(4, 40),
            "messages": [{"role": "user", "content": "soak " * random.randint(1, 200)}]}
    if stream:
        body["stream"] = True
        if random.random() < 0.5:
            body["stream_options"] = {"include_usage": True}
    return body


def models():
    return ["llama-3-8b", "sql-lora", "chat-lora"]


def ok_status(st):
    # 503 is what a request for an adapter that is being unloaded/reloaded may see
    return st == 200 or st == 503


def streams():
    while running():
        m = random.choice(models())
        try:
            s = h.Stream(GW, "/v1/chat/completions", chat_body(m, True), timeout=60)
            if s.status != 200:
                note("stream", ok_status(s.status), f"{m} status {s.status}")
                s.close()
                continue
            s.read_to_end(60)
            note("stream", s.ended and s.events and s.events[-1] == "[DONE]", f"{m} incomplete")
            s.close()
        except (AssertionError, OSError) as ex:
            note("stream", False, f"{m}: {ex}")


def aborts():
    while running():
        m = random.choice(models())
        try:
            s = h.Stream(GW, "/v1/chat/completions", chat_body(m, True, 400), timeout=60)
            if s.status == 200:
                s.wait_events(random.randint(1, 3), timeout=30)
            s.close()
            note("abort", ok_status(s.status), f"{m} status {s.status}")
        except (AssertionError, OSError) as ex:
            note("abort", False, f"{m}: {ex}")
        time.sleep(0.05)


def plain():
    while running():
        m = random.choice(models())
        r = random.random()
        try:
            if r < 0.5:
                st, _, b = h.request("POST", GW, "/v1/chat/completions", chat_body(m, False))
            elif r < 0.8:
                st, _, b = h.request("POST", GW, "/v1/completions",
                                     {"model": m, "prompt": "soak " * 20, "max_tokens": 8})
            else:
                st, _, b = h.request("POST", GW, "/v1/embeddings",
                                     {"model": "llama-3-8b", "input": "soak test"})
            note("plain", ok_status(st), f"{m} {st} {b[:200]!r}")
        except OSError as ex:
            note("plain", False, f"{m}: {ex}")


BAD = [
    (b'{"model": "llama-3-8b", "messages": [', {400}),
    (b'{"model":"llama-3-8b","mod\\u0065l":"sql-lora","messages":[]}', {400}),
    (b'{"model":"llama-3-8b","model":"sql-lora","messages":[]}', {400}),
    (b'{"model":"llama-3-8b","max_tokens":1e300,"messages":[]}', {400}),
]


def bad_input():
    while running():
        r = random.random()
        try:
            if r < 0.4:
                body, want = random.choice(BAD)
                st, _, b = h.request("POST", GW, "/v1/chat/completions", raw_body=body,
                                     headers={"content-type": "application/json"})
                note("bad", st in want, f"{body[:60]!r} -> {st}")
            elif r < 0.7:
                name = "nope-%016x" % random.getrandbits(64) + "x" * random.randint(0, 2000)
                st, _, b = h.request("POST", GW, "/v1/chat/completions", chat_body(name, False))
                note("bad", st == 404, f"unknown model -> {st}")
            else:
                st, _, b = h.request("POST", GW, "/v1/unload_lora_adapter",
                                     {"model": "llama-3-8b", "lora_name": "sql-lora"})
                note("bad", st == 404, f"unload through the gateway -> {st}")
        except OSError as ex:
            note("bad", False, str(ex))
        time.sleep(0.02)


def churn():
    i = 0
    while running():
        name = ADAPTERS[i % len(ADAPTERS)]
        i += 1
        path = os.path.join(TMP, f"{name}.yaml")
        with open(path, "w") as f:
            f.write(f"""apiVersion: model.aibrix.ai/v1alpha1
kind: ModelAdapter
metadata: {{name: {name}}}
spec:
  baseModel: llama-3-8b
  podSelector: {{matchLabels: {{model.aibrix.ai/name: llama-3-8b}}}}
  artifactURL: file://adapters/{name}
  replicas: 1
""")
        r = cli("apply", "-f", path)
        note("churn", r.returncode == 0, f"apply {name}: {r.stderr.strip()}")
        deadline = time.time() + 30
        st = None
        while running() and time.time() < deadline:
            st, _, _ = h.request("POST", GW, "/v1/chat/completions", chat_body(name, False),
                                 timeout=40)
            if st == 200:
                break
            time.sleep(0.2)
        note("churn", st == 200 or not running(), f"{name} not served: {st}")
        r = cli("delete", "adapter", name)
        note("churn", r.returncode == 0, f"delete {name}: {r.stderr.strip()}")
        time.sleep(1)


def reloads(gw_pid):
    while running():
        time.sleep(RELOAD_S)
        try:
            os.kill(gw_pid, signal.SIGHUP)
            note("reload", True)
        except OSError as ex:
            note("reload", False, str(ex))


def main():
    h.wait_until(lambda: "brix is up." in UP.text() or UP.p.poll() is not None, 120, "the banner")
    assert "brix is up." in UP.text(), UP.text()[-3000:]
    procs = {}
    for pid in children(UP.p.pid):
        n = name_of(pid)
        if n in ("gateway", "controller", "engine-sim"):
            procs[pid] = f"{n}[{pid}]"
    procs[UP.p.pid] = f"up[{UP.p.pid}]"
    gw = [p for p, n in procs.items() if n.startswith("gateway")]
    assert gw and any(n.startswith("engine-sim") for n in procs.values()), procs
    t0 = time.time()
    stop_at[0] = t0 + SECONDS
    workers = ([threading.Thread(target=streams) for _ in range(3)] +
               [threading.Thread(target=aborts) for _ in range(2)] +
               [threading.Thread(target=plain) for _ in range(2)] +
               [threading.Thread(target=bad_input), threading.Thread(target=churn),
                threading.Thread(target=reloads, args=(gw[0],), daemon=True)])
    for t in workers:
        t.start()
    samples = {p: [] for p in procs}
    heaps = {"controller": [], "gateway": []}
    token = open(os.path.join(STATE, "token")).read().strip()

    def heap(port, hdrs):
        try:
            st, _, b = h.request("GET", port, "/metrics", headers=hdrs, timeout=10)
        except OSError:
            return None
        for line in b.decode().splitlines():
            if line.startswith("brix_heap_live_bytes "):
                return float(line.split()[1])
        return None
    while running():
        time.sleep(SAMPLE_S)
        now = time.time() - t0
        for name, port, hdrs in (("controller", API, {"authorization": f"Bearer {token}"}),
                                 ("gateway", GW, None)):
            v = heap(port, hdrs)
            if v is not None:
                heaps[name].append((now, v))
        for p in procs:
            kb = rss_kb(p)
            if kb is None:
                errors.append(f"{procs[p]} exited during the soak")
                stop_at[0] = 0
                break
            samples[p].append((now, kb))
        print(f"soak {now:6.0f}s " + " ".join(f"{procs[p]}={samples[p][-1][1] // 1024}M"
                                               for p in procs if samples[p]) +
              f" {dict(counts)}", flush=True)
    for t in workers[:-1]:
        t.join(120)
    UP.p.send_signal(signal.SIGINT)
    rc = UP.p.wait(120)
    time.sleep(1)  # children flush their LeakSanitizer reports into the logs
    logs = UP.text()
    logdir = os.path.join(STATE, "logs")
    for fn in sorted(os.listdir(logdir)) if os.path.isdir(logdir) else []:
        with open(os.path.join(logdir, fn), errors="replace") as f:
            logs += f.read()
    bad_lines = [ln for ln in logs.splitlines()
                 if "AddressSanitizer" in ln or "LeakSanitizer" in ln or "runtime error:" in ln]
    report = []
    warm_end = SECONDS * WARMUP
    for p, s in samples.items():
        after = [kb for t, kb in s if t >= warm_end]
        if len(after) < 4:
            continue
        per_min = max(2, int(60 / SAMPLE_S))
        base = int(statistics.median(after[:per_min]))
        last = int(statistics.median(after[-per_min:]))
        growth = (last - base) / base
        report.append((procs[p], base // 1024, last // 1024, growth))
        if growth > TOL:
            errors.append(f"{procs[p]}: RSS grew {growth * 100:.1f}% after warm-up "
                          f"({base // 1024} -> {last // 1024} MiB)")
    # the counted allocator's live bytes: exact, where RSS is blurred by the
    # allocator (and ASan's); per-request arenas make the gateway's move, so
    # a growth counts only past 5 % and 256 KiB
    for name, s in heaps.items():
        after = [v for t, v in s if t >= warm_end]
        if len(after) < 4:
            continue
        per_min = max(2, int(60 / SAMPLE_S))
        base = statistics.median(after[:per_min])
        last = statistics.median(after[-per_min:])
        report.append((f"{name} heap (KiB)", int(base // 1024), int(last // 1024),
                       (last - base) / base if base else 0))
        if last - base > max(TOL * base, 256 * 1024):
            errors.append(f"{name}: live heap grew from {base:.0f} to {last:.0f} bytes")
    print("\nRSS (MiB) and live heap after warm-up (median of first and last minute):")
    for n, b, l, g in report:
        print(f"  {n:24s} {b:6d} -> {l:6d}  {g * 100:+.1f}%")
    print(f"requests: {counts}")
    if rc != 0:
        errors.append(f"brix up exited {rc}")
    if bad_lines:
        errors.append("sanitizer reports:\n" + "\n".join(bad_lines[:20]))
    if errors:
        print("SOAK FAILED:\n" + "\n".join(errors))
        return 1
    print(f"soak passed: {SECONDS}s, {sum(counts.values())} operations")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        if UP.p.poll() is None:
            UP.p.kill()
