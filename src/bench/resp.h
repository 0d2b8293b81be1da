/*
 * resp — a minimal blocking RESP2 client for the redis side of
 * `brix bench --scenario kvstore`: GET, MGET and pipelined SET of binary
 * values over a plain TCP or UNIX socket, plus one generic command for
 * INFO / MEMORY USAGE / FLUSHALL.
 *
 * Why not hiredis: its reader copies every bulk string into a reply object it
 * allocates (and grows its input buffer as the bytes come), so a 2 MiB GET
 * costs a malloc and an extra copy the brixkv client does not pay. Here a
 * bulk reply is read straight into the caller's buffer: the header is parsed
 * from a small staging buffer (RESP_STAGE bytes), what the staging read
 * already took of the payload is copied once (at most RESP_STAGE bytes per
 * value), and the rest is read() directly into place. A SET sends the value
 * from the caller's buffer with writev (no copy into a command buffer).
 * Several keys go out in one write and their replies are read in order
 * (pipelining), so both stores see the same batches.
 *
 * A connection is used by one thread. Every call returns 0 or -errno
 * (-EPROTO for a reply that is not what the command returns, -ENOENT for a
 * nil bulk).
 */
#ifndef BRIX_BENCH_RESP_H
#define BRIX_BENCH_RESP_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"

#define RESP_STAGE 16384

typedef struct resp_conn {
    int fd;
    size_t pos, len; /* unread bytes are stage[pos..len) */
    char stage[RESP_STAGE];
    char err[160];  /* the last -ERR line, for messages */
    brix_buf_t cmd; /* command text, reused */
} resp_conn_t;

/* Connects to 127.0.0.1:port (TCP_NODELAY) or to a UNIX socket path. */
int resp_connect_tcp(resp_conn_t *c, int port, int timeout_ms);
int resp_connect_unix(resp_conn_t *c, const char *path, int timeout_ms);
void resp_close(resp_conn_t *c);

/* n keys (GET for one, MGET for more). Value i lands in bufs[i] (cap bytes
 * each); lens[i] = its length, or SIZE_MAX for a nil (missing key). A value
 * larger than cap is an error (-EMSGSIZE). */
int resp_get(resp_conn_t *c, const char *const *keys, size_t n, void *const *bufs, size_t cap,
             size_t *lens);
/* n pipelined SETs of vals[i] (len bytes each), replies awaited together. */
int resp_set(resp_conn_t *c, const char *const *keys, size_t n, const void *const *vals,
             size_t len);
/* One command of text arguments; a bulk, status or integer reply goes to out
 * (NUL-terminated, truncated to outlen). */
int resp_command(resp_conn_t *c, char *out, size_t outlen, int argc, const char *const *argv);

#endif
