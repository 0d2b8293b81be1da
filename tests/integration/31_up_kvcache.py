"""brix up with the KV store (issue 14, "done when"): a prompt prefilled on one replica is
served on another with a store hit in both engines' metrics; the store's token never shows in
any argv; the gateway counts the store's blocks when it routes."""
import atexit
import json
import os
import re
import signal
import socket
import tempfile

import harness as h

TMP = tempfile.mkdtemp(prefix="brix-upkv-")
GW, API, KV, KVH = h.free_port(), h.free_port(), h.free_port(), h.free_port()
STATE = os.path.join(TMP, "state")
CFG = os.path.join(TMP, "local.yaml")
with open(CFG, "w") as f:
    f.write(f"""
apiVersion: brix.dev/v1alpha1
kind: Cluster
metadata: {{name: test}}
spec:
  gateway: {{port: 1, args: [--health-interval, 100ms, --scrape-interval, 100ms]}}
  controller:
    port: 2
    stateDir: {STATE}
    args: [--health-interval, 200ms, --reconcile-interval, 200ms, --stop-grace, 3s]
  kvcache: {{port: {KV}, httpPort: {KVH}, capacity: 256MiB}}
---
apiVersion: model.brix.dev/v1alpha1
kind: ModelDeployment
metadata: {{name: llama}}
spec:
  model: llama-3-8b
  replicas: 2
  engine: {{args: [--time-scale, "0.2", --enable-prefix-caching]}}
""")

UP = h.Proc(["up", "-c", CFG, "--port", str(GW), "--api-port", str(API)], name="up")


@atexit.register
def _cleanup():
    if UP.p.poll() is None:
        UP.p.send_signal(signal.SIGINT)
        try:
            UP.p.wait(60)
        except Exception:
            UP.p.kill()


REPLICAS = {}
PROMPT = " ".join(f"w{i}" for i in range(300))  # ~600 tokens: 37 full blocks of 16


def engine_metrics(port):
    return h.request("GET", port, "/metrics")[2].decode()


def mv(port, name, labels=None):
    return h.metric_value(engine_metrics(port), name, labels) or 0.0


def complete(port, prompt, headers=None):
    body = {"model": "llama-3-8b", "prompt": prompt, "max_tokens": 2}
    st, hd, b = h.request("POST", port, "/v1/completions", body, headers=headers, timeout=60)
    assert st == 200, (st, b[:500])
    return hd, json.loads(b)


@h.check("brix up starts the KV store first and gives every replica its address and token file")
def _():
    h.wait_until(lambda: "brix is up." in UP.text() or UP.p.poll() is not None, 120,
                 "the banner")
    assert "brix is up." in UP.text(), UP.text()
    assert f"starting the KV store (127.0.0.1:{KV}" in UP.text(), UP.text()
    h.TOKENS[API] = open(os.path.join(STATE, "token")).read().strip()
    kvtoken = open(os.path.join(STATE, "kvcache-token")).read().strip()
    assert len(kvtoken) >= 32
    st, _, b = h.request("GET", API, "/v1/replicas")
    assert st == 200, (st, b)
    items = json.loads(b)["items"]
    assert len(items) == 2, items
    for r in items:
        REPLICAS[r["metadata"]["name"]] = r["status"]["port"]
        pid = r["status"]["pid"]
        cmd = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
        i = cmd.index(b"--kv-transfer-config")
        cfg = json.loads(cmd[i + 1])
        assert cfg["kv_connector"] == "BrixConnector" and cfg["kv_role"] == "kv_both", cfg
        extra = cfg["kv_connector_extra_config"]
        assert extra["servers"] == f"127.0.0.1:{KV}", extra
        assert os.path.isabs(extra["token_file"]) and \
            open(extra["token_file"]).read().strip() == kvtoken, extra
    # no argv of anything brix up started carries the store's token
    for child in os.listdir("/proc"):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as f:
                assert kvtoken.encode() not in f.read(), child
        except (FileNotFoundError, ProcessLookupError, PermissionError, NotADirectoryError):
            pass
    # the store answers /healthz and /metrics on its HTTP port
    assert h.request("GET", KVH, "/healthz")[0] == 200
    text = h.request("GET", KVH, "/metrics")[2].decode()
    assert h.metric_value(text, "brix_kvcache_capacity_bytes") == 256 * 2**20, text[:2000]


@h.check("a prompt prefilled on one replica is loaded from the store by the other")
def _():
    key = open(os.path.join(STATE, "engine-key")).read().strip()
    auth = {"authorization": f"Bearer {key}"}
    (na, pa), (nb, pb) = sorted(REPLICAS.items())
    _, ra = complete(pa, PROMPT, auth)
    ntok = ra["usage"]["prompt_tokens"]
    full = ntok // 16
    assert full >= 30, ra["usage"]
    # A looked the prompt up (a miss), then saved its full blocks to the store
    assert mv(pa, "vllm:external_prefix_cache_queries_total") >= ntok - 16
    assert mv(pa, "vllm:external_prefix_cache_hits_total") == 0
    h.wait_until(lambda: mv(pa, "brix_engine_kv_saved_blocks_total") >= full, 20,
                 f"{na} saved {full} blocks")
    kvm = h.request("GET", KVH, "/metrics")[2].decode()
    assert h.metric_value(kvm, "brix_kvcache_objects") >= full, kvm[:3000]
    # B has never seen it: it loads the blocks instead of computing them
    _, rb = complete(pb, PROMPT, auth)
    # whole blocks, most of the prompt (a load keeps what arrived within timeout_ms: on a
    # loaded machine under ASan the tail may be recomputed instead)
    hits = mv(pb, "vllm:external_prefix_cache_hits_total")
    assert hits % 16 == 0 and full * 16 // 2 <= hits <= full * 16, (hits, full)
    assert mv(pb, "brix_engine_kv_loaded_blocks_total") >= hits // 16
    assert mv(pb, "brix_engine_kv_checksum_errors_total") == 0
    assert rb["usage"]["prompt_tokens"] == ntok, rb["usage"]
    kvm = h.request("GET", KVH, "/metrics")[2].decode()
    assert h.metric_value(kvm, "brix_kvcache_hits_total") >= hits // 16, kvm[:3000]


@h.check("the gateway counts store-resident blocks when it routes (kvStore from the controller)")
def _():
    prompt = " ".join(f"g{i}" for i in range(400))
    hd, _ = complete(GW, prompt, {"x-brix-explain": "1"})
    first = hd["target-pod"]
    # the second time, the explanation reports the prompt's blocks in the shared store
    hd, _ = complete(GW, prompt, {"x-brix-explain": "1"})
    route = hd.get("x-brix-route", "")
    m = re.search(r"kv-store=(\d+)/(\d+)", route)
    assert m and int(m.group(1)) == int(m.group(2)) > 20, route
    assert hd["target-pod"] == first, route  # a local hit still beats a store load


@h.check("brix up stops the store after the replicas, and the store logged no error")
def _():
    UP.p.send_signal(signal.SIGINT)
    UP.p.wait(90)
    assert UP.p.returncode == 0, UP.text()[-2000:]
    log = open(os.path.join(STATE, "logs", "kvcache.log"), errors="replace").read()
    assert "ERROR" not in log, log[-2000:]
    for port in (KV, KVH):  # the store is gone with the rest
        s = socket.socket()
        try:
            assert s.connect_ex(("127.0.0.1", port)) != 0, port
        finally:
            s.close()


h.run()
