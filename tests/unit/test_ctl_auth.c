/*
 * controller/auth: the pure guards in front of the controller's API — argv
 * redaction (what must be hidden, and what must stay readable), write
 * content types, cookie parsing, token comparison, and the token file (made
 * once, 0600, reused, validated). The Host check is core's: test_http_host.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controller/auth.h"
#include "core/secret.h"
#include "leak_check.h"

static void redacts(const char *const *argv, size_t n, const char *want)
{
    brix_strlist_t l = { 0 };
    for (size_t i = 0; i < n; i++)
        assert_int_equal(brix_strlist_push(&l, argv[i]), 0);
    brix_buf_t b = BRIX_BUF_INIT;
    assert_int_equal(brix_auth_redact_json(&b, &l), 0);
    assert_non_null(b.data);
    if (strcmp(b.data, want))
        fail_msg("redacted to %s, want %s", b.data, want);
    brix_buf_free(&b);
    brix_strlist_free(&l);
}

#define REDACTS(want, ...)                                                                         \
    do {                                                                                           \
        const char *const v_[] = { __VA_ARGS__ };                                                  \
        redacts(v_, sizeof v_ / sizeof *v_, want);                                                 \
    } while (0)

static void test_redact(void **state)
{
    (void)state;
    REDACTS("[\"vllm\",\"--api-key\",\"<redacted>\",\"--port\",\"8000\"]", "vllm", "--api-key",
            "sk-1", "--port", "8000");
    REDACTS("[\"--api-key=<redacted>\",\"--hf_token=<redacted>\"]", "--api-key=sk-1",
            "--hf_token=hf-2");
    REDACTS("[\"--admin-key\",\"<redacted>\",\"--redis-password\",\"<redacted>\"]", "--admin-key",
            "a", "--redis-password", "b");
    REDACTS("[\"--token\",\"<redacted>\",\"--secret\",\"<redacted>\"]", "--token", "t", "--secret",
            "s");
    /* a secret flag followed by another flag had no value */
    REDACTS("[\"--api-key\",\"--port\",\"1\"]", "--api-key", "--port", "1");
    /* env-like words */
    REDACTS("[\"env\",\"HF_TOKEN=<redacted>\",\"OPENAI_API_KEY=<redacted>\",\"MODE=fast\"]", "env",
            "HF_TOKEN=x", "OPENAI_API_KEY=y", "MODE=fast");
    /* inside a shell string, word by word */
    REDACTS("[\"sh\",\"-c\",\"exec vllm --api-key <redacted> --port {port}  PASSWORD=<redacted>\"]",
            "sh", "-c", "exec vllm --api-key sk-9 --port {port}  PASSWORD=p");
    /* URL passwords, also as a flag value */
    REDACTS("[\"https://u:<redacted>@h/x?y=1\",\"--url=http://a:<redacted>@b\"]",
            "https://u:pw@h/x?y=1", "--url=http://a:pw@b");
    /* what must stay readable: token counts, sizes, models, plain URLs */
    REDACTS("[\"--max-num-batched-tokens\",\"8192\",\"--block-size\",\"16\",\"--model\",\"m\","
            "\"http://h:8000/v1\",\"user@host\"]",
            "--max-num-batched-tokens", "8192", "--block-size", "16", "--model", "m",
            "http://h:8000/v1", "user@host");
    redacts(NULL, 0, "[]");
}

static void test_redact_enomem(void **state)
{
    (void)state;
    brix_strlist_t l = { 0 };
    assert_int_equal(brix_strlist_push(&l, "--api-key"), 0);
    assert_int_equal(brix_strlist_push(&l, "secret-value"), 0);
    for (int k = 0; k < 4; k++) {
        brix_buf_t b = BRIX_BUF_INIT;
        brix_alloc_fail_after(k);
        int rc = brix_auth_redact_json(&b, &l);
        brix_alloc_fail_after(-1);
        assert_true(rc == 0 || rc == -ENOMEM);
        assert_true(!b.data || !strstr(b.data, "secret-value"));
        brix_buf_free(&b);
    }
    brix_strlist_free(&l);
}

