/*
 * libFuzzer target for the gateway's KV-event feed (gateway/kv_watch.c):
 * the msgpack decoding of vLLM-format event batches (BlockStored,
 * BlockRemoved, AllBlocksCleared) and the sequence / replay bookkeeping
 * around it, through the test hook of kv_watch_internal.h — a real watcher
 * whose sockets (in-process ZMQ, never a network) stay silent while the
 * input is handed to it batch by batch.
 *
 * Input: one byte of settings (bit 0: a replay socket, bit 1: a base model
 * name, bits 2-3: the block size 1/2/4/16), then frames of
 *   [1 byte: bit 7 replay answer, bits 0-6 sequence number (127 = the end
 *    marker UINT64_MAX)] [2 bytes big-endian payload length] [payload].
 * Each payload is copied to a buffer of exactly its size (ASan sees
 * over-reads). Properties: no crash or UB; no leak of the project's
 * allocations (counted by core/alloc: libFuzzer's own leak check is off for
 * this target, see fuzz_kv_events.options, because ZMQ frees asynchronously
 * and that check would then scan the heap on every input); the prefix index
 * holds no more entries than blocks were stored; closing the watcher removes
 * every entry of its pod.
 */
#include "core/alloc.h"
#include "core/log.h"
#include "gateway/fleet.h"
#include "gateway/kv_watch.h"
#include "gateway/kv_watch_internal.h"
#include "gateway/prefix_index.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>
#include <zmq.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define EP     "inproc://fuzz-kv"
#define EP_REP "inproc://fuzz-kv-replay"

static uv_loop_t g_loop;
static void *g_zctx, *g_pub, *g_router;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc;
    (void)argv;
    brix_log_set_level(BRIX_LOG_OFF); /* gaps and restarts are logged as warnings */
    /* more sockets than the default 1023: closed ones are reaped lazily */
    if (uv_loop_init(&g_loop) || !(g_zctx = zmq_ctx_new()) ||
        zmq_ctx_set(g_zctx, ZMQ_MAX_SOCKETS, 8192))
        abort();
    /* Silent peers for the watchers to connect to: an inproc connect with
     * nobody bound leaves a pending entry in the context per socket. */
    int zero = 0;
    g_pub = zmq_socket(g_zctx, ZMQ_PUB);
    g_router = zmq_socket(g_zctx, ZMQ_ROUTER);
    if (!g_pub || !g_router || zmq_setsockopt(g_pub, ZMQ_LINGER, &zero, sizeof zero) ||
        zmq_setsockopt(g_router, ZMQ_LINGER, &zero, sizeof zero) || zmq_bind(g_pub, EP) ||
        zmq_bind(g_router, EP_REP))
        abort();
    return 0;
}

/* The peers process the closed watchers' pipe terminations (ZMQ runs a
 * socket's commands only when the socket is used) and drop the replay
 * requests; otherwise closed sockets are never reaped and the context runs
 * out of them. */
static void settle(void)
{
    char buf[64];
    while (zmq_recv(g_router, buf, sizeof buf, ZMQ_DONTWAIT) >= 0)
        ;
    int ev;
    size_t sz = sizeof ev;
    zmq_getsockopt(g_pub, ZMQ_EVENTS, &ev, &sz);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint32_t sizes[] = { 1, 2, 4, 16 };
    if (size < 1)
        return 0;
    uint8_t flags = data[0];
    int64_t live0 = brix_alloc_live();
    brix_prefix_index_t *ix = brix_prefix_index_new(4096);
    brix_pod_t *pod = brix_pod_new(2, "p", "http://127.0.0.1:1", "127.0.0.1", 1);
    if (!ix || !pod)
        abort();
    /* ZMQ reaps closed sockets on its own thread: on a busy machine the
     * context can run out of sockets for a moment, so wait for it */
    brix_kvw_t *w = NULL;
    for (int i = 0; i < 2000 && !w; i++) {
        w = brix_kvw_new(&g_loop, g_zctx, ix, pod, EP, (flags & 1) ? EP_REP : NULL,
                         sizes[(flags >> 2) & 3], 0, NULL, NULL);
        if (!w) {
            uv_run(&g_loop, UV_RUN_NOWAIT);
            settle();
            uv_sleep(1);
        }
    }
    if (!w)
        abort();
    if (flags & 2)
        brix_kvw_set_base_model(w, "m");
    size_t off = 1;
    while (size - off >= 3) {
        uint8_t h = data[off];
        size_t len = (size_t)data[off + 1] << 8 | data[off + 2];
        off += 3;
        if (len > size - off)
            len = size - off;
        uint64_t seq = (h & 0x7f) == 0x7f ? UINT64_MAX : (h & 0x7f);
        char *p = malloc(len ? len : 1);
        if (!p)
            abort();
        memcpy(p, data + off, len);
        brix__kvw_batch(w, (h & 0x80) != 0, seq, p, len);
        free(p);
        off += len;
    }
    if (brix_prefix_index_entries(ix) > brix_kvw_stats(w)->stored_blocks)
        abort();
    brix_kvw_close(w);
    uv_run(&g_loop, UV_RUN_DEFAULT);
    if (brix_prefix_index_entries(ix) != 0)
        abort();
    brix_pod_unref(pod);
    brix_prefix_index_free(ix);
    settle();
    if (brix_alloc_live() != live0) {
        fprintf(stderr, "leak: %lld allocations still live\n",
                (long long)(brix_alloc_live() - live0));
        abort();
    }
    return 0;
}
