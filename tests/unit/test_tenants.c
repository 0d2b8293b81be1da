/*
 * Unit tests for gateway/tenants.h (the memory store; the Redis store runs
 * the same model in Lua and is tested end to end in integration test 14):
 * user specs and Redis URLs, keys and their hashes, OpenAI's reset format,
 * GCRA request and token limits with their header numbers, key and user
 * resolution, allowed models, the default-limit policy, and the admin
 * operations (create, update, rotate, delete, list).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "gateway/tenants.h"

#include "leak_check.h"

static brix_tn_decision_t g_d;
static int g_calls;

static void on_check(void *ud, const brix_tn_decision_t *d)
{
    (void)ud;
    g_d = *d;
    g_calls++;
}

static brix_tn_admin_rc_t g_rc;
static brix_tn_user_t g_users[8];
static size_t g_n;

static void on_admin(void *ud, brix_tn_admin_rc_t rc, const brix_tn_user_t *u, size_t n,
                     const char *detail)
{
    (void)ud;
    (void)detail;
    g_rc = rc;
    g_n = n < 8 ? n : 8;
    if (g_n)
        memcpy(g_users, u, g_n * sizeof *u);
}

static const brix_tn_decision_t *check(brix_tn_conn_t *c, const char *bearer, const char *user,
                                       const char *model, int64_t est)
{
    g_calls = 0;
    brix_tn_op_t *op = brix_tn_check(c, bearer, user, model, est, on_check, NULL);
    assert_null(op); /* the memory store answers at once */
    assert_int_equal(g_calls, 1);
    return &g_d;
}

static void test_parse_user(void **state)
{
    (void)state;
    brix_tn_user_t u;
    char err[256];
    assert_int_equal(brix_tn_parse_user("alice", &u, err, sizeof err), 0);
    assert_string_equal(u.name, "alice");
    assert_int_equal(u.rpm, 0);
    assert_int_equal(
        brix_tn_parse_user("bob:rpm=5,tpm=1000,models=a|b,priority=2,key=0123456789abcdefXYZ", &u,
                           err, sizeof err),
        0);
    assert_int_equal(u.rpm, 5);
    assert_int_equal(u.tpm, 1000);
    assert_int_equal(u.priority, 2);
    assert_string_equal(u.models, "a,b");
    char h[BRIX_TN_KEYHASH];
    brix_tn_key_hash("0123456789abcdefXYZ", 19, h);
    assert_string_equal(u.key_sha256, h);
    static const char *const bad[] = { "",         "a b",         "x:rpm=-1",        "x:rpm=1k",
                                       "x:what=1", "x:key=short", "x:key-sha256=zz", "x:rpm" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        err[0] = '\0';
        assert_int_equal(brix_tn_parse_user(bad[i], &u, err, sizeof err), -1);
        assert_true(strlen(err) > 5);
    }
}

static void test_redis_url(void **state)
{
    (void)state;
    brix_tn_cfg_t c;
    memset(&c, 0, sizeof c);
    char err[256];
    assert_int_equal(
        brix_tn_parse_redis_url("redis://:s3cret@10.0.0.1:6380/2", &c, err, sizeof err), 0);
    assert_string_equal(c.redis_host, "10.0.0.1");
    assert_int_equal(c.redis_port, 6380);
    assert_int_equal(c.redis_db, 2);
    assert_string_equal(c.redis_password, "s3cret");
    assert_int_equal(brix_tn_parse_redis_url("redis://localhost", &c, err, sizeof err), 0);
    assert_string_equal(c.redis_host, "localhost");
    assert_int_equal(c.redis_port, 6379);
    assert_null(c.redis_password);
    assert_int_equal(brix_tn_parse_redis_url("rediss://h:1", &c, err, sizeof err), -1);
    assert_non_null(strstr(err, "TLS"));
    assert_int_equal(brix_tn_parse_redis_url("redis://h:99999", &c, err, sizeof err), -1);
    assert_int_equal(brix_tn_parse_redis_url("redis://h/x", &c, err, sizeof err), -1);
    assert_int_equal(brix_tn_parse_redis_url("http://h", &c, err, sizeof err), -1);
    brix_tn_cfg_free(&c);
}

