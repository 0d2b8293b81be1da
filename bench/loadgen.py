"""Asyncio load driver for benchmarks (standard library only).

Opens real HTTP/1.1 connections, sends OpenAI streaming requests and records,
per request, the wall time of every SSE event, so TTFT and inter-token gaps are
measured exactly as a client sees them.
"""
import asyncio
import json
import time


class Result:
    __slots__ = ("start", "events", "status", "usage", "error", "text")

    def __init__(self):
        self.start = 0.0
        self.events = []   # wall times of content-bearing events
        self.status = 0
        self.usage = None
        self.error = None
        self.text = []

    @property
    def ttft(self):
        return self.events[0] - self.start if self.events else None

    def gaps(self):
        return [b - a for a, b in zip(self.events, self.events[1:])]


async def stream_request(host, port, path, body, headers=None, res=None):
    """One streaming request on its own connection; fills and returns a Result."""
    res = res or Result()
    data = json.dumps(body).encode()
    hdr = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n")
    for k, v in (headers or {}).items():
        hdr += f"{k}: {v}\r\n"
    hdr += "Connection: close\r\n\r\n"
    try:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
    except OSError as ex:
        res.error = str(ex)
        return res
    res.start = time.perf_counter()
    writer.write(hdr.encode() + data)
    try:
        status_line = await reader.readline()
        res.status = int(status_line.split()[1])
        chunked = False
        while True:
            line = await reader.readline()
            if line in (b"\r\n", b""):
                break
            if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                chunked = True
        if res.status != 200:
            res.error = (await reader.read(4096)).decode(errors="replace")
            return res
        buf = b""
        while True:
            if chunked:
                size_line = await reader.readline()
                if not size_line:
                    break
                n = int(size_line.strip() or b"0", 16)
                if n == 0:
                    break
                chunk = await reader.readexactly(n + 2)
                buf += chunk[:-2]
            else:
                chunk = await reader.read(65536)
                if not chunk:
                    break
                buf += chunk
            while b"\n\n" in buf:
                ev, buf = buf.split(b"\n\n", 1)
                if not ev.startswith(b"data: "):
                    continue
                payload = ev[6:]
                if payload == b"[DONE]":
                    continue
                now = time.perf_counter()
                j = json.loads(payload)
                if j.get("usage"):
                    res.usage = j["usage"]
                for ch in j.get("choices", []):
                    txt = ch.get("text")
                    if txt is None:
                        txt = (ch.get("delta") or {}).get("content")
                    if txt:
                        res.events.append(now)
                        res.text.append(txt)
    except (OSError, asyncio.IncompleteReadError, ValueError) as ex:
        res.error = repr(ex)
    finally:
        writer.close()
    return res


def percentile(xs, p):
    xs = sorted(xs)
    if not xs:
        return float("nan")
    k = (len(xs) - 1) * p / 100.0
    f = int(k)
    c = min(f + 1, len(xs) - 1)
    return xs[f] + (xs[c] - xs[f]) * (k - f)
