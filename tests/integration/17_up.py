"""brix up: the local cluster from one file — controller, replicas, adapters and a gateway
discovering them through the controller's watch; used as a new user would (issue 7)."""
import atexit
import json
import os
import re
import signal
import subprocess
import tempfile
import time

import harness as h

TMP = tempfile.mkdtemp(prefix="brix-up-")
for name in ("sql-lora", "chat-lora", "new-lora", "cold-lora"):
    os.makedirs(os.path.join(TMP, "adapters", name), exist_ok=True)
    with open(os.path.join(TMP, "adapters", name, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 8}, f)

GW, API = h.free_port(), h.free_port()
STATE = os.path.join(TMP, "state")
CFG = os.path.join(TMP, "local.yaml")
with open(CFG, "w") as f:
    f.write(f"""
apiVersion: brix.dev/v1alpha1
kind: Cluster
metadata: {{name: test}}
spec:
  gateway: {{port: 1, args: [--health-interval, 100ms]}}
  controller:
    port: 2
    stateDir: {STATE}
    args: [--health-interval, 200ms, --reconcile-interval, 200ms, --stop-grace, 3s]
---
apiVersion: model.brix.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: llama}}
spec:
  model: llama-3-8b
  replicas: 2
  engine: {{args: [--time-scale, "0.05"]}}
  lora: {{maxLoras: 2, maxCpuLoras: 4}}
---
apiVersion: model.aibrix.ai/v1alpha1
kind: ModelAdapter
metadata: {{name: sql-lora}}
spec:
  baseModel: llama-3-8b
  podSelector: {{matchLabels: {{model.aibrix.ai/name: llama-3-8b}}}}
  artifactURL: file://adapters/sql-lora
  replicas: 1
---
apiVersion: model.aibrix.ai/v1alpha1
kind: ModelAdapter
metadata: {{name: chat-lora}}
spec:
  baseModel: llama-3-8b
  podSelector: {{matchLabels: {{model.aibrix.ai/name: llama-3-8b}}}}
  artifactURL: file://adapters/chat-lora
""")

# --port / --api-port override the file's (deliberately unusable) ports
UP = h.Proc(["up", "-c", CFG, "--port", str(GW), "--api-port", str(API)], name="up")


@atexit.register
def _cleanup():
    # a failed check exits early: brix up still stops everything it started
    if UP.p.poll() is None:
        UP.p.send_signal(signal.SIGINT)
        try:
            UP.p.wait(60)
        except Exception:
            UP.p.kill()


def cli(*args, want=0):
    # the token comes from the state directory, as after `make run` (there: .brix)
    r = subprocess.run([h.BRIX] + list(args) + ["--state-dir", STATE], capture_output=True,
                       text=True, timeout=60,
                       env=dict(os.environ, BRIX_SERVER=f"http://127.0.0.1:{API}"), cwd=TMP)
    if want is not None:
        assert r.returncode == want, (args, r.returncode, r.stdout, r.stderr)
    return r


def chat(model, timeout=60, stream=False):
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 4}
    if stream:
        body["stream"] = True
    return h.request("POST", GW, "/v1/chat/completions", body, timeout=timeout)


def replica_pids():
    st, _, b = h.request("GET", API, "/v1/replicas")
    return [r["status"]["pid"] for r in json.loads(b)["items"]]


