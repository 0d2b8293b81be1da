/*
 * libFuzzer target for core/json_scan (build and run with tests/fuzz/run).
 * Properties: never reads outside the input (ASan), every document it
 * accepts is accepted by cJSON too (it is the stricter of the two), error
 * offsets lie within the input, and unescaping never grows a string.
 */
#include "core/json_scan.h"

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static int member(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    (void)k;
    (void)kl;
    (void)ud;
    if (v->kind == BRIX_JSON_STRING) {
        char *out = malloc(v->n + 1);
        size_t n = brix_json_unescape(v->p, v->n, out);
        if (n > v->n)
            abort();
        free(out);
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    size_t off = 0;
    const char *what = NULL;
    brix_json_scan_rc_t rc = brix_json_scan((const char *)data, size, member, NULL, &off, &what);
    if (rc == BRIX_JSON_SCAN_INVALID && (off > size || !what))
        abort();
    /* cJSON rejects unpaired surrogate escapes, which we accept (as Python
     * does): compare only inputs without them. */
    bool surrogates = memmem(data, size, "\\ud", 3) || memmem(data, size, "\\uD", 3);
    if ((rc == BRIX_JSON_SCAN_OK || rc == BRIX_JSON_SCAN_NOT_OBJECT) && !surrogates) {
        cJSON *j = cJSON_ParseWithLength((const char *)data, size);
        if (!j)
            abort();
        cJSON_Delete(j);
    }
    return 0;
}
