"""engine-sim /metrics: vLLM v0.11's metric names, types, HELP, labels and
buckets in Prometheus text format (checked with promtool), counters that add
up to the traffic sent, hidden 0.10 metrics, and the prefix cache's effect on
hits and simulated TTFT."""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

TTFT_BUCKETS = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0,
                7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0]
ITL_BUCKETS = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5,
               10.0, 20.0, 40.0, 80.0]
LATENCY_BUCKETS = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                   60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0]
ITER_BUCKETS = [1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
N_BUCKETS = [1, 2, 5, 10, 20]

COUNTERS = ["vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total",
            "vllm:num_preemptions_total", "vllm:prompt_tokens_total",
            "vllm:generation_tokens_total", "vllm:request_success_total"]
GAUGES = ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
          "vllm:cache_config_info"]
HISTOGRAMS = ["vllm:time_to_first_token_seconds", "vllm:inter_token_latency_seconds",
              "vllm:time_per_output_token_seconds", "vllm:e2e_request_latency_seconds",
              "vllm:request_queue_time_seconds", "vllm:request_prefill_time_seconds",
              "vllm:request_decode_time_seconds", "vllm:request_inference_time_seconds",
              "vllm:request_prompt_tokens", "vllm:request_generation_tokens",
              "vllm:iteration_tokens_total", "vllm:request_max_num_generation_tokens",
              "vllm:request_params_n", "vllm:request_params_max_tokens",
              "vllm:request_time_per_output_token_seconds"]
HIDDEN = ["vllm:gpu_cache_usage_perc", "vllm:gpu_prefix_cache_queries_total",
          "vllm:gpu_prefix_cache_hits_total"]


def go_float(x):
    """prometheus_client's floatToGoString for bucket bounds."""
    x = float(x)
    if x == float("inf"):
        return "+Inf"
    s = repr(x)
    dot = s.find(".")
    if dot > 6 and "e" not in s:
        mantissa = f"{s[0]}.{s[1:dot]}{s[dot + 1:]}".rstrip("0.")
        return f"{mantissa}e+0{dot - 1}"
    return s


def buckets_125(max_len):
    out, e = [], 1
    while True:
        for m in (1, 2, 5):
            if m * e > max_len:
                return out
            out.append(m * e)
        e *= 10


SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)$')


def parse(text):
    """-> (help {name: text}, type {name: type}, samples [(name, labels dict, label order, value)])"""
    helps, types, samples = {}, {}, []
    for line in text.splitlines():
        if not line:
            continue
        if line.startswith("# HELP "):
            name, _, rest = line[7:].partition(" ")
            assert name not in helps, f"duplicate HELP for {name}"
            helps[name] = rest
        elif line.startswith("# TYPE "):
            name, _, t = line[7:].partition(" ")
            assert name not in types, f"duplicate TYPE for {name}"
            types[name] = t
        elif line.startswith("#"):
            continue
        else:
            m = SAMPLE.match(line)
            assert m, f"unparsable sample line {line!r}"
            pairs = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or "")
            samples.append((m.group(1), dict(pairs), [k for k, _ in pairs], float(m.group(3))))
    return helps, types, samples


def family_of(name, types):
    if name in types:
        return name
    for suf in ("_bucket", "_sum", "_count"):
        if name.endswith(suf) and types.get(name[:-len(suf)]) == "histogram":
            return name[:-len(suf)]
    return None


def les(text, name):
    return [lab["le"] for n, lab, _, _ in parse(text)[2] if n == name + "_bucket"]


def bucket(text, name, le):
    return h.metric_value(text, name + "_bucket", {"le": le})


def snap(port):
    return h.metrics(port)


def delta(a, b, name, labels=None):
    return (h.metric_value(b, name, labels) or 0.0) - (h.metric_value(a, name, labels) or 0.0)


def complete(port, body, path="/v1/completions"):
    st, _, j, raw = h.post(port, path, body, timeout=120)
    assert st == 200, raw
    return j


