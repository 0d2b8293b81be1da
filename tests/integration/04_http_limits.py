"""04 — the HTTP server under engine-sim: malformed input, size limits and
timeouts, keep-alive, pipelining, partial delivery, HTTP/1.0, Expect:
100-continue, request validation errors, fault injection and connection
limits. Raw sockets are used wherever the wire matters."""
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

# D: default limits (long timeouts) for protocol behaviour;
# L: tight limits, each exercised on purpose.
D = h.engine(["--seed", "4", "--output-len-dist", "none", "--max-model-len", "256"])
L = h.engine(["--output-len-dist", "none", "--max-header-bytes", "2k", "--max-body-bytes", "4k",
              "--header-timeout", "700ms", "--body-timeout", "700ms", "--idle-timeout", "1500ms"])
MSGS = [{"role": "user", "content": "Say something."}]
CHAT_BODY = json.dumps({"messages": MSGS, "max_tokens": 4}).encode()


# ------------------------------------------------------- raw HTTP client --

class Conn:
    """A raw client connection that parses responses incrementally."""

    def __init__(self, port, timeout=10):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""
        self.eof = False

    def send(self, data):
        self.s.sendall(data)

    def _fill(self):
        try:
            b = self.s.recv(65536)
        except ConnectionResetError:
            b = b""
        if not b:
            self.eof = True
            return False
        self.buf += b
        return True

    def _need(self, pred):
        while True:
            r = pred()
            if r is not None:
                return r
            if not self._fill():
                raise EOFError(f"connection closed; have {self.buf[:300]!r}")

    def response(self):
        """One response: (status, headers dict, body bytes, head bytes). Interim 1xx
        responses are returned like any other (no body)."""
        def head():
            i = self.buf.find(b"\r\n\r\n")
            return i if i >= 0 else None
        i = self._need(head)
        raw_head = self.buf[:i]
        self.buf = self.buf[i + 4:]
        lines = raw_head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        assert parts[0] in ("HTTP/1.1", "HTTP/1.0"), lines[0]
        status = int(parts[1])
        hd = {}
        for ln in lines[1:]:
            k, _, v = ln.partition(":")
            hd[k.strip().lower()] = v.strip()
        if 100 <= status < 200 or status in (204, 304):
            return status, hd, b"", raw_head
        if "content-length" in hd:
            n = int(hd["content-length"])
            self._need(lambda: True if len(self.buf) >= n else None)
            body, self.buf = self.buf[:n], self.buf[n:]
            return status, hd, body, raw_head
        if hd.get("transfer-encoding") == "chunked":
            body = b""
            while True:
                j = self._need(lambda: (self.buf.find(b"\r\n") if b"\r\n" in self.buf else None))
                size = int(self.buf[:j], 16)
                self._need(lambda: True if len(self.buf) >= j + 2 + size + 2 else None)
                chunk = self.buf[j + 2:j + 2 + size]
                assert self.buf[j + 2 + size:j + 4 + size] == b"\r\n", "bad chunk framing"
                self.buf = self.buf[j + 4 + size:]
                if size == 0:
                    return status, hd, body, raw_head
                body += chunk
        # close-delimited
        while self._fill():
            pass
        body, self.buf = self.buf, b""
        return status, hd, body, raw_head

    def closed(self, timeout=10):
        """True if the peer closes (EOF or reset) within timeout with no more bytes."""
        self.s.settimeout(timeout)
        try:
            b = self.s.recv(65536)
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False
        self.buf += b
        return b == b""

    def close(self):
        self.s.close()


def req(method, path, body=None, headers=None, version="1.1"):
    hd = {"Host": "127.0.0.1"}
    if body is not None:
        hd["Content-Type"] = "application/json"
        hd["Content-Length"] = str(len(body))
    hd.update(headers or {})
    out = f"{method} {path} HTTP/{version}\r\n"
    out += "".join(f"{k}: {v}\r\n" for k, v in hd.items() if v is not None)
    return out.encode() + b"\r\n" + (body or b"")


def error_json(body, status):
    j = json.loads(body)
    assert list(j) == ["error"], j
    assert list(j["error"]) == ["message", "type", "param", "code"], j
    assert j["error"]["code"] == status, j
    assert isinstance(j["error"]["message"], str) and j["error"]["message"], j
    return j["error"]


