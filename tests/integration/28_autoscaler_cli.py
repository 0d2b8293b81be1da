"""25 — `brix get|delete podautoscalers`: the CLI side of PodAutoscaler,
against a stand-in controller (a Python HTTP server on a free loopback port)
that answers with the status JSON the controller renders ({desiredScale,
actualScale, metrics[{name,value,target}], panic, scheduledBounds,
scalingHistory[...]}), so the table columns, aliases, -o formats, the delete
path and the error texts are checked without the runtime. And a real
`brix controller` refuses a bad PodAutoscaler at apply with file:line:col,
applying nothing of that file."""
import json
import os
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

TOKEN = "t0ken-for-the-test"

FULL = {
    "apiVersion": "autoscaling.aibrix.ai/v1alpha1", "kind": "PodAutoscaler",
    "metadata": {"name": "llama-apa", "generation": 1,
                 "creationTimestamp": "2026-01-02T03:04:05.000Z"},
    "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                                "name": "llama-3-8b"},
             "minReplicas": 1, "maxReplicas": 6, "scalingStrategy": "APA",
             "metricsSources": [{"metricSourceType": "pod", "targetMetric":
                                 "gpu_cache_usage_perc", "targetValue": "0.5"}]},
    "status": {"desiredScale": 3, "actualScale": 2,
               "lastScaleTime": "2026-01-02T03:05:00.000Z",
               "conditions": [{"type": "AbleToScale", "status": "True",
                               "reason": "SucceededRescale", "message": "",
                               "lastTransitionTime": "2026-01-02T03:05:00.000Z"}],
               "scalingHistory": [
                   {"timestamp": "2026-01-02T03:04:30.000Z", "previousScale": 1,
                    "newScale": 2, "reason": "ScaleUp", "success": True},
                   {"timestamp": "2026-01-02T03:05:00.000Z", "previousScale": 2,
                    "newScale": 3, "reason": "ScaleUp", "success": False,
                    "error": "replica failed to start"}],
               "scheduledBounds": {"activeSchedule": "business-hours",
                                   "effectiveMinReplicas": 2, "effectiveMaxReplicas": 6},
               "metrics": [{"name": "gpu_cache_usage_perc", "value": 0.75, "target": 0.5}],
               "panic": True},
}
# Just applied: no status yet.
BARE = {
    "apiVersion": "autoscaling.aibrix.ai/v1alpha1", "kind": "PodAutoscaler",
    "metadata": {"name": "llama-slo", "generation": 1,
                 "creationTimestamp": "2026-01-02T03:04:05.000Z"},
    "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "llama-3-8b"},
             "minReplicas": 0, "maxReplicas": 8, "scalingStrategy": "SLO",
             "metricsSources": [], "slo": {"ttft": "0.5s", "headroom": 0.8}},
}

seen = []


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def handle_one(self):
        seen.append((self.command, self.path, self.headers.get("authorization")))
        if self.headers.get("authorization") != f"Bearer {TOKEN}":
            return self.reply(401, {"error": {"message": "bad token"}})
        if self.command == "GET" and self.path == "/v1/podautoscalers":
            return self.reply(200, {"apiVersion": "v1", "kind": "List", "items": [FULL, BARE]})
        if self.command == "GET" and self.path == "/v1/podautoscalers/llama-apa":
            return self.reply(200, FULL)
        if self.command == "DELETE" and self.path == "/v1/podautoscalers/llama-apa":
            return self.reply(200, {"kind": "PodAutoscaler", "name": "llama-apa",
                                    "result": "deleted"})
        return self.reply(404, {"error": {"message": f"PodAutoscaler not found ({self.path})"}})

    do_GET = do_DELETE = handle_one


srv = ThreadingHTTPServer(("127.0.0.1", h.free_port()), Handler)
threading.Thread(target=srv.serve_forever, daemon=True).start()
SERVER = f"http://127.0.0.1:{srv.server_address[1]}"


def brix(*args):
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    env.pop("BRIX_TOKEN", None)
    p = subprocess.run([h.BRIX, *args, "--server", SERVER, "--token", TOKEN],
                       capture_output=True, text=True, timeout=30, env=env)
    for stream in (p.stdout, p.stderr):
        assert "Sanitizer" not in stream and "runtime error:" not in stream, stream
    return p.returncode, p.stdout, p.stderr


def rows(out):
    return [ln.split() for ln in out.strip().splitlines()]


@h.check("brix get pa: AIBrix's printer columns plus desired/actual/metric/panic")
def _():
    for alias in ("podautoscalers", "pa", "autoscalers", "PodAutoscaler"):
        seen.clear()
        rc, out, err = brix("get", alias)
        assert rc == 0, err
        assert seen[-1][:2] == ("GET", "/v1/podautoscalers"), seen
        r = rows(out)
        assert r[0] == ["NAME", "TARGET", "STRATEGY", "MIN", "MAX", "DESIRED", "ACTUAL",
                        "METRIC", "PANIC", "AGE"], out
        # the metric cell has a space: "gpu_cache_usage_perc 0.75/0.5"
        assert r[1][:7] == ["llama-apa", "llama-3-8b", "APA", "1", "6", "3", "2"], out
        assert r[1][7:10] == ["gpu_cache_usage_perc", "0.75/0.5", "true"], out
        assert r[1][10].endswith("d"), out  # created in January: days old
        # no status yet: dashes, not zeros
        assert r[2][:9] == ["llama-slo", "llama-3-8b", "SLO", "0", "8", "-", "-", "<none>",
                            "-"], out


