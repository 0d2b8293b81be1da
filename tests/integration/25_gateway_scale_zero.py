"""25 — scale from zero at the gateway, draining replicas, and the load
reports the autoscaler reads (issue 13, the gateway's side).

A fake controller (the protocol as the gateway sees it: NDJSON watch with
"deployments", POST /v1/deployments/NAME/wake, POST /v1/activity) and real
engine-sims. Checks: a request for a model whose deployment is at zero
replicas is held while its deployment is woken (one wake, at
/v1/deployments/NAME/wake, never mixed up with an adapter of the same name),
and several held requests are all answered 200, in their arrival order, once
a snapshot shows a ready replica (an engine-sim the test starts on the wake);
without a replica the hold ends in 503 model_scaling_from_zero with
Retry-After after --scale-from-zero-timeout; a full hold queue answers the
same 503 at once; unknown models stay 404; a Draining replica gets no new
request while a stream already on it runs to its end; every activity report
carries the gateway's id and cumulative per-model load counters that grow by
exactly the requests sent (adapters counted toward their base model), with
token counts equal to the usage the responses carried."""
import atexit
import json
import os
import queue
import re
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

BASE = "llama-3-8b"     # deployment "llama", scaled to zero at first
QWEN = "qwen-1.5b"      # deployment "qwen", two running replicas (draining)
IDLE = "mistral-7b"     # deployment "mistral": at zero, and no replica ever comes
CMPL = "/v1/completions"


# ------------------------------------------------------- fake controller --

class FakeController:
    """GET /v1/watch streams chunked NDJSON (the full state on connect and on
    every push, heartbeats every 5 s); wakes and activity reports are
    recorded."""

    def __init__(self):
        self.port = h.free_port()
        self.lock = threading.Lock()
        self.replicas, self.adapters, self.deployments = [], [], []
        self.version = 0
        self.watchers = []
        self.wakes = []      # (time, "adapters" | "deployments", name)
        self.activity = []   # (time, body)
        fc = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _send(self, status, obj):
                b = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

            def _chunk(self, line):
                data = (json.dumps(line) + "\n").encode()
                self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
                self.wfile.flush()

            def do_GET(self):
                if self.path != "/v1/watch":
                    return self._send(404, {"error": "no route"})
                q = queue.Queue()
                with fc.lock:
                    fc.watchers.append(q)
                    first = fc._snapshot()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-ndjson")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                try:
                    self._chunk(first)
                    while True:
                        try:
                            item = q.get(timeout=5)
                        except queue.Empty:
                            with fc.lock:
                                item = {"type": "heartbeat", "version": fc.version}
                        if item is None:
                            break
                        self._chunk(item)
                except OSError:
                    pass
                finally:
                    with fc.lock:
                        if q in fc.watchers:
                            fc.watchers.remove(q)
                self.close_connection = True

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                m = re.match(r"^/v1/(adapters|deployments)/([^/]+)/wake$", self.path)
                if m:
                    kind, name = m.groups()
                    with fc.lock:
                        fc.wakes.append((time.time(), kind, name))
                        objs = fc.adapters if kind == "adapters" else fc.deployments
                        known = [o for o in objs if o["name"] == name]
                    if not known:
                        return self._send(404, {"error": f"no {kind[:-1]} {name}"})
                    return self._send(202, {"name": name, "replicas": 1})
                if self.path == "/v1/activity":
                    with fc.lock:
                        fc.activity.append((time.time(), json.loads(body)))
                    return self._send(200, {"ok": True})
                return self._send(404, {"error": "no route"})

        self.srv = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.srv.daemon_threads = True
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _snapshot(self):
        return json.loads(json.dumps({"type": "snapshot", "version": self.version,
                                      "replicas": self.replicas, "adapters": self.adapters,
                                      "deployments": self.deployments}))

    def push(self, replicas=None, adapters=None, deployments=None):
        with self.lock:
            if replicas is not None:
                self.replicas = replicas
            if adapters is not None:
                self.adapters = adapters
            if deployments is not None:
                self.deployments = deployments
            self.version += 1
            snap = self._snapshot()
            for q in self.watchers:
                q.put(snap)

    def wakes_for(self, kind, name):
        with self.lock:
            return [t for t, k, n in self.wakes if k == kind and n == name]

    def reports(self, since=0.0):
        with self.lock:
            return [b for t, b in self.activity if t >= since]

    def stop(self):
        self.srv.shutdown()
        self.srv.server_close()
        with self.lock:
            for q in self.watchers:
                q.put(None)


