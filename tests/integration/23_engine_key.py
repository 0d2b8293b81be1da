"""The engine key (issue 11): every engine replica the controller starts needs a credential on its
/v1 routes, so no local process or web page can load, unload or run inference on a replica
behind the controller's and the gateway's back. The key goes to the replicas in VLLM_API_KEY
(never in argv); the controller and the gateway send it; /health and /metrics stay open."""
import atexit
import json
import os
import re
import signal
import stat
import subprocess
import tempfile

import harness as h

TMP = tempfile.mkdtemp(prefix="brix-ek-")
for name in ("sql-lora", "new-lora"):
    os.makedirs(os.path.join(TMP, "adapters", name), exist_ok=True)
    with open(os.path.join(TMP, "adapters", name, "adapter_config.json"), "w") as f:
        json.dump({"peft_type": "LORA", "r": 8}, f)

GW, API = h.free_port(), h.free_port()
STATE = os.path.join(TMP, "state")
KEYFILE = os.path.join(STATE, "engine-key")
CFG = os.path.join(TMP, "local.yaml")
with open(CFG, "w") as f:
    f.write(f"""
apiVersion: brix.dev/v1alpha1
kind: Cluster
metadata: {{name: ek}}
spec:
  gateway: {{port: 1, args: [--health-interval, 100ms]}}
  controller:
    port: 2
    stateDir: {STATE}
    args: [--health-interval, 200ms, --reconcile-interval, 200ms, --stop-grace, 3s,
           --unload-drain, 100ms]
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
  replicas: 2
""")

# the attacker's requests: no Authorization at all (a no-cors fetch cannot set one)
NOAUTH = {"authorization": ""}

UP = h.Proc(["up", "-c", CFG, "--port", str(GW), "--api-port", str(API)], name="up")


@atexit.register
def _cleanup():
    if UP.p.poll() is None:
        UP.p.send_signal(signal.SIGINT)
        try:
            UP.p.wait(60)
        except Exception:
            UP.p.kill()


def cli(*args, want=0):
    r = subprocess.run([h.BRIX] + list(args) + ["--state-dir", STATE], capture_output=True,
                       text=True, timeout=60,
                       env=dict(os.environ, BRIX_SERVER=f"http://127.0.0.1:{API}"), cwd=TMP)
    if want is not None:
        assert r.returncode == want, (args, r.returncode, r.stdout, r.stderr)
    return r


def chat(port, model, headers=None):
    body = {"model": model, "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": 4}
    return h.request("POST", port, "/v1/chat/completions", body, headers=headers, timeout=60)


def replicas():
    st, _, b = h.request("GET", API, "/v1/replicas")
    assert st == 200, (st, b)
    return json.loads(b)["items"]


def replica_models(port, key):
    st, _, b = h.request("GET", port, "/v1/models", headers={"authorization": f"Bearer {key}"})
    assert st == 200, (st, b)
    return {m["id"] for m in json.loads(b)["data"]}


KEY = None


@h.check("brix up makes a private engine key and the fleet comes up with it")
def _():
    global KEY
    h.wait_until(lambda: "brix is up." in UP.text() or UP.p.poll() is not None, 90, "the banner")
    assert "brix is up." in UP.text(), UP.text()
    h.TOKENS[API] = open(os.path.join(STATE, "token")).read().strip()
    st = os.stat(KEYFILE)
    assert stat.S_IMODE(st.st_mode) == 0o600, oct(st.st_mode)
    KEY = open(KEYFILE).read().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", KEY), KEY
    assert KEY not in UP.text(), "the key itself is never printed"
    reps = replicas()
    assert len(reps) == 2 and all(r["status"]["ready"] for r in reps), reps
    # the controller renders replica commands: the key is not in them (it is not in argv at all)
    assert KEY not in json.dumps(reps)
    # both replicas hold sql-lora (the controller loaded it with the key)
    h.wait_until(lambda: all("sql-lora" in replica_models(r["status"]["port"], KEY)
                             for r in replicas()), 20, "sql-lora on both replicas")


@h.check("a local process without the key cannot unload an adapter or run inference on a replica")
def _():
    for r in replicas():
        port = r["status"]["port"]
        body = {"lora_name": "sql-lora"}
        # a web page's no-cors fetch: a Blob body, no Content-Type, no Authorization
        st, _, b = h.request("POST", port, "/v1/unload_lora_adapter", headers=NOAUTH,
                             raw_body=json.dumps(body).encode())
        assert st == 401, (st, b)
        st, _, b = h.request("POST", port, "/v1/unload_lora_adapter", body,
                             headers={"authorization": "Bearer wrong-key-0123456789"})
        assert st == 401, (st, b)
        st, _, b = h.request("POST", port, "/v1/load_lora_adapter",
                             {"lora_name": "evil", "lora_path": TMP}, headers=NOAUTH)
        assert st == 401, (st, b)
        st, _, b = chat(port, "llama-3-8b", headers=NOAUTH)
        assert st == 401, (st, b)
        st, _, b = h.request("GET", port, "/v1/models", headers=NOAUTH)
        assert st == 401, (st, b)
        # the adapter is still there, and nothing was loaded
        ids = replica_models(port, KEY)
        assert "sql-lora" in ids and "evil" not in ids, ids
        # what stays open: health checks and Prometheus scrapes
        st, _, _ = h.request("GET", port, "/health", headers=NOAUTH)
        assert st == 200, st
        st, _, b = h.request("GET", port, "/metrics", headers=NOAUTH)
        assert st == 200 and b"vllm:" in b, (st, b[:200])


@h.check("no process's argv holds the engine key")
def _():
    seen = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except OSError:
            continue
        assert KEY.encode() not in cmd, (pid, cmd)
        if b"engine-sim" in cmd and str(replicas()[0]["status"]["port"]).encode() in cmd:
            seen += 1
    assert seen == 1, "the scan saw the replica it should have"


@h.check("the gateway serves inference with the engine key, and takes no client's key to engines")
def _():
    for model in ("llama-3-8b", "sql-lora"):
        st, _, b = chat(GW, model)
        assert st == 200, (model, st, b)
        # a client's own bearer is not what reaches the engine (that would be 401 there)
        st, _, b = chat(GW, model, headers={"authorization": "Bearer client-key-0123456789"})
        assert st == 200, (model, st, b)
    st, _, b = h.request("GET", GW, "/v1/models")
    ids = {m["id"] for m in json.loads(b)["data"]}
    assert {"llama-3-8b", "sql-lora"} <= ids, ids
    # the gateway's own engine calls (/v1/models) were not refused
    gwlog = open(os.path.join(STATE, "logs", "gateway.log"), errors="replace").read()
    assert "/v1/models failed" not in gwlog, gwlog[-3000:]
    assert re.search(r"pod llama-0 serves [1-9]", gwlog), gwlog[-3000:]


@h.check("the controller still loads and unloads adapters: apply makes one callable, delete unloads")
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
    assert cli("apply", "-f", path).stdout.strip() == "modeladapter/new-lora created"
    h.wait_until(lambda: chat(GW, "new-lora")[0] == 200, 20, "new-lora served by the gateway")
    holders = [r["status"]["port"] for r in replicas()
               if "new-lora" in replica_models(r["status"]["port"], KEY)]
    assert len(holders) == 1, holders
    cli("delete", "adapter", "new-lora")
    h.wait_until(lambda: "new-lora" not in replica_models(holders[0], KEY), 20,
                 "new-lora unloaded from its replica")
    h.wait_until(lambda: chat(GW, "new-lora")[0] == 404, 20, "new-lora gone from the gateway")
    ctllog = open(os.path.join(STATE, "logs", "controller.log"), errors="replace").read()
    assert "HTTP 401" not in ctllog, ctllog[-3000:]


def bearer(k):
    return {"authorization": f"Bearer {k}"}


@h.check("engine-sim takes VLLM_API_KEY from its environment, as vLLM; --api-key wins over it")
def _():
    env_key, flag_key = "env-key-" + "a" * 24, "flag-key-" + "b" * 24
    e1 = h.engine(env={"VLLM_API_KEY": env_key}, name="engine-env")
    e2 = h.engine(["--api-key", flag_key], env={"VLLM_API_KEY": env_key}, name="engine-flag")
    try:
        assert h.request("GET", e1.port, "/v1/models", headers=NOAUTH)[0] == 401
        assert h.request("GET", e1.port, "/v1/models", headers=bearer(env_key))[0] == 200
        assert h.request("GET", e2.port, "/v1/models", headers=bearer(env_key))[0] == 401
        assert h.request("GET", e2.port, "/v1/models", headers=bearer(flag_key))[0] == 200
        assert h.request("GET", e1.port, "/health", headers=NOAUTH)[0] == 200
    finally:
        e1.stop()
        e2.stop()


@h.check("gateway --engine-api-key-file: the key is sent without tenancy, a client's bearer "
         "never, and a reload reads the file again")
