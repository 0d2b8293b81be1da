"""engine-sim LoRA adapters: /v1/models listing, runtime load/unload with
vLLM's statuses and messages, adapter-addressed requests, --lora-path-check,
the per-batch adapter limit (--max-loras) as vllm:lora_requests_info shows it,
and prefix-cache separation between an adapter and the base model."""
import json
import os
import re
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

BASE = "llama-3-8b"  # engine-sim's default --model


def load(port, body, raw=None):
    return h.request("POST", port, "/v1/load_lora_adapter", body, raw_body=raw)


def unload(port, body):
    return h.request("POST", port, "/v1/unload_lora_adapter", body)


def err_msg(b):
    j = json.loads(b)
    return j["error"]["message"], j["error"]["type"], j["error"]["code"]


def model_ids(port):
    st, j = h.get_json(port, "/v1/models")
    assert st == 200, st
    return [m["id"] for m in j["data"]], j["data"]


def lora_info(text):
    """(max_lora, running list, waiting list) of the newest lora_requests_info series."""
    best = None
    for line in text.splitlines():
        if not line.startswith("vllm:lora_requests_info{"):
            continue
        m = re.match(r'^vllm:lora_requests_info\{([^}]*)\}\s+(\S+)$', line)
        assert m, f"bad lora_requests_info line {line!r}"
        lab = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(1)))
        assert set(lab) == {"max_lora", "running_lora_adapters", "waiting_lora_adapters"}, lab
        ts = float(m.group(2))
        if best is None or ts >= best[0]:
            best = (ts, lab)
    assert best, "no vllm:lora_requests_info series:\n" + text[-2000:]
    lab = best[1]
    split = lambda s: [x for x in s.split(",") if x]  # noqa: E731
    return lab["max_lora"], split(lab["running_lora_adapters"]), split(lab["waiting_lora_adapters"])


def complete(port, model, prompt="Tell me a story", max_tokens=8, **kw):
    body = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
    body.update(kw)
    return h.post(port, "/v1/completions", body, timeout=120)


@h.check("/v1/models lists the base model, then --lora-modules adapters with root=path, parent=base")
def models_listing():
    e = h.engine(["--enable-lora", "--max-loras", "2", "--lora-modules", "a=/p/a", "b=/p/b"])
    try:
        ids, data = model_ids(e.port)
        assert ids == [BASE, "a", "b"], ids
        base, a, b = data
        assert base["root"] == BASE and base["parent"] is None, base
        assert base["max_model_len"] == 8192, base
        assert base["object"] == "model" and base["owned_by"] == "vllm", base
        for card, path in ((a, "/p/a"), (b, "/p/b")):
            assert card["root"] == path, card
            assert card["parent"] == BASE, card
            assert card["max_model_len"] is None, card
            assert card["object"] == "model" and card["owned_by"] == "vllm", card
        # the startup adapters answer as themselves
        for name in ("a", "b"):
            st, _, j, raw = complete(e.port, name)
            assert st == 200, raw
            assert j["model"] == name, j
            assert j["usage"]["completion_tokens"] >= 1, j
    finally:
        e.stop()


@h.check("runtime load/unload: vLLM's statuses, plain-text success bodies and error messages")
def load_unload():
    e = h.engine(["--enable-lora", "--max-loras", "2", "--lora-modules", "a=/p/a", "b=/p/b"])
    try:
        st, hd, b = load(e.port, {"lora_name": "x", "lora_path": "/p/x"})
        assert st == 200, (st, b)
        assert b == b"Success: LoRA adapter 'x' added successfully.", b
        assert hd.get("content-type", "").startswith("text/plain"), hd
        ids, data = model_ids(e.port)
        assert ids == [BASE, "a", "b", "x"], ids
        assert data[3]["root"] == "/p/x" and data[3]["parent"] == BASE, data[3]

        # it answers as `model`, non-streaming and streaming, completions and chat
        st, _, j, raw = complete(e.port, "x")
        assert st == 200, raw
        assert j["model"] == "x", j
        st, _, j, raw = h.post(e.port, "/v1/chat/completions",
                               {"model": "x", "max_tokens": 4,
                                "messages": [{"role": "user", "content": "hi"}]})
        assert st == 200, raw
        assert j["model"] == "x", j
        st, _, events, raw = h.sse(e.port, "/v1/completions",
                                   {"model": "x", "prompt": "hi", "max_tokens": 4, "stream": True})
        assert st == 200, raw
        assert events[-1] == "[DONE]", events
        assert all(ev["model"] == "x" for ev in events[:-1]), events

        # loading the same name again
        st, _, b = load(e.port, {"lora_name": "x", "lora_path": "/p/other"})
        assert st == 400, (st, b)
        assert err_msg(b) == ("The lora adapter 'x' has already been loaded.",
                              "InvalidUserInput", 400), b
        # also for a --lora-modules adapter
        st, _, b = load(e.port, {"lora_name": "a", "lora_path": "/p/a"})
        assert st == 400, (st, b)
        assert "has already been loaded" in err_msg(b)[0], b

        # missing or empty fields
        for body in ({"lora_name": "y"}, {"lora_path": "/p/y"}, {},
                     {"lora_name": "", "lora_path": "/p/y"}, {"lora_name": "y", "lora_path": ""}):
            st, _, b = load(e.port, body)
            assert st == 400, (body, st, b)
            assert err_msg(b) == ("Both 'lora_name' and 'lora_path' must be provided.",
                                  "InvalidUserInput", 400), (body, b)
        ids, _ = model_ids(e.port)
        assert ids == [BASE, "a", "b", "x"], ids

        # unload
        st, hd, b = unload(e.port, {"lora_name": "x"})
        assert st == 200, (st, b)
        assert b == b"Success: LoRA adapter 'x' removed successfully.", b
        assert hd.get("content-type", "").startswith("text/plain"), hd
        ids, _ = model_ids(e.port)
        assert ids == [BASE, "a", "b"], ids
        st, _, j, raw = complete(e.port, "x")
        assert st == 404, raw
        assert j["error"]["message"] == "The model `x` does not exist.", j
        st, _, b = unload(e.port, {"lora_name": "x"})
        assert st == 404, (st, b)
        assert err_msg(b) == ("The lora adapter 'x' cannot be found.", "NotFoundError", 404), b
        st, _, b = unload(e.port, {})
        assert st == 400, (st, b)
        assert err_msg(b)[0] == "'lora_name' needs to be provided to unload a LoRA adapter.", b

        # a startup adapter can be unloaded too, and loaded again under the same name
        st, _, b = unload(e.port, {"lora_name": "b"})
        assert st == 200, (st, b)
        ids, _ = model_ids(e.port)
        assert ids == [BASE, "a"], ids
        st, _, b = load(e.port, {"lora_name": "b", "lora_path": "/p/b2"})
        assert st == 200, (st, b)
        ids, data = model_ids(e.port)
        assert ids == [BASE, "a", "b"] and data[2]["root"] == "/p/b2", data
        st, _, j, raw = complete(e.port, "b")
        assert st == 200 and j["model"] == "b", raw
    finally:
        e.stop()


@h.check("a request naming an unknown adapter gets 404 The model `X` does not exist.")
def unknown_adapter():
    e = h.engine(["--enable-lora", "--lora-modules", "a=/p/a"])
    try:
        for path, body in (("/v1/completions", {"model": "nope", "prompt": "hi", "max_tokens": 2}),
                           ("/v1/chat/completions",
                            {"model": "nope", "max_tokens": 2,
                             "messages": [{"role": "user", "content": "hi"}]})):
            st, _, j, raw = h.post(e.port, path, body)
            assert st == 404, (path, raw)
            assert j["error"] == {"message": "The model `nope` does not exist.",
                                  "type": "NotFoundError", "param": None, "code": 404}, j
    finally:
        e.stop()


@h.check("without --enable-lora: load/unload routes 404, adapter names unknown, --lora-modules refused")
def lora_disabled():
    e = h.engine([])
    try:
        st, _, b = load(e.port, {"lora_name": "x", "lora_path": "/p/x"})
        assert st == 404, (st, b)
        st, _, b = unload(e.port, {"lora_name": "x"})
        assert st == 404, (st, b)
        ids, _ = model_ids(e.port)
        assert ids == [BASE], ids
        st, _, j, raw = complete(e.port, "x")
        assert st == 404, raw
    finally:
        e.stop()
    p = h.Proc(["engine-sim", "--port", str(h.free_port()), "--lora-modules", "a=/p/a"],
               name="engine-no-lora")
    rc = p.p.wait(30)
    assert rc == 2, (rc, p.text())
    assert "--lora-modules" in p.text() and "--enable-lora" in p.text(), p.text()


@h.check("--lora-path-check: a missing path is 404 'No adapter found', an existing directory loads")
def path_check():
    d = tempfile.mkdtemp(prefix="brix-lora-")
    missing = os.path.join(d, "does-not-exist")
    e = h.engine(["--enable-lora", "--lora-path-check"])
    try:
        st, _, b = load(e.port, {"lora_name": "gone", "lora_path": missing})
        assert st == 404, (st, b)
        msg, typ, code = err_msg(b)
        assert "No adapter found" in msg and code == 404, b
        ids, _ = model_ids(e.port)
        assert ids == [BASE], ids
        st, _, b = load(e.port, {"lora_name": "here", "lora_path": d})
        assert st == 200, (st, b)
        assert b == b"Success: LoRA adapter 'here' added successfully.", b
        ids, data = model_ids(e.port)
        assert ids == [BASE, "here"] and data[1]["root"] == d, data
        st, _, j, raw = complete(e.port, "here")
        assert st == 200 and j["model"] == "here", raw
    finally:
        e.stop()
    # at start-up, a missing --lora-modules path is a start-up error
    p = h.Proc(["engine-sim", "--port", str(h.free_port()), "--enable-lora", "--lora-path-check",
                "--lora-modules", f"a={missing}"], name="engine-bad-path")
    rc = p.p.wait(30)
    assert rc == 2, (rc, p.text())
    assert "No adapter found" in p.text(), p.text()
    # without the check any path is accepted
    e = h.engine(["--enable-lora", "--lora-modules", f"a={missing}"])
    try:
        st, _, b = load(e.port, {"lora_name": "x", "lora_path": missing})
        assert st == 200, (st, b)
    finally:
        e.stop()
    os.rmdir(d)


def run_concurrently(port, models, max_tokens, poll):
    """Starts one request per entry of models at once; calls poll() until all
    finish. Returns the list of (status, json) in order."""
    results = [None] * len(models)

    def go(i, m):
        st, _, j, raw = complete(port, m, prompt=f"request {i} for {m}", max_tokens=max_tokens,
                                 ignore_eos=True)
        results[i] = (st, j if j is not None else raw)

    ts = [threading.Thread(target=go, args=(i, m)) for i, m in enumerate(models)]
    for t in ts:
        t.start()
    while any(t.is_alive() for t in ts):
        poll()
        time.sleep(0.005)
    for t in ts:
        t.join()
    return results


@h.check("--max-loras 1: two adapters never run in the same batch; the other waits; all complete")
def max_loras_one():
    e = h.engine(["--enable-lora", "--max-loras", "1", "--lora-modules", "a=/p/a", "b=/p/b",
                  "--time-scale", "0.2"])
    seen = []
    try:
        def poll():
            seen.append(lora_info(h.metrics(e.port)))
        models = ["a", "b", "a", "b"]
        res = run_concurrently(e.port, models, 120, poll)
        for (st, j), m in zip(res, models):
            assert st == 200, j
            assert j["model"] == m, j
            assert j["usage"]["completion_tokens"] == 120, j
            assert j["choices"][0]["finish_reason"] == "length", j
        assert seen, "no scrape happened during the run"
        for maxl, running, waiting in seen:
            assert maxl == "1", maxl
            assert len(running) <= 1, f"two adapters running at once with --max-loras 1: {running}"
        blocked = [s for s in seen if len(s[1]) == 1 and s[2] and s[1][0] not in s[2]]
        assert blocked, f"never saw one adapter running while the other waited: {seen[:20]}"
        assert any(s[1] == ["a"] for s in seen) and any(s[1] == ["b"] for s in seen), seen
        assert lora_info(h.metrics(e.port))[1:] == ([], []), "adapters still listed after the run"
    finally:
        e.stop()


@h.check("--max-loras 2: requests for two adapters run in the same batch")
def max_loras_two():
    e = h.engine(["--enable-lora", "--max-loras", "2", "--lora-modules", "a=/p/a", "b=/p/b",
                  "--time-scale", "0.2"])
    seen = []
    try:
        def poll():
            seen.append(lora_info(h.metrics(e.port)))
        res = run_concurrently(e.port, ["a", "b"], 120, poll)
        for st, j in res:
            assert st == 200 and j["usage"]["completion_tokens"] == 120, j
        assert all(s[0] == "2" for s in seen), seen
        assert any(sorted(s[1]) == ["a", "b"] for s in seen), \
            f"never saw both adapters running with --max-loras 2: {seen[:20]}"
    finally:
        e.stop()


@h.check("unloading an adapter with a request in flight: the request completes, the name is gone")
def unload_in_flight():
    e = h.engine(["--enable-lora", "--lora-modules", "a=/p/a", "--time-scale", "0.2"])
    try:
        out = {}

        def go():
            out["r"] = complete(e.port, "a", prompt="long running adapter request",
                                max_tokens=300, ignore_eos=True)
        t = threading.Thread(target=go)
        t.start()
        deadline = time.time() + 10
        while lora_info(h.metrics(e.port))[1] != ["a"]:
            assert time.time() < deadline and t.is_alive(), "the adapter request never ran"
            time.sleep(0.005)
        st, _, b = unload(e.port, {"lora_name": "a"})
        assert st == 200, (st, b)
        # still running: vLLM labels lora_requests_info from the requests, not the registry
        text = h.metrics(e.port)
        if h.metric_value(text, "vllm:num_requests_running") == 1:
            assert lora_info(text)[1] == ["a"], \
                f"running_lora_adapters {lora_info(text)[1]} while a request on 'a' runs"
        ids, _ = model_ids(e.port)
        assert ids == [BASE], ids
        st, _, j, raw = complete(e.port, "a")
        assert st == 404, raw
        # the same name can be loaded again at once, as a new adapter
        st, _, b = load(e.port, {"lora_name": "a", "lora_path": "/p/a2"})
        assert st == 200, (st, b)
        t.join(60)
        st, j, raw = out["r"][0], out["r"][2], out["r"][3]
        assert st == 200, raw
        assert j["model"] == "a" and j["usage"]["completion_tokens"] == 300, j
        st, _, j, raw = complete(e.port, "a")
        assert st == 200 and j["model"] == "a", raw
    finally:
        e.stop()


@h.check("an adapter's prompt blocks are cached apart from the base model's")
def prefix_cache_per_adapter():
    e = h.engine(["--enable-lora", "--max-loras", "2", "--lora-modules", "a=/p/a", "b=/p/b"])
    try:
        prompt = " ".join(f"topic{i} detail" for i in range(120))
        st, _, j, _ = h.post(e.port, "/tokenize", {"prompt": prompt})
        n = j["count"]
        assert n > 100, n
        full_hit = (n - 1) // 16 * 16

        def hits():
            return h.metric_value(h.metrics(e.port), "vllm:prefix_cache_hits_total")

        def send(model):
            before = hits()
            st, _, j, raw = complete(e.port, model, prompt=prompt, max_tokens=2)
            assert st == 200, raw
            assert j["usage"]["prompt_tokens"] == n, j
            return hits() - before

        assert send(BASE) == 0
        assert send("a") == 0, "adapter request hit the base model's cached blocks"
        assert send("b") == 0, "adapter b hit adapter a's cached blocks"
        assert send("a") == full_hit, "repeat on the same adapter should hit its own blocks"
        assert send(BASE) == full_hit, "repeat on the base model should hit the base blocks"
        assert send("b") == full_hit
    finally:
        e.stop()


h.run()
