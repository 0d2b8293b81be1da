"""Tenants end to end: a redis-server of the test's own and two gateways sharing it
(limits hold exactly across both), the admin API (brix REST and AIBrix's calls),
API keys (required or not, rotation seen at once by both gateways), TPM from
streaming and non-streaming usage with the gateway's own usage chunk removed
from the client's stream, Redis killed (fail-open and fail-closed) and back,
the memory store without Redis, and the VTC fairness queue."""
import atexit
import os
import re
import shutil
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"
MODEL = "m"
ADMIN = "admin-key-for-tests-0123456789"
ADM = {"authorization": f"Bearer {ADMIN}"}
REDIS = shutil.which("redis-server")
RPORT = h.free_port()
PROCS = []
RS = None


def _cleanup():
    for p in PROCS:
        if p.p.poll() is None:
            p.p.kill()
    if RS is not None and RS.poll() is None:
        RS.kill()


atexit.register(_cleanup)


def start_redis():
    global RS
    RS = subprocess.Popen([REDIS, "--port", str(RPORT), "--bind", "127.0.0.1", "--save", "",
                           "--appendonly", "no", "--protected-mode", "no"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    h.wait_until(lambda: redis_ping(), what="redis-server up")


def redis_ping():
    import socket
    try:
        s = socket.create_connection(("127.0.0.1", RPORT), timeout=0.5)
        s.sendall(b"PING\r\n")
        ok = s.recv(16).startswith(b"+PONG")
        s.close()
        return ok
    except OSError:
        return False


def gw(extra=(), name="gateway"):
    g = h.gateway([E], ["--redis-timeout", "300ms"] + list(extra), name=name)
    PROCS.append(g)
    return g


def chat(g, headers=None, stream=False, n=4, **kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "tell me a story"}],
            "max_tokens": n, "ignore_eos": True}
    if stream:
        body["stream"] = True
    body.update(kw)
    if stream:
        return h.sse(g.port, CHAT, body, headers)
    return h.post(g.port, CHAT, body, headers)


def err(j, code, etype):
    assert j and list(j) == ["error"], j
    assert j["error"]["code"] == code, j
    assert j["error"]["type"] == etype, j
    assert j["error"]["message"], j
    return j["error"]["message"]


def admin(g, method, path, body=None, headers=ADM):
    st, hd, b = h.request(method, g.port, path, body, headers)
    import json
    return st, (json.loads(b) if b else None)


# ------------------------------------------------------------------ setup --

start_redis()
E = h.engine(["--model", MODEL])
PROCS.append(E)
A = gw(["--redis-url", f"redis://127.0.0.1:{RPORT}", "--admin-key", ADMIN,
        "--user", "cfg:rpm=1000,tpm=0"], name="gateway-a")
B = gw(["--redis-url", f"redis://127.0.0.1:{RPORT}/0", "--redis-failure", "closed"],
       name="gateway-b")


@h.check("admin API: missing, malformed or wrong admin key -> 401; a gateway without one -> 403")
def _():
    st, j = admin(A, "GET", "/admin/users", headers={})
    assert st == 401, (st, j)
    err(j, "invalid_api_key", "invalid_request_error")
    st, j = admin(A, "GET", "/admin/users", headers={"authorization": "Basic eDp5"})
    assert st == 401, (st, j)
    st, j = admin(A, "POST", "/CreateUser", {"name": "x"}, headers={"authorization": "Bearer no"})
    assert st == 401, (st, j)
    st, j = admin(B, "GET", "/admin/users")
    assert st == 403, (st, j)
    err(j, "admin_disabled", "permission_error")
    st, j = admin(A, "GET", "/admin/users")
    assert st == 200 and j["object"] == "list", (st, j)
    assert [u["name"] for u in j["data"]] == ["cfg"], j  # the configured user is in Redis


