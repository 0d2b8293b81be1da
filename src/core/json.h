/*
 * json — helpers over cJSON for request validation and fast output.
 *
 * Parsing reports the byte offset of a syntax error. The typed getters check
 * presence, type and bounds in one call and fill a brix_json_err_t whose
 * message and param go straight into an OpenAI-style 400 response. Output on
 * hot paths (SSE chunks) is written with brix_buf_* directly, not cJSON.
 */
#ifndef BRIX_CORE_JSON_H
#define BRIX_CORE_JSON_H

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct brix_json_err {
    char msg[256];
    char param[64]; /* the offending field, "" when none */
} brix_json_err_t;

/* Parses exactly one JSON value spanning the whole input (whitespace allowed).
 * On failure returns -1 and says at which byte offset parsing stopped. */
int brix_json_parse(const char *s, size_t len, cJSON **out, brix_json_err_t *e);

/* Getters: return 0 when absent (and *present=false) or valid, -1 with *e
 * filled when present with the wrong type or out of bounds. JSON null counts
 * as absent, as the OpenAI API treats it. */
int brix_json_get_string(const cJSON *obj, const char *key, bool *present, const char **out,
                         brix_json_err_t *e);
int brix_json_get_int(const cJSON *obj, const char *key, int64_t min, int64_t max, bool *present,
                      int64_t *out, brix_json_err_t *e);
int brix_json_get_number(const cJSON *obj, const char *key, double min, double max, bool *present,
                         double *out, brix_json_err_t *e);
int brix_json_get_bool(const cJSON *obj, const char *key, bool *present, bool *out,
                       brix_json_err_t *e);

void brix_json_errf(brix_json_err_t *e, const char *param, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif
