/*
 * kv_watch_internal — a test hook into gateway/kv_watch.c for the fuzzer
 * (tests/fuzz/fuzz_kv_events.c): hands one batch to a watcher as if it had
 * arrived on its sockets, so the msgpack decoding and the sequence/replay
 * logic run without an engine or a network. Not for production callers.
 */
#ifndef BRIX_GATEWAY_KV_WATCH_INTERNAL_H
#define BRIX_GATEWAY_KV_WATCH_INTERNAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "gateway/kv_watch.h"

/* One batch numbered seq with its msgpack payload: from the SUB socket
 * (replay false) or as an answer on the replay socket (replay true;
 * seq UINT64_MAX is the end marker). */
void brix__kvw_batch(brix_kvw_t *w, bool replay, uint64_t seq, const char *data, size_t len);

#endif
