"""engine-sim KV-cache events: vLLM's ZMQ publisher (BlockStored / BlockRemoved
batches, sequence numbers, the replay socket) seen through tests/tools/kv_sub,
and --kv-events-config validation."""
import json
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

KV_SUB = os.path.join(h.TOOLS, "kv_sub") if h.TOOLS else os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "asan", "tests", "kv_sub")
BS = 16


class Sub:
    """kv_sub bound on a free port (the engine's tcp://127.0.0.1:PORT endpoint
    connects, as vLLM's publisher does for a non-wildcard address). Collects
    the JSON lines in the background."""

    def __init__(self, topic=None, timeout_ms=60000):
        self.port = h.free_port()
        self.endpoint = f"tcp://127.0.0.1:{self.port}"
        args = [KV_SUB, self.endpoint, "--bind", "--count", "0", "--timeout-ms", str(timeout_ms)]
        if topic is not None:
            args += ["--topic", topic]
        self.p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines, self.err = [], []
        self.ready = threading.Event()
        self._t1 = threading.Thread(target=self._read_out, daemon=True)
        self._t2 = threading.Thread(target=self._read_err, daemon=True)
        self._t1.start()
        self._t2.start()

    def _read_out(self):
        for line in self.p.stdout:
            self.lines.append(json.loads(line))

    def _read_err(self):
        for line in self.p.stderr:
            self.err.append(line)
            if "kv_sub: ready" in line:
                self.ready.set()

    def wait_ready(self, timeout=10):
        assert self.ready.wait(timeout), f"kv_sub never saw the publisher: {self.err}"
        time.sleep(0.3)  # the subscription reaches the publisher just after the handshake

    def wait_quiet(self, quiet=0.4, timeout=15):
        """Waits until no new batch arrived for `quiet` seconds."""
        deadline = time.time() + timeout
        n, since = len(self.lines), time.time()
        while time.time() < deadline:
            time.sleep(0.05)
            if len(self.lines) != n:
                n, since = len(self.lines), time.time()
            elif time.time() - since >= quiet:
                return list(self.lines)
        return list(self.lines)

    def stop(self):
        if self.p.poll() is None:
            self.p.terminate()
        self.p.wait(10)
        self._t1.join(5)
        return list(self.lines)


def replay(endpoint, start, timeout_ms=10000):
    r = subprocess.run([KV_SUB, "--replay", endpoint, "--from", str(start), "--timeout-ms",
                        str(timeout_ms)], capture_output=True, text=True, timeout=30)
    return r.returncode, [json.loads(l) for l in r.stdout.splitlines()], r.stderr


def kv_cfg(endpoint, replay_ep=None, **extra):
    c = {"enable_kv_cache_events": True, "publisher": "zmq", "endpoint": endpoint}
    if replay_ep:
        c["replay_endpoint"] = replay_ep
    c.update(extra)
    return json.dumps(c)


def events_of(lines, tag=None):
    out = []
    for b in lines:
        assert "error" not in b, f"kv_sub could not decode a batch: {b}"
        for ev in b["events"]:
            if tag is None or ev[0] == tag:
                out.append(ev)
    return out


def check_batches(lines, first_seq=0):
    """Sequence numbers start at first_seq and step by 1; payloads are well formed."""
    seqs = [b["seq"] for b in lines]
    assert seqs == list(range(first_seq, first_seq + len(seqs))), f"sequence gaps: {seqs}"
    for b in lines:
        assert "error" not in b, b
        assert isinstance(b["ts"], float) and b["ts"] > 1.5e9, b
        assert b["dp_rank"] == 0, b
        assert b["events"], f"empty batch published: {b}"
        for ev in b["events"]:
            if ev[0] == "BlockStored":
                # v0.11's 7 fields; adapter blocks add lora_name (newer vLLM)
                assert len(ev) == (8 if ev[5] is not None else 7), ev
                if ev[5] is not None:
                    assert isinstance(ev[7], str) and ev[7], ev
                assert ev[4] == BS, f"block_size {ev[4]}"
                assert len(ev[3]) == BS * len(ev[1]), \
                    f"{len(ev[3])} token ids for {len(ev[1])} blocks"
                assert ev[6] == "GPU", ev
            elif ev[0] == "BlockRemoved":
                assert len(ev) == 3 and ev[2] == "GPU", ev
                assert len(ev[1]) == 1, f"BlockRemoved should carry one block: {ev}"
            else:
                raise AssertionError(f"unexpected event {ev}")