static void test_content_type(void **state)
{
    (void)state;
    assert_true(brix_auth_write_type_ok("application/json"));
    assert_true(brix_auth_write_type_ok("Application/JSON; charset=utf-8"));
    assert_true(brix_auth_write_type_ok(" application/yaml "));
    assert_true(brix_auth_write_type_ok("application/x-yaml"));
    assert_true(brix_auth_write_type_ok("text/yaml;charset=utf-8"));
    assert_false(brix_auth_write_type_ok(NULL));
    assert_false(brix_auth_write_type_ok(""));
    assert_false(brix_auth_write_type_ok("text/plain"));
    assert_false(brix_auth_write_type_ok("text/plain; x=application/json"));
    assert_false(brix_auth_write_type_ok("application/x-www-form-urlencoded"));
    assert_false(brix_auth_write_type_ok("multipart/form-data; boundary=x"));
    assert_false(brix_auth_write_type_ok("application/jsonx"));
    assert_false(brix_auth_write_type_ok("application/json-seq"));
}

static void test_cookie_and_compare(void **state)
{
    (void)state;
    char v[70];
    assert_true(
        brix_auth_cookie_get("a=1; brix_ctl_session=abc ; b=2", BRIX_AUTH_COOKIE, v, sizeof v));
    assert_string_equal(v, "abc");
    assert_true(brix_auth_cookie_get("brix_ctl_session=x", BRIX_AUTH_COOKIE, v, sizeof v));
    assert_string_equal(v, "x");
    assert_false(brix_auth_cookie_get("xbrix_ctl_session=x", BRIX_AUTH_COOKIE, v, sizeof v));
    assert_false(brix_auth_cookie_get("brix_ctl_sessionx=x", BRIX_AUTH_COOKIE, v, sizeof v));
    assert_false(brix_auth_cookie_get("a=b", BRIX_AUTH_COOKIE, v, sizeof v));
    assert_false(brix_auth_cookie_get("brix_ctl_session=0123456789", BRIX_AUTH_COOKIE, v, 5));
    char c1[65], c2[65];
    assert_int_equal(brix_auth_cookie_value("token-one-0123456789", c1), 0);
    assert_int_equal(brix_auth_cookie_value("token-two-0123456789", c2), 0);
    assert_int_equal(strlen(c1), 64);
    assert_string_not_equal(c1, c2);
    assert_null(strstr(c1, "token"));
    assert_true(brix_secret_equal("abc", "abc"));
    assert_false(brix_secret_equal("abc", "abd"));
    assert_false(brix_secret_equal("ab", "abc"));
    assert_false(brix_secret_equal("abcd", "abc"));
    assert_false(brix_secret_equal(NULL, "abc"));
    assert_false(brix_secret_equal("", ""));
}

static void test_token_file(void **state)
{
    (void)state;
    char dir[] = "/tmp/brix-auth-XXXXXX";
    assert_non_null(mkdtemp(dir));
    char path[128], tok[BRIX_AUTH_TOKEN_MAX], again[BRIX_AUTH_TOKEN_MAX], err[256];
    snprintf(path, sizeof path, "%s/token", dir);
    bool created = false;
    assert_int_equal(brix_auth_token_load(path, false, tok, sizeof tok, &created, err, sizeof err),
                     -ENOENT);
    assert_int_equal(brix_auth_token_load(path, true, tok, sizeof tok, &created, err, sizeof err),
                     0);
    assert_true(created);
    assert_int_equal(strlen(tok), 64);
    assert_int_equal(strspn(tok, "0123456789abcdef"), 64);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    assert_int_equal(
        brix_auth_token_load(path, true, again, sizeof again, &created, err, sizeof err), 0);
    assert_false(created);
    assert_string_equal(tok, again);
    FILE *f = fopen(path, "w");
    fputs("short\n", f);
    fclose(f);
    assert_int_equal(brix_auth_token_load(path, true, tok, sizeof tok, NULL, err, sizeof err),
                     -EINVAL);
    f = fopen(path, "w");
    fputs("two words-0123456789abcdef\n", f);
    fclose(f);
    assert_int_equal(brix_auth_token_load(path, true, tok, sizeof tok, NULL, err, sizeof err),
                     -EINVAL);
    f = fopen(path, "w");
    fputs("\n  operator-token-0123456789 \r\n", f);
    fclose(f);
    assert_int_equal(brix_auth_token_load(path, false, tok, sizeof tok, NULL, err, sizeof err), 0);
    assert_string_equal(tok, "operator-token-0123456789");
    unlink(path);
    rmdir(dir);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_redact, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_redact_enomem, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_content_type, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_cookie_and_compare, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_token_file, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
