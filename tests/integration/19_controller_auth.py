"""19 — the controller's API is authenticated (issue 11, item 1).

Attacks first: an unauthenticated apply, a cross-origin-style `text/plain`
apply, a DNS-rebinding `Host`, an engine command from the API — each refused
with nothing applied and nothing run (a command that would create a marker
file never runs). Then the credentials: STATE_DIR/token made 0600 and reused,
401 + WWW-Authenticate for a missing or wrong token, brix get with the state
dir's token / a wrong BRIX_TOKEN, the status page's one-time login link and
cookie, secrets in engine argv redacted in every API view, and a gateway whose
--controller-token is wrong (refused, logged) or right (watches).
"""
import json
import os
import signal
import socket
import stat
import subprocess
import tempfile
import time

import harness as h

TMP = tempfile.mkdtemp(prefix="brix-auth-")
MARKER = os.path.join(TMP, "pwned")
SECRET = "sk-live-secret-4242"

# what a web page would POST: a deployment whose "engine" is a shell command
EVIL = """{"apiVersion":"model.brix.dev/v1alpha1","kind":"ModelDeployment",
 "metadata":{"name":"evil"},
 "spec":{"model":"evil","replicas":1,
  "engine":{"command":["sh","-c","touch %s; sleep 60 # {port}"]}}}""" % MARKER

PLAIN = """apiVersion: model.brix.dev/v1alpha1
kind: ModelDeployment
metadata: {name: plain}
spec: {model: plain-7b, replicas: 0}
"""


class Controller:
    def __init__(self, extra=(), state=None, name="controller"):
        self.port = h.free_port()
        self.state = state or tempfile.mkdtemp(prefix="state-", dir=TMP)
        self.p = h.Proc(["controller", "--port", str(self.port), "--state-dir", self.state,
                         "--health-interval", "200ms", "--reconcile-interval", "200ms",
                         "--stop-grace", "3s"] + list(extra), name=name)
        self.p.wait_http(self.port, "/readyz")
        self.token = open(os.path.join(self.state, "token")).read().strip() \
            if os.path.exists(os.path.join(self.state, "token")) else None

    def req(self, method, path, body=None, token=True, headers=None):
        hd = {}
        if token:
            hd["authorization"] = f"Bearer {self.token if token is True else token}"
        if body is not None:
            hd["content-type"] = "application/json"
        hd.update(headers or {})
        st, rh, b = h.request(method, self.port, path, headers=hd,
                              raw_body=body.encode() if isinstance(body, str) else body)
        return st, rh, b

    def items(self, kind):
        st, _, b = self.req("GET", f"/v1/{kind}")
        assert st == 200, (st, b)
        return {o["metadata"]["name"]: o for o in json.loads(b)["items"]}

    def cli(self, *args, env=None, want=0):
        e = dict(os.environ)
        e.pop("BRIX_TOKEN", None)
        e.update(env or {})
        r = subprocess.run([h.BRIX] + list(args) + ["--server", f"http://127.0.0.1:{self.port}"],
                           cwd=TMP, capture_output=True, text=True, timeout=60, env=e)
        if want is not None:
            assert r.returncode == want, (args, r.returncode, r.stdout, r.stderr)
        return r


def nothing_ran(c, name="evil"):
    """Nothing was applied and no process started: no object, no replica, no marker."""
    time.sleep(0.6)  # three reconcile passes: a replica would have been started by now
    assert not os.path.exists(MARKER), "the engine command ran"
    assert name not in c.items("deployments"), c.items("deployments")
    assert not [r for r in c.items("replicas").values() if r["spec"]["deployment"] == name]


def error_of(b):
    j = json.loads(b)
    assert set(j["error"]) >= {"message", "type", "code"}, j
    return j["error"]


C = Controller()


@h.check("STATE_DIR/token: 64 hex characters (256 bits), mode 0600; state.json is 0600 too")
def _():
    path = os.path.join(C.state, "token")
    assert len(C.token) == 64 and int(C.token, 16) >= 0, C.token
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, oct(os.stat(path).st_mode)
    st, _, b = C.req("POST", "/v1/apply", PLAIN, headers={"content-type": "application/yaml"})
    assert st == 200, b
    mode = stat.S_IMODE(os.stat(os.path.join(C.state, "state.json")).st_mode)
    assert mode == 0o600, oct(mode)


