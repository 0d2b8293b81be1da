"""20 — gateway hardening (issue 11): the gateway forwards only the inference
endpoints (an adapter unload through it is refused and the adapter stays
loaded; the engine never sees the call); request keys are compared after
decoding escapes and duplicates of the keys the gateway reads are refused by
the gateway and by engine-sim alike; max_tokens must be an int64 integer;
unauthenticated input cannot mint metric labels (1,000 distinct 10 KB model
names leave /metrics small; weighted strategy headers give no new values) and
every family is capped; SSE events framed with CRLF or CR are relayed as they
arrive (not held to the end of the stream), byte for byte; an event over
--sse-max-event-bytes ends the stream with an error event and counts as an
upstream error; NaN / infinite / negative engine metrics are refused."""
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

BASE = "llama-3-8b"
MSGS = [{"role": "user", "content": "hello there"}]
CHAT = "/v1/chat/completions"
COMMON = ["--seed", "7", "--output-len-dist", "none"]

E = h.engine(COMMON + ["--enable-lora", "--max-loras", "4", "--lora-modules", "sql=/a"])
G = h.gateway([E])


def err(st, j, b, status, param=None, code=None):
    assert st == status, f"status {st}, want {status}: {b[:300]!r}"
    assert j and list(j) == ["error"], b
    e = j["error"]
    assert list(e) == ["message", "type", "param", "code"], e
    assert e["param"] == param, e
    if code is not None:
        assert e["code"] == code, e
    return e


def raw_post(port, path, raw, headers=None):
    st, hd, b = h.request("POST", port, path, headers=dict({"content-type": "application/json"},
                                                           **(headers or {})), raw_body=raw)
    try:
        j = json.loads(b) if b else None
    except ValueError:
        j = None
    return st, hd, j, b


def engine_chats():
    """Chat requests the engine has logged so far."""
    time.sleep(0.1)
    return E.text().count("POST /v1/chat/completions")


def engine_models():
    st, j = h.get_json(E.port, "/v1/models")
    assert st == 200
    return {m["id"] for m in j["data"]}


# ------------------------------------------------------------ allow-list --

@h.check("allow-list: admin paths (unload/load adapter, profile, sleep, ...) -> 404 OpenAI "
         "JSON; the adapter stays loaded and the engine never sees the call")
def _():
    assert "sql" in engine_models()
    st, _, j, b = h.post(G.port, "/v1/unload_lora_adapter", {"model": BASE, "lora_name": "sql"})
    err(st, j, b, 404, code="not_found")
    st, _, j, b = h.post(G.port, "/v1/load_lora_adapter",
                         {"model": BASE, "lora_name": "evil", "lora_path": "/x"})
    err(st, j, b, 404, code="not_found")
    for path in ("/start_profile", "/stop_profile", "/sleep", "/wake_up", "/reset_prefix_cache",
                 "/collective_rpc", "/v1/unload_lora_adapter/", "/v1//unload_lora_adapter",
                 "/v1/./unload_lora_adapter", "/v1/%75nload_lora_adapter", "/v1/anything",
                 "/v2/anything", "/v1/chat/completions/", "/V1/chat/completions",
                 "/scale_elastic_ep", "/update_weights", "/is_sleeping"):
        st, _, j, b = h.post(G.port, path, {"model": BASE, "lora_name": "sql"})
        err(st, j, b, 404, code="not_found")
    assert "sql" in engine_models(), "the adapter was unloaded through the gateway"
    assert "evil" not in engine_models()
    # the engine logs every POST it serves: none of these reached it
    time.sleep(0.2)
    for bad in ("lora_adapter", "profile", "sleep", "wake_up", "reset_prefix", "collective"):
        assert bad not in E.text(), f"the engine saw a {bad} call:\n{E.text()[-2000:]}"
    # the inference endpoints still go through
    for path, body in ((CHAT, {"model": BASE, "messages": MSGS, "max_tokens": 2}),
                       ("/v1/completions", {"model": "sql", "prompt": "x", "max_tokens": 2}),
                       ("/v1/embeddings", {"model": BASE, "input": "x"}),
                       ("/tokenize", {"model": BASE, "prompt": "x"}),
                       ("/detokenize", {"model": BASE, "tokens": [1, 2]})):
        st, _, j, b = h.post(G.port, path, body)
        assert st == 200, (path, st, b[:300])


