/*
 * core/json_scan: strict RFC 8259 validation with byte offsets, top-level
 * member visiting, early stop, unescaping. Valid documents printed by cJSON
 * must scan; a table of invalid ones must fail at the stated byte.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <cjson/cJSON.h>
#include <stdio.h>
#include <string.h>

#include "core/json_scan.h"

static brix_json_scan_rc_t scan(const char *s, size_t *off)
{
    const char *what;
    return brix_json_scan(s, strlen(s), NULL, NULL, off, &what);
}

static void test_valid(void **state)
{
    (void)state;
    static const char *ok[] = {
        "{}",
        " { } ",
        "{\"a\":1}",
        "{\"a\":-0.5e+10,\"b\":[true,false,null],\"c\":{\"d\":\"\"}}",
        "{\"s\":\"\\\"\\\\\\/\\b\\f\\n\\r\\t\\u00e9\\ud83d\\ude00\"}",
        "{\"a\":[[[[]]]]}",
        "{\"u\":\"héllo wörld ✓\"}",
        "{\"n\":0,\"m\":10,\"k\":1.0E-2}",
    };
    for (size_t i = 0; i < sizeof ok / sizeof *ok; i++) {
        size_t off;
        if (scan(ok[i], &off) != BRIX_JSON_SCAN_OK)
            fail_msg("valid document rejected: %s (at %zu)", ok[i], off);
    }
    size_t off;
    assert_int_equal(scan("[1,2]", &off), BRIX_JSON_SCAN_NOT_OBJECT);
    assert_int_equal(scan("\"x\"", &off), BRIX_JSON_SCAN_NOT_OBJECT);
    assert_int_equal(scan("42", &off), BRIX_JSON_SCAN_NOT_OBJECT);
}

static void test_invalid_offsets(void **state)
{
    (void)state;
    static const struct {
        const char *s;
        size_t off;
    } bad[] = {
        { "", 0 },
        { "{", 1 },
        { "{\"model\": \"a\",,}", 14 },
        { "{,}", 1 },
        { "{\"a\":1,x}", 7 },
        { "{\"model\": x}", 10 },
        { "{\"a\": 1} x", 9 },
        { "{\"a\": 1}}", 8 },
        { "{\"a\":[1,]}", 8 },
        { "{\"a\":01}", 6 },
        { "{\"a\":1.}", 7 },
        { "{\"a\":-}", 6 },
        { "{\"a\":tru}", 8 },
        { "{\"a\":\"x\ny\"}", 7 },
        { "{\"a\":\"\\x\"}", 7 },
        { "{\"a\":\"\\u12g4\"}", 10 },
        { "{\"a\" 1}", 5 },
        { "{\"a\":\"open", 10 },
        { "{'a':1}", 1 },
        { "{\"a\":\"\xbd\"}", 6 },
        { "{\"a\":\"\xc0\xaf\"}", 6 },
        { "{\"a\":\"\xed\xa0\x80\"}", 6 },
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        size_t off = 999;
        brix_json_scan_rc_t rc = scan(bad[i].s, &off);
        if (rc != BRIX_JSON_SCAN_INVALID || off != bad[i].off)
            fail_msg("%s: rc %d offset %zu, want invalid at %zu", bad[i].s, rc, off, bad[i].off);
    }
}

static void test_depth_limit(void **state)
{
    (void)state;
    char buf[4096];
    size_t n = 0;
    buf[n++] = '{';
    memcpy(buf + n, "\"a\":", 4);
    n += 4;
    for (int i = 0; i < 600; i++)
        buf[n++] = '[';
    buf[n] = '\0';
    size_t off;
    assert_int_equal(scan(buf, &off), BRIX_JSON_SCAN_INVALID);
    assert_int_equal(off, 5 + BRIX_JSON_SCAN_MAX_DEPTH - 1);
}

typedef struct seen {
    char keys[8][16];
    brix_json_kind_t kinds[8];
    int n;
    int stop_at;
} seen_t;

static int member(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    seen_t *s = ud;
    snprintf(s->keys[s->n], sizeof s->keys[s->n], "%.*s", (int)kl, k);
    s->kinds[s->n] = v->kind;
    s->n++;
    return s->n == s->stop_at;
}

static void test_members(void **state)
{
    (void)state;
    const char *doc = "{\"model\":\"m\\u00e9\",\"stream\":true,\"messages\":[{\"role\":\"user\"}],"
                      "\"n\":2,\"x\":null,\"o\":{\"model\":\"inner\"}}";
    seen_t s = { .stop_at = -1 };
    size_t off;
    const char *what;
    assert_int_equal(brix_json_scan(doc, strlen(doc), member, &s, &off, &what), BRIX_JSON_SCAN_OK);
    assert_int_equal(s.n, 6); /* top level only: the inner "model" is not visited */
    assert_string_equal(s.keys[0], "model");
    assert_int_equal(s.kinds[0], BRIX_JSON_STRING);
    assert_int_equal(s.kinds[1], BRIX_JSON_TRUE);
    assert_int_equal(s.kinds[2], BRIX_JSON_ARRAY);
    assert_int_equal(s.kinds[3], BRIX_JSON_NUMBER);
    assert_int_equal(s.kinds[4], BRIX_JSON_NULL);
    assert_int_equal(s.kinds[5], BRIX_JSON_OBJECT);
    seen_t s2 = { .stop_at = 2 };
    assert_int_equal(brix_json_scan(doc, strlen(doc), member, &s2, &off, &what),
                     BRIX_JSON_SCAN_STOPPED);
    assert_int_equal(s2.n, 2);
}

