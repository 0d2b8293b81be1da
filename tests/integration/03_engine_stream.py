"""03 — engine-sim streaming (SSE): wire framing, chat and completion chunk
shapes, usage options, n>1, stop strings while streaming, and client
disconnects in the middle of a stream."""
import json
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

E = h.engine(["--seed", "3", "--output-len-dist", "none", "--max-model-len", "8192"])
MSGS = [{"role": "user", "content": "Write a short poem about rivers."}]
CHAT = "/v1/chat/completions"
CMPL = "/v1/completions"


def stream(path, port=None, **kw):
    body = {"messages": MSGS} if path == CHAT else {"prompt": "Rivers run to the sea"}
    body.update(kw)
    body["stream"] = True
    st, hd, ev, raw = h.sse(port or E.port, path, body)
    assert st == 200, (st, raw[:300])
    assert hd.get("content-type") == "text/event-stream; charset=utf-8", hd
    assert ev and ev[-1] == "[DONE]" and ev.count("[DONE]") == 1, ev[-3:]
    assert raw.endswith(b"data: [DONE]\n\n"), raw[-40:]
    chunks = ev[:-1]
    ids = {c["id"] for c in chunks}
    created = {c["created"] for c in chunks}
    assert len(ids) == 1 and len(created) == 1, (ids, created)  # fixed for the whole stream
    return chunks


def nonstream(path, **kw):
    body = {"messages": MSGS} if path == CHAT else {"prompt": "Rivers run to the sea"}
    body.update(kw)
    st, _, j, b = h.post(E.port, path, body)
    assert st == 200, (st, b[:300])
    return j


def choice_chunks(chunks):
    return [c for c in chunks if c["choices"]]


def content_of(chunks, index=0):
    out = ""
    for c in choice_chunks(chunks):
        for ch in c["choices"]:
            if ch["index"] == index:
                out += ch["delta"].get("content", "") if "delta" in ch else ch["text"]
    return out


def prompt_tokens(**body):
    st, _, j, _ = h.post(E.port, "/tokenize", body)
    assert st == 200
    return j["count"]


# --------------------------------------------------------------- framing --

@h.check("SSE wire format: chunked transfer, data: <json>\\n\\n events, [DONE] last")
def _():
    body = json.dumps({"messages": MSGS, "max_tokens": 5, "stream": True}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Connection: close\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    raw = h.raw_exchange(E.port, req, read_timeout=10)
    head, sep, rest = raw.partition(b"\r\n\r\n")
    assert sep, raw[:300]
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 200 OK", lines[0]
    hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert hdrs.get("transfer-encoding") == "chunked", hdrs
    assert "content-length" not in hdrs, hdrs
    assert hdrs.get("content-type") == "text/event-stream; charset=utf-8", hdrs
    # decode the chunked body strictly
    body_out, pos, sizes = b"", 0, []
    while True:
        eol = rest.index(b"\r\n", pos)
        size = int(rest[pos:eol], 16)
        sizes.append(size)
        pos = eol + 2
        if size == 0:
            assert rest[pos:] == b"\r\n", f"bytes after the last chunk: {rest[pos:]!r}"
            break
        body_out += rest[pos:pos + size]
        assert rest[pos + size:pos + size + 2] == b"\r\n", "chunk not followed by CRLF"
        pos += size + 2
    text = body_out.decode()
    events = text.split("\n\n")
    assert events[-1] == "", "body does not end with a blank line"
    events = events[:-1]
    assert events[-1] == "data: [DONE]", events[-1]
    for ev in events[:-1]:
        assert ev.startswith("data: {") and "\n" not in ev, repr(ev)
        json.loads(ev[6:])
    # role + 5 tokens + finish chunk at most, never fewer than role + 5 content + [DONE]
    assert len(events) >= 7, len(events)


@h.check("chat chunks: shape, first chunk role assistant + content '', finish at the end")
def _():
    chunks = stream(CHAT, max_tokens=6)
    for c in chunks:
        assert list(c)[:5] == ["id", "object", "created", "model", "choices"], list(c)
        assert c["object"] == "chat.completion.chunk" and c["id"].startswith("chatcmpl-"), c
        assert c["model"] == "llama-3-8b" and "usage" not in c, c
        assert len(c["choices"]) == 1 and c["choices"][0]["index"] == 0, c
        assert c["choices"][0]["logprobs"] is None, c
    first = chunks[0]["choices"][0]
    assert first["delta"] == {"role": "assistant", "content": ""}, first
    assert first["finish_reason"] is None, first
    assert all("role" not in c["choices"][0]["delta"] for c in chunks[1:]), "role sent twice"
    fins = [c["choices"][0]["finish_reason"] for c in chunks]
    assert fins[-1] == "length" and all(f is None for f in fins[:-1]), fins
    assert chunks[-1]["choices"][0]["stop_reason"] is None, chunks[-1]


@h.check("streamed content equals the non-streaming text (chat and completions)")
def _():
    for path in (CHAT, CMPL):
        for mt in (1, 9, 40):
            s = content_of(stream(path, max_tokens=mt))
            j = nonstream(path, max_tokens=mt)
            c = j["choices"][0]
            want = c["message"]["content"] if path == CHAT else c["text"]
            assert s == want, (path, mt, s, want)


@h.check("finish chunk carries the last token's text, one chunk per token (vLLM)")
def _():
    # vLLM sends, per choice: [role chunk (chat)], one chunk per generated token; the chunk of
    # the last token carries finish_reason (no separate empty chunk after a length finish).
    for path in (CHAT, CMPL):
        chunks = choice_chunks(stream(path, max_tokens=4))
        if path == CHAT:
            chunks = chunks[1:]
        fin = chunks[-1]["choices"][0]
        text = fin["delta"]["content"] if path == CHAT else fin["text"]
        assert len(chunks) == 4, (path, [c["choices"][0] for c in chunks])
        assert text != "" and fin["finish_reason"] == "length", (path, fin)


@h.check("EOS finish while streaming: last chunk has empty text and finish_reason stop")
def _():
    e = h.engine(["--seed", "3", "--output-len-dist", "fixed:3"])
    try:
        for path in (CHAT, CMPL):
            chunks = choice_chunks(stream(path, port=e.port,
                                          stream_options={"include_usage": True}))
            if path == CHAT:
                chunks = chunks[1:]
            texts = [c["choices"][0]["delta"]["content"] if path == CHAT else
                     c["choices"][0]["text"] for c in chunks]
            fins = [c["choices"][0]["finish_reason"] for c in chunks]
            # two text tokens, then the EOS step: no text, finish stop
            assert len(chunks) == 3 and texts[0] and texts[1] and texts[2] == "", (path, texts)
            assert fins == [None, None, "stop"], (path, fins)
            assert chunks[-1]["choices"][0]["stop_reason"] is None
    finally:
        e.stop()


@h.check("completion chunks: vLLM shape with usage:null, cmpl- id, text deltas")
def _():
    chunks = stream(CMPL, max_tokens=5)
    for c in chunks:
        assert list(c) == ["id", "object", "created", "model", "choices", "usage"], list(c)
        assert c["object"] == "text_completion" and c["id"].startswith("cmpl-"), c
        assert c["usage"] is None, c
        ch = c["choices"][0]
        assert list(ch) == ["index", "text", "logprobs", "finish_reason", "stop_reason",
                            "prompt_token_ids", "token_ids"], list(ch)
        assert ch["index"] == 0 and ch["logprobs"] is None and "delta" not in ch, ch
        assert ch["prompt_token_ids"] is None and ch["token_ids"] is None, ch
    fins = [c["choices"][0]["finish_reason"] for c in chunks]
    assert fins[-1] == "length" and all(f is None for f in fins[:-1]), fins
    assert content_of(chunks) == nonstream(CMPL, max_tokens=5)["choices"][0]["text"]


# ----------------------------------------------------------------- usage --

@h.check("stream_options include_usage: one last chunk with choices [] and usage")
def _():
    for path, so in ((CHAT, {"include_usage": True}), (CMPL, {"include_usage": True}),
                     (CHAT, {})):  # vLLM: include_usage defaults to true once present
        chunks = stream(path, max_tokens=7, stream_options=so)
        last = chunks[-1]
        assert last["choices"] == [], (path, so, last)
        n = prompt_tokens(messages=MSGS) if path == CHAT else \
            prompt_tokens(prompt="Rivers run to the sea")
        assert last["usage"] == {"prompt_tokens": n, "total_tokens": n + 7,
                                 "completion_tokens": 7}, (path, last["usage"])
        assert sum(1 for c in chunks if not c["choices"]) == 1
        for c in chunks[:-1]:
            assert c["choices"] and c.get("usage") is None, (path, c)


@h.check("no stream_options / include_usage false: no usage anywhere")
def _():
    for so in (None, {"include_usage": False}, {"include_usage": False,
                                                "continuous_usage_stats": True}):
        for path in (CHAT, CMPL):
            kw = {"max_tokens": 4}
            if so is not None:
                kw["stream_options"] = so
            chunks = stream(path, **kw)
            for c in chunks:
                assert c["choices"], (path, so, c)
                assert c.get("usage") is None, (path, so, c)
                if path == CHAT:
                    assert "usage" not in c, (so, c)


@h.check("continuous_usage_stats: usage on every chunk, completion_tokens grows by one")
def _():
    n = prompt_tokens(messages=MSGS)
    chunks = stream(CHAT, max_tokens=5,
                    stream_options={"include_usage": True, "continuous_usage_stats": True})
    for c in chunks:
        u = c["usage"]
        assert u["prompt_tokens"] == n and u["total_tokens"] == n + u["completion_tokens"], u
    seq = [c["usage"]["completion_tokens"] for c in chunks]
    assert seq == sorted(seq) and seq[-1] == 5, seq
    assert chunks[-1]["choices"] == [], chunks[-1]
    # the role chunk comes before any token: vLLM reports completion_tokens 0 there
    assert chunks[0]["choices"][0]["delta"].get("role") == "assistant"
    assert seq[0] == 0, f"role chunk usage {chunks[0]['usage']}"
    content = [c for c in chunks[1:] if c["choices"] and c["choices"][0]["delta"].get("content")]
    assert [c["usage"]["completion_tokens"] for c in content] == list(range(1, 6)), seq


@h.check("stream_options without stream → 400")
def _():
    for path in (CHAT, CMPL):
        body = {"messages": MSGS} if path == CHAT else {"prompt": "x"}
        for extra in ({"stream": False}, {}):
            b = dict(body, stream_options={"include_usage": True}, **extra)
            st, _, j, raw = h.post(E.port, path, b)
            assert st == 400, (path, extra, st, raw)
            assert j["error"]["message"] == \
                "Stream options can only be defined when `stream=True`.", j


# -------------------------------------------------------------------- n>1 --

@h.check("n=2 streaming: both indices, one role and one finish chunk each, [DONE] once")
def _():
    for path in (CHAT, CMPL):
        chunks = stream(path, max_tokens=6, n=2, stream_options={"include_usage": True})
        per = {0: [], 1: []}
        for c in choice_chunks(chunks):
            assert len(c["choices"]) == 1, c
            per[c["choices"][0]["index"]].append(c["choices"][0])
        j = nonstream(path, max_tokens=6, n=2)
        for i in (0, 1):
            fins = [ch["finish_reason"] for ch in per[i] if ch["finish_reason"]]
            assert fins == ["length"], (path, i, fins)
            assert per[i][-1]["finish_reason"] == "length", (path, i)
            if path == CHAT:
                assert sum(1 for ch in per[i] if "role" in ch["delta"]) == 1, (i, per[i])
                assert per[i][0]["delta"].get("role") == "assistant"
            want = j["choices"][i]["message"]["content"] if path == CHAT else \
                j["choices"][i]["text"]
            assert content_of(chunks, i) == want, (path, i)
        assert chunks[-1]["usage"]["completion_tokens"] == 12, chunks[-1]


# ----------------------------------------------------------- stop strings --

@h.check("stop strings while streaming: no byte of the stop string leaks; held text released")
def _():
    full = nonstream(CHAT, max_tokens=40)["choices"][0]["message"]["content"]
    st, _, t, _ = h.post(E.port, "/tokenize", {"prompt": full, "add_special_tokens": False})
    pieces = [h.post(E.port, "/detokenize", {"tokens": [x]})[2]["prompt"] for x in t["tokens"]]
    assert "".join(pieces) == full
    stops = []
    for k in (5, 12, 25):
        p, q = pieces[k], pieces[k + 1]
        stops.append(p + q)                # two whole tokens
        stops.append(p[-2:] + q[:3])       # spans a token boundary
        stops.append(p.strip()[:3])        # inside one token
    tried = 0
    for stop in stops:
        at = full.find(stop)
        if at < 0 or not stop:
            continue
        tried += 1
        chunks = stream(CHAT, max_tokens=40, stop=[stop])
        got = content_of(chunks)
        assert got == full[:at], (stop, got, full[:at])
        fin = chunks[-1]["choices"][0]
        assert fin["finish_reason"] == "stop" and fin["stop_reason"] == stop, (stop, fin)
        ns = nonstream(CHAT, max_tokens=40, stop=[stop])["choices"][0]
        assert ns["message"]["content"] == got and ns["stop_reason"] == stop
    assert tried >= 6, tried
    # a stop string whose prefix shows up but never completes: everything is streamed
    k = 8
    never = pieces[k] + "\u0001never"
    chunks = stream(CHAT, max_tokens=40, stop=[never])
    assert content_of(chunks) == full, (never, content_of(chunks))
    fin = chunks[-1]["choices"][0]
    assert fin["finish_reason"] == "length" and fin["stop_reason"] is None, fin
    # completions stream too
    ctext = nonstream(CMPL, max_tokens=30)["choices"][0]["text"]
    stop = ctext[10:14]
    chunks = stream(CMPL, max_tokens=30, stop=stop)
    assert content_of(chunks) == ctext[:ctext.find(stop)], stop
    assert chunks[-1]["choices"][0]["stop_reason"] == stop


# ------------------------------------------------------------- disconnect --

def wait_metric(port, name, want, timeout=20):
    deadline = time.time() + timeout
    v = None
    while time.time() < deadline:
        v = h.metric_value(h.metrics(port), name)
        if v == want:
            return v
        time.sleep(0.05)
    raise AssertionError(f"{name} = {v}, want {want}")


@h.check("client disconnect mid-stream: request aborted, engine keeps serving")
def _():
    body = json.dumps({"messages": MSGS, "max_tokens": 7000, "stream": True}).encode()
    req = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
    for _ in range(3):
        s = socket.create_connection(("127.0.0.1", E.port), timeout=10)
        s.sendall(req)
        got = b""
        while got.count(b"data: ") < 5:
            b = s.recv(4096)
            assert b, f"stream ended early: {got[-200:]!r}"
            got += b
        assert b"[DONE]" not in got
        running = h.metric_value(h.metrics(E.port), "vllm:num_requests_running")
        assert running == 1, running
        s.close()
        wait_metric(E.port, "vllm:num_requests_running", 0)
    assert h.metric_value(h.metrics(E.port), "vllm:num_requests_waiting") == 0
    # vLLM does not count client aborts in request_success{finished_reason="abort"}
    assert h.metric_value(h.metrics(E.port), "vllm:request_success_total",
                          {"finished_reason": "abort"}) == 0
    assert E.text().count("client disconnected") >= 3, E.text()[-2000:]
    # next requests are fine, streaming and not
    assert content_of(stream(CHAT, max_tokens=3))
    assert nonstream(CMPL, max_tokens=2)["usage"]["completion_tokens"] == 2


@h.check("engine stops cleanly")
def _():
    E.stop()


h.run()
