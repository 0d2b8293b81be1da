"""Shared helpers for brix benchmarks: starting processes, free ports,
reading GPU profiles, /proc sampling and gnuplot."""
import math
import os
import re
import socket
import subprocess
import time
import urllib.request

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
BRIX = os.environ.get("BRIX_BIN", os.path.join(ROOT, "build", "brix"))
RESULTS = os.path.join(ROOT, "bench", "results")
PLOTS = os.path.join(ROOT, "bench", "plots")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def start_engine(args, log_name):
    os.makedirs(RESULTS, exist_ok=True)
    port = free_port()
    log = open(os.path.join(RESULTS, log_name), "w")
    p = subprocess.Popen([BRIX, "engine-sim", "--port", str(port)] + list(args),
                         stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 20
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
                if r.status == 200:
                    return p, port
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("engine did not start")


def stop(p):
    p.terminate()
    try:
        p.wait(20)
    except subprocess.TimeoutExpired:
        p.kill()


def load_profiles():
    """Parses data/gpu_profiles.yaml (flat two-level mapping) without PyYAML."""
    prof, cur = {}, None
    for line in open(os.path.join(ROOT, "data", "gpu_profiles.yaml")):
        line = line.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        m = re.match(r"^  (\w+):\s*$", line)
        if m:
            cur = prof.setdefault(m.group(1), {})
            continue
        m = re.match(r"^    (\w+):\s*(.+)$", line)
        if m and cur is not None:
            try:
                cur[m.group(1)] = float(m.group(2))
            except ValueError:
                cur[m.group(1)] = m.group(2)
    return prof


def proc_cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick


def proc_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def metrics(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


def metric(text, name):
    tot = None
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            tot = (tot or 0.0) + float(line.rsplit(" ", 1)[1])
    return tot


def gnuplot(script):
    os.makedirs(PLOTS, exist_ok=True)
    subprocess.run(["gnuplot"], input=script.encode(), check=True)


def pct(xs, p):
    """Percentile with linear interpolation (as brix bench); an infinite sample (a request
    that never got its first token) is larger than any other."""
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    hi = min(f + 1, len(xs) - 1)
    if math.isinf(xs[hi]):
        return xs[hi] if k > f or math.isinf(xs[f]) else xs[f]
    return xs[f] + (xs[hi] - xs[f]) * (k - f)
