"""brix controller artifacts, hardened (issue 11): a gzip bomb fails with TooLarge and leaves
STATE/artifacts as it was; file:///etc/shadow, /etc/passwd and a symlink out of the applied
file's directory are refused with ArtifactNotAllowed and no hash of the file; the applied file's
directory stays an allowed root across a restart; the LRU cleanup removes an unreferenced
artifact (and a crash's temp file) and keeps the referenced one."""
import hashlib
import http.server
import json
import os
import subprocess
import tempfile
import threading
import time

import harness as h

TMP = tempfile.mkdtemp(prefix="brix-art-")
APPLY = os.path.join(TMP, "apply")          # where the object files live: the default root
WWW = os.path.join(TMP, "www")              # served over HTTP
STATE = os.path.join(TMP, "state")
for d in (APPLY, WWW, STATE, os.path.join(APPLY, "adapters", "local")):
    os.makedirs(d, exist_ok=True)
with open(os.path.join(APPLY, "adapters", "local", "adapter_config.json"), "w") as f:
    f.write('{"r": 8}')
os.symlink("/etc/passwd", os.path.join(APPLY, "pw"))
# a gzip bomb: 64 MiB of zeros (a sparse file: no disk used) packed into ~64 KiB
os.makedirs(os.path.join(TMP, "bomb"))
zeros = os.path.join(TMP, "bomb", "zeros")
subprocess.run(["truncate", "-s", "64M", zeros], check=True)
subprocess.run(["tar", "-czf", os.path.join(WWW, "bomb.tgz"), "-C", os.path.join(TMP, "bomb"),
                "zeros"], check=True)
os.unlink(zeros)
assert os.path.getsize(os.path.join(WWW, "bomb.tgz")) < 200 * 1024
for n in ("one", "two"):
    with open(os.path.join(WWW, n + ".bin"), "wb") as f:
        f.write(n.encode() * 3000)
PASSWD_SHA = hashlib.sha256(open("/etc/passwd", "rb").read()).hexdigest()
# a temp file an earlier controller left when it crashed
CRUMB = os.path.join(STATE, "artifacts", ".tmp-0123456789abcdef-999999999-1")
os.makedirs(os.path.dirname(CRUMB))
open(CRUMB, "w").write("partial")


class Quiet(http.server.SimpleHTTPRequestHandler):
    def __init__(self, *a, **kw):
        super().__init__(*a, directory=WWW, **kw)

    def log_message(self, *a):
        pass


SRV = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
threading.Thread(target=SRV.serve_forever, daemon=True).start()
WEB = f"http://127.0.0.1:{SRV.server_address[1]}"

ADAPTER = """
apiVersion: model.aibrix.ai/v1alpha1
kind: ModelAdapter
metadata:
  name: %s
spec:
  podSelector:
    matchLabels: {model.aibrix.ai/name: base-7b}
  artifactURL: %s
"""


class Controller:
    def __init__(self):
        self.port = h.free_port()
        self.p = h.Proc(["controller", "--port", str(self.port), "--state-dir", STATE,
                         "--reconcile-interval", "100ms", "--artifact-max-unpacked", "1m",
                         "--artifact-cache-max", "8k"], name="controller")
        self.p.wait_http(self.port, "/readyz")
        with open(os.path.join(STATE, "token")) as f:  # made by the controller
            h.TOKENS[self.port] = f.read().strip()

    def apply(self, name, url, sha=None):
        text = ADAPTER % (name, url) + (f"  artifactSHA256: {sha}\n" if sha else "")
        path = os.path.join(APPLY, name + ".yaml")
        open(path, "w").write(text)
        r = subprocess.run([h.BRIX, "apply", "-f", path, "--server",
                            f"http://127.0.0.1:{self.port}", "--state-dir", STATE], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, (r.stdout, r.stderr)

    def delete(self, name):
        r = subprocess.run([h.BRIX, "delete", "adapter", name, "--server",
                            f"http://127.0.0.1:{self.port}", "--state-dir", STATE], capture_output=True, text=True,
                           timeout=30)
        assert r.returncode == 0, (r.stdout, r.stderr)

    def artifact(self, name, phase):
        def ok():
            st, _, b = h.request("GET", self.port, f"/v1/adapters/{name}")
            a = json.loads(b)["status"]["artifact"] if st == 200 else {}
            return a.get("phase") == phase and a
        return h.wait_until(ok, 20, f"artifact of {name} {phase}")


def cache():
    return sorted(os.listdir(os.path.join(STATE, "artifacts")))


C = Controller()


@h.check("start: a crash's temp file is removed from the artifact cache")
def _():
    h.wait_until(lambda: not os.path.exists(CRUMB), 10, "temp file removed")


@h.check("gzip bomb: TooLarge before it is written, the cache as it was")
def _():
    C.apply("one", f"{WEB}/one.bin")
    C.artifact("one", "Ready")
    before = cache()
    C.apply("bomb", f"{WEB}/bomb.tgz")
    a = C.artifact("bomb", "Failed")
    assert a["reason"] == "TooLarge" and "unpacked size over 1048576 bytes" in a["message"], a
    assert cache() == before, (before, cache())


@h.check("file:// outside the applied file's directory and the state dir: ArtifactNotAllowed")
def _():
    C.apply("shadow", "file:///etc/shadow")
    C.apply("passwd", "file:///etc/passwd", sha="0" * 64)
    C.apply("link", "file://pw", sha="0" * 64)   # relative: APPLY/pw -> /etc/passwd
    C.apply("dots", "file://adapters/../../../../../../../etc/passwd", sha="0" * 64)
    for n in ("shadow", "passwd", "link", "dots"):
        a = C.artifact(n, "Failed")
        assert a["reason"] == "ArtifactNotAllowed", a
        assert APPLY in a["message"] and "--artifact-root" in a["message"], a
        assert PASSWD_SHA[:8] not in a["message"], a


@h.check("the applied file's directory stays an allowed root after a restart")
def _():
    C.apply("local", "file://adapters/local")
    a = C.artifact("local", "Ready")
    assert a["path"] == os.path.realpath(os.path.join(APPLY, "adapters", "local")), a
    C.p.stop()
    C.__init__()
    a = C.artifact("local", "Ready")
    assert a["path"] == os.path.realpath(os.path.join(APPLY, "adapters", "local")), a
    assert C.artifact("shadow", "Failed")["reason"] == "ArtifactNotAllowed"


@h.check("LRU cleanup: an unreferenced artifact goes, a referenced one stays")
def _():
    one = C.artifact("one", "Ready")["path"]   # fetched again after the restart: a cache hit
    assert os.path.exists(one)
    C.delete("one")
    time.sleep(1.2)  # an entry used in the last second is never evicted (the restart's hit)
    C.apply("two", f"{WEB}/two.bin")           # 9000 bytes: over --artifact-cache-max 8k
    two = C.artifact("two", "Ready")["path"]
    h.wait_until(lambda: not os.path.exists(one), 10, "unreferenced artifact evicted")
    assert os.path.exists(two)                 # over the limit alone, but referenced
    m = h.metrics(C.port)
    assert h.metric_value(m, "brix_controller_artifact_cache_evictions_total") >= 1, m
    h.wait_until(lambda: h.metric_value(h.metrics(C.port),
                                        "brix_controller_artifact_cache_bytes") == 9000, 10,
                 "cache bytes gauge")
    C.p.stop()


h.run()
