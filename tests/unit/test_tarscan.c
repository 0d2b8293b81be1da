/*
 * tarscan: the tar stream check the artifact fetcher runs before `tar -x`,
 * on headers built here byte by byte: limits hold at the header (before any
 * data), octal and base-256 sizes, the ustar prefix, GNU long names split
 * over blocks, pax path and size overrides, malformed and hostile headers,
 * and the zero-size rule for directories and symlinks (no data tar might read
 * differently).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "controller/tarscan.h"
#include "core/alloc.h"
#include "leak_check.h"

typedef unsigned char blk_t[512];

static void octal(unsigned char *f, size_t n, uint64_t v)
{
    char tmp[32];
    snprintf(tmp, sizeof tmp, "%0*llo", (int)n - 1, (unsigned long long)v);
    memcpy(f, tmp, n - 1);
    f[n - 1] = '\0';
}

static void checksum(unsigned char *b)
{
    memset(b + 148, ' ', 8);
    unsigned sum = 0;
    for (int i = 0; i < 512; i++)
        sum += b[i];
    octal(b + 148, 7, sum);
    b[155] = ' ';
}

/* A ustar header (POSIX magic when posix, else GNU's). */
static void hdr(unsigned char *b, const char *name, char type, uint64_t size, const char *link,
                int posix)
{
    memset(b, 0, 512);
    memcpy(b, name, strnlen(name, 100));
    octal(b + 100, 8, 0644);
    octal(b + 108, 8, 0);
    octal(b + 116, 8, 0);
    octal(b + 124, 12, size);
    octal(b + 136, 12, 0);
    b[156] = (unsigned char)type;
    if (link)
        memcpy(b + 157, link, strnlen(link, 100));
    memcpy(b + 257,
           posix ? "ustar\0"
                   "00"
                 : "ustar  \0",
           8);
    checksum(b);
}

static brix_tarscan_t T;

static void start(uint64_t max_bytes, uint64_t max_files)
{
    brix_tarscan_init(&T, max_bytes, max_files);
}

static int feed(const unsigned char *b)
{
    return brix_tarscan_block(&T, b);
}

static int feed_zero(void)
{
    static const blk_t z;
    return feed(z);
}

static void refused(brix_tarscan_verdict_t v, const char *why)
{
    assert_int_equal(T.verdict, v);
    if (!strstr(T.why, why))
        fail_msg("why '%s' lacks '%s'", T.why, why);
    brix_tarscan_free(&T);
}

static void test_regular_members_and_end(void **state)
{
    blk_t b;
    start(1000, 10);
    hdr(b, "ad/", '5', 0, NULL, 0);
    assert_int_equal(feed(b), 0);
    hdr(b, "ad/w.bin", '0', 600, NULL, 0);
    assert_int_equal(feed(b), 0);
    assert_true(brix_tarscan_pending(&T));
    memset(b, 'x', 512); /* data that looks like nothing in particular */
    assert_int_equal(feed(b), 0);
    assert_int_equal(feed(b), 0); /* 88 bytes + padding */
    assert_false(brix_tarscan_pending(&T));
    hdr(b, "ad/old", '\0', 400, NULL, 0); /* old tar's regular file: exactly at the limit */
    assert_int_equal(feed(b), 0);
    assert_int_equal(feed(b), 0); /* its data: a block that would not pass as a header */
    hdr(b, "ad/l", '2', 0, "w.bin", 0);
    assert_int_equal(feed(b), 0);
    assert_int_equal(T.files, 4);
    assert_int_equal(T.bytes, 1000);
    assert_false(T.done);
    assert_int_equal(feed_zero(), 0);
    assert_false(T.done); /* one zero block is not the end */
    assert_int_equal(feed_zero(), 0);
    assert_true(T.done);
    assert_int_equal(T.verdict, BRIX_TARSCAN_OK);
    brix_tarscan_free(&T);
}

