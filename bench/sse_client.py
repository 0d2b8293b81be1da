"""Asyncio SSE client for the gateway benchmarks (standard library only).

One connection per stream, opened before any request is sent so that TTFB is
the request's own path, not the TCP handshake. Every received SSE event that
carries the server's send stamp "t" (bench/peers/sse_server.py) yields its
one-way delay: receive time - send time, both CLOCK_MONOTONIC on this machine.
Protocol-based rather than StreamReader-based so that 10,000 open streams fit
in one process and each chunk is timestamped in data_received, before parsing.
"""
import asyncio
import json
import re
import time

_T = re.compile(rb'"i":(\d+),"t":([0-9.]+)')


class SSEStream(asyncio.Protocol):
    def __init__(self, record_delays=True):
        self.tr = None
        self.connected = asyncio.get_event_loop().create_future()
        self.done = asyncio.get_event_loop().create_future()
        self.buf = b""
        self.head_done = False
        self.status = 0
        self.chunked = False
        self.cstate = "size"      # chunked framing: "size" line, "data", or the "crlf" after it
        self.cleft = 0
        self.body = b""           # de-chunked bytes not yet split into events
        self.t_req = 0.0
        self.t_first = None       # first SSE event received
        self.delays = [] if record_delays else None  # (index, one-way delay s)
        self.events = 0
        self.got_done = False
        self.error = None

    # -- asyncio callbacks
    def connection_made(self, tr):
        self.tr = tr
        if not self.connected.done():
            self.connected.set_result(True)

    def connection_lost(self, exc):
        if not self.done.done():
            if not self.got_done:
                self.error = self.error or f"closed after {self.events} events ({exc!r})"
            self.done.set_result(True)
        self.tr = None

    def data_received(self, data):
        now = time.perf_counter()
        self.buf += data
        if not self.head_done:
            i = self.buf.find(b"\r\n\r\n")
            if i < 0:
                return
            head = self.buf[:i].split(b"\r\n")
            self.buf = self.buf[i + 4:]
            self.head_done = True
            try:
                self.status = int(head[0].split()[1])
            except (IndexError, ValueError):
                self.status = -1
            for h in head[1:]:
                if h.lower().startswith(b"transfer-encoding:") and b"chunked" in h.lower():
                    self.chunked = True
            if self.status != 200:
                self.error = f"status {self.status}: {self.buf[:200]!r}"
        if self.chunked:
            self._dechunk()
        else:
            self.body += self.buf
            self.buf = b""
        self._events(now)

    # -- parsing
    def _dechunk(self):
        b, pos, out = self.buf, 0, []
        while True:
            if self.cstate == "size":
                j = b.find(b"\r\n", pos)
                if j < 0:
                    break
                n = int(b[pos:j].split(b";")[0] or b"0", 16)
                pos = j + 2
                if n == 0:
                    self.got_done = True
                    self._finish()
                    break
                self.cstate, self.cleft = "data", n
            else:  # "data": chunk bytes, then "crlf": the 2 bytes after them
                take = min(self.cleft, len(b) - pos)
                if take <= 0:
                    break
                if self.cstate == "data":
                    out.append(b[pos:pos + take])
                pos += take
                self.cleft -= take
                if self.cleft == 0:
                    self.cstate, self.cleft = ("crlf", 2) if self.cstate == "data" else ("size", 0)
        self.buf = b[pos:]
        self.body += b"".join(out)

    def _events(self, now):
        while True:
            k = self.body.find(b"\n\n")
            if k < 0:
                return
            ev, self.body = self.body[:k], self.body[k + 2:]
            if not ev.startswith(b"data: "):
                continue
            if ev == b"data: [DONE]":
                self.got_done = True
                continue
            m = _T.search(ev)
            if m is None:
                if b'"error"' in ev:
                    self.error = "error event: " + ev[:200].decode(errors="replace")
                continue
            self.events += 1
            if self.t_first is None:
                self.t_first = now
            if self.delays is not None:
                self.delays.append((int(m.group(1)), now - float(m.group(2))))

    def _finish(self):
        if not self.done.done():
            self.done.set_result(True)

    # -- use
    def send(self, host, port, path, body):
        data = json.dumps(body).encode()
        req = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
               f"Accept: text/event-stream\r\nContent-Length: {len(data)}\r\n\r\n").encode() + data
        self.t_req = time.perf_counter()
        if self.tr is None:  # the server closed the connection before the request
            self.error = self.error or "connection closed before the request was sent"
            self._finish()
            return
        self.tr.write(req)

    @property
    def ttfb(self):
        return None if self.t_first is None else self.t_first - self.t_req


async def open_streams(host, port, n, record_delays=True, batch=0, pause=0.0):
    """n connected SSEStream protocols (failures as exceptions in the list)."""
    loop = asyncio.get_running_loop()
    out = []
    for i in range(n):
        try:
            _, p = await loop.create_connection(lambda: SSEStream(record_delays), host, port)
            out.append(p)
        except OSError as ex:
            out.append(ex)
        if batch and (i + 1) % batch == 0:
            await asyncio.sleep(pause)
    return out
