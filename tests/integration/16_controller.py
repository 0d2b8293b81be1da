"""brix controller, brix apply/get/delete: objects, local replicas, LoRA placement,
restarts, persistence, artifacts, scale-to-zero (issue 7)."""
import atexit
import hashlib
import json
import os
import signal
import subprocess
import tempfile
import time

import harness as h

TMP = tempfile.mkdtemp(prefix="brix-ctl-")
ADIR = os.path.join(TMP, "adapters")
for name in ("sql", "chat", "math", "extra", "sql-v2"):
    os.makedirs(os.path.join(ADIR, name), exist_ok=True)
    with open(os.path.join(ADIR, name, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 8}, f)
BLOB = os.path.join(TMP, "blob.safetensors")
with open(BLOB, "wb") as f:
    f.write(b"not really weights" * 100)
BLOB_SHA = hashlib.sha256(open(BLOB, "rb").read()).hexdigest()

DEPLOY = """
apiVersion: model.brix.dev/v1alpha1
kind: ModelDeployment
metadata:
  name: base
  labels: {team: infra}
spec:
  model: base-7b
  replicas: %(replicas)d
  gpu: a100
  engine:
    args: [--time-scale, "0.05"]
  lora: {maxLoras: 2, maxCpuLoras: %(cap)d}
"""

ADAPTER = """
apiVersion: model.aibrix.ai/v1alpha1
kind: ModelAdapter
metadata:
  name: %(name)s
spec:
  baseModel: base-7b
  podSelector:
    matchLabels: {model.aibrix.ai/name: base-7b}
  artifactURL: %(url)s
%(extra)s
"""


def adapter(name, url=None, extra=""):
    return ADAPTER % {"name": name, "url": url or f"file://adapters/{name}", "extra": extra}


def write(name, text):
    p = os.path.join(TMP, name)
    with open(p, "w") as f:
        f.write(text)
    return p


class Controller:
    def __init__(self, state=None, extra=()):
        self.port = h.free_port()
        self.state = state or tempfile.mkdtemp(prefix="state-", dir=TMP)
        self.extra = list(extra)
        self.start()

    def start(self):
        self.p = h.Proc(["controller", "--port", str(self.port), "--state-dir", self.state,
                         "--health-interval", "200ms", "--reconcile-interval", "200ms",
                         "--stop-grace", "3s", "--evict-idle-min", "1s",
                         "--unload-drain", "200ms"] + self.extra, name="controller")
        self.p.wait_http(self.port, "/readyz")
        with open(os.path.join(self.state, "token")) as f:  # made by the controller
            h.TOKENS[self.port] = f.read().strip()

    @property
    def server(self):
        return f"http://127.0.0.1:{self.port}"

    def cli(self, *args, want=0):
        r = subprocess.run([h.BRIX] + list(args) + ["--server", self.server,
                                                     "--state-dir", self.state], cwd=TMP,
                           capture_output=True, text=True, timeout=60)
        if want is not None:
            assert r.returncode == want, (args, r.returncode, r.stdout, r.stderr)
        return r

    def apply(self, text, want=0, name="obj.yaml"):
        return self.cli("apply", "-f", write(name, text), want=want)

    def get(self, kind, name=None):
        st, _, b = h.request("GET", self.port, f"/v1/{kind}" + (f"/{name}" if name else ""))
        assert st == 200, (st, b)
        return json.loads(b)

    def items(self, kind):
        return {o["metadata"]["name"]: o for o in self.get(kind)["items"]}

    def wait_ready(self, n, timeout=30):
        def ok():
            reps = self.items("replicas")
            return len(reps) == n and all(r["status"]["ready"] for r in reps.values()) and reps
        return h.wait_until(ok, timeout, f"{n} ready replicas")

    def wait_adapter(self, name, pred, timeout=20, what=None):
        return h.wait_until(lambda: pred(self.get("adapters", name)), timeout,
                            what or f"adapter {name}")

    def stop(self, sig=signal.SIGTERM):
        return self.p.stop(sig)