def chain(stored):
    """Follows BlockStored events of one request; returns (hashes, token_ids)."""
    hashes, toks = [], []
    for ev in stored:
        parent = ev[2]
        if not hashes:
            assert parent is None, f"first block of a request has parent {parent}"
        else:
            assert parent == hashes[-1], f"parent {parent} is not the previous block {hashes[-1]}"
        hashes += ev[1]
        toks += ev[3]
    return hashes, toks


def tokens(port, prompt):
    st, _, j, raw = h.post(port, "/tokenize", {"prompt": prompt})
    assert st == 200, raw
    return j["tokens"]


def complete(port, prompt, max_tokens, model=None):
    body = {"prompt": prompt, "max_tokens": max_tokens, "ignore_eos": True}
    if model:
        body["model"] = model
    st, _, j, raw = h.post(port, "/v1/completions", body, timeout=60)
    assert st == 200, raw
    assert j["usage"]["completion_tokens"] == max_tokens, j
    return j


state = {}


@h.check("BlockStored: prompt blocks, then generated blocks, chained, with token ids and no LoRA")
def stored_base():
    sub = Sub()
    rp = f"tcp://127.0.0.1:{h.free_port()}"
    e = h.engine(["--kv-events-config", kv_cfg(sub.endpoint, rp), "--block-size", str(BS),
                  "--enable-lora", "--lora-modules", "a=/p/a", "b=/p/b"])
    state.update(sub=sub, e=e, replay=rp)
    sub.wait_ready()
    prompt = " ".join(f"alpha{i}" for i in range(50))
    toks = tokens(e.port, prompt)
    n = len(toks)
    assert n % BS != 0 and n > 3 * BS, n
    gen = 40
    complete(e.port, prompt, gen)
    lines = sub.wait_quiet()
    assert lines, "no KV event batch received"
    check_batches(lines, 0)
    assert not events_of(lines, "BlockRemoved"), "eviction with an almost empty cache"
    stored = events_of(lines, "BlockStored")
    # the whole prompt is prefilled in one step: its full blocks come in one event
    assert len(stored[0][1]) == n // BS, f"first event has {len(stored[0][1])} blocks, want {n // BS}"
    assert stored[0][3] == toks[:n // BS * BS], "token ids of the prompt blocks differ from /tokenize"
    hashes, ids = chain(stored)
    # KV exists for prompt + gen - 1 tokens (the last sampled token is never fed back)
    assert len(hashes) == (n + gen - 1) // BS, (len(hashes), n, gen)
    assert len(set(hashes)) == len(hashes), "duplicate block hashes"
    assert ids[:n] == toks, "the block covering the prompt's tail has other prompt tokens"
    for ev in stored:
        assert ev[5] is None, f"lora_id {ev[5]} on a base-model request"
    # each generated block is stored in the step that fills it: one block per event
    assert all(len(ev[1]) == 1 for ev in stored[1:]), [len(ev[1]) for ev in stored]
    state.update(prompt=prompt, n=n, base_hashes=hashes, seen=len(lines))


@h.check("BlockStored for a LoRA request carries the adapter's id and its own hashes")
def stored_lora():
    assert state.get("e"), "previous check did not start the engine"
    sub, e = state["sub"], state["e"]
    n, prompt = state["n"], state["prompt"]
    for model, lora_id in (("a", 1), ("b", 2)):
        before = len(sub.lines)
        complete(e.port, prompt, 4, model=model)
        lines = sub.wait_quiet()
        new = lines[before:]
        assert new, f"no events for a request on adapter {model}"
        stored = events_of(new, "BlockStored")
        hashes, ids = chain(stored)
        assert len(hashes) == (n + 3) // BS, (len(hashes), n)
        for ev in stored:
            assert ev[5] == lora_id, f"lora_id {ev[5]} for adapter {model}, want {lora_id}"
            assert ev[7] == model, f"lora_name {ev[7]!r} for adapter {model}"
        assert not set(hashes) & set(state["base_hashes"]), \
            "an adapter's blocks have the base model's hashes"
        state.setdefault("lora_hashes", set()).update(hashes)
    # an adapter loaded at run time gets the next id
    st, _, b = h.request("POST", e.port, "/v1/load_lora_adapter",
                         {"lora_name": "c", "lora_path": "/p/c"})
    assert st == 200, b
    before = len(sub.lines)
    complete(e.port, prompt, 2, model="c")
    stored = events_of(sub.wait_quiet()[before:], "BlockStored")
    assert stored and all(ev[5] == 3 for ev in stored), [ev[5] for ev in stored]
    check_batches(sub.lines, 0)


@h.check("a repeated prompt hits the cache: none of its prompt blocks is stored again")
def repeat_no_store():
    assert state.get("e"), "first check did not start the engine"
    sub, e = state["sub"], state["e"]
    before = len(sub.lines)
    complete(e.port, state["prompt"], 3)
    lines = sub.wait_quiet()
    again = {x for ev in events_of(lines[before:], "BlockStored") for x in ev[1]}
    prompt_hashes = set(state["base_hashes"][:state["n"] // BS])
    assert not again & prompt_hashes, "cached prompt blocks were stored again"
    check_batches(sub.lines, 0)


@h.check("a prompt extending a cached prefix stores only its new blocks, parented on the cache")
def extend_prefix():
    assert state.get("e"), "first check did not start the engine"
    sub, e = state["sub"], state["e"]
    n, base = state["n"], state["base_hashes"]
    k = n // BS  # full prompt blocks shared with the first request
    prompt = state["prompt"] + " " + " ".join(f"omega{i}" for i in range(30))
    toks = tokens(e.port, prompt)
    assert toks[:n] == tokens(e.port, state["prompt"]), "prefix tokenizes differently"
    before = len(sub.lines)
    hits0 = h.metric_value(h.metrics(e.port), "vllm:prefix_cache_hits_total")
    complete(e.port, prompt, 2)
    assert h.metric_value(h.metrics(e.port), "vllm:prefix_cache_hits_total") - hits0 == k * BS
    stored = events_of(sub.wait_quiet()[before:], "BlockStored")
    assert stored, "no blocks stored for the new part of the prompt"
    first = stored[0]
    assert first[2] == base[k - 1], f"parent {first[2]} is not the last cached block {base[k - 1]}"
    assert first[1][0] != base[k], "the block after the shared prefix kept the old hash"
    assert not set(first[1]) & set(base[:k]), "shared prefix blocks stored again"
    assert first[3] == toks[k * BS:(k + len(first[1])) * BS], "token ids of the new blocks"
    assert len(first[1]) == len(toks) // BS - k, (len(first[1]), len(toks), k)
    check_batches(sub.lines, 0)


@h.check("replay from seq 0 returns every buffered batch, identical to the live ones, then ends")
def replay_all():
    assert state.get("e"), "first check did not start the engine"
    sub, e = state["sub"], state["e"]
    try:
        live = sub.wait_quiet()
        assert live, "nothing was published"
        rc, got, err = replay(state["replay"], 0)
        assert rc == 0, f"replay did not end with the end marker: rc {rc} {err}"
        assert [b["seq"] for b in got] == [b["seq"] for b in live], \
            ([b["seq"] for b in got], [b["seq"] for b in live])
        for a, b in zip(got, live):
            assert a["topic"] is None, a
            assert a["events"] == b["events"] and a["ts"] == b["ts"], (a, b)
        k = live[len(live) // 2]["seq"]
        rc, got, err = replay(state["replay"], k)
        assert rc == 0, err
        assert [b["seq"] for b in got] == [b["seq"] for b in live if b["seq"] >= k], got
        rc, got, err = replay(state["replay"], live[-1]["seq"] + 1000)
        assert rc == 0 and got == [], (rc, got, err)
    finally:
        state.clear()
        sub.stop()
        e.stop()


@h.check("a tiny KV cache evicts: BlockRemoved names blocks stored earlier; topic is sent")
def eviction():
    sub = Sub(topic="brix")
    nblocks = 256 // BS + 1
    e = h.engine(["--kv-events-config", kv_cfg(sub.endpoint, topic="brix"), "--block-size",
                  str(BS), "--max-model-len", "256", "--num-gpu-blocks-override", str(nblocks)])
    try:
        sub.wait_ready()
        prompts = [" ".join(f"p{i}w{k}" for k in range(45)) for i in range(10)]
        assert 8 * BS < len(tokens(e.port, prompts[0])) < 240
        complete(e.port, prompts[0], 8)
        first = sub.wait_quiet()
        assert first and not events_of(first, "BlockRemoved"), \
            "BlockRemoved before any eviction (freeing a finished request's blocks is not one)"
        for p in prompts[1:]:
            complete(e.port, p, 8)
        lines = sub.wait_quiet()
        check_batches(lines, 0)
        assert all(b["topic"] == "brix" for b in lines), {b["topic"] for b in lines}
        stored, removed, live = set(), [], set()
        for b in lines:
            for ev in b["events"]:
                if ev[0] == "BlockStored":
                    for x in ev[1]:
                        assert x not in live, f"block {x} stored twice without removal"
                        live.add(x)
                        stored.add(x)
                else:
                    x = ev[1][0]
                    assert x in live, f"BlockRemoved for {x}, which is not cached"
                    live.discard(x)
                    removed.append(x)
        assert removed, "no BlockRemoved with 10 distinct prompts in a 17-block cache"
        assert len(live) <= nblocks, f"{len(live)} blocks cached in a {nblocks}-block pool"
        assert h.metric_value(h.metrics(e.port), "vllm:prefix_cache_hits_total") == 0
    finally:
        sub.stop()
        e.stop()


def start_fail(cfg):
    p = h.Proc(["engine-sim", "--port", str(h.free_port()), "--kv-events-config", cfg],
               name="engine-bad-kv")
    try:
        rc = p.p.wait(30)
    except subprocess.TimeoutExpired:
        p.p.kill()
        p.p.wait()
        raise AssertionError(f"engine started with --kv-events-config {cfg}")
    return rc, p.text()


@h.check("bad --kv-events-config: invalid JSON, unknown key, bad publisher -> exit 2 naming it")
def bad_config():
    rc, out = start_fail('{"enable_kv_cache_events": true,')
    assert rc == 2, (rc, out)
    assert "kv-events-config" in out and "JSON" in out, out
    rc, out = start_fail('{"enable_kv_cache_events": true, "bogus_knob": 1}')
    assert rc == 2, (rc, out)
    assert "bogus_knob" in out, out
    rc, out = start_fail('{"enable_kv_cache_events": true, "publisher": "kafka"}')
    assert rc == 2, (rc, out)
    assert "publisher" in out and "kafka" in out, out
    rc, out = start_fail('[1, 2]')
    assert rc == 2 and "kv-events-config" in out, (rc, out)


@h.check('"publisher":"null" (or events disabled): the engine serves, nothing is published')
def null_publisher():
    for cfg in ({"enable_kv_cache_events": True, "publisher": "null"},
                {"enable_kv_cache_events": False, "publisher": "zmq"}):
        sub = Sub(timeout_ms=60000)
        cfg["endpoint"] = sub.endpoint
        e = h.engine(["--kv-events-config", json.dumps(cfg)])
        try:
            complete(e.port, " ".join(f"n{k}" for k in range(60)), 20)
            time.sleep(0.8)
            assert not sub.ready.is_set(), f"something connected to the subscriber with {cfg}"
            assert sub.lines == [], sub.lines
        finally:
            sub.stop()
            e.stop()


h.run()