@h.check("/metrics: content type, promtool clean apart from vLLM's names, HELP+TYPE, exact names")
def exposition():
    e = h.engine(["--served-model-name", "alpha", "beta", "--enable-lora",
                  "--lora-modules", "ad=/p/ad"])
    try:
        complete(e.port, {"model": "beta", "prompt": "hello metrics", "max_tokens": 3})
        st, hd, b = h.request("GET", e.port, "/metrics")
        assert st == 200
        assert hd["content-type"] == "text/plain; version=0.0.4; charset=utf-8", hd
        text = b.decode()
        assert text.endswith("\n"), "exposition must end with a newline"
        r = subprocess.run(["promtool", "check", "metrics"], input=b, capture_output=True,
                           timeout=30)
        out = (r.stdout + r.stderr).decode()
        bad = [l for l in out.splitlines() if l.strip() and not (
            l.endswith("metric names should not contain ':'") or
            # vLLM's own name for a histogram; real vLLM gets the same lint
            l.strip() == 'vllm:iteration_tokens_total non-counter metrics should not have '
                         '"_total" suffix')]
        assert r.returncode in (0, 3) and not bad, f"promtool rc {r.returncode}:\n{out}"

        helps, types, samples = parse(text)
        assert set(helps) == set(types), set(helps) ^ set(types)
        for n, lab, _, _ in samples:
            fam = family_of(n, types)
            assert fam, f"sample {n} has no # TYPE family"
            assert fam in helps, f"family {fam} has no # HELP"
        for n in COUNTERS:
            assert types.get(n) == "counter", (n, types.get(n))
        for n in GAUGES + ["vllm:lora_requests_info"]:
            assert types.get(n) == "gauge", (n, types.get(n))
        for n in HISTOGRAMS:
            assert types.get(n) == "histogram", (n, types.get(n))
        for n in HIDDEN:
            assert n not in types, f"{n} shown without --show-hidden-metrics-for-version"
        assert helps["vllm:time_to_first_token_seconds"] == \
            "Histogram of time to first token in seconds.", helps
        assert helps["vllm:num_requests_running"] == \
            "Number of requests in model execution batches.", helps
        assert helps["vllm:prefix_cache_hits_total"] == \
            "Prefix cache hits, in terms of number of cached tokens.", helps

        reasons = set()
        for n, lab, _, _ in samples:
            if not n.startswith("vllm:"):
                continue
            if n == "vllm:lora_requests_info":
                assert set(lab) == {"max_lora", "running_lora_adapters",
                                    "waiting_lora_adapters"}, lab
                assert lab["max_lora"] == "1", lab
                continue
            assert lab.get("engine") == "0", (n, lab)
            if n != "vllm:cache_config_info":
                assert lab.get("model_name") == "alpha", (n, lab)
            if n == "vllm:request_success_total":
                reasons.add(lab["finished_reason"])
        assert reasons == {"stop", "length", "abort"}, reasons
        # a request addressed as the second served name still counts under the first
        assert h.metric_value(text, "vllm:prompt_tokens_total", {"model_name": "alpha"}) > 0
        assert h.metric_value(text, "vllm:prompt_tokens_total", {"model_name": "beta"}) is None
    finally:
        e.stop()


@h.check("series exist at zero before any traffic; request_success pre-created for all reasons")
def precreated():
    e = h.engine([])
    try:
        text = snap(e.port)
        for n in COUNTERS + ["vllm:num_requests_running", "vllm:num_requests_waiting",
                             "vllm:kv_cache_usage_perc"]:
            assert h.metric_value(text, n) == 0.0, (n, h.metric_value(text, n))
        for r in ("stop", "length", "abort"):
            assert h.metric_value(text, "vllm:request_success_total",
                                  {"finished_reason": r}) == 0.0, r
        for n in HISTOGRAMS:
            assert h.metric_value(text, n + "_count") == 0.0, n
            assert h.metric_value(text, n + "_sum") == 0.0, n
        assert "vllm:lora_requests_info" not in text, "lora_requests_info without --enable-lora"
    finally:
        e.stop()


@h.check("histogram buckets are exactly vLLM's (TTFT, ITL, latency, iteration, 1-2-5, n)")
def buckets():
    for mml in (8192, 2048):
        e = h.engine(["--max-model-len", str(mml)])
        try:
            text = snap(e.port)
        finally:
            e.stop()
        want = {
            "vllm:time_to_first_token_seconds": TTFT_BUCKETS,
            "vllm:inter_token_latency_seconds": ITL_BUCKETS,
            "vllm:time_per_output_token_seconds": ITL_BUCKETS,
            "vllm:request_time_per_output_token_seconds": ITL_BUCKETS,
            "vllm:iteration_tokens_total": ITER_BUCKETS,
            "vllm:request_params_n": N_BUCKETS,
        }
        for n in ("e2e_request_latency_seconds", "request_queue_time_seconds",
                  "request_inference_time_seconds", "request_prefill_time_seconds",
                  "request_decode_time_seconds"):
            want["vllm:" + n] = LATENCY_BUCKETS
        for n in ("request_prompt_tokens", "request_generation_tokens",
                  "request_max_num_generation_tokens", "request_params_max_tokens"):
            want["vllm:" + n] = buckets_125(mml)
        for n, b in want.items():
            got = les(text, n)
            assert got == [go_float(x) for x in b] + ["+Inf"], f"{n} (max-model-len {mml}): {got}"
    assert buckets_125(8192)[-1] == 5000 and buckets_125(2048)[-1] == 2000