def engine_models(url):
    port = int(url.rsplit(":", 1)[1])
    st, _, b = h.request("GET", port, "/v1/models")
    assert st == 200
    return {m["id"]: m for m in json.loads(b)["data"]}


def alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


C = Controller()


@atexit.register
def _cleanup():
    # a failed check exits early: the controller still stops the replicas it started
    if C.p.p.poll() is None:
        C.p.p.send_signal(signal.SIGTERM)
        try:
            C.p.p.wait(20)
        except Exception:
            C.p.p.kill()


@h.check("apply creates objects; get lists them as tables, json and yaml; aliases work")
def _():
    r = C.apply(DEPLOY % {"replicas": 2, "cap": 4} + "---" + adapter("sql", extra="  replicas: 1")
                + "---" + adapter("chat"))
    assert r.stdout.splitlines() == ["modeldeployment/base created", "modeladapter/sql created",
                                     "modeladapter/chat created"], r.stdout
    again = C.apply(DEPLOY % {"replicas": 2, "cap": 4}, name="again.yaml")
    assert again.stdout.strip() == "modeldeployment/base unchanged", again.stdout
    reps = C.wait_ready(2)
    assert sorted(reps) == ["base-0", "base-1"]
    for r in reps.values():
        lab = r["metadata"]["labels"]
        assert lab["model.aibrix.ai/name"] == "base-7b" and lab["team"] == "infra", lab
        assert lab["model.aibrix.ai/port"] == str(r["status"]["port"]), lab
        assert "--served-model-name" in r["spec"]["command"], r
    t = C.cli("get", "deployments").stdout.splitlines()
    assert t[0].split()[:5] == ["NAME", "MODEL", "GPU", "REPLICAS", "READY"], t
    assert t[1].split()[:5] == ["base", "base-7b", "a100", "2", "2/2"], t
    for alias in ("deploy", "md", "modeldeployment"):
        assert C.cli("get", alias).stdout.splitlines()[1].split()[0] == "base"
    j = json.loads(C.cli("get", "ma", "sql", "-o", "json").stdout)
    assert j["metadata"]["name"] == "sql" and j["spec"]["replicas"] == 1 and "status" in j, j
    y = C.cli("get", "adapter", "chat", "-o", "yaml").stdout
    assert "kind: ModelAdapter" in y and "  baseModel: base-7b" in y and "status:" in y, y
    names = C.cli("get", "pods", "-o", "name").stdout.split()
    assert names == ["replica/base-0", "replica/base-1"], names
    bad = C.cli("get", "widgets", want=2)
    assert "unknown kind 'widgets'" in bad.stderr, bad.stderr
    miss = C.cli("get", "adapter", "nope", want=1)
    assert "ModelAdapter 'nope' not found" in miss.stderr, miss.stderr


@h.check("adapters are placed where /v1/models of the replicas confirms them")
def _():
    chat = C.wait_adapter("chat", lambda a: a["status"]["phase"] == "Running" and
                          len(a["status"]["instances"]) == 2 and a)
    sql = C.wait_adapter("sql", lambda a: a["status"]["phase"] == "Running" and a)
    assert chat["status"]["desiredReplicas"] == 2 and chat["status"]["candidates"] == 2, chat
    assert len(sql["status"]["instances"]) == 1 and sql["status"]["desiredReplicas"] == 1, sql
    reps = C.items("replicas")
    for name, r in reps.items():
        models = engine_models(r["status"]["url"])
        want = {"base-7b", "chat"} | ({"sql"} if name in sql["status"]["instances"] else set())
        assert set(models) == want, (name, models.keys(), want)
        assert models["chat"]["root"].endswith("/adapters/chat"), models["chat"]
        assert sorted(r["status"]["adapters"]) == sorted(want - {"base-7b"}), r
    conds = {c["type"]: c for c in sql["status"]["conditions"]}
    assert conds["Ready"]["status"] == "True" and conds["Scheduled"]["status"] == "True", conds
    # a completion for the adapter, straight at its replica (the gateway test covers routing)
    url = reps[sql["status"]["instances"][0]]["status"]["url"]
    st, _, b = h.request("POST", int(url.rsplit(":", 1)[1]), "/v1/completions",
                         {"model": "sql", "prompt": "select", "max_tokens": 3})
    assert st == 200 and json.loads(b)["model"] == "sql", (st, b)