@h.check("no token or a wrong one: 401, OpenAI-style error, WWW-Authenticate: Bearer; "
         "/healthz and /readyz stay open")
def _():
    for path in ("/v1/replicas", "/v1/deployments", "/v1/adapters/x", "/v1/watch", "/metrics",
                 "/", "/status"):
        st, hd, b = C.req("GET", path, token=False)
        assert st == 401, (path, st, b)
        assert hd.get("www-authenticate", "").startswith("Bearer"), (path, hd)
        e = error_of(b)
        assert e["type"] == "authentication_error", e
        st, hd, b = C.req("GET", path, token="x" * 64)
        assert st == 401 and 'error="invalid_token"' in hd.get("www-authenticate", ""), (st, hd)
        assert "incorrect" in error_of(b)["message"], b
    # the right token, but in another scheme, is no bearer token
    st, _, _ = C.req("GET", "/v1/replicas", token=False,
                     headers={"authorization": f"Basic {C.token}"})
    assert st == 401
    for path in ("/healthz", "/readyz"):
        assert C.req("GET", path, token=False)[0] == 200, path
    assert C.req("GET", "/v1/replicas")[0] == 200


@h.check("an unauthenticated apply (JSON, YAML or text/plain) is refused and runs nothing")
def _():
    for ct in ("application/json", "application/yaml", "text/plain"):
        st, _, b = C.req("POST", "/v1/apply", EVIL, token=False, headers={"content-type": ct})
        assert st == 401, (ct, st, b)
    st, _, b = C.req("POST", "/v1/apply", EVIL, token="0" * 64)
    assert st == 401, b
    for verb, path in (("DELETE", "/v1/deployments/plain"), ("DELETE", "/v1/replicas/x"),
                       ("POST", "/v1/adapters/x/wake"), ("POST", "/v1/activity"),
                       ("POST", "/v1/login")):
        st, _, b = C.req(verb, path, token=False)
        assert st == 401, (verb, path, st, b)
    assert "plain" in C.items("deployments")  # the DELETE did nothing
    nothing_ran(C)


@h.check("text/plain (what a cross-origin no-cors fetch sends) with a valid token: 415, "
         "nothing applied")
def _():
    before = C.items("deployments")
    doc = PLAIN.replace("name: plain", "name: plain-text")
    for ct in ("text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
               "multipart/form-data; boundary=x", None):
        # (http.client adds no content-type of its own to a bytes body)
        hd = {"content-type": ct} if ct else {}
        hd["authorization"] = f"Bearer {C.token}"
        st, _, b = h.request("POST", C.port, "/v1/apply", headers=hd, raw_body=doc.encode())
        assert st == 415, (ct, st, b)
        assert error_of(b)["code"] == "unsupported_media_type", b
    assert C.items("deployments").keys() == before.keys()
    for ct in ("application/yaml", "text/yaml", "application/x-yaml; charset=utf-8"):
        st, _, b = C.req("POST", "/v1/apply", doc, headers={"content-type": ct})
        assert st == 200, (ct, b)
    assert "plain-text" in C.items("deployments")


@h.check("DNS rebinding: a foreign Host is refused (403) even with the token; addresses, "
         "localhost and --allowed-host names are served")
def _():
    for host in ("evil.example", f"evil.example:{C.port}", f"127.0.0.1.nip.io:{C.port}",
                 f"127.0.0.1:{C.port + 1 if C.port < 65535 else 1}", f"localhost:{C.port - 1}"):
        st, _, b = C.req("GET", "/v1/replicas", headers={"host": host})
        assert st == 403, (host, st, b)
        assert error_of(b)["code"] == "host_not_allowed", b
        st, _, b = C.req("POST", "/v1/apply", EVIL, headers={"host": host})
        assert st == 403, (host, st, b)
    nothing_ran(C)
    for host in (f"127.0.0.1:{C.port}", f"localhost:{C.port}", "127.0.0.1", f"[::1]:{C.port}"):
        st, _, b = C.req("GET", "/v1/replicas", headers={"host": host})
        assert st == 200, (host, st, b)
    # probes carry whatever Host the prober uses
    assert C.req("GET", "/healthz", token=False, headers={"host": "evil.example"})[0] == 200
    a = Controller(["--allowed-host", "ctl.internal", "--allowed-host", "other.internal:9"],
                   name="controller-allowed")
    try:
        for host, want in (("ctl.internal", 200), ("ctl.internal:443", 200),
                           ("other.internal:9", 200), ("other.internal:10", 403),
                           ("evil.example", 403)):
            st, _, b = a.req("GET", "/v1/replicas", headers={"host": host})
            assert st == want, (host, st, want, b)
    finally:
        a.p.stop()