@h.check("admin API: create shows the key once, read/update/delete, bad input -> 400, twice -> 409")
def _():
    st, j = admin(A, "POST", "/admin/users", {"name": "tmp", "rpm": 7, "tpm": 70,
                                              "models": [MODEL]})
    assert st == 201, (st, j)
    assert j["name"] == "tmp" and j["rpm"] == 7 and j["tpm"] == 70 and j["models"] == [MODEL]
    assert j["api_key"].startswith("sk-brix-") and len(j["api_key"]) >= 40, j
    st, j2 = admin(A, "GET", "/admin/users/tmp")
    assert st == 200 and "api_key" not in j2 and j2["rpm"] == 7, j2
    st, j2 = admin(A, "PATCH", "/admin/users/tmp", {"tpm": 0})
    assert st == 200 and j2["tpm"] == 0 and j2["rpm"] == 7, j2
    st, j2 = admin(A, "POST", "/admin/users", {"name": "tmp"})
    assert st == 409, (st, j2)
    for bad in ({"name": "a b"}, {"name": "x", "rpm": -1}, {"name": "x", "rpm": "5"},
                {"rpm": 5}, {"name": "x", "models": "m"}):
        st, j2 = admin(A, "POST", "/admin/users", bad)
        assert st == 400, (bad, st, j2)
    st, _, b = h.request("POST", A.port, "/admin/users", headers=ADM, raw_body=b"{oops")
    assert st == 400, b
    st, j2 = admin(A, "DELETE", "/admin/users/tmp")
    assert st == 200 and j2["deleted"] is True, j2
    st, j2 = admin(A, "GET", "/admin/users/tmp")
    assert st == 404, (st, j2)
    st, j2 = admin(A, "PUT", "/admin/users/tmp")
    assert st == 405, (st, j2)


@h.check("AIBrix user calls: CreateUser keeps an existing user, defaults rpm 100 / tpm rpm x 1000")
def _():
    st, j = admin(A, "POST", "/CreateUser", {"name": "aib"})
    assert st == 200 and j["user"]["rpm"] == 100 and j["user"]["tpm"] == 100000, j
    assert j["message"] == "Created User: aib", j
    st, j = admin(A, "POST", "/CreateUser", {"name": "aib", "rpm": 5})
    assert st == 200 and j["user"]["rpm"] == 100 and "exists" in j["message"], j
    st, j = admin(B if False else A, "POST", "/UpdateUser", {"name": "aib", "rpm": 5})
    assert st == 200 and j["user"]["rpm"] == 5 and j["user"]["tpm"] == 5000, j
    st, j = admin(A, "POST", "/ReadUser", {"name": "aib"})
    assert st == 200 and j["user"]["rpm"] == 5, j
    st, j = admin(A, "POST", "/DeleteUser", {"name": "aib"})
    assert st == 200, j
    st, j = admin(A, "POST", "/DeleteUser", {"name": "aib"})
    assert st == 404 and j["user"] is None, (st, j)


@h.check("RPM 5 across two gateways: exactly 5 of 10 pass, 5 get 429 with OpenAI's headers")
def _():
    st, j = admin(A, "POST", "/admin/users", {"name": "five", "rpm": 5})
    assert st == 201, j
    key = {"authorization": f"Bearer {j['api_key']}"}
    # a user with a key is only its key: the user header cannot name it
    st, hd, j, b = chat(B, {"user": "five"}, n=1)
    assert st == 401, b
    err(j, "invalid_api_key", "invalid_request_error")
    codes = []
    for i in range(10):
        g = A if i % 2 == 0 else B
        st, hd, j, b = chat(g, key, n=1)
        codes.append(st)
        assert hd["x-ratelimit-limit-requests"] == "5", hd
        if st == 429:
            err(j, "rate_limit_exceeded", "rate_limit_error")
            assert int(hd["retry-after"]) >= 1, hd
            assert hd["x-ratelimit-remaining-requests"] == "0", hd
            assert hd["x-error-rpm-exceeded"] == "true", hd
            assert hd["x-ratelimit-reset-requests"].endswith("s"), hd
        else:
            assert st == 200, b
            assert int(hd["x-ratelimit-remaining-requests"]) == 4 - codes.count(200) + 1, (i, hd)
    assert codes.count(200) == 5 and codes.count(429) == 5, codes
    assert codes[:5] == [200] * 5, codes
    total = sum(h.metric_value(h.metrics(g.port), "brix_gateway_tenant_requests_total",
                               {"user": "five", "result": "rpm_limited"}) or 0 for g in (A, B))
    assert total == 5, total