# ----------------------------------------------------------- strict JSON --

DUPS = [
    ('{"model":"%s","mod\\u0065l":"secret","messages":[]}' % BASE, "model"),
    ('{"model":"%s","model":"%s","messages":[]}' % (BASE, BASE), "model"),
    ('{"\\u006d\\u006f\\u0064\\u0065\\u006c":"secret","model":"%s","messages":[]}' % BASE, "model"),
    ('{"model":"%s","stream":false,"str\\u0065am":true,"messages":[]}' % BASE, "stream"),
    ('{"model":"%s","max_tokens":1,"max_tokens":2,"messages":[]}' % BASE, "max_tokens"),
    ('{"model":"%s","messages":[],"messages":[]}' % BASE, "messages"),
]


@h.check("duplicate keys the gateway reads (plain or escaped) -> 400 naming the key, from the "
         "gateway and from engine-sim; an escaped single key is decoded and routed")
def _():
    for raw, key in DUPS:
        seen = engine_chats()
        st, _, j, b = raw_post(G.port, CHAT, raw)
        err(st, j, b, 400, param=key, code="duplicate_key")
        assert engine_chats() == seen, "the gateway forwarded a body with a duplicate key"
        st, _, j, b = raw_post(E.port, CHAT, raw)
        e = err(st, j, b, 400, param=key)
        assert e["type"] == "BadRequestError" and f"'{key}'" in e["message"], e
    # engine-sim: any duplicate top-level key, as cJSON decodes it
    st, _, j, b = raw_post(E.port, CHAT, '{"model":"%s","messages":[],"n":1,"\\u006e":2}' % BASE)
    err(st, j, b, 400, param="n")
    # one key, escaped: the gateway reads it as the engine does
    raw = ('{"mod\\u0065l":"%s","messages":[{"role":"user","content":"hi"}],"max_tokens":2}'
           % BASE)
    st, hd, j, b = raw_post(G.port, CHAT, raw)
    assert st == 200 and j["model"] == BASE, (st, b[:300])
    # a NUL in the model name cannot route one name and serve another
    st, _, j, b = raw_post(G.port, CHAT, '{"model":"%s\\u0000x","messages":[]}' % BASE)
    err(st, j, b, 400, param="model")
    # keys the gateway does not read may repeat (the engine decides)
    st, _, j, b = raw_post(G.port, CHAT, '{"model":"%s","messages":[{"role":"user","content":'
                           '"hi"}],"max_tokens":2,"x":1,"x":2}' % BASE)
    assert st == 400 and "'x'" in j["error"]["message"], b  # engine-sim refuses it


@h.check("max_tokens / max_completion_tokens not an int64 integer -> 400 (gateway and "
         "engine-sim); integral floats pass")
def _():
    for v in ("1e300", "-1e300", "1.5", "99999999999999999999", "-9223372036854775809",
              "9223372036854775808", "1e19", "0.1e1000"):
        for key in ("max_tokens", "max_completion_tokens"):
            raw = '{"model":"%s","messages":[{"role":"user","content":"hi"}],"%s":%s}' % (
                BASE, key, v)
            seen = engine_chats()
            st, _, j, b = raw_post(G.port, CHAT, raw)
            err(st, j, b, 400, param=key, code="invalid_value")  # the gateway's own answer
            assert engine_chats() == seen, "forwarded"
            st, _, j, b = raw_post(E.port, CHAT, raw)
            err(st, j, b, 400, param=key)
    for v in ("2", "2.0", "2e0", "0.2e1"):
        raw = '{"model":"%s","messages":[{"role":"user","content":"hi"}],"max_tokens":%s}' % (
            BASE, v)
        st, _, j, b = raw_post(G.port, CHAT, raw)
        assert st == 200 and j["usage"]["completion_tokens"] == 2, (v, st, b[:300])
    h.wait_until(lambda: G.p.poll() is None, 1, "gateway alive")


# ---------------------------------------------------------------- labels --