static void test_limits_at_the_header(void **state)
{
    blk_t b;
    start(1000, 10);
    hdr(b, "a", '0', 999, NULL, 0);
    assert_int_equal(feed(b), 0);
    for (int i = 0; i < 2; i++)
        assert_int_equal(feed(b), 0);
    hdr(b, "b", '0', 2, NULL, 0); /* 1001 in all */
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_TOO_LARGE, "unpacked size over 1000 bytes");

    /* base-256: a 1 TiB member, refused before a byte of it */
    start(1 << 20, 10);
    hdr(b, "bomb", '0', 0, NULL, 0);
    memset(b + 124, 0, 12);
    b[124] = 0x80;
    b[130] = 0x01; /* 1 << 40 */
    checksum(b);
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_TOO_LARGE, "unpacked size over 1048576 bytes");
    /* a negative base-256 size is not a size */
    start(1 << 20, 10);
    b[124] = 0xff;
    checksum(b);
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_BAD, "bad member size");

    start(1000, 3);
    for (int i = 0; i < 3; i++) {
        char n[8];
        snprintf(n, sizeof n, "f%d", i);
        hdr(b, n, '0', 0, NULL, 0);
        assert_int_equal(feed(b), 0);
    }
    hdr(b, "f3", '5', 0, NULL, 0); /* directories count too */
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_TOO_LARGE, "more than 3 files");

    /* the refusal sticks: the first cause is kept */
    start(10, 10);
    hdr(b, "big", '0', 11, NULL, 0);
    assert_int_equal(feed(b), -1);
    hdr(b, "/abs", '0', 0, NULL, 0);
    feed(b);
    refused(BRIX_TARSCAN_TOO_LARGE, "over 10 bytes");
}

static void test_hostile_headers(void **state)
{
    static const struct {
        const char *name;
        char type;
        uint64_t size;
        const char *link;
        const char *why;
    } cases[] = {
        { "/etc/cron.d/x", '0', 0, NULL, "absolute path or a '..'" },
        { "a/../../x", '0', 0, NULL, "absolute path or a '..'" },
        { "..", '5', 0, NULL, "absolute path or a '..'" },
        { "", '0', 0, NULL, "empty name" },
        { "l", '2', 0, "/etc/passwd", "outside the archive" },
        { "l", '2', 0, "a/../../etc", "outside the archive" },
        { "l", '2', 0, "", "outside the archive" },
        { "h", '1', 0, "x", "hard link" },
        { "c", '3', 0, NULL, "device file or a FIFO" },
        { "b", '4', 0, NULL, "device file or a FIFO" },
        { "p", '6', 0, NULL, "device file or a FIFO" },
        { "s", 'S', 0, NULL, "unsupported type 'S'" },
        { "d", 'D', 0, NULL, "unsupported type 'D'" },
        /* data after a directory or a symlink: tar might read it as data or not */
        { "d", '5', 512, NULL, "directory or a symlink with 512 bytes" },
        { "d/", '0', 512, NULL, "directory or a symlink with 512 bytes" },
        { "l", '2', 512, "x", "directory or a symlink with 512 bytes" },
    };
    blk_t b;
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        start(1 << 20, 100);
        hdr(b, cases[i].name, cases[i].type, cases[i].size, cases[i].link, 0);
        assert_int_equal(feed(b), -1);
        refused(BRIX_TARSCAN_UNSAFE, cases[i].why);
    }
    /* a bad checksum: not a tar stream */
    start(1 << 20, 100);
    hdr(b, "x", '0', 0, NULL, 0);
    b[0] = 'y';
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_BAD, "bad header checksum");
}

static void test_ustar_prefix(void **state)
{
    blk_t b;
    start(1 << 20, 100);
    hdr(b, "x", '0', 0, NULL, 1);
    memcpy(b + 345, "../..", 5); /* POSIX prefix: the name is ../../x */
    checksum(b);
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_UNSAFE, "'../../x'");
    /* GNU magic: those bytes are not a prefix */
    start(1 << 20, 100);
    hdr(b, "x", '0', 0, NULL, 0);
    memcpy(b + 345, "../..", 5);
    checksum(b);
    assert_int_equal(feed(b), 0);
    brix_tarscan_free(&T);
}

/* Metadata header of type t whose data is text, split over blocks. */
static int feed_meta(char type, const char *text, size_t len)
{
    blk_t b;
    hdr(b, "././@LongLink", type, len, NULL, 0);
    if (feed(b) != 0)
        return -1;
    for (size_t off = 0; off < len; off += 512) {
        memset(b, 0, 512);
        memcpy(b, text + off, len - off < 512 ? len - off : 512);
        if (feed(b) != 0)
            return -1;
    }
    return 0;
}

