"""01 — the command line: `brix` itself and `brix engine-sim` flags, config
files and start-up failures (exit codes, where messages go, what they say)."""
import os
import re
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

# The vLLM flag names engine-sim mirrors (plus its own simulation knobs).
ENGINE_FLAGS = [
    "served-model-name", "max-num-seqs", "max-num-batched-tokens", "block-size",
    "num-gpu-blocks-override", "enable-prefix-caching", "enable-lora", "max-loras",
    "max-lora-rank", "port", "host", "gpu", "time-scale", "seed", "kv-events-config",
    "startup-delay", "failure-rate",
]


def run(args, timeout=30):
    """Runs brix to completion: (exit code, stdout, stderr). A sanitizer
    report on either stream fails the check."""
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    p = subprocess.run([h.BRIX] + list(args), capture_output=True, text=True, timeout=timeout,
                       env=env)
    for stream in (p.stdout, p.stderr):
        assert "Sanitizer" not in stream and "runtime error:" not in stream, \
            f"sanitizer report from brix {args}:\n{stream}"
    return p.returncode, p.stdout, p.stderr


def project_version():
    with open(os.path.join(h.SRC, "CMakeLists.txt")) as f:
        m = re.search(r"project\(brix\s+VERSION\s+([0-9.]+)", f.read())
    assert m, "no project(brix VERSION x.y.z) in CMakeLists.txt"
    return m.group(1)


def write_tmp(text, suffix=".yaml"):
    f = tempfile.NamedTemporaryFile("w", prefix="brix-cli-", suffix=suffix, delete=False)
    f.write(text)
    f.close()
    return f.name


def models(port):
    st, j = h.get_json(port, "/v1/models")
    assert st == 200, st
    return j


# ------------------------------------------------------------------ brix --

@h.check("brix --help: exit 0, usage on stdout, lists engine-sim")
def _():
    for flag in ("--help", "-h"):
        rc, out, err = run([flag])
        assert rc == 0, (flag, rc, err)
        assert out.startswith("usage: brix <component>"), out
        assert re.search(r"^\s+engine-sim\s+\S", out, re.M), f"engine-sim not listed:\n{out}"
        assert err == "", f"{flag} wrote to stderr: {err!r}"


@h.check("brix --version prints the project version")
def _():
    want = f"brix {project_version()}\n"
    for flag in ("--version", "-V"):
        rc, out, err = run([flag])
        assert rc == 0, (flag, rc, err)
        assert out == want, (flag, out, want)


@h.check("brix with no component: usage on stderr, exit 2")
def _():
    rc, out, err = run([])
    assert rc == 2, rc
    assert out == "", f"usage went to stdout: {out!r}"
    assert err.startswith("usage: brix <component>"), err
    assert "engine-sim" in err


@h.check("unknown component: names it, usage on stderr, exit 2")
def _():
    rc, out, err = run(["frobnicate", "--port", "1"])
    assert rc == 2, rc
    assert out == "", out
    assert "unknown component 'frobnicate'" in err, err
    assert "usage: brix <component>" in err, err


# ------------------------------------------------------- engine-sim flags --

@h.check("engine-sim --help: exit 0 on stdout, lists every vLLM flag")
def _():
    rc, out, err = run(["engine-sim", "--help"])
    assert rc == 0, (rc, err)
    assert err == "", err
    assert out.startswith("usage: brix engine-sim"), out[:200]
    listed = set(re.findall(r"^\s+--(?:\[no-\])?([a-z0-9-]+)", out, re.M))
    missing = [f for f in ENGINE_FLAGS if f not in listed]
    assert not missing, f"--help does not list {missing}:\n{out}"
    # --help wins even after other (even bad) flags, and does not start a server
    rc2, out2, _ = run(["engine-sim", "--block-size", "16", "--help"])
    assert rc2 == 0 and out2 == out


@h.check("engine-sim: unknown flag → exit 2 naming it")
def _():
    rc, out, err = run(["engine-sim", "--max-num-seq", "4"])
    assert rc == 2, rc
    assert "--max-num-seq'" in err and "unknown option" in err, err
    rc, out, err = run(["engine-sim", "stray"])
    assert rc == 2 and "'stray'" in err, (rc, err)
    rc, out, err = run(["engine-sim", "--port"])
    assert rc == 2 and "--port needs a value" in err, (rc, err)


@h.check("engine-sim: out-of-range and malformed values → exit 2 with the bound")
def _():
    rc, _, err = run(["engine-sim", "--block-size", "0"])
    assert rc == 2, rc
    assert "block-size: 0 is out of range [1, 256]" in err, err
    rc, _, err = run(["engine-sim", "--failure-rate", "1.5"])
    assert rc == 2 and "failure-rate" in err and "out of range" in err, (rc, err)
    rc, _, err = run(["engine-sim", "--max-num-seqs", "lots"])
    assert rc == 2 and "max-num-seqs: expected an integer, got 'lots'" in err, (rc, err)
    rc, _, err = run(["engine-sim", "--max-lora-rank", "24"])
    assert rc == 2 and "max-lora-rank" in err and "8,16,32,64,128,256,320,512" in err, (rc, err)
    rc, _, err = run(["engine-sim", "--kv-events-config", "{not json"])
    assert rc == 2 and "kv-events-config" in err, (rc, err)


@h.check("engine-sim: unknown --gpu profile → exit 2 listing the known ones")
def _():
    rc, out, err = run(["engine-sim", "--gpu", "tpu9000"])
    assert rc == 2, rc
    assert "unknown profile 'tpu9000'" in err, err
    m = re.search(r"known:([^)]*)\)", err)
    assert m, err
    known = m.group(1).split()
    for g in ("a100", "h100", "l40s", "cpu"):
        assert g in known, (g, known)


@h.check("engine-sim: max-model-len above the KV capacity → clear error, exit 2")
def _():
    rc, _, err = run(["engine-sim", "--port", "0", "--num-gpu-blocks-override", "10",
                      "--max-model-len", "1000"])
    assert rc == 2, (rc, err)
    # 10 blocks of 16 (one may be reserved as vLLM's null block): at most 160
    m = re.search(r"KV cache holds (\d+) tokens", err)
    assert m and int(m.group(1)) <= 160 and "max-model-len 1000" in err, err
    # the default a100 profile holds 450560 tokens
    rc, _, err = run(["engine-sim", "--port", "0", "--max-model-len", "1000000"])
    assert rc == 2, (rc, err)
    assert "max-model-len 1000000" in err, err


# ------------------------------------------------------------ config file --

@h.check("--config YAML: values apply (port, names, lengths)")
def _():
    port = h.free_port()
    path = write_tmp(f"""# engine config
port: {port}
time-scale: 0.05
served_model_name:            # underscores work like dashes
  - alpha
  - beta
max-model-len: 512
""")
    pr = h.Proc(["engine-sim", "--config", path], name="engine-cfg")
    try:
        pr.wait_http(port)  # only the file named this port
        j = models(port)
        assert [d["id"] for d in j["data"]] == ["alpha", "beta"], j
        assert all(d["max_model_len"] == 512 for d in j["data"]), j
    finally:
        pr.stop()
        os.unlink(path)


@h.check("--config: flags on the command line win over the file (before or after --config)")
def _():
    path = write_tmp("max-model-len: 512\nserved-model-name: [from-file]\n")
    try:
        e = h.engine(["--max-model-len", "1024", "--config", path])
        j = models(e.port)
        e.stop()
        assert j["data"][0]["max_model_len"] == 1024, j
        assert j["data"][0]["id"] == "from-file", j
        e = h.engine(["--config", path, "--served-model-name", "from-flag"])
        j = models(e.port)
        e.stop()
        assert [d["id"] for d in j["data"]] == ["from-flag"], j
        assert j["data"][0]["max_model_len"] == 512, j
    finally:
        os.unlink(path)


@h.check("--config: bad key / value / syntax → exit 2 with file:line:col:")
def _():
    path = write_tmp("port: 0\nblock-size: 16\n\nno-such-option: 3\n")
    try:
        rc, _, err = run(["engine-sim", "--config", path])
        assert rc == 2, (rc, err)
        assert f"{path}:4:1: unknown option 'no-such-option'" in err, err
    finally:
        os.unlink(path)
    path = write_tmp("port: 0\nblock-size: 0\n")
    try:
        rc, _, err = run(["engine-sim", "--config", path])
        assert rc == 2, (rc, err)
        assert f"{path}:2:13: block-size: 0 is out of range" in err, err
    finally:
        os.unlink(path)
    path = write_tmp("port: 0\nserved-model-name: [a, b\n")
    try:
        rc, _, err = run(["engine-sim", "--config", path])
        assert rc == 2, (rc, err)
        assert re.search(re.escape(path) + r":\d+:\d+: ", err), err
    finally:
        os.unlink(path)
    rc, _, err = run(["engine-sim", "--config", "/nonexistent/brix.yaml"])
    assert rc == 2 and "/nonexistent/brix.yaml" in err, (rc, err)


# --------------------------------------------------------------- runtime --

@h.check("port already in use → nonzero exit with an ERROR line naming it")
def _():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        pr = h.Proc(["engine-sim", "--port", str(port), "--time-scale", "0.05"], name="engine-busy")
        pr.p.wait(30)
        rc = pr.p.returncode
        log = pr.text()
        assert rc not in (0, None), f"exit code {rc}:\n{log}"
        lines = [ln for ln in log.splitlines() if re.search(r"\sERROR\s", ln)]
        assert lines, f"no ERROR line:\n{log}"
        assert any(f"127.0.0.1:{port}" in ln and "address already in use" in ln
                   for ln in lines), log
        pr.expect_error(r"cannot listen on 127\.0\.0\.1:%d" % port)
        pr.stop(want_rc=None)  # sanitizer check of the log
    finally:
        s.close()


@h.check("a started engine answers /health and stops cleanly on SIGTERM (exit 0)")
def _():
    e = h.engine(["--seed", "7", "--gpu", "h100", "--block-size", "32"])
    st, _, b = h.request("GET", e.port, "/health")
    assert st == 200 and b == b""
    assert e.stop() == 0


h.run()
