"""02 — engine-sim's non-streaming OpenAI/vLLM API: /health, /version,
/v1/models, chat and text completions (shapes, usage, ids, determinism,
lengths, stop strings, n), /tokenize, /detokenize and /v1/embeddings."""
import base64
import json
import math
import os
import re
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(__file__))
import harness as h  # noqa: E402

BASE = ["--seed", "1", "--model", "/models/llama-3-8b", "--served-model-name", "m1", "m2",
        "--max-model-len", "512", "--output-len-dist", "none"]
E = h.engine(BASE)  # never draws EOS: lengths are exactly max_tokens
# another seed, and EOS always at the 3rd output token
E3 = h.engine(["--seed", "2", "--output-len-dist", "fixed:3", "--max-model-len", "512"])
MSGS = [{"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colours of the rainbow."}]

CHAT_KEYS = ["id", "object", "created", "model", "choices", "service_tier", "system_fingerprint",
             "usage", "prompt_logprobs", "prompt_token_ids", "kv_transfer_params"]
CHAT_CHOICE_KEYS = ["index", "message", "logprobs", "finish_reason", "stop_reason", "token_ids"]
MESSAGE_KEYS = ["role", "content", "refusal", "annotations", "audio", "function_call",
                "tool_calls", "reasoning_content"]
CMPL_KEYS = ["id", "object", "created", "model", "choices", "service_tier", "system_fingerprint",
             "usage", "kv_transfer_params"]
CMPL_CHOICE_KEYS = ["index", "text", "logprobs", "finish_reason", "stop_reason", "token_ids",
                    "prompt_logprobs", "prompt_token_ids"]
USAGE_KEYS = ["prompt_tokens", "total_tokens", "completion_tokens", "prompt_tokens_details"]


def ok(port, path, body, headers=None):
    st, hd, j, b = h.post(port, path, body, headers)
    assert st == 200, f"{path} {body} -> {st}: {b[:500]!r}"
    assert hd.get("content-type") == "application/json", hd
    return j


def bad(port, path, body, status=400, headers=None):
    st, hd, j, b = h.post(port, path, body, headers)
    assert st == status, f"{path} {body} -> {st}, want {status}: {b[:500]!r}"
    assert j and set(j) == {"error"}, b
    err = j["error"]
    assert list(err) == ["message", "type", "param", "code"], err
    assert err["code"] == status, err
    return err


def chat(port, **kw):
    body = {"messages": MSGS}
    body.update(kw)
    return ok(port, "/v1/chat/completions", body)


def cmpl(port, prompt="The quick brown fox", **kw):
    body = {"prompt": prompt}
    body.update(kw)
    return ok(port, "/v1/completions", body)


def tokenize(port, **body):
    j = ok(port, "/tokenize", body)
    assert list(j) == ["count", "max_model_len", "tokens", "token_strs"], j
    assert j["count"] == len(j["tokens"]), j
    return j


def text_of(j):
    c = j["choices"][0]
    return c["message"]["content"] if "message" in c else c["text"]


def check_usage(u, prompt, completion):
    assert list(u) == USAGE_KEYS, u
    assert u["prompt_tokens"] == prompt, (u, prompt)
    assert u["completion_tokens"] == completion, (u, completion)
    assert u["total_tokens"] == prompt + completion, u
    assert u["prompt_tokens_details"] is None, u


def created_ok(t):
    assert isinstance(t, int) and abs(t - time.time()) < 3600, t


# ---------------------------------------------------------------- basics --

@h.check("/health: 200, empty body; HEAD too; POST is 405")
def _():
    st, hd, b = h.request("GET", E.port, "/health")
    assert st == 200 and b == b"" and hd.get("content-length") == "0", (st, hd, b)
    st, hd, b = h.request("HEAD", E.port, "/health")
    assert st == 200 and b == b"", (st, b)
    st, hd, b = h.request("POST", E.port, "/health", body={})
    assert st == 405, st


@h.check("/version: JSON with the mirrored vLLM version")
def _():
    st, hd, b = h.request("GET", E.port, "/version")
    assert st == 200 and hd.get("content-type") == "application/json", (st, hd)
    j = json.loads(b)
    assert re.fullmatch(r"\d+\.\d+\.\d+", j.get("version", "")), j