def replica(name, eng, model, ready=True, phase="Running", adapters=()):
    return {"name": name, "deployment": model.split("-")[0], "model": model, "url": h.url_of(eng),
            "phase": phase, "ready": ready, "adapters": list(adapters)}


def deployment(name, model, replicas=0, ready=0, scale_to_zero=True):
    return {"name": name, "model": model, "replicas": replicas, "ready": ready,
            "scaleToZero": scale_to_zero}


def complete(g, model, max_tokens=2, timeout=30, headers=None):
    return h.post(g.port, CMPL, {"model": model, "prompt": "Hello there",
                                 "max_tokens": max_tokens}, headers, timeout=timeout)


def mv(g, name, labels=None):
    return h.metric_value(h.metrics(g.port), name, labels) or 0


def pods_now(g):
    return {k for k, v in h.healthy_pods(g.port).items() if v == 1}


def last_load(c, model, since=0.0):
    rs = [r for r in c.reports(since) if model in r.get("load", {})]
    return rs[-1]["load"][model] if rs else None


# ------------------------------------------------------------- the fleet --

ENGINE_FLAGS = ["--time-scale", "1", "--output-len-dist", "none", "--seed", "5"]
Q0 = h.engine(ENGINE_FLAGS + ["--served-model-name", QWEN], name="engine-q0")
Q1 = h.engine(ENGINE_FLAGS + ["--served-model-name", QWEN], name="engine-q1")
E0 = None  # the llama replica, started when the controller is asked to wake it

DEPLOYMENTS = [deployment("llama", BASE), deployment("qwen", QWEN, 2, 2, False),
               deployment("mistral", IDLE)]
C = FakeController()
C.push([replica("qwen-0", Q0, QWEN), replica("qwen-1", Q1, QWEN)], [], DEPLOYMENTS)
G = h.gateway([], ["--controller", C.url, "--scale-from-zero-timeout", "20s", "--workers", "1"],
              pods=2)
# a gateway whose holds end soon and whose queue holds one request
C2 = FakeController()
C2.push([replica("qwen-0", Q0, QWEN)], [], [deployment("mistral", IDLE)])
G2 = h.gateway([], ["--controller", C2.url, "--scale-from-zero-timeout", "1500ms",
                    "--max-held-requests", "1", "--retry-after", "1"], pods=1, name="gateway-2")
PROCS = [G, G2, Q0, Q1]


def _cleanup():
    for p in PROCS:
        if p and p.p.poll() is None:
            p.p.kill()


atexit.register(_cleanup)


@h.check("--help documents --scale-from-zero-timeout and --max-held-requests")
def _():
    p = h.Proc(["gateway", "--help"], name="gateway-help")
    p.p.wait(10)
    out = p.text()
    for flag in ("--scale-from-zero-timeout", "--max-held-requests", "--adapter-wake-timeout"):
        assert flag in out, (flag, out)
    assert "model_scaling_from_zero" in out, out


@h.check("the models of deployments at zero replicas are listed in /v1/models; unknown models "
         "are 404 model_not_found")
def _():
    st, j = h.get_json(G.port, "/v1/models")
    ids = [d["id"] for d in j["data"]]
    assert sorted(ids) == sorted([BASE, QWEN, IDLE]), ids
    st, hd, j, raw = complete(G, "no-such-model")
    assert st == 404 and j["error"]["code"] == "model_not_found", (st, raw)
    assert not C.wakes, C.wakes


@h.check("requests for a deployment at zero are held and its deployment is woken once; when the "
         "replica the test starts is ready, all of them are answered 200 in arrival order")
def _():
    global E0
    t_start = time.time()
    res = {}

    def run(i):
        r = complete(G, BASE, max_tokens=8, timeout=60)
        res[i] = (time.time(), r)

    ths = []
    for i in range(4):
        th = threading.Thread(target=run, args=(i,))
        th.start()
        ths.append(th)
        # arrival order is the order sent (one worker: one queue)
        h.wait_until(lambda: mv(G, "brix_gateway_model_held_requests", {"model": BASE}) == i + 1,
                     5, f"{i + 1} held")
    h.wait_until(lambda: C.wakes_for("deployments", "llama"), 3, "a wake for deployment llama")
    # held, counted in the load report while they wait
    t_held = time.time()
    h.wait_until(lambda: (last_load(C, BASE, t_held) or {}).get("held") == 4, 3, "load held 4")
    ld = last_load(C, BASE)
    assert ld["inflight"] == 4 and ld["requests"] == 4, ld
    time.sleep(0.5)
    assert all(th.is_alive() for th in ths), res
    assert len(C.wakes_for("deployments", "llama")) == 1, C.wakes
    assert not C.wakes_for("adapters", "llama") and not C.wakes_for("adapters", BASE), C.wakes
    assert mv(G, "brix_gateway_deployment_wakes_total", {"deployment": "llama"}) == 1
    assert mv(G, "brix_gateway_adapter_held_requests") == 0  # models are counted apart
    # the controller starts a replica (one sequence at a time, so the order
    # it serves them in is the order they are sent)
    E0 = h.engine(ENGINE_FLAGS + ["--served-model-name", BASE, "--max-num-seqs", "1",
                                  "--enable-lora", "--max-loras", "2"], name="engine-l0")
    PROCS.append(E0)
    t_push = time.time()
    C.push([replica("qwen-0", Q0, QWEN), replica("qwen-1", Q1, QWEN),
            replica("llama-0", E0, BASE)], None,
           [deployment("llama", BASE, 1, 1), DEPLOYMENTS[1], DEPLOYMENTS[2]])
    for th in ths:
        th.join(30)
    assert len(res) == 4, res
    for i in range(4):
        t, (st, hd, j, raw) = res[i]
        assert st == 200, (i, st, raw[:300])
        assert hd["target-pod"] == "llama-0", hd
        assert j["usage"]["completion_tokens"] == 8, j
    done = [res[i][0] for i in range(4)]
    assert done == sorted(done), f"answered out of arrival order: {done}"
    assert time.time() - t_push < 15
    m = h.metrics(G.port)
    assert h.metric_value(m, "brix_gateway_model_held_requests", {"model": BASE}) == 0
    assert h.metric_value(m, "brix_gateway_model_wait_seconds_count", {"result": "routed"}) == 4
    # ready now: no more wakes, no holds
    n = len(C.wakes_for("deployments", "llama"))
    st, hd, j, raw = complete(G, BASE)
    assert st == 200, raw[:200]
    assert len(C.wakes_for("deployments", "llama")) == n
    assert time.time() - t_start < 40


@h.check("without a replica the hold ends after --scale-from-zero-timeout: 503 "
         "model_scaling_from_zero with Retry-After; a full hold queue answers so at once")
def _():
    res = {}

    def run():
        t = time.time()
        res["r"] = complete(G2, IDLE, timeout=15)
        res["dt"] = time.time() - t

    th = threading.Thread(target=run)
    th.start()
    h.wait_until(lambda: mv(G2, "brix_gateway_model_held_requests", {"model": IDLE}) == 1, 3,
                 "held")
    # --max-held-requests 1: the next one is refused at once
    t0 = time.time()
    st, hd, j, raw = complete(G2, IDLE)
    assert time.time() - t0 < 1.0
    assert st == 503, (st, raw)
    assert j["error"]["code"] == "model_scaling_from_zero", j
    assert j["error"]["type"] == "overloaded_error", j
    assert "--max-held-requests 1" in j["error"]["message"], j
    assert hd.get("retry-after") == "2", hd  # ceil(1.5 s) > --retry-after 1
    th.join(10)
    st, hd, j, raw = res["r"]
    assert st == 503, (st, raw)
    assert j["error"]["code"] == "model_scaling_from_zero", j
    msg = j["error"]["message"]
    assert f"'{IDLE}'" in msg and "scaling up from zero" in msg and "'mistral'" in msg, msg
    assert "1500 ms" in msg, msg
    assert hd.get("retry-after") == "2", hd
    assert 1.4 <= res["dt"] < 5, res["dt"]
    assert C2.wakes_for("deployments", "mistral"), C2.wakes
    m = h.metrics(G2.port)
    assert h.metric_value(m, "brix_gateway_model_wait_seconds_count", {"result": "timeout"}) == 1
    assert h.metric_value(m, "brix_gateway_model_held_requests", {"model": IDLE}) == 0
    assert h.metric_value(m, "brix_gateway_requests_total",
                          {"model": IDLE, "status": "503"}) == 2
    # both were admitted (held or refused): counted as requests, no tokens
    t_done = time.time()
    h.wait_until(lambda: last_load(C2, IDLE, t_done), 3, "a load report")
    ld = last_load(C2, IDLE)
    offered = ld.pop("offeredPromptTokens")
    assert ld == {"requests": 2, "promptTokens": 0, "completionTokens": 0, "inflight": 0,
                  "held": 0}, ld
    assert offered > 0, offered  # offered load counts at admission, served tokens did not


@h.check("every deployment at zero and no pod at all: /readyz is 200 (requests must reach the "
         "gateway to wake them) and a request is held, not refused; with "
         "--scale-from-zero-timeout 0 it is answered at once and its deployment still woken")
def _():
    c3 = FakeController()
    c3.push([], [], [deployment("llama", BASE)])
    # one worker: the /readyz that says ready comes from the view the
    # request then meets (each worker adopts a new view on its own)
    g3 = h.gateway([], ["--controller", c3.url, "--scale-from-zero-timeout", "1s",
                        "--workers", "1"], pods=0, name="gateway-3")
    PROCS.append(g3)
    try:
        t0 = time.time()
        st, hd, j, raw = complete(g3, BASE)
        assert st == 503 and j["error"]["code"] == "model_scaling_from_zero", (st, raw)
        assert 0.9 <= time.time() - t0 < 5
        assert c3.wakes_for("deployments", "llama"), c3.wakes
        st, hd, j, raw = complete(g3, "no-such-model")
        assert st == 404, (st, raw)
        # --scale-from-zero-timeout 0: not held, answered at once, but still woken
        g4 = h.gateway([], ["--controller", c3.url, "--scale-from-zero-timeout", "0",
                            "--retry-after", "4", "--workers", "1"], pods=0, name="gateway-4")
        PROCS.append(g4)
        n = len(c3.wakes_for("deployments", "llama"))
        t0 = time.time()
        st, hd, j, raw = complete(g4, BASE)
        assert time.time() - t0 < 1.0
        assert st == 503 and j["error"]["code"] == "model_scaling_from_zero", (st, raw)
        assert hd.get("retry-after") == "4", hd
        h.wait_until(lambda: len(c3.wakes_for("deployments", "llama")) == n + 1, 3, "a wake")
        g4.stop()
        # an older controller (no "deployments"): not ready without a pod
        c3.push([], [], [])
        h.wait_until(lambda: h.request("GET", g3.port, "/readyz")[0] == 503, 3, "/readyz 503")
    finally:
        g3.stop()
        c3.stop()


@h.check("an adapter and a deployment of the same name are woken apart; requests held for them "
         "end 404 when the controller removes them")
