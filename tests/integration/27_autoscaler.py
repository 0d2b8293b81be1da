"""PodAutoscaler on a real controller, gateway and engine-sims (issue 13): a burst scales a
deployment up and a quiet period scales it down through a drain; a replica killed while
draining loses no request; a deployment scaled to zero holds requests at the gateway and
serves them once a replica is up; bad objects are refused with file:line."""
import atexit
import json
import os
import signal
import subprocess
import tempfile
import threading
import time

import harness as h

TMP = tempfile.mkdtemp(prefix="brix-as-")
STATE = os.path.join(TMP, "state")


def write(name, text):
    p = os.path.join(TMP, name)
    with open(p, "w") as f:
        f.write(text)
    return p


class Cluster:
    def __init__(self):
        self.port = h.free_port()
        self.c = h.Proc(["controller", "--port", str(self.port), "--state-dir", STATE,
                         "--health-interval", "200ms", "--reconcile-interval", "200ms",
                         "--autoscale-interval", "300ms", "--drain-grace", "500ms",
                         "--drain-timeout", "20s", "--stop-grace", "3s"], name="controller")
        self.c.wait_http(self.port, "/readyz")
        with open(os.path.join(STATE, "token")) as f:
            h.TOKENS[self.port] = f.read().strip()
        self.g = h.gateway([], ["--controller", f"http://127.0.0.1:{self.port}",
                                "--controller-token-file", os.path.join(STATE, "token"),
                                "--engine-api-key-file", os.path.join(STATE, "engine-key"),
                                "--adapter-wake-timeout", "30s"], ready=False)
        # the gateway is ready once it has a pod: see the checks

    def cli(self, *args, want=0):
        r = subprocess.run([h.BRIX] + list(args) + ["--server", f"http://127.0.0.1:{self.port}",
                                                     "--state-dir", STATE], cwd=TMP,
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

    def replicas(self, deployment):
        return {r["metadata"]["name"]: r for r in self.get("replicas")["items"]
                if r["spec"]["deployment"] == deployment}

    def pa(self, name):
        return self.get("podautoscalers", name)


K = Cluster()


@atexit.register
def _cleanup():
    for p in (K.g, K.c):
        if p.p.poll() is None:
            p.p.send_signal(signal.SIGTERM)
            try:
                p.p.wait(20)
            except Exception:
                p.p.kill()


DEPLOY = """apiVersion: model.brix.dev/v1alpha1
kind: ModelDeployment
metadata: {name: %(name)s}
spec:
  model: %(name)s-8b
  replicas: %(replicas)d
  gpu: a100
  engine:
    args: [--output-len-dist, none, --startup-delay, "%(delay)s", --max-model-len, "4096"]
"""

APA = """apiVersion: autoscaling.aibrix.ai/v1alpha1
kind: PodAutoscaler
metadata:
  name: busy-apa
  annotations:
    autoscaling.aibrix.ai/scale-down-cooldown-window: "3s"
    apa.autoscaling.aibrix.ai/window: "1s"
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: busy}
  minReplicas: 1
  maxReplicas: 3
  scalingStrategy: APA
  metricsSources:
  - metricSourceType: pod
    protocolType: http
    port: "8000"
    path: metrics
    targetMetric: num_requests_running
    targetValue: "2"
"""


class Load:
    """n threads sending non-streaming chat requests (max_tokens tokens each) in a loop."""

    def __init__(self, model, n, max_tokens=120):
        self.model, self.max_tokens = model, max_tokens
        self.stop_ev = threading.Event()
        self.ok = 0
        self.failed = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, daemon=True) for _ in range(n)]
        for t in self.threads:
            t.start()

    def run(self):
        while not self.stop_ev.is_set():
            st, _, b = h.request("POST", K.g.port, "/v1/chat/completions", {
                "model": self.model, "max_tokens": self.max_tokens,
                "messages": [{"role": "user", "content": "keep the engine busy"}]}, timeout=60)
            with self.lock:
                if st == 200:
                    self.ok += 1
                else:
                    self.failed.append((st, b[:300]))

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(90)


@h.check("bad PodAutoscalers are refused with file:line and nothing is applied")
def _():
    K.apply(DEPLOY % {"name": "busy", "replicas": 1, "delay": "0"}, name="busy.yaml")
    bad = APA.replace("  maxReplicas: 3\n", "")
    r = K.apply(bad, want=1, name="bad.yaml")
    assert "bad.yaml:" in r.stderr and "maxReplicas" in r.stderr, r.stderr
    bad = APA.replace('"3s"', '"3 seconds"')
    r = K.apply(bad, want=1, name="bad2.yaml")
    assert "bad2.yaml:6:" in r.stderr and "scale-down-cooldown-window" in r.stderr, r.stderr
    assert K.get("podautoscalers")["items"] == []