@h.check("/v1/models: one card per served name, vLLM fields and permission")
def _():
    st, j = h.get_json(E.port, "/v1/models")
    assert st == 200
    assert list(j) == ["object", "data"] and j["object"] == "list", j
    assert [d["id"] for d in j["data"]] == ["m1", "m2"], j
    for d in j["data"]:
        assert list(d) == ["id", "object", "created", "owned_by", "root", "parent",
                           "max_model_len", "permission"], list(d)
        assert d["object"] == "model" and d["owned_by"] == "vllm", d
        assert d["root"] == "/models/llama-3-8b" and d["parent"] is None, d
        assert d["max_model_len"] == 512, d
        created_ok(d["created"])
        assert len(d["permission"]) == 1, d
        p = d["permission"][0]
        assert re.fullmatch(r"modelperm-[0-9a-f]+", p["id"]), p
        want = {"object": "model_permission", "allow_create_engine": False, "allow_sampling": True,
                "allow_logprobs": True, "allow_search_indices": False, "allow_view": True,
                "allow_fine_tuning": False, "organization": "*", "group": None,
                "is_blocking": False}
        for k, v in want.items():
            assert p[k] == v and type(p[k]) is type(v), (k, p[k], v)
        assert set(p) == set(want) | {"id", "created"}, sorted(p)
        created_ok(p["created"])
    # without --served-model-name the card's id is --model
    st, j = h.get_json(E3.port, "/v1/models")
    assert [d["id"] for d in j["data"]] == ["llama-3-8b"] and j["data"][0]["root"] == "llama-3-8b"


# ------------------------------------------------------- chat/completions --

@h.check("chat: every vLLM field, usage arithmetic, id from x-request-id, model echo")
def _():
    j = ok(E.port, "/v1/chat/completions", {"model": "m2", "messages": MSGS, "max_tokens": 7},
           headers={"x-request-id": "req-42_abc"})
    assert list(j) == CHAT_KEYS, list(j)
    assert j["id"] == "chatcmpl-req-42_abc", j["id"]
    assert j["object"] == "chat.completion" and j["model"] == "m2", j
    created_ok(j["created"])
    for k in ("service_tier", "system_fingerprint", "prompt_logprobs", "prompt_token_ids",
              "kv_transfer_params"):
        assert j[k] is None, (k, j[k])
    assert len(j["choices"]) == 1
    c = j["choices"][0]
    assert list(c) == CHAT_CHOICE_KEYS, list(c)
    assert c["index"] == 0 and c["logprobs"] is None and c["token_ids"] is None, c
    assert c["finish_reason"] == "length" and c["stop_reason"] is None, c
    m = c["message"]
    assert list(m) == MESSAGE_KEYS, list(m)
    assert m["role"] == "assistant" and isinstance(m["content"], str) and m["content"], m
    assert m["tool_calls"] == [], m
    for k in ("refusal", "annotations", "audio", "function_call", "reasoning_content"):
        assert m[k] is None, (k, m)
    n = tokenize(E.port, messages=MSGS)["count"]
    check_usage(j["usage"], n, 7)
    # no model field → the first served name; no x-request-id → chatcmpl-<32 hex>
    j = chat(E.port, max_tokens=2)
    assert j["model"] == "m1", j["model"]
    assert re.fullmatch(r"chatcmpl-[0-9a-f]{32}", j["id"]), j["id"]
    j2 = chat(E.port, max_tokens=2)
    assert j2["id"] != j["id"], "ids must be unique per request"