def _():
    C.push(adapters=[{"name": "twin", "baseModel": BASE, "phase": "Scaled", "instances": []}],
           deployments=C.deployments + [deployment("twin", "twin-model")])
    h.wait_until(lambda: "twin-model" in [d["id"] for d in
                                          h.get_json(G.port, "/v1/models")[1]["data"]],
                 3, "twin registered")
    res = {}
    ths = [threading.Thread(target=lambda m=m: res.update({m: complete(G, m, timeout=15)}))
           for m in ("twin", "twin-model")]
    for th in ths:
        th.start()
    h.wait_until(lambda: C.wakes_for("adapters", "twin") and C.wakes_for("deployments", "twin"),
                 3, "both wakes")
    assert mv(G, "brix_gateway_adapter_held_requests") == 1
    assert mv(G, "brix_gateway_model_held_requests", {"model": "twin-model"}) == 1
    time.sleep(0.3)
    assert len(C.wakes_for("adapters", "twin")) == 1, C.wakes
    assert len(C.wakes_for("deployments", "twin")) == 1, C.wakes
    C.push(adapters=[], deployments=[d for d in C.deployments if d["name"] != "twin"])
    for th in ths:
        th.join(10)
    for m in ("twin", "twin-model"):
        st, hd, j, raw = res[m]
        assert st == 404 and j["error"]["code"] == "model_not_found", (m, st, raw)
    assert mv(G, "brix_gateway_model_wait_seconds_count", {"result": "gone"}) == 1


@h.check("a Draining replica gets no new requests, while a stream already on it runs to its end")
def _():
    # a long stream on one of qwen's replicas
    s = h.Stream(G.port, CMPL, {"model": QWEN, "prompt": "Hello there", "max_tokens": 300,
                                "stream": True, "stream_options": {"include_usage": True}})
    assert s.status == 200, s.status
    pod = s.headers["target-pod"]
    other = "qwen-1" if pod == "qwen-0" else "qwen-0"
    s.wait_events(3)
    eng = {"qwen-0": Q0, "qwen-1": Q1}
    reps = [replica(n, eng[n], QWEN, ready=n != pod, phase="Draining" if n == pod else "Running")
            for n in ("qwen-0", "qwen-1")]
    C.push(reps + [replica("llama-0", E0, BASE)])
    h.wait_until(lambda: pod not in pods_now(G), 2, f"{pod} out of the fleet")
    rr = {"routing-strategy": "round-robin"}
    h.wait_until(lambda: {complete(G, QWEN, headers=rr)[1]["target-pod"] for _ in range(2)}
                 == {other}, 1.0, f"no new request for {pod}")
    for _ in range(6):
        st, hd, j, raw = complete(G, QWEN, headers={"routing-strategy": "round-robin"})
        assert st == 200 and hd["target-pod"] == other, (st, hd, raw[:200])
    # the stream is still being generated there, after the drain took it
    # out of the fleet and new requests went elsewhere
    assert h.metric_value(h.metrics(eng[pod].port), "vllm:num_requests_running") == 1, \
        "the stream was meant to outlast the drain"
    events = s.read_to_end(30)
    assert events[-1] == "[DONE]", events[-3:]
    assert not [e for e in events if isinstance(e, dict) and "error" in e], events[-3:]
    usage = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
    assert usage and usage[-1]["completion_tokens"] == 300, usage[-1:]
    s.close()
    assert mv(G, "brix_gateway_streams_broken_total") == 0
    C.push([replica("qwen-0", Q0, QWEN), replica("qwen-1", Q1, QWEN),
            replica("llama-0", E0, BASE)])
    h.wait_until(lambda: {"qwen-0", "qwen-1"} <= pods_now(G), 5, "both qwen replicas back")


@h.check("activity reports: every second, the gateway's id and per-model load counters that grow "
         "by exactly the requests sent, tokens as the responses' usage; adapters count toward "
         "their base model; only models the controller knows")
