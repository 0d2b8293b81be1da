"""Slowloris benchmark: a real client's latency through `brix gateway` with 0 and with
10,000 slow connections held open in the same run.

One engine-sim behind one gateway (default flags except the ones below). Phase "0 slow": the
client sends REQS sequential chat completions (max_tokens 4, a new connection each, as a
browser or SDK without pooling would) and records each latency. Phase "N slow": N connections
from one 127.x.y.z address (a new one each run) are opened first — a third idle, a third
dribbling a request head one byte a second, a third sending a body one byte a second — and
kept dribbling while the same client
sends REQS requests; the head/body/idle timeouts are raised to 10 minutes so the slow
connections stay for the whole phase (the worst case: nothing times them out). The table
gives p50/p99/max and errors per phase, and the p99 ratio. A benchmark, not a test: nothing is
asserted. Takes about a minute.

Knobs (environment): SLOW (10000), REQS (400), WORKERS (gateway --workers, 2).
Command: python3 bench/slowloris.py   (BRIX_BIN selects the binary; writes
bench/results/slowloris.md)
"""
import errno
import json
import os
import resource
import selectors
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import common  # noqa: E402

SLOW = int(os.environ.get("SLOW", "10000"))
REQS = int(os.environ.get("REQS", "400"))
WORKERS = os.environ.get("WORKERS", "2")
HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
        b"content-type: application/json\r\n"
        + b"x-dribble: " + b"a" * 4000 + b"\r\n\r\n")
BODY_HEAD = (b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\n"
             b"content-type: application/json\r\n"
             b"content-length: 1000000\r\n\r\n{")


def raise_nofile(need):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft < need:
        sys.exit(f"slowloris: RLIMIT_NOFILE {soft} < {need}; raise the hard limit")


def one_request(port):
    body = json.dumps({"model": "llama-3-8b", "max_tokens": 4,
                       "messages": [{"role": "user", "content": "hello there"}]}).encode()
    t0 = time.perf_counter()
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    try:
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: localhost\r\ncontent-type: "
                  b"application/json\r\nconnection: close\r\ncontent-length: %d\r\n\r\n"
                  % len(body) + body)
        data = b""
        while True:
            d = s.recv(65536)
            if not d:
                break
            data += d
        status = int(data.split(b" ", 2)[1]) if data.startswith(b"HTTP/1.1") else 0
    finally:
        s.close()
    return status, time.perf_counter() - t0


def client_phase(port):
    lat, errors = [], 0
    for _ in range(REQS):
        try:
            st, dt = one_request(port)
        except OSError:
            st, dt = 0, float("inf")
        if st != 200:
            errors += 1
        lat.append(dt)
    return lat, errors


class Slow:
    """N slow connections driven from one thread with a selector."""

    def __init__(self, port, n):
        self.port, self.n = port, n
        self.socks = []
        self.stop = threading.Event()
        self.closed = 0
        # a fresh loopback source address per run: the previous run's 10,000
        # connections sit in TIME_WAIT on theirs and would use up its ports
        self.src = f"127.0.{os.getpid() % 250 + 1}.{int(time.time()) % 250 + 2}"

    def open(self):
        sel = selectors.DefaultSelector()
        pending = {}
        for i in range(self.n):
            s = socket.socket()
            s.setblocking(False)
            s.bind((self.src, 0))
            rc = s.connect_ex(("127.0.0.1", self.port))
            if rc not in (0, errno.EINPROGRESS):
                s.close()
                continue
            pending[s.fileno()] = (s, ("idle", "head", "body")[i % 3])
            sel.register(s, selectors.EVENT_WRITE)
            if len(pending) >= 500 or i == self.n - 1:
                deadline = time.time() + 10
                while pending and time.time() < deadline:
                    for key, _ in sel.select(0.2):
                        s, mode = pending.pop(key.fd)
                        sel.unregister(s)
                        if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                            s.close()
                            continue
                        if mode == "body":
                            s.send(BODY_HEAD)
                        self.socks.append([s, mode, 0])
        sel.close()
        return len(self.socks)

    def dribble(self):
        while not self.stop.is_set():
            t0 = time.time()
            for v in self.socks:
                s, mode, pos = v
                if s is None or mode == "idle":
                    continue
                try:
                    s.send(HEAD[pos:pos + 1] if mode == "head" else b" ")
                    v[2] = pos + 1 if mode == "head" and pos + 1 < len(HEAD) - 4 else pos
                except (BlockingIOError, InterruptedError):
                    pass
                except OSError:
                    s.close()
                    v[0] = None
                    self.closed += 1
            self.stop.wait(max(0.0, 1.0 - (time.time() - t0)))

    def close(self):
        for v in self.socks:
            if v[0] is not None:
                v[0].close()


def row(name, lat, errors):
    fin = [x for x in lat if x != float("inf")]
    return (f"| {name} | {len(lat)} | {errors} | {common.pct(fin, 50) * 1e3:.2f} | "
            f"{common.pct(fin, 99) * 1e3:.2f} | {max(fin) * 1e3:.2f} |")


def main():
    raise_nofile(SLOW + 1000)
    eng, eport = common.start_engine(["--time-scale", "0.01", "--seed", "1"],
                                     "slowloris-engine.log")
    gport = common.free_port()
    glog = open(os.path.join(common.RESULTS, "slowloris-gateway.log"), "w")
    long = "600s"
    gw = subprocess.Popen([common.BRIX, "gateway", "--port", str(gport), "--workers", WORKERS,
                           "--worker-urls", f"http://127.0.0.1:{eport}", "--access-log", "false",
                           "--header-timeout", long, "--body-timeout", long, "--idle-timeout",
                           long],
                          stdout=glog, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 20
        while True:
            try:
                if one_request(gport)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                sys.exit("slowloris: gateway not ready")
            time.sleep(0.1)
        for _ in range(20):  # warm-up
            one_request(gport)
        lat0, err0 = client_phase(gport)
        slow = Slow(gport, SLOW)
        t0 = time.time()
        opened = slow.open()
        t_open = time.time() - t0
        th = threading.Thread(target=slow.dribble, daemon=True)
        th.start()
        held = common.metric(common.metrics(gport), "brix_gateway_http_connections")
        lat1, err1 = client_phase(gport)
        held_end = common.metric(common.metrics(gport), "brix_gateway_http_connections")
        slow.stop.set()
        th.join(5)
        slow.close()
    finally:
        common.stop(gw)
        common.stop(eng)
    p0 = common.pct([x for x in lat0 if x != float("inf")], 99)
    p1 = common.pct([x for x in lat1 if x != float("inf")], 99)
    lines = [
        "| slow connections | requests | errors | p50 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|",
        row("0", lat0, err0),
        row(f"{opened:,} (held: {held:,.0f} → {held_end:,.0f})", lat1, err1),
        "",
        f"p99 with / without: {p1 / p0:.2f}x. {opened:,} slow connections opened in "
        f"{t_open:.1f} s; {slow.closed} closed by the gateway during the phase "
        f"(its timeouts were raised to {long}). Client: one request at a time, a new "
        f"connection each, max_tokens 4; gateway --workers {WORKERS}; engine-sim "
        f"--time-scale 0.01.",
    ]
    out = "\n".join(lines)
    os.makedirs(common.RESULTS, exist_ok=True)
    open(os.path.join(common.RESULTS, "slowloris.md"), "w").write(out + "\n")
    print(out)


if __name__ == "__main__":
    main()