static void test_keys_and_format(void **state)
{
    (void)state;
    char a[64], b[64];
    assert_int_equal(brix_tn_new_key(a, sizeof a), 0);
    assert_int_equal(brix_tn_new_key(b, sizeof b), 0);
    assert_int_equal(strncmp(a, "sk-brix-", 8), 0);
    assert_int_equal(strlen(a), 8 + 43);
    assert_string_not_equal(a, b);
    char h1[BRIX_TN_KEYHASH], h2[BRIX_TN_KEYHASH];
    brix_tn_key_hash("abc", 3, h1);
    /* SHA-256("abc"), FIPS 180-2 appendix B.1 */
    assert_string_equal(h1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    brix_tn_key_hash(a, strlen(a), h2);
    assert_true(brix_tn_ct_equal(h2, h2));
    assert_false(brix_tn_ct_equal(h1, h2));
    assert_false(brix_tn_ct_equal("abc", "abcd"));
    char f[32];
    brix_tn_fmt_reset(500, f, sizeof f);
    assert_string_equal(f, "1ms");
    brix_tn_fmt_reset(20000, f, sizeof f);
    assert_string_equal(f, "20ms");
    brix_tn_fmt_reset(1500000, f, sizeof f);
    assert_string_equal(f, "1.5s");
    brix_tn_fmt_reset(90000000, f, sizeof f);
    assert_string_equal(f, "1m30s");
}

static brix_tn_t *store(bool require_key, int64_t default_rpm)
{
    brix_tn_cfg_t c;
    memset(&c, 0, sizeof c);
    c.enabled = true;
    c.require_key = require_key;
    c.default_rpm = default_rpm;
    c.default_tpm = 0;
    brix_tn_user_t us[3];
    char err[256];
    assert_int_equal(brix_tn_parse_user("r3:rpm=3", &us[0], err, sizeof err), 0);
    assert_int_equal(brix_tn_parse_user("t600:tpm=600,models=m1|m2", &us[1], err, sizeof err), 0);
    assert_int_equal(
        brix_tn_parse_user("keyed:rpm=100,key=sk-brix-0123456789abcdef", &us[2], err, sizeof err),
        0);
    c.users = us;
    c.nusers = 3;
    brix_tn_t *tn = brix_tn_new(&c, err, sizeof err);
    assert_non_null(tn);
    return tn;
}

static void test_rpm_gcra(void **state)
{
    (void)state;
    brix_tn_t *tn = store(false, -1);
    brix_tn_conn_t *c = brix_tn_conn_new(tn, NULL);
    for (int i = 0; i < 3; i++) {
        const brix_tn_decision_t *d = check(c, NULL, "r3", "m", 10);
        assert_int_equal(d->status, BRIX_TN_OK);
        assert_string_equal(d->user, "r3");
        assert_int_equal(d->rpm, 3);
        assert_int_equal(d->rpm_remaining, 2 - i);
        assert_int_equal(d->tpm_remaining, -1); /* unlimited */
    }
    const brix_tn_decision_t *d = check(c, NULL, "r3", "m", 10);
    assert_int_equal(d->status, BRIX_TN_RPM);
    assert_int_equal(d->rpm_remaining, 0);
    /* one request is earned back every 20 s: the wait is just under that */
    assert_true(d->retry_us > 19000000 && d->retry_us <= 20000000);
    assert_true(d->rpm_reset_us > 59000000 && d->rpm_reset_us <= 60000000);
    brix_tn_conn_free(c);
    brix_tn_free(tn);
}

static void test_tpm_and_charge(void **state)
{
    (void)state;
    brix_tn_t *tn = store(false, -1);
    brix_tn_conn_t *c = brix_tn_conn_new(tn, NULL);
    /* admission reserves the estimate (prompt + max_tokens) at once */
    const brix_tn_decision_t *d = check(c, NULL, "t600", "m1", 100);
    assert_int_equal(d->status, BRIX_TN_OK);
    assert_true(d->tpm_remaining >= 499 && d->tpm_remaining <= 500);
    /* it used 450: 350 more are charged */
    brix_tn_charge(c, "t600", 600, 350);
    d = check(c, NULL, "t600", "m1", 100);
    assert_int_equal(d->status, BRIX_TN_OK);
    assert_true(d->tpm_remaining >= 49 && d->tpm_remaining <= 51);
    /* that one used nothing: refunded */
    brix_tn_charge(c, "t600", 600, -100);
    d = check(c, NULL, "t600", "m2", 200); /* 200 > ~150 left */
    assert_int_equal(d->status, BRIX_TN_TPM);
    /* 50 tokens are earned back in 5 s */
    assert_true(d->retry_us > 4900000 && d->retry_us <= 5000000);
    brix_tn_charge(c, "t600", 600, 1000); /* in debt */
    d = check(c, NULL, "t600", "m1", 1);
    assert_int_equal(d->status, BRIX_TN_TPM);
    assert_int_equal(d->tpm_remaining, 0);
    /* a refund never banks credit beyond a full bucket */
    brix_tn_charge(c, "t600", 600, -100000);
    d = check(c, NULL, "t600", "m1", 600);
    assert_int_equal(d->status, BRIX_TN_OK);
    assert_true(d->tpm_remaining <= 1);
    d = check(c, NULL, "t600", "m3", 1);
    assert_int_equal(d->status, BRIX_TN_MODEL);
    brix_tn_conn_free(c);
    brix_tn_free(tn);
}

static uint64_t g_clock_ns;

static uint64_t fake_clock(void *ud)
{
    (void)ud;
    return g_clock_ns;
}

/* A request for exactly the budget that is left must be admitted whatever
 * the clock reads. Absolute floating-point times round `now + period` up by
 * one ulp when it crosses a power of two, which refused it at some host
 * uptimes (2^28 µs - 60 s is 208 s of uptime): the clock is put just below,
 * at and just above such points, with sub-microsecond parts. */
static void test_exact_budget_any_clock(void **state)
{
    (void)state;
    static const int pows[] = { 27, 28, 33, 40, 50 };
    static const uint64_t sub_ns[] = { 0, 1, 250, 500, 999 };
    static const int64_t shift_us[] = { -60000001, -60000000, -59999999, -1, 0 };
    const uint64_t P = 60000000;
    for (size_t a = 0; a < sizeof pows / sizeof *pows; a++) {
        for (size_t b = 0; b < sizeof shift_us / sizeof *shift_us; b++) {
            for (size_t k = 0; k < sizeof sub_ns / sizeof *sub_ns; k++) {
                uint64_t base_us = (uint64_t)((int64_t)(1ull << pows[a]) + shift_us[b]);
                g_clock_ns = base_us * 1000 + sub_ns[k];
                brix_tn_cfg_t c;
                memset(&c, 0, sizeof c);
                c.enabled = true;
                c.default_rpm = -1;
                brix_tn_user_t us[3];
                char err[256];
                assert_int_equal(brix_tn_parse_user("t600:tpm=600", &us[0], err, sizeof err), 0);
                assert_int_equal(brix_tn_parse_user("r3:rpm=3", &us[1], err, sizeof err), 0);
                assert_int_equal(brix_tn_parse_user("r7:rpm=7", &us[2], err, sizeof err), 0);
                c.users = us;
                c.nusers = 3;
                brix_tn_t *tn = brix_tn_new(&c, err, sizeof err);
                assert_non_null(tn);
                brix_tn_set_clock(tn, fake_clock, NULL);
                brix_tn_conn_t *cn = brix_tn_conn_new(tn, NULL);
                /* the whole token budget at once, then nothing */
                const brix_tn_decision_t *d = check(cn, NULL, "t600", "m", 600);
                if (d->status != BRIX_TN_OK)
                    fail_msg("600 of 600 tokens refused at clock %llu ns",
                             (unsigned long long)g_clock_ns);
                assert_int_equal(d->tpm_remaining, 0);
                assert_int_equal(check(cn, NULL, "t600", "m", 1)->status, BRIX_TN_TPM);
                /* every request of the minute at once, then nothing (a
                 * per-request cost that divides the period, and one that
                 * does not) */
                for (int i = 0; i < 3; i++) {
                    d = check(cn, NULL, "r3", "m", 1);
                    if (d->status != BRIX_TN_OK)
                        fail_msg("request %d of 3 refused at clock %llu ns", i + 1,
                                 (unsigned long long)g_clock_ns);
                    assert_int_equal(d->rpm_remaining, 2 - i);
                }
                assert_int_equal(check(cn, NULL, "r3", "m", 1)->status, BRIX_TN_RPM);
                for (int i = 0; i < 7; i++)
                    if (check(cn, NULL, "r7", "m", 1)->status != BRIX_TN_OK)
                        fail_msg("request %d of 7 refused at clock %llu ns", i + 1,
                                 (unsigned long long)g_clock_ns);
                assert_int_equal(check(cn, NULL, "r7", "m", 1)->status, BRIX_TN_RPM);
                /* exactly what was earned back: 10 tokens in 1 s, one
                 * request in 20 s */
                g_clock_ns += P / 3 * 1000;
                d = check(cn, NULL, "r3", "m", 1);
                if (d->status != BRIX_TN_OK)
                    fail_msg("the request earned back in 20 s refused at clock %llu ns",
                             (unsigned long long)g_clock_ns);
                assert_int_equal(check(cn, NULL, "r3", "m", 1)->status, BRIX_TN_RPM);
                g_clock_ns += 1000000000ull;
                d = check(cn, NULL, "t600", "m", 20 * 10 + 10);
                if (d->status != BRIX_TN_OK)
                    fail_msg("210 tokens earned back in 21 s refused at clock %llu ns",
                             (unsigned long long)g_clock_ns);
                assert_int_equal(check(cn, NULL, "t600", "m", 1)->status, BRIX_TN_TPM);
                brix_tn_conn_free(cn);
                brix_tn_free(tn);
            }
        }
    }
}

/* Keys are found through an index of their SHA-256: a wrong bearer costs a
 * few comparisons however many users there are (it scanned them all under
 * the store's lock), and keys keep working through creates, rotations and
 * deletes (which move other entries of the index). */
static void test_key_index(void **state)
{
    (void)state;
    brix_tn_t *tn = store(false, -1);
    brix_tn_conn_t *c = brix_tn_conn_new(tn, NULL);
    enum { N = 3000 };
    brix_tn_user_t u;
    for (int i = 0; i < N; i++) {
        memset(&u, 0, sizeof u);
        snprintf(u.name, sizeof u.name, "ku%d", i);
        u.rpm = 1000;
        char key[64];
        snprintf(key, sizeof key, "sk-brix-key-number-%06d", i);
        brix_tn_key_hash(key, strlen(key), u.key_sha256);
        brix_tn_admin(c, BRIX_TN_CREATE, &u, 0, on_admin, NULL);
        assert_int_equal(g_rc, BRIX_TN_ADMIN_OK);
    }
    brix_tn_stats_t st0, st1;
    brix_tn_stats(tn, &st0);
    for (int i = 0; i < 1000; i++) {
        char bad[64];
        snprintf(bad, sizeof bad, "sk-brix-not-a-key-%06d", i);
        assert_int_equal(check(c, bad, NULL, "m", 1)->status, BRIX_TN_BAD_KEY);
    }
    brix_tn_stats(tn, &st1);
    /* a scan would be 3,001 comparisons per bearer; the index (load <= 1/2)
     * probes a short cluster */
    assert_true(st1.key_compares - st0.key_compares < 1000 * 8);
    /* delete every third user: the others' keys still resolve to them */
    for (int i = 0; i < N; i += 3) {
        memset(&u, 0, sizeof u);
        snprintf(u.name, sizeof u.name, "ku%d", i);
        brix_tn_admin(c, BRIX_TN_DELETE, &u, 0, on_admin, NULL);
        assert_int_equal(g_rc, BRIX_TN_ADMIN_OK);
    }
    /* rotate every fifth */
    for (int i = 1; i < N; i += 5) {
        memset(&u, 0, sizeof u);
        snprintf(u.name, sizeof u.name, "ku%d", i);
        char key[64];
        snprintf(key, sizeof key, "sk-brix-rotated-key-%06d", i);
        brix_tn_key_hash(key, strlen(key), u.key_sha256);
        brix_tn_admin(c, BRIX_TN_ROTATE, &u, 0, on_admin, NULL);
        if (i % 3 == 0)
            assert_int_equal(g_rc, BRIX_TN_ADMIN_NOT_FOUND);
        else
            assert_int_equal(g_rc, BRIX_TN_ADMIN_OK);
    }
    for (int i = 0; i < N; i++) {
        char key[64], name[16];
        snprintf(name, sizeof name, "ku%d", i);
        snprintf(key, sizeof key, "sk-brix-key-number-%06d", i);
        bool gone = i % 3 == 0, rotated = i % 5 == 1;
        const brix_tn_decision_t *d = check(c, key, NULL, "m", 1);
        assert_int_equal(d->status, gone || rotated ? BRIX_TN_BAD_KEY : BRIX_TN_OK);
        if (!gone && !rotated)
            assert_string_equal(d->user, name);
        snprintf(key, sizeof key, "sk-brix-rotated-key-%06d", i);
        d = check(c, key, NULL, "m", 1);
        assert_int_equal(d->status, rotated && !gone ? BRIX_TN_OK : BRIX_TN_BAD_KEY);
        if (rotated && !gone)
            assert_string_equal(d->user, name);
    }
    /* the configured key is found too */
    assert_string_equal(check(c, "sk-brix-0123456789abcdef", NULL, "m", 1)->user, "keyed");
    brix_tn_conn_free(c);
    brix_tn_free(tn);
}

/* --default-rpm users are bounded: at the bound, the least recently
 * admitted one that has nothing in flight and full buckets is dropped; when
 * none qualifies the newcomer gets 429 with a wait. */
static void test_implicit_bound(void **state)
{
    (void)state;
    brix_tn_cfg_t cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.enabled = true;
    cfg.default_rpm = 1;
    cfg.max_implicit = 3;
    char err[256];
    brix_tn_t *tn = brix_tn_new(&cfg, err, sizeof err);
    assert_non_null(tn);
    g_clock_ns = 1000000000000ull;
    brix_tn_set_clock(tn, fake_clock, NULL);
    brix_tn_conn_t *c = brix_tn_conn_new(tn, NULL);
    brix_tn_stats_t st;
    assert_int_equal(check(c, NULL, "u1", "m", 1)->status, BRIX_TN_OK);
    assert_int_equal(check(c, NULL, "u2", "m", 1)->status, BRIX_TN_OK);
    assert_int_equal(check(c, NULL, "u3", "m", 1)->status, BRIX_TN_OK);
    brix_tn_charge(c, "u1", 0, 0); /* over; u2 and u3 still in flight */
    /* full, and nobody's bucket is full again: refused, told when to retry */
    const brix_tn_decision_t *d = check(c, NULL, "u4", "m", 1);
    assert_int_equal(d->status, BRIX_TN_RPM);
    assert_true(d->retry_us > 0 && d->retry_us <= 60000000);
    brix_tn_stats(tn, &st);
    assert_int_equal(st.implicit_users, 3);
    assert_int_equal(st.implicit_refused, 1);
    assert_int_equal(st.implicit_evicted, 0);
    /* a minute later u1 is idle with full buckets: it makes room */
    g_clock_ns += 60000000000ull;
    assert_int_equal(check(c, NULL, "u4", "m", 1)->status, BRIX_TN_OK);
    brix_tn_stats(tn, &st);
    assert_int_equal(st.implicit_users, 3);
    assert_int_equal(st.implicit_evicted, 1);
    /* u2 and u3 have full buckets again but are in flight (their charges
     * are to come), u4 just started: nothing to evict */
    assert_int_equal(check(c, NULL, "u5", "m", 1)->status, BRIX_TN_RPM);
    /* u3 ends: it goes, u2 (older, but in flight) stays */
    brix_tn_charge(c, "u3", 0, 0);
    assert_int_equal(check(c, NULL, "u5", "m", 1)->status, BRIX_TN_OK);
    brix_tn_stats(tn, &st);
    assert_int_equal(st.implicit_evicted, 2);
    /* u2 is still there: naming it creates and evicts nobody */
    assert_int_equal(check(c, NULL, "u2", "m", 1)->status, BRIX_TN_OK);
    brix_tn_stats(tn, &st);
    assert_int_equal(st.implicit_users, 3);
    assert_int_equal(st.implicit_evicted, 2);
    /* a user written by the admin is no longer implicit: not counted, never
     * evicted */
    brix_tn_user_t u;
    memset(&u, 0, sizeof u);
    snprintf(u.name, sizeof u.name, "u2");
    u.rpm = 5;
    brix_tn_admin(c, BRIX_TN_UPDATE, &u, BRIX_TN_SET_RPM, on_admin, NULL);
    assert_int_equal(g_rc, BRIX_TN_ADMIN_OK);
    brix_tn_stats(tn, &st);
    assert_int_equal(st.implicit_users, 2);
    brix_tn_conn_free(c);
    brix_tn_free(tn);
}

static void test_identity(void **state)
{
    (void)state;
    brix_tn_t *tn = store(false, -1);
    brix_tn_conn_t *c = brix_tn_conn_new(tn, NULL);
    assert_int_equal(check(c, NULL, NULL, "m", 1)->status, BRIX_TN_ANONYMOUS);
    assert_int_equal(check(c, "EMPTY", NULL, "m", 1)->status, BRIX_TN_ANONYMOUS);
    assert_int_equal(check(c, NULL, "nobody", "m", 1)->status, BRIX_TN_NO_USER);
    assert_int_equal(check(c, NULL, "bad name", "m", 1)->status, BRIX_TN_NO_USER);
    const brix_tn_decision_t *d = check(c, "sk-brix-0123456789abcdef", "r3", "m", 1);
    assert_int_equal(d->status, BRIX_TN_OK);
    assert_string_equal(d->user, "keyed"); /* the key wins over the header */
    assert_int_equal(check(c, "sk-brix-wrong", "r3", "m", 1)->status, BRIX_TN_BAD_KEY);
    /* a user with a key cannot be named by the header */
    assert_int_equal(check(c, NULL, "keyed", "m", 1)->status, BRIX_TN_KEY_NEEDED);
    brix_tn_conn_free(c);
    brix_tn_free(tn);
    tn = store(true, -1);
    c = brix_tn_conn_new(tn, NULL);
    assert_int_equal(check(c, NULL, "r3", "m", 1)->status, BRIX_TN_NO_KEY);
    assert_int_equal(check(c, "EMPTY", "r3", "m", 1)->status, BRIX_TN_BAD_KEY);
    assert_int_equal(check(c, "sk-brix-0123456789abcdef", NULL, "m", 1)->status, BRIX_TN_OK);
    brix_tn_conn_free(c);
    brix_tn_free(tn);
    /* default-limit policy: unknown users get their own counters */
    tn = store(false, 1);
    c = brix_tn_conn_new(tn, NULL);
    assert_int_equal(check(c, NULL, "u1", "m", 1)->status, BRIX_TN_OK);
    assert_int_equal(check(c, NULL, "u1", "m", 1)->status, BRIX_TN_RPM);
    assert_int_equal(check(c, NULL, "u2", "m", 1)->status, BRIX_TN_OK);
    brix_tn_conn_free(c);
    brix_tn_free(tn);
}

static void test_admin(void **state)
{
    (void)state;
    brix_tn_t *tn = store(false, -1);
    brix_tn_conn_t *c = brix_tn_conn_new(tn, NULL);
    brix_tn_user_t u;
    memset(&u, 0, sizeof u);
    snprintf(u.name, sizeof u.name, "new");
    u.rpm = 9;
    brix_tn_key_hash("sk-brix-first-key-000000", 24, u.key_sha256);
    assert_null(brix_tn_admin(c, BRIX_TN_CREATE, &u, 0, on_admin, NULL));
    assert_int_equal(g_rc, BRIX_TN_ADMIN_OK);
    assert_int_equal(g_n, 1);
    assert_int_equal(g_users[0].rpm, 9);
    assert_string_equal(g_users[0].key_sha256, ""); /* never answered */
    brix_tn_admin(c, BRIX_TN_CREATE, &u, 0, on_admin, NULL);
    assert_int_equal(g_rc, BRIX_TN_ADMIN_EXISTS);
    assert_string_equal(check(c, "sk-brix-first-key-000000", NULL, "m", 1)->user, "new");
    /* update only what is set */
    u.rpm = 1;
    u.tpm = 77;
    brix_tn_admin(c, BRIX_TN_UPDATE, &u, BRIX_TN_SET_TPM, on_admin, NULL);
    assert_int_equal(g_rc, BRIX_TN_ADMIN_OK);
    assert_int_equal(g_users[0].rpm, 9);
    assert_int_equal(g_users[0].tpm, 77);
    /* rotate: the old key stops working at once */
    memset(u.key_sha256, 0, sizeof u.key_sha256);
    brix_tn_key_hash("sk-brix-second-key-00000", 24, u.key_sha256);
    brix_tn_admin(c, BRIX_TN_ROTATE, &u, 0, on_admin, NULL);
    assert_int_equal(g_rc, BRIX_TN_ADMIN_OK);
    assert_int_equal(g_users[0].tpm, 77);
    assert_int_equal(check(c, "sk-brix-first-key-000000", NULL, "m", 1)->status, BRIX_TN_BAD_KEY);
    assert_int_equal(check(c, "sk-brix-second-key-00000", NULL, "m", 1)->status, BRIX_TN_OK);
    brix_tn_admin(c, BRIX_TN_LIST, NULL, 0, on_admin, NULL);
    assert_int_equal(g_rc, BRIX_TN_ADMIN_OK);
    assert_int_equal(g_n, 4);
    brix_tn_admin(c, BRIX_TN_DELETE, &u, 0, on_admin, NULL);
    assert_int_equal(g_rc, BRIX_TN_ADMIN_OK);
    assert_string_equal(g_users[0].name, "new");
    brix_tn_admin(c, BRIX_TN_GET, &u, 0, on_admin, NULL);
    assert_int_equal(g_rc, BRIX_TN_ADMIN_NOT_FOUND);
    assert_int_equal(check(c, "sk-brix-second-key-00000", NULL, "m", 1)->status, BRIX_TN_BAD_KEY);
    brix_tn_admin(c, BRIX_TN_UPDATE, &u, BRIX_TN_SET_RPM, on_admin, NULL);
    assert_int_equal(g_rc, BRIX_TN_ADMIN_NOT_FOUND);
    brix_tn_conn_free(c);
    brix_tn_free(tn);
}

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_parse_user, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_redis_url, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_keys_and_format, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_rpm_gcra, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_tpm_and_charge, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_exact_budget_any_clock, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_key_index, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_implicit_bound, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_identity, leak_setup, leak_teardown),
        cmocka_unit_test_setup_teardown(test_admin, leak_setup, leak_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