def _():
    k1, k2 = "one-engine-key-" + "1" * 20, "two-engine-key-" + "2" * 20
    kf = os.path.join(TMP, "gw-engine-key")
    with open(kf, "w") as f:
        f.write(k1 + "\n")
    eng = h.engine(env={"VLLM_API_KEY": k1}, name="engine-k")
    gw = h.gateway([eng], ["--engine-api-key-file", kf, "--models-refresh-interval", "100ms"])
    try:
        h.wait_until(lambda: chat(gw.port, "llama-3-8b")[0] == 200, 10, "served with the key")
        # the client's own bearer (even the engine's key itself) is replaced, not forwarded
        for k in ("client-key-0123456789", k1, k2):
            st, _, b = chat(gw.port, "llama-3-8b", headers=bearer(k))
            assert st == 200, (k, st, b)
        st, _, b = h.request("POST", gw.port, "/v1/completions",
                             {"model": "llama-3-8b", "prompt": "hi", "max_tokens": 2})
        assert st == 200, (st, b)
        # the engine now wants k2: restart it with k2 on the same port; the gateway
        # still sends k1 until the file says k2 and it reloads
        port = eng.port
        eng.stop()
        eng = h.engine(port=port, env={"VLLM_API_KEY": k2}, name="engine-k2")
        h.wait_until(lambda: chat(gw.port, "llama-3-8b")[0] != 200, 10, "k1 refused")
        with open(kf, "w") as f:
            f.write(k2 + "\n")
        gw.p.send_signal(signal.SIGHUP)
        h.wait_until(lambda: chat(gw.port, "llama-3-8b")[0] == 200, 10, "k2 after the reload")
        assert "configuration reloaded" in gw.text(), gw.text()[-2000:]
    finally:
        gw.stop()
        eng.stop()


def lone_controller(extra, name):
    """A controller with one engine-sim replica, started with VLLM_API_KEY already in its own
    environment (an operator's shell): what its replica then requires is the controller's
    choice, not the inherited value."""
    state = tempfile.mkdtemp(prefix="state-", dir=TMP)
    port = h.free_port()
    c = h.Proc(["controller", "--port", str(port), "--state-dir", state, "--health-interval",
                "200ms", "--reconcile-interval", "200ms", "--stop-grace", "3s"] + extra,
               name=name, env={"VLLM_API_KEY": "inherited-key-0123456789"})
    c.wait_http(port, "/readyz")
    h.TOKENS[port] = open(os.path.join(state, "token")).read().strip()
    dep = {"apiVersion": "model.brix.dev/v1alpha1", "kind": "ModelDeployment",
           "metadata": {"name": "solo"},
           "spec": {"model": "solo-1b", "replicas": 1, "engine": {"args": ["--time-scale", "0.05"]}}}
    st, _, b = h.request("POST", port, "/v1/apply", dep)
    assert st == 200, (st, b)

    def ready():
        items = json.loads(h.request("GET", port, "/v1/replicas")[2])["items"]
        return items and items[0]["status"]["ready"] and items[0]["status"]["port"]
    return c, state, h.wait_until(ready, 30, "the replica ready")


@h.check("--engine-key-file: replicas take the operator's key (an inherited VLLM_API_KEY is "
         "replaced); --no-engine-key: replicas have none (an inherited one is removed)")
def _():
    own = os.path.join(TMP, "my-engine-key")
    with open(own, "w") as f:
        f.write("operator-engine-key-" + "7" * 20 + "\n")
    os.chmod(own, 0o600)
    c, state, port = lone_controller(["--engine-key-file", own], "controller-ekf")
    try:
        assert not os.path.exists(os.path.join(state, "engine-key"))
        assert h.request("GET", port, "/v1/models",
                         headers=bearer("inherited-key-0123456789"))[0] == 401
        assert h.request("GET", port, "/v1/models", headers=NOAUTH)[0] == 401
        assert h.request("GET", port, "/v1/models",
                         headers=bearer("operator-engine-key-" + "7" * 20))[0] == 200
    finally:
        c.stop()
    c, state, port = lone_controller(["--no-engine-key"], "controller-nokey")
    try:
        assert not os.path.exists(os.path.join(state, "engine-key"))
        assert h.request("GET", port, "/v1/models", headers=NOAUTH)[0] == 200
    finally:
        c.stop()
    bad = h.Proc(["controller", "--port", str(h.free_port()), "--no-engine-key",
                  "--engine-key-file", own], name="controller-bad")
    assert bad.p.wait(30) == 2 and "exclude each other" in bad.text(), bad.text()


@h.check("brix up stops everything cleanly")
def _():
    UP.stop(signal.SIGINT, timeout=60)
    for name in ("controller.log", "gateway.log"):
        text = open(os.path.join(STATE, "logs", name), errors="replace").read()
        bad = [ln for ln in text.splitlines() if re.search(r"\sERROR\s", ln)
               or "Sanitizer" in ln or "runtime error:" in ln]
        assert not bad, (name, bad[:10])


h.run()