@h.check("spec.engine.command from the API: 403 naming the field, nothing applied or run")
def _():
    st, _, b = C.req("POST", "/v1/apply", EVIL)
    assert st == 403, (st, b)
    e = error_of(b)
    assert e["code"] == "engine_command_not_allowed", e
    assert "spec.engine.command" in e["message"] and "--allow-engine-commands" in e["message"], e
    nothing_ran(C)
    # all or nothing: a valid object next to it is not applied either
    st, _, b = C.req("POST", "/v1/apply", PLAIN.replace("name: plain", "name: with-evil")
                     + "---\n" + EVIL.replace("\n", " "),
                     headers={"content-type": "application/yaml"})
    assert st == 403, b
    assert "with-evil" not in C.items("deployments")
    p = os.path.join(TMP, "evil.yaml")
    with open(p, "w") as f:
        f.write(EVIL)
    r = C.cli("apply", "-f", p, "--state-dir", C.state, want=1)
    assert "spec.engine.command is not allowed" in r.stderr, r.stderr
    nothing_ran(C)


@h.check("--allow-engine-commands runs a command; secrets in argv are <redacted> in "
         "replicas, deployments, watch and the status page (the state file keeps them)")
def _():
    a = Controller(["--allow-engine-commands"], name="controller-cmd")
    try:
        doc = {"apiVersion": "model.brix.dev/v1alpha1", "kind": "ModelDeployment",
               "metadata": {"name": "custom"},
               "spec": {"model": "custom-7b", "replicas": 1, "healthPath": "/health",
                        "engine": {"command": [
                            "sh", "-c",
                            f"touch {MARKER}.ok; exec {h.BRIX} engine-sim --port $0 "
                            f"--time-scale 0.05 --served-model-name custom-7b "
                            f"--api-key {SECRET}", "{port}"],
                            "args": ["HF_TOKEN=" + SECRET, "--hf-token=" + SECRET,
                                     "--admin-key", SECRET,
                                     "https://user:" + SECRET + "@example.com/x"]}}}
        # the extra args after "{port}" are $1.. for sh: harmless, but rendered
        st, _, b = a.req("POST", "/v1/apply", json.dumps(doc))
        assert st == 200, b
        reps = h.wait_until(lambda: a.items("replicas") or None, 10, "a replica")
        h.wait_until(lambda: os.path.exists(MARKER + ".ok"), 10, "the allowed command ran")
        st, _, b = a.req("GET", "/v1/replicas")
        assert st == 200 and SECRET not in b.decode(), b
        cmd = json.loads(b)["items"][0]["spec"]["command"]
        text = " ".join(cmd)
        assert "--api-key <redacted>" in text, cmd
        assert "HF_TOKEN=<redacted>" in cmd and "--hf-token=<redacted>" in cmd, cmd
        assert "https://user:<redacted>@example.com/x" in cmd, cmd
        assert cmd[cmd.index("--admin-key") + 1] == "<redacted>", cmd
        assert "--time-scale 0.05" in text and "--served-model-name custom-7b" in text, cmd
        for path in ("/v1/deployments", "/v1/deployments/custom", "/v1/replicas/" +
                     next(iter(reps)), "/", "/metrics"):
            st, _, b = a.req("GET", path)
            assert st == 200 and SECRET not in b.decode(), (path, b[:2000])
        for fmt in ("json", "yaml", "wide"):
            r = a.cli("get", "replicas", "-o", fmt, "--state-dir", a.state)
            assert SECRET not in r.stdout, r.stdout
            assert fmt == "wide" or "<redacted>" in r.stdout, r.stdout
        # the watch: its first snapshot line
        s = socket.create_connection(("127.0.0.1", a.port), timeout=5)
        s.sendall((f"GET /v1/watch HTTP/1.1\r\nHost: 127.0.0.1:{a.port}\r\n"
                   f"Authorization: Bearer {a.token}\r\n\r\n").encode())
        got = b""
        while b"snapshot" not in got or not got.rstrip(b"\r\n").endswith(b"}"):
            got += s.recv(65536)
        s.close()
        assert b" 200 " in got.split(b"\r\n")[0] and b"custom" in got, got[:500]
        assert SECRET.encode() not in got, got[:2000]
        logs = os.path.join(a.state, "logs")
        for n in os.listdir(logs):  # the replica log's first line names its command
            assert SECRET not in open(os.path.join(logs, n), errors="replace").read(), n
        state = open(os.path.join(a.state, "state.json")).read()
        assert SECRET in state  # kept for restarts: the file is the owner's only
    finally:
        a.p.stop()