def one(port, data):
    """Sends data on a fresh connection and reads one response, which must say
    `connection: close` and be followed by the server closing the connection
    (checked after the caller's expected status, so failures name the status)."""
    c = Conn(port)
    try:
        c.send(data)
        st, hd, body, _ = c.response()
        closed = hd.get("connection") == "close" and c.closed()
    finally:
        c.close()
    return st, _CloseCheck(hd, closed), body


class _CloseCheck(dict):
    """Response headers; reading them after the status check asserts the close."""

    def __init__(self, hd, closed):
        super().__init__(hd)
        self.was_closed = closed

    def assert_closed(self):
        assert self.get("connection") == "close", dict(self)
        assert self.was_closed, "server did not close the connection"


def post(port, path, body, headers=None):
    st, hd, j, b = h.post(port, path, body, headers)
    return st, hd, j, b


def bad(port, path, body, status=400, headers=None):
    st, hd, j, b = post(port, path, body, headers)
    assert st == status, f"{path} {body} -> {st}, want {status}: {b[:400]!r}"
    assert hd.get("content-type") == "application/json", hd
    return error_json(b, status)


def chat_text(port, **kw):
    body = {"messages": MSGS, "max_tokens": 4}
    body.update(kw)
    st, _, j, b = post(port, "/v1/chat/completions", body)
    assert st == 200, (st, b)
    return j["choices"][0]["message"]["content"]


# --------------------------------------------------------------- parsing --

@h.check("malformed request line → 400 JSON error and close")
def _():
    for junk in (b"GARBAGE\r\n\r\n", b"GET /health HTTP/1.1 extra\r\n\r\n",
                 b"\x16\x03\x01\x02\x00\x01\x00", b"GET /health HTTP/x.y\r\n\r\n"):
        st, hd, body = one(D.port, junk)
        assert st == 400, (junk, st, body)
        hd.assert_closed()
        assert hd.get("content-type") == "application/json", hd
        error_json(body, 400)
    # a bad header line too
    st, hd, body = one(D.port, b"GET /health HTTP/1.1\r\nBad Header\r\n\r\n")
    assert st == 400, st
    hd.assert_closed()
    # request smuggling guards: Content-Length with chunked, or two different lengths
    body = json.dumps({"messages": MSGS, "max_tokens": 1}).encode()
    for extra in ({"Transfer-Encoding": "chunked"}, {"content-length": "3"}):
        data = req("POST", "/v1/chat/completions", body, headers=extra)
        if "Transfer-Encoding" in extra:
            data = data[:-len(body)] + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
        st, hd, rbody = one(D.port, data)
        assert st == 400, (extra, st, rbody)
        hd.assert_closed()
    assert chat_text(D.port)  # still serving


@h.check("request line with a bad protocol name (XXXX/, HTTX/, HXXP/1.1) → 400")
def _():
    for junk in (b"GET /health XXXX/1.1\r\nHost: x\r\n\r\n",
                 b"GET /health HTTX/1.1\r\nHost: x\r\n\r\n",
                 b"GET /health HXXP/1.1\r\nHost: x\r\n\r\n"):
        st, hd, body = one(D.port, junk)
        assert st == 400, (junk, st, body)
        hd.assert_closed()
        error_json(body, 400)


@h.check("headers over --max-header-bytes → 431; just under is fine")
def _():
    st, hd, body = one(L.port, req("GET", "/health", headers={"X-Big": "a" * 3000}))
    assert st == 431, (st, body)
    hd.assert_closed()
    error_json(body, 431)
    # many small headers add up too
    many = {f"X-H{i}": "v" * 40 for i in range(60)}
    st, _, body = one(L.port, req("GET", "/health", headers=many))
    assert st == 431, st
    # a long URL counts
    st, _, body = one(L.port, req("GET", "/health?" + "q" * 2500))
    assert st == 431, st
    c = Conn(L.port)
    c.send(req("GET", "/health", headers={"X-Big": "a" * 1500}))
    st, _, _, _ = c.response()
    assert st == 200, st
    c.close()


