"""Integration-test harness: starts real `build/brix` processes on free
loopback ports, talks HTTP/SSE to them with the standard library, and fails
a test if a process logged an ERROR (or a sanitizer report) it did not expect.

Environment (set by ctest): BRIX_BIN (the binary), BRIX_TOOLS (test tools dir),
BRIX_SRC (source root).
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback

BRIX = os.environ.get("BRIX_BIN") or os.path.join(
    os.path.dirname(__file__), "..", "..", "build", "brix")
TOOLS = os.environ.get("BRIX_TOOLS", "")
SRC = os.environ.get("BRIX_SRC") or os.path.join(os.path.dirname(__file__), "..", "..")

_failures = []


_PORT_DIR = os.path.join(tempfile.gettempdir(), "brix-test-ports")


def free_port():
    """A port the kernel just gave us (port 0); closed again for the server.

    ctest runs tests in parallel, and the kernel may hand the same free port to
    two of them between the close here and the server's bind (a gateway once
    followed another test's controller that way). Ports are therefore also
    reserved across test processes with a file in _PORT_DIR, created O_EXCL;
    a reservation older than 10 minutes is stale (a test that died)."""
    os.makedirs(_PORT_DIR, exist_ok=True)
    for _ in range(200):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        p = s.getsockname()[1]
        s.close()
        path = os.path.join(_PORT_DIR, str(p))
        try:
            if time.time() - os.stat(path).st_mtime > 600:
                os.unlink(path)
        except OSError:
            pass
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            return p
        except FileExistsError:
            continue
    raise AssertionError("no free port found that no other test has reserved")


class Proc:
    """A brix process with its log captured to a temp file."""

    def __init__(self, args, name="brix", env=None):
        self.name = name
        self.log = tempfile.NamedTemporaryFile(prefix=f"brix-{name}-", suffix=".log", delete=False)
        e = dict(os.environ)
        e.setdefault("ASAN_OPTIONS", "detect_leaks=1")
        if env:
            e.update(env)
        self.args = [BRIX] + list(args)
        self.p = subprocess.Popen(self.args, stdout=self.log, stderr=subprocess.STDOUT, env=e)
        self.expected_errors = []

    def text(self):
        with open(self.log.name, "r", errors="replace") as f:
            return f.read()

    def wait_http(self, port, path="/health", timeout=20, want=200):
        deadline = time.time() + timeout
        last = None
        while time.time() < deadline:
            if self.p.poll() is not None:
                raise AssertionError(f"{self.name} exited with {self.p.returncode}:\n{self.text()}")
            try:
                st, _, _ = request("GET", port, path, timeout=2)
                if st == want:
                    return
                last = st
            except OSError as ex:
                last = ex
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not ready on :{port}{path} ({last}):\n{self.text()}")

    def expect_error(self, pattern):
        self.expected_errors.append(re.compile(pattern))

    def stop(self, sig=signal.SIGTERM, timeout=20, want_rc=0):
        if self.p.poll() is None:
            self.p.send_signal(sig)
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                self.p.kill()
                self.p.wait()
                raise AssertionError(f"{self.name} did not stop on signal {sig}:\n{self.text()}")
        rc = self.p.returncode
        self.check_log()
        if want_rc is not None:
            assert rc == want_rc, f"{self.name} exit code {rc}, want {want_rc}:\n{self.text()[-4000:]}"
        return rc

    def check_log(self):
        bad = []
        for line in self.text().splitlines():
            sanitizer = ("AddressSanitizer" in line or "LeakSanitizer" in line
                         or "runtime error:" in line)
            if sanitizer or re.search(r"\sERROR\s", line):
                if not sanitizer and any(p.search(line) for p in self.expected_errors):
                    continue
                bad.append(line)
        assert not bad, f"{self.name} logged unexpected errors:\n" + "\n".join(bad[:20]) + \
            "\n--- full log tail ---\n" + self.text()[-4000:]


def engine(extra=(), port=None, ready=True, env=None, name="engine-sim"):
    """Starts `brix engine-sim` on a free port (time-scale 0.05 by default)."""
    port = port or free_port()
    args = ["engine-sim", "--port", str(port)]
    if "--time-scale" not in extra:
        args += ["--time-scale", "0.05"]
    args += list(extra)
    pr = Proc(args, name=name, env=env)
    pr.port = port
    if ready:
        pr.wait_http(port)
    return pr


# port -> bearer token: request() sends it to that port (a controller's API)
# unless the caller gives its own authorization header.
TOKENS = {}


def request(method, port, path, body=None, headers=None, timeout=30, raw_body=None):
    """One HTTP request on a fresh connection: (status, headers dict, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"content-type": "application/json"} if body is not None else {}
    if port in TOKENS:
        h["authorization"] = f"Bearer {TOKENS[port]}"
    if headers:
        h.update(headers)
    data = raw_body if raw_body is not None else (json.dumps(body) if body is not None else None)
    c.request(method, path, body=data, headers=h)
    r = c.getresponse()
    b = r.read()
    hd = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    return r.status, hd, b


