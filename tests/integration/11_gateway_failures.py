"""11 — `brix gateway` under failures: an engine killed while idle (retries,
health marking, /v1/models) and restarted on its port; an engine killed
mid-stream (SSE error event, clean end); the circuit breaker (ejection,
half-open probe, longer ejection, closing again); client aborts reaching the
engine; SIGTERM drain and a forcing second SIGTERM; SIGHUP reload of a good
and of a broken config file; every engine down (503 + Retry-After)."""
import json
import os
import signal
import socket
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

BASE = "llama-3-8b"
CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"
ERR_KEYS = ["message", "type", "param", "code"]
COMMON = ["--seed", "5", "--output-len-dist", "none"]
# about 7 ms of wall time per generated token: streams that last long enough to act in
SLOW = ["--time-scale", "0.5"]


def lora(*mods):
    return ["--enable-lora", "--max-loras", "4", "--lora-modules"] + list(mods)


def kill9(p):
    p.p.kill()
    p.p.wait()


def cleanup(*procs):
    """Stops what still runs; checks every log (killed engines: the log only)."""
    errs = []
    for p in procs:
        if p is None:
            continue
        try:
            p.stop(want_rc=0 if p.p.poll() is None else None)
        except AssertionError as ex:
            errs.append(str(ex)[:3000])
    assert not errs, "\n".join(errs)


def chat(g, model=BASE, n=1, headers=None):
    st, hd, j, b = h.post(g.port, CHAT, {"model": model, "max_tokens": n,
                                         "messages": [{"role": "user", "content": "hi"}]},
                          headers)
    return st, hd, j, b


def targets(g, count, model=BASE, headers=None, want=200):
    out = []
    for _ in range(count):
        st, hd, j, b = chat(g, model, 1, headers)
        assert st == want, (st, b[:300])
        out.append(hd.get("target-pod"))
    return out


def mv(g, name, labels=None):
    return h.metric_value(h.metrics(g.port), name, labels) or 0


def openai_err(st, hd, j, b, status):
    assert st == status, (st, b[:300])
    assert hd.get("content-type") == "application/json", hd
    assert j and list(j) == ["error"] and list(j["error"]) == ERR_KEYS, b
    return j["error"]


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------- killed engines --

@h.check("kill -9 an idle engine: every next request succeeds on the other pod; marked "
         "unhealthy within 3 s; /v1/models keeps the survivor's models; restart on the same "
         "port is picked up; all engines down -> 503 + Retry-After")
def _():
    ea = h.engine(COMMON + lora("sql=/a", "shared=/s"), name="engine-A")
    eb = h.engine(COMMON + lora("math=/b", "shared=/s"), name="engine-B")
    # One worker, round-robin: of the first two requests after the kill one is routed to
    # the dead pod before health checks can notice. Its connect failures eject it too (1 s).
    g = h.gateway([ea, eb], ["--workers", "1", "--routing-strategy", "round-robin",
                             "--retry-after", "3", "--ejection-time", "1s"])
    ea2 = None
    problems = []
    try:
        a, b = h.pod_of(ea), h.pod_of(eb)
        pods = targets(g, 20)
        assert a in pods and b in pods, pods
        kill9(ea)
        t0 = time.time()
        pods = targets(g, 20)  # retried on B when A was picked
        assert pods == [b] * 20, pods
        assert mv(g, "brix_gateway_retries_total", {"model": BASE}) >= 1
        assert mv(g, "brix_gateway_upstream_errors_total", {"pod": a, "kind": "connect"}) >= 1
        assert mv(g, "brix_gateway_requests_total", {"model": BASE, "status": "200"}) == 40
        h.wait_until(lambda: h.healthy_pods(g.port).get(a) == 0, 3.0 - (time.time() - t0),
                     "pod A healthy 0")
        assert h.healthy_pods(g.port).get(b) == 1
        st, j = h.get_json(g.port, "/v1/models")
        ids = sorted(d["id"] for d in j["data"])
        if ids != sorted([BASE, "math", "shared"]):  # reported at the end; the rest goes on
            problems.append(f"/v1/models with A down: {ids} (B serves {BASE}, math, shared)")
        # the adapter only A had: known but not servable now
        st, hd, jj, bb = chat(g, "sql")
        openai_err(st, hd, jj, bb, 503)
        # the engine comes back on the same port
        ea2 = h.engine(COMMON + lora("sql=/a", "shared=/s"), port=ea.port, name="engine-A2")
        h.wait_until(lambda: h.healthy_pods(g.port).get(a) == 1, 5, "pod A healthy again")
        h.wait_until(lambda: a in targets(g, 10), 3, "traffic on pod A again")
        pods = targets(g, 30)
        assert a in pods and b in pods, pods
        st, hd, jj, bb = chat(g, "sql")
        assert st == 200 and hd.get("target-pod") == a, (st, hd)
        # every engine down
        kill9(ea2)
        kill9(eb)
        h.wait_until(lambda: list(h.healthy_pods(g.port).values()) == [0, 0], 5, "no pod healthy")
        st, hd, j, body = chat(g)
        e = openai_err(st, hd, j, body, 503)
        assert hd.get("retry-after") == "3", hd
        assert e["type"] == "overloaded_error" and e["code"] == "service_unavailable", e
        assert hd.get("x-error-no-model-backends") == BASE, hd
        st, _, _ = h.request("GET", g.port, "/readyz")
        assert st == 503, st
        assert not problems, problems
    finally:
        cleanup(g, ea, eb, ea2)


