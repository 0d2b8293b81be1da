"""engine-sim scheduler and lifecycle: continuous-batching limits seen through
/metrics (--max-num-seqs, --max-num-batched-tokens, chunked prefill),
preemption with recompute, --startup-delay, SIGTERM draining, and the GPU
profile's effect on simulated latency."""
import json
import os
import re
import signal
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402


def complete(port, prompt, max_tokens, timeout=120, **kw):
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    body.update(kw)
    st, _, j, raw = h.post(port, "/v1/completions", body, timeout=timeout)
    assert st == 200, raw
    return j


def in_threads(fns):
    """Runs the callables at once; returns (threads, results list filled on
    completion; an exception raised by a callable takes its result's place)."""
    res = [None] * len(fns)

    def run(i, f):
        try:
            res[i] = f()
        except Exception as ex:  # reported by the caller's checks on res
            res[i] = ex

    ts = [threading.Thread(target=run, args=(i, f)) for i, f in enumerate(fns)]
    for t in ts:
        t.start()
    return ts, res


def gauges(port):
    t = h.metrics(port)
    return (h.metric_value(t, "vllm:num_requests_running"),
            h.metric_value(t, "vllm:num_requests_waiting"), t)


def stream_open(port, body):
    """Starts a streaming completion on a raw socket; returns the socket once
    the first data event arrived, and the bytes read so far."""
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    data = json.dumps(dict(body, stream=True))
    s.sendall((f"POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json\r\n"
               f"content-length: {len(data)}\r\n\r\n{data}").encode())
    got = b""
    while b"data: " not in got:
        b = s.recv(65536)
        assert b, f"connection closed before the first event: {got!r}"
        got += b
    return s, got


def read_all(s):
    got = b""
    while True:
        try:
            b = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not b:
            break
        got += b
    s.close()
    return got