def _():
    # an adapter on the llama replica
    st, _, b = h.request("POST", E0.port, "/v1/load_lora_adapter",
                         {"lora_name": "sql-a", "lora_path": "/tmp/brix25-sql-a"})
    assert st == 200, (st, b)
    C.push([replica("qwen-0", Q0, QWEN), replica("qwen-1", Q1, QWEN),
            replica("llama-0", E0, BASE, adapters=["sql-a"])],
           [{"name": "sql-a", "baseModel": BASE, "phase": "Running", "instances": ["llama-0"]}])
    h.wait_until(lambda: complete(G, "sql-a")[0] == 200, 3, "sql-a routable")
    time.sleep(1.2)  # that request's report is out
    t0 = time.time()
    h.wait_until(lambda: last_load(C, BASE, t0), 3, "a report")
    before = {m: last_load(C, m, t0) for m in (BASE, QWEN)}
    assert before[BASE]["inflight"] == 0 and before[BASE]["held"] == 0, before
    prompt = completion = 0
    for model, n in ((BASE, 3), ("sql-a", 2)):
        for _ in range(n):
            st, hd, j, raw = complete(G, model, max_tokens=3)
            assert st == 200, raw[:200]
            prompt += j["usage"]["prompt_tokens"]
            completion += j["usage"]["completion_tokens"]
    # a stream that asked for usage, and one that did not: without usage the
    # gateway counts what it has (as for TPM): the prompt estimate, ceil of
    # the prompt's length / 4, and one completion token per SSE event
    # relayed ([DONE] included)
    for so in ({"include_usage": True}, None):
        body = {"model": BASE, "prompt": "Hello there", "max_tokens": 4, "stream": True}
        if so:
            body["stream_options"] = so
        st, hd, events, raw = h.sse(G.port, CMPL, body)
        assert st == 200, st
        usage = [e["usage"] for e in events if isinstance(e, dict) and e.get("usage")]
        if so:
            prompt += usage[-1]["prompt_tokens"]
            completion += usage[-1]["completion_tokens"]
        else:
            assert not usage, usage  # the client did not ask: nothing added for it
            prompt += (len("Hello there") + 3) // 4
            completion += len(events)
    assert complete(G, "no-such-model")[0] == 404
    assert prompt > 0 and completion > 0
    for d in (before[BASE], before[QWEN]):
        d.pop("offeredPromptTokens")
    want = {"requests": before[BASE]["requests"] + 7,
            "promptTokens": before[BASE]["promptTokens"] + prompt,
            "completionTokens": before[BASE]["completionTokens"] + completion,
            "inflight": 0, "held": 0}
    t1 = time.time()
    def served(ld):  # offered prompt tokens (estimates at admission) are checked above
        return {k: v for k, v in ld.items() if k != "offeredPromptTokens"} if ld else ld
    try:
        h.wait_until(lambda: served(last_load(C, BASE, t1)) == want, 4, "the load",
                     interval=0.2)
    except AssertionError:
        raise AssertionError(f"want {want}, last reported {last_load(C, BASE)}")
    time.sleep(1.1)
    rs = C.reports(t1)
    assert len(rs) >= 2, rs
    ids = {r["gateway"] for r in C.reports()}
    assert len(ids) == 1 and re.fullmatch(r"[0-9a-f]{16}", ids.pop()), ids
    gid2 = {r["gateway"] for r in C2.reports()}
    assert len(gid2) == 1 and gid2 != {C.reports()[0]["gateway"]}, gid2
    for r in rs:
        assert set(r["load"]) <= {BASE, QWEN, IDLE}, r  # no adapter, no unknown name
        assert served(r["load"][QWEN]) == before[QWEN], r  # nothing sent there
        assert served(r["load"][BASE]) == want, r


@h.check("gateways stop cleanly (no errors, no leaks)")
def _():
    for g in (G, G2):
        g.stop()
    C.stop()
    C2.stop()
    for e in (Q0, Q1, E0):
        e.stop()


h.run()
