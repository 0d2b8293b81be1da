/*
 * kvproto — the server's resumable parser of brixkv requests (proto.h).
 *
 * Fed arbitrary chunks (byte-at-a-time gives the same callbacks as
 * all-at-once), it checks each frame's shape against the limits before
 * buffering anything: an unknown op, a count over max_batch, a body over
 * max_frame or a body_len that does not match the op and count is reported
 * once through on_error and the parser stops (the server answers and closes).
 *
 * A non-PUT frame is delivered whole to on_frame: straight from the input
 * when it arrived in one chunk, else from the parser's buffer (bounded by
 * the checks above). A PUT is delivered in two steps: on_put with the
 * descriptors, where the server names a destination per value (its reserved
 * slot, or NULL to drop the bytes), then the payloads are written there and
 * on_put_done runs. brix_kvp_direct tells the reader where the next bytes
 * may be read to directly (a slot), so large values are never staged.
 */
#ifndef BRIX_KVCACHE_KVPROTO_H
#define BRIX_KVCACHE_KVPROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "kvcache/brixkv.h" /* statuses */
#include "kvcache/proto.h"

typedef struct brix_kvp_limits {
    uint32_t max_batch;  /* keys (or leases) per request */
    uint64_t max_frame;  /* body bytes of any request, PUT payloads included */
    uint32_t max_string; /* bytes of all HELLO strings together */
} brix_kvp_limits_t;

/* Callbacks return 0 to go on or < 0 to stop: the parser enters its error
 * state and brix_kvp_feed returns -1 (the server is closing the connection). */
typedef struct brix_kvp_cb {
    int (*on_frame)(void *ud, const brixkv_hdr_t *h, const uint8_t *body);
    /* dest has h->count entries, all NULL on entry */
    int (*on_put)(void *ud, const brixkv_hdr_t *h, const brixkv_put_desc_t *descs, uint8_t **dest);
    int (*on_put_done)(void *ud, const brixkv_hdr_t *h);
    /* a malformed frame: status and a message for the error reply. h is the
     * header as received (op may be unknown); h->magic is 0 if the header
     * itself could not be read. */
    void (*on_error)(void *ud, const brixkv_hdr_t *h, uint16_t status, const char *msg);
    /* optional: value i is next (its first byte, if any, is about to be
     * read); *dest may be set now, so a slot is reserved only for bytes
     * that actually arrive (a client trickling a PUT holds one value's slot,
     * not the whole frame's). NULL: on_put sets every dest at once. */
    int (*on_put_value)(void *ud, const brixkv_hdr_t *h, uint32_t i, const brixkv_put_desc_t *d,
                        uint8_t **dest);
} brix_kvp_cb_t;

typedef enum brix_kvp_state {
    BRIX_KVP_HDR,      /* reading a header */
    BRIX_KVP_BODY,     /* buffering a non-PUT body */
    BRIX_KVP_PUT_DESC, /* buffering PUT descriptors */
    BRIX_KVP_PUT_DATA, /* streaming PUT payloads to their destinations */
    BRIX_KVP_ERROR,    /* stopped: nothing more is parsed */
} brix_kvp_state_t;

typedef struct brix_kvp {
    brix_kvp_state_t state;
    brix_kvp_limits_t lim;
    brix_kvp_cb_t cb;
    void *ud;
    uint8_t hb[sizeof(brixkv_hdr_t)];
    size_t hgot;
    brixkv_hdr_t hdr;
    uint8_t *buf; /* body or descriptors, grown to the largest frame seen */
    size_t cap;
    uint64_t need, got;
    uint8_t **dest; /* PUT: destination per value */
    size_t dcap;
    uint32_t vi;     /* PUT: value being received */
    uint64_t vgot;   /* its bytes so far */
    uint32_t vasked; /* on_put_value was called for values < vasked */
    uint64_t frames; /* headers read so far (a new frame began) */
} brix_kvp_t;

void brix_kvp_init(brix_kvp_t *p, const brix_kvp_limits_t *lim, const brix_kvp_cb_t *cb, void *ud);
void brix_kvp_free(brix_kvp_t *p);
/* Consumes len bytes. 0, or -1 once in the error state (the rest ignored). */
int brix_kvp_feed(brix_kvp_t *p, const uint8_t *data, size_t len);
/* Where the next bytes may be read directly (the rest of the current PUT
 * value, in its slot). False when they must go through brix_kvp_feed. */
bool brix_kvp_direct(const brix_kvp_t *p, uint8_t **ptr, size_t *len);
/* n bytes were read to the pointer brix_kvp_direct gave. As brix_kvp_feed. */
int brix_kvp_direct_done(brix_kvp_t *p, size_t n);
/* True between on_put and on_put_done (a PUT's slots are reserved). */
bool brix_kvp_in_put(const brix_kvp_t *p);

/* A HELLO body split into its parts; strings are not NUL-terminated. The
 * token (after the client string) is this server's extension: hello.pad[0]
 * is its length (see proto.h). 0, or -1 with msg. */
typedef struct brix_kvp_hello {
    brixkv_hello_t h;
    const char *model, *dtype, *layout, *client, *token;
    size_t model_len, dtype_len, layout_len, client_len, token_len;
} brix_kvp_hello_t;
int brix_kvp_hello_parse(const uint8_t *body, uint64_t len, brix_kvp_hello_t *out,
                         const char **msg);

#endif