@h.check("vllm:cache_config_info labels follow the flags (block_size, num_gpu_blocks, caching)")
def cache_config():
    def info(extra):
        e = h.engine(extra)
        try:
            samples = [s for s in parse(snap(e.port))[2] if s[0] == "vllm:cache_config_info"]
        finally:
            e.stop()
        assert len(samples) == 1, samples
        assert samples[0][3] == 1.0, samples
        return samples[0][1]

    lab = info(["--block-size", "32", "--num-gpu-blocks-override", "1000"])
    assert lab["block_size"] == "32" and lab["num_gpu_blocks"] == "1000", lab
    assert lab["num_gpu_blocks_override"] == "1000", lab
    assert lab["enable_prefix_caching"] == "True" and lab["engine"] == "0", lab
    assert len(lab) == 21, sorted(lab)
    lab = info(["--no-enable-prefix-caching"])  # a100: 450560 KV tokens / 16
    assert lab["block_size"] == "16" and lab["num_gpu_blocks"] == "28160", lab
    assert lab["num_gpu_blocks_override"] == "None", lab
    assert lab["enable_prefix_caching"] == "False", lab


@h.check("counters and histograms add up to the traffic: tokens, finish reasons, observations")
def counters_match_traffic():
    e = h.engine(["--output-len-dist", "fixed:6"])
    try:
        t0 = snap(e.port)
        usage, reasons, max_tokens = [], {"stop": 0, "length": 0}, []

        def rec(j, mt):
            usage.append(j["usage"])
            for c in j["choices"]:
                reasons[c["finish_reason"]] += 1
            max_tokens.append(mt)

        for i in range(3):
            rec(complete(e.port, {"prompt": f"stop case {i} " * (i + 1), "max_tokens": 20}), 20)
        for i in range(2):
            rec(complete(e.port, {"prompt": f"length case {i}", "max_tokens": 4}), 4)
        rec(complete(e.port, {"prompt": "ignore eos", "max_tokens": 9, "ignore_eos": True}), 9)
        rec(complete(e.port, {"messages": [{"role": "user", "content": "a chat turn"}],
                              "max_tokens": 10}, "/v1/chat/completions"), 10)
        st, _, events, raw = h.sse(e.port, "/v1/completions",
                                   {"prompt": "streamed one", "max_tokens": 3, "stream": True,
                                    "stream_options": {"include_usage": True}})
        assert st == 200 and events[-1] == "[DONE]", raw
        usage.append(events[-2]["usage"])
        reasons["length"] += 1
        max_tokens.append(3)
        assert reasons == {"stop": 4, "length": 4}, reasons  # fixed:6 decides
        t1 = snap(e.port)

        n = len(usage)
        P = sum(u["prompt_tokens"] for u in usage)
        G = sum(u["completion_tokens"] for u in usage)
        assert delta(t0, t1, "vllm:prompt_tokens_total") == P
        assert delta(t0, t1, "vllm:generation_tokens_total") == G
        for r, c in reasons.items():
            assert delta(t0, t1, "vllm:request_success_total", {"finished_reason": r}) == c, r
        assert delta(t0, t1, "vllm:request_success_total", {"finished_reason": "abort"}) == 0
        assert delta(t0, t1, "vllm:request_prompt_tokens_sum") == P
        assert delta(t0, t1, "vllm:request_generation_tokens_sum") == G
        assert delta(t0, t1, "vllm:request_params_max_tokens_sum") == sum(max_tokens)
        for hname in ("request_prompt_tokens", "request_generation_tokens",
                      "time_to_first_token_seconds", "e2e_request_latency_seconds",
                      "request_queue_time_seconds", "request_prefill_time_seconds",
                      "request_decode_time_seconds", "request_params_n",
                      "request_params_max_tokens"):
            assert delta(t0, t1, f"vllm:{hname}_count") == n, hname
        # one inter-token observation per token after the first
        assert delta(t0, t1, "vllm:inter_token_latency_seconds_count") == G - n
        assert delta(t0, t1, "vllm:time_per_output_token_seconds_count") == G - n
        assert delta(t0, t1, "vllm:inter_token_latency_seconds_sum") == \
            delta(t0, t1, "vllm:time_per_output_token_seconds_sum")
        # distinct prompts: nothing cached, every token is computed once
        assert delta(t0, t1, "vllm:prefix_cache_hits_total") == 0
        assert delta(t0, t1, "vllm:prefix_cache_queries_total") == P
        assert delta(t0, t1, "vllm:iteration_tokens_total_sum") == P + G - n
        # histograms are cumulative, +Inf equals _count
        assert bucket(t1, "vllm:request_generation_tokens", "+Inf") == n
        assert bucket(t1, "vllm:request_generation_tokens", "5.0") == 3   # 4, 4 and 3 tokens
        assert bucket(t1, "vllm:request_generation_tokens", "10.0") == n  # 6 and 9
        assert h.metric_value(t1, "vllm:num_requests_running") == 0
        assert h.metric_value(t1, "vllm:num_requests_waiting") == 0
        assert h.metric_value(t1, "vllm:kv_cache_usage_perc") == 0

        # a client that goes away is not a finished request (vLLM does not count it)
        s = socket.create_connection(("127.0.0.1", e.port))
        body = json.dumps({"prompt": "walk away", "max_tokens": 3000, "ignore_eos": True,
                           "stream": True})
        s.sendall((f"POST /v1/completions HTTP/1.1\r\nhost: t\r\ncontent-type: application/json"
                   f"\r\ncontent-length: {len(body)}\r\n\r\n{body}").encode())
        got = b""
        while got.count(b"data: ") < 3:
            got += s.recv(65536)
        s.close()
        deadline = time.time() + 10
        while time.time() < deadline:
            t2 = snap(e.port)
            if h.metric_value(t2, "vllm:num_requests_running") == 0:
                break
            time.sleep(0.05)
        assert h.metric_value(t2, "vllm:num_requests_running") == 0, "disconnect did not abort"
        for r in ("stop", "length", "abort"):
            assert delta(t1, t2, "vllm:request_success_total", {"finished_reason": r}) == 0, r
        assert delta(t1, t2, "vllm:e2e_request_latency_seconds_count") == 0
    finally:
        e.stop()