@h.check("brix up prints where the API and status page are once the fleet serves")
def _():
    h.wait_until(lambda: "brix is up." in UP.text() or UP.p.poll() is not None, 90,
                 "the banner")
    out = UP.text()
    assert "brix is up." in out, out
    assert f"http://127.0.0.1:{GW}/v1" in out and f"http://127.0.0.1:{API}" in out, out
    assert "status page" in out and "logs" in out, out
    token = open(os.path.join(STATE, "token")).read().strip()
    assert token not in out, "the token itself is never printed"
    assert h.request("GET", API, "/v1/replicas")[0] == 401  # the API needs it
    h.TOKENS[API] = token
    # the status page: the one-time login link sets a cookie, then / renders
    m = re.search(rf"status page\s+http://127\.0\.0\.1:{API}(/login\?code=\w+)", out)
    assert m, out
    noauth = {"authorization": ""}
    assert h.request("GET", API, "/", headers=noauth)[0] == 401
    st, hd, _ = h.request("GET", API, m.group(1), headers=noauth)
    assert st == 303 and "HttpOnly" in hd.get("set-cookie", ""), (st, hd)
    cookie = hd["set-cookie"].split(";")[0]
    st, hd, b = h.request("GET", API, "/", headers=dict(noauth, cookie=cookie))
    assert st == 200 and hd["content-type"].startswith("text/html"), (st, hd)
    assert b"llama-0" in b and b"sql-lora" in b, b[:2000]
    # the file has no engine command, so brix up did not allow them: an API apply of one is
    # refused (403) even with the token
    evil = {"apiVersion": "model.brix.dev/v1alpha1", "kind": "ModelDeployment",
            "metadata": {"name": "evil"},
            "spec": {"engine": {"command": ["sh", "-c", "touch /tmp/x # {port}"]}}}
    st, _, b = h.request("POST", API, "/v1/apply", evil)
    assert st == 403 and b"spec.engine.command" in b, (st, b)
    gwlog = open(os.path.join(STATE, "logs", "gateway.log"), errors="replace").read()
    assert "refused" not in gwlog, gwlog[-2000:]
    for pid in (UP.p.pid,):  # no token in any argv brix up starts (ps shows argv to all)
        for child in os.listdir("/proc"):
            try:
                with open(f"/proc/{child}/cmdline", "rb") as f:
                    assert token.encode() not in f.read(), child
            except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
                pass


@h.check("the gateway serves the base model and both adapters from the controller's fleet")
def _():
    st, _, b = h.request("GET", GW, "/v1/models")
    ids = {m["id"] for m in json.loads(b)["data"]}
    assert {"llama-3-8b", "sql-lora", "chat-lora"} <= ids, ids
    pods = set()
    for model in ("llama-3-8b", "sql-lora", "chat-lora"):
        st, hd, b = chat(model)
        assert st == 200, (model, st, b)
        assert json.loads(b)["model"] == model, b
        assert re.fullmatch(r"llama-[01]", hd.get("target-pod", "")), hd
        pods.add(hd["target-pod"])
    st, _, b = chat("sql-lora", stream=True)
    assert st == 200 and b.rstrip().endswith(b"data: [DONE]"), b[-200:]
    sql = json.loads(cli("get", "adapter", "sql-lora", "-o", "json").stdout)
    # sql-lora has one instance: every request for it lands there
    for _ in range(4):
        st, hd, _ = chat("sql-lora")
        assert hd["target-pod"] == sql["status"]["instances"][0], (hd, sql["status"])
    table = cli("get", "adapters").stdout
    assert re.search(r"^chat-lora\s+llama-3-8b\s+Running\s+2\s+2\s+2\s+llama-0,llama-1", table,
                     re.M), table


@h.check("brix apply -f of a new ModelAdapter makes it callable within seconds")
def _():
    path = os.path.join(TMP, "new.yaml")
    with open(path, "w") as f:
        f.write("""apiVersion: model.aibrix.ai/v1alpha1
kind: ModelAdapter
metadata: {name: new-lora}
spec:
  baseModel: llama-3-8b
  podSelector: {matchLabels: {model.aibrix.ai/name: llama-3-8b}}
  artifactURL: file://adapters/new-lora
  replicas: 1
""")
    t0 = time.time()
    assert cli("apply", "-f", path).stdout.strip() == "modeladapter/new-lora created"
    h.wait_until(lambda: chat("new-lora", timeout=10)[0] == 200, 10, "new-lora served")
    assert time.time() - t0 < 10