static void test_gnu_long_names(void **state)
{
    char name[1200];
    memset(name, 'a', sizeof name);
    memcpy(name + 600, "/../../../x", 12); /* the '..' lies in the second data block */
    blk_t b;
    start(1 << 20, 100);
    assert_int_equal(feed_meta('L', name, strlen(name) + 1), 0);
    hdr(b, "short-and-innocent", '0', 0, NULL, 0);
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_UNSAFE, "has an absolute path or a '..' component");

    /* a long name that is fine applies to one member only */
    memcpy(name + 600, "/ok", 4);
    start(1 << 20, 100);
    assert_int_equal(feed_meta('L', name, strlen(name) + 1), 0);
    hdr(b, "x", '0', 0, NULL, 0);
    assert_int_equal(feed(b), 0);
    assert_null(T.name);
    /* a long link target (K) leading out */
    assert_int_equal(feed_meta('K', "/etc/shadow", 12), 0);
    hdr(b, "l", '2', 0, "harmless", 0);
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_UNSAFE, "symlink to '/etc/shadow'");

    /* metadata itself is bounded */
    start(1 << 20, 100);
    hdr(b, "././@LongLink", 'L', 70000, NULL, 0);
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_UNSAFE, "archive metadata of 70000 bytes");
}

static void test_pax(void **state)
{
    blk_t b;
    const char rec[] = "28 path=ad/../../etc/passwd\n";
    start(1 << 20, 100);
    assert_int_equal(feed_meta('x', rec, sizeof rec - 1), 0);
    hdr(b, "ad/innocent", '0', 0, NULL, 1);
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_UNSAFE, "'ad/../../etc/passwd'");

    /* size= overrides the header's size: the limit sees the real one */
    const char big[] = "16 size=5000000\n";
    start(1 << 20, 100);
    assert_int_equal(feed_meta('x', big, sizeof big - 1), 0);
    hdr(b, "small", '0', 10, NULL, 1);
    assert_int_equal(feed(b), -1);
    refused(BRIX_TARSCAN_TOO_LARGE, "unpacked size over");
    /* and the data that follows is skipped by that size */
    const char two[] = "13 size=1000\n";
    start(1 << 20, 100);
    assert_int_equal(feed_meta('x', two, sizeof two - 1), 0);
    hdr(b, "f", '0', 0, NULL, 1);
    assert_int_equal(feed(b), 0);
    assert_int_equal(T.bytes, 1000);
    memset(b, 0, 512);
    assert_int_equal(feed(b), 0); /* zero data blocks are data here, not the end */
    assert_int_equal(feed(b), 0);
    assert_false(T.done);
    brix_tarscan_free(&T);

    /* a global header may carry a comment (git archive) but not a path */
    const char comment[] = "52 comment=0123456789012345678901234567890123456789\n";
    start(1 << 20, 100);
    assert_int_equal(feed_meta('g', comment, sizeof comment - 1), 0);
    hdr(b, "x", '0', 0, NULL, 1);
    assert_int_equal(feed(b), 0);
    const char gpath[] = "11 path=ad\n";
    assert_int_equal(feed_meta('g', gpath, sizeof gpath - 1), -1);
    refused(BRIX_TARSCAN_UNSAFE, "global pax header sets a member path");

    const char *bad[] = { "99 path=x\n", "x path=y\n", "10 pathxy\n", "11 size=1x\n" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        start(1 << 20, 100);
        int rc = feed_meta('x', bad[i], strlen(bad[i]));
        assert_int_equal(rc, -1);
        assert_int_equal(T.verdict, BRIX_TARSCAN_UNSAFE);
        brix_tarscan_free(&T);
    }
}

static void test_endless_headers_bounded(void **state)
{
    const char comment[] = "12 comment=\n";
    start(1 << 20, 2); /* at most 4 * 2 + 4 headers */
    int rc = 0, n = 0;
    while (rc == 0 && n < 100)
        rc = feed_meta('g', comment, sizeof comment - 1), n++;
    assert_int_equal(rc, -1);
    assert_int_equal(n, 13);
    refused(BRIX_TARSCAN_TOO_LARGE, "more than 12 archive headers");
}

static void test_unsafe_name(void **state)
{
    assert_true(brix_tarscan_unsafe_name("/x", 2));
    assert_true(brix_tarscan_unsafe_name("..", 2));
    assert_true(brix_tarscan_unsafe_name("a/..", 4));
    assert_true(brix_tarscan_unsafe_name("../a", 4));
    assert_false(brix_tarscan_unsafe_name("a/..b/c", 7));
    assert_false(brix_tarscan_unsafe_name("./a/.../b", 9));
    assert_false(brix_tarscan_unsafe_name("a", 1));
}

#define T_(f) cmocka_unit_test_setup_teardown(f, leak_setup, leak_teardown)

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        T_(test_regular_members_and_end), T_(test_limits_at_the_header),
        T_(test_hostile_headers),         T_(test_ustar_prefix),
        T_(test_gnu_long_names),          T_(test_pax),
        T_(test_endless_headers_bounded), T_(test_unsafe_name),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