def post(port, path, body, headers=None, timeout=30):
    st, hd, b = request("POST", port, path, body, headers, timeout)
    try:
        j = json.loads(b) if b else None
    except ValueError:
        j = None
    return st, hd, j, b


def get_json(port, path):
    st, hd, b = request("GET", port, path)
    return st, json.loads(b) if b else None


def sse(port, path, body, headers=None, timeout=60):
    """Streams a request; returns (status, headers, [parsed data payloads], raw bytes).
    The payload [DONE] is returned as the string "[DONE]"."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    h = {"content-type": "application/json"}
    if headers:
        h.update(headers)
    c.request("POST", path, body=json.dumps(body), headers=h)
    r = c.getresponse()
    raw = r.read()
    hd = {k.lower(): v for k, v in r.getheaders()}
    c.close()
    events = []
    if r.status == 200 and hd.get("content-type", "").startswith("text/event-stream"):
        text = raw.decode()
        assert text.endswith("\n\n"), f"stream does not end with a blank line: {text[-80:]!r}"
        for block in text.split("\n\n")[:-1]:
            assert block.startswith("data: "), f"bad SSE event {block!r}"
            assert "\n" not in block, f"multi-line SSE event {block!r}"
            payload = block[len("data: "):]
            events.append(payload if payload == "[DONE]" else json.loads(payload))
    return r.status, hd, events, raw


def raw_exchange(port, data, read_timeout=3.0, chunks=None, delay=0.0):
    """Sends raw bytes (optionally in chunks with a delay) and reads until the
    peer closes or read_timeout passes quietly. Returns the bytes read."""
    s = socket.create_connection(("127.0.0.1", port), timeout=read_timeout)
    try:
        if chunks:
            for ch in chunks:
                s.sendall(ch)
                time.sleep(delay)
        else:
            s.sendall(data)
        out = b""
        while True:
            try:
                b = s.recv(65536)
            except socket.timeout:
                break
            except ConnectionResetError:
                break
            if not b:
                break
            out += b
        return out
    finally:
        s.close()


def metrics(port):
    st, _, b = request("GET", port, "/metrics")
    assert st == 200
    return b.decode()


def metric_value(text, name, labels=None):
    """Sum of samples of `name` whose labels include `labels`."""
    total, found = 0.0, False
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        m = re.match(r'^([^{\s]+)(\{[^}]*\})?\s+(\S+)', line)
        if not m or m.group(1) != name:
            continue
        lab = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if labels and any(lab.get(k) != v for k, v in labels.items()):
            continue
        total += float(m.group(3))
        found = True
    return total if found else None


def check(name):
    """Decorator: registers a test case; failures are collected, not fatal."""
    def deco(fn):
        fn._check_name = name
        _cases.append(fn)
        return fn
    return deco


_cases = []


def run():
    """Runs every registered case in order; exits 1 if any failed."""
    for fn in _cases:
        t0 = time.time()
        try:
            fn()
            print(f"ok   {fn._check_name} ({time.time() - t0:.2f}s)", flush=True)
        except Exception:
            _failures.append(fn._check_name)
            print(f"FAIL {fn._check_name}\n{traceback.format_exc()}", flush=True)
    if _failures:
        print(f"{len(_failures)} of {len(_cases)} checks failed: {', '.join(_failures)}")
        sys.exit(1)
    print(f"all {len(_cases)} checks passed")


# ------------------------------------------------------------ gateway --

def url_of(e):
    """Base URL of an engine Proc (or a port)."""
    return f"http://127.0.0.1:{e if isinstance(e, int) else e.port}"


def pod_of(e):
    """The gateway's name for an engine pod (static discovery: "ip:port"),
    as in its target-pod / target-pod-ip headers and pod="..." labels."""
    return f"127.0.0.1:{e if isinstance(e, int) else e.port}"


def healthy_pods(port):
    """{pod name: value of brix_gateway_pod_healthy} from a gateway's /metrics."""
    out = {}
    for line in metrics(port).splitlines():
        m = re.match(r'^brix_gateway_pod_healthy\{pod="([^"]*)"\}\s+(\S+)', line)
        if m:
            out[m.group(1)] = float(m.group(2))
    return out