@h.check("labels: 1,000 distinct 10 KB model names -> one model=\"unknown\" series, /metrics "
         "under 64 KB; weighted routing-strategy headers add no label values")
def _():
    import http.client
    c = http.client.HTTPConnection("127.0.0.1", G.port, timeout=30)
    for i in range(1000):
        name = f"{i:04d}" + "m" * 10240
        body = json.dumps({"model": name, "messages": MSGS})
        c.request("POST", CHAT, body=body, headers={"content-type": "application/json"})
        r = c.getresponse()
        r.read()
        assert r.status == 404, r.status
    c.close()
    for hdr in ("random:3,least-request:2", "least-request:1,random:7", "random:5",
                "random:1,random:9", "least-request, random"):
        st, hd, j, b = h.post(G.port, CHAT, {"model": BASE, "messages": MSGS, "max_tokens": 1},
                              {"routing-strategy": hdr})
        assert st == 200, (hdr, st, b[:200])
    m = h.metrics(G.port)
    assert len(m) < 64 * 1024, f"/metrics is {len(m)} bytes"
    assert "mmmmmmmm" not in m
    mv = h.metric_value
    assert mv(m, "brix_gateway_requests_total",
              {"model": "unknown", "status": "404"}) == 1000, m[:3000]
    strategies = set()
    for ln in m.splitlines():
        if ln.startswith("brix_gateway_requests_total{"):
            strategies.add(ln.split('strategy="')[1].split('"')[0])
    assert strategies <= {"", "weighted", "random", "mix"}, strategies
    assert mv(m, "brix_gateway_requests_total", {"strategy": "mix"}) == 3, m
    assert mv(m, "brix_gateway_requests_total", {"strategy": "random"}) >= 2, m


@h.check("--metrics-max-children: pods past the cap are counted as pod=\"other\" and in "
         "brix_metrics_dropped_children_total{family}")
def _():
    e2 = h.engine(COMMON, name="engine-2")
    e3 = h.engine(COMMON, name="engine-3")
    g = h.gateway([E, e2, e3], ["--metrics-max-children", "2"], name="gateway-cap")
    try:
        m = h.metrics(g.port)
        assert h.metric_value(m, "brix_gateway_pod_healthy", {"pod": "other"}) is not None, m
        n = sum(1 for ln in m.splitlines() if ln.startswith("brix_gateway_pod_healthy{"))
        assert n == 3, m  # two pods and "other"
        assert (h.metric_value(m, "brix_metrics_dropped_children_total",
                               {"family": "brix_gateway_pod_healthy"}) or 0) >= 1, m
        r = subprocess.run(["promtool", "check", "metrics"], input=m.encode(),
                           capture_output=True, timeout=30)
        out = (r.stdout + r.stderr).decode()
        assert r.returncode == 0 and not out.strip(), f"promtool rc {r.returncode}:\n{out}"
    finally:
        g.stop()
        e2.stop()
        e3.stop()


# ------------------------------------------------------------ a stub pod --

