/*
 * kvproto — resumable parser of brixkv requests (see kvproto.h).
 */
#include "kvcache/kvproto.h"

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"

void brix_kvp_init(brix_kvp_t *p, const brix_kvp_limits_t *lim, const brix_kvp_cb_t *cb, void *ud)
{
    memset(p, 0, sizeof *p);
    p->lim = *lim;
    p->cb = *cb;
    p->ud = ud;
    p->state = BRIX_KVP_HDR;
}

void brix_kvp_free(brix_kvp_t *p)
{
    brix_free(p->buf);
    brix_free(p->dest);
    p->buf = NULL;
    p->dest = NULL;
    p->cap = p->dcap = 0;
}

bool brix_kvp_in_put(const brix_kvp_t *p)
{
    return p->state == BRIX_KVP_PUT_DATA;
}

static int fail(brix_kvp_t *p, uint16_t st, const char *msg)
{
    p->state = BRIX_KVP_ERROR;
    if (p->cb.on_error)
        p->cb.on_error(p->ud, &p->hdr, st, msg);
    return -1;
}

int brix_kvp_hello_parse(const uint8_t *body, uint64_t len, brix_kvp_hello_t *out, const char **msg)
{
    memset(out, 0, sizeof *out);
    if (len < sizeof(brixkv_hello_t)) {
        *msg = "HELLO body shorter than its fixed part";
        return -1;
    }
    memcpy(&out->h, body, sizeof out->h);
    uint64_t want = sizeof(brixkv_hello_t) + (uint64_t)out->h.model_len + out->h.dtype_len +
                    out->h.layout_len + out->h.client_len + out->h.token_len;
    if (want != len) {
        *msg = "HELLO body_len does not match its string lengths";
        return -1;
    }
    const char *c = (const char *)body + sizeof(brixkv_hello_t);
    out->model = c;
    out->model_len = out->h.model_len;
    c += out->model_len;
    out->dtype = c;
    out->dtype_len = out->h.dtype_len;
    c += out->dtype_len;
    out->layout = c;
    out->layout_len = out->h.layout_len;
    c += out->layout_len;
    out->client = c;
    out->client_len = out->h.client_len;
    c += out->client_len;
    out->token = c;
    out->token_len = out->h.token_len;
    return 0;
}

/* The frame's shape from its header alone; 0 or -1 (on_error done). */
static int check_hdr(brix_kvp_t *p)
{
    const brixkv_hdr_t *h = &p->hdr;
    char msg[160];
    if (h->magic != BRIXKV_MAGIC)
        return fail(p, BRIXKV_ST_BAD_REQUEST, "bad magic (not a brixkv frame)");
    if (h->body_len > p->lim.max_frame) {
        snprintf(msg, sizeof msg, "body of %llu bytes is over the limit (--max-frame %llu)",
                 (unsigned long long)h->body_len, (unsigned long long)p->lim.max_frame);
        return fail(p, BRIXKV_ST_BAD_REQUEST, msg);
    }
    bool keyed = h->op != BRIXKV_OP_HELLO && h->op != BRIXKV_OP_STATS && h->op != BRIXKV_OP_PING;
    if (keyed && h->count > p->lim.max_batch) {
        snprintf(msg, sizeof msg, "count %u is over the limit (--max-batch %u)", h->count,
                 p->lim.max_batch);
        return fail(p, BRIXKV_ST_BAD_REQUEST, msg);
    }
    uint64_t n = h->count;
    uint64_t want = 0;
    switch (h->op) {
    case BRIXKV_OP_HELLO:
        if (h->count || h->body_len < sizeof(brixkv_hello_t) ||
            h->body_len > sizeof(brixkv_hello_t) + (uint64_t)p->lim.max_string)
            return fail(p, BRIXKV_ST_BAD_REQUEST, "HELLO: count must be 0 and the body a hello");
        return 0;
    case BRIXKV_OP_MATCH:
    case BRIXKV_OP_GET:
    case BRIXKV_OP_DELETE:
        want = n * BRIXKV_KEY_BYTES;
        break;
    case BRIXKV_OP_PIN:
        want = sizeof(brixkv_pin_t) + n * BRIXKV_KEY_BYTES;
        break;
    case BRIXKV_OP_RELEASE:
        want = n * sizeof(uint64_t);
        break;
    case BRIXKV_OP_STATS:
    case BRIXKV_OP_PING:
        want = 0;
        if (h->count)
            return fail(p, BRIXKV_ST_BAD_REQUEST, "STATS/PING take no keys");
        break;
    case BRIXKV_OP_PUT:
        if (h->body_len < n * sizeof(brixkv_put_desc_t))
            return fail(p, BRIXKV_ST_BAD_REQUEST, "PUT body shorter than its descriptors");
        return 0;
    default:
        snprintf(msg, sizeof msg, "unknown op %u", h->op);
        return fail(p, BRIXKV_ST_BAD_REQUEST, msg);
    }
    if (h->body_len != want) {
        snprintf(msg, sizeof msg, "body_len %llu does not match op %u with count %u (want %llu)",
                 (unsigned long long)h->body_len, h->op, h->count, (unsigned long long)want);
        return fail(p, BRIXKV_ST_BAD_REQUEST, msg);
    }
    return 0;
}

static int frame_done(brix_kvp_t *p, const uint8_t *body)
{
    if (p->hdr.op == BRIXKV_OP_HELLO) {
        brix_kvp_hello_t hl;
        const char *msg = NULL;
        if (brix_kvp_hello_parse(body, p->hdr.body_len, &hl, &msg))
            return fail(p, BRIXKV_ST_BAD_REQUEST, msg);
    }
    p->state = BRIX_KVP_HDR;
    p->hgot = 0;
    if (p->cb.on_frame(p->ud, &p->hdr, body) < 0) {
        p->state = BRIX_KVP_ERROR;
        return -1;
    }
    return 0;
}

static int grow(brix_kvp_t *p, uint64_t n)
{
    if (n <= p->cap)
        return 0;
    uint8_t *b = brix_realloc(p->buf, n);
    if (!b)
        return fail(p, BRIXKV_ST_INTERNAL, "out of memory");
    p->buf = b;
    p->cap = n;
    return 0;
}

/* All descriptors are in: check the payload sizes, get destinations. */
static int put_begin(brix_kvp_t *p)
{
    const brixkv_put_desc_t *d = (const brixkv_put_desc_t *)p->buf;
    uint64_t n = p->hdr.count, sum = 0;
    for (uint64_t i = 0; i < n; i++)
        sum += d[i].len;
    if (sum != p->hdr.body_len - n * sizeof(brixkv_put_desc_t))
        return fail(p, BRIXKV_ST_BAD_REQUEST,
                    "PUT body_len does not match its descriptors' lengths");
    if (n > p->dcap) {
        uint8_t **nd = brix_realloc(p->dest, n * sizeof *nd);
        if (!nd)
            return fail(p, BRIXKV_ST_INTERNAL, "out of memory");
        p->dest = nd;
        p->dcap = n;
    }
    if (n)
        memset(p->dest, 0, n * sizeof *p->dest);
    p->vi = 0;
    p->vgot = 0;
    p->vasked = 0;
    p->state = BRIX_KVP_PUT_DATA;
    if (p->cb.on_put(p->ud, &p->hdr, d, p->dest) < 0) {
        p->state = BRIX_KVP_ERROR;
        return -1;
    }
    return 0;
}