@h.check("--show-hidden-metrics-for-version 0.10 adds gpu_cache_usage_perc and gpu_prefix_cache_*")
def hidden():
    e = h.engine(["--show-hidden-metrics-for-version", "0.10"])
    try:
        p = " ".join(f"shared{i}" for i in range(60))
        for _ in range(2):
            complete(e.port, {"prompt": p, "max_tokens": 2})
        text = snap(e.port)
        _, types, _ = parse(text)
        assert types.get("vllm:gpu_cache_usage_perc") == "gauge", types
        assert types.get("vllm:gpu_prefix_cache_queries_total") == "counter", types
        assert types.get("vllm:gpu_prefix_cache_hits_total") == "counter", types
        q = h.metric_value(text, "vllm:prefix_cache_queries_total")
        hits = h.metric_value(text, "vllm:prefix_cache_hits_total")
        assert hits > 0
        assert h.metric_value(text, "vllm:gpu_prefix_cache_queries_total",
                              {"engine": "0", "model_name": "llama-3-8b"}) == q
        assert h.metric_value(text, "vllm:gpu_prefix_cache_hits_total") == hits
        assert h.metric_value(text, "vllm:gpu_cache_usage_perc") == \
            h.metric_value(text, "vllm:kv_cache_usage_perc")
        for n in COUNTERS + GAUGES + HISTOGRAMS:
            assert n in types, f"{n} missing with hidden metrics on"
    finally:
        e.stop()


def a100_prefill():
    """(prefill_per_token, prefill_base, prefill_min) of the built-in a100 profile."""
    path = os.path.join(h.SRC, "data", "gpu_profiles.yaml")
    vals, inside = {}, False
    with open(path) as f:
        for line in f:
            if re.match(r"^  [a-z0-9_]+:\s*$", line):
                inside = line.strip() == "a100:"
            m = re.match(r"^    (prefill_per_token|prefill_base|prefill_min):\s*([0-9.e-]+)", line)
            if inside and m:
                vals[m.group(1)] = float(m.group(2))
    assert len(vals) == 3, f"cannot read the a100 profile from {path}: {vals}"
    return vals["prefill_per_token"], vals["prefill_base"], vals["prefill_min"]


LONG = " ".join(f"w{i}" for i in range(1000))