@h.check("a burst scales a deployment up (APA on num_requests_running); get pa shows it")
def _():
    K.apply(APA, name="apa.yaml")
    twice = APA.replace("name: busy-apa", "name: busy-other")
    r = K.apply(twice, want=1, name="twice.yaml")
    assert "already scaled by PodAutoscaler 'busy-apa'" in r.stderr, r.stderr
    h.wait_until(lambda: len(K.replicas("busy")) == 1 and
                 all(x["status"]["ready"] for x in K.replicas("busy").values()), 30, "busy-0")
    K.g.wait_http(K.g.port, "/readyz")
    load = Load("busy-8b", 8)
    try:
        h.wait_until(lambda: K.pa("busy-apa")["status"]["desiredScale"] == 3, 30,
                     "scale-up to 3")
        h.wait_until(lambda: sum(1 for x in K.replicas("busy").values()
                                 if x["status"]["ready"]) == 3, 30, "3 ready replicas")
        st = K.pa("busy-apa")["status"]
        hist = st["scalingHistory"]
        assert hist and all(e["newScale"] > e["previousScale"] for e in hist), hist
        assert hist[0]["previousScale"] == 1 and hist[-1]["newScale"] == 3, hist
        assert st["metrics"][0]["name"] == "num_requests_running", st
        assert st["metrics"][0]["target"] == 2, st
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["ScalingActive"]["status"] == "True", conds
        t = K.cli("get", "pa").stdout.splitlines()
        assert t[0].split()[:3] == ["NAME", "TARGET", "STRATEGY"], t
        assert t[1].split()[:3] == ["busy-apa", "busy", "APA"], t
        dep = K.get("deployments", "busy")
        assert dep["status"]["desiredReplicas"] == 3 and dep["status"]["autoscaler"] == \
            "busy-apa", dep["status"]
        m = h.metrics(K.port)
        assert h.metric_value(m, "brix_autoscaler_desired_replicas",
                              {"autoscaler": "busy-apa"}) == 3, m
        assert h.metric_value(m, "brix_autoscaler_scale_events_total",
                              {"autoscaler": "busy-apa", "direction": "up"}) >= 1
    finally:
        load.stop()
    assert not load.failed, load.failed[:3]
    assert load.ok > 0


@h.check("a quiet period scales down through a drain; a draining replica killed mid-request "
         "loses no request")
def _():
    load = Load("busy-8b", 2, max_tokens=200)
    killed = []
    try:
        def draining():
            for name, r in K.replicas("busy").items():
                if r["status"]["phase"] == "Draining":
                    return name, r
            return None
        name, r = h.wait_until(draining, 40, "a replica draining")
        # SIGKILL it with requests possibly running on it (a 200-token request runs ~3 s and
        # the drain waits for them, so it is still there)
        os.kill(r["status"]["pid"], signal.SIGKILL)
        killed.append(name)
        h.wait_until(lambda: K.pa("busy-apa")["status"]["desiredScale"] == 1, 40,
                     "scale-down to 1")
        h.wait_until(lambda: list(K.replicas("busy")) == ["busy-0"], 40,
                     "only busy-0 left")
        time.sleep(1.0)
    finally:
        load.stop()
    assert not load.failed, load.failed[:3]
    assert load.ok > 0
    hist = K.pa("busy-apa")["status"]["scalingHistory"]
    assert hist[-1]["newScale"] == 1 and hist[-1]["previousScale"] > 1, hist
    assert killed[0] not in K.replicas("busy"), "a drained replica is not restarted"
    assert f"replica {killed[0]}: " in K.c.text() and "while draining; removed" in K.c.text()


KPA_ZERO = """apiVersion: autoscaling.aibrix.ai/v1alpha1
kind: PodAutoscaler
metadata:
  name: idle-kpa
  annotations:
    autoscaling.aibrix.ai/scale-to-zero: "true"
    autoscaling.aibrix.ai/scale-down-cooldown-window: "1s"
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: idle}
  minReplicas: 0
  maxReplicas: 2
  scalingStrategy: KPA
  observeWindowSeconds: 2
  panicWindowSeconds: 1
  metricsSources:
  - {metricSourceType: pod, protocolType: http, port: "8000", path: metrics,
     targetMetric: num_requests_running, targetValue: "1"}
"""


@h.check("scale to zero when idle; a request is held at the gateway, wakes it and is served")
def _():
    K.apply(DEPLOY % {"name": "idle", "replicas": 1, "delay": "1.5"} + "---\n" + KPA_ZERO,
            name="idle.yaml")
    h.wait_until(lambda: K.pa("idle-kpa")["status"]["desiredScale"] == 0, 40, "scaled to zero")
    h.wait_until(lambda: not K.replicas("idle"), 30, "no idle replica left")
    t0 = time.time()
    st, hd, b = h.request("POST", K.g.port, "/v1/chat/completions", {
        "model": "idle-8b", "max_tokens": 5,
        "messages": [{"role": "user", "content": "wake up"}]}, timeout=60)
    took = time.time() - t0
    assert st == 200, (st, b)
    assert took >= 1.0, f"served in {took:.2f} s: it cannot have waited for a 1.5 s start-up"
    hist = K.pa("idle-kpa")["status"]["scalingHistory"]
    assert any(e["reason"] == "ScaleFromZero" and e["previousScale"] == 0 and
               e["newScale"] == 1 for e in hist), hist