@h.check("TPM from usage: non-streaming and streaming both charged; the client never sees the "
         "gateway's usage chunk, but gets the one it asks for")
def _():
    st, j = admin(A, "POST", "/CreateUser", {"name": "tok", "rpm": 1000, "tpm": 6000})
    assert st == 200, j  # AIBrix-style user: no key, named by the user header
    st, hd, j, b = chat(A, {"user": "tok"}, n=8)
    assert st == 200, b
    used1 = j["usage"]["total_tokens"]
    assert hd["x-ratelimit-limit-tokens"] == "6000", hd
    assert hd["x-ratelimit-limit-requests"] == "1000", hd
    time.sleep(0.1)  # charged when the upstream response ends
    st, hd, ev, raw = chat(B, {"user": "tok"}, stream=True, n=8)
    assert st == 200, raw
    assert ev[-1] == "[DONE]", ev[-3:]
    assert not any(isinstance(e, dict) and "usage" in e for e in ev), raw[-400:]
    assert not any(isinstance(e, dict) and e.get("choices") == [] for e in ev), raw[-400:]
    content = "".join(e["choices"][0]["delta"].get("content", "") for e in ev
                      if isinstance(e, dict) and e.get("choices"))
    assert content, ev
    # the stream was charged: prompt + 8 completion tokens, like the first
    time.sleep(0.1)
    st, hd, j, b = chat(A, {"user": "tok"}, n=8)
    assert st == 200, b
    rem = int(hd["x-ratelimit-remaining-tokens"])
    # two responses of used1 tokens each were charged, and this request's own estimate
    # (prompt + max_tokens 8) is reserved; a little is earned back meanwhile (100/s)
    assert 6000 - 3 * used1 <= rem <= 6000 - 2 * used1 + 300, (rem, used1)
    # a client that asks for usage gets it, exactly once, at the end
    st, hd, ev, raw = chat(B, {"user": "tok"}, stream=True, n=3,
                           stream_options={"include_usage": True})
    assert st == 200, raw
    usage = [e for e in ev if isinstance(e, dict) and e.get("usage")]
    assert len(usage) == 1 and usage[0]["usage"]["completion_tokens"] == 3, raw[-600:]
    # include_usage false is turned on for the engine and the chunk removed again
    st, hd, ev, raw = chat(A, {"user": "tok"}, stream=True, n=3,
                           stream_options={"include_usage": False})
    assert st == 200, raw
    assert not any(isinstance(e, dict) and e.get("usage") for e in ev), raw[-400:]
    tok = h.metric_value(h.metrics(A.port), "brix_gateway_tenant_tokens_total",
                         {"user": "tok", "kind": "completion"})
    assert tok and tok >= 8 + 8 + 3, tok


@h.check("TPM limit: prompt + max_tokens are reserved at admission; a request over the "
         "remaining budget gets 429 with the -tokens headers")
