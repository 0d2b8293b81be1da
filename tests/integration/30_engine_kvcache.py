"""engine-sim's KV connector (--kv-transfer-config, BrixConnector) against a
real `brix kvcache` node: a prompt prefilled on engine A is loaded by engine B
(vllm:external_prefix_cache_hits_total rises by the prompt's full blocks, B's
simulated prefill is shorter, the bytes verify); the store counts the puts
and hits; a killed store costs misses and counted failures, never a failed
request; the roles (kv_producer only saves, kv_consumer only loads); and bad
--kv-transfer-config values are refused at start, naming the field."""
import json
import os
import signal
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

BS = 16
BLOCK_BYTES = 65536  # small blocks keep the test light; the default is 2 MiB
MAX_TOKENS = 4


def kvcache_node(extra=()):
    port, http = h.free_port(), h.free_port()
    # with a UNIX socket: same-host clients may map the node's memory
    sock = os.path.join(tempfile.mkdtemp(prefix="brix-kv30-"), "kv.sock")
    p = h.Proc(["kvcache", "--listen", f"127.0.0.1:{port}", "--http-port", str(http),
                "--capacity", "256MiB", "--unix", sock] + list(extra), name="kvcache")
    p.port, p.http = port, http
    p.wait_http(http, "/healthz")
    return p


def ktc(servers, role="kv_both", **extra):
    x = {"servers": servers, "block_bytes": BLOCK_BYTES, "timeout_ms": 1000}
    x.update(extra)
    return json.dumps({"kv_connector": "BrixConnector", "kv_role": role,
                       "kv_connector_extra_config": x})


def kv_engine(servers, name, role="kv_both", **extra):
    return h.engine(["--kv-transfer-config", ktc(servers, role, **extra),
                     "--output-len-dist", "none"], name=name)


def prompt(salt, words=700):
    return " ".join(f"w{salt}x{i}" for i in range(words))


def complete(e, text):
    st, _, j, raw = h.post(e.port, "/v1/completions",
                           {"model": "llama-3-8b", "prompt": text, "max_tokens": MAX_TOKENS})
    assert st == 200, (st, raw[:500])
    assert j["choices"][0]["finish_reason"] == "length", j
    assert j["usage"]["completion_tokens"] == MAX_TOKENS, j
    return j


def m(e, name, **labels):
    v = h.metric_value(h.metrics(e.port), name, labels or None)
    return v or 0.0


def failures(e):
    return m(e, "brix_engine_kv_load_failures_total")


def loadable_tokens(prompt_tokens):
    # the last prompt token is always computed (its logits), so a cache can
    # supply the full blocks before it
    return (prompt_tokens - 1) // BS * BS


STATE = {}