@h.check("brix get finds the token in --state-dir (default .brix); a wrong BRIX_TOKEN or "
         "--token fails clearly")
def _():
    r = C.cli("get", "deployments", "--state-dir", C.state)
    assert "plain" in r.stdout, r.stdout
    r = C.cli("get", "deployments", env={"BRIX_TOKEN": C.token})
    assert "plain" in r.stdout
    r = C.cli("get", "deployments", env={"BRIX_TOKEN": "wrong-token-0123456789"}, want=1)
    assert "refused the token ($BRIX_TOKEN)" in r.stderr and "incorrect" in r.stderr, r.stderr
    r = C.cli("get", "deployments", "--token", "wrong-token-0123456789", "--state-dir", C.state,
              want=1)
    assert "refused the token (--token)" in r.stderr, r.stderr
    # no .brix in the working directory and no token: the 401 says where to look
    r = C.cli("get", "deployments", want=1)
    assert "needs its API token and none was found" in r.stderr, r.stderr
    assert "--state-dir" in r.stderr, r.stderr
    r = C.cli("get", "deployments", "--state-dir", os.path.join(TMP, "nope"), want=2)
    assert "cannot read the controller token" in r.stderr, r.stderr
    # the default --state-dir is .brix in the working directory, as for brix up
    os.makedirs(os.path.join(TMP, ".brix"), exist_ok=True)
    with open(os.path.join(TMP, ".brix", "token"), "w") as f:
        f.write(C.token + "\n")
    try:
        r = C.cli("get", "deployments")
        assert "plain" in r.stdout, r.stdout
        p = os.path.join(TMP, "del.yaml")
        with open(p, "w") as f:
            f.write(PLAIN.replace("name: plain", "name: via-cli"))
        assert C.cli("apply", "-f", p).stdout.strip() == "modeldeployment/via-cli created"
        assert C.cli("delete", "deployment", "via-cli").returncode == 0
    finally:
        os.unlink(os.path.join(TMP, ".brix", "token"))


@h.check("status page: a one-time login link sets an HttpOnly SameSite=Strict cookie that "
         "reads, never writes; --status-page-open serves / alone without a token")
def _():
    st, _, b = C.req("POST", "/v1/login")
    assert st == 200, b
    path = json.loads(b)["path"]
    assert path.startswith("/login?code=") and C.token not in path, path
    st, hd, b = C.req("GET", path, token=False)
    assert st == 303 and hd.get("location") == "/", (st, hd, b)
    ck = hd.get("set-cookie", "")
    assert "HttpOnly" in ck and "SameSite=Strict" in ck and C.token not in ck, ck
    cookie = ck.split(";")[0]
    st, _, b = C.req("GET", path, token=False)
    assert st == 401, "a login code works once only"
    st, hd, b = C.req("GET", "/", token=False, headers={"cookie": "a=b; " + cookie})
    assert st == 200 and b"brix controller" in b, (st, b[:200])
    assert C.req("GET", "/v1/replicas", token=False, headers={"cookie": cookie})[0] == 200
    st, _, _ = C.req("POST", "/v1/apply", EVIL, token=False, headers={"cookie": cookie})
    assert st == 401, "the cookie must not authorize writes"
    st, _, _ = C.req("GET", "/", token=False, headers={"cookie": cookie[:-4] + "0000"})
    assert st == 401
    nothing_ran(C)
    o = Controller(["--status-page-open"], name="controller-open")
    try:
        assert o.req("GET", "/", token=False)[0] == 200
        assert o.req("GET", "/v1/replicas", token=False)[0] == 401
        assert o.req("GET", "/", token=False, headers={"host": "evil.example"})[0] == 403
    finally:
        o.p.stop()


@h.check("refuses a non-loopback listener without a token, --status-page-open off loopback; "
         "a --token-file is used; a restart reuses STATE_DIR/token")