def _():
    st, j = admin(A, "POST", "/CreateUser", {"name": "small", "rpm": 1000, "tpm": 200})
    assert st == 200, j
    st, hd, j, b = chat(A, {"user": "small"}, n=250)  # max_tokens alone is over the limit
    assert st == 429 and "too large" in j["error"]["message"] and "retry-after" not in hd, b
    st, hd, j, b = chat(A, {"user": "small"}, n=150)  # ~165 of 200 tokens
    assert st == 200, b
    first = (hd, j["usage"])
    # usage is charged when the upstream response ends, which may be a moment
    # after the client has its last byte
    time.sleep(0.1)
    st, hd, j, b = chat(B, {"user": "small"}, n=50)  # ~55 more do not fit in the ~35 left
    assert st == 429, (st, hd, first)
    err(j, "rate_limit_exceeded", "rate_limit_error")
    assert hd["x-error-tpm-exceeded"] == "true", hd
    assert int(hd["x-ratelimit-remaining-tokens"]) < 55 and int(hd["retry-after"]) >= 1, hd
    big = {"model": MODEL, "prompt": "word " * 600, "max_tokens": 1}
    st, hd, j, b = h.post(A.port, CMPL, big, {"user": "small"})
    assert st == 429 and "too large" in j["error"]["message"], b


@h.check("TPM exact budget (Redis): a request for exactly the whole budget is admitted, the "
         "next refused")
def _():
    st, j = admin(A, "POST", "/CreateUser", {"name": "probe", "rpm": 1000, "tpm": 10})
    assert st == 200, j
    # the 'too large' answer tells the estimate (prompt estimate + max_tokens)
    st, hd, j, b = chat(A, {"user": "probe"}, n=100)
    assert st == 429, b
    est = int(re.search(r"about (\d+) tokens", j["error"]["message"]).group(1))
    st, j = admin(A, "POST", "/CreateUser", {"name": "exact", "rpm": 1000, "tpm": est})
    assert st == 200, j
    st, hd, j, b = chat(A, {"user": "exact"}, n=100)
    assert st == 200, b
    assert hd["x-ratelimit-remaining-tokens"] == "0", hd
    st, hd, j, b = chat(B, {"user": "exact"}, n=100)
    assert st == 429 and hd["x-error-tpm-exceeded"] == "true", (st, hd)


@h.check("keys: required key decides the user (a user header cannot override it); missing or "
         "wrong -> 401; a rotated key stops working at once on both gateways")
def _():
    global C
    C = gw(["--redis-url", f"redis://127.0.0.1:{RPORT}", "--require-key"], name="gateway-c")
    st, j = admin(A, "POST", "/admin/users", {"name": "keyed", "rpm": 50})
    assert st == 201, j
    key = j["api_key"]
    st, j = admin(A, "POST", "/admin/users", {"name": "other", "rpm": 1000})
    assert st == 201, j
    st, hd, j, b = chat(C, {})
    assert st == 401, b
    err(j, "invalid_api_key", "invalid_request_error")
    st, hd, j, b = chat(C, {"authorization": "Bearer sk-brix-nope"})
    assert st == 401, b
    err(j, "invalid_api_key", "invalid_request_error")
    st, hd, j, b = chat(C, {"authorization": f"Bearer {key}", "user": "other"})
    assert st == 200, b
    assert hd["x-ratelimit-limit-requests"] == "50", hd  # counted to keyed, not other
    # without --require-key an sk-brix- key names its user too
    st, hd, j, b = chat(A, {"authorization": f"Bearer {key}"})
    assert st == 200 and hd["x-ratelimit-limit-requests"] == "50", (st, hd)
    st, j = admin(A, "POST", "/admin/users/keyed/rotate-key")
    assert st == 200 and j["api_key"] != key and j["api_key"].startswith("sk-brix-"), j
    new = j["api_key"]
    for g in (A, B, C):
        st, hd, j2, b = chat(g, {"authorization": f"Bearer {key}"})
        assert st == 401, (g.name, st, b)
        st, hd, j2, b = chat(g, {"authorization": f"Bearer {new}"})
        assert st == 200, (g.name, st, b)
    st, j = admin(A, "POST", "/admin/users/ghost/rotate-key")
    assert st == 404, j


