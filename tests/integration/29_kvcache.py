"""29 — the KV store over two nodes, through libbrixkv (tests/tools/kvtool):
put/get/match with self-checking values spread over both nodes; the
same-host (mapped arena) client and a TCP-only client read the same bytes;
match_prefix ends at the first missing key over all nodes; a node killed
mid-run (SIGKILL) costs its keys UNAVAILABLE while the other node's keys are
still served, never wrong bytes, and once restarted its keys are misses, not
errors; a stalled node (SIGSTOP) costs its keys TIMEOUT within the call's
budget, then UNAVAILABLE while it backs off; a node with a token refuses clients without it; a client declaring a non-deterministic hash seed is refused loudly;
bad member lists are refused at open; a churn run (puts far past the
capacity, with eviction) keeps the node's RSS flat."""
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

KVTOOL = os.path.join(h.TOOLS, "kvtool")
TMP = tempfile.mkdtemp(prefix="brix-kv29-")
PROCS = []


class Node:
    """One `brix kvcache` node on free ports, with a UNIX socket in TMP."""

    def __init__(self, name, capacity="64MiB", port=None, http=None, extra=()):
        self.name = name
        self.port = port or h.free_port()
        self.http = http or h.free_port()
        self.unix = os.path.join(TMP, f"{name}.sock")
        self.capacity = capacity
        self.extra = list(extra)
        self.start()

    def start(self):
        self.proc = h.Proc(["kvcache", "--listen", f"127.0.0.1:{self.port}", "--http-port",
                            str(self.http), "--capacity", self.capacity, "--unix", self.unix]
                           + self.extra, name=self.name)
        PROCS.append(self.proc)
        self.proc.wait_http(self.http, "/healthz")

    @property
    def addr(self):
        return f"127.0.0.1:{self.port}"

    def rss_kib(self):
        with open(f"/proc/{self.proc.p.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        raise AssertionError("no VmRSS")


def kvtool(servers, *args, opts=(), want_rc=0, timeout=120):
    """Runs kvtool; returns the parsed JSON lines of stdout. A generous call
    timeout (later --timeout-ms options win): this machine may be loaded, and
    these checks are about outcomes, not speed."""
    cmd = [KVTOOL, "--servers", servers, "--timeout-ms", "10000"] + list(opts) + \
        [str(a) for a in args]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == want_rc, f"{cmd}: rc {r.returncode}\n{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr, r.stderr
    return [json.loads(x) for x in r.stdout.splitlines() if x.strip()], r.stderr


def one(servers, *args, **kw):
    out, _ = kvtool(servers, *args, **kw)
    assert len(out) == 1, out
    return out[0]


NODES = {}


def servers():
    return f"{NODES['a'].addr},{NODES['b'].addr}"


SIZE = 64 << 10
N = 200


class Rounds:
    """A kvtool repeating one command (a line per round) in the background."""

    def __init__(self, servers, name, opts, *args):
        self.stop = os.path.join(TMP, f"stop-{name}")
        cmd = [KVTOOL, "--servers", servers] + opts + [
            "--rounds", "3000", "--interval-ms", "10", "--stop-file", self.stop] + list(args)
        self.p = subprocess.Popen([str(x) for x in cmd], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        self.lines = []
        self.cond = threading.Condition()
        self.th = threading.Thread(target=self._read, daemon=True)
        self.th.start()

    def _read(self):
        for ln in self.p.stdout:
            with self.cond:
                self.lines.append(json.loads(ln))
                self.cond.notify_all()

    def wait_for(self, pred, what, timeout=30):
        """The first round from now on for which pred holds."""
        deadline = time.time() + timeout
        with self.cond:
            start = len(self.lines)
            while True:
                for ln in self.lines[start:]:
                    if pred(ln):
                        return ln
                start = len(self.lines)
                left = deadline - time.time()
                if left <= 0 or self.p.poll() is not None and start == len(self.lines):
                    raise AssertionError(f"no round with {what}; last: {self.lines[-1:]}")
                self.cond.wait(min(left, 0.5))

    def finish(self):
        open(self.stop, "w").close()
        self.p.wait(timeout=30)
        self.th.join(timeout=10)
        err = self.p.stderr.read()
        assert self.p.returncode == 0, (self.p.returncode, err[-3000:])
        assert "Sanitizer" not in err and "runtime error" not in err, err


@h.check("bad member lists are refused at open")
def bad_members():
    for bad in ["127.0.0.1", "127.0.0.1:1,,127.0.0.1:2", "[::1]80", "127.0.0.1:99999",
                "127.0.0.1:1,127.0.0.1:1", "", "no-such-host.invalid:1"]:
        _, err = kvtool(bad, "get", 0, 1, 64, want_rc=2)
        assert "servers" in err, (bad, err)


@h.check("put/get across two nodes: every byte checked, SHM and TCP clients agree")
def put_get():
    NODES["a"] = Node("kv-a")
    NODES["b"] = Node("kv-b")
    s = servers()
    owners = one(s, "owners", 0, N)["owners"]
    assert 0 < sum(owners) < N, "keys must spread over both nodes"
    put = one(s, "put", 0, N, SIZE)
    assert put["status"] == {"ok": N}, put
    assert put["by_member"][0].get("ok", 0) > 20 and put["by_member"][1].get("ok", 0) > 20, put
    again = one(s, "put", 0, N, SIZE)  # immutable: a second put is EXISTS
    assert again["status"] == {"exists": N}, again
    shm = one(s, "get", 0, N, SIZE)
    assert shm["status"] == {"ok": N} and shm["wrong"] == 0, shm
    assert all(m["shm"] for m in shm["members"]), shm["members"]
    assert shm["client"]["shm_bytes_in"] >= N * SIZE, shm["client"]
    tcp = one(s, "get", 0, N, SIZE, opts=["--no-shm"])
    assert tcp["status"] == {"ok": N} and tcp["wrong"] == 0, tcp
    assert not any(m["shm"] for m in tcp["members"]), tcp["members"]
    assert tcp["client"]["shm_bytes_in"] == 0 and tcp["client"]["bytes_in"] >= N * SIZE
    assert shm["digest"] == tcp["digest"], (shm["digest"], tcp["digest"])
    # 2 MiB blocks (a 16-token Llama-3-8B block), both paths
    big = 2 << 20
    assert one(s, "put", 10000, 12, big, opts=["--batch", "4"])["status"] == {"ok": 12}
    g1 = one(s, "get", 10000, 12, big, opts=["--batch", "4"])
    g2 = one(s, "get", 10000, 12, big, opts=["--batch", "4", "--no-shm"])
    assert g1["status"] == {"ok": 12} and g2["status"] == {"ok": 12}, (g1, g2)
    assert g1["digest"] == g2["digest"]
    # keys never put are misses
    miss = one(s, "get", 5000, 40, SIZE)
    assert miss["status"] == {"not found": 40}, miss
    # buffers smaller than the values: SHORT_BUFFER, never a truncated value
    out, err = kvtool(s, "get", 0, 4, SIZE - 16, want_rc=0)
    assert out[0]["status"] == {"short buffer": 4}, out


@h.check("match_prefix ends at the first missing key over all nodes")
def match():
    s = servers()
    assert one(s, "match", 0, N)["match"] == N
    assert one(s, "match", 0, N + 50)["match"] == N
    owners = one(s, "owners", 0, N)["owners"]
    # the earlier missing key on one node, a later one on the other
    d1 = next(i for i in range(20, 60) if owners[i] == 1)
    d2 = next(i for i in range(100, 150) if owners[i] == 0)
    for d in (d2, d1):
        st = one(s, "delete", d, 1)["status"]
        assert st == {"ok": 1}, st
    assert one(s, "match", 0, N)["match"] == d1
    assert one(s, "match", d1 + 1, N - d1 - 1)["match"] == d2 - d1 - 1
    assert one(s, "match", 0, d1)["match"] == d1
    assert one(s, "match", d2 + 1, N - d2 - 1)["match"] == N - d2 - 1
    # and the reverse: the earlier hole on node 0
    e1 = next(i for i in range(160, 180) if owners[i] == 0)
    e2 = next(i for i in range(181, N) if owners[i] == 1)
    for d in (e2, e1):
        assert one(s, "delete", d, 1)["status"] == {"ok": 1}
    assert one(s, "match", d2 + 1, N - d2 - 1)["match"] == e1 - d2 - 1
    # put the holes back
    for d in (d1, d2, e1, e2):
        assert one(s, "put", d, 1, SIZE)["status"] == {"ok": 1}
    assert one(s, "match", 0, N)["match"] == N


@h.check("a client with a non-deterministic hash seed is refused loudly")
def random_seed():
    s = servers()
    r = one(s, "get", 0, 20, SIZE, opts=["--random-seed"])
    assert r["status"] == {"namespace refused": 20}, r
    assert "refused" in r["last_error"] and "seed" in r["last_error"], r["last_error"]
    assert not any(m["up"] for m in r["members"]), r


@h.check("a node with --token-file serves only clients that carry its token")
def token():
    tf = os.path.join(TMP, "token")
    with open(tf, "w") as f:
        f.write("kv-s3cret-29\n")
    os.chmod(tf, 0o600)
    t = Node("kv-token", capacity="8MiB", extra=["--token-file", tf])
    t.proc.expect_error("token")  # refusals are logged (as warnings today)
    r = one(t.addr, "put", 0, 4, 1024)
    assert r["status"] == {"denied": 4}, r
    assert "token" in r["last_error"], r
    r = one(t.addr, "put", 0, 4, 1024, opts=["--token", "wrong"])
    assert r["status"] == {"denied": 4}, r
    r = one(t.addr, "put", 0, 4, 1024, opts=["--token", "kv-s3cret-29"])
    assert r["status"] == {"ok": 4}, r
    g = one(t.addr, "get", 0, 4, 1024, opts=["--token", "kv-s3cret-29"])
    assert g["status"] == {"ok": 4} and g["members"][0]["shm"], g
    t.proc.stop()


@h.check("a node killed mid-run: its keys unavailable, never wrong bytes; restarted: misses")
def kill_restart():
    s = servers()
    a, b = NODES["a"], NODES["b"]
    run = Rounds(s, "kill", ["--retry-ms", "100", "--timeout-ms", "8000"], "get", 0, N, SIZE)
    wait_for, lines = run.wait_for, run.lines
    owners = one(s, "owners", 0, N)["owners"]
    nb = sum(owners)
    na = N - nb
    wait_for(lambda ln: ln["status"] == {"ok": N}, "all keys ok")
    b.proc.p.send_signal(signal.SIGKILL)
    b.proc.p.wait()
    down = wait_for(lambda ln: ln["by_member"][1].get("unavailable", 0) == nb,
                    "node b's keys unavailable")
    assert down["by_member"][0] == {"ok": na}, down
    # restart on the same ports: an empty store, so its keys are misses
    b.start()
    back = wait_for(lambda ln: ln["by_member"][1] == {"not found": nb}, "node b's keys missing")
    assert back["by_member"][0] == {"ok": na}, back
    assert back["members"][1]["up"] and back["members"][1]["shm"], back["members"]
    assert back["client"]["reconnects"] >= 1 and back["client"]["unavailable"] >= nb, back
    run.finish()
    # every round: every key ok, missing, unavailable or timed out; no wrong bytes
    allowed = {"ok", "not found", "unavailable", "timeout"}
    for ln in lines:
        assert ln["wrong"] == 0, ln
        assert set(ln["status"]) <= allowed, ln
        assert ln["by_member"][0] == {"ok": na}, ln  # node a never failed
    # a TCP-only client agrees after the restart
    r = one(s, "get", 0, N, SIZE, opts=["--no-shm"])
    assert r["by_member"][0] == {"ok": na} and r["by_member"][1] == {"not found": nb}, r


@h.check("a stalled node (SIGSTOP) costs its keys a bounded wait, never the other node's")
def stalled():
    s = servers()
    b = NODES["b"]
    owners = one(s, "owners", 0, N)["owners"]
    nb = sum(owners)
    na = N - nb
    # one call per round, a 1.5 s budget (node a answers well within it, even loaded)
    run = Rounds(s, "stall", ["--retry-ms", "100", "--timeout-ms", "1500", "--batch", str(N)],
                 "get", 0, N, SIZE)
    run.wait_for(lambda ln: ln["by_member"][1] == {"not found": nb} or
                 ln["by_member"][1] == {"ok": nb}, "node b answering")
    base = len(run.lines)
    b.proc.p.send_signal(signal.SIGSTOP)
    try:
        t = run.wait_for(lambda ln: ln["by_member"][1].get("timeout", 0) == nb,
                         "node b's keys timed out")
        assert t["by_member"][0] == {"ok": na}, t
        run.wait_for(lambda ln: ln["by_member"][1].get("unavailable", 0) == nb,
                     "node b backing off")
    finally:
        b.proc.p.send_signal(signal.SIGCONT)
    run.wait_for(lambda ln: "timeout" not in ln["by_member"][1] and
                 "unavailable" not in ln["by_member"][1], "node b back")
    run.finish()
    for ln in run.lines[base:]:
        assert ln["wrong"] == 0 and ln["by_member"][0] == {"ok": na}, ln
        # the 1.5 s budget (+ a 200 ms reconnect), generously: never stuck on the node
        assert ln["ms"] < 10000, ln


@h.check("churn with eviction: the node's RSS stays flat")
def churn():
    c = Node("kv-churn", capacity="32MiB")
    s = c.addr
    size = 1 << 20
    # warm-up: fill the arena (its pages become resident) and start evicting
    r = one(s, "churn", 100000, 96, size, opts=["--batch", "8"])
    assert r["status"].get("ok", 0) > 48, r
    rss0 = c.rss_kib()
    for k in range(4):
        r = one(s, "churn", 200000 + k * 1000, 192, size, opts=["--batch", "8"])
        assert r["status"].get("ok", 0) > 96, r
        assert set(r["status"]) <= {"ok", "no space"}, r
    rss1 = c.rss_kib()
    st = one(s, "stats", 0)
    assert st["status"] == "ok" and st["evictions"] > 500, st
    assert st["payload_bytes"] <= 32 << 20, st
    # the newest keys are still readable, byte for byte
    g = one(s, "get", 200000 + 3000 + 160, 32, size)
    assert g["wrong"] == 0 and g["status"].get("ok", 0) >= 16, g
    grew = (rss1 - rss0) / 1024
    print(f"  churn: 864 MiB put into 32 MiB; RSS {rss0 / 1024:.0f} -> {rss1 / 1024:.0f} MiB",
          flush=True)
    assert grew < 24, f"RSS grew by {grew:.0f} MiB over the churn"
    c.proc.stop()


def _hello_shm(path):
    """HELLO with BRIXKV_HELLO_SHM on the node's UNIX socket: (socket, memfd)."""
    import array
    import socket
    import struct
    model, dtype, layout, client = b"m", b"bf16", b"p16", b"attacker"
    body = struct.pack("<HHHHQBB2sIHHHH", 1, 1, 1, 0, 42, 1, 0, b"\0\0", 0, len(model),
                       len(dtype), len(layout), len(client)) + model + dtype + layout + client
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(10)
    s.connect(path)
    s.sendall(struct.pack("<IBBHIIQ", 0x31564b42, 1, 0, 0, 1, 0, len(body)) + body)
    _, anc, _, _ = s.recvmsg(24, socket.CMSG_LEN(4))
    fds = array.array("i")
    for lvl, typ, data in anc:
        if lvl == socket.SOL_SOCKET and typ == socket.SCM_RIGHTS:
            fds.frombytes(data[:4])
    assert fds, "no memfd passed"
    return s, fds[0]


@h.check("the arena a same-host client receives is sealed: no truncate, no writable map, "
         "no write; a relative --unix is refused")
def sealed_arena():
    import mmap
    n = NODES["a"]
    one(n.addr, "put", 5000, 4, 4096)
    s, fd = _hello_shm(n.unix)
    size = os.fstat(fd).st_size
    for attack in (lambda: os.ftruncate(fd, 0),
                   lambda: mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE),
                   lambda: os.pwrite(fd, b"EVILEVIL", 4096)):
        try:
            attack()
        except PermissionError:
            continue
        raise AssertionError("a client could change the arena")
    # the node is alive and its values intact (a truncate used to SIGBUS it)
    g = one(n.addr, "get", 5000, 4, 4096, opts=["--no-shm"])
    assert g["status"] == {"ok": 4}, g
    os.close(fd)
    s.close()
    r = subprocess.run([h.BRIX, "kvcache", "--listen", "127.0.0.1:0", "--http-port", "-1",
                        "--capacity", "8MiB", "--unix", "rel.sock"], capture_output=True,
                       text=True, timeout=30, cwd=TMP)
    assert r.returncode == 2 and "absolute" in r.stderr, (r.returncode, r.stderr)
    assert not os.path.exists(os.path.join(TMP, "rel.sock"))



@h.check("nodes stop cleanly with nothing unexpected in their logs")
def stop_nodes():
    for n in NODES.values():
        n.proc.stop()


if os.environ.get("ONLY"):  # run one case while working on it: ONLY=substring
    h._cases[:] = [c for c in h._cases if os.environ["ONLY"] in c._check_name]
try:
    h.run()
finally:
    for p in PROCS:
        if p.p.poll() is None:
            p.p.kill()