@h.check("engine killed mid-stream: events so far, an SSE error event, [DONE], clean end "
         "within 1 s; broken_streams_total counts it")
def _():
    es = h.engine(COMMON + SLOW + lora("slow=/x"), name="engine-slow")
    eb = h.engine(COMMON, name="engine-B")
    g = h.gateway([es, eb])
    try:
        s = h.Stream(g.port, CMPL, {"model": "slow", "prompt": "go", "max_tokens": 3000,
                                    "ignore_eos": True, "stream": True})
        assert s.status == 200 and s.headers.get("target-pod") == h.pod_of(es), s.headers
        s.wait_events(5)
        kill9(es)
        t_kill = time.time()
        ev = s.read_to_end(5)
        took = time.time() - t_kill
        assert s.ended and not s.closed, "the chunked stream did not end with its last chunk"
        assert took < 1.0, f"stream ended {took:.2f}s after the kill"
        assert ev[-1] == "[DONE]" and ev.count("[DONE]") == 1, ev[-3:]
        err = ev[-2]
        assert list(err) == ["error"] and list(err["error"]) == ERR_KEYS, err
        assert isinstance(err["error"]["message"], str) and err["error"]["message"], err
        tokens = [e for e in ev[:-2]]
        assert len(tokens) >= 5 and all(e["object"] == "text_completion" for e in tokens), ev[:3]
        assert all("error" not in e for e in tokens), tokens
        assert s.body.endswith(b"\n\ndata: [DONE]\n\n"), s.body[-80:]
        # the connection is still usable (keep-alive) and the gateway serves the other pod
        s.close()
        h.wait_until(lambda: mv(g, "brix_gateway_broken_streams_total") == 1, 2,
                     "broken_streams_total 1")
        assert mv(g, "brix_gateway_upstream_errors_total", {"pod": h.pod_of(es)}) == 1
        pods = targets(g, 5)
        assert pods == [h.pod_of(eb)] * 5, pods
        h.wait_until(lambda: h.healthy_pods(g.port).get(h.pod_of(es)) == 0, 3, "pod marked")
    finally:
        cleanup(g, es, eb)


# -------------------------------------------------------- circuit breaker --

@h.check("circuit breaker: 3 failures eject the pod; one probe after the ejection time; a "
         "failed probe ejects it for longer; a healthy engine takes traffic again")