@h.check("a user's brix key is not forwarded to the engine; other bearer tokens are")
def _():
    key_engine = h.engine(["--model", MODEL, "--api-key", "engine-secret"], name="engine-key")
    PROCS.append(key_engine)
    st, j = admin(A, "POST", "/admin/users", {"name": "fw", "rpm": 100})
    assert st == 201, j
    ukey = j["api_key"]
    # without --engine-api-key the gateway cannot even list the engine's models
    g = h.gateway([key_engine], ["--redis-url", f"redis://127.0.0.1:{RPORT}"], name="gateway-k",
                  ready=False)
    PROCS.append(g)
    h.wait_until(lambda: "/v1/models failed" in g.text(), what="models refused")
    g.stop()
    g = h.gateway([key_engine], ["--redis-url", f"redis://127.0.0.1:{RPORT}",
                                 "--engine-api-key", "engine-secret"], name="gateway-k2")
    PROCS.append(g)
    st, hd, j2, b = chat(g, {"authorization": "Bearer engine-secret"})
    assert st == 200, b  # not a brix key: anonymous, passed through to the engine
    st, hd, j2, b = chat(g, {"authorization": "Bearer wrong"})
    assert st == 401 and j2 == {"error": "Unauthorized"}, (st, b)  # the engine's answer
    st, hd, j2, b = chat(g, {"authorization": f"Bearer {ukey}"})
    # the gateway took the user's key and sent the engine's own in its place
    assert st == 200, (st, b)
    assert hd.get("x-ratelimit-limit-requests") == "100", hd
    g.stop()
    key_engine.stop()


@h.check("Redis killed: fail-open admits unchecked, fail-closed answers 503; both recover "
         "when Redis returns (configured users written again)")
def _():
    RS.kill()
    RS.wait()
    st, hd, j, b = h.wait_until(
        lambda: (lambda r: r if r[0] == 200 and "x-ratelimit-limit-requests" not in r[1]
                 else None)(chat(A, {"user": "cfg"}, n=1)), timeout=10, what="fail-open")
    st, hd, j, b = chat(B, {"user": "cfg"}, n=1)
    assert st == 503 and "retry-after" in hd, (st, b)
    err(j, "service_unavailable", "overloaded_error")
    # fail-open waives limits, not authentication: a key that cannot be checked is refused
    st, hd, j, b = chat(A, {"authorization": "Bearer sk-brix-anything"}, n=1)
    assert st == 503, (st, b)
    m = h.metrics(A.port)
    assert (h.metric_value(m, "brix_gateway_ratelimit_fail_open_total") or 0) >= 1, m
    assert h.metric_value(m, "brix_gateway_tenant_store_up") == 0
    assert (h.metric_value(h.metrics(B.port), "brix_gateway_ratelimit_fail_closed_total")
            or 0) >= 1
    start_redis()  # empty: the configured user comes back from gateway A's config

    def limited(g):
        st, hd, j, b = chat(g, {"user": "cfg"}, n=1)
        return st == 200 and hd.get("x-ratelimit-limit-requests") == "1000"
    h.wait_until(lambda: limited(A), timeout=15, what="gateway A back on Redis")
    h.wait_until(lambda: limited(B), timeout=15, what="gateway B back on Redis")
    assert h.metric_value(h.metrics(A.port), "brix_gateway_tenant_store_up") == 1
    for g in (A, B, C):
        g.expect_error(r"redis")


@h.check("memory store (no Redis): configured users limited, unknown user -> 401, anonymous "
         "requests unlimited, --default-rpm admits unknown users with their own counters")
