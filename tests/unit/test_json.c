/*
 * core/json: parse errors name the offending byte offset (checked for each
 * kind of mistake, including cJSON's off-by-one on bad object keys), trailing
 * bytes are rejected, and the typed getters check type, bounds and null.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "core/alloc.h"
#include "core/json.h"

static void expect_offset(const char *text, long want)
{
    cJSON *j = NULL;
    brix_json_err_t e;
    int rc = brix_json_parse(text, strlen(text), &j, &e);
    if (want < 0) {
        assert_int_equal(rc, 0);
        cJSON_Delete(j);
        return;
    }
    assert_int_equal(rc, -1);
    assert_null(j);
    char needle[48];
    snprintf(needle, sizeof needle, "byte offset %ld", want);
    if (!strstr(e.msg, needle))
        fail_msg("%s: got \"%s\", want offset %ld", text, e.msg, want);
}

static void test_offsets(void **state)
{
    (void)state;
    expect_offset("{\"model\": \"a\"}", -1);
    expect_offset("  {\"a\": [1, 2]}  \n", -1);
    expect_offset("{\"model\": \"a\",,}", 14);
    expect_offset("{,}", 1);
    expect_offset("{\"a\":1,x}", 7);
    expect_offset("{\"model\": x}", 10);
    expect_offset("[1,]", 3);
    expect_offset("{\"a\": 1} x", 9);
    expect_offset("{\"a\": 1}}", 8);
}

static void test_empty(void **state)
{
    (void)state;
    cJSON *j;
    brix_json_err_t e;
    assert_int_equal(brix_json_parse("", 0, &j, &e), -1);
    assert_non_null(strstr(e.msg, "empty"));
}

static void test_getters(void **state)
{
    (void)state;
    int64_t live = brix_alloc_live();
    const char *t = "{\"s\":\"x\",\"i\":5,\"f\":1.5,\"b\":true,\"n\":null,\"neg\":-3}";
    cJSON *j;
    brix_json_err_t e;
    assert_int_equal(brix_json_parse(t, strlen(t), &j, &e), 0);
    bool present;
    const char *s = NULL;
    int64_t i = 0;
    double d = 0;
    bool b = false;
    assert_int_equal(brix_json_get_string(j, "s", &present, &s, &e), 0);
    assert_true(present);
    assert_string_equal(s, "x");
    assert_int_equal(brix_json_get_string(j, "i", &present, &s, &e), -1);
    assert_string_equal(e.param, "i");
    assert_int_equal(brix_json_get_int(j, "i", 1, 10, &present, &i, &e), 0);
    assert_int_equal(i, 5);
    assert_int_equal(brix_json_get_int(j, "i", 6, 10, &present, &i, &e), -1);
    assert_int_equal(brix_json_get_int(j, "f", 0, 10, &present, &i, &e), -1); /* not integral */
    assert_int_equal(brix_json_get_number(j, "f", 0, 2, &present, &d, &e), 0);
    assert_true(d == 1.5);
    assert_int_equal(brix_json_get_bool(j, "b", &present, &b, &e), 0);
    assert_true(b);
    /* null counts as absent */
    assert_int_equal(brix_json_get_int(j, "n", 0, 1, &present, &i, &e), 0);
    assert_false(present);
    assert_int_equal(brix_json_get_int(j, "missing", 0, 1, &present, &i, &e), 0);
    assert_false(present);
    assert_int_equal(brix_json_get_int(j, "neg", 0, 1, &present, &i, &e), -1);
    cJSON_Delete(j);
    assert_int_equal(brix_alloc_live(), live);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_offsets),
        cmocka_unit_test(test_empty),
        cmocka_unit_test(test_getters),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
