/*
 * JSON that brix writes is read back by brix: the state file and API bodies
 * are JSON parsed through libyaml (core/yaml). Found by fuzz_yaml_objects:
 * a label value with DEL or a C1 control (U+0080..U+009F) was written raw,
 * and libyaml refuses the whole document ("control characters are not
 * allowed"), so a controller could not load its own state; a raw U+0085
 * (NEL) came back as a line break. Checks the escaping of
 * brix_buf_append_json_str (and that other UTF-8 passes unchanged) and an
 * object's round trip through its canonical JSON.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "controller/objects.h"
#include "core/buf.h"
#include "core/yaml.h"
#include "leak_check.h"

#include <string.h>

static void expect_json(const char *in, const char *want)
{
    brix_buf_t b = BRIX_BUF_INIT;
    assert_int_equal(brix_buf_append_json_str(&b, in, strlen(in)), 0);
    assert_string_equal(b.data, want);
    brix_buf_free(&b);
}

static void test_escapes(void **state)
{
    (void)state;
    expect_json("a\x7f", "\"a\\u007f\"");
    expect_json("\xc2\x80-\xc2\x85-\xc2\x9f", "\"\\u0080-\\u0085-\\u009f\"");
    expect_json("\x01\n\"\\", "\"\\u0001\\n\\\"\\\\\"");
    /* other characters stay as they are, continuation bytes 80..9F included */
    expect_json("\xc2\xa0 \xc3\xa9 \xc4\x80 \xe2\x80\xa8 \xf0\x9f\x98\x80",
                "\"\xc2\xa0 \xc3\xa9 \xc4\x80 \xe2\x80\xa8 \xf0\x9f\x98\x80\"");
    expect_json("end\xc2", "\"end\xc2\""); /* a cut sequence is not ours to fix */
}

static brix_obj_t *parse_one(const char *text)
{
    char err[256] = "";
    brix_yaml_node_t *doc = NULL;
    brix_obj_t *o = NULL;
    int rc = brix_yaml_parse("t.yaml", text, strlen(text), &doc, err, sizeof err);
    if (!rc)
        rc = brix_obj_parse(doc, "t.yaml", NULL, &o, err, sizeof err);
    brix_yaml_free(doc);
    if (rc)
        fail_msg("%s\n%s", err, text);
    return o;
}

static void test_object_round_trip(void **state)
{
    (void)state;
    brix_obj_t *o = parse_one("apiVersion: model.aibrix.ai/v1alpha1\n"
                              "kind: ModelAdapter\n"
                              "metadata:\n"
                              "  name: a\n"
                              "  labels: {nel: \"x\\u0085y\", del: \"d\\x7f\"}\n"
                              "  annotations: {c1: \"\\u0080\\u009f\", ls: \"p\\u2028q\"}\n"
                              "spec:\n"
                              "  podSelector: {matchLabels: {k: v}}\n"
                              "  artifactURL: s3://bucket/a\n"
                              "  additionalConfig: {x: \"\\x7f\"}\n");
    assert_string_equal(brix_labels_get(&o->meta.labels, "nel"), "x\xc2\x85y");
    brix_buf_t b = BRIX_BUF_INIT;
    assert_int_equal(brix_obj_json_open(&b, o), 0);
    assert_int_equal(brix_buf_append_char(&b, '}'), 0);
    brix_obj_t *back = parse_one(b.data);
    assert_true(brix_obj_same(o, back));
    assert_string_equal(brix_labels_get(&back->meta.labels, "nel"), "x\xc2\x85y");
    assert_string_equal(brix_labels_get(&back->meta.labels, "del"), "d\x7f");
    assert_string_equal(brix_labels_get(&back->meta.annotations, "c1"), "\xc2\x80\xc2\x9f");
    brix_obj_free(back);
    brix_obj_free(o);
    brix_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_escapes, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_object_round_trip, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