def _():
    g = h.gateway([E], ["--user", "mem:rpm=2", "--user", "mem2:models=other-model"],
                  name="gateway-mem")
    PROCS.append(g)
    codes = [chat(g, {"user": "mem"}, n=1)[0] for _ in range(3)]
    assert codes == [200, 200, 429], codes
    st, hd, j, b = chat(g, {"user": "stranger"})
    assert st == 401, b
    err(j, "invalid_user", "invalid_request_error")
    st, hd, j, b = chat(g, {"user": "mem2"})
    assert st == 403, b
    err(j, "model_not_allowed", "permission_error")
    assert all(chat(g)[0] == 200 for _ in range(4))
    st, j = admin(g, "GET", "/admin/users")
    assert st == 403, j
    g.stop()
    g2 = h.gateway([E], ["--default-rpm", "1"], name="gateway-default")
    PROCS.append(g2)
    assert chat(g2, {"user": "x1"}, n=1)[0] == 200
    assert chat(g2, {"user": "x1"}, n=1)[0] == 429
    assert chat(g2, {"user": "x2"}, n=1)[0] == 200
    g2.stop()


@h.check("--max-implicit-users: at the bound an idle --default-rpm user makes room; when none "
         "is idle with full buckets, a new user gets 429 with Retry-After")
def _():
    # rpm 1000: a request's cost is earned back in 60 ms
    g = h.gateway([E], ["--default-rpm", "1000", "--max-implicit-users", "2"],
                  name="gateway-implicit")
    PROCS.append(g)
    assert chat(g, {"user": "i1"}, n=1)[0] == 200
    assert chat(g, {"user": "i2"}, n=1)[0] == 200
    time.sleep(0.2)  # both over and their buckets full again
    assert chat(g, {"user": "i3"}, n=1)[0] == 200  # i1 made room
    assert chat(g, {"user": "i4"}, n=1)[0] == 200  # then i2
    m = h.metrics(g.port)
    assert h.metric_value(m, "brix_gateway_tenant_implicit_evicted_total") == 2, m
    assert h.metric_value(m, "brix_gateway_tenant_implicit_users") == 2, m
    g.stop()
    # rpm 1: a bucket is full again only after a minute: nobody can make room
    g = h.gateway([E], ["--default-rpm", "1", "--max-implicit-users", "2"],
                  name="gateway-implicit-1")
    PROCS.append(g)
    assert chat(g, {"user": "j1"}, n=1)[0] == 200
    assert chat(g, {"user": "j2"}, n=1)[0] == 200
    st, hd, j, b = chat(g, {"user": "j3"}, n=1)
    assert st == 429 and 1 <= int(hd["retry-after"]) <= 60, (st, hd, b)
    err(j, "rate_limit_exceeded", "rate_limit_error")
    assert chat(g, {"user": "j1"}, n=1)[0] == 429  # j1 kept its spent bucket
    m = h.metrics(g.port)
    assert h.metric_value(m, "brix_gateway_tenant_implicit_refused_total") == 1, m
    g.stop()


@h.check("bad tenancy flags are refused at start with a clear message")
def _():
    for extra, want in ((["--redis-url", "rediss://h:1"], "TLS"),
                        (["--redis-url", "http://x"], "redis://"),
                        (["--user", "bad name"], "name"),
                        (["--user", "u:rpm=x"], "rpm"),
                        (["--user", "u", "--user", "u"], "twice"),
                        (["--redis-failure", "maybe"], "open or closed"),
                        (["--fairness", "wfq"], "none or vtc"),
                        (["--admin-key", "short"], "16")):
        p = h.Proc(["gateway", "--worker-urls", "http://127.0.0.1:1"] + extra, name="bad")
        rc = p.p.wait(10)
        assert rc == 2 and want in p.text(), (extra, rc, p.text())


