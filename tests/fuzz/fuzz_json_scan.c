/*
 * libFuzzer target for core/json_scan (build and run with tests/fuzz/run).
 * Properties: never reads outside the input (ASan), every document it
 * accepts is accepted by cJSON too (it is the stricter of the two), error
 * offsets lie within the input, unescaping never grows a string, keys
 * decode alike through every helper (escaped spellings of "model" are
 * "model", the decode cap is exact), and a document has as many top-level
 * "model" keys for the scanner as for cJSON (duplicates, escaped or not).
 */
#include "core/json_scan.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct keys {
    size_t models; /* top-level keys that decode to "model" */
} keys_t;

static int member(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    keys_t *ks = ud;
    if (v->kind == BRIX_JSON_STRING) {
        char *out = malloc(v->n + 1);
        size_t n = brix_json_unescape(v->p, v->n, out);
        if (n > v->n)
            abort();
        free(out);
    }
    /* the key decoders agree with each other and with the cap */
    char *full = malloc(kl + 1);
    size_t fn = brix_json_unescape(k, kl, full);
    char small[8];
    size_t sn = brix_json_key_decode(k, kl, small, sizeof small);
    if (fn <= sizeof small ? (sn != fn || memcmp(small, full, fn)) : sn != SIZE_MAX)
        abort();
    bool is_model = fn == 5 && !memcmp(full, "model", 5);
    if (brix_json_key_is(k, kl, "model") != is_model)
        abort();
    ks->models += is_model;
    free(full);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    const char *what = NULL;
    keys_t ks = { 0 };
    brix_json_scan_rc_t rc = brix_json_scan((const char *)data, size, member, &ks, &off, &what);
    if (rc == BRIX_JSON_SCAN_INVALID && (off > size || !what))
        abort();
    /* cJSON rejects unpaired surrogate escapes, which we accept (as Python
     * does): compare only inputs without them. */
    bool surrogates = memmem(data, size, "\\ud", 3) || memmem(data, size, "\\uD", 3);
    if ((rc == BRIX_JSON_SCAN_OK || rc == BRIX_JSON_SCAN_NOT_OBJECT) && !surrogates) {
        cJSON *j = cJSON_ParseWithLength((const char *)data, size);
        if (!j)
            abort();
        /* duplicates are seen alike: as many "model" keys as cJSON decodes
         * (cJSON cuts a key at \u0000: leave those out) */
        if (rc == BRIX_JSON_SCAN_OK && !memmem(data, size, "\\u0000", 6)) {
            size_t n = 0;
            for (const cJSON *c = j->child; c; c = c->next)
                n += c->string && !strcmp(c->string, "model");
            if (n != ks.models)
                abort();
        }
        cJSON_Delete(j);
    }
    return 0;
}