def _():
    ef = h.engine(COMMON + ["--failure-rate", "1"], name="engine-failing")
    eh = h.engine(COMMON, name="engine-healthy")
    g = h.gateway([ef, eh], ["--workers", "1", "--routing-strategy", "round-robin",
                             "--breaker-failures", "3", "--ejection-time", "1s",
                             "--retry-on-5xx", "false"])
    ef2 = None
    try:
        f, ok = h.pod_of(ef), h.pod_of(eh)
        res = []
        for _ in range(6):  # round-robin: F, H, F, H, F (ejected here), H
            st, hd, j, b = chat(g)
            res.append((hd.get("target-pod"), st))
        assert [p for p, _ in res].count(f) == 3, res
        assert all(st == 500 for p, st in res if p == f), res  # passed through, not retried
        assert all(st == 200 for p, st in res if p == ok), res
        t_eject = time.time()
        assert mv(g, "brix_gateway_pod_ejections_total", {"pod": f}) == 1
        pods = targets(g, 20)
        assert time.time() - t_eject < 0.9, "inconclusive: the ejection time passed meanwhile"
        assert pods == [ok] * 20, pods
        # half-open after 1 s: exactly one probe, which fails -> ejected again (for 2 s)
        time.sleep(max(0, t_eject + 1.1 - time.time()))
        res = []
        for _ in range(10):
            st, hd, j, b = chat(g)
            res.append((hd.get("target-pod"), st))
        t_eject2 = time.time()
        probes = [r for r in res if r[0] == f]
        assert probes == [(f, 500)], res
        assert mv(g, "brix_gateway_pod_ejections_total", {"pod": f}) == 2
        # still ejected after the first ejection time: the second one is longer
        time.sleep(max(0, t_eject2 + 1.2 - time.time()))
        pods = targets(g, 6)
        assert f not in pods, f"pod probed again after {time.time() - t_eject2:.2f}s: {pods}"
        # the engine is replaced by a healthy one on the same port
        port = ef.port
        kill9(ef)
        ef2 = h.engine(COMMON, port=port, name="engine-fixed")
        h.wait_until(lambda: h.healthy_pods(g.port).get(f) == 1, 5, "pod F healthy")
        time.sleep(max(0, t_eject2 + 2.2 - time.time()))
        pods = targets(g, 10)
        assert pods.count(f) >= 4 and pods.count(ok) >= 4, pods
        assert mv(g, "brix_gateway_pod_ejections_total", {"pod": f}) == 2
    finally:
        cleanup(g, ef, eh, ef2)


# ------------------------------------------------------------ client abort --

@h.check("client abort mid-stream: the engine stops the request at once; the gateway serves on")
def _():
    e = h.engine(COMMON + SLOW, name="engine")
    g = h.gateway([e])

    def running():
        return h.metric_value(h.metrics(e.port), "vllm:num_requests_running")
    try:
        s = h.Stream(g.port, CHAT, {"model": BASE, "max_tokens": 3000, "ignore_eos": True,
                                    "stream": True, "messages": [{"role": "user", "content": "x"}]},
                     {"x-request-id": "abort-me"})
        s.wait_events(3)
        assert running() == 1
        s.close()
        t0 = time.time()
        h.wait_until(lambda: running() == 0, 2, "engine running 0 after the client left")
        assert time.time() - t0 < 2
        h.wait_until(lambda: mv(g, "brix_gateway_client_aborts_total") == 1, 2, "aborts 1")
        h.wait_until(lambda: mv(g, "brix_gateway_pod_inflight_requests",
                                {"pod": h.pod_of(e)}) == 0, 2, "inflight 0")
        assert mv(g, "brix_gateway_requests_total", {"model": BASE, "status": "499"}) == 1
        st, hd, j, b = chat(g, n=3)
        assert st == 200 and j["usage"]["completion_tokens"] == 3, b
        line = [ln for ln in g.text().splitlines() if "req=abort-me access" in ln]
        assert len(line) == 1 and "status=499" in line[0], line
        for k in ("model=", "pod=", "strategy=", "ttft_ms=", "dur_ms=", "prompt_tokens=",
                  "completion_tokens="):
            assert k in line[0], f"access line lacks {k}: {line[0]}"
    finally:
        cleanup(g, e)


# ------------------------------------------------------------------ drain --

