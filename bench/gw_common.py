"""Helpers shared by the gateway benchmarks (bench/gateway_*.py): peer proxies
(nginx, haproxy) rendered from the templates in bench/peers/, the brix gateway,
CPU pinning with taskset, fd limits, and /proc accounting over process trees.

Every process is started by us, pinned with `taskset -c CPUS`, and stopped by
its own PID. Runtime files (pid, logs, temp dirs, rendered configs) live in a
private directory under /tmp.
"""
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request

import common as c

PEERS = os.path.join(c.ROOT, "bench", "peers")
WRK_DIR = os.path.join(c.ROOT, "bench", "wrk")
TMP = tempfile.mkdtemp(prefix="brix-gwbench-")


def cleanup_tmp():
    shutil.rmtree(TMP, ignore_errors=True)


def snapshot_brix():
    """Runs use a private copy of the brix binary, so a rebuild by someone else
    in the middle of a run cannot mix two builds in one table. Returns a
    description of the build (git commit, binary hash)."""
    src = c.BRIX
    dst = os.path.join(TMP, "brix")
    shutil.copy2(src, dst)
    c.BRIX = dst
    import hashlib
    h = hashlib.sha256(open(dst, "rb").read()).hexdigest()[:12]
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=c.ROOT, capture_output=True,
                         text=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "src"],
                           cwd=c.ROOT, capture_output=True, text=True).stdout.strip()
    mtime = time.strftime("%Y-%m-%d %H:%M", time.gmtime(os.path.getmtime(src)))
    return {"commit": rev + ("+dirty" if dirty else ""), "sha256": h, "built": mtime,
            "path": os.path.relpath(src, c.ROOT)}


def build_line(b):
    return (f"brix build: {b['path']} at commit {b['commit']} (binary sha256 {b['sha256']}, "
            f"built {b['built']} UTC).")


def raise_nofile(need):
    """Soft RLIMIT_NOFILE up to the hard limit; if the hard limit is below
    `need` and we are privileged, raise the hard limit too. Children inherit it.
    Returns (soft, hard, note)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    note = ""
    if hard != resource.RLIM_INFINITY and hard < need:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            note = f"hard fd limit raised {hard} -> {need} (privileged)"
        except (ValueError, OSError):
            note = f"hard fd limit {hard} < {need} needed and cannot be raised"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return soft, hard, note


def render(template, name, **kv):
    text = open(os.path.join(PEERS, template)).read()
    kv.setdefault("TMP", TMP)
    kv.setdefault("USER", "user root root;" if os.geteuid() == 0 else "")
    for k, v in kv.items():
        text = text.replace("@" + k + "@", str(v))
    left = re.findall(r"@[A-Z_]+@", text)
    assert not left, f"{template}: unfilled {left}"
    path = os.path.join(TMP, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def wait_http(url, ok=lambda status, body: status == 200, timeout=20, data=None, headers=None):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            req = urllib.request.Request(url, data=data, headers=headers or {})
            with urllib.request.urlopen(req, timeout=2) as r:
                body = r.read()
                if ok(r.status, body):
                    return body
                last = (r.status, body[:200])
        except OSError as ex:
            last = ex
        time.sleep(0.05)
    raise RuntimeError(f"{url} not ready: {last}")


def spawn(cmd, cpus, log_name, env=None):
    """Starts cmd pinned to `cpus`; output to bench/results/log_name (or to
    log_name itself when it is an absolute path)."""
    log = open(log_name if os.path.isabs(log_name) else os.path.join(c.RESULTS, log_name), "w")
    full = (["taskset", "-c", cpus] if cpus else []) + cmd
    return subprocess.Popen(full, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)


def stop(p, sig=signal.SIGTERM, timeout=20):
    if p is None or p.poll() is not None:
        return
    p.send_signal(sig)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


# ------------------------------------------------------------- processes --

def start_upstream_nginx(cpus):
    port = c.free_port()
    conf = render("nginx-upstream.conf", "nginx-upstream.conf", PORT=port)
    p = spawn(["nginx", "-p", TMP, "-c", conf, "-e", os.path.join(TMP, "nginx-upstream-error.log")],
              cpus, "gw-upstream-nginx.log")
    wait_http(f"http://127.0.0.1:{port}/health")
    return p, port


def start_sse_server(cpus, interval_ms, log_name="gw-sse-server.log"):
    port = c.free_port()
    p = spawn(["python3", os.path.join(PEERS, "sse_server.py"), "--port", str(port),
               "--interval-ms", str(interval_ms)], cpus, log_name)
    wait_http(f"http://127.0.0.1:{port}/health")
    return p, port


def start_nginx_proxy(cpus, upstream_port, buffering, nofile=65536, worker_connections=16384):
    port = c.free_port()
    conf = render("nginx-proxy.conf", "nginx-proxy.conf", PORT=port,
                  UPSTREAM=f"127.0.0.1:{upstream_port}", BUFFERING="on" if buffering else "off",
                  NOFILE=nofile, WORKER_CONNECTIONS=worker_connections,
                  ERRLOG=os.path.join(c.RESULTS, "gw-nginx-proxy-error.log"))
    p = spawn(["nginx", "-p", TMP, "-c", conf, "-e",
               os.path.join(c.RESULTS, "gw-nginx-proxy-error.log")], cpus, "gw-nginx-proxy.log")
    wait_http(f"http://127.0.0.1:{port}/health")
    return p, port


def start_haproxy(cpus, upstream_port, no_delay, maxconn=4000):
    port = c.free_port()
    conf = render("haproxy.cfg", "haproxy.cfg", PORT=port, UPSTREAM=f"127.0.0.1:{upstream_port}",
                  HTTP_NO_DELAY="option http-no-delay" if no_delay else "", MAXCONN=maxconn)
    p = spawn(["haproxy", "-db", "-f", conf], cpus, "gw-haproxy.log")
    wait_http(f"http://127.0.0.1:{port}/health")
    return p, port


def start_gateway(cpus, upstream_ports, workers=1, access_log=False, extra=(), log_path=None,
                  binary=None):
    port = c.free_port()
    urls = ",".join(f"http://127.0.0.1:{u}" for u in upstream_ports)
    cmd = [binary or c.BRIX, "gateway", "--port", str(port), "--worker-urls", urls, "--workers",
           str(workers), "--log-level", "info" if access_log else "warn"]
    cmd.append("--access-log" if access_log else "--no-access-log")
    cmd += list(extra)
    p = spawn(cmd, cpus, log_path or "gw-brix-gateway.log")
    # ready = a pod is healthy and its models are known: a real request routes
    body = json.dumps({"model": "llama-3-8b", "messages": [{"role": "user", "content": "hi"}],
                       "max_tokens": 1}).encode()
    wait_http(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
              headers={"Content-Type": "application/json"})
    return p, port


# ------------------------------------------------------------ accounting --

def tree_pids(pid):
    """pid and all its descendants (nginx master + workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for t in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo += [int(x) for x in f.read().split()]
        except OSError:
            pass
    return out


def proxy_pid(p):
    """The real server process behind `taskset` (taskset execs, so same pid)."""
    return p.pid


def proc_cpu_ns(pid):
    """CPU time of every thread of pid, from schedstat (ns resolution; /proc/PID/stat
    counts 10 ms ticks, too coarse for a few thousand events)."""
    tot = 0
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/schedstat") as f:
            tot += int(f.read().split()[0])
    return tot


def tree_cpu_s(pid):
    tot = 0.0
    for q in tree_pids(pid):
        try:
            tot += proc_cpu_ns(q) / 1e9
        except OSError:
            try:
                tot += c.proc_cpu_seconds(q)
            except OSError:
                pass
    return tot


def foreign_pct(u0, u1, secs, ours_s):
    """CPU used by processes that are not ours (other tenants of the machine),
    in % of one core, from /proc/stat deltas minus our own CPU seconds."""
    hz = os.sysconf("SC_CLK_TCK")
    busy = sum(u1[k][2] - u0[k][2] for k in u0) / hz
    return max(0.0, (busy - ours_s) / secs * 100)


def self_cpu_s():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def tree_rss_mb(pid):
    tot = 0.0
    for q in tree_pids(pid):
        try:
            tot += c.proc_rss_mb(q)
        except OSError:
            pass
    return tot


def cpu_busy():
    """Per-CPU (busy, total, task time) jiffies from /proc/stat. busy includes
    irq/softirq (the kernel's loopback TCP work); task time is user+nice+system
    only, which is what per-process accounting (schedstat) adds up to."""
    out = {}
    for line in open("/proc/stat"):
        if line.startswith("cpu") and line[3].isdigit():
            f = line.split()
            v = [int(x) for x in f[1:]]
            idle = v[3] + v[4]
            out[f[0]] = (sum(v) - idle, sum(v), v[0] + v[1] + v[2])
    return out


def cpu_util(a, b):
    return {k: 100.0 * (b[k][0] - a[k][0]) / max(1, b[k][1] - a[k][1]) for k in a}


def loadavg():
    return float(open("/proc/loadavg").read().split()[0])


def stats(xs):
    xs = sorted(xs)
    n = len(xs)
    med = xs[n // 2] if n % 2 else (xs[n // 2 - 1] + xs[n // 2]) / 2
    return med, xs[0], xs[-1]


def fmt_spread(xs, fmt="{:.0f}"):
    med, lo, hi = stats(xs)
    return f"{fmt.format(med)} ({fmt.format(lo)}..{fmt.format(hi)})"