class Stub:
    """A minimal vLLM-shaped engine: health, models, a scripted /metrics, and
    streamed chat answers framed as the x-stub-mode header says."""

    def __init__(self):
        self.metrics = ("vllm:num_requests_running{engine=\"0\",model_name=\"stub\"} 0\n"
                        "vllm:num_requests_waiting{engine=\"0\",model_name=\"stub\"} 0\n")
        self.go = threading.Event()
        self.sent = b""
        stub = self

        class H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def reply(self, status, ctype, body):
                self.send_response(status)
                self.send_header("content-type", ctype)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path == "/health":
                    self.reply(200, "text/plain", b"")
                elif self.path == "/v1/models":
                    self.reply(200, "application/json", json.dumps({"object": "list", "data": [
                        {"id": "stub", "object": "model", "owned_by": "vllm", "root": "stub",
                         "parent": None, "max_model_len": 4096}]}).encode())
                elif self.path == "/metrics":
                    self.reply(200, "text/plain; version=0.0.4", stub.metrics.encode())
                else:
                    self.reply(404, "application/json", b"{}")

            def chunk(self, b):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(b), b))
                self.wfile.flush()
                stub.sent += b

            def do_POST(self):
                n = int(self.headers.get("content-length", "0"))
                self.rfile.read(n)
                mode = self.headers.get("x-stub-mode", "lf")
                self.send_response(200)
                self.send_header("content-type", "text/event-stream")
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                stub.sent = b""
                if mode == "big":
                    self.chunk(b"data: {\"a\":1}\n\n")
                    for _ in range(8):  # 8 x 16 KiB, no event end
                        self.chunk(b"data: " + b"x" * 16384)
                    stub.go.wait(10)
                else:
                    eol = {"lf": b"\n", "crlf": b"\r\n", "cr": b"\r"}[mode]
                    ev = [b'data: {"i":%d}' % i + eol + eol for i in range(4)]
                    self.chunk(ev[0] + ev[1])
                    stub.go.wait(10)  # the client must have the first events by now
                    self.chunk(ev[2] + ev[3] + b"data: [DONE]" + eol + eol)
                try:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()
                except OSError:
                    pass

        self.srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.srv.daemon_threads = True
        self.port = self.srv.server_address[1]
        threading.Thread(target=self.srv.serve_forever, daemon=True).start()

    def close(self):
        self.go.set()
        self.srv.shutdown()
        self.srv.server_close()


STUB = Stub()
GS = h.gateway([f"http://127.0.0.1:{STUB.port}"], ["--sse-max-event-bytes", "64k"],
               name="gateway-stub")


@h.check("SSE: events framed with LF, CRLF or CR are relayed as they arrive, byte for byte")
def _():
    for mode in ("lf", "crlf", "cr"):
        STUB.go.clear()
        s = h.Stream(GS.port, CHAT, {"model": "stub", "messages": MSGS, "stream": True},
                     {"x-stub-mode": mode})
        try:
            assert s.status == 200, s.status
            want = b'data: {"i":0}'
            deadline = time.time() + 5
            while want not in s.body:
                assert time.time() < deadline, f"{mode}: first event held back: {s.body!r}"
                s.sock.settimeout(0.2)
                try:
                    s._recv()
                except socket.timeout:
                    pass
                _dechunk(s)
            STUB.go.set()
            _read_all(s, mode)
            assert s.body == STUB.sent, (mode, s.body, STUB.sent)
        finally:
            s.close()


def _dechunk(s):
    """De-chunks into s.body without splitting events (CR framing has no LF)."""
    while True:
        eol = s.buf.find(b"\r\n")
        if eol < 0:
            return
        size = int(s.buf[:eol], 16)
        if size == 0:
            if len(s.buf) >= eol + 4:
                s.ended = True
                s.buf = s.buf[eol + 4:]
            return
        if len(s.buf) < eol + 4 + size:
            return
        s.body += s.buf[eol + 2:eol + 2 + size]
        s.buf = s.buf[eol + 4 + size:]


def _read_all(s, mode):
    deadline = time.time() + 10
    while not s.ended and not s.closed:
        assert time.time() < deadline, f"{mode}: stream did not end"
        s.sock.settimeout(0.2)
        try:
            s._recv()
        except socket.timeout:
            pass
        _dechunk(s)


@h.check("SSE: an event over --sse-max-event-bytes ends the stream with an error event and "
         "[DONE], counted as upstream error kind event_too_large")
def _():
    STUB.go.clear()
    s = h.Stream(GS.port, CHAT, {"model": "stub", "messages": MSGS, "stream": True},
                 {"x-stub-mode": "big"})
    try:
        ev = s.read_to_end(10)
        assert ev[0] == {"a": 1}, ev
        assert "error" in ev[1] and "over 65536 bytes" in ev[1]["error"]["message"], ev
        assert ev[2] == "[DONE]" and len(ev) == 3, ev
    finally:
        STUB.go.set()
        s.close()
    m = h.metrics(GS.port)
    assert h.metric_value(m, "brix_gateway_upstream_errors_total",
                          {"kind": "event_too_large"}) == 1, m
    assert h.metric_value(m, "brix_gateway_broken_streams_total") == 1, m
    # the gateway serves on
    STUB.go.set()
    ev = h.Stream(GS.port, CHAT, {"model": "stub", "messages": MSGS, "stream": True})
    assert ev.read_to_end(10)[-1] == "[DONE]"
    ev.close()