@h.check("a request for a scaled-to-zero adapter waits while it loads, then succeeds")
def _():
    path = os.path.join(TMP, "cold.yaml")
    with open(path, "w") as f:
        f.write("""apiVersion: model.aibrix.ai/v1alpha1
kind: ModelAdapter
metadata: {name: cold-lora}
spec:
  baseModel: llama-3-8b
  podSelector: {matchLabels: {model.aibrix.ai/name: llama-3-8b}}
  artifactURL: file://adapters/cold-lora
  replicas: 1
  idleTTL: 1s
""")
    cli("apply", "-f", path)

    def scaled():
        a = json.loads(cli("get", "adapter", "cold-lora", "-o", "json").stdout)
        return a["status"]["phase"] == "Scaled" and not a["status"]["instances"]
    h.wait_until(scaled, 30, "cold-lora scaled to zero")
    st, _, b = h.request("GET", GW, "/v1/models")
    assert "cold-lora" in {m["id"] for m in json.loads(b)["data"]}, "registered adapter not listed"
    st, hd, b = chat("cold-lora", timeout=40)
    assert st == 200 and json.loads(b)["model"] == "cold-lora", (st, b)
    a = json.loads(cli("get", "adapter", "cold-lora", "-o", "json").stdout)
    assert a["status"]["instances"] == [hd["target-pod"]], (a["status"], hd)
    st, _, b = chat("no-such-model")
    assert st == 404, (st, b)


@h.check("adapters are drained from the gateway before they are unloaded: no request fails")
def _():
    # cold-lora on one replica, idleTTL 1s: keep asking for it while it is scaled to zero
    # and woken again, over and over; every answer must be a 200 (held while it loads)
    import threading
    bad, n = [], [0]
    stop = time.time() + 6

    def client():
        while time.time() < stop:
            st, _, b = chat("cold-lora", timeout=40)
            n[0] += 1
            if st != 200:
                bad.append((st, b[:200]))
            time.sleep(0.3 + 1.2 * (n[0] % 3 == 0))  # gaps longer than the idle TTL
    ts = [threading.Thread(target=client) for _ in range(2)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert n[0] >= 6 and not bad, (n[0], bad[:5])
    m = h.metrics(API)
    assert h.metric_value(m, "brix_controller_adapter_scale_to_zero_total") >= 1, m


@h.check("a killed replica: the gateway keeps serving, adapters come back on the new process")
def _():
    sql = json.loads(cli("get", "adapter", "sql-lora", "-o", "json").stdout)
    victim = sql["status"]["instances"][0]
    st, _, b = h.request("GET", API, f"/v1/replicas/{victim}")
    pid = json.loads(b)["status"]["pid"]
    os.kill(pid, signal.SIGKILL)
    ok = 0
    for _ in range(20):
        st, _, _ = chat("llama-3-8b", timeout=10)
        ok += st == 200
    assert ok == 20, ok

    def back():
        st, _, b = chat("sql-lora", timeout=10)
        r = json.loads(h.request("GET", API, f"/v1/replicas/{victim}")[2])["status"]
        return st == 200 and r["restarts"] == 1 and r["ready"]
    h.wait_until(back, 20, "sql-lora served again")


@h.check("Ctrl-C stops the gateway, the controller and every replica")
def _():
    pids = replica_pids()
    assert len(pids) == 2, pids
    UP.p.send_signal(signal.SIGINT)
    rc = UP.p.wait(60)
    assert rc == 0, UP.text()[-3000:]
    assert "brix up: stopped" in UP.text(), UP.text()[-2000:]
    for p in pids:
        h.wait_until(lambda: not os.path.exists(f"/proc/{p}") or
                     open(f"/proc/{p}/stat").read().split()[2] == "Z", 10, f"replica {p} gone")
    for port in (GW, API):
        try:
            h.request("GET", port, "/healthz", timeout=1)
            raise AssertionError(f"port {port} still answers")
        except OSError:
            pass
    for name in ("controller.log", "gateway.log"):
        text = open(os.path.join(STATE, "logs", name), errors="replace").read()
        bad = [l for l in text.splitlines() if "Sanitizer" in l or "runtime error:" in l
               or " ERROR " in l]
        assert not bad, (name, bad[:10])


@h.check("brix up rejects a bad file with file:line before starting anything")
def _():
    bad = os.path.join(TMP, "bad.yaml")
    with open(bad, "w") as f:
        f.write("apiVersion: brix.dev/v1alpha1\nkind: Cluster\nmetadata: {name: x}\n"
                "spec:\n  gateway: {prot: 1}\n")
    p = h.Proc(["up", "-c", bad], name="up-bad")
    assert p.p.wait(20) == 1
    assert "bad.yaml:5:13: gateway: unknown field" in p.text(), p.text()


h.run()
