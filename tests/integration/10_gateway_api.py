"""10 — `brix gateway` API with three engine-sims: health and readiness,
aggregated /v1/models, proxied chat/completions/embeddings/tokenize identical
to direct answers, x-request-id, AIBrix routing headers, routing by model and
by adapter, the random / round-robin / least-request strategies and the
per-request `routing-strategy` header, SSE framing, OpenAI error JSON for
every gateway error, engine errors and 5xx retries, /metrics (promtool,
request counts, histograms, pod and scraped gauges), the access log, and
the YAML config file."""
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

BASE = "llama-3-8b"
OTHER = "qwen-7b"
MSGS = [{"role": "user", "content": "Tell me about gateways."}]
CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"
ERR_KEYS = ["message", "type", "param", "code"]
COMMON = ["--seed", "7", "--output-len-dist", "none"]

# Ports first: the gateway starts before any engine is up (readiness check).
PA, PB, PC = h.free_port(), h.free_port(), h.free_port()
G = h.gateway([PA, PB, PC], ["--max-body-bytes", "8k", "--max-header-bytes", "4k"], ready=False)
EA = EB = EC = None
ENGINE_A = COMMON + ["--enable-lora", "--max-loras", "4", "--lora-modules", "sql=/a", "shared=/s"]
ENGINE_B = COMMON + ["--enable-lora", "--max-loras", "4", "--lora-modules", "math=/b", "shared=/s"]
ENGINE_C = COMMON + ["--served-model-name", OTHER]


def mask(x):
    """Drops wall-clock fields (created) so two answers can be compared."""
    if isinstance(x, dict):
        return {k: ("<t>" if k == "created" else mask(v)) for k, v in x.items()}
    if isinstance(x, list):
        return [mask(v) for v in x]
    return x


def gw_alive(g):
    """Fails with the crash report when a gateway process died."""
    if g.p.poll() is not None:
        tail = [ln for ln in g.text().splitlines()
                if "Sanitizer" in ln or "SUMMARY" in ln or " #" in ln][:12]
        raise AssertionError(f"{g.name} died (exit {g.p.returncode}):\n" + "\n".join(tail))


def gw_post(g, path, body, headers=None):
    try:
        return h.post(g.port, path, body, headers)
    except (ConnectionError, OSError):
        time.sleep(0.3)
        gw_alive(g)
        raise


def ok(g, path, body, headers=None):
    st, hd, j, b = gw_post(g, path, body, headers)
    assert st == 200, f"{path} {body} -> {st}: {b[:400]!r}"
    return hd, j


def openai_err(st, hd, j, b, status, code=None, param=None, etype="invalid_request_error"):
    assert st == status, f"status {st}, want {status}: {b[:300]!r}"
    assert hd.get("content-type") == "application/json", hd
    assert j and list(j) == ["error"], b
    e = j["error"]
    assert list(e) == ERR_KEYS, e
    assert isinstance(e["message"], str) and e["message"], e
    assert e["type"] == etype, e
    assert e["param"] == param, e
    if code is not None:
        assert e["code"] == code, e
    return e


def chat_body(model=BASE, n=4, **kw):
    b = {"model": model, "messages": MSGS, "max_tokens": n}
    b.update(kw)
    return b


def target(hd):
    return hd.get("target-pod")


def routes(g, model, count, headers=None):
    """Sends `count` sequential chats; returns the target-pod of each."""
    out = []
    for i in range(count):
        hd, j = ok(g, CHAT, chat_body(model, 1), headers)
        assert j["model"] == model, j["model"]
        out.append(target(hd))
    return out


def scratch_gateway(fn, extra=()):
    """Runs fn(g) against a gateway of its own (for checks that may crash one),
    then stops it: a sanitizer report fails the check."""
    g = h.gateway([EA, EB, EC], list(extra), name="gateway-scratch")
    try:
        fn(g)
    finally:
        g.stop()