def wait_until(pred, timeout=10.0, what="condition", interval=0.05):
    """Polls pred() until it returns a truthy value (returned) or fails after timeout."""
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = pred()
            if last:
                return last
        except (OSError, AssertionError, ValueError) as ex:
            last = ex
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def gateway(urls=(), extra=(), port=None, ready=True, env=None, name="gateway", pods=None,
            timeout=20):
    """Starts `brix gateway` on a free port. `urls`: engine Procs, ports or URLs, given as
    one comma-separated --worker-urls (left out when empty, e.g. with --config).
    --health-interval defaults to 100ms here (unless in `extra`). ready=True waits for
    /readyz 200 and for every listed engine (or `pods` of them) to be a healthy pod."""
    port = port or free_port()
    args = ["gateway", "--port", str(port)]
    ul = [u if isinstance(u, str) else url_of(u) for u in urls]
    if ul:
        args += ["--worker-urls", ",".join(ul)]
    if "--health-interval" not in extra:
        args += ["--health-interval", "100ms"]
    args += list(extra)
    pr = Proc(args, name=name, env=env)
    pr.port = port
    if ready:
        pr.wait_http(port, "/readyz", timeout=timeout)
        want = len(ul) if pods is None else pods
        deadline = time.time() + timeout
        while True:
            hp = healthy_pods(port)
            if sum(1 for v in hp.values() if v == 1) >= want:
                break
            if pr.p.poll() is not None or time.time() > deadline:
                raise AssertionError(f"{name}: {want} healthy pod(s) wanted, have {hp}:\n"
                                     + pr.text()[-3000:])
            time.sleep(0.05)
    return pr


class Stream:
    """A streaming (SSE) request read incrementally over a raw socket, so a test
    can act in the middle of it. Decodes chunked transfer encoding strictly."""

    def __init__(self, port, path, body, headers=None, timeout=30):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        data = json.dumps(body).encode() if not isinstance(body, bytes) else body
        hl = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self.sock.sendall((f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                           f"Content-Type: application/json\r\n{hl}"
                           f"Content-Length: {len(data)}\r\n\r\n").encode() + data)
        self.buf = b""
        self.body = b""       # de-chunked body so far
        self.events = []      # complete SSE payloads ("[DONE]" or parsed JSON)
        self.ended = False    # the terminating 0-size chunk arrived
        self.closed = False   # the peer closed the connection
        self.status = None
        self.headers = {}
        self._pend = b""      # de-chunked bytes not yet split into events
        while self.status is None:
            if not self._recv():
                raise AssertionError(f"connection closed before the response head: {self.buf!r}")
            head, sep, rest = self.buf.partition(b"\r\n\r\n")
            if sep:
                lines = head.decode().split("\r\n")
                self.status = int(lines[0].split()[1])
                self.headers = {k.strip().lower(): v.strip()
                                for k, _, v in (ln.partition(":") for ln in lines[1:])}
                self.buf = rest
        self.chunked = self.headers.get("transfer-encoding") == "chunked"
        self._parse()

    def _recv(self):
        try:
            b = self.sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):
            b = b""
        if not b:
            self.closed = True
            return False
        self.buf += b
        return True

    def _parse(self):
        if not self.chunked:
            self._pend += self.buf
            self.body += self.buf
            self.buf = b""
        while self.chunked and not self.ended:
            eol = self.buf.find(b"\r\n")
            if eol < 0:
                break
            size = int(self.buf[:eol], 16)
            if size == 0:
                if len(self.buf) < eol + 4:
                    break
                assert self.buf[eol + 2:eol + 4] == b"\r\n", self.buf[:eol + 4]
                self.ended = True
                self.buf = self.buf[eol + 4:]
                break
            if len(self.buf) < eol + 2 + size + 2:
                break
            chunk = self.buf[eol + 2:eol + 2 + size]
            assert self.buf[eol + 2 + size:eol + 4 + size] == b"\r\n", "chunk without CRLF"
            self.buf = self.buf[eol + 4 + size:]
            self.body += chunk
            self._pend += chunk
        while b"\n\n" in self._pend:
            block, _, self._pend = self._pend.partition(b"\n\n")
            text = block.decode()
            assert text.startswith("data: ") and "\n" not in text, f"bad SSE event {text!r}"
            payload = text[6:]
            self.events.append(payload if payload == "[DONE]" else json.loads(payload))

    def wait_events(self, n, timeout=10):
        """Reads until at least n events arrived; returns the events."""
        deadline = time.time() + timeout
        while len(self.events) < n:
            if self.ended or self.closed or time.time() > deadline:
                raise AssertionError(f"{len(self.events)} of {n} events (ended={self.ended}, "
                                     f"closed={self.closed})")
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                self._recv()
            except socket.timeout:
                pass
            self._parse()
        return self.events

    def read_to_end(self, timeout=30):
        """Reads until the terminating chunk or the peer closes; returns the events."""
        deadline = time.time() + timeout
        while not self.ended and not self.closed:
            if time.time() > deadline:
                raise AssertionError(f"stream not ended after {timeout}s "
                                     f"({len(self.events)} events)")
            self.sock.settimeout(max(0.01, deadline - time.time()))
            try:
                self._recv()
            except socket.timeout:
                pass
            self._parse()
        return self.events

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass
