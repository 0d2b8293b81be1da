"""24 — the gateway's Host check (issue 11, DNS rebinding): a gateway on a
loopback address answers only Host values that are IP literals or localhost
(with no port or its own port) or names given with --allowed-host; any other
name gets 403 `host_not_allowed` as OpenAI error JSON, and the request never
reaches an engine. The probes /healthz and /readyz answer whatever the Host.
The same rule as the controller's (core/http_host)."""
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

BASE = "llama-3-8b"
CHAT = "/v1/chat/completions"
BODY = {"model": BASE, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

E = h.engine(["--seed", "7", "--output-len-dist", "none"])
G = h.gateway([E])
GA = h.gateway([E], extra=["--allowed-host", "gw.example", "--allowed-host", "pf.example:9000"],
               name="gateway-allowed")


def engine_chats():
    time.sleep(0.1)
    return E.text().count("POST /v1/chat/completions")


def chat(g, host):
    st, _, b = h.request("POST", g.port, CHAT, BODY, headers={"Host": host})
    try:
        j = json.loads(b) if b else None
    except ValueError:
        j = None
    return st, j, b


def refused(st, j, b):
    assert st == 403, (st, b[:300])
    assert j and list(j) == ["error"], b
    e = j["error"]
    assert list(e) == ["message", "type", "param", "code"], e
    assert e["code"] == "host_not_allowed" and e["type"] == "permission_error", e


@h.check("loopback gateway: Host attacker.example:PORT (and other names, wrong ports) -> 403 "
         "host_not_allowed, nothing reaches the engine; /v1/models and /metrics refused too")
def _():
    before = engine_chats()
    for host in (f"attacker.example:{G.port}", "attacker.example", f"127.0.0.1.nip.io:{G.port}",
                 f"localhost.attacker.example:{G.port}", "localhost:1", f"127.0.0.1:{G.port + 1}",
                 "", f"::1:{G.port}"):
        st, j, b = chat(G, host)
        refused(st, j, b)
    for path in ("/v1/models", "/metrics"):
        st, _, b = h.request("GET", G.port, path, headers={"Host": "attacker.example"})
        refused(st, json.loads(b), b)
    assert engine_chats() == before
    lines = [ln for ln in G.text().splitlines() if " access " in ln and "status=403" in ln]
    assert lines, "a refused request has an access-log line"


@h.check("loopback gateway: Host localhost:PORT, 127.0.0.1:PORT, [::1]:PORT, localhost are "
         "served")
def _():
    for host in (f"localhost:{G.port}", f"127.0.0.1:{G.port}", f"[::1]:{G.port}", "localhost",
                 f"LocalHost:{G.port}"):
        st, j, b = chat(G, host)
        assert st == 200 and j["choices"], (host, st, b[:300])


@h.check("probes answer any Host: /healthz and /readyz with Host attacker.example -> 200")
def _():
    for path in ("/healthz", "/readyz"):
        st, _, b = h.request("GET", G.port, path, headers={"Host": "attacker.example"})
        assert st == 200, (path, st, b)


@h.check("--allowed-host NAME serves NAME on any port, NAME:PORT on that port only; other "
         "names are still refused")
def _():
    for host in ("gw.example", f"GW.example:{GA.port}", "gw.example:443", "pf.example:9000",
                 f"127.0.0.1:{GA.port}"):
        st, j, b = chat(GA, host)
        assert st == 200, (host, st, b[:300])
    for host in ("pf.example:9001", "pf.example", f"attacker.example:{GA.port}"):
        st, j, b = chat(GA, host)
        refused(st, j, b)


@h.check("--help lists --allowed-host")
def _():
    import subprocess
    r = subprocess.run([h.BRIX, "gateway", "--help"], capture_output=True, timeout=20)
    assert b"--allowed-host" in r.stdout + r.stderr


@h.check("shutdown: clean logs")
def _():
    errs = []
    for p in (GA, G, E):
        try:
            p.stop()
        except AssertionError as ex:
            errs.append(str(ex)[:3000])
    assert not errs, "\n".join(errs)


h.run()