def refused(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return False
    except ConnectionRefusedError:
        return True


@h.check("SIGTERM drain: the in-flight stream completes, new connections are refused, exit 0")
def _():
    e = h.engine(COMMON + SLOW, name="engine")
    g = h.gateway([e])
    try:
        s = h.Stream(g.port, CMPL, {"model": BASE, "prompt": "drain", "max_tokens": 250,
                                    "ignore_eos": True, "stream": True})
        s.wait_events(3)
        g.p.send_signal(signal.SIGTERM)
        h.wait_until(lambda: refused(g.port), 2, "connections refused while draining")
        assert g.p.poll() is None, "exited before the stream finished"
        ev = s.read_to_end(30)
        s.close()
        assert s.ended and ev[-1] == "[DONE]", ev[-2:]
        assert sum(1 for x in ev[:-1] if x["choices"] and x["choices"][0]["text"]) == 250
        assert all("error" not in x for x in ev[:-1]), ev[-3:]
        g.p.wait(10)
        assert g.p.returncode == 0, g.p.returncode
    finally:
        cleanup(g, e)


@h.check("SIGTERM drain: a second SIGTERM forces the exit")
def _():
    e = h.engine(COMMON + SLOW, name="engine")
    g = h.gateway([e], ["--drain-timeout", "60s"])
    try:
        s = h.Stream(g.port, CMPL, {"model": BASE, "prompt": "long", "max_tokens": 3000,
                                    "ignore_eos": True, "stream": True})
        s.wait_events(3)
        g.p.send_signal(signal.SIGTERM)
        time.sleep(0.3)
        assert g.p.poll() is None, "exited with a stream in flight"
        g.p.send_signal(signal.SIGTERM)
        g.p.wait(5)
        assert g.p.returncode == 0, g.p.returncode
        s.read_to_end(5)  # the connection is closed, not left hanging
        s.close()
        h.wait_until(lambda: h.metric_value(h.metrics(e.port), "vllm:num_requests_running") == 0,
                     3, "engine request cancelled")
    finally:
        cleanup(g, e)


# ----------------------------------------------------------------- reload --

@h.check("SIGHUP reload: engine set and strategy follow the file; a broken file is refused "
         "and the old configuration kept")
def _():
    ea = h.engine(COMMON + lora("sql=/a"), name="engine-A")
    eb = h.engine(COMMON + lora("math=/b"), name="engine-B")
    fd, path = tempfile.mkstemp(prefix="brix-gw-", suffix=".yaml")
    os.close(fd)
    write(path, f"routing-strategy: random\nworker-urls:\n  - {h.url_of(ea)}\n"
                f"  - {h.url_of(eb)}\nhealth-interval: 100ms\n")
    g = h.gateway([], ["--config", path], pods=2)
    a, b = h.pod_of(ea), h.pod_of(eb)

    def ids():
        return sorted(d["id"] for d in h.get_json(g.port, "/v1/models")[1]["data"])
    try:
        assert ids() == sorted([BASE, "sql", "math"]), ids()
        st, hd, j, body = chat(g)
        assert hd.get("routing-strategy") == "random", hd
        write(path, f"routing-strategy: round-robin\nworker-urls:\n  - {h.url_of(eb)}\n"
                    f"health-interval: 100ms\n")
        g.p.send_signal(signal.SIGHUP)
        h.wait_until(lambda: ids() == sorted([BASE, "math"]), 2, "/v1/models without A")
        assert mv(g, "brix_gateway_config_reloads_total", {"result": "ok"}) == 1
        res = []
        for _ in range(10):
            st, hd, j, body = chat(g)
            assert st == 200, body
            res.append((hd.get("target-pod"), hd.get("routing-strategy")))
        assert res == [(b, "round-robin")] * 10, res
        # a broken file: ERROR logged, nothing changes
        g.expect_error(r"reload failed")
        write(path, "routing-strategy: random\nworker-urls: [oops\n")
        g.p.send_signal(signal.SIGHUP)
        h.wait_until(lambda: mv(g, "brix_gateway_config_reloads_total", {"result": "error"}) == 1,
                     2, "reloads_total{result=error} 1")
        assert mv(g, "brix_gateway_config_reloads_total", {"result": "ok"}) == 1
        assert any(" ERROR " in ln and "reload failed" in ln for ln in g.text().splitlines())
        assert ids() == sorted([BASE, "math"]), ids()
        st, hd, j, body = chat(g)
        assert st == 200 and hd.get("routing-strategy") == "round-robin", hd
        assert hd.get("target-pod") == b, hd
        assert g.p.poll() is None
        # the adapter only the removed engine served is unknown now
        st, hd, j, body = chat(g, "sql")
        openai_err(st, hd, j, body, 404)
    finally:
        cleanup(g, ea, eb)
        os.unlink(path)


h.run()