FROZEN = """apiVersion: autoscaling.aibrix.ai/v1alpha1
kind: PodAutoscaler
metadata:
  name: frozen-apa
  annotations:
    autoscaling.aibrix.ai/scale-down-cooldown-window: "1s"
    apa.autoscaling.aibrix.ai/window: "1s"
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: frozen}
  minReplicas: 1
  maxReplicas: 3
  scalingStrategy: APA
  metricsSources:
  - {metricSourceType: pod, protocolType: http, port: "8000", path: metrics,
     targetMetric: num_requests_running, targetValue: "4"}
"""


@h.check("a metrics outage freezes the scale (never shrinks it); it resumes when metrics return")
def _():
    K.apply(DEPLOY % {"name": "frozen", "replicas": 2, "delay": "0"}, name="frozen.yaml")
    h.wait_until(lambda: len(K.replicas("frozen")) == 2 and
                 all(x["status"]["ready"] for x in K.replicas("frozen").values()), 30,
                 "2 frozen replicas")
    pids = [r["status"]["pid"] for r in K.replicas("frozen").values()]
    for pid in pids:  # the engines stop answering /metrics (and /health)
        os.kill(pid, signal.SIGSTOP)
    try:
        K.apply(FROZEN, name="frozen-pa.yaml")
        st = h.wait_until(lambda: (lambda s: s if {c["type"]: c for c in s["conditions"]}.get(
            "ScalingActive", {}).get("reason") == "FailedGetMetrics" else None)(
            K.pa("frozen-apa")["status"]), 20, "ScalingActive=False FailedGetMetrics")
        assert st["desiredScale"] == 2, st
        time.sleep(3.0)  # three down windows with no load: an outage must not read as idle
        st = K.pa("frozen-apa")["status"]
        assert st["desiredScale"] == 2 and not st["scalingHistory"], st
        assert h.metric_value(h.metrics(K.port), "brix_autoscaler_metrics_unavailable",
                              {"autoscaler": "frozen-apa"}) == 1
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    h.wait_until(lambda: K.pa("frozen-apa")["status"]["desiredScale"] == 1, 30,
                 "scale-down once metrics are back")
    hist = K.pa("frozen-apa")["status"]["scalingHistory"]
    assert hist[-1]["previousScale"] == 2 and hist[-1]["newScale"] == 1, hist
    K.c.expect_error(r"replica frozen-\d: \d health checks failed")


SLO = """apiVersion: autoscaling.aibrix.ai/v1alpha1
kind: PodAutoscaler
metadata:
  name: slo-pa
  annotations:
    autoscaling.aibrix.ai/scale-down-cooldown-window: "5s"
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: slo}
  minReplicas: 1
  maxReplicas: 3
  scalingStrategy: SLO
  observeWindowSeconds: 6
  panicWindowSeconds: 6
  slo: {ttft: 1s}
"""


@h.check("SLO mode sizes the fleet from the gateways' token load over each replica's capacity")
def _():
    dep = DEPLOY % {"name": "slo", "replicas": 1, "delay": "0"}
    dep = dep.replace('"4096"]', '"4096", --max-num-seqs, "4"]')
    K.apply(dep + "---\n" + SLO, name="slo.yaml")
    h.wait_until(lambda: len(K.replicas("slo")) == 1 and
                 all(x["status"]["ready"] for x in K.replicas("slo").values()), 30, "slo-0")
    load = Load("slo-8b", 10, max_tokens=60)
    try:
        h.wait_until(lambda: K.pa("slo-pa")["status"]["desiredScale"] >= 2, 40,
                     "SLO scale-up")
        st = K.pa("slo-pa")["status"]
        assert st["slo"]["capacityCompletionTokensPerSecond"] > 0, st
        assert st["scalingHistory"][-1]["newScale"] >= 2, st
    finally:
        load.stop()
    assert not load.failed, load.failed[:3]


CPU = """apiVersion: autoscaling.aibrix.ai/v1alpha1
kind: PodAutoscaler
metadata: {name: cpu-hpa}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: cpu}
  minReplicas: 1
  maxReplicas: 2
  scalingStrategy: HPA
  metricsSources:
  - {metricSourceType: resource, targetMetric: cpu, targetValue: "0.005"}
"""


@h.check("a resource source reads the replica processes' CPU (cores) from /proc")
def _():
    K.apply(DEPLOY % {"name": "cpu", "replicas": 1, "delay": "0"} + "---\n" + CPU,
            name="cpu.yaml")
    h.wait_until(lambda: len(K.replicas("cpu")) == 1 and
                 all(x["status"]["ready"] for x in K.replicas("cpu").values()), 30, "cpu-0")
    load = Load("cpu-8b", 4, max_tokens=60)
    try:
        h.wait_until(lambda: K.pa("cpu-hpa")["status"]["desiredScale"] == 2, 30,
                     "scale-up on CPU")
        st = K.pa("cpu-hpa")["status"]
        assert st["metrics"][0]["name"] == "cpu" and st["metrics"][0]["value"] > 0.005, st
    finally:
        load.stop()
    assert not load.failed, load.failed[:3]


h.run()