def _():
    for extra, what in ((["--host", "0.0.0.0", "--insecure-no-auth"], "without a token"),
                        (["--host", "0.0.0.0", "--status-page-open"], "loopback")):
        p = h.Proc(["controller", "--port", "0", "--state-dir",
                    tempfile.mkdtemp(dir=TMP)] + extra, name="controller-bad")
        rc = p.p.wait(20)
        assert rc == 2 and what in p.text(), (rc, p.text())
    tf = os.path.join(TMP, "tokfile")
    with open(tf, "w") as f:
        f.write("  my-operator-token-0123456789\n")
    os.chmod(tf, 0o600)
    t = Controller(["--token-file", tf], name="controller-tokfile")
    try:
        assert not os.path.exists(os.path.join(t.state, "token"))
        assert t.req("GET", "/v1/replicas", token="my-operator-token-0123456789")[0] == 200
        assert t.req("GET", "/v1/replicas", token="my-operator-token-012345678")[0] == 401
    finally:
        t.p.stop()
    with open(tf, "w") as f:
        f.write("short\n")
    p = h.Proc(["controller", "--port", "0", "--state-dir", tempfile.mkdtemp(dir=TMP),
                "--token-file", tf], name="controller-short")
    assert p.p.wait(20) == 1 and "16 to" in p.text(), p.text()
    st = tempfile.mkdtemp(dir=TMP)
    one = Controller(state=st, name="controller-once")
    one.p.stop()
    two = Controller(state=st, name="controller-twice")
    assert two.token == one.token
    two.p.stop()


@h.check("a gateway with a wrong --controller-token is refused and says so; with the "
         "controller's token file it watches")
def _():
    bad = h.gateway([], ["--controller", f"http://127.0.0.1:{C.port}",
                         "--controller-token", "wrong-token-0123456789"], ready=False,
                    name="gateway-badtoken")
    bad.expect_error(r"refused the watch \(401\)")
    h.wait_until(lambda: "refused the watch (401)" in bad.text(), 10, "the refusal in the log")
    assert "the controller token is wrong" in bad.text()
    assert h.metric_value(h.metrics(bad.port), "brix_gateway_controller_connected") == 0
    bad.stop()
    assert bad.text().count("refused the watch") == 1, "logged once, not per retry"
    good = h.gateway([], ["--controller", f"http://127.0.0.1:{C.port}",
                          "--controller-token-file", os.path.join(C.state, "token")],
                     ready=False, name="gateway-goodtoken")
    h.wait_until(lambda: h.metric_value(h.metrics(good.port),
                                        "brix_gateway_controller_connected") == 1,
                 10, "the gateway connected")
    assert "refused" not in good.text()
    good.stop()


@h.check("brix up: its own file's engine command is allowed (and said so); the token is "
         "shared through files, never argv")
def _():
    state = os.path.join(TMP, "up-state")
    gw, api = h.free_port(), h.free_port()
    cfg = os.path.join(TMP, "up.yaml")
    with open(cfg, "w") as f:
        f.write(f"""apiVersion: model.brix.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: own}}
spec:
  model: own-7b
  replicas: 1
  healthPath: /health
  engine:
    command: [sh, -c, "touch {MARKER}.up; exec {h.BRIX} engine-sim --port $0 --time-scale 0.05 --served-model-name own-7b --api-key {SECRET}", "{{port}}"]
""")
    up = h.Proc(["up", "-c", cfg, "--port", str(gw), "--api-port", str(api), "--state-dir", state],
                name="up-own")
    try:
        h.wait_until(lambda: "brix is up." in up.text() or up.p.poll() is not None, 60, "up")
        out = up.text()
        assert "brix is up." in out and "--allow-engine-commands" in out, out
        assert os.path.exists(MARKER + ".up")
        token = open(os.path.join(state, "token")).read().strip()
        assert token not in out
        for pid in os.listdir("/proc"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    cmd = f.read()
            except OSError:
                continue
            assert token.encode() not in cmd, cmd
        st, _, b = h.request("GET", api, "/v1/replicas",
                             headers={"authorization": f"Bearer {token}"})
        assert st == 200 and SECRET not in b.decode() and b"<redacted>" in b, b[:1000]
    finally:
        up.stop(sig=signal.SIGINT, timeout=60)


@h.check("controller log: no unexpected errors")
def _():
    C.p.stop()


h.run()