@h.check("brix get pa -o wide: the active schedule and the last decision, failure included")
def _():
    rc, out, err = brix("get", "pa", "-o", "wide")
    assert rc == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split()[-2:] == ["SCHEDULE", "LAST-DECISION"], out
    assert "business-hours 2-6" in lines[1], out
    assert lines[1].rstrip().endswith("2->3 ScaleUp (failed: replica failed to start)"), out
    assert lines[2].split()[-2:] == ["<none>", "<none>"], out


@h.check("brix get pa NAME, -o json|yaml|name")
def _():
    rc, out, err = brix("get", "pa", "llama-apa")
    assert rc == 0, err
    assert len(rows(out)) == 2 and rows(out)[1][0] == "llama-apa", out
    rc, out, err = brix("get", "podautoscaler", "llama-apa", "-o", "json")
    assert rc == 0, err
    assert json.loads(out) == FULL
    rc, out, err = brix("get", "pa", "llama-apa", "-o", "yaml")
    assert rc == 0, err
    assert "kind: PodAutoscaler" in out and "desiredScale: 3" in out, out
    assert "targetValue: \"0.5\"" in out, out  # a string stays a string
    rc, out, err = brix("get", "pa", "-o", "name")
    assert rc == 0, err
    assert out.split() == ["podautoscaler/llama-apa", "podautoscaler/llama-slo"], out
    rc, out, err = brix("get", "pa", "nope")
    assert rc == 1 and "not found" in err, (rc, err)


@h.check("brix delete pa NAME deletes through /v1/podautoscalers/NAME")
def _():
    seen.clear()
    rc, out, err = brix("delete", "pa", "llama-apa")
    assert rc == 0, err
    assert seen == [("DELETE", "/v1/podautoscalers/llama-apa", f"Bearer {TOKEN}")], seen
    assert out.strip() == "podautoscaler/llama-apa deleted", out


@h.check("kind errors list podautoscalers; hpa is Kubernetes' kind, not an alias")
def _():
    for args in (("get", "hpa"), ("delete", "hpa", "x")):
        seen.clear()
        rc, out, err = brix(*args)
        assert rc == 2 and "podautoscalers" in err and "unknown kind 'hpa'" in err, (rc, err)
        assert not seen
    rc, out, err = brix("get")
    assert rc == 2 and "podautoscalers" in err, err
    rc, out, err = brix("get", "--help")
    assert rc == 0 and "podautoscalers (podautoscaler, pa," in out, out


BAD_PA = """apiVersion: model.brix.dev/v1alpha1
kind: ModelDeployment
metadata: {name: llama-3-8b}
spec: {replicas: 0}
---
apiVersion: autoscaling.aibrix.ai/v1alpha1
kind: PodAutoscaler
metadata:
  name: llama-kpa
  annotations:
    autoscaling.aibrix.ai/scale-down-cooldown-window: 5 minutes
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: llama-3-8b}
  maxReplicas: 4
  scalingStrategy: KPA
  metricsSources:
  - {metricSourceType: pod, targetMetric: num_requests_waiting, targetValue: "4"}
"""


@h.check("brix apply: a bad PodAutoscaler is refused with file:line:col, nothing applied")
def _():
    tmp = tempfile.mkdtemp(prefix="brix-pa-")
    state = os.path.join(tmp, "state")
    port = h.free_port()
    ctl = h.Proc(["controller", "--port", str(port), "--state-dir", state], name="controller")
    try:
        ctl.wait_http(port, "/readyz")
        path = os.path.join(tmp, "bad-pa.yaml")
        with open(path, "w") as f:
            f.write(BAD_PA)
        p = subprocess.run([h.BRIX, "apply", "-f", path, "--server", f"http://127.0.0.1:{port}",
                            "--state-dir", state], capture_output=True, text=True, timeout=30)
        assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
        line = BAD_PA.splitlines().index(
            "    autoscaling.aibrix.ai/scale-down-cooldown-window: 5 minutes") + 1
        want = (f"{path}:{line}:55: metadata.annotations[\"autoscaling.aibrix.ai/"
                "scale-down-cooldown-window\"]: expected a duration")
        assert want in p.stderr, p.stderr
        p = subprocess.run([h.BRIX, "get", "deployments", "-o", "name", "--server",
                            f"http://127.0.0.1:{port}", "--state-dir", state],
                           capture_output=True, text=True, timeout=30)
        assert p.returncode == 0 and "llama-3-8b" not in p.stdout, (p.stdout, p.stderr)
    finally:
        ctl.stop()


h.run()
srv.shutdown()