/* Skips finished (and empty) values; ends the PUT after the last. */
static int put_advance(brix_kvp_t *p)
{
    const brixkv_put_desc_t *d = (const brixkv_put_desc_t *)p->buf;
    for (;;) {
        if (p->vi < p->hdr.count && p->cb.on_put_value && p->vasked <= p->vi) {
            p->vasked = p->vi + 1;
            if (p->cb.on_put_value(p->ud, &p->hdr, p->vi, &d[p->vi], &p->dest[p->vi]) < 0) {
                p->state = BRIX_KVP_ERROR;
                return -1;
            }
        }
        if (!(p->vi < p->hdr.count && p->vgot == d[p->vi].len))
            break;
        p->vi++;
        p->vgot = 0;
    }
    if (p->vi < p->hdr.count)
        return 0;
    p->state = BRIX_KVP_HDR;
    p->hgot = 0;
    if (p->cb.on_put_done(p->ud, &p->hdr) < 0) {
        p->state = BRIX_KVP_ERROR;
        return -1;
    }
    return 0;
}

int brix_kvp_feed(brix_kvp_t *p, const uint8_t *data, size_t len)
{
    size_t off = 0;
    while (p->state != BRIX_KVP_ERROR) {
        switch (p->state) {
        case BRIX_KVP_HDR: {
            if (off == len)
                return 0;
            size_t take = sizeof p->hb - p->hgot;
            if (take > len - off)
                take = len - off;
            memcpy(p->hb + p->hgot, data + off, take);
            p->hgot += take;
            off += take;
            if (p->hgot < sizeof p->hb)
                return 0;
            memcpy(&p->hdr, p->hb, sizeof p->hdr);
            p->frames++;
            if (check_hdr(p))
                return -1;
            p->got = 0;
            if (p->hdr.op == BRIXKV_OP_PUT) {
                p->need = p->hdr.count * sizeof(brixkv_put_desc_t);
                p->state = BRIX_KVP_PUT_DESC;
                if (grow(p, p->need ? p->need : 1))
                    return -1;
                if (!p->need && put_begin(p))
                    return -1;
                if (p->state == BRIX_KVP_PUT_DATA && put_advance(p))
                    return -1;
                break;
            }
            p->need = p->hdr.body_len;
            if (len - off >= p->need) { /* whole body here: no copy */
                const uint8_t *b = data + off;
                off += p->need;
                if (frame_done(p, b))
                    return -1;
                break;
            }
            p->state = BRIX_KVP_BODY;
            if (grow(p, p->need))
                return -1;
            break;
        }
        case BRIX_KVP_BODY:
        case BRIX_KVP_PUT_DESC: {
            if (off == len)
                return 0;
            uint64_t take = p->need - p->got;
            if (take > len - off)
                take = len - off;
            memcpy(p->buf + p->got, data + off, take);
            p->got += take;
            off += take;
            if (p->got < p->need)
                return 0;
            if (p->state == BRIX_KVP_BODY) {
                if (frame_done(p, p->buf))
                    return -1;
            } else {
                if (put_begin(p) || put_advance(p))
                    return -1;
            }
            break;
        }
        case BRIX_KVP_PUT_DATA: {
            if (off == len)
                return 0;
            const brixkv_put_desc_t *d = (const brixkv_put_desc_t *)p->buf;
            uint64_t take = d[p->vi].len - p->vgot;
            if (take > len - off)
                take = len - off;
            if (p->dest[p->vi])
                memcpy(p->dest[p->vi] + p->vgot, data + off, take);
            p->vgot += take;
            off += take;
            if (put_advance(p))
                return -1;
            break;
        }
        case BRIX_KVP_ERROR:
            break;
        }
    }
    return -1;
}

bool brix_kvp_direct(const brix_kvp_t *p, uint8_t **ptr, size_t *len)
{
    if (p->state != BRIX_KVP_PUT_DATA || !p->dest[p->vi])
        return false;
    const brixkv_put_desc_t *d = (const brixkv_put_desc_t *)p->buf;
    *ptr = p->dest[p->vi] + p->vgot;
    *len = d[p->vi].len - p->vgot;
    return *len > 0;
}

int brix_kvp_direct_done(brix_kvp_t *p, size_t n)
{
    if (p->state != BRIX_KVP_PUT_DATA)
        return -1;
    p->vgot += n;
    return put_advance(p);
}