# ------------------------------------------------------------- readiness --

@h.check("/healthz 200 at once; /readyz 503 with no engine up, 200 once one is healthy")
def _():
    global EA, EB, EC
    G.wait_http(G.port, "/healthz")
    st, hd, b = h.request("GET", G.port, "/healthz")
    assert st == 200 and b == b"ok\n", (st, b)
    st, hd, b = h.request("GET", G.port, "/readyz")
    assert st == 503 and b == b"not ready\n", (st, b)
    time.sleep(0.4)  # several health-check rounds against closed ports: still not ready
    st, _, _ = h.request("GET", G.port, "/readyz")
    assert st == 503, st
    st, hd, b = h.request("POST", G.port, "/readyz", body={})
    assert st == 405, st
    EA = h.engine(ENGINE_A, port=PA, name="engine-A")
    h.wait_until(lambda: h.request("GET", G.port, "/readyz")[0] == 200, 5, "/readyz 200")
    st, _, b = h.request("GET", G.port, "/readyz")
    assert b == b"ready\n", b
    EB = h.engine(ENGINE_B, port=PB, name="engine-B")
    EC = h.engine(ENGINE_C, port=PC, name="engine-C")
    h.wait_until(lambda: sorted(h.healthy_pods(G.port).values()) == [1, 1, 1], 5,
                 "three healthy pods")
    assert set(h.healthy_pods(G.port)) == {h.pod_of(PA), h.pod_of(PB), h.pod_of(PC)}


# ---------------------------------------------------------------- models --

@h.check("/v1/models: base models and adapters of every engine, each exactly once")
def _():
    def ids():
        st, j = h.get_json(G.port, "/v1/models")
        assert st == 200
        return [d["id"] for d in j["data"]]
    h.wait_until(lambda: len(ids()) == 5, 5, "five models")
    st, hd, b = h.request("GET", G.port, "/v1/models")
    assert hd.get("content-type") == "application/json", hd
    j = json.loads(b)
    assert list(j) == ["object", "data"] and j["object"] == "list", j
    got = [d["id"] for d in j["data"]]
    assert sorted(got) == sorted([BASE, OTHER, "sql", "math", "shared"]), got
    assert len(set(got)) == len(got), f"duplicates: {got}"
    # base models are listed before adapters
    bases = [i for i, d in enumerate(j["data"]) if d["parent"] is None]
    assert bases == [0, 1], got
    # every card is the engine's own card
    direct = {}
    for e in (EA, EB, EC):
        for d in h.get_json(e.port, "/v1/models")[1]["data"]:
            direct[d["id"]] = d
    for d in j["data"]:
        want = direct[d["id"]]
        assert list(d) == list(want), (list(d), list(want))
        for k in ("object", "owned_by", "root", "parent", "max_model_len"):
            assert d[k] == want[k], (d["id"], k, d[k], want[k])
    by = {d["id"]: d for d in j["data"]}
    assert by["sql"]["parent"] == BASE and by["sql"]["root"] == "/a", by["sql"]
    assert by["math"]["parent"] == BASE and by["math"]["root"] == "/b", by["math"]
    assert by["shared"]["parent"] == BASE, by["shared"]
    st, hd, b = h.request("HEAD", G.port, "/v1/models")
    assert st == 200 and b == b"", (st, b)


# --------------------------------------------------------------- proxying --