@h.check("body over --max-body-bytes → 413 (Content-Length and chunked); under is fine")
def _():
    big = json.dumps({"messages": MSGS, "pad": "x" * 5000}).encode()
    st, hd, body = one(L.port, req("POST", "/v1/chat/completions", big))
    assert st == 413, (st, body)
    hd.assert_closed()
    error_json(body, 413)
    # the 413 comes from the headers alone: no body sent at all
    st, _, body = one(L.port, req("POST", "/v1/chat/completions", None,
                                  headers={"Content-Type": "application/json",
                                           "Content-Length": "999999"}))
    assert st == 413, st
    # chunked: the limit applies to the decoded body as it arrives
    chunks = b"".join(b"%x\r\n%s\r\n" % (1000, b" " * 1000) for _ in range(5)) + b"0\r\n\r\n"
    st, _, body = one(L.port, req("POST", "/v1/chat/completions", None,
                                  headers={"Content-Type": "application/json",
                                           "Transfer-Encoding": "chunked"}) + chunks)
    assert st == 413, (st, body)
    error_json(body, 413)
    # a body just under the limit, padded with JSON whitespace, is served
    ok_body = json.dumps({"messages": MSGS, "max_tokens": 2}).encode()
    ok_body = ok_body[:-1] + b" " * (4000 - len(ok_body)) + b"}"
    c = Conn(L.port)
    c.send(req("POST", "/v1/chat/completions", ok_body))
    st, _, body, _ = c.response()
    assert st == 200, (st, body)
    # and chunked under the limit too, on the same connection
    pieces = [ok_body[i:i + 700] for i in range(0, len(ok_body), 700)]
    c.send(req("POST", "/v1/chat/completions", None,
               headers={"Content-Type": "application/json", "Transfer-Encoding": "chunked"}) +
           b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n")
    st, _, body2, _ = c.response()
    assert st == 200 and json.loads(body2)["choices"] == json.loads(body)["choices"], body2
    c.close()


@h.check("slow headers past --header-timeout → 408 and close; slow body → 408")
def _():
    c = Conn(L.port)
    c.send(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finished
    st, hd, body, _ = c.response()
    assert st == 408, (st, body)
    error_json(body, 408)
    assert hd.get("connection") == "close" and c.closed()
    c.close()
    c = Conn(L.port)
    c.send(req("POST", "/v1/chat/completions", None,
               headers={"Content-Type": "application/json", "Content-Length": "100"}) + b'{"mes')
    st, hd, body, _ = c.response()
    assert st == 408, (st, body)
    assert c.closed()
    c.close()


@h.check("idle keep-alive connection is closed after --idle-timeout, with no bytes sent")
def _():
    c = Conn(L.port)
    c.send(req("GET", "/health"))
    st, hd, _, _ = c.response()
    assert st == 200 and hd.get("connection") != "close", hd
    assert c.closed(timeout=15), "idle connection was not closed"
    assert c.buf == b"", c.buf
    c.close()
    # a connection that never sends anything is closed too, silently
    c = Conn(L.port)
    assert c.closed(timeout=15)
    assert c.buf == b"", c.buf
    c.close()


# ------------------------------------------------------------ keep-alive --

@h.check("keep-alive: several requests on one connection")
def _():
    c = Conn(D.port)
    texts = []
    for i in range(3):
        c.send(req("POST", "/v1/chat/completions", CHAT_BODY, headers={"X-Request-Id": f"ka{i}"}))
        st, hd, body, _ = c.response()
        assert st == 200, (st, body)
        assert hd.get("x-request-id") == f"ka{i}" and hd.get("connection") != "close", hd
        texts.append(json.loads(body)["choices"][0]["message"]["content"])
    c.send(req("GET", "/health"))
    assert c.response()[0] == 200
    # Connection: close on the last one: answered, then closed
    c.send(req("GET", "/v1/models", headers={"Connection": "close"}))
    st, hd, body, _ = c.response()
    assert st == 200 and hd.get("connection") == "close" and json.loads(body)["object"] == "list"
    assert c.closed()
    c.close()
    assert len(set(texts)) == 1, texts


@h.check("pipelining: 3 requests in one send → 3 responses in order (stream in the middle)")
def _():
    sbody = json.dumps({"messages": MSGS, "max_tokens": 5, "stream": True}).encode()
    data = (req("GET", "/health", headers={"X-Request-Id": "p1"}) +
            req("POST", "/v1/chat/completions", sbody, headers={"X-Request-Id": "p2"}) +
            req("POST", "/v1/chat/completions", CHAT_BODY, headers={"X-Request-Id": "p3"}) +
            req("GET", "/v1/models", headers={"X-Request-Id": "p4", "Connection": "close"}))
    c = Conn(D.port)
    c.send(data)
    r = [c.response() for _ in range(4)]
    assert [x[1].get("x-request-id") for x in r] == ["p1", "p2", "p3", "p4"], [x[1] for x in r]
    assert [x[0] for x in r] == [200] * 4
    assert r[0][2] == b""
    assert r[1][1].get("transfer-encoding") == "chunked"
    assert r[1][2].startswith(b"data: {") and r[1][2].endswith(b"data: [DONE]\n\n"), r[1][2][-60:]
    assert json.loads(r[2][2])["id"] == "chatcmpl-p3"
    assert json.loads(r[3][2])["object"] == "list"
    assert c.closed()
    c.close()
    # the streamed text equals the non-streaming one
    streamed = "".join(json.loads(ev[6:])["choices"][0]["delta"].get("content", "")
                       for ev in r[1][2].decode().split("\n\n")
                       if ev.startswith("data: {") and json.loads(ev[6:])["choices"])
    assert streamed == chat_text(D.port, max_tokens=5), streamed


@h.check("byte-at-a-time delivery gives the same answer as one send")
def _():
    want = chat_text(D.port)
    for te in (False, True):
        if te:
            data = req("POST", "/v1/chat/completions", None,
                       headers={"Content-Type": "application/json",
                                "Transfer-Encoding": "chunked", "Connection": "close"}) + \
                b"%x\r\n%s\r\n0\r\n\r\n" % (len(CHAT_BODY), CHAT_BODY)
        else:
            data = req("POST", "/v1/chat/completions", CHAT_BODY, headers={"Connection": "close"})
        c = Conn(D.port)
        for i in range(len(data)):
            c.send(data[i:i + 1])
            time.sleep(0.0005)
        st, hd, body, _ = c.response()
        c.close()
        assert st == 200, (te, st, body)
        assert json.loads(body)["choices"][0]["message"]["content"] == want, (te, body)


@h.check("HTTP/1.0: response then close; keep-alive on request; streams close-delimited")
def _():
    st, hd, body = one(D.port, req("GET", "/v1/models", version="1.0"))
    assert st == 200 and json.loads(body)["object"] == "list", body
    hd.assert_closed()
    # HTTP/1.0 with Connection: keep-alive keeps the connection
    c = Conn(D.port)
    c.send(req("GET", "/health", version="1.0", headers={"Connection": "keep-alive"}))
    st, hd, _, _ = c.response()
    assert st == 200 and hd.get("connection", "").lower() == "keep-alive", hd
    c.send(req("GET", "/health", version="1.0"))
    st, hd, _, _ = c.response()
    assert st == 200 and hd.get("connection") == "close" and c.closed()
    c.close()
    # a 1.0 stream: no chunked encoding, the body ends at close
    sbody = json.dumps({"messages": MSGS, "max_tokens": 3, "stream": True}).encode()
    c = Conn(D.port)
    c.send(req("POST", "/v1/chat/completions", sbody, version="1.0"))
    st, hd, body, _ = c.response()
    c.close()
    assert st == 200 and "transfer-encoding" not in hd and "content-length" not in hd, hd
    assert body.startswith(b"data: {") and body.endswith(b"data: [DONE]\n\n"), body[-80:]


@h.check("Expect: 100-continue → interim 100 Continue, then the final response")
def _():
    c = Conn(D.port)
    head = req("POST", "/v1/chat/completions", CHAT_BODY,
               headers={"Expect": "100-continue"})[:-len(CHAT_BODY)]
    c.send(head)
    st, hd, _, raw = c.response()
    assert st == 100 and raw == b"HTTP/1.1 100 Continue", raw
    c.send(CHAT_BODY)
    st, hd, body, _ = c.response()
    assert st == 200 and json.loads(body)["object"] == "chat.completion", body
    c.close()
    # too large: the final 413 comes at once, without 100 Continue
    c = Conn(L.port)
    c.send(req("POST", "/v1/chat/completions", None,
               headers={"Content-Type": "application/json", "Content-Length": "100000",
                        "Expect": "100-continue"}))
    st, _, _, raw = c.response()
    assert st == 413, raw
    c.close()


# ------------------------------------------------------ request validation --

@h.check("invalid JSON → 400 naming the byte offset; array / empty body → 400")
def _():
    st, hd, b = h.request("POST", D.port, "/v1/chat/completions", raw_body=b'{"messages": [}',
                          headers={"content-type": "application/json"})
    assert st == 400, st
    e = error_json(b, 400)
    assert "byte offset 14" in e["message"], e
    st, _, b = h.request("POST", D.port, "/v1/chat/completions", raw_body=b'{"a":1} x',
                         headers={"content-type": "application/json"})
    assert st == 400 and "byte offset 8" in error_json(b, 400)["message"], b
    for raw in (b"[1, 2]", b'"str"', b"", b"null"):
        st, _, b = h.request("POST", D.port, "/v1/chat/completions", raw_body=raw,
                             headers={"content-type": "application/json"})
        assert st == 400, (raw, st, b)
        error_json(b, 400)


@h.check("unknown path → 404 JSON; wrong method → 405 with Allow")
def _():
    for path in ("/v2/chat/completions", "/", "/v1/models/x", "/health/"):
        st, hd, b = h.request("GET", D.port, path)
        assert st == 404, (path, st)
        error_json(b, 404)
    st, hd, b = h.request("GET", D.port, "/v1/chat/completions")
    assert st == 405 and hd.get("allow") == "POST", (st, hd)
    error_json(b, 405)
    st, hd, b = h.request("POST", D.port, "/v1/models", body={})
    assert st == 405 and hd.get("allow") == "GET, HEAD", (st, hd)
    st, hd, b = h.request("DELETE", D.port, "/health")
    assert st == 405 and hd.get("allow") == "GET, HEAD", (st, hd)


def post_ct(port, body, ct):
    c = Conn(port)
    try:
        c.send(req("POST", "/v1/chat/completions", body, headers={"Content-Type": ct}))
        st, hd, b, _ = c.response()
        return st, b
    finally:
        c.close()


@h.check("Content-Type text/plain (or form) → 400; application/json with params → 200")
def _():
    body = json.dumps({"messages": MSGS, "max_tokens": 1}).encode()
    for ct in ("text/plain", "application/x-www-form-urlencoded"):
        st, b = post_ct(D.port, body, ct)
        assert st == 400, (ct, st, b)
        assert "application/json" in error_json(b, 400)["message"], b
    for ct in ("application/json; charset=utf-8", "Application/JSON"):
        st, b = post_ct(D.port, body, ct)
        assert st == 200, (ct, st, b)


@h.check("Content-Type missing or only prefixed by application/json → 400 (vLLM media type)")
def _():
    # vLLM: media_type = content-type.split(";")[0].lower(); must equal "application/json"
    body = json.dumps({"messages": MSGS, "max_tokens": 1}).encode()
    wrong = []
    for ct in ("application/json-seq", "application/jsonx", None):
        st, b = post_ct(D.port, body, ct)
        if st != 400:
            wrong.append((ct, st))
        else:
            assert "application/json" in error_json(b, 400)["message"], b
    assert not wrong, f"accepted (content-type, status): {wrong}"


@h.check("unknown model → 404 'The model `x` does not exist.'")
def _():
    for path, body in (("/v1/chat/completions", {"messages": MSGS, "model": "gpt-x"}),
                       ("/v1/completions", {"prompt": "hi", "model": "gpt-x"}),
                       ("/v1/embeddings", {"input": "hi", "model": "gpt-x"})):
        e = bad(D.port, path, body, status=404)
        assert e["message"] == "The model `gpt-x` does not exist.", e
        assert e["type"] == "NotFoundError", e


@h.check("prompt too long / max_tokens too large → 400 with the context length")
def _():
    long = "word " * 300
    e = bad(D.port, "/v1/chat/completions", {"messages": [{"role": "user", "content": long}]})
    assert "maximum context length is 256 tokens" in e["message"], e
    e = bad(D.port, "/v1/completions", {"prompt": long})
    assert "maximum context length" in e["message"], e
    e = bad(D.port, "/v1/chat/completions", {"messages": MSGS, "max_tokens": 300})
    assert e["message"].startswith("'max_tokens' or 'max_completion_tokens' is too large: 300."), e
    e = bad(D.port, "/v1/completions", {"prompt": "hi", "max_tokens": 255})
    assert "too large: 255" in e["message"], e
    st, _, j, _ = post(D.port, "/v1/completions", {"prompt": "hi", "max_tokens": 254})
    assert st == 200 and j["usage"]["total_tokens"] == 256, j


@h.check("bad parameter types → 400 with param")
def _():
    cases = [
        ({"messages": MSGS, "max_tokens": "5"}, "max_tokens"),
        ({"messages": MSGS, "max_tokens": 0}, "max_tokens"),
        ({"messages": MSGS, "max_tokens": 2.5}, "max_tokens"),
        ({"messages": MSGS, "temperature": -1}, "temperature"),
        ({"messages": MSGS, "temperature": "hot"}, "temperature"),
        ({"messages": MSGS, "top_p": 0}, "top_p"),
        ({"messages": MSGS, "n": "2"}, "n"),
        ({"messages": MSGS, "stream": "yes"}, "stream"),
        ({"messages": MSGS, "model": 5}, "model"),
    ]
    for body, param in cases:
        e = bad(D.port, "/v1/chat/completions", body)
        assert e["param"] == param, (body, e)
    for body in ({"messages": "hello"}, {"messages": []}, {"messages": [{"content": "x"}]},
                 {"messages": [{"role": 7, "content": "x"}]},
                 {"messages": [{"role": "wizard", "content": "x"}]},
                 {"messages": [{"role": "user", "content": 5}]},
                 {"messages": [{"role": "user", "content": [
                     {"type": "image_url", "image_url": {"url": "http://x/y.png"}}]}]},
                 {}):
        bad(D.port, "/v1/chat/completions", body)
    bad(D.port, "/v1/completions", {"prompt": "x", "suffix": "y"})
    assert chat_text(D.port)


# ---------------------------------------------------------------- faults --

@h.check("x-brix-fault: status=503 → 503; a bad fault header → 400")
def _():
    e = bad(D.port, "/v1/chat/completions", {"messages": MSGS}, status=503,
            headers={"x-brix-fault": "status=503"})
    assert "fault" in e["message"], e
    bad(D.port, "/v1/completions", {"prompt": "x"}, status=429,
        headers={"x-brix-fault": "status=429"})
    bad(D.port, "/v1/chat/completions", {"messages": MSGS}, status=400,
        headers={"x-brix-fault": "explode"})


@h.check("x-brix-fault: abort-after=2 resets a stream mid-way; the engine keeps serving")
def _():
    sbody = json.dumps({"messages": MSGS, "max_tokens": 50, "stream": True}).encode()
    for _ in range(2):
        c = Conn(D.port)
        c.send(req("POST", "/v1/chat/completions", sbody,
                   headers={"x-brix-fault": "abort-after=2"}))
        while c._fill():
            pass
        c.close()
        data = c.buf
        assert data.startswith(b"HTTP/1.1 200 OK\r\n"), data[:100]
        assert b"[DONE]" not in data and not data.endswith(b"0\r\n\r\n"), data[-100:]
        assert data.count(b"data: ") <= 2, data
    deadline = time.time() + 20
    while h.metric_value(h.metrics(D.port), "vllm:num_requests_running") != 0:
        assert time.time() < deadline, "aborted requests still running"
        time.sleep(0.05)
    assert chat_text(D.port)
    st, _, ev, _ = h.sse(D.port, "/v1/chat/completions",
                         {"messages": MSGS, "max_tokens": 3, "stream": True})
    assert st == 200 and ev[-1] == "[DONE]"


@h.check("--failure-rate 1: every generation request is a 500")
def _():
    f = h.engine(["--failure-rate", "1"])
    try:
        for i in range(4):
            e = bad(f.port, "/v1/chat/completions", {"messages": MSGS}, status=500)
            assert "failure" in e["message"], e
            bad(f.port, "/v1/completions", {"prompt": "x", "stream": True}, status=500)
        st, _, _ = h.request("GET", f.port, "/health")
        assert st == 200
    finally:
        f.stop()


@h.check("--max-connections 2: a third connection closes the oldest idle one; with none idle "
         "it gets 503; a freed slot is reusable")
def _():
    m = h.engine(["--max-connections", "2"])
    try:
        a, b = Conn(m.port), Conn(m.port)
        a.send(req("GET", "/health"))
        assert a.response()[0] == 200
        b.send(req("GET", "/health"))
        assert b.response()[0] == 200
        # full: the oldest idle keep-alive connection (a) makes room
        c = Conn(m.port)
        c.send(req("GET", "/health"))
        assert c.response()[0] == 200
        assert a.closed()
        a.close()
        b.send(req("GET", "/health"))  # the newer idle one still works
        assert b.response()[0] == 200
        # two connections in the middle of a body are not idle: a third gets 503
        part = b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{"
        b.send(part)
        c.send(part)
        time.sleep(0.2)
        d = Conn(m.port)
        d.send(req("GET", "/health"))
        st, hd, body, _ = d.response()
        assert st == 503, (st, body)
        error_json(body, 503)
        assert d.closed()
        d.close()
        c.close()
        deadline = time.time() + 10
        while True:
            d = Conn(m.port)
            d.send(req("GET", "/health"))
            st = d.response()[0]
            d.close()
            if st == 200:
                break
            assert time.time() < deadline, "slot not freed after close"
            time.sleep(0.05)
        b.close()
    finally:
        m.stop()


@h.check("engines stop cleanly")
def _():
    D.stop()
    L.stop()


h.run()
