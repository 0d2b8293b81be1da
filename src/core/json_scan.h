/*
 * json_scan — validate a JSON document and visit its top-level members
 * without building a tree or allocating.
 *
 * The gateway reads only a few fields of each request body (model, stream,
 * and for prefix routing the prompt) and forwards the original bytes, so it
 * validates once and points into the input instead of paying cJSON's dozens
 * of allocations per body. The grammar is RFC 8259 (strict: no comments, no
 * trailing commas, no leading zeros, no control characters in strings,
 * escapes checked, strings well-formed UTF-8, nesting at most
 * BRIX_JSON_SCAN_MAX_DEPTH). Lone surrogates in \u escapes are accepted, as
 * Python's json (and so vLLM) accepts them. Errors give the
 * byte offset of the first byte that cannot belong to a valid document.
 */
#ifndef BRIX_CORE_JSON_SCAN_H
#define BRIX_CORE_JSON_SCAN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define BRIX_JSON_SCAN_MAX_DEPTH 512

typedef enum brix_json_kind {
    BRIX_JSON_NULL,
    BRIX_JSON_FALSE,
    BRIX_JSON_TRUE,
    BRIX_JSON_NUMBER,
    BRIX_JSON_STRING, /* p/n span the contents between the quotes, still escaped */
    BRIX_JSON_ARRAY,  /* p/n span the whole value including brackets */
    BRIX_JSON_OBJECT,
} brix_json_kind_t;

typedef struct brix_json_val {
    brix_json_kind_t kind;
    const char *p;
    size_t n;
} brix_json_val_t;

/* Called for each member of the top-level object, in order; key is the raw
 * (escaped) key text; compare it with brix_json_key_is or decode it with
 * brix_json_key_decode. Return non-zero to stop scanning early (the rest is
 * then not validated). */
typedef int (*brix_json_member_fn)(const char *key, size_t klen, const brix_json_val_t *v,
                                   void *ud);

typedef enum brix_json_scan_rc {
    BRIX_JSON_SCAN_OK = 0,
    BRIX_JSON_SCAN_INVALID,    /* *err_off, *err_what say where and why */
    BRIX_JSON_SCAN_NOT_OBJECT, /* valid JSON, but the top level is not an object */
    BRIX_JSON_SCAN_STOPPED,    /* the callback returned non-zero */
} brix_json_scan_rc_t;

brix_json_scan_rc_t brix_json_scan(const char *s, size_t len, brix_json_member_fn fn, void *ud,
                                   size_t *err_off, const char **err_what);

/* Visits the members of an OBJECT value returned by a scan (already
 * validated, so this cannot fail), or the elements of an ARRAY value (the
 * key is then NULL/0). Returns early when fn returns non-zero. */
void brix_json_each(const brix_json_val_t *v, brix_json_member_fn fn, void *ud);

/* Decodes the contents of a JSON string literal (as given in a STRING value)
 * into out (at least n + 1 bytes: decoding never grows). Returns the decoded
 * length; \u escapes become UTF-8 (surrogate pairs joined). */
size_t brix_json_unescape(const char *p, size_t n, char *out);

/* True when the key, after decoding its escapes, equals the C string (at
 * most 64 bytes): "mod\u0065l" is "model", as for every JSON parser the
 * body is forwarded to. */
bool brix_json_key_is(const char *key, size_t klen, const char *want);

/* Decodes a raw key (as given to a member callback) into out, which holds
 * cap bytes (not NUL-terminated). Returns the decoded length, or SIZE_MAX
 * when the decoded key is longer than cap (then it cannot be any of the
 * short names a caller looks for). No allocation. */
size_t brix_json_key_decode(const char *key, size_t klen, char *out, size_t cap);

#endif