@h.check("chat / completions / embeddings / tokenize: the engine's answer, x-request-id echoed")
def _():
    cases = [
        (CHAT, chat_body(BASE, 5)),
        (CMPL, {"model": BASE, "prompt": "Once upon a time", "max_tokens": 6}),
        ("/v1/embeddings", {"model": BASE, "input": ["hello", "world"]}),
        ("/tokenize", {"model": BASE, "prompt": "hello gateway"}),
        ("/tokenize", {"model": BASE, "messages": MSGS}),
    ]
    for i, (path, body) in enumerate(cases):
        rid = f"gw-api-{i}"
        hd, j = ok(G, path, body, {"x-request-id": rid})
        assert hd.get("x-request-id") == rid, hd
        assert hd.get("request-id") == rid, hd
        assert hd.get("content-type") == "application/json", hd
        pod = target(hd)
        assert pod in (h.pod_of(EA), h.pod_of(EB)), hd
        assert hd.get("target-pod-ip") == pod, hd
        assert "content-length" in hd and int(hd["content-length"]) > 0, hd
        port = int(pod.rsplit(":", 1)[1])
        st, dhd, dj, db = h.post(port, path, body, {"x-request-id": rid})
        assert st == 200, db
        assert mask(j) == mask(dj), f"{path}: gateway\n{j}\ndirect\n{dj}"
        if "id" in j:
            assert j["id"].endswith("-" + rid), j["id"]
    # without x-request-id the gateway generates one and passes it on
    hd, j = ok(G, CHAT, chat_body(BASE, 2))
    rid = hd.get("x-request-id", "")
    assert re.fullmatch(r"[0-9a-f]{32}", rid), hd
    assert hd.get("request-id") == rid and j["id"] == "chatcmpl-" + rid, (hd, j["id"])
    # every pod-answered response carries the strategy that chose it
    assert hd.get("routing-strategy") == "weighted", hd  # the default


@h.check("routing by model: an adapter on one engine always goes there; base models too")
def _():
    for model, eng in (("math", EB), ("sql", EA), (OTHER, EC)):
        for strat in ("random", "round-robin", "least-request"):
            for i in range(4):
                hd, j = ok(G, CHAT, chat_body(model, 1), {"routing-strategy": strat})
                assert j["model"] == model, j
                assert target(hd) == h.pod_of(eng), (model, strat, hd)
                assert hd.get("target-pod-ip") == f"127.0.0.1:{eng.port}", hd
                assert hd.get("routing-strategy") == strat, hd
    # a model on both engines is served by both, never by the third
    pods = routes(G, "shared", 30, {"routing-strategy": "random"})
    assert set(pods) == {h.pod_of(EA), h.pod_of(EB)}, pods


# -------------------------------------------------------------- strategies --

@h.check("random: over many requests both pods of the model are used")
def _():
    pods = routes(G, BASE, 40, {"routing-strategy": "random"})
    a, b = pods.count(h.pod_of(EA)), pods.count(h.pod_of(EB))
    assert a + b == 40, pods  # never engine C (it does not serve the model)
    assert a >= 5 and b >= 5, (a, b)


def write_cfg(text):
    f = tempfile.NamedTemporaryFile("w", prefix="brix-gw-", suffix=".yaml", delete=False)
    f.write(text)
    f.close()
    return f.name


@h.check("config file: worker-urls as a YAML list, workers and strategy from the file")
def _():
    path = write_cfg(f"# test config\nworkers: 1\nrouting-strategy: round-robin\n"
                     f"worker-urls:\n  - {h.url_of(EA)}\n  - {h.url_of(EB)}\n"
                     f"health-interval: 100ms\n")
    g = h.gateway([], ["--config", path], pods=2, name="gateway-cfg")
    try:
        st, j = h.get_json(g.port, "/v1/models")
        assert sorted(d["id"] for d in j["data"]) == sorted([BASE, "sql", "math", "shared"]), j
        assert set(h.healthy_pods(g.port)) == {h.pod_of(EA), h.pod_of(EB)}
        hd, _ = ok(g, CHAT, chat_body(BASE, 1))
        assert hd.get("routing-strategy") == "round-robin", hd
        assert "1 workers" in g.text() or "with 1 worker" in g.text(), g.text()[-800:]
    finally:
        g.stop()
        os.unlink(path)


@h.check("round-robin (one worker): strict alternation between the two pods")
def _():
    g = h.gateway([EA, EB], ["--workers", "1", "--routing-strategy", "round-robin"],
                  name="gateway-rr")
    try:
        pods = routes(g, BASE, 12)
        assert set(pods) == {h.pod_of(EA), h.pod_of(EB)}, pods
        for x, y in zip(pods, pods[1:]):
            assert x != y, f"not alternating: {pods}"
        # the header picks it per request on a gateway whose default differs
        pods = routes(G, OTHER, 3, {"routing-strategy": "round-robin"})
        assert pods == [h.pod_of(EC)] * 3, pods
    finally:
        g.stop()


class Reader(threading.Thread):
    """Reads one long stream to its end in the background."""

    def __init__(self, port, body):
        super().__init__(daemon=True)
        self.s = h.Stream(port, CMPL, body)
        self.err = None

    def run(self):
        try:
            self.s.read_to_end(60)
        except Exception as ex:  # reported by the check
            self.err = ex


@h.check("least-request: with pod A busy (long streams), new requests go to B; the header "
         "overrides the default; gauges show the load")
def _():
    body = {"model": "sql", "prompt": "long", "max_tokens": 4000, "ignore_eos": True,
            "stream": True}
    readers = [Reader(G.port, body) for _ in range(3)]
    for r in readers:
        assert r.s.status == 200 and r.s.headers.get("target-pod") == h.pod_of(EA), r.s.headers
        r.s.wait_events(2)
        r.start()
    a, b = h.pod_of(EA), h.pod_of(EB)
    try:
        # the gateway's own in-flight count and the engine's scraped load
        h.wait_until(lambda: h.metric_value(h.metrics(G.port), "brix_gateway_pod_inflight_requests",
                                            {"pod": a}) == 3, 5, "inflight 3 on A")
        h.wait_until(lambda: h.metric_value(
            h.metrics(G.port), "brix_gateway_pod_engine_running_requests", {"pod": a}) == 3,
            5, "engine running 3 on A")
        m = h.metrics(G.port)
        assert h.metric_value(m, "brix_gateway_pod_engine_running_requests", {"pod": b}) == 0, m
        assert h.metric_value(m, "brix_gateway_pod_inflight_requests", {"pod": b}) == 0
        pods = routes(G, BASE, 10)  # the default (weighted) also avoids the busy pod
        assert pods == [b] * 10, pods
        pods = routes(G, BASE, 10, {"routing-strategy": "least-request"})
        assert pods == [b] * 10, pods
        # the per-request header overrides the default
        pods = routes(G, BASE, 30, {"routing-strategy": "random"})
        assert a in pods and b in pods, pods
        assert all(r.is_alive() for r in readers), "the long streams ended too early: inconclusive"
    finally:
        for r in readers:
            r.join(60)
    for r in readers:
        assert r.err is None, r.err
        ev = r.s.events
        assert ev[-1] == "[DONE]" and r.s.ended, ev[-2:]
        assert sum(1 for e in ev[:-1] if e["choices"] and e["choices"][0]["text"]) == 4000
    h.wait_until(lambda: h.metric_value(h.metrics(G.port), "brix_gateway_pod_inflight_requests",
                                        {"pod": a}) == 0, 5, "inflight back to 0 on A")


@h.check("routing-strategy header: unknown name -> 400 with x-error-routing, OpenAI JSON")
def _():
    def fn(g):
        st, hd, j, b = gw_post(g, CHAT, chat_body(BASE, 1), {"routing-strategy": "fastest"})
        e = openai_err(st, hd, j, b, 400, code="invalid_routing_strategy")
        assert hd.get("x-error-routing") == "true", hd
        assert "fastest" in e["message"], e
        assert "target-pod" not in hd, hd
    scratch_gateway(fn)


# --------------------------------------------------------------- streaming --

@h.check("SSE through the gateway: framing and events identical to direct, usage chunk")
def _():
    for path, body in (
            (CHAT, dict(chat_body(BASE, 6), stream=True, stream_options={"include_usage": True})),
            (CMPL, {"model": "shared", "prompt": "Rivers", "max_tokens": 5, "stream": True,
                    "stream_options": {"include_usage": True}}),
            (CHAT, dict(chat_body("math", 3), stream=True))):
        rid = "gw-sse-" + path.rsplit("/", 1)[1] + body["model"]
        s = h.Stream(G.port, path, body, {"x-request-id": rid})
        ev = s.read_to_end(20)
        s.close()
        assert s.status == 200, s.status
        assert s.headers.get("content-type") == "text/event-stream; charset=utf-8", s.headers
        assert s.headers.get("transfer-encoding") == "chunked", s.headers
        assert "content-length" not in s.headers, s.headers
        assert s.headers.get("x-request-id") == rid, s.headers
        pod = s.headers.get("target-pod")
        assert s.ended and s.body.endswith(b"data: [DONE]\n\n"), s.body[-60:]
        port = int(pod.rsplit(":", 1)[1])
        st, dhd, dev, draw = h.sse(port, path, body, {"x-request-id": rid})
        assert st == 200 and dhd.get("content-type") == s.headers["content-type"], dhd
        assert len(ev) == len(dev), (len(ev), len(dev))
        assert mask(ev) == mask(dev), f"gateway:\n{ev}\ndirect:\n{dev}"
        assert ev.count("[DONE]") == 1 and ev[-1] == "[DONE]", ev[-2:]
        assert all(e["id"].endswith("-" + rid) for e in ev[:-1]), ev[0]
        usage = [e for e in ev[:-1] if e.get("usage")]
        if body.get("stream_options"):
            assert len(usage) == 1 and usage[0] is ev[-2] and usage[0]["choices"] == [], ev[-2]
            assert usage[0]["usage"]["completion_tokens"] == body["max_tokens"], usage
        else:
            assert not usage, usage


# ------------------------------------------------------------------ errors --

@h.check("gateway errors: malformed JSON (byte offset), array body, missing model -> 400")
def _():
    st, hd, b = h.request("POST", G.port, CHAT, raw_body=b'{"model": x}',
                          headers={"content-type": "application/json"})
    e = openai_err(st, hd, json.loads(b), b, 400, code="invalid_json")
    assert re.search(r"byte offset 10\b", e["message"]), e
    st, hd, j, b = gw_post(G, CHAT, [{"model": BASE}])
    openai_err(st, hd, j, b, 400)
    for body in ({"messages": MSGS}, {"model": "", "messages": MSGS}, {"model": 3}):
        st, hd, j, b = gw_post(G, CHAT, body)
        openai_err(st, hd, j, b, 400, param="model")
        assert "target-pod" not in hd, hd


@h.check("malformed JSON: the offset named is the first bad byte's")
def _():
    # (offset, body): where a strict parser (Python's json) stops
    for off, raw in ((10, b'{"model": x}'), (14, b'{"model": "a",,}'), (1, b'{,}'),
                     (9, b'{"model" 1}'), (3, b'[1,]'), (7, b'{"a":1}x')):
        assert json_offset(raw) == off, (raw, json_offset(raw))
        st, hd, b = h.request("POST", G.port, CHAT, raw_body=raw,
                              headers={"content-type": "application/json"})
        e = openai_err(st, hd, json.loads(b), b, 400, code="invalid_json")
        assert re.search(rf"byte offset {off}\b", e["message"]), (raw, e["message"])


def json_offset(raw):
    try:
        json.loads(raw)
    except json.JSONDecodeError as ex:
        return ex.pos
    return None


@h.check("gateway errors: unknown model -> 404 model_not_found with x-error-no-model-backends")
def _():
    def fn(g):
        for path in (CHAT, CMPL, "/v1/embeddings"):
            st, hd, j, b = gw_post(g, path, {"model": "no-such-model", "prompt": "x",
                                             "messages": MSGS, "input": "x"})
            e = openai_err(st, hd, j, b, 404, code="model_not_found", param="model")
            assert "no-such-model" in e["message"], e
            assert hd.get("x-error-no-model-backends") == "no-such-model", hd
    scratch_gateway(fn)


@h.check("gateway errors: wrong method 405 (Allow), unknown path 404, 413, 431")
def _():
    for method, path, allow in (("GET", CHAT, "POST"), ("POST", "/v1/models", "GET, HEAD"),
                                ("DELETE", "/metrics", "GET, HEAD"), ("PUT", CMPL, "POST")):
        st, hd, b = h.request(method, G.port, path, body={} if method != "GET" else None)
        openai_err(st, hd, json.loads(b), b, 405, code="method_not_allowed")
        assert hd.get("allow") == allow, (method, path, hd)
    for path in ("/nope", "/v1x/chat", "/health"):
        st, hd, b = h.request("GET", G.port, path)
        openai_err(st, hd, json.loads(b), b, 404, code="not_found")
    big = {"model": BASE, "prompt": "x" * 9000}
    st, hd, j, b = gw_post(G, CMPL, big)
    openai_err(st, hd, j, b, 413)
    st, hd, j, b = gw_post(G, CMPL, {"model": BASE, "prompt": "x"}, {"x-big": "y" * 5000})
    openai_err(st, hd, j, b, 431)
    # the gateway is still fine
    ok(G, CMPL, {"model": BASE, "prompt": "x", "max_tokens": 1})


@h.check("engine errors pass through (400, 429); no retry on 4xx")
def _():
    before = h.metric_value(h.metrics(G.port), "brix_gateway_retries_total", {"model": BASE}) or 0
    for code in (400, 429):
        rid = f"fault-{code}"
        st, hd, j, b = gw_post(G, CHAT, chat_body(BASE, 2),
                               {"x-brix-fault": f"status={code}", "x-request-id": rid})
        assert st == code, (st, b)
        pod = target(hd)
        assert pod in (h.pod_of(EA), h.pod_of(EB)), hd
        port = int(pod.rsplit(":", 1)[1])
        dst, dhd, dj, db = h.post(port, CHAT, chat_body(BASE, 2),
                                  {"x-brix-fault": f"status={code}", "x-request-id": rid})
        assert dst == code and j == dj, (j, dj)
    after = h.metric_value(h.metrics(G.port), "brix_gateway_retries_total", {"model": BASE}) or 0
    assert after == before, (before, after)


@h.check("engine 5xx on every pod: retried max-retries times, then 502 (OpenAI JSON)")
def _():
    def fn(g):
        st, hd, j, b = gw_post(g, CHAT, chat_body(BASE, 2), {"x-brix-fault": "status=503"})
        openai_err(st, hd, j, b, 502, etype="api_error")
        m = h.metrics(g.port)
        assert h.metric_value(m, "brix_gateway_retries_total", {"model": BASE}) == 1, m
        assert h.metric_value(m, "brix_gateway_upstream_errors_total",
                              {"kind": "status_5xx"}) == 2, m
        assert h.metric_value(m, "brix_gateway_requests_total",
                              {"model": BASE, "status": "502"}) == 1, m
    scratch_gateway(fn, ["--max-retries", "1"])

    def fn2(g):
        # more retries allowed than there are pods: still an upstream failure
        st, hd, j, b = gw_post(g, CHAT, chat_body(BASE, 2), {"x-brix-fault": "status=500"})
        openai_err(st, hd, j, b, 502, etype="api_error")
        m = h.metrics(g.port)
        assert h.metric_value(m, "brix_gateway_upstream_errors_total",
                              {"kind": "status_5xx"}) == 2, m
    scratch_gateway(fn2, ["--max-retries", "2"])