def ttft_pair(extra):
    """Sends LONG twice; per send: (hits delta, queries delta, prompt delta, TTFT delta)."""
    e = h.engine(["--time-scale", "0.5"] + list(extra))
    try:
        st, _, j, _ = h.post(e.port, "/tokenize", {"prompt": LONG})
        L = j["count"]
        out = []
        for _ in range(2):
            a = snap(e.port)
            j = complete(e.port, {"prompt": LONG, "max_tokens": 1})
            assert j["usage"]["prompt_tokens"] == L, j
            b = snap(e.port)
            out.append((delta(a, b, "vllm:prefix_cache_hits_total"),
                        delta(a, b, "vllm:prefix_cache_queries_total"),
                        delta(a, b, "vllm:prompt_tokens_total"),
                        delta(a, b, "vllm:time_to_first_token_seconds_sum"),
                        delta(a, b, "vllm:time_to_first_token_seconds_count")))
        return L, out
    finally:
        e.stop()


@h.check("prefix cache: a repeated ~2000-token prompt hits (len-1)//16*16 tokens, TTFT drops")
def prefix_cache_ttft():
    L, ((h1, q1, p1, t1, c1), (h2, q2, p2, t2, c2)) = ttft_pair([])
    assert 1900 < L < 2048, L
    assert c1 == c2 == 1
    assert (h1, q1, p1) == (0, L, L), (h1, q1, p1)
    assert (h2, q2, p2) == ((L - 1) // 16 * 16, L, L), (h2, q2, p2, L)
    # the a100 profile's prefill time for L tokens (one step: L < the 2048-token budget)
    per_token, base, floor = a100_prefill()
    expect = max(floor, per_token * L + base)
    assert 0.8 * expect < t1 < 1.25 * expect, f"uncached TTFT {t1:.4f}s, model says {expect:.4f}s"
    assert t2 < t1 / 3, f"cached TTFT {t2:.4f}s is not much below uncached {t1:.4f}s"


@h.check("--no-enable-prefix-caching: no queries, no hits, no TTFT drop on a repeat")
def no_prefix_cache_ttft():
    L, ((h1, q1, p1, t1, _), (h2, q2, p2, t2, _)) = ttft_pair(["--no-enable-prefix-caching"])
    assert (h1, h2, q1, q2) == (0, 0, 0, 0), (h1, h2, q1, q2)
    assert p1 == p2 == L
    assert 0.8 < t2 / t1 < 1.25, f"TTFT changed without prefix caching: {t1:.4f}s -> {t2:.4f}s"


@h.check("kv_cache_usage_perc is vLLM's used/(num_gpu_blocks-1) while a request runs, 0 after")
def kv_usage():
    N = 100
    e = h.engine(["--num-gpu-blocks-override", str(N), "--max-model-len", "1024",
                  "--time-scale", "1"])
    try:
        p = " ".join(f"u{i}" for i in range(48))
        st, _, j, _ = h.post(e.port, "/tokenize", {"prompt": p})
        n = j["count"]
        gen = 16 * ((n + 15) // 16) - n  # stay inside the last block
        assert 97 <= n <= 100 and gen >= 12, (n, gen)
        blocks = (n + 15) // 16
        t = threading.Thread(target=complete, args=(e.port, {"prompt": p, "max_tokens": gen,
                                                             "ignore_eos": True}))
        t.start()
        seen = set()
        while t.is_alive():
            text = snap(e.port)
            if h.metric_value(text, "vllm:num_requests_running") == 1:
                seen.add(h.metric_value(text, "vllm:kv_cache_usage_perc"))
            time.sleep(0.01)
        t.join()
        assert seen, "never scraped while the request ran"
        want = blocks / (N - 1)
        assert all(abs(u - want) < 1e-9 for u in seen), \
            f"kv_cache_usage_perc {sorted(seen)} with {blocks} blocks in use of {N}, want {want}"
        assert h.metric_value(snap(e.port), "vllm:kv_cache_usage_perc") == 0
    finally:
        e.stop()


@h.check("histogram samples are laid out as prometheus_client writes them (le sorted, _count, _sum)")
def histogram_layout():
    e = h.engine([])
    try:
        complete(e.port, {"prompt": "layout", "max_tokens": 2})
        text = snap(e.port)
    finally:
        e.stop()
    _, types, samples = parse(text)
    problems = sorted({f"{n}: labels in order {order}" for n, lab, order, _ in samples
                       if n.startswith("vllm:") and order != sorted(order)})[:3]
    lines = [l.split("{")[0] for l in text.splitlines() if l.startswith("vllm:e2e_request_latency")]
    tail = [x for x in lines if not x.endswith("_bucket")]
    if tail != ["vllm:e2e_request_latency_seconds_count", "vllm:e2e_request_latency_seconds_sum"]:
        problems.append(f"after the buckets: {tail}, want _count then _sum")
    assert not problems, "\n".join(problems)


h.run()
