/*
 * libFuzzer target for the gateway's side of the controller watch: the
 * NDJSON stream of GET /v1/watch split into lines (core/lines, as
 * gateway/watch.c feeds it, in chunks whose sizes the first input byte
 * seeds) and each line parsed by brix_ctl_parse_line — no network.
 *
 * Properties: no out-of-bounds read, leak or UB on any line; a refused line
 * says why; a snapshot's replicas all have a name, a URL and an adapters key,
 * with distinct names; its registry has one reference and the snapshot's
 * version, its adapters are sorted with distinct names and its base models
 * sorted and distinct (the binary searches depend on it: every entry must be
 * found by brix_registry_adapter / brix_registry_has_base).
 */
#include "core/alloc.h"
#include "core/lines.h"
#include "gateway/fleet.h"
#include "gateway/watch.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_snapshot(const brix_ctl_snapshot_t *s, uint64_t version)
{
    const brix_registry_t *r = s->registry;
    if (!r || atomic_load(&r->refs) != 1 || r->version != version || s->version != version)
        abort();
    for (size_t i = 0; i < s->nreplicas; i++) {
        const brix_ctl_replica_t *p = &s->replicas[i];
        if (!p->name || !p->url || !p->adapters_key || !p->name[0] || !p->url[0])
            abort();
        for (size_t j = 0; j < i; j++)
            if (!strcmp(s->replicas[j].name, p->name))
                abort();
    }
    for (size_t i = 0; i < r->nadapters; i++) {
        const brix_reg_adapter_t *a = &r->adapters[i];
        if (!a->name || (i && strcmp(r->adapters[i - 1].name, a->name) >= 0))
            abort();
        if (brix_registry_adapter(r, a->name) != a)
            abort();
    }
    for (size_t i = 0; i < r->nbase_models; i++) {
        if (i && strcmp(r->base_models[i - 1], r->base_models[i]) >= 0)
            abort();
        if (!brix_registry_has_base(r, r->base_models[i]))
            abort();
    }
}

static int on_line(const char *line, size_t len, void *ud)
{
    (void)ud;
    /* a private copy of exactly the line, so ASan sees any read past it */
    char *copy = malloc(len ? len : 1);
    if (!copy)
        return 0;
    memcpy(copy, line, len);
    brix_ctl_snapshot_t snap;
    uint64_t version = 12345;
    char err[256];
    memset(err, 'x', sizeof err);
    brix_ctl_line_t kind = brix_ctl_parse_line(copy, len, &snap, &version, err, sizeof err);
    switch (kind) {
    case BRIX_CTL_LINE_SNAPSHOT:
        check_snapshot(&snap, version);
        brix_ctl_snapshot_free(&snap);
        break;
    case BRIX_CTL_LINE_BAD:
        if (!memchr(err, '\0', sizeof err) || !err[0])
            abort();
        break;
    case BRIX_CTL_LINE_HEARTBEAT:
    case BRIX_CTL_LINE_OTHER:
        break;
    default:
        abort();
    }
    free(copy);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    unsigned seed = data[0];
    data++;
    size--;
    brix_lines_t lines;
    brix_lines_init(&lines, 1 << 16);
    size_t off = 0;
    while (off < size) {
        /* seed 0: all at once; otherwise chunks of 1..seed bytes */
        size_t n = seed ? 1 + (off * 31 + seed) % seed : size - off;
        if (n > size - off)
            n = size - off;
        if (brix_lines_feed(&lines, (const char *)data + off, n, on_line, NULL))
            abort();
        off += n;
    }
    /* the stream ends: a last line without its newline is not delivered */
    brix_lines_free(&lines);
    return 0;
}