@h.check("bad YAML: file:line: what is wrong, and nothing of the file is applied")
def _():
    text = adapter("math") + """---
apiVersion: model.aibrix.ai/v1alpha1
kind: ModelAdapter
metadata:
  name: broken
spec:
  podSelector: {matchLabels: {a: b}}
  artifactURL: file:///x
  replcas: 2
"""
    r = C.apply(text, want=1, name="bad.yaml")
    line = text.splitlines().index("  replcas: 2") + 1
    assert f"bad.yaml:{line}:3: spec: unknown field 'replcas'" in r.stderr, r.stderr
    assert "math" not in C.items("adapters"), "the valid document was applied"
    r = C.apply("kind: ModelAdapter\nmetadata: [\n", want=1, name="syntax.yaml")
    assert "syntax.yaml:" in r.stderr, r.stderr
    r = C.apply(adapter("UPPER"), want=1, name="name.yaml")
    assert "name.yaml:5:9: metadata.name: 'UPPER' is not a valid name" in r.stderr, r.stderr
    r = C.apply(DEPLOY.replace("replicas: %(replicas)d", "replicas: lots") % {"cap": 2},
                want=1, name="int.yaml")
    assert "int.yaml:9:13: spec.replicas: expected an integer" in r.stderr, r.stderr
    st, _, b = h.request("POST", C.port, "/v1/apply", raw_body=b"kind: Gizmo\n",
                         headers={"content-type": "application/yaml"})
    assert st == 400 and "unknown kind 'Gizmo'" in json.loads(b)["error"]["message"], b


@h.check("a killed replica restarts and its adapters are placed again within seconds")
def _():
    reps = C.items("replicas")
    victim = C.get("adapters", "sql")["status"]["instances"][0]
    pid = reps[victim]["status"]["pid"]
    os.kill(pid, signal.SIGKILL)
    t0 = time.time()

    def back():
        r = C.get("replicas", victim)["status"]
        a = C.get("adapters", "sql")["status"]
        c = C.get("adapters", "chat")["status"]
        return (r["restarts"] == 1 and r["ready"] and r["pid"] != pid and
                a["phase"] == "Running" and len(c["instances"]) == 2 and r)
    r = h.wait_until(back, 20, "replica restarted and adapters re-placed")
    assert "killed by signal 9" in r["lastExit"], r
    assert time.time() - t0 < 15
    assert "sql" in engine_models(C.get("adapters", "sql") and
                                  C.items("replicas")[C.get("adapters", "sql")["status"]["instances"][0]]["status"]["url"])


@h.check("artifacts: sha256 verified (a wrong one fails cleanly), unsupported schemes say so")
def _():
    good = adapter("blob-ok", url=f"file://{BLOB}", extra=f"  artifactSHA256: {BLOB_SHA}\n  replicas: 1")
    bad = adapter("blob-bad", url=f"file://{BLOB}", extra="  artifactSHA256: " + "0" * 64)
    hf = adapter("hf", url="huggingface://org/some-lora")
    C.apply(good + "---" + bad + "---" + hf, name="art.yaml")
    ok = C.wait_adapter("blob-ok", lambda a: a["status"]["phase"] == "Running" and a)
    assert ok["status"]["artifact"]["path"].startswith(os.path.realpath(C.state)), ok
    b = C.wait_adapter("blob-bad", lambda a: a["status"]["phase"] == "Failed" and a)
    conds = {c["type"]: c for c in b["status"]["conditions"]}
    assert conds["Scheduled"]["reason"] == "ChecksumMismatch", conds
    assert b["status"]["instances"] == [], b
    for r in C.items("replicas").values():
        assert "blob-bad" not in engine_models(r["status"]["url"])
    f = C.wait_adapter("hf", lambda a: a["status"]["phase"] == "Failed" and a)
    msg = {c["type"]: c for c in f["status"]["conditions"]}["Scheduled"]
    assert msg["reason"] == "UnsupportedScheme" and "not supported yet" in msg["message"], msg
    wide = C.cli("get", "adapters", "-o", "wide").stdout
    assert "huggingface://org/some-lora" in wide, wide
    for n in ("blob-ok", "blob-bad", "hf"):
        assert C.cli("delete", "adapter", n).stdout.strip() == f"modeladapter/{n} deleted"
    h.wait_until(lambda: not ({"blob-ok", "blob-bad", "hf"} & set(C.items("adapters"))), 10,
                 "adapters deleted")


