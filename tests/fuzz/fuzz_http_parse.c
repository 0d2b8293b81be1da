/*
 * libFuzzer target for the HTTP/1.1 request parser (core/http_parse.c).
 * Built by CMake with clang; `make fuzz` runs it longer, `make test` briefly.
 *
 * The first input byte seeds the chunking; the rest is a byte stream of
 * (possibly pipelined) requests. It is parsed once all at once and once in
 * pseudo-random chunks, message after message: both must produce the same
 * sequence of results (method, URL, headers, body, consumed bytes, error
 * status), which is the parser's resumability contract; nothing may leak.
 */
#include "core/alloc.h"
#include "core/buf.h"
#include "core/http.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Parses the whole stream; appends a description of every message to out. */
static void parse_stream(const char *in, size_t len, unsigned seed, bool chunked, brix_buf_t *out)
{
    brix_http_limits_t lim;
    brix_http_limits_default(&lim);
    lim.max_header_bytes = 512;
    lim.max_body_bytes = 1024;
    brix_http_reqparser_t rp;
    brix_http_reqparser_init(&rp, &lim);
    brix_http_req_t req;
    memset(&req, 0, sizeof req);
    brix_arena_init(&req.arena, 256);
    size_t pos = 0;
    for (int msgs = 0; msgs < 64 && pos < len; msgs++) {
        brix_arena_reset(&req.arena);
        brix_buf_reset(&req.body);
        brix_http_reqparser_begin(&rp, &req);
        brix_http_parse_rc_t rc = BRIX_HTTP_PARSE_MORE;
        size_t start = pos;
        while (pos < len) {
            size_t n = len - pos;
            if (chunked) {
                seed = seed * 1103515245u + 12345u;
                n = 1 + (seed >> 16) % 7;
                if (n > len - pos)
                    n = len - pos;
            }
            size_t used = 0;
            rc = brix_http_reqparser_feed(&rp, in + pos, n, &used);
            pos += used;
            if (rc != BRIX_HTTP_PARSE_MORE)
                break;
            if (used < n) /* the parser must consume everything it was given */
                abort();
        }
        if (rc == BRIX_HTTP_PARSE_ERROR) {
            /* Where http_parser stops inside a failing chunk depends on the
             * chunk; only the verdict must not. */
            brix_buf_printf(out, "[err %d]", rp.err_status);
            break;
        }
        brix_buf_printf(out, "[%d %zu", (int)rc, pos - start);
        if (rc != BRIX_HTTP_PARSE_DONE) {
            brix_buf_append_str(out, " incomplete]");
            break;
        }
        brix_buf_printf(out, " %s %s ? %s ka=%d", req.method_name, req.path, req.query,
                        req.keep_alive);
        for (size_t i = 0; i < req.nheaders; i++)
            brix_buf_printf(out, " %s: %s", req.headers[i].name, req.headers[i].value);
        brix_buf_printf(out, " body %zu]", req.body.len);
        brix_buf_append(out, req.body.data ? req.body.data : "", req.body.len);
    }
    brix_http_reqparser_free(&rp);
    brix_arena_free(&req.arena);
    brix_buf_free(&req.body);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    int64_t live = brix_alloc_live();
    brix_buf_t a = BRIX_BUF_INIT, b = BRIX_BUF_INIT;
    parse_stream((const char *)data + 1, size - 1, data[0], false, &a);
    parse_stream((const char *)data + 1, size - 1, data[0], true, &b);
    if (a.len != b.len || (a.len && memcmp(a.data, b.data, a.len)))
        abort();
    brix_buf_free(&a);
    brix_buf_free(&b);
    if (brix_alloc_live() != live)
        abort();
    return 0;
}
