#!/usr/bin/env python3
"""A fake vLLM server whose SSE events carry their own send time.

Used by bench/gateway_streaming.py and bench/gateway_capacity.py as the
upstream of every proxy. It speaks just enough of vLLM's HTTP API for the
brix gateway to call it healthy (GET /health, /v1/models, /metrics) and
answers POST /v1/chat/completions and /v1/completions:

  * "stream": true  -> HTTP/1.1 chunked SSE. The first event is written as soon
    as the request is read; after that, with "bench_pattern": "tick" (default),
    every open stream gets one event per global tick (--interval-ms), all
    streams in the same tick, as a batching engine emits one token per running
    sequence per step; with "bench_pattern": "own", each stream gets its
    events every --interval-ms from its own start (staggered clients then
    never see two events at once). `max_tokens` events in all, then
    `data: [DONE]`. Each event's JSON has "t": the server's
    CLOCK_MONOTONIC (time.perf_counter) read just before the write, so a client
    on the same machine measures each event's one-way delay exactly, whatever
    the server's own scheduling jitter.
  * otherwise       -> a fixed chat.completion JSON body.

Why not engine-sim: its token times follow a GPU model (batch-dependent ITL),
which is right for fidelity tests but makes "delay added by the proxy" a
difference of two noisy distributions; stamping each event removes the
upstream from the measurement. Standard library only.

usage: sse_server.py --port P [--interval-ms 20] [--model llama-3-8b]
"""
import argparse
import asyncio
import json
import os
import signal
import time

MODEL = "llama-3-8b"
JSON_BODY = None


class Stream:
    __slots__ = ("proto", "left", "idx", "chat", "rid", "next_t")

    def __init__(self, proto, left, chat, rid):
        self.proto = proto
        self.left = left
        self.idx = 0
        self.chat = chat
        self.rid = rid
        self.next_t = 0.0


class Server:
    def __init__(self, interval_s):
        self.interval = interval_s
        self.streams = set()
        self.total_streams = 0
        self.total_events = 0

    def event_bytes(self, s):
        s.idx += 1
        if s.chat:
            choice = '{"index":0,"delta":{"content":" tok"},"logprobs":null,"finish_reason":null}'
            obj = "chat.completion.chunk"
        else:
            choice = '{"index":0,"text":" tok","logprobs":null,"finish_reason":null}'
            obj = "text_completion"
        ev = ('data: {"id":"%s","object":"%s","created":1718000000,"model":"%s",'
              '"choices":[%s],"i":%d,"t":%.7f}\n\n'
              % (s.rid, obj, MODEL, choice, s.idx, time.perf_counter())).encode()
        return b"%x\r\n%s\r\n" % (len(ev), ev)

    def send_event(self, s):
        tr = s.proto.transport
        if tr is None or tr.is_closing():
            self.streams.discard(s)
            if s.proto.stream is s:
                s.proto.stream = None
            return
        s.left -= 1
        data = self.event_bytes(s)
        if s.left <= 0:
            done = b"data: [DONE]\n\n"
            data += b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done)
            self.streams.discard(s)
            s.proto.stream = None
        tr.write(data)
        self.total_events += 1

    def own_tick(self, s):
        """"own" pattern: the stream's next event, on its own schedule."""
        if s.proto.stream is not s:
            return
        self.send_event(s)
        if s.proto.stream is s:
            loop = asyncio.get_running_loop()
            s.next_t += self.interval
            loop.call_at(s.next_t, self.own_tick, s)

    async def ticker(self):
        loop = asyncio.get_running_loop()
        nxt = loop.time() + self.interval
        while True:
            await asyncio.sleep(max(0.0, nxt - loop.time()))
            nxt += self.interval
            for s in list(self.streams):
                self.send_event(s)