@h.check("engine metrics: +Inf / NaN / negative vllm:* values are refused and counted (a load "
         "gauge fails its scrape: invalid_values), never shown as the pod's load")
def _():
    pod = f"127.0.0.1:{STUB.port}"
    for bad in ("+Inf", "NaN", "-5"):
        STUB.metrics = (f"vllm:num_requests_running{{engine=\"0\",model_name=\"stub\"}} {bad}\n"
                        "vllm:num_requests_waiting{engine=\"0\",model_name=\"stub\"} 0\n")
        before = h.metric_value(h.metrics(GS.port), "brix_gateway_scrapes_total",
                                {"pod": pod, "result": "invalid_values"}) or 0
        h.wait_until(lambda: (h.metric_value(h.metrics(GS.port), "brix_gateway_scrapes_total",
                                             {"pod": pod, "result": "invalid_values"}) or 0)
                     > before, 5, f"a scrape refused for {bad}")
        m = h.metrics(GS.port)
        v = h.metric_value(m, "brix_gateway_pod_engine_running_requests", {"pod": pod})
        assert v is not None and 0 <= v < 1e9, (bad, v)
    # a refused counter is counted; the load gauges of that scrape are used
    STUB.metrics = ("vllm:num_requests_running{engine=\"0\",model_name=\"stub\"} 3\n"
                    "vllm:num_requests_waiting{engine=\"0\",model_name=\"stub\"} 0\n"
                    "vllm:prompt_tokens_total{engine=\"0\",model_name=\"stub\"} -Inf\n")
    h.wait_until(lambda: h.metric_value(h.metrics(GS.port),
                                        "brix_gateway_pod_engine_running_requests",
                                        {"pod": pod}) == 3, 5, "running 3 taken")
    assert (h.metric_value(h.metrics(GS.port), "brix_gateway_engine_metric_values_refused_total",
                           {"pod": pod}) or 0) >= 4


# ------------------------------------------------------------ access log --

@h.check("access log: a 10 KB client model name with a newline, quotes and spaces gives one "
         "line of bounded length; the model and error fields are cut with '…', control bytes "
         "are escaped, and every field after them is still there")
def _():
    rid = "logfield-1"
    forged = '2026-01-01T00:00:00.000Z INFO  gateway[1]: req=x access forged status=200'
    model = "a\n" + forged + ' "q" \x1b[31m\\ ' + "z" * 10240
    st, _, j, b = raw_post(G.port, CHAT, json.dumps({"model": model, "messages": MSGS}).encode(),
                           {"x-request-id": rid})
    err(st, j, b, 404, param="model", code="model_not_found")
    time.sleep(0.2)
    text = G.text()
    mine = [ln for ln in text.splitlines() if f"req={rid} " in ln]
    assert len(mine) == 1, mine
    line = mine[0]
    assert " access " in line and len(line.encode()) <= 1200, (len(line.encode()), line[:300])
    # nothing of the model reached a line of its own
    assert not [ln for ln in text.splitlines() if "forged" in ln and ln != line]
    assert "\x1b" not in line and "\n" not in line
    f = dict(re.findall(r'(\w+)=("[^"]*"|\S+)', line))
    assert f.get("status") == "404" and f.get("bytes") and f.get("error"), (f, line)
    m = f["model"]
    assert m.startswith("a\\n2026-01-01T00:00:00.000Z\\x20INFO"), m
    assert m.endswith("…") and len(m.encode()) <= 256 + 3, (len(m.encode()), m)
    assert "\\x22q\\x22" in m and "\\x1b[31m" in m and "\\\\" in m, m
    e = f["error"]
    assert e.startswith('"') and e.endswith('…"') and len(e.encode()) <= 512 + 5, e


@h.check("shutdown: clean logs")
def _():
    errs = []
    for p in (GS, G, E):
        try:
            p.stop()
        except AssertionError as ex:
            errs.append(str(ex)[:3000])
    STUB.close()
    assert not errs, "\n".join(errs)


h.run()