@h.check("no ready engine for the model -> 503 with Retry-After and OpenAI JSON")
def _():
    dead = h.free_port()
    g = h.gateway([dead], ["--retry-after", "7"], ready=False, name="gateway-nopod")
    try:
        g.wait_http(g.port, "/healthz")
        st, hd, j, b = gw_post(g, CHAT, chat_body(BASE, 1))
        openai_err(st, hd, j, b, 503, code="service_unavailable", etype="overloaded_error")
        assert hd.get("retry-after") == "7", hd
    finally:
        g.stop()


# ----------------------------------------------------------------- metrics --

@h.check("/metrics: promtool clean, request counts by model/status/strategy, histograms")
def _():
    g = h.gateway([EA, EB, EC], name="gateway-metrics")
    try:
        for _ in range(3):
            ok(g, CHAT, chat_body(BASE, 2))
        for _ in range(2):
            ok(g, CMPL, {"model": "sql", "prompt": "x", "max_tokens": 2},
               {"routing-strategy": "random"})
        for _ in range(2):
            s = h.Stream(g.port, CHAT, dict(chat_body(OTHER, 3), stream=True))
            s.read_to_end(20)
            s.close()
        gw_post(g, CHAT, chat_body(BASE, 2), {"x-brix-fault": "status=400"})
        gw_post(g, CHAT, {"messages": MSGS})
        h.request("GET", g.port, "/nope")
        st, hd, b = h.request("GET", g.port, "/metrics")
        assert st == 200 and hd["content-type"] == "text/plain; version=0.0.4; charset=utf-8", hd
        r = subprocess.run(["promtool", "check", "metrics"], input=b, capture_output=True,
                           timeout=30)
        out = (r.stdout + r.stderr).decode()
        assert r.returncode == 0 and not out.strip(), f"promtool rc {r.returncode}:\n{out}"
        m = b.decode()
        assert ":" not in "".join(ln.split("{")[0].split()[0] for ln in m.splitlines()
                                  if ln and not ln.startswith("#")), "':' in a metric name"
        req = {}
        for ln in m.splitlines():
            mm = re.match(r'^brix_gateway_requests_total\{model="([^"]*)",status="(\d+)",'
                          r'strategy="([^"]*)"\}\s+(\S+)$', ln)
            if mm:
                req[mm.group(1, 2, 3)] = float(mm.group(4))
        want = {(BASE, "200", "weighted"): 3, ("sql", "200", "random"): 2,
                (OTHER, "200", "weighted"): 2, (BASE, "400", "weighted"): 1,
                ("", "400", ""): 1, ("", "404", ""): 1}
        assert req == want, req
        mv = h.metric_value
        for model, n in ((BASE, 4), ("sql", 2), (OTHER, 2)):
            assert mv(m, "brix_gateway_request_duration_seconds_count", {"model": model}) == n, m
            assert mv(m, "brix_gateway_request_duration_seconds_bucket",
                      {"model": model, "le": "+Inf"}) == n
        assert mv(m, "brix_gateway_time_to_first_token_seconds_count", {"model": OTHER}) == 2, m
        assert mv(m, "brix_gateway_time_to_first_token_seconds_count", {"model": BASE}) is None, m
        assert mv(m, "brix_gateway_routing_decision_seconds_count") == 8, m

        def idle_gauges():
            m = h.metrics(g.port)
            return all(mv(m, name, {"pod": h.pod_of(e)}) == want for e in (EA, EB, EC)
                       for name, want in (("brix_gateway_pod_healthy", 1),
                                          ("brix_gateway_pod_inflight_requests", 0),
                                          ("brix_gateway_pod_engine_running_requests", 0),
                                          ("brix_gateway_pod_engine_waiting_requests", 0)))
        h.wait_until(idle_gauges, 5, "pod gauges: healthy 1, in flight / running / waiting 0")
        m = h.metrics(g.port)
        for e in (EA, EB, EC):
            assert mv(m, "brix_gateway_scrapes_total", {"pod": h.pod_of(e), "result": "ok"}) > 0
            kv = mv(m, "brix_gateway_pod_engine_kv_cache_usage_ratio", {"pod": h.pod_of(e)})
            assert kv is not None and 0 <= kv <= 1, kv
    finally:
        g.stop()