@h.check("a prompt prefilled on A is loaded by B: external hits, shorter prefill, verified bytes")
def t_cross_engine():
    node = kvcache_node()
    srv = f"127.0.0.1:{node.port}"
    # A over TCP, B over the same-host path (the node has a UNIX socket)
    a = kv_engine(srv, "engine-a", no_shm=True)
    b = kv_engine(srv, "engine-b")
    STATE.update(node=node, a=a, b=b)
    text = prompt(1)
    ja = complete(a, text)
    n = ja["usage"]["prompt_tokens"]
    assert n > 40 * BS, n
    full = n // BS
    # A looked the prompt up (a miss) and saves its full blocks, asynchronously
    assert m(a, "vllm:external_prefix_cache_queries_total") == n
    assert m(a, "vllm:external_prefix_cache_hits_total") == 0
    h.wait_until(lambda: m(a, "brix_engine_kv_saved_blocks_total") >= full, timeout=20,
                 what="A's saves")
    assert m(a, "brix_engine_kv_saved_blocks_total") == full
    assert m(a, "brix_engine_kv_saved_bytes_total") == full * BLOCK_BYTES
    assert m(a, "brix_engine_kv_save_failures_total") == 0
    assert m(a, "brix_engine_kv_save_dropped_total") == 0

    jb = complete(b, text)
    assert jb["usage"]["prompt_tokens"] == n
    want = loadable_tokens(n)
    assert m(b, "vllm:external_prefix_cache_queries_total") == n
    assert m(b, "vllm:external_prefix_cache_hits_total") == want, \
        (m(b, "vllm:external_prefix_cache_hits_total"), want)
    assert m(b, "brix_engine_kv_loaded_blocks_total") == want // BS
    assert m(b, "brix_engine_kv_loaded_bytes_total") == want // BS * BLOCK_BYTES
    assert m(b, "brix_engine_kv_checksum_errors_total") == 0
    assert failures(b) == 0
    assert m(b, "brix_engine_kv_remote_wait_seconds_total") > 0
    # B read through the node's mapped memory, A over TCP: the same bytes
    assert m(b, "brix_engine_kv_store_members") == 1
    assert m(b, "brix_engine_kv_store_members_up") == 1
    assert m(b, "brix_engine_kv_store_members_shm") == 1
    assert m(a, "brix_engine_kv_store_members_up") == 1
    assert m(a, "brix_engine_kv_store_members_shm") == 0
    # B computed only the tail: its simulated prefill (scheduled -> first
    # token, the engine's own clock, no wall-clock threshold) is shorter
    pa = m(a, "vllm:request_prefill_time_seconds_sum")
    pb = m(b, "vllm:request_prefill_time_seconds_sum")
    assert m(b, "vllm:request_prefill_time_seconds_count") == 1
    assert 0 < pb < pa / 2, (pa, pb)
    # B's local prefix cache now holds the loaded blocks: the same prompt
    # again is a local hit, not another load
    loaded = m(b, "brix_engine_kv_loaded_blocks_total")
    complete(b, text)
    assert m(b, "vllm:prefix_cache_hits_total") >= want
    assert m(b, "brix_engine_kv_loaded_blocks_total") == loaded
    # B saved only what it computed: the blocks after the loaded ones
    h.wait_until(lambda: m(b, "brix_engine_kv_saved_blocks_total") == full - want // BS,
                 timeout=20, what="B's saves of its computed blocks")
    STATE.update(full=full, loaded=want // BS)


@h.check("the store's /metrics shows the puts and the hits")
def t_store_metrics():
    node = STATE["node"]
    st, _, body = h.request("GET", node.http, "/metrics")
    assert st == 200
    text = body.decode()
    puts = h.metric_value(text, "brix_kvcache_puts_total")
    hits = h.metric_value(text, "brix_kvcache_hits_total")
    assert puts is not None and hits is not None, text[:3000]
    # A's blocks, stored once (B computed no full block A had not saved)
    assert puts == STATE["full"], (puts, STATE["full"])
    # B's load read each block once
    assert hits == STATE["loaded"], (hits, STATE["loaded"])
    assert h.metric_value(text, "brix_kvcache_misses_total") == 0


@h.check("store stalled (SIGSTOP): requests complete, loads count timeouts; resumed: loads work")
def t_store_stalled():
    node, a, b = STATE["node"], STATE["a"], STATE["b"]
    node.p.send_signal(signal.SIGSTOP)
    try:
        t0 = m(b, "brix_engine_kv_load_failures_total", reason="timeout")
        w0 = m(b, "brix_engine_kv_remote_wait_seconds_total")
        j = complete(b, prompt(20, words=300))  # a miss the stalled node cannot answer
        assert m(b, "brix_engine_kv_load_failures_total", reason="timeout") == t0 + 1
        assert m(b, "vllm:external_prefix_cache_hits_total") == STATE["loaded"] * BS
        assert m(b, "brix_engine_kv_remote_wait_seconds_total") > w0
        assert "KV store" in b.text()
    finally:
        node.p.send_signal(signal.SIGCONT)
    # the node answers again: A's new prompt is saved and B loads it (after
    # its client's back-off from the stalled node, 1 s)
    text = prompt(21, words=300)
    n = complete(a, text)["usage"]["prompt_tokens"]
    h.wait_until(lambda: m(a, "brix_engine_kv_saved_blocks_total") >= STATE["full"] + n // BS,
                 timeout=20, what="A's saves after the stall")
    probes = iter(range(100, 1000))

    def b_up():
        # a new short prompt each time: a lookup, hence a store call that
        # reconnects once the back-off is over
        complete(b, prompt(next(probes), words=40))
        return m(b, "brix_engine_kv_store_members_up") == 1
    h.wait_until(b_up, timeout=20, interval=0.2, what="B reconnected")
    h0 = m(b, "vllm:external_prefix_cache_hits_total")
    complete(b, text)
    assert m(b, "vllm:external_prefix_cache_hits_total") == h0 + loadable_tokens(n)
    assert "answers again" in b.text()


@h.check("store killed: requests still complete, loads fail over to recompute, counted")
def t_store_down():
    node, a, b = STATE["node"], STATE["a"], STATE["b"]
    node.p.send_signal(signal.SIGKILL)
    node.p.wait()
    for e in (a, b):
        f0 = failures(e)
        h0 = m(e, "vllm:external_prefix_cache_hits_total")
        j = complete(e, prompt(2 if e is a else 3))
        assert m(e, "vllm:external_prefix_cache_hits_total") == h0
        assert failures(e) > f0, (e.name, failures(e), f0)
        assert m(e, "brix_engine_kv_store_members_up") == 0
        # the saves of the new prompt fail (counted), they do not hang anything
        full = j["usage"]["prompt_tokens"] // BS
        h.wait_until(lambda: m(e, "brix_engine_kv_save_failures_total") >= full, timeout=20,
                     what="save failures counted")
    # a burst at the dead store: every request completes
    for i in range(5):
        complete(b, prompt(10 + i, words=100))
    for e in (a, b):
        e.stop()


@h.check("two nodes, one killed: the prefix before its first block still loads")
def t_two_nodes():
    n1, n2 = kvcache_node(), kvcache_node()
    srv = f"127.0.0.1:{n1.port},127.0.0.1:{n2.port}"
    a = kv_engine(srv, "two-a")
    b = kv_engine(srv, "two-b")
    text = prompt(9)
    n = complete(a, text)["usage"]["prompt_tokens"]
    h.wait_until(lambda: m(a, "brix_engine_kv_saved_blocks_total") == n // BS, timeout=20,
                 what="saves over two nodes")
    puts = [h.metric_value(h.request("GET", x.http, "/metrics")[2].decode(),
                           "brix_kvcache_puts_total") for x in (n1, n2)]
    assert sum(puts) == n // BS and min(puts) > 0, puts  # placement spreads the blocks
    n2.p.send_signal(signal.SIGKILL)
    n2.p.wait()
    complete(b, text)
    hits = m(b, "vllm:external_prefix_cache_hits_total")
    assert hits % BS == 0 and hits < loadable_tokens(n), hits
    assert m(b, "brix_engine_kv_loaded_blocks_total") == hits // BS
    assert m(b, "brix_engine_kv_checksum_errors_total") == 0
    assert failures(b) == 1
    assert m(b, "brix_engine_kv_store_members") == 2
    for e in (a, b, n1):
        e.stop()


@h.check("kv_producer only saves, kv_consumer only loads")
def t_roles():
    node = kvcache_node()
    srv = f"127.0.0.1:{node.port}"
    p = kv_engine(srv, "producer", role="kv_producer")
    c = kv_engine(srv, "consumer", role="kv_consumer")
    text = prompt(4, words=300)
    j = complete(p, text)
    n = j["usage"]["prompt_tokens"]
    assert m(p, "vllm:external_prefix_cache_queries_total") == 0  # never looks up
    h.wait_until(lambda: m(p, "brix_engine_kv_saved_blocks_total") == n // BS, timeout=20,
                 what="producer saves")
    complete(c, text)
    assert m(c, "vllm:external_prefix_cache_hits_total") == loadable_tokens(n)
    complete(c, prompt(5, words=300))  # a miss, computed: a consumer does not save it
    assert m(c, "brix_engine_kv_saved_blocks_total") == 0
    for e in (p, c, node):
        e.stop()


@h.check("blocks of the wrong size are detected, counted and recomputed, never used")
def t_wrong_bytes():
    node = kvcache_node()
    srv = f"127.0.0.1:{node.port}"
    # the same namespace (model, dtype, layout) but an engine that disagrees
    # on the block size: its values cannot be this engine's blocks
    small = kv_engine(srv, "small", block_bytes=BLOCK_BYTES // 2)
    big = kv_engine(srv, "big", block_bytes=BLOCK_BYTES * 2)
    reader = kv_engine(srv, "reader")
    text = prompt(6, words=300)
    n = complete(small, text)["usage"]["prompt_tokens"]
    h.wait_until(lambda: m(small, "brix_engine_kv_saved_blocks_total") == n // BS, timeout=20,
                 what="small's saves")
    j = complete(reader, text)  # shorter values than its blocks
    assert j["usage"]["prompt_tokens"] == n
    assert m(reader, "vllm:external_prefix_cache_hits_total") == 0
    assert m(reader, "brix_engine_kv_checksum_errors_total") == 1  # the first block ends it
    assert m(reader, "brix_engine_kv_load_failures_total", reason="checksum") == 1
    assert m(reader, "brix_engine_kv_loaded_blocks_total") == 0
    text2 = prompt(7, words=300)
    complete(big, text2)
    h.wait_until(lambda: m(big, "brix_engine_kv_saved_blocks_total") == n // BS, timeout=20,
                 what="big's saves")
    complete(reader, text2)  # longer values than its blocks
    assert m(reader, "vllm:external_prefix_cache_hits_total") == 0
    assert m(reader, "brix_engine_kv_checksum_errors_total") == 2
    for e in (small, big, reader, node):
        e.stop()


@h.check("a node with --token-file: engines with its token use it, others are refused "
         "(counted, logged) and still serve")
def t_token():
    d = tempfile.mkdtemp(prefix="brix-kvtok-")
    tok = os.path.join(d, "token")
    with open(tok, "w") as f:
        f.write("s3cret-kv-token\n")
    bad = os.path.join(d, "bad")
    with open(bad, "w") as f:
        f.write("wrong")
    node = kvcache_node(["--token-file", tok])
    node.expect_error("refused")
    srv = f"127.0.0.1:{node.port}"
    good = kv_engine(srv, "good", token_file=tok)
    text = prompt(8, words=300)
    n = complete(good, text)["usage"]["prompt_tokens"]
    h.wait_until(lambda: m(good, "brix_engine_kv_saved_blocks_total") == n // BS, timeout=20,
                 what="saves with the token")
    for name, extra in (("no-token", {}), ("bad-token", {"token_file": bad})):
        e = kv_engine(srv, name, **extra)
        j = complete(e, text)
        assert j["usage"]["prompt_tokens"] == n
        assert m(e, "vllm:external_prefix_cache_hits_total") == 0
        assert m(e, "brix_engine_kv_load_failures_total", reason="refused") == 1, \
            h.metrics(e.port)
        h.wait_until(lambda: m(e, "brix_engine_kv_save_failures_total") >= 1, timeout=20,
                     what="refused saves counted")
        assert "KV store" in e.text() and "WARN" in e.text(), e.text()
        e.stop()
    assert h.metric_value(h.request("GET", node.http, "/metrics")[2].decode(),
                          "brix_kvcache_hello_refused_total") >= 2
    # the token is read from a file, never taken on the command line
    r = subprocess.run([h.BRIX, "engine-sim", "--port", "0", "--kv-transfer-config",
                        ktc(srv, token_file=os.path.join(d, "missing"))],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "token_file" in r.stderr, r.stderr
    good.stop()
    node.stop()


def refused(cfg, want):
    r = subprocess.run([h.BRIX, "engine-sim", "--port", "0", "--kv-transfer-config", cfg],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2, (cfg, r.returncode, r.stderr)
    assert want in r.stderr, (cfg, want, r.stderr)
    assert "kv-transfer-config" in r.stderr, r.stderr


@h.check("bad --kv-transfer-config values are refused at start, naming the field")
def t_bad_config():
    extra = '"kv_connector_extra_config":{"servers":"127.0.0.1:1"}'
    refused('{"kv_connector":"NixlConnector","kv_role":"kv_both",' + extra + '}',
            "NixlConnector")
    refused('{"kv_connector":"BrixConnector","kv_role":"kv_all",' + extra + '}', "kv_all")
    refused('{"kv_connector":"BrixConnector","kv_role":"kv_both","kv_buffer":1,' + extra + '}',
            "kv_buffer")
    refused('{"kv_connector":"BrixConnector","kv_role":"kv_both",'
            '"kv_connector_extra_config":{"servers":"127.0.0.1:1","speed":3}}', "speed")
    refused('{"kv_connector":"BrixConnector","kv_role":"kv_both",'
            '"kv_connector_extra_config":{"servers":"127.0.0.1:1","timeout_ms":-5}}',
            "timeout_ms")
    refused('{"kv_connector":"BrixConnector","kv_role":"kv_both",'
            '"kv_connector_extra_config":{}}', "servers")
    refused('{"kv_connector":"BrixConnector","kv_role":"kv_both",'
            '"kv_connector_extra_config":{"servers":"no-port-here"}}', "servers")
    refused('{"kv_connector":"BrixConnector"', "invalid JSON")


if __name__ == "__main__":
    h.run()
