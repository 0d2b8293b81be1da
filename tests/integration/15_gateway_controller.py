"""15 — `brix gateway --controller URL`: the gateway learns its fleet from a
(fake) controller's NDJSON watch and talks back to it. Real engine-sims with
LoRA; the test loads adapters on them itself, as the controller would, and
pushes the controller snapshots that say so. Checks: replicas join from the
watch and serve under their names (target-pod); a replica removed from the
snapshot, or not ready, stops getting traffic at once; a newly confirmed
adapter is routable within 1 s; a registered adapter scaled to zero is listed
in /v1/models, its request is held while the controller gets a wake, and
succeeds once a snapshot shows it loaded; the wake deadline answers 503
adapter_loading with Retry-After; a Failed adapter answers at once; unknown
models are still 404; the controller going away leaves the known pods
serving and a restarted controller on the same port is picked up again;
activity reports carry per-model counts (and come every second even when
nothing was routed: 25_gateway_scale_zero checks their load figures)."""
import atexit
import json
import os
import queue
import re
import socket
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

BASE = "llama-3-8b"
CMPL = "/v1/completions"
LORA = ["--enable-lora", "--max-loras", "4", "--seed", "3", "--output-len-dist", "none"]


# ------------------------------------------------------- fake controller --

class FakeController:
    """A controller as the gateway sees it: GET /v1/watch streams chunked NDJSON
    (the full snapshot on connect and on every push, a heartbeat every
    `heartbeat` s); POST /v1/adapters/NAME/wake and /v1/activity are recorded."""

    def __init__(self, port=None, state=None, heartbeat=5.0):
        self.port = port or h.free_port()
        self.lock = threading.Lock()
        self.replicas, self.adapters = (state or ([], []))
        self.version = 0 if state is None else 100
        self.heartbeat = heartbeat
        self.watchers = []
        self.wakes = []      # (time, adapter name)
        self.activity = []   # (time, {"models": {...}})
        self.watch_gets = 0
        self.conns = []      # every connection, keep-alive ones included
        fc = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def setup(self):
                super().setup()
                with fc.lock:
                    fc.conns.append(self.connection)

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
                    fc.watch_gets += 1
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
                            item = q.get(timeout=fc.heartbeat)
                        except queue.Empty:
                            with fc.lock:
                                item = {"type": "heartbeat", "version": fc.version}
                        if item is None:
                            break
                        self._chunk(item)
                except (BrokenPipeError, ConnectionResetError, OSError):
                    pass
                finally:
                    with fc.lock:
                        if q in fc.watchers:
                            fc.watchers.remove(q)
                self.close_connection = True

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                m = re.match(r"^/v1/adapters/([^/]+)/wake$", self.path)
                if m:
                    name = m.group(1)
                    with fc.lock:
                        fc.wakes.append((time.time(), name))
                        known = [a for a in fc.adapters if a["name"] == name]
                    if not known:
                        return self._send(404, {"error": "unknown adapter"})
                    return self._send(202, {"name": name, "phase": "Scheduled"})
                if self.path == "/v1/activity":
                    with fc.lock:
                        fc.activity.append((time.time(), json.loads(body)))
                    return self._send(200, {"ok": True})
                return self._send(404, {"error": "no route"})

        self.srv = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.srv.daemon_threads = True
        self.thread = threading.Thread(target=self.srv.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def _snapshot(self):
        return {"type": "snapshot", "version": self.version,
                "replicas": json.loads(json.dumps(self.replicas)),
                "adapters": json.loads(json.dumps(self.adapters))}

    def push(self, replicas=None, adapters=None):
        """Replaces the state and sends the new snapshot to every watcher."""
        with self.lock:
            if replicas is not None:
                self.replicas = replicas
            if adapters is not None:
                self.adapters = adapters
            self.version += 1
            snap = self._snapshot()
            for q in self.watchers:
                q.put(snap)

    def wakes_for(self, name):
        with self.lock:
            return [t for t, n in self.wakes if n == name]

    def stop(self):
        """Goes away: the port refuses connections, then open watches end (in
        this order, so a reconnect cannot reach the old server)."""
        self.srv.shutdown()
        self.srv.server_close()
        with self.lock:
            for q in self.watchers:
                q.put(None)
            # kept-alive connections (the gateway's wake and activity POSTs)
            # die with the process too: curl must not reuse one for the watch
            for c in self.conns:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def replica(name, eng, ready=True, adapters=(), phase="Running"):
    return {"name": name, "deployment": "llama", "model": BASE, "url": h.url_of(eng),
            "phase": phase, "ready": ready,
            "labels": {"model.aibrix.ai/name": BASE,
                       "model.aibrix.ai/port": str(eng.port if hasattr(eng, "port") else eng)},
            "adapters": list(adapters)}


def adapter(name, phase, instances=(), **extra):
    a = {"name": name, "baseModel": BASE, "phase": phase, "instances": list(instances)}
    a.update(extra)
    return a


def load_lora(e, name):
    st, _, b = h.request("POST", e.port, "/v1/load_lora_adapter",
                         {"lora_name": name, "lora_path": f"/tmp/brix15-{name}"})
    assert st == 200, (st, b)


def complete(g, model=BASE, headers=None, timeout=30):
    return h.post(g.port, CMPL, {"model": model, "prompt": "Hello there", "max_tokens": 2},
                  headers, timeout=timeout)


def mv(g, name, labels=None):
    return h.metric_value(h.metrics(g.port), name, labels) or 0


def pods_now(g):
    return {k for k, v in h.healthy_pods(g.port).items() if v == 1}


def served_by(g, n, model=BASE):
    """target-pod of n round-robin requests (all must succeed)."""
    out = []
    for _ in range(n):
        st, hd, j, raw = complete(g, model, {"routing-strategy": "round-robin"})
        assert st == 200, (st, raw[:300])
        out.append(hd.get("target-pod"))
    return out


# ------------------------------------------------------------- the fleet --

E0 = h.engine(LORA, name="engine-0")
E1 = h.engine(LORA, name="engine-1")
DEAD = h.free_port()  # a replica the controller lists as not ready (nothing listens)
C = FakeController()
C.push([replica("llama-0", E0), replica("llama-1", E1),
        replica("llama-2", DEAD, ready=False, phase="Starting")],
       [adapter("sql-b", "Scaled"),
        adapter("sql-f", "Failed", message="artifact file:///nope not found")])
GW_FLAGS = ["--controller", C.url, "--adapter-wake-timeout", "10s",
            "--models-refresh-interval", "60s", "--workers", "2"]
G = h.gateway([], GW_FLAGS, pods=2)
# a second gateway with its own controller for the deadline checks
C2 = FakeController()
C2.push([replica("llama-0", E0)], [adapter("sql-c", "Scaled"), adapter("sql-z", "Scaled")])
G2 = h.gateway([], ["--controller", C2.url + "/", "--adapter-wake-timeout", "1500ms",
                    "--retry-after", "7"], pods=1, name="gateway-2")
PROCS = [G, G2, E0, E1]


def _cleanup():
    for p in PROCS:
        if p.p.poll() is None:
            p.p.kill()


atexit.register(_cleanup)


@h.check("--controller and --worker-urls exclude each other; --controller needs http(s)://; "
         "--help documents the flags")
def _():
    for args, what in ((["--controller", C.url, "--worker-urls", h.url_of(E0)], "exclude"),
                       (["--controller", "ftp://x"], "http:// or https://"),
                       ([], "--controller")):
        p = h.Proc(["gateway", "--port", str(h.free_port())] + args, name="gateway-bad")
        p.p.wait(10)
        assert p.p.returncode == 2, (args, p.p.returncode, p.text())
        assert what in p.text(), (what, p.text())
    p = h.Proc(["gateway", "--help"], name="gateway-help")
    p.p.wait(10)
    out = p.text()
    for flag in ("--controller URL", "--controller-token", "--controller-idle-timeout",
                 "--adapter-wake-timeout", "--max-held-requests"):
        assert flag in out, (flag, out)


@h.check("replicas join from the watch and serve under their names; a not-ready replica does not")
def _():
    assert pods_now(G) == {"llama-0", "llama-1"}, h.healthy_pods(G.port)
    seen = set(served_by(G, 6))
    assert seen == {"llama-0", "llama-1"}, seen
    st, hd, j, raw = complete(G)
    assert hd.get("target-pod-ip") in (f"127.0.0.1:{E0.port}", f"127.0.0.1:{E1.port}"), hd
    m = h.metrics(G.port)
    assert h.metric_value(m, "brix_gateway_controller_connected") == 1, m
    assert h.metric_value(m, "brix_gateway_controller_watch_events_total",
                          {"type": "snapshot"}) >= 1
    assert h.metric_value(m, "brix_gateway_controller_snapshot_version") == C.version
    assert "llama-2" not in h.healthy_pods(G.port)  # never even a pod
    st, j = h.get_json(G.port, "/v1/models")
    assert BASE in [d["id"] for d in j["data"]], j


@h.check("a replica removed from the snapshot (or turned not ready) stops receiving traffic at once")
def _():
    C.push([replica("llama-0", E0), replica("llama-2", DEAD, ready=False)])
    h.wait_until(lambda: set(served_by(G, 4)) == {"llama-0"}, 1.0, "llama-1 to get no traffic")
    assert "llama-1" not in pods_now(G)
    assert set(served_by(G, 8)) == {"llama-0"}
    # back, then not ready: gone again
    C.push([replica("llama-0", E0), replica("llama-1", E1)])
    h.wait_until(lambda: pods_now(G) == {"llama-0", "llama-1"}, 5, "llama-1 back")
    assert set(served_by(G, 6)) == {"llama-0", "llama-1"}
    C.push([replica("llama-0", E0, ready=False), replica("llama-1", E1)])
    h.wait_until(lambda: set(served_by(G, 4)) == {"llama-1"}, 1.0, "llama-0 to get no traffic")
    assert "llama-0" not in pods_now(G)
    assert set(served_by(G, 8)) == {"llama-1"}
    C.push([replica("llama-0", E0), replica("llama-1", E1)])
    h.wait_until(lambda: pods_now(G) == {"llama-0", "llama-1"}, 5, "llama-0 back")
    assert "pod llama-1 removed (gone from the controller's snapshot)" in G.text(), G.text()[-2000:]


@h.check("an adapter the controller newly confirms on a replica is routable within 1 s "
         "(not at the 60 s model refresh)")
def _():
    st, hd, j, raw = complete(G, "sql-a")
    assert st == 404 and j["error"]["code"] == "model_not_found", (st, raw)
    load_lora(E1, "sql-a")
    C.push([replica("llama-0", E0), replica("llama-1", E1, adapters=["sql-a"])],
           [adapter("sql-a", "Running", ["llama-1"]), adapter("sql-b", "Scaled"),
            adapter("sql-f", "Failed", message="artifact file:///nope not found")])
    # the gateway may not have read the snapshot yet when the first requests
    # arrive (404); from then on they are held until the adapter is routable
    t0 = time.time()
    while True:
        st, hd, j, raw = complete(G, "sql-a", timeout=15)
        dt = time.time() - t0
        if st == 200:
            break
        assert st == 404 and dt < 1.0, (st, dt, raw[:300])
        time.sleep(0.02)
    assert dt < 1.0, f"routable after {dt:.2f} s"
    assert hd["target-pod"] == "llama-1", hd
    assert set(served_by(G, 4, "sql-a")) == {"llama-1"}


@h.check("a registered adapter scaled to zero: listed in /v1/models, its request is held, the "
         "controller gets a wake, and the request succeeds once a snapshot shows it loaded")
def _():
    st, j = h.get_json(G.port, "/v1/models")
    cards = {d["id"]: d for d in j["data"]}
    assert "sql-b" in cards and cards["sql-b"]["parent"] == BASE, j
    assert cards["sql-b"]["object"] == "model", cards["sql-b"]
    assert list(cards).count("sql-a") == 1, j  # loaded: listed once, from its pod
    wakes0 = mv(G, "brix_gateway_adapter_wakes_total", {"model": "sql-b"})
    res = {}

    def run():
        t = time.time()
        res["r"] = complete(G, "sql-b", timeout=30)
        res["dt"] = time.time() - t

    th = threading.Thread(target=run)
    th.start()
    h.wait_until(lambda: C.wakes_for("sql-b"), 3, "a wake for sql-b")
    h.wait_until(lambda: mv(G, "brix_gateway_adapter_held_requests") == 1, 3, "held gauge 1")
    time.sleep(0.3)
    assert th.is_alive(), f"not held: {res}"
    assert mv(G, "brix_gateway_adapter_wakes_total", {"model": "sql-b"}) == wakes0 + 1
    # the controller loads it on llama-0 and says so
    load_lora(E0, "sql-b")
    t_push = time.time()
    C.push([replica("llama-0", E0, adapters=["sql-b"]), replica("llama-1", E1, adapters=["sql-a"])],
           [adapter("sql-a", "Running", ["llama-1"]), adapter("sql-b", "Running", ["llama-0"]),
            adapter("sql-f", "Failed", message="artifact file:///nope not found")])
    th.join(15)
    assert not th.is_alive(), "held request never finished"
    st, hd, j, raw = res["r"]
    assert st == 200, (st, raw[:300])
    assert hd["target-pod"] == "llama-0", hd
    assert time.time() - t_push < 2.0
    m = h.metrics(G.port)
    assert h.metric_value(m, "brix_gateway_adapter_held_requests") == 0
    assert h.metric_value(m, "brix_gateway_adapter_wait_seconds_count", {"result": "routed"}) >= 1
    # once loaded, no more wakes
    n = len(C.wakes_for("sql-b"))
    served_by(G, 2, "sql-b")
    assert len(C.wakes_for("sql-b")) == n


@h.check("one wake in flight per adapter however many requests wait; re-sent every 5 s while "
         "they wait")
def _():
    C.push(adapters=C.adapters + [adapter("sql-w", "Scaled")])
    h.wait_until(lambda: "sql-w" in [d["id"] for d in h.get_json(G.port, "/v1/models")[1]["data"]],
                 2, "sql-w registered")
    res = []
    ths = [threading.Thread(target=lambda: res.append(complete(G, "sql-w", timeout=30)))
           for _ in range(3)]
    for t in ths:
        t.start()
    h.wait_until(lambda: mv(G, "brix_gateway_adapter_held_requests") == 3, 3, "3 held")
    time.sleep(0.5)
    assert len(C.wakes_for("sql-w")) == 1, C.wakes
    h.wait_until(lambda: len(C.wakes_for("sql-w")) >= 2, 7, "the wake re-sent", interval=0.1)
    w = C.wakes_for("sql-w")
    assert 4.5 <= w[1] - w[0] <= 6.5, w
    assert len(w) == 2, w
    load_lora(E1, "sql-w")
    C.push([replica("llama-0", E0, adapters=["sql-b"]),
            replica("llama-1", E1, adapters=["sql-a", "sql-w"])],
           [a if a["name"] != "sql-w" else adapter("sql-w", "Running", ["llama-1"])
            for a in C.adapters])
    for t in ths:
        t.join(10)
    assert len(res) == 3, res
    for st, hd, j, raw in res:
        assert st == 200 and hd["target-pod"] == "llama-1", (st, hd, raw[:200])
    assert mv(G, "brix_gateway_adapter_wakes_total", {"model": "sql-w"}) == 2


@h.check("wake deadline: 503 adapter_loading with Retry-After after --adapter-wake-timeout")
def _():
    t0 = time.time()
    st, hd, j, raw = complete(G2, "sql-c", timeout=15)
    dt = time.time() - t0
    assert st == 503, (st, raw)
    assert j["error"]["code"] == "adapter_loading", j
    assert j["error"]["type"] in ("overloaded_error", "service_unavailable"), j
    msg = j["error"]["message"]
    assert "'sql-c'" in msg and f"'{BASE}'" in msg and "1500 ms" in msg, msg
    assert hd.get("retry-after") == "7", hd
    assert 1.4 <= dt < 5, dt
    assert C2.wakes_for("sql-c"), C2.wakes
    m = h.metrics(G2.port)
    assert h.metric_value(m, "brix_gateway_adapter_wait_seconds_count", {"result": "timeout"}) == 1
    assert h.metric_value(m, "brix_gateway_adapter_held_requests") == 0
    assert h.metric_value(m, "brix_gateway_requests_total",
                          {"model": "sql-c", "status": "503"}) == 1


@h.check("a client that disconnects while held is dropped cleanly; --max-held-requests caps holds")
def _():
    s = socket.create_connection(("127.0.0.1", G2.port))
    body = json.dumps({"model": "sql-z", "prompt": "x", "max_tokens": 1}).encode()
    s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: localhost\r\n"
              b"Content-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    h.wait_until(lambda: mv(G2, "brix_gateway_adapter_held_requests") == 1, 3, "held")
    s.close()
    h.wait_until(lambda: mv(G2, "brix_gateway_adapter_held_requests") == 0, 3, "released")
    assert mv(G2, "brix_gateway_adapter_wait_seconds_count", {"result": "client_closed"}) == 1
    # a gateway that may hold one request: the second gets 503 at once (its
    # controller settings from the YAML config, as every option)
    cfg = os.path.join(tempfile.mkdtemp(prefix="brix15-"), "gateway.yaml")
    with open(cfg, "w") as f:
        f.write(f"controller: {C2.url}\nmax-held-requests: 1\nadapter-wake-timeout: 3s\n")
    g = h.gateway([], ["--config", cfg], pods=1, name="gateway-cap")
    PROCS.append(g)
    try:
        res = {}
        th = threading.Thread(target=lambda: res.update(r=complete(g, "sql-z", timeout=15)))
        th.start()
        h.wait_until(lambda: mv(g, "brix_gateway_adapter_held_requests") == 1, 3, "held")
        t0 = time.time()
        st, hd, j, raw = complete(g, "sql-c")
        assert st == 503 and j["error"]["code"] == "too_many_held_requests", (st, raw)
        assert time.time() - t0 < 1 and "retry-after" in hd, hd
        th.join(10)
        assert res["r"][0] == 503 and res["r"][2]["error"]["code"] == "adapter_loading", res
    finally:
        g.stop()


@h.check("a Failed adapter answers 503 at once with the controller's reason; unknown models 404")
def _():
    t0 = time.time()
    st, hd, j, raw = complete(G, "sql-f")
    assert st == 503 and j["error"]["code"] == "adapter_failed", (st, raw)
    assert "artifact file:///nope not found" in j["error"]["message"], j
    assert time.time() - t0 < 1.0
    st, hd, j, raw = complete(G, "no-such-model")
    assert st == 404 and j["error"]["code"] == "model_not_found", (st, raw)
    assert hd.get("x-error-no-model-backends") == "no-such-model", hd


@h.check("activity reports: every second, the requests routed per model since the last report")
def _():
    with C.lock:
        mark = len(C.activity)
    time.sleep(2.2)  # nothing routed: reports still come (the load figures), with no models
    with C.lock:
        quiet = C.activity[mark:]
        mark = len(C.activity)
    assert len(quiet) >= 2 and all(b["models"] == {} for _, b in quiet), quiet
    served_by(G, 3, "sql-a")
    served_by(G, 2, BASE)

    def total():
        with C.lock:
            tot = {}
            for _, body in C.activity[mark:]:
                for k, v in body["models"].items():
                    tot[k] = tot.get(k, 0) + v
            return tot

    h.wait_until(lambda: total() == {"sql-a": 3, BASE: 2}, 4, "activity {sql-a: 3, base: 2}",
                 interval=0.2)
    time.sleep(1.2)
    assert total() == {"sql-a": 3, BASE: 2}, total()
    assert mv(G, "brix_gateway_controller_activity_reports_total", {"result": "ok"}) >= 1


@h.check("the controller goes away: the known pods keep serving; a restarted controller on the "
         "same port is reconnected (one WARN, one INFO)")
def _():
    global C
    state = (C.replicas, C.adapters)
    reconnects0 = mv(G, "brix_gateway_controller_reconnects_total")
    C.stop()
    h.wait_until(lambda: mv(G, "brix_gateway_controller_connected") == 0, 3, "disconnected")
    assert pods_now(G) == {"llama-0", "llama-1"}
    # stale but serving, while reconnect attempts fail for a while
    t_end = time.time() + 1.5
    while time.time() < t_end:
        assert set(served_by(G, 2)) <= {"llama-0", "llama-1"}
        st, hd, j, raw = complete(G, "sql-a")
        assert st == 200, (st, raw[:200])
        time.sleep(0.1)
    C = FakeController(C.port, state)
    h.wait_until(lambda: mv(G, "brix_gateway_controller_connected") == 1, 10, "reconnected")
    assert mv(G, "brix_gateway_controller_reconnects_total") >= reconnects0 + 2  # backoff retries
    log = G.text()
    assert len(re.findall(r"controller watch \S+ lost", log)) == 1, log[-3000:]
    assert len(re.findall(r"controller watch \S+ is back after", log)) == 1, log[-3000:]
    # and it is followed again
    C.push([replica("llama-0", E0, adapters=["sql-b"])])
    h.wait_until(lambda: set(served_by(G, 4)) == {"llama-0"}, 2,
                 "llama-1 gone via the new controller")
    assert pods_now(G) == {"llama-0"}


@h.check("gateways stop cleanly (no errors, no leaks)")
def _():
    for g in (G, G2):
        g.stop()
    C.stop()
    C2.stop()
    for e in (E0, E1):
        e.stop()


h.run()