@h.check("completions: every vLLM field, usage, cmpl- id, default max_tokens 16")
def _():
    j = ok(E.port, "/v1/completions", {"model": "m1", "prompt": "Once upon a time"},
           headers={"x-request-id": "abc"})
    assert list(j) == CMPL_KEYS, list(j)
    assert j["id"] == "cmpl-abc" and j["object"] == "text_completion" and j["model"] == "m1", j
    created_ok(j["created"])
    for k in ("service_tier", "system_fingerprint", "kv_transfer_params"):
        assert j[k] is None, (k, j[k])
    c = j["choices"][0]
    assert list(c) == CMPL_CHOICE_KEYS, list(c)
    assert c["index"] == 0 and c["finish_reason"] == "length" and c["stop_reason"] is None, c
    for k in ("logprobs", "token_ids", "prompt_logprobs", "prompt_token_ids"):
        assert c[k] is None, (k, c)
    n = tokenize(E.port, prompt="Once upon a time")["count"]
    check_usage(j["usage"], n, 16)  # vLLM's CompletionRequest.max_tokens default
    j = cmpl(E.port)
    assert re.fullmatch(r"cmpl-[0-9a-f]{32}", j["id"]), j["id"]
    assert j["model"] == "m1"


@h.check("completion text re-tokenizes to completion_tokens; /detokenize gives it back")
def _():
    for kind in ("chat", "cmpl"):
        j = chat(E.port, max_tokens=40) if kind == "chat" else cmpl(E.port, max_tokens=40)
        text = text_of(j)
        t = tokenize(E.port, prompt=text, add_special_tokens=False)
        assert t["count"] == j["usage"]["completion_tokens"] == 40, (kind, t["count"], text)
        d = ok(E.port, "/detokenize", {"tokens": t["tokens"]})
        assert d == {"prompt": text}, (d, text)


@h.check("determinism: same seed+prompt → same text; request seed and engine --seed change it")
def _():
    a = text_of(chat(E.port, max_tokens=12))
    b = text_of(chat(E.port, max_tokens=12))
    assert a == b, (a, b)
    # a longer request starts with the same tokens
    assert text_of(chat(E.port, max_tokens=20)).startswith(a)
    s5 = text_of(chat(E.port, max_tokens=12, seed=5))
    assert s5 == text_of(chat(E.port, max_tokens=12, seed=5))
    assert s5 != text_of(chat(E.port, max_tokens=12, seed=6)), "request seed ignored"
    other = text_of(chat(E3.port, max_tokens=12, ignore_eos=True))
    assert other != a, "--seed does not change the text"
    # same --seed in a fresh engine → same text as E
    e = h.engine(BASE)
    try:
        assert text_of(chat(e.port, max_tokens=12)) == a
    finally:
        e.stop()


@h.check("prompt as token ids (flat and nested) = the same prompt as text")
def _():
    p = "Tell me about the sea"
    ids = tokenize(E.port, prompt=p)["tokens"]
    assert ids[0] == 1, ids  # BOS
    t = cmpl(E.port, p, max_tokens=9)
    for prompt in (ids, [ids]):
        j = cmpl(E.port, prompt, max_tokens=9)
        assert j["usage"]["prompt_tokens"] == len(ids), j["usage"]
        assert text_of(j) == text_of(t), (text_of(j), text_of(t))
    e = bad(E.port, "/v1/completions", {"prompt": [1, -5, 7]})
    assert "token ids" in e["message"], e
    bad(E.port, "/v1/completions", {"prompt": [1, 99999999]})
    bad(E.port, "/v1/completions", {"prompt": []})
    bad(E.port, "/v1/completions", {"max_tokens": 3})  # no prompt


@h.check("max_tokens / max_completion_tokens honoured, finish_reason length")
def _():
    for mt in (1, 5, 33):
        j = chat(E.port, max_tokens=mt)
        assert j["usage"]["completion_tokens"] == mt, (mt, j["usage"])
        assert j["choices"][0]["finish_reason"] == "length"
        j = cmpl(E.port, max_tokens=mt)
        assert j["usage"]["completion_tokens"] == mt, (mt, j["usage"])
        assert j["choices"][0]["finish_reason"] == "length"
    j = chat(E.port, max_completion_tokens=4)
    assert j["usage"]["completion_tokens"] == 4, j["usage"]
    j = chat(E.port, max_completion_tokens=3, max_tokens=9)  # vLLM: max_completion_tokens wins
    assert j["usage"]["completion_tokens"] == 3, j["usage"]
    # chat without a limit runs to the context length (max_model_len - prompt)
    n = tokenize(E.port, messages=MSGS)["count"]
    j = chat(E.port)
    assert j["usage"]["completion_tokens"] == 512 - n, (j["usage"], n)
    assert j["usage"]["total_tokens"] == 512 and j["choices"][0]["finish_reason"] == "length"