@h.check("VTC fairness: at capacity a light user's requests overtake a flooding user's queue")
def _():
    e = h.engine(["--model", MODEL, "--time-scale", "0.2"], name="engine-fair")
    PROCS.append(e)
    e2 = h.engine(["--model", "other-model", "--time-scale", "0.2"], name="engine-fair-2")
    PROCS.append(e2)
    g = h.gateway([e, e2], ["--fairness", "vtc", "--max-inflight-per-pod", "2",
                            "--queue-size", "40"], name="gateway-fair")
    PROCS.append(g)
    results = {}

    def send(user, i, n=20):
        t0 = time.time()
        st, hd, j, b = chat(g, {"user": user}, n=n)
        results[(user, i)] = (st, time.time() - t0)

    heavy = [threading.Thread(target=send, args=("heavy", i)) for i in range(24)]
    for t in heavy:
        t.start()
    h.wait_until(lambda: (h.metric_value(h.metrics(g.port), "brix_gateway_fair_queued") or 0)
                 >= 15, timeout=10, what="heavy user's queue")
    # another model has its own queue: its requests do not wait behind this one's
    st, hd, j, b = h.post(g.port, CHAT, {"model": "other-model", "max_tokens": 2,
                                         "messages": [{"role": "user", "content": "hi"}]},
                          {"user": "heavy"})
    assert st == 200, b
    # (one shared queue would have put it behind all of heavy's: nothing left queued)
    assert (h.metric_value(h.metrics(g.port), "brix_gateway_fair_queued") or 0) >= 3
    light = [threading.Thread(target=send, args=("light", i)) for i in range(3)]
    for t in light:
        t.start()
    for t in heavy + light:
        t.join(60)
    assert all(v[0] == 200 for v in results.values()), results
    light_t = max(v[1] for k, v in results.items() if k[0] == "light")
    heavy_t = sorted(v[1] for k, v in results.items() if k[0] == "heavy")
    # FIFO would put the light requests behind ~20 queued heavy ones (10 batches of 2);
    # VTC lets them in as soon as a slot frees
    assert light_t < heavy_t[len(heavy_t) // 2], (light_t, heavy_t)
    m = h.metrics(g.port)
    assert h.metric_value(m, "brix_gateway_fair_capacity") == 4, m  # 2 per model
    assert (h.metric_value(m, "brix_gateway_fair_wait_seconds_count") or 0) >= 3
    # a full queue -> 429 queue_full: two long requests hold both slots while 40 of another
    # user's wait; its next one is refused (threads started at once raced the requests
    # ending on a loaded machine)
    hold = [threading.Thread(target=send, args=("hold", i, 2000)) for i in range(2)]
    for t in hold:
        t.start()
    h.wait_until(lambda: h.metric_value(h.metrics(g.port), "brix_gateway_fair_inflight") == 2,
                 timeout=10, what="both slots held")
    flood = [threading.Thread(target=send, args=("flood", i, 1)) for i in range(40)]
    for t in flood:
        t.start()
    h.wait_until(lambda: h.metric_value(h.metrics(g.port), "brix_gateway_fair_queued") >= 40,
                 timeout=20, what="40 waiting")
    st, hd, j, b = chat(g, {"user": "flood"}, n=1)
    assert st == 429, (st, b, results.get(("hold", 0)))
    assert j["error"]["code"] == "queue_full", j
    for t in hold + flood:
        t.join(90)
    assert all(results[("flood", i)][0] == 200 for i in range(40)), results
    g.stop()
    e.stop()
    e2.stop()


@h.check("--fair-tenants: a full fairness table makes room for new users from idle ones")
def _():
    g = h.gateway([E], ["--fairness", "vtc", "--fair-tenants", "2", "--fair-tenant-idle", "0"],
                  name="gateway-fair-evict")
    PROCS.append(g)
    for u in ("f1", "f2", "f3", "f4", "f1"):
        assert chat(g, {"user": u}, n=1)[0] == 200
        # the slot is given back just after the last byte is sent
        h.wait_until(lambda: h.metric_value(h.metrics(g.port), "brix_gateway_fair_inflight") == 0,
                     timeout=5, what="the request's slot given back")
    m = h.metrics(g.port)
    assert h.metric_value(m, "brix_gateway_fair_tenants_evicted_total") == 3, m
    g.stop()


@h.check("gateways and engine stop cleanly (no sanitizer report)")
def _():
    for p in (C, B, A):
        p.stop()
    E.stop()


if REDIS is None:
    print("redis-server not found: scripts/setup installs it")
    sys.exit(1)
h.run()
