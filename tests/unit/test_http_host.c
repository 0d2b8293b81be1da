/*
 * core/http_host: the Host check against DNS rebinding — IP literals and
 * localhost on the listener's port (or none), the operator's names (bare:
 * any port; name:port: that one), and malformed values refused.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include "core/http_host.h"
#include "leak_check.h"

static void test_host(void **state)
{
    (void)state;
    brix_strlist_t allowed = { 0 };
    assert_int_equal(brix_strlist_push(&allowed, "ctl.example"), 0);
    assert_int_equal(brix_strlist_push(&allowed, "pf.example:9000"), 0);
    static const struct {
        const char *host;
        bool ok;
    } cases[] = {
        { NULL, true },
        { "127.0.0.1:8081", true },
        { "127.0.0.1", true },
        { "localhost:8081", true },
        { "LOCALHOST:8081", true },
        { "[::1]:8081", true },
        { "[::1]", true },
        { "10.1.2.3:8081", true },
        { "ctl.example", true },
        { "CTL.example:443", true },
        { "pf.example:9000", true },
        { "pf.example:9001", false },
        { "pf.example", false },
        { "127.0.0.1:8082", false },
        { "localhost:80", false },
        { "evil.example", false },
        { "evil.example:8081", false },
        { "127.0.0.1.nip.io:8081", false },
        { "localhost.evil.example", false },
        { "", false },
        { "::1", false },
        { "[::1", false },
        { "[::1]x", false },
        { "127.0.0.1:", false },
        { "127.0.0.1:0", false },
        { "127.0.0.1:99999", false },
        { "127.0.0.1:80a", false },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++)
        if (brix_http_host_ok(cases[i].host, 8081, &allowed) != cases[i].ok)
            fail_msg("Host '%s': want %s", cases[i].host ? cases[i].host : "(none)",
                     cases[i].ok ? "ok" : "refused");
    assert_true(brix_http_host_ok("127.0.0.1:8081", 8081, NULL));
    brix_strlist_free(&allowed);
    assert_true(brix_http_host_is_loopback("127.0.0.1"));
    assert_true(brix_http_host_is_loopback("127.9.9.9"));
    assert_true(brix_http_host_is_loopback("::1"));
    assert_true(brix_http_host_is_loopback("localhost"));
    assert_false(brix_http_host_is_loopback("0.0.0.0"));
    assert_false(brix_http_host_is_loopback("::"));
    assert_false(brix_http_host_is_loopback("10.0.0.1"));
    assert_false(brix_http_host_is_loopback("example.com"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_host, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
