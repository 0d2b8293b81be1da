/*
 * libFuzzer target for the object loader: YAML text → documents
 * (core/yaml) → validated objects (controller/objects), the path that
 * `brix apply -f`, POST /v1/apply and the state file share.
 *
 * Properties: nothing reads outside the input (it is copied to a buffer of
 * exactly its size) or leaks, on every path including the errors; a refusal
 * names the source ("fuzz.yaml:LINE:COL: ...") in a NUL-terminated message;
 * and every accepted object survives the round trip the controller makes
 * through its state file: its canonical JSON is valid JSON, parses back
 * (JSON is YAML) to an object of the same kind and name, and compares equal
 * with brix_obj_same (for a PodAutoscaler also the same brix_as_params_t).
 */
#include "controller/objects.h"
#include "core/alloc.h"
#include "core/buf.h"
#include "core/yaml.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define SOURCE "fuzz.yaml"

static void check_err(const char *err, size_t errlen)
{
    if (!memchr(err, '\0', errlen) || strncmp(err, SOURCE ":", strlen(SOURCE ":")))
        abort();
}

/* Field by field: padding bytes of brix_as_params_t are not part of it. */
static bool params_equal(const brix_as_params_t *a, const brix_as_params_t *b)
{
    bool same = a->strategy == b->strategy && a->min_replicas == b->min_replicas &&
                a->max_replicas == b->max_replicas && a->nmetrics == b->nmetrics &&
                a->stable_window_ms == b->stable_window_ms &&
                a->panic_window_ms == b->panic_window_ms &&
                a->panic_threshold == b->panic_threshold && a->max_up_rate == b->max_up_rate &&
                a->max_down_rate == b->max_down_rate && a->up_tolerance == b->up_tolerance &&
                a->down_tolerance == b->down_tolerance &&
                a->up_stabilization_ms == b->up_stabilization_ms &&
                a->down_stabilization_ms == b->down_stabilization_ms &&
                a->scale_to_zero == b->scale_to_zero && a->zero_grace_ms == b->zero_grace_ms &&
                a->slo_ttft_s == b->slo_ttft_s && a->slo_itl_s == b->slo_itl_s &&
                a->slo_headroom == b->slo_headroom;
    for (int i = 0; same && i < a->nmetrics && i < BRIX_AS_MAX_METRICS; i++)
        same = a->target[i] == b->target[i];
    return same;
}

static void round_trip(const brix_obj_t *o)
{
    brix_buf_t b = BRIX_BUF_INIT;
    if (brix_obj_json_open(&b, o) || brix_buf_append_char(&b, '}'))
        abort();
    cJSON *j = cJSON_ParseWithLength(b.data, b.len);
    if (!j) {
        fprintf(stderr, "canonical JSON is not JSON: %.*s\n", (int)b.len, b.data);
        abort();
    }
    cJSON_Delete(j);
    char err[512];
    brix_yaml_node_t *doc = NULL;
    brix_obj_t *o2 = NULL;
    if (brix_yaml_parse("state.json", b.data, b.len, &doc, err, sizeof err) ||
        brix_obj_parse(doc, "state.json", NULL, &o2, err, sizeof err)) {
        fprintf(stderr, "canonical JSON does not parse back: %s\n%.*s\n", err, (int)b.len, b.data);
        abort();
    }
    /* a PodAutoscaler's annotations and spec re-read to the same parameters */
    if (o2->kind != o->kind || strcmp(o2->meta.name, o->meta.name) || !brix_obj_same(o, o2) ||
        (o->kind == BRIX_KIND_AUTOSCALER && !params_equal(&o->pa.params, &o2->pa.params))) {
        fprintf(stderr, "round trip changed the object:\n%.*s\n", (int)b.len, b.data);
        abort();
    }
    brix_obj_free(o2);
    brix_yaml_free(doc);
    brix_buf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *text = malloc(size ? size : 1);
    if (!text)
        return 0;
    memcpy(text, data, size);
    char err[512];
    memset(err, 'x', sizeof err);
    brix_yaml_node_t *docs = NULL;
    if (brix_yaml_parse_docs(SOURCE, text, size, &docs, err, sizeof err)) {
        check_err(err, sizeof err);
        free(text);
        return 0;
    }
    if (!docs || docs->type != BRIX_YAML_SEQ)
        abort();
    for (size_t i = 0; i < docs->n; i++) {
        brix_obj_t *o = NULL;
        memset(err, 'x', sizeof err);
        if (brix_obj_parse(docs->items[i], SOURCE, "/srv/brix", &o, err, sizeof err)) {
            check_err(err, sizeof err);
            if (o)
                abort();
            continue;
        }
        if (!o)
            abort();
        if (o->kind == BRIX_KIND_DEPLOYMENT || o->kind == BRIX_KIND_ADAPTER ||
            o->kind == BRIX_KIND_AUTOSCALER) {
            if (!brix_obj_name_valid(o->meta.name))
                abort();
            round_trip(o);
        }
        brix_obj_free(o);
    }
    brix_yaml_free(docs);
    free(text);
    return 0;
}