class Conn(asyncio.Protocol):
    def __init__(self, srv):
        self.srv = srv
        self.buf = b""
        self.transport = None
        self.stream = None

    def connection_made(self, tr):
        self.transport = tr

    def connection_lost(self, exc):
        if self.stream is not None:
            self.srv.streams.discard(self.stream)
        self.stream = None
        self.transport = None

    def data_received(self, data):
        self.buf += data
        while True:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].decode("latin-1").split("\r\n")
            method, path = head[0].split(" ")[:2]
            clen = 0
            for line in head[1:]:
                k, _, v = line.partition(":")
                if k.strip().lower() == "content-length":
                    clen = int(v.strip())
            if len(self.buf) < i + 4 + clen:
                return
            body = self.buf[i + 4:i + 4 + clen]
            self.buf = self.buf[i + 4 + clen:]
            self.handle(method, path, body)

    def respond(self, status, ctype, body):
        reason = {200: "OK", 404: "Not Found", 400: "Bad Request"}.get(status, "X")
        self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: %s\r\ncontent-length: %d\r\n\r\n"
                             % (status, reason.encode(), ctype.encode(), len(body)) + body)

    def handle(self, method, path, body):
        srv = self.srv
        if method == "GET" and path == "/health":
            self.respond(200, "text/plain", b"")
        elif method == "GET" and path == "/v1/models":
            self.respond(200, "application/json", json.dumps({"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 1718000000, "owned_by": "vllm",
                 "root": MODEL, "parent": None, "max_model_len": 8192}]}).encode())
        elif method == "GET" and path == "/metrics":
            n = len(srv.streams)
            txt = ("# TYPE vllm:num_requests_running gauge\n"
                   f'vllm:num_requests_running{{model_name="{MODEL}"}} {n}.0\n'
                   "# TYPE vllm:num_requests_waiting gauge\n"
                   f'vllm:num_requests_waiting{{model_name="{MODEL}"}} 0.0\n'
                   "# TYPE vllm:gpu_cache_usage_perc gauge\n"
                   f'vllm:gpu_cache_usage_perc{{model_name="{MODEL}"}} 0.0\n')
            self.respond(200, "text/plain; version=0.0.4; charset=utf-8", txt.encode())
        elif method == "POST" and path in ("/v1/chat/completions", "/v1/completions"):
            try:
                req = json.loads(body)
            except ValueError:
                self.respond(400, "application/json", b'{"error":{"message":"bad json"}}')
                return
            if not req.get("stream"):
                self.respond(200, "application/json", JSON_BODY)
                return
            srv.total_streams += 1
            s = Stream(self, max(1, int(req.get("max_tokens") or 16)),
                       path.endswith("chat/completions"), "cmpl-%d" % srv.total_streams)
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; "
                                 b"charset=utf-8\r\ncache-control: no-cache\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n")
            self.stream = s
            srv.send_event(s)           # first event at once (no prefill model)
            if s.left > 0 and req.get("bench_pattern") == "own":
                loop = asyncio.get_running_loop()
                s.next_t = loop.time() + srv.interval
                loop.call_at(s.next_t, srv.own_tick, s)
            elif s.left > 0:
                srv.streams.add(s)
        else:
            self.respond(404, "application/json", b'{"error":{"message":"not found"}}')


async def main():
    global JSON_BODY, MODEL
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--interval-ms", type=float, default=20.0)
    ap.add_argument("--model", default=MODEL)
    a = ap.parse_args()
    MODEL = a.model
    JSON_BODY = json.dumps({
        "id": "chatcmpl-1", "object": "chat.completion", "created": 1718000000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 10, "total_tokens": 11, "completion_tokens": 1}}).encode()
    srv = Server(a.interval_ms / 1000.0)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Conn(srv), a.host, a.port, backlog=4096)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tick = asyncio.ensure_future(srv.ticker())
    print(f"sse_server pid {os.getpid()} on {a.host}:{a.port}", flush=True)
    await stop.wait()
    tick.cancel()
    server.close()
    print(f"sse_server: {srv.total_streams} streams, {srv.total_events} events", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