static int grab_string(const char *k, size_t kl, const brix_json_val_t *v, void *ud)
{
    *(brix_json_val_t *)ud = *v;
    return 0;
}

static void test_unescape(void **state)
{
    (void)state;
    const char *doc = "{\"s\":\"a\\\"b\\\\c\\/d\\n\\u00e9\\u20ac\\ud83d\\ude00\\udc00x\"}";
    brix_json_val_t v;
    size_t off;
    const char *what;
    assert_int_equal(brix_json_scan(doc, strlen(doc), grab_string, &v, &off, &what),
                     BRIX_JSON_SCAN_OK);
    assert_int_equal(v.kind, BRIX_JSON_STRING);
    char out[64];
    size_t n = brix_json_unescape(v.p, v.n, out);
    const char want[] = "a\"b\\c/d\n\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80\xef\xbf\xbdx";
    assert_int_equal(n, sizeof want - 1);
    assert_memory_equal(out, want, n);
    assert_true(n <= v.n);
}

/* Documents cJSON prints (from random trees) always scan. */
static void test_cjson_printed(void **state)
{
    (void)state;
    uint32_t r = 12345;
    for (int t = 0; t < 300; t++) {
        cJSON *o = cJSON_CreateObject();
        for (int i = 0; i < 8; i++) {
            r = r * 1103515245u + 12345u;
            char k[16];
            snprintf(k, sizeof k, "k%d", i);
            switch ((r >> 16) % 5) {
            case 0:
                cJSON_AddNumberToObject(o, k, (double)(int)(r % 100000) / 7.0);
                break;
            case 1:
                cJSON_AddStringToObject(o, k, "x\"y\\z\n\t\x01");
                break;
            case 2:
                cJSON_AddBoolToObject(o, k, r & 1);
                break;
            case 3:
                cJSON_AddNullToObject(o, k);
                break;
            default: {
                cJSON *a = cJSON_AddArrayToObject(o, k);
                cJSON_AddItemToArray(a, cJSON_CreateNumber(-1e-7));
                cJSON_AddItemToArray(a, cJSON_CreateObject());
            }
            }
        }
        char *txt = (t & 1) ? cJSON_Print(o) : cJSON_PrintUnformatted(o);
        size_t off;
        if (scan(txt, &off) != BRIX_JSON_SCAN_OK)
            fail_msg("cJSON output rejected at %zu: %s", off, txt);
        cJSON_free(txt);
        cJSON_Delete(o);
    }
}

/* Keys are compared after decoding: "mod\u0065l" is "model" to every JSON
 * parser a body is forwarded to, so it must be here too. */
static void test_escaped_keys(void **state)
{
    (void)state;
    static const struct {
        const char *raw; /* the key as written between the quotes */
        bool is_model;
    } cases[] = {
        { "model", true },
        { "mod\\u0065l", true },
        { "\\u006d\\u006f\\u0064\\u0065\\u006c", true },
        { "\\u006D\\u006F\\u0064\\u0045\\u006c", false }, /* "modEl" */
        { "mode\\u006C", true },
        { "model\\u0000", false },
        { "mod\\\\el", false },
        { "Model", false },
        { "models", false },
        { "mode", false },
        { "\\/model", false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        const char *k = cases[i].raw;
        if (brix_json_key_is(k, strlen(k), "model") != cases[i].is_model)
            fail_msg("key_is(%s, model) should be %d", k, cases[i].is_model);
    }
    char out[8];
    /* decoding: the length, or SIZE_MAX past the cap */
    assert_int_equal(brix_json_key_decode("mod\\u0065l", 10, out, sizeof out), 5);
    assert_memory_equal(out, "model", 5);
    assert_int_equal(brix_json_key_decode("stream_options", 14, out, sizeof out), SIZE_MAX);
    assert_int_equal(brix_json_key_decode("\\u00e9\\ud83d\\ude00", 18, out, sizeof out), 6);
    assert_memory_equal(out, "\xc3\xa9\xf0\x9f\x98\x80", 6);
    assert_int_equal(brix_json_key_decode("abcdefgh", 8, out, sizeof out), 8);
    assert_int_equal(brix_json_key_decode("abcdefg\\u00e9", 13, out, sizeof out), SIZE_MAX);
    /* a very long raw key that decodes long is refused at the cap, not read past it */
    char longk[600];
    for (size_t i = 0; i < 100; i++)
        memcpy(longk + 6 * i, "\\u0061", 6);
    assert_int_equal(brix_json_key_decode(longk, 600, out, sizeof out), SIZE_MAX);
    assert_false(brix_json_key_is(longk, 600, "model"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid),        cmocka_unit_test(test_invalid_offsets),
        cmocka_unit_test(test_depth_limit),  cmocka_unit_test(test_members),
        cmocka_unit_test(test_unescape),     cmocka_unit_test(test_cjson_printed),
        cmocka_unit_test(test_escaped_keys),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