@h.check("--output-len-dist fixed:3: EOS at token 3 (stop); ignore_eos overrides")
def _():
    for j in (chat(E3.port), cmpl(E3.port)):
        c = j["choices"][0]
        assert c["finish_reason"] == "stop" and c["stop_reason"] is None, c
        assert j["usage"]["completion_tokens"] == 3, j["usage"]
        # the EOS token is counted but has no text: two pieces of text
        assert tokenize(E3.port, prompt=text_of(j), add_special_tokens=False)["count"] == 2
    j = chat(E3.port, ignore_eos=True, max_tokens=10)
    assert j["usage"]["completion_tokens"] == 10 and j["choices"][0]["finish_reason"] == "length"
    j = cmpl(E3.port, ignore_eos=True, max_tokens=10)
    assert j["usage"]["completion_tokens"] == 10 and j["choices"][0]["finish_reason"] == "length"
    # max_tokens below the EOS point: length
    j = chat(E3.port, max_tokens=2)
    assert j["usage"]["completion_tokens"] == 2 and j["choices"][0]["finish_reason"] == "length"


@h.check("min_tokens holds EOS back; min_tokens > max_tokens is a 400 (vLLM)")
def _():
    j = chat(E3.port, min_tokens=5, max_tokens=50)
    ct = j["usage"]["completion_tokens"]
    assert 5 < ct < 50 and j["choices"][0]["finish_reason"] == "stop", j["usage"]
    j = chat(E3.port, min_tokens=2, max_tokens=50)
    assert j["usage"]["completion_tokens"] == 3, j["usage"]  # already past min_tokens
    e = bad(E3.port, "/v1/chat/completions", {"messages": MSGS, "min_tokens": 5, "max_tokens": 3})
    assert e["message"] == "min_tokens must be less than or equal to max_tokens=3, got 5.", e


@h.check("stop strings: text cut before the stop, finish stop, stop_reason = the string")
def _():
    full = text_of(chat(E.port, max_tokens=24))
    toks = tokenize(E.port, prompt=full, add_special_tokens=False)["tokens"]
    pieces = [ok(E.port, "/detokenize", {"tokens": [t]})["prompt"] for t in toks]
    assert "".join(pieces) == full
    offs = [len("".join(pieces[:i])) for i in range(len(pieces) + 1)]
    # a stop string equal to piece k, and one spanning pieces k and k+1, each chosen where
    # its first occurrence in the text is exactly there
    k = next(i for i in range(6, 20) if len(pieces[i]) >= 3 and full.find(pieces[i]) == offs[i])
    span = next((pieces[i][-2:] + pieces[i + 1][:2], i + 1) for i in range(4, 20)
                if len(pieces[i]) >= 2 and len(pieces[i + 1]) >= 2 and
                full.find(pieces[i][-2:] + pieces[i + 1][:2]) == offs[i + 1] - 2)
    cases = [(pieces[k], k), span]
    for stop, last in cases:
        at = full.find(stop)
        for stops in ([stop], ["zzzz-not-there", stop]):
            j = chat(E.port, max_tokens=24, stop=stops if len(stops) > 1 else stop)
            c = j["choices"][0]
            assert text_of(j) == full[:at], (stop, text_of(j), full[:at])
            assert c["finish_reason"] == "stop" and c["stop_reason"] == stop, c
            # the token that completed the stop string is counted
            assert j["usage"]["completion_tokens"] == last + 1, (j["usage"], last, stop)
    # completions: a string stop, same rules
    ctext = text_of(cmpl(E.port, max_tokens=24))
    stop = ctext[len(ctext) // 2:len(ctext) // 2 + 3]
    j = cmpl(E.port, max_tokens=24, stop=stop)
    c = j["choices"][0]
    assert c["text"] == ctext[:ctext.find(stop)] and c["stop_reason"] == stop, (c, stop, ctext)
    assert c["finish_reason"] == "stop"
    # a stop string that never occurs changes nothing
    j = chat(E.port, max_tokens=24, stop=["\u2603never"])
    assert text_of(j) == full and j["choices"][0]["stop_reason"] is None
    assert j["choices"][0]["finish_reason"] == "length"
    bad(E.port, "/v1/chat/completions", {"messages": MSGS, "stop": 5})


@h.check("n=3: three choices with indices 0..2, usage sums completions, prompt once")
def _():
    for kind in ("chat", "cmpl"):
        j = chat(E.port, n=3, max_tokens=6) if kind == "chat" else cmpl(E.port, n=3, max_tokens=6)
        ch = j["choices"]
        assert [c["index"] for c in ch] == [0, 1, 2], ch
        texts = [c["message"]["content"] if kind == "chat" else c["text"] for c in ch]
        assert len(set(texts)) == 3, f"choices are identical: {texts}"
        assert all(c["finish_reason"] == "length" for c in ch)
        n = (tokenize(E.port, messages=MSGS) if kind == "chat"
             else tokenize(E.port, prompt="The quick brown fox"))["count"]
        check_usage(j["usage"], n, 18)
    # with EOS at 3 each: 3 tokens each
    j = chat(E3.port, n=2)
    check_usage(j["usage"], tokenize(E3.port, messages=MSGS)["count"], 6)
    bad(E.port, "/v1/chat/completions", {"messages": MSGS, "n": 0})


# -------------------------------------------------- tokenize / detokenize --

@h.check("/tokenize: prompt and messages forms, specials, token strs, consistent with usage")
def _():
    p = "Hello there, world!"
    t = tokenize(E.port, prompt=p)
    assert t["max_model_len"] == 512 and t["token_strs"] is None, t
    assert t["tokens"][0] == 1, t
    t2 = tokenize(E.port, prompt=p, add_special_tokens=False)
    assert t2["tokens"] == t["tokens"][1:], (t, t2)
    ts = tokenize(E.port, prompt=p, return_token_strs=True)
    assert ts["tokens"] == t["tokens"] and len(ts["token_strs"]) == ts["count"], ts
    assert ts["token_strs"][0] == "<|begin_of_text|>" and "".join(ts["token_strs"][1:]) == p, ts
    assert cmpl(E.port, p, max_tokens=1)["usage"]["prompt_tokens"] == t["count"]
    # chat form: the template is applied (BOS included by it), generation prompt by default
    c = tokenize(E.port, messages=MSGS)
    assert c["tokens"][0] == 1 and c["tokens"].count(1) == 1, c
    assert chat(E.port, max_tokens=1)["usage"]["prompt_tokens"] == c["count"]
    cs = tokenize(E.port, messages=MSGS, return_token_strs=True)
    assert len(cs["token_strs"]) == cs["count"], cs
    joined = "".join(cs["token_strs"])
    assert joined.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>"), joined
    assert joined.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n"), joined
    ng = tokenize(E.port, messages=MSGS, add_generation_prompt=False)
    gen = tokenize(E.port, prompt="<|start_header_id|>assistant<|end_header_id|>\n\n",
                   add_special_tokens=False)["tokens"]
    assert ng["tokens"] + gen == c["tokens"], (ng, gen, c)
    # content as text parts is the same prompt as a string
    parts = [{"role": "user", "content": [{"type": "text", "text": "Hello "},
                                          {"type": "text", "text": "there"}]}]
    assert tokenize(E.port, messages=parts)["tokens"] == \
        tokenize(E.port, messages=[{"role": "user", "content": "Hello there"}])["tokens"]
    bad(E.port, "/tokenize", {"prompt": 5})
    e = bad(E.port, "/tokenize", {"prompt": "x", "model": "nope"}, status=404)
    assert e["message"] == "The model `nope` does not exist.", e


@h.check("/detokenize: specials, generated ids, bad ids → 400")
def _():
    assert ok(E.port, "/detokenize", {"tokens": [1, 2]}) == \
        {"prompt": "<|begin_of_text|><|end_of_text|>"}
    assert ok(E.port, "/detokenize", {"tokens": []}) == {"prompt": ""}
    bad(E.port, "/detokenize", {"tokens": [-1]})
    bad(E.port, "/detokenize", {"tokens": "1 2"})
    bad(E.port, "/detokenize", {"tokens": [1], "model": "zzz"}, status=404)


@h.check("/detokenize: a fractional token id is refused, not truncated (vLLM's list[int])")
def _():
    e = bad(E.port, "/detokenize", {"tokens": [1.5]})
    assert "integers" in e["message"], e
    bad(E.port, "/detokenize", {"tokens": [2, 0.25]})
    # an integral float is an integer to pydantic's lax mode, as to /tokenize's inputs
    assert ok(E.port, "/detokenize", {"tokens": [2.0]}) == {"prompt": "<|end_of_text|>"}


# ------------------------------------------------------------- embeddings --

def emb(port, **body):
    j = ok(port, "/v1/embeddings", body)
    assert list(j) == ["id", "object", "created", "model", "data", "usage"], list(j)
    assert j["object"] == "list" and re.fullmatch(r"embd-[0-9a-f]{32}", j["id"]), j["id"]
    for i, d in enumerate(j["data"]):
        assert d["index"] == i and d["object"] == "embedding", d
    return j


def norm(v):
    return math.sqrt(sum(x * x for x in v))


@h.check("/v1/embeddings float: default dims, unit norm, deterministic, usage")
def _():
    j = emb(E.port, input="The quick brown fox")
    v = j["data"][0]["embedding"]
    assert len(v) == 4096, len(v)  # --embedding-dim default
    assert abs(norm(v) - 1) < 1e-5, norm(v)
    assert j["model"] == "m1"
    n = tokenize(E.port, prompt="The quick brown fox")["count"]
    assert j["usage"] == {"prompt_tokens": n, "total_tokens": n, "completion_tokens": 0,
                          "prompt_tokens_details": None}, j["usage"]
    assert emb(E.port, input="The quick brown fox")["data"][0]["embedding"] == v
    w = emb(E.port, input="The quick brown cat")["data"][0]["embedding"]
    assert w != v and abs(norm(w) - 1) < 1e-5
    # token-id input equals the text
    ids = tokenize(E.port, prompt="The quick brown fox")["tokens"]
    assert emb(E.port, input=ids)["data"][0]["embedding"] == v


@h.check("/v1/embeddings base64 decodes to the same float32 values")
def _():
    f = emb(E.port, input="base64 me", dimensions=64)["data"][0]["embedding"]
    b = emb(E.port, input="base64 me", dimensions=64, encoding_format="base64")["data"][0]
    raw = base64.b64decode(b["embedding"], validate=True)
    assert len(raw) == 64 * 4, len(raw)
    got = struct.unpack("<64f", raw)
    for x, y in zip(got, f):
        assert abs(x - y) < 1e-6, (x, y)
    bad(E.port, "/v1/embeddings", {"input": "x", "encoding_format": "hex"})


@h.check("/v1/embeddings list input → one vector per input, indices, summed usage")
def _():
    ins = ["alpha", "beta gamma", "delta epsilon zeta"]
    j = emb(E.port, input=ins, dimensions=16)
    assert len(j["data"]) == 3
    total = 0
    for i, s in enumerate(ins):
        single = emb(E.port, input=s, dimensions=16)["data"][0]["embedding"]
        assert j["data"][i]["embedding"] == single, i
        total += tokenize(E.port, prompt=s)["count"]
    assert j["usage"]["prompt_tokens"] == total and j["usage"]["total_tokens"] == total, j["usage"]
    bad(E.port, "/v1/embeddings", {"dimensions": 4})  # no input


@h.check("/v1/embeddings dimensions: length, unit norm, matryoshka prefix; bounds → 400")
def _():
    full = emb(E.port, input="truncate me")["data"][0]["embedding"]
    v = emb(E.port, input="truncate me", dimensions=8)["data"][0]["embedding"]
    assert len(v) == 8 and abs(norm(v) - 1) < 1e-5, v
    pre = full[:8]
    pn = norm(pre)
    for x, y in zip(v, pre):
        assert abs(x - y / pn) < 1e-5, (v, pre)
    bad(E.port, "/v1/embeddings", {"input": "x", "dimensions": 0})
    bad(E.port, "/v1/embeddings", {"input": "x", "dimensions": 4097})


@h.check("engines stop cleanly")
def _():
    E.stop()
    E3.stop()


h.run()