# -------------------------------------------------------------- access log --

ACCESS_FIELDS = ["model", "pod", "strategy", "status", "ttft_ms", "dur_ms", "prompt_tokens",
                 "completion_tokens"]


def access_lines(g):
    return [ln for ln in g.text().splitlines() if " access " in ln]


def fields(line):
    return dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))


@h.check("access log: one line per proxied request with id, model, pod, strategy, status, "
         "ttft, duration and tokens")
def _():
    rid = "acc-nonstream"
    hd, j = ok(G, CHAT, chat_body(BASE, 5), {"x-request-id": rid})
    s = h.Stream(G.port, CHAT, dict(chat_body("math", 4), stream=True,
                                    stream_options={"include_usage": True}),
                 {"x-request-id": "acc-stream"})
    ev = s.read_to_end(20)
    s.close()
    time.sleep(0.2)
    lines = access_lines(G)
    mine = [ln for ln in lines if f"req={rid} " in ln]
    assert len(mine) == 1, mine
    f = fields(mine[0])
    assert f["model"] == BASE and f["pod"] == target(hd) and f["status"] == "200", f
    assert f["strategy"] == "weighted", f
    assert f["prompt_tokens"] == str(j["usage"]["prompt_tokens"]), f
    assert f["completion_tokens"] == "5", f
    assert float(f["dur_ms"]) >= float(f["ttft_ms"]) >= 0, f
    mine = [ln for ln in lines if "req=acc-stream " in ln]
    assert len(mine) == 1, mine
    f = fields(mine[0])
    assert f["model"] == "math" and f["pod"] == h.pod_of(EB) and f["status"] == "200", f
    assert f["completion_tokens"] == "4", f
    assert f["prompt_tokens"] == str(ev[-2]["usage"]["prompt_tokens"]), f
    # every line (errors answered by the gateway included) carries every field
    bad = [ln for ln in lines if not ln.split(" access ")[0].rstrip().split(" ")[-1]
           .startswith("req=") or any(k not in fields(ln) for k in ACCESS_FIELDS)]
    assert not bad, f"{len(bad)} of {len(lines)} access lines lack fields, e.g.:\n" + \
        "\n".join(bad[:4])


# ------------------------------------------------------------------ config --

@h.check("CLI/config errors: unknown YAML key -> exit 2 with file:line:col; no --worker-urls "
         "-> exit 2")
def _():
    path = write_cfg(f"workers: 1\nworker-urls:\n  - {h.url_of(EA)}\nrouting-strategi: random\n")
    try:
        r = subprocess.run([h.BRIX, "gateway", "--config", path, "--port", "0"],
                           capture_output=True, timeout=20)
        err = r.stderr.decode()
        assert r.returncode == 2, (r.returncode, err)
        assert f"{path}:4:1:" in err and "routing-strategi" in err, err
    finally:
        os.unlink(path)
    r = subprocess.run([h.BRIX, "gateway", "--port", "0"], capture_output=True, timeout=20)
    assert r.returncode == 2 and "--worker-urls" in r.stderr.decode(), (r.returncode, r.stderr)
    r = subprocess.run([h.BRIX, "gateway", "--port", "0", "--worker-urls", h.url_of(EA),
                        "--routing-strategy", "fastest"], capture_output=True, timeout=20)
    assert r.returncode == 2 and "fastest" in r.stderr.decode(), (r.returncode, r.stderr)


@h.check("shutdown: gateway and engines exit 0 on SIGTERM with clean logs")
def _():
    errs = []
    for p in (G, EA, EB, EC):
        if p is None:
            continue
        try:
            p.stop()
        except AssertionError as ex:
            errs.append(str(ex)[:3000])
    assert not errs, "\n".join(errs)


h.run()
