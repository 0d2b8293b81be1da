/* JSON helpers; see json.h. */
#include "core/json.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void brix_json_errf(brix_json_err_t *e, const char *param, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->msg, sizeof e->msg, fmt, ap);
    va_end(ap);
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
}

int brix_json_parse(const char *s, size_t len, cJSON **out, brix_json_err_t *e)
{
    const char *end = NULL;
    *out = NULL;
    if (len == 0) {
        brix_json_errf(e, NULL, "request body is empty; expected a JSON object");
        return -1;
    }
    /* Not require_null_terminated: with an explicit length cJSON would then
     * demand a NUL inside the length. Trailing bytes are checked here. */
    cJSON *j = cJSON_ParseWithLengthOpts(s, len, &end, 0);
    if (!j) {
        size_t off = end && end >= s ? (size_t)(end - s) : 0;
        if (off > len)
            off = len;
        /* cJSON reports one byte too far when an object key does not start
         * with '"' (parse_string fails after its first byte): if a key was
         * expected at off-1, that byte is the culprit. */
        if (off > 0 && off <= len && s[off - 1] != '"') {
            size_t k = off - 1;
            while (k > 0 &&
                   (s[k - 1] == ' ' || s[k - 1] == '\t' || s[k - 1] == '\n' || s[k - 1] == '\r'))
                k--;
            if (k > 0 && (s[k - 1] == '{' || s[k - 1] == ','))
                off--;
        }
        brix_json_errf(e, NULL, "invalid JSON in request body at byte offset %zu", off);
        return -1;
    }
    size_t off = (size_t)(end - s);
    while (off < len && (s[off] == ' ' || s[off] == '\t' || s[off] == '\n' || s[off] == '\r'))
        off++;
    if (off < len) {
        cJSON_Delete(j);
        brix_json_errf(e, NULL, "invalid JSON in request body: unexpected data at byte offset %zu",
                       off);
        return -1;
    }
    *out = j;
    return 0;
}

static const cJSON *field(const cJSON *obj, const char *key, bool *present)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (v && cJSON_IsNull(v))
        v = NULL;
    if (present)
        *present = v != NULL;
    return v;
}

int brix_json_get_string(const cJSON *obj, const char *key, bool *present, const char **out,
                         brix_json_err_t *e)
{
    const cJSON *v = field(obj, key, present);
    if (!v)
        return 0;
    if (!cJSON_IsString(v)) {
        brix_json_errf(e, key, "'%s' must be a string", key);
        return -1;
    }
    *out = v->valuestring;
    return 0;
}

int brix_json_get_number(const cJSON *obj, const char *key, double min, double max, bool *present,
                         double *out, brix_json_err_t *e)
{
    const cJSON *v = field(obj, key, present);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble)) {
        brix_json_errf(e, key, "'%s' must be a number", key);
        return -1;
    }
    if (v->valuedouble < min || v->valuedouble > max) {
        brix_json_errf(e, key, "'%s' must be between %g and %g, got %g", key, min, max,
                       v->valuedouble);
        return -1;
    }
    *out = v->valuedouble;
    return 0;
}

int brix_json_get_int(const cJSON *obj, const char *key, int64_t min, int64_t max, bool *present,
                      int64_t *out, brix_json_err_t *e)
{
    const cJSON *v = field(obj, key, present);
    if (!v)
        return 0;
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) ||
        floor(v->valuedouble) != v->valuedouble) {
        brix_json_errf(e, key, "'%s' must be an integer", key);
        return -1;
    }
    double d = v->valuedouble;
    if (d < (double)min || d > (double)max) {
        brix_json_errf(e, key, "'%s' must be between %lld and %lld, got %.0f", key, (long long)min,
                       (long long)max, d);
        return -1;
    }
    *out = (int64_t)d;
    return 0;
}

int brix_json_get_bool(const cJSON *obj, const char *key, bool *present, bool *out,
                       brix_json_err_t *e)
{
    const cJSON *v = field(obj, key, present);
    if (!v)
        return 0;
    if (!cJSON_IsBool(v)) {
        brix_json_errf(e, key, "'%s' must be a boolean", key);
        return -1;
    }
    *out = cJSON_IsTrue(v);
    return 0;
}
