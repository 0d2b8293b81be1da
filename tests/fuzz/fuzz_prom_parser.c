/*
 * libFuzzer target for the Prometheus text parser (core/metrics.c).
 *
 * Built by CMake with clang (tests/fuzz/CMakeLists.txt); `make fuzz` runs it
 * longer, `make test` briefly (ctest fuzz/fuzz_prom_parser).
 *
 * The first two input bytes pick max_line and seed the chunk sizes; the rest
 * is the exposition text. It is parsed once all at once and once in
 * random-sized chunks: the two must deliver the same samples and counts
 * (the parser's resumability contract), and the line buffer must stay
 * bounded by max_line.
 */
#include "core/alloc.h"
#include "core/buf.h"
#include "core/metrics.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void record(const brix_prom_sample_t *s, void *ud)
{
    brix_buf_t *b = ud;
    uint64_t bits;
    memcpy(&bits, &s->value, sizeof bits);
    /* Lengths first so distinct sequences cannot serialise alike. */
    brix_buf_append_u64(b, strlen(s->name));
    brix_buf_append_str(b, s->name);
    brix_buf_append_u64(b, s->nlabels);
    for (size_t i = 0; i < s->nlabels; i++) {
        if (!s->labels[i].name || !s->labels[i].value)
            abort();
        if (brix_prom_label(s, s->labels[i].name) != s->labels[i].value)
            abort(); /* label names within a sample are unique */
        brix_buf_append_u64(b, strlen(s->labels[i].name));
        brix_buf_append_str(b, s->labels[i].name);
        brix_buf_append_u64(b, strlen(s->labels[i].value));
        brix_buf_append_str(b, s->labels[i].value);
    }
    brix_buf_append_u64(b, bits);
    brix_buf_append_u64(b, s->has_timestamp ? (uint64_t)s->timestamp_ms : 0);
    brix_buf_append_char(b, s->has_timestamp ? 'T' : '\n');
}

typedef struct run {
    brix_buf_t out;
    uint64_t samples, errors;
} run_t;

static void parse(const char *in, size_t len, size_t max_line, uint32_t seed, run_t *r)
{
    brix_prom_parser_t p;
    memset(r, 0, sizeof *r);
    brix_prom_parser_init(&p, max_line, record, &r->out);
    size_t off = 0;
    while (off < len) {
        size_t n = len - off;
        if (seed) {
            seed = seed * 1103515245u + 12345u;
            size_t c = 1 + (seed >> 16) % 97;
            if (c < n)
                n = c;
        }
        if (brix_prom_parser_feed(&p, in + off, n))
            abort();
        off += n;
        /* Buffer growth is bounded: capacity doubles from 64 up to the line limit. */
        if (p.line.cap > 2 * (p.max_line + 2) + 64)
            abort();
    }
    brix_prom_parser_finish(&p);
    if (p.line.len || p.skipping)
        abort();
    r->samples = p.samples;
    r->errors = p.errors;
    brix_prom_parser_free(&p);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static const size_t limits[] = { 0, 1, 8, 16, 40, 100, 1000, 4096 };
    size_t max_line = limits[data[0] & 7];
    uint32_t seed = ((uint32_t)data[1] << 8) | data[0] | 1u;
    const char *in = (const char *)data + 2;
    size_t len = size - 2;
    int64_t live = brix_alloc_live();

    run_t whole, chunked;
    parse(in, len, max_line, 0, &whole);
    parse(in, len, max_line, seed, &chunked);
    if (whole.samples != chunked.samples || whole.errors != chunked.errors ||
        whole.out.len != chunked.out.len ||
        (whole.out.len && memcmp(whole.out.data, chunked.out.data, whole.out.len)))
        abort();
    brix_buf_free(&whole.out);
    brix_buf_free(&chunked.out);
    if (brix_alloc_live() != live)
        abort();
    return 0;
}