def sse_events(raw):
    """Data payloads of a chunked SSE response (chunk framing removed)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        if not size_line:
            break
        n = int(size_line.split(b";")[0], 16)
        if n == 0:
            break
        out += rest[:n]
        rest = rest[n + 2:]
    evs = []
    for block in out.decode().split("\n\n"):
        if block.startswith("data: "):
            p = block[6:]
            evs.append(p if p == "[DONE]" else json.loads(p))
    return head, evs


@h.check("--max-num-seqs 2: 5 concurrent requests run 2 at a time (running 2, waiting 3)")
def max_num_seqs():
    e = h.engine(["--max-num-seqs", "2", "--time-scale", "0.2"])
    try:
        fns = [lambda i=i: complete(e.port, f"batch limit request {i}", 150) for i in range(5)]
        ts, res = in_threads(fns)
        seen = []
        while any(t.is_alive() for t in ts):
            r, w, _ = gauges(e.port)
            seen.append((r, w))
            time.sleep(0.005)
        for t in ts:
            t.join()
        for j in res:
            assert isinstance(j, dict), j
            assert j["usage"]["completion_tokens"] == 150, j
            assert j["choices"][0]["finish_reason"] == "length", j
        assert max(r for r, _ in seen) <= 2, f"more than 2 running: {max(seen)}"
        assert (2, 3) in seen, f"never saw running=2 waiting=3: {sorted(set(seen))}"
        assert all(r + w <= 5 for r, w in seen), seen
        assert gauges(e.port)[:2] == (0, 0)
    finally:
        e.stop()


@h.check("preemption: tiny KV cache preempts, every request still returns the text it gets alone")
def preemption():
    args = ["--max-model-len", "256", "--num-gpu-blocks-override", "20", "--block-size", "16"]
    e = h.engine(args)
    try:
        prompts = [" ".join(f"r{i}x{k}" for k in range(24)) for i in range(6)]
        for p in prompts:
            st, _, j, _ = h.post(e.port, "/tokenize", {"prompt": p})
            assert 90 <= j["count"] <= 110, j["count"]
        ts, res = in_threads([lambda p=p: complete(e.port, p, 120) for p in prompts])
        usage_max = 0
        while any(t.is_alive() for t in ts):
            usage_max = max(usage_max, h.metric_value(h.metrics(e.port), "vllm:kv_cache_usage_perc"))
            time.sleep(0.01)
        for t in ts:
            t.join()
        text = h.metrics(e.port)
        pre = h.metric_value(text, "vllm:num_preemptions_total")
        assert pre > 0, "no preemption with 6 x ~220 tokens in a 320-token cache"
        assert usage_max <= 1.0, usage_max
        for j in res:
            assert isinstance(j, dict), j
            assert j["usage"]["completion_tokens"] == 120, j
            assert j["choices"][0]["finish_reason"] == "length", j
        # counters are per request, not per (re)computation
        assert h.metric_value(text, "vllm:generation_tokens_total") == 6 * 120
        assert h.metric_value(text, "vllm:prompt_tokens_total") == \
            sum(j["usage"]["prompt_tokens"] for j in res)
        assert h.metric_value(text, "vllm:request_success_total", {"finished_reason": "length"}) == 6
        assert h.metric_value(text, "vllm:time_to_first_token_seconds_count") == 6
    finally:
        e.stop()
    # the same requests, one at a time on a fresh engine: identical text
    e = h.engine(args)
    try:
        for p, j in zip(prompts, res):
            alone = complete(e.port, p, 120)
            assert alone["choices"][0]["text"] == j["choices"][0]["text"], \
                "recompute after preemption changed the output"
        assert h.metric_value(h.metrics(e.port), "vllm:num_preemptions_total") == 0
    finally:
        e.stop()


def iteration_buckets(text):
    """{le: cumulative count} of vllm:iteration_tokens_total."""
    out = {}
    for line in text.splitlines():
        if line.startswith("vllm:iteration_tokens_total_bucket{"):
            le = re.search(r'le="([^"]*)"', line).group(1)
            out[le] = float(line.split()[-1])
    return out


PROMPT_3000 = " ".join(f"c{i}" for i in range(1333))  # 3000 tokens


@h.check("chunked prefill: a 3000-token prompt with --max-num-batched-tokens 512 runs in 512-token steps")
def chunked_prefill():
    e = h.engine(["--max-num-batched-tokens", "512"])
    try:
        st, _, j, _ = h.post(e.port, "/tokenize", {"prompt": PROMPT_3000})
        n = j["count"]
        assert 2900 < n < 3100, n
        j = complete(e.port, PROMPT_3000, 5)
        assert j["usage"] == {"prompt_tokens": n, "completion_tokens": 5, "total_tokens": n + 5,
                              "prompt_tokens_details": None}, j
        b = iteration_buckets(h.metrics(e.port))
        chunks = -(-n // 512)
        assert b["512.0"] == b["+Inf"], f"a step scheduled more than 512 tokens: {b}"
        assert b["+Inf"] == chunks + 4, b             # prefill chunks + 4 decode steps
        assert b["1.0"] == 4, b                        # decodes are 1 token each
        assert b["512.0"] - b["256.0"] == chunks, b    # every chunk is > 256 tokens here
        assert h.metric_value(h.metrics(e.port), "vllm:iteration_tokens_total_sum") == n + 4
        # several long prompts at once share the same 512-token budget per step
        prompts = [" ".join(f"s{i}y{k}" for k in range(200)) for i in range(4)]
        ts, res = in_threads([lambda p=p: complete(e.port, p, 20) for p in prompts])
        for t in ts:
            t.join()
        assert all(isinstance(j, dict) and j["usage"]["completion_tokens"] == 20 for j in res), res
        total = sum(j["usage"]["prompt_tokens"] for j in res)
        assert total > 4 * 512, total
        b = iteration_buckets(h.metrics(e.port))
        assert b["512.0"] == b["+Inf"], f"a step scheduled more than 512 tokens: {b}"
        assert b["+Inf"] - (chunks + 4) >= -(-total // 512), b
    finally:
        e.stop()


@h.check("--no-enable-chunked-prefill raises max-num-batched-tokens to max-model-len; one step")
def no_chunked_prefill():
    e = h.engine(["--no-enable-chunked-prefill", "--max-num-batched-tokens", "512",
                  "--max-model-len", "4096"])
    try:
        j = complete(e.port, PROMPT_3000, 3)
        n = j["usage"]["prompt_tokens"]
        b = iteration_buckets(h.metrics(e.port))
        assert b["2048.0"] == 2 and b["4096.0"] == 3 == b["+Inf"], \
            f"the prompt was not prefilled in a single step of {n} tokens: {b}"
        assert "max-num-batched-tokens 4096" in e.text(), e.text()
    finally:
        e.stop()


@h.check("--startup-delay: /health 503 and completions 503 while loading, then 200")
def startup_delay():
    # 40 simulated seconds at --time-scale 0.05 = 2 s of wall time
    t_spawn = time.time()
    e = h.engine(["--startup-delay", "40"], ready=False)
    try:
        deadline = time.time() + 20
        while True:
            try:
                st, _, _ = h.request("GET", e.port, "/health", timeout=2)
                break
            except OSError:
                assert time.time() < deadline and e.p.poll() is None, e.text()
                time.sleep(0.02)
        t_first = time.time()
        assert st == 503, f"/health {st} during --startup-delay"
        st, _, j, raw = h.post(e.port, "/v1/completions", {"prompt": "too early", "max_tokens": 2})
        assert st == 503, raw
        assert j["error"]["code"] == 503, j
        # /metrics answers while loading
        assert h.request("GET", e.port, "/metrics")[0] == 200
        e.wait_http(e.port, "/health", timeout=20)
        # the delay is simulated time: ready no earlier than 40 s x 0.05 after
        # the process started (an unscaled delay would miss the 20 s above)
        assert time.time() - t_spawn >= 2.0, "ready before 40 simulated s had passed"
        assert time.time() - t_first < 15
        complete(e.port, "now ready", 2)
    finally:
        e.stop()


def first_200(e, deadline_s):
    """Wall time at which /health first answers 200, or None."""
    end = time.time() + deadline_s
    while time.time() < end:
        try:
            if h.request("GET", e.port, "/health", timeout=2)[0] == 200:
                return time.time()
        except OSError:
            pass
        assert e.p.poll() is None, e.text()
        time.sleep(0.02)
    return None


@h.check("--startup-delay auto: the GPU profile's load model, by model size, scaled by "
         "--time-scale; bad values refused")
def startup_delay_auto():
    # 8B (the model name's size tag): 64 s init + 14.9 GiB / 0.83 GiB/s = 82 s;
    # at --time-scale 0.02 that is 1.64 s of wall time
    t_spawn = time.time()
    e = h.engine(["--startup-delay", "auto", "--model", "llama-3-8b", "--time-scale", "0.02"],
                 ready=False)
    try:
        t = first_200(e, 30)
        assert t is not None, e.text()
        assert t - t_spawn >= 1.6, f"8B ready after {t - t_spawn:.2f} s of wall, before 82 x 0.02"
        m = re.search(r"startup-delay auto: ([0-9.]+) simulated s \(([0-9.]+) GiB", e.text())
        assert m and 80 < float(m.group(1)) < 84 and 14 < float(m.group(2)) < 16, e.text()
    finally:
        e.stop()
    # 70B: 64 + 130.4 / 0.83 = 221 simulated s; the same flags scale it to 1.1 s
    # at 0.005 (a size-blind "auto" would say 82 s = 0.41 s and fail below)
    t_spawn = time.time()
    e = h.engine(["--startup-delay", "auto", "--model", "Meta-Llama-3.1-70B-Instruct",
                  "--time-scale", "0.005"], ready=False)
    try:
        t = first_200(e, 30)
        assert t is not None, e.text()
        assert t - t_spawn >= 1.1, f"70B ready after {t - t_spawn:.2f} s of wall"
        m = re.search(r"startup-delay auto: ([0-9.]+) simulated s", e.text())
        assert m and 215 < float(m.group(1)) < 228, e.text()
    finally:
        e.stop()
    # an explicit weight size wins over the name; the load model comes from
    # the profile (--gpu-profiles), whose start-up fields are optional
    base = ("    memory_gib: 80\n    price_per_hour: 1\n    prefill_per_token: 1e-5\n"
            "    prefill_base: 0.001\n    prefill_min: 0.001\n    decode_per_ctx_token: 1e-7\n"
            "    decode_base: 0.001\n    decode_per_seq: 1e-5\n    kv_cache_tokens: 65536\n"
            "    lora_load_seconds: 0.01\n    lora_swap_seconds: 0.001\n"
            "    max_num_seqs: 64\n    max_num_batched_tokens: 2048\n")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("profiles:\n  fast:\n" + base + "    load_gib_per_s: 2\n"
                "    engine_init_seconds: 10\n  old:\n" + base)
        path = f.name
    try:
        for gpu, want in (("fast", 10 + 83 / 2), ("old", 64 + 83 / 0.83)):
            e = h.engine(["--startup-delay", "auto", "--model-weights-gib", "83", "--gpu-profiles",
                          path, "--gpu", gpu, "--time-scale", "0.001"])
            try:
                m = re.search(r"startup-delay auto: ([0-9.]+) simulated s", e.text())
                assert m and abs(float(m.group(1)) - want) < 0.5, (gpu, want, e.text())
            finally:
                e.stop()
    finally:
        os.unlink(path)
    for bad in ("soon", "-1", "1e9"):
        p = h.Proc(["engine-sim", "--port", "0", "--startup-delay", bad])
        rc = p.p.wait(timeout=20)
        assert rc == 2 and "--startup-delay" in p.text(), (bad, rc, p.text())


@h.check("SIGTERM during a stream: the stream completes, new connections are refused, exit 0")
def sigterm_inflight():
    e = h.engine(["--time-scale", "0.5"])
    try:
        s, first = stream_open(e.port, {"prompt": "drain me", "max_tokens": 120,
                                        "ignore_eos": True})
        e.p.send_signal(signal.SIGTERM)
        time.sleep(0.2)
        assert e.p.poll() is None, "exited with a stream in flight"
        refused = False
        try:
            c = socket.create_connection(("127.0.0.1", e.port), timeout=2)
            c.close()
        except ConnectionRefusedError:
            refused = True
        assert refused, "a new connection was accepted while draining"
        raw = first + read_all(s)
        head, evs = sse_events(raw)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert evs and evs[-1] == "[DONE]", f"stream cut: {raw[-300:]!r}"
        assert evs[-2]["choices"][0]["finish_reason"] == "length", evs[-2]
        text = "".join(ev["choices"][0]["text"] for ev in evs[:-1])
        assert text, evs
        e.p.wait(15)
        assert e.p.returncode == 0, (e.p.returncode, e.text()[-2000:])
    finally:
        e.stop()


@h.check("SIGTERM on an idle engine exits 0 promptly")
def sigterm_idle():
    e = h.engine([])
    t0 = time.time()
    e.p.send_signal(signal.SIGTERM)
    e.p.wait(10)
    assert e.p.returncode == 0, e.text()
    assert time.time() - t0 < 5, "idle engine took long to stop"
    e.stop()


@h.check("a second SIGTERM closes at once, cutting the in-flight stream")
def sigterm_twice():
    e = h.engine(["--time-scale", "1"])
    e.expect_error(r"second signal")
    try:
        s, first = stream_open(e.port, {"prompt": "endless", "max_tokens": 3000,
                                        "ignore_eos": True})
        e.p.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert e.p.poll() is None, "exited on the first SIGTERM with a stream in flight"
        e.p.send_signal(signal.SIGTERM)
        e.p.wait(10)
        assert e.p.returncode == 0, (e.p.returncode, e.text()[-2000:])
        raw = first + read_all(s)
        _, evs = sse_events(raw)
        assert "[DONE]" not in evs, "a 3000-token stream finished instead of being cut"
    finally:
        if e.p.poll() is None:
            e.p.kill()
        e.stop(want_rc=None)


@h.check("--shutdown-timeout: a single SIGTERM closes at the deadline even with a stream open")
def shutdown_timeout():
    e = h.engine(["--time-scale", "1", "--shutdown-timeout", "1s"])
    try:
        s, first = stream_open(e.port, {"prompt": "too long to drain", "max_tokens": 3000,
                                        "ignore_eos": True})
        t0 = time.time()
        e.p.send_signal(signal.SIGTERM)
        try:
            e.p.wait(8)
        except Exception:
            pass
        alive = e.p.poll() is None
        if alive:
            e.p.send_signal(signal.SIGTERM)  # second signal: force it, keep the test short
            e.p.wait(10)
        s.close()
        assert not alive, "still running 8 s after SIGTERM with --shutdown-timeout 1s"
        assert time.time() - t0 >= 0.9, "closed before the shutdown timeout"
        assert e.p.returncode == 0, e.p.returncode
    finally:
        if e.p.poll() is None:
            e.p.kill()
        e.stop(want_rc=None)


@h.check("--gpu h100 vs --gpu cpu: the same request's simulated e2e latency is far lower on h100")
def gpu_profiles():
    prompt = " ".join(f"g{i}" for i in range(250))
    e2e = {}
    for gpu in ("h100", "cpu"):
        e = h.engine(["--gpu", gpu])
        try:
            j = complete(e.port, prompt, 50)
            assert j["usage"]["completion_tokens"] == 50, j
            t = h.metrics(e.port)
            assert h.metric_value(t, "vllm:e2e_request_latency_seconds_count") == 1
            e2e[gpu] = h.metric_value(t, "vllm:e2e_request_latency_seconds_sum")
        finally:
            e.stop()
    assert e2e["h100"] > 0, e2e
    assert e2e["h100"] * 5 < e2e["cpu"], f"h100 {e2e['h100']:.3f}s vs cpu {e2e['cpu']:.3f}s"


h.run()