@h.check("watch: a snapshot at once and another on every change")
def _():
    import socket
    s = socket.create_connection(("127.0.0.1", C.port), timeout=10)
    s.sendall(f"GET /v1/watch HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              f"Authorization: Bearer {h.TOKENS[C.port]}\r\n\r\n".encode())
    buf = b""
    while buf.count(b"\n{") < 1 or b"snapshot" not in buf:
        buf += s.recv(65536)
    assert b"application/x-ndjson" in buf.split(b"\r\n\r\n")[0], buf[:300]
    C.apply(adapter("math", extra="  replicas: 1"), name="math.yaml")
    deadline = time.time() + 10
    seen = False
    while time.time() < deadline and not seen:
        buf += s.recv(65536)
        for line in buf.split(b"\n"):
            line = line.strip()
            if line.startswith(b"{") and line.endswith(b"}"):
                ev = json.loads(line)
                if ev["type"] == "snapshot":
                    names = {a["name"]: a for a in ev["adapters"]}
                    if "math" in names and names["math"]["instances"]:
                        seen = True
                        rep = [r for r in ev["replicas"] if r["name"] == names["math"]["instances"][0]][0]
                        assert rep["ready"] and "math" in rep["adapters"], rep
                        assert rep["url"].startswith("http://127.0.0.1:"), rep
                        assert names["math"]["baseModel"] == "base-7b", names
    s.close()
    assert seen, buf[-2000:]


@h.check("controller restart (SIGKILL) adopts running replicas: objects and placements kept")
def _():
    before = C.items("replicas")
    pids = {n: r["status"]["pid"] for n, r in before.items()}
    placed = {n: sorted(a["status"]["instances"]) for n, a in C.items("adapters").items()}
    C.p.p.kill()
    C.p.p.wait()
    assert all(alive(p) for p in pids.values()), "replicas died with the controller"
    C.start()
    after = C.wait_ready(2)
    assert {n: r["status"]["pid"] for n, r in after.items()} == pids
    assert all(r["status"]["adopted"] for r in after.values()), after
    h.wait_until(lambda: {n: sorted(a["status"]["instances"]) for n, a in
                          C.items("adapters").items()} == placed, 10, "same placements")
    assert C.get("deployments", "base")["metadata"]["generation"] == 1


@h.check("controller restart (SIGTERM) stops replicas, and the next one brings everything back")
def _():
    pids = [r["status"]["pid"] for r in C.items("replicas").values()]
    C.stop()
    assert "stopping replicas" in C.p.text()
    h.wait_until(lambda: not any(alive(p) for p in pids), 10, "replicas stopped")
    C.start()
    C.wait_ready(2)
    h.wait_until(lambda: all(a["status"]["phase"] == "Running"
                             for a in C.items("adapters").values()), 20, "adapters placed again")
    assert set(C.items("adapters")) == {"sql", "chat", "math"}


@h.check("placement packs within each replica's adapter capacity and reports NoCapacity")
def _():
    # capacity 2 per replica, 2 replicas: chat(2) + sql(1) + math(1) = 4 slots, full
    C.apply(DEPLOY % {"replicas": 2, "cap": 2}, name="cap.yaml")
    # a spec change rolls the replicas one at a time onto the new generation
    h.wait_until(lambda: all(r["status"]["ready"] and "2" == r["spec"]["command"][
        r["spec"]["command"].index("--max-cpu-loras") + 1] for r in C.items("replicas").values())
        and len(C.items("replicas")) == 2, 40, "rolled to maxCpuLoras 2")
    h.wait_until(lambda: all(a["status"]["phase"] == "Running"
                             for a in C.items("adapters").values()), 20, "re-placed")
    C.apply(adapter("extra", extra="  replicas: 1"), name="extra.yaml")
    def nocap(a):
        conds = {c["type"]: c for c in a["status"]["conditions"]}
        return (a["status"]["phase"] == "Pending" and
                conds.get("Scheduled", {}).get("reason") == "NoCapacity" and a)
    try:
        a = C.wait_adapter("extra", nocap, what="extra Pending with NoCapacity")
    except AssertionError:
        print(json.dumps(C.get("adapters"), indent=1)[:6000], C.cli("get", "pods").stdout)
        raise
    assert "full" in {c["type"]: c for c in a["status"]["conditions"]}["Scheduled"]["message"]
    for r in C.items("replicas").values():
        assert len(r["status"]["adapters"]) <= 2, r
    # a request waits for it (a gateway wakes it): the least recently used adapter idle
    # for --evict-idle-min makes room (scaled to zero early)
    time.sleep(1.2)
    st, _, _ = h.request("POST", C.port, "/v1/adapters/extra/wake")
    assert st == 202
    C.wait_adapter("extra", lambda a: a["status"]["phase"] == "Running" and a,
                   what="extra placed after an eviction")
    scaled = [n for n, a in C.items("adapters").items() if a["status"]["phase"] == "Scaled"]
    assert len(scaled) == 1, scaled
    assert h.metric_value(h.metrics(C.port), "brix_controller_adapter_evictions_total") == 1
    for r in C.items("replicas").values():
        assert len(r["status"]["adapters"]) <= 2, r
    C.cli("delete", "adapter", "extra")
    h.wait_until(lambda: "extra" not in C.items("adapters"), 10, "extra deleted")
    h.request("POST", C.port, f"/v1/adapters/{scaled[0]}/wake")
    C.wait_adapter(scaled[0], lambda a: a["status"]["phase"] == "Running" and a,
                   what="the evicted adapter back")
    C.cli("delete", "adapter", "math")


@h.check("a new artifact is reloaded where the old one is loaded; labels alone roll nothing")
def _():
    C.apply(adapter("sql", url="file://adapters/sql-v2", extra="  replicas: 1"), name="v2.yaml")

    def reloaded():
        a = C.get("adapters", "sql")
        if a["status"]["phase"] != "Running" or not a["status"]["instances"]:
            return False
        url = C.get("replicas", a["status"]["instances"][0])["status"]["url"]
        return engine_models(url)["sql"]["root"].endswith("/adapters/sql-v2")
    h.wait_until(reloaded, 20, "sql served from sql-v2")
    assert C.get("adapters", "sql")["metadata"]["generation"] == 2
    before = {n: r["status"]["pid"] for n, r in C.items("replicas").items()}
    gen = C.get("deployments", "base")["metadata"]["generation"]
    r = C.apply((DEPLOY % {"replicas": 2, "cap": 2}).replace("{team: infra}",
                                                             "{team: infra, tier: gold}"),
                name="labels.yaml")
    assert r.stdout.strip() == "modeldeployment/base configured", r.stdout
    time.sleep(1)
    after = C.items("replicas")
    assert {n: r["status"]["pid"] for n, r in after.items()} == before, "labels restarted replicas"
    assert all(r["metadata"]["labels"]["tier"] == "gold" for r in after.values()), after
    assert C.get("deployments", "base")["metadata"]["generation"] == gen
    # fields the controller owns are not taken from the input
    r = C.apply(adapter("ghost").replace("metadata:\n", "metadata:\n  deletionTimestamp: "
                                          "\"2020-01-01T00:00:00Z\"\n  generation: 7\n"),
                name="ghost.yaml")
    time.sleep(0.5)
    g = C.get("adapters", "ghost")
    assert g["metadata"]["generation"] == 1 and "deletionTimestamp" not in g["metadata"], g
    C.cli("delete", "adapter", "ghost")
    st, hd, _ = h.request("GET", C.port, "/v1/adapters/sql/wake")
    assert st == 405 and hd.get("allow") == "POST", (st, hd)


@h.check("scale to zero after idleTTL; a wake loads it again; activity keeps it loaded")
def _():
    C.apply(adapter("math", extra="  replicas: 1\n  idleTTL: 1s"), name="ttl.yaml")
    C.wait_adapter("math", lambda a: a["status"]["phase"] == "Scaled" and
                   not a["status"]["instances"] and a, timeout=30)
    for r in C.items("replicas").values():
        assert "math" not in engine_models(r["status"]["url"]), "scaled adapter still loaded"
    st, _, b = h.request("POST", C.port, "/v1/adapters/math/wake")
    assert st == 202 and json.loads(b)["name"] == "math", (st, b)
    C.wait_adapter("math", lambda a: a["status"]["phase"] == "Running" and a)
    m = h.metrics(C.port)
    assert h.metric_value(m, "brix_controller_adapter_wakes_total") >= 1, m
    assert h.metric_value(m, "brix_controller_adapter_scale_to_zero_total") >= 1, m
    st, _, _ = h.request("POST", C.port, "/v1/adapters/nope/wake")
    assert st == 404
    st, _, _ = h.request("POST", C.port, "/v1/activity", raw_body=b"[1]",
                         headers={"content-type": "application/json"})
    assert st == 400


@h.check("delete a deployment: its replicas stop; API errors are OpenAI-style")
def _():
    pids = [r["status"]["pid"] for r in C.items("replicas").values()]
    st, _, b = h.request("DELETE", C.port, "/v1/deployments/base")
    assert st == 200 and json.loads(b)["result"] == "deleted", b
    h.wait_until(lambda: not C.items("replicas") and not C.items("deployments"), 20,
                 "deployment gone")
    h.wait_until(lambda: not any(alive(p) for p in pids), 10, "processes gone")
    st, _, b = h.request("DELETE", C.port, "/v1/deployments/base")
    assert st == 404 and json.loads(b)["error"]["code"] == "not_found", b
    st, _, _ = h.request("PUT", C.port, "/v1/adapters")
    assert st == 405
    m = h.metrics(C.port)
    assert h.metric_value(m, "brix_controller_adapter_loads_total", {"result": "ok"}) >= 4, m


@h.check("a second controller on the same state directory refuses to start")
def _():
    p = h.Proc(["controller", "--port", "0", "--state-dir", C.state], name="controller-2")
    rc = p.p.wait(10)
    assert rc == 1 and "is in use by another controller" in p.text(), p.text()


@h.check("--keep-replicas: the controller exits and leaves replicas for the next one")
def _():
    k = Controller(extra=["--keep-replicas"])
    k.apply((DEPLOY % {"replicas": 1, "cap": 2}).replace("name: base", "name: kept"),
            name="kept.yaml")
    pid = k.wait_ready(1)["kept-0"]["status"]["pid"]
    k.stop()  # exit code 0 within the harness' timeout, logs clean
    assert alive(pid), "--keep-replicas stopped the replica"
    k.extra = []
    k.start()
    assert k.wait_ready(1)["kept-0"]["status"]["pid"] == pid
    k.stop()
    h.wait_until(lambda: not alive(pid), 10, "replica stopped by a normal exit")


@h.check("replica logs: written per replica, and free of errors and sanitizer reports")
def _():
    C.stop()
    logs = os.path.join(C.state, "logs")
    names = sorted(os.listdir(logs))
    assert "base-0.log" in names and "base-1.log" in names, names
    for n in names:
        text = open(os.path.join(logs, n), errors="replace").read()
        assert "brix controller starts base-" in text, text[:300]
        bad = [l for l in text.splitlines() if "Sanitizer" in l or "runtime error:" in l
               or " ERROR " in l]
        assert not bad, (n, bad[:10])


h.run()
