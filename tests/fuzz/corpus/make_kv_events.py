#!/usr/bin/env python3
"""Writes the seed corpus of fuzz_kv_events: frame sequences (the target's
input format, see tests/fuzz/fuzz_kv_events.c) whose payloads are encoded
exactly as engine-sim's publisher (src/engine_sim/kv_events.c) encodes them:
[ts, [events...], dp_rank] with BlockStored / BlockRemoved / AllBlocksCleared
in vLLM's layout, integers in msgpack's smallest form. Run it from anywhere;
it rewrites tests/fuzz/corpus/fuzz_kv_events/*.bin."""
import os
import struct

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fuzz_kv_events")


def pack(v):
    if v is None:
        return b"\xc0"
    if isinstance(v, bool):
        return b"\xc3" if v else b"\xc2"
    if isinstance(v, float):
        return b"\xcb" + struct.pack(">d", v)
    if isinstance(v, int):
        if 0 <= v < 128:
            return bytes([v])
        if v >= 0:
            for tag, fmt, lim in ((0xcc, ">B", 1 << 8), (0xcd, ">H", 1 << 16),
                                  (0xce, ">I", 1 << 32), (0xcf, ">Q", 1 << 64)):
                if v < lim:
                    return bytes([tag]) + struct.pack(fmt, v)
        if v >= -32:
            return struct.pack(">b", v)
        for tag, fmt, lim in ((0xd0, ">b", 1 << 7), (0xd1, ">h", 1 << 15),
                              (0xd2, ">i", 1 << 31), (0xd3, ">q", 1 << 63)):
            if v >= -lim:
                return bytes([tag]) + struct.pack(fmt, v)
    if isinstance(v, str):
        b = v.encode()
        return (bytes([0xa0 | len(b)]) if len(b) < 32 else b"\xd9" + bytes([len(b)])) + b
    if isinstance(v, bytes):
        return b"\xc4" + bytes([len(v)]) + v
    if isinstance(v, list):
        head = bytes([0x90 | len(v)]) if len(v) < 16 else b"\xdc" + struct.pack(">H", len(v))
        return head + b"".join(pack(x) for x in v)
    raise TypeError(v)


def stored(hashes, parent, tokens, bs, lora_id=None, lora_name=None):
    ev = ["BlockStored", hashes, parent, tokens, bs, lora_id, "GPU"]
    if lora_id is not None and lora_name:
        ev.append(lora_name)
    return ev


def batch(*events):
    return pack([1765098000.25, list(events), 0])


def frame(seq, payload, replay=False):
    h = (0x80 if replay else 0) | (0x7F if seq is None else seq)
    return bytes([h]) + struct.pack(">H", len(payload)) + payload


BS = 16  # flags bits 2-3 = 3
tok = lambda b: [1000 * b + i for i in range(BS)]
H = [(0x9E3779B97F4A7C15 * (i + 1)) & (2**64 - 1) for i in range(8)]

files = {
    # live, in order: two blocks, a child, a removal, a clear
    "live.bin": bytes([0x0E])
    + frame(0, batch(stored([H[0], H[1]], None, tok(0) + tok(1), BS)))
    + frame(1, batch(stored([H[2]], H[1], tok(2), BS)))
    + frame(2, batch(["BlockRemoved", [H[2], H[1]], "GPU"]))
    + frame(3, batch(["AllBlocksCleared"])),
    # a replay answers the start-up request, then a gap is replayed
    "replay.bin": bytes([0x0F])
    + frame(0, batch(stored([H[0]], None, tok(0), BS)), replay=True)
    + frame(None, b"", replay=True)
    + frame(1, batch(stored([H[1]], H[0], tok(1), BS)))
    + frame(3, batch(stored([H[3]], H[2], tok(3), BS)))
    + frame(2, batch(stored([H[2]], H[1], tok(2), BS)), replay=True)
    + frame(None, b"", replay=True),
    # an engine restart (sequence back to 0), adapter blocks with and without a name
    "restart-lora.bin": bytes([0x0E])
    + frame(5, batch(stored([H[0]], None, tok(0), BS, 1, "sql-lora")))
    + frame(0, batch(stored([H[1]], None, tok(1), BS, 2)))
    + frame(1, batch(stored([H[2]], None, tok(2), BS))),
    # hashes as negative integers and as bytes (older and sha256-hashing vLLMs)
    "hash-kinds.bin": bytes([0x0E])
    + frame(0, batch(stored([-12345, -(2**62)], None, tok(0) + tok(1), BS)))
    + frame(1, batch(stored([b"\x01" * 32], -(2**62), tok(2), BS)))
    + frame(2, batch(["BlockRemoved", [b"\x01" * 32, -12345], "GPU"])),
    # block size 1, and a block size that differs from the gateway's
    "small-blocks.bin": bytes([0x02])
    + frame(0, batch(stored([1, 2, 3], None, [7, 8, 9], 1)))
    + frame(1, batch(stored([4], None, [1, 2], 2))),
}

os.makedirs(OUT, exist_ok=True)
for name, data in files.items():
    with open(os.path.join(OUT, name), "wb") as f:
        f.write(data)
