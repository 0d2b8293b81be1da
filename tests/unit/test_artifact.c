/*
 * Artifact fetcher: file:// (copy with checksum, in place without, directory,
 * missing), unsupported and malformed URLs, the cache (second fetch is a hit),
 * and http:// against a tiny blocking server on a thread in this process
 * (checksum, 404/500, size limit with and without Content-Length, redirects,
 * .tar.gz unpacked, archives with ../ or absolute members refused, progress
 * logged during a slow download). After each
 * failure the cache must hold no temp files.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controller/artifact.h"
#include "core/alloc.h"
#include "leak_check.h"
#include "stub_server.h"

#define PAYLOAD_LEN 5000

static struct {
    char base[64]; /* mkdtemp root of everything this test writes */
    char cache[PATH_MAX];
    stub_server_t srv;
    char payload[PAYLOAD_LEN];
    char payload_sha[65];
    int cache_seq;
} g;

/* ---- helpers ---- */

static void sha_hex(const void *p, size_t n, char out[65])
{
    unsigned char d[32];
    unsigned int dn = 0;
    EVP_Digest(p, n, d, &dn, EVP_sha256(), NULL);
    for (unsigned i = 0; i < 32; i++)
        sprintf(out + 2 * i, "%02x", d[i]);
}

static void write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}

static char *read_file(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)len + 1);
    *n = fread(b, 1, (size_t)len, f);
    b[*n] = '\0';
    fclose(f);
    return b;
}

/* Entries in dir (all, or only those starting with prefix). */
static int count_entries(const char *dir, const char *prefix)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    int n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        if (!prefix || !strncmp(de->d_name, prefix, strlen(prefix)))
            n++;
    }
    closedir(d);
    return n;
}

static void fresh_cache(void)
{
    /* nested and missing: brix_art_fetch must create it */
    snprintf(g.cache, sizeof g.cache, "%s/cache%d/nested/artifacts", g.base, ++g.cache_seq);
}

typedef struct got {
    int calls;
    brix_art_status_t status;
    char path[PATH_MAX];
    char msg[1024];
    uint64_t bytes;
    int cached;
} got_t;

static void on_done(const brix_art_result_t *r, void *ud)
{
    got_t *o = ud;
    o->calls++;
    o->status = r->status;
    snprintf(o->path, sizeof o->path, "%s", r->path ? r->path : "");
    snprintf(o->msg, sizeof o->msg, "%s", r->message ? r->message : "");
    o->bytes = r->bytes;
    o->cached = r->cached;
}

static got_t fetch(const char *url, const char *sha, uint64_t max)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    brix_art_req_t req = { .url = url,
                           .sha256 = sha,
                           .cache_dir = g.cache,
                           .max_bytes = max,
                           .timeout_ms = 20000,
                           .label = "test" };
    got_t o;
    memset(&o, 0, sizeof o);
    assert_int_equal(brix_art_fetch(&loop, &req, on_done, &o), 0);
    assert_int_equal(o.calls, 0); /* never synchronously */
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(o.calls, 1);
    assert_int_equal(uv_loop_close(&loop), 0);
    return o;
}

static got_t fetch_http(const char *path, const char *sha, uint64_t max)
{
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", g.srv.port, path);
    return fetch(url, sha, max);
}

static void assert_no_temp(void)
{
    int n = count_entries(g.cache, ".tmp-");
    assert_true(n <= 0); /* -1: cache dir never created */
}

/* ---- a blocking one-connection-at-a-time HTTP server ---- */

static void send_all(int fd, const void *p, size_t n)
{
    const char *c = p;
    while (n > 0) {
        ssize_t w = send(fd, c, n, MSG_NOSIGNAL);
        if (w <= 0)
            return; /* the client gave up (size limit): fine */
        c += w;
        n -= (size_t)w;
    }
}

static void respond(int fd, int code, const char *extra, const void *body, size_t n)
{
    char h[512];
    int hn =
        snprintf(h, sizeof h, "HTTP/1.1 %d X\r\nContent-Length: %zu\r\nConnection: close\r\n%s\r\n",
                 code, n, extra);
    send_all(fd, h, (size_t)hn);
    send_all(fd, body, n);
}

static void serve_file(int fd, const char *name)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", g.base, name);
    size_t n = 0;
    char *b = read_file(path, &n);
    if (b)
        respond(fd, 200, "", b, n);
    else
        respond(fd, 404, "", "", 0);
    free(b);
}

static void serve_one(int fd, const char *req_path)
{
    char path[256];
    snprintf(path, sizeof path, "%s", req_path);
    path[strcspn(path, "?")] = '\0';
    if (!strcmp(path, "/adapter.bin")) {
        respond(fd, 200, "", g.payload, PAYLOAD_LEN);
    } else if (!strcmp(path, "/redirect")) {
        respond(fd, 302, "Location: /adapter.bin\r\n", "", 0);
    } else if (!strcmp(path, "/boom")) {
        respond(fd, 500, "", "oops", 4);
    } else if (!strcmp(path, "/big.bin")) {
        static char big[1 << 16];
        respond(fd, 200, "", big, sizeof big);
    } else if (!strcmp(path, "/stream")) {
        /* no Content-Length: only the write callback can enforce the limit */
        const char h[] = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
        send_all(fd, h, sizeof h - 1);
        static char chunk[4096];
        for (int i = 0; i < 64; i++)
            send_all(fd, chunk, sizeof chunk);
    } else if (!strcmp(path, "/slow")) {
        /* 3 x 4 KiB over ~2.4 s: long enough for one progress line */
        static char chunk[4096];
        char h[128];
        int hn = snprintf(h, sizeof h, "HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n",
                          3 * sizeof chunk);
        send_all(fd, h, (size_t)hn);
        for (int i = 0; i < 3; i++) {
            if (i)
                usleep(1200 * 1000);
            send_all(fd, chunk, sizeof chunk);
        }
    } else if (!strncmp(path, "/files/", 7)) {
        serve_file(fd, path + 7);
    } else {
        respond(fd, 404, "", "not found", 9);
    }
}

static int sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int sh(const char *fmt, ...)
{
    char cmd[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof cmd, fmt, ap);
    va_end(ap);
    return system(cmd);
}

static int group_setup(void **state)
{
    (void)state;
    snprintf(g.base, sizeof g.base, "/tmp/brix-art-XXXXXX");
    if (!mkdtemp(g.base))
        return -1;
    for (int i = 0; i < PAYLOAD_LEN; i++)
        g.payload[i] = (char)('a' + i % 23);
    sha_hex(g.payload, PAYLOAD_LEN, g.payload_sha);

    /* archives: one top-level dir; two top-level files; ../evil; an absolute member */
    const char *b = g.base;
    if (sh("mkdir -p %s/t/myadapter %s/f %s/e/sub && "
           "printf '{\"r\": 8}' > %s/t/myadapter/adapter_config.json && "
           "printf 'weights' > %s/t/myadapter/adapter_model.bin && "
           "tar -czf %s/adapter.tar.gz -C %s/t myadapter && "
           "printf a > %s/f/a.json && printf b > %s/f/b.bin && "
           "tar -czf %s/flat.tgz -C %s/f a.json b.bin && "
           "printf x > %s/e/evil && "
           "tar -czPf %s/evil.tgz -C %s/e/sub ../evil 2>/dev/null && "
           "tar -czPf %s/abs.tgz %s/e/evil 2>/dev/null",
           b, b, b, b, b, b, b, b, b, b, b, b, b, b, b, b) != 0)
        return -1;

    return stub_server_start(&g.srv, serve_one);
}

static int group_teardown(void **state)
{
    (void)state;
    stub_server_stop(&g.srv);
    sh("rm -rf %s", g.base);
    return 0;
}

static void src_path(char *out, size_t n, const char *name)
{
    snprintf(out, n, "%s/src", g.base);
    mkdir(out, 0755);
    snprintf(out, n, "%s/src/%s", g.base, name);
}

/* ---- tests ---- */

static void test_file_copy_checksum_and_cache_hit(void **state)
{
    fresh_cache();
    char src[PATH_MAX], url[PATH_MAX + 16];
    src_path(src, sizeof src, "my adapter.safetensors");
    write_file(src, g.payload, PAYLOAD_LEN);
    snprintf(url, sizeof url, "file://%s/src/my%%20adapter.safetensors", g.base);

    got_t o = fetch(url, g.payload_sha, 0);
    assert_int_equal(o.status, BRIX_ART_OK);
    assert_string_equal(o.msg, "");
    assert_int_equal(o.cached, 0);
    assert_int_equal(o.bytes, PAYLOAD_LEN);
    assert_int_equal(o.path[0], '/');
    assert_non_null(strstr(o.path, "/nested/artifacts/"));
    assert_non_null(strstr(o.path, "-my_20adapter.safetensors")); /* sanitized basename */
    size_t n = 0;
    char *copy = read_file(o.path, &n);
    assert_non_null(copy);
    assert_int_equal(n, PAYLOAD_LEN);
    assert_memory_equal(copy, g.payload, PAYLOAD_LEN);
    free(copy);
    assert_int_equal(count_entries(g.cache, NULL), 1);

    /* the copy is what the engine reads: editing the source does not reach it */
    write_file(src, "changed", 7);
    got_t again = fetch(url, g.payload_sha, 0);
    assert_int_equal(again.status, BRIX_ART_OK);
    assert_int_equal(again.cached, 1);
    assert_int_equal(again.bytes, 0);
    assert_string_equal(again.path, o.path);
    /* uppercase checksum is the same artifact */
    char upper[65];
    for (int i = 0; i < 65; i++)
        upper[i] = (char)(g.payload_sha[i] >= 'a' ? g.payload_sha[i] - 32 : g.payload_sha[i]);
    assert_int_equal(fetch(url, upper, 0).cached, 1);
}

static void test_file_bad_checksum(void **state)
{
    fresh_cache();
    char src[PATH_MAX], url[PATH_MAX + 16];
    src_path(src, sizeof src, "bad.bin");
    write_file(src, g.payload, PAYLOAD_LEN);
    snprintf(url, sizeof url, "file://%s", src);
    char wrong[65];
    memset(wrong, '0', 64);
    wrong[64] = '\0';
    got_t o = fetch(url, wrong, 0);
    assert_int_equal(o.status, BRIX_ART_CHECKSUM);
    assert_string_equal(brix_art_status_name(o.status), "ChecksumMismatch");
    assert_non_null(strstr(o.msg, g.payload_sha));
    assert_string_equal(o.path, "");
    assert_int_equal(count_entries(g.cache, NULL), 0); /* nothing, not even a temp file */

    /* not hex at all: rejected before any I/O */
    assert_int_equal(fetch(url, "abc", 0).status, BRIX_ART_BAD_URL);
    /* over max_bytes */
    o = fetch(url, g.payload_sha, 100);
    assert_int_equal(o.status, BRIX_ART_TOO_LARGE);
    assert_int_equal(count_entries(g.cache, NULL), 0);
}

static void test_file_in_place_without_checksum(void **state)
{
    fresh_cache();
    char src[PATH_MAX], url[PATH_MAX + 16], real[PATH_MAX];
    src_path(src, sizeof src, "plain.bin");
    write_file(src, "w", 1);
    snprintf(url, sizeof url, "file://%s", src);
    got_t o = fetch(url, NULL, 0);
    assert_int_equal(o.status, BRIX_ART_OK);
    assert_non_null(realpath(src, real));
    assert_string_equal(o.path, real);
    assert_int_equal(o.bytes, 0);
    assert_int_equal(count_entries(g.cache, NULL), -1); /* no cache needed, none made */
}

static void test_directory(void **state)
{
    fresh_cache();
    char dir[PATH_MAX], url[PATH_MAX + 16], real[PATH_MAX];
    snprintf(dir, sizeof dir, "%s/t/myadapter", g.base);
    snprintf(url, sizeof url, "file://%s/t/../t/myadapter/", g.base);
    got_t o = fetch(url, NULL, 0);
    assert_int_equal(o.status, BRIX_ART_OK);
    assert_non_null(realpath(dir, real));
    assert_string_equal(o.path, real);
    assert_int_equal(o.cached, 0);

    /* a checksum cannot apply to a directory */
    o = fetch(url, g.payload_sha, 0);
    assert_int_equal(o.status, BRIX_ART_BAD_URL);
    assert_non_null(strstr(o.msg, "is a directory"));
}

static void test_missing_and_relative(void **state)
{
    fresh_cache();
    got_t o = fetch("file:///nonexistent-brix/x", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_NOT_FOUND);
    assert_string_equal(o.msg, "file:///nonexistent-brix/x: no such file or directory");
    assert_string_equal(brix_art_status_name(o.status), "NotFound");
    assert_int_equal(fetch("file:///nonexistent-brix/x", g.payload_sha, 0).status,
                     BRIX_ART_NOT_FOUND);
    assert_int_equal(fetch("file://relative/path", NULL, 0).status, BRIX_ART_BAD_URL);
}

static void test_unsupported_and_garbage(void **state)
{
    fresh_cache();
    got_t o = fetch("huggingface://org/lora-sql", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_UNSUPPORTED);
    assert_string_equal(o.msg, "artifactURL scheme 'huggingface://' is not supported yet by the "
                               "local provider (supported: file://, http://, https://)");
    assert_string_equal(brix_art_status_name(o.status), "UnsupportedScheme");
    assert_int_equal(fetch("s3://bucket/key", NULL, 0).status, BRIX_ART_UNSUPPORTED);
    assert_int_equal(fetch("gcs://bucket/key", NULL, 0).status, BRIX_ART_UNSUPPORTED);
    const char *bad[] = { "",        "not a url", "://x",           "/abs/path",
                          "http://", "1http://x", "http:// host/x", "http:///path" };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        o = fetch(bad[i], NULL, 0);
        assert_int_equal(o.status, BRIX_ART_BAD_URL);
        assert_string_equal(brix_art_status_name(o.status), "InvalidURL");
    }
    assert_int_equal(count_entries(g.cache, NULL), -1);
}

static void test_http_download_and_cache(void **state)
{
    fresh_cache();
    got_t o = fetch_http("/adapter.bin", g.payload_sha, 0);
    assert_int_equal(o.status, BRIX_ART_OK);
    assert_string_equal(brix_art_status_name(o.status), "Fetched");
    assert_int_equal(o.bytes, PAYLOAD_LEN);
    assert_int_equal(o.cached, 0);
    size_t n = 0;
    char *b = read_file(o.path, &n);
    assert_non_null(b);
    assert_int_equal(n, PAYLOAD_LEN);
    assert_memory_equal(b, g.payload, PAYLOAD_LEN);
    free(b);
    got_t again = fetch_http("/adapter.bin", g.payload_sha, 0);
    assert_int_equal(again.cached, 1);
    assert_int_equal(again.bytes, 0);
    assert_string_equal(again.path, o.path);

    /* redirects are followed; without a checksum it is a different cache entry */
    o = fetch_http("/redirect?token=secret", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_OK);
    assert_int_equal(o.bytes, PAYLOAD_LEN);
    assert_int_equal(count_entries(g.cache, NULL), 2);
    assert_no_temp();
}

static void test_http_errors(void **state)
{
    fresh_cache();
    got_t o = fetch_http("/missing", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_NOT_FOUND);
    assert_non_null(strstr(o.msg, "HTTP 404 from http://127.0.0.1:"));

    o = fetch_http("/boom?sig=secret", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_IO);
    assert_string_equal(brix_art_status_name(o.status), "FetchFailed");
    char want[128];
    snprintf(want, sizeof want, "HTTP 500 from http://127.0.0.1:%d/boom", g.srv.port);
    assert_string_equal(o.msg, want); /* the query (a presigned token?) is not shown */

    char wrong[65];
    memset(wrong, 'f', 64);
    wrong[64] = '\0';
    o = fetch_http("/adapter.bin", wrong, 0);
    assert_int_equal(o.status, BRIX_ART_CHECKSUM);

    /* nothing listens on port 1 */
    o = fetch("http://127.0.0.1:1/x", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_IO);
    assert_int_equal(count_entries(g.cache, NULL), 0);
}

static void test_http_size_limit(void **state)
{
    fresh_cache();
    got_t o = fetch_http("/big.bin", NULL, 16384); /* Content-Length over the limit */
    assert_int_equal(o.status, BRIX_ART_TOO_LARGE);
    assert_string_equal(brix_art_status_name(o.status), "TooLarge");
    o = fetch_http("/stream", NULL, 16384); /* no Content-Length */
    assert_int_equal(o.status, BRIX_ART_TOO_LARGE);
    assert_non_null(strstr(o.msg, "16384"));
    assert_int_equal(count_entries(g.cache, NULL), 0);
    /* exactly at the limit is fine */
    o = fetch_http("/adapter.bin", NULL, PAYLOAD_LEN);
    assert_int_equal(o.status, BRIX_ART_OK);
}

static void test_http_tarball(void **state)
{
    fresh_cache();
    char sha[65], path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/adapter.tar.gz", g.base);
    size_t n = 0;
    char *tgz = read_file(path, &n);
    assert_non_null(tgz);
    sha_hex(tgz, n, sha);
    free(tgz);

    got_t o = fetch_http("/files/adapter.tar.gz", sha, 0);
    assert_int_equal(o.status, BRIX_ART_OK);
    assert_int_equal(o.bytes, n);
    /* one top-level directory: the result is that directory, named after the URL */
    size_t len = strlen(o.path);
    assert_true(len > 8 && !strcmp(o.path + len - 8, "-adapter"));
    snprintf(path, sizeof path, "%s/adapter_config.json", o.path);
    char *cfg = read_file(path, &n);
    assert_non_null(cfg);
    assert_string_equal(cfg, "{\"r\": 8}");
    free(cfg);
    assert_int_equal(count_entries(g.cache, NULL), 1); /* the .tar.gz itself is not kept */
    assert_int_equal(fetch_http("/files/adapter.tar.gz", sha, 0).cached, 1);

    /* several top-level entries: the result is the unpacked directory itself */
    o = fetch_http("/files/flat.tgz", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_OK);
    assert_int_equal(count_entries(o.path, NULL), 2);
    snprintf(path, sizeof path, "%s/b.bin", o.path);
    cfg = read_file(path, &n);
    assert_non_null(cfg);
    assert_string_equal(cfg, "b");
    free(cfg);

    /* not an archive */
    o = fetch_http("/adapter.bin?x=.tgz", NULL, 0); /* the query does not make it one */
    assert_int_equal(o.status, BRIX_ART_OK);
    o = fetch_http("/boom.tgz", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_NOT_FOUND);
    assert_no_temp();
}

static void test_http_tarball_escape_rejected(void **state)
{
    fresh_cache();
    got_t o = fetch_http("/files/evil.tgz", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_IO);
    assert_non_null(strstr(o.msg, "'../evil'"));
    o = fetch_http("/files/abs.tgz", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_IO);
    assert_non_null(strstr(o.msg, "absolute path"));
    assert_int_equal(count_entries(g.cache, NULL), 0); /* no temp dir, no ../evil */
}

static void test_http_progress_logged(void **state)
{
    fresh_cache();
    char logpath[PATH_MAX];
    snprintf(logpath, sizeof logpath, "%s/progress.log", g.base);
    fflush(stderr);
    int saved = dup(2);
    FILE *log = fopen(logpath, "w");
    assert_non_null(log);
    dup2(fileno(log), 2);
    got_t o = fetch_http("/slow", NULL, 0);
    dup2(saved, 2);
    close(saved);
    fclose(log);
    assert_int_equal(o.status, BRIX_ART_OK);
    assert_int_equal(o.bytes, 3 * 4096);
    size_t n = 0;
    char *text = read_file(logpath, &n);
    assert_non_null(text);
    assert_non_null(strstr(text, "artifact test: 0.0 MiB of 0.0 MiB ("));
    assert_non_null(strstr(text, "%)"));
    free(text);
}

static void test_api_misuse(void **state)
{
    uv_loop_t loop;
    uv_loop_init(&loop);
    brix_art_req_t req = { .url = "file:///x", .cache_dir = NULL };
    got_t o;
    assert_int_equal(brix_art_fetch(&loop, &req, on_done, &o), -EINVAL);
    req.cache_dir = "/tmp";
    assert_int_equal(brix_art_fetch(&loop, &req, NULL, &o), -EINVAL);
    assert_int_equal(brix_art_fetch(&loop, NULL, on_done, &o), -EINVAL);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_string_equal(brix_art_status_name((brix_art_status_t)99), "Unknown");
}

#define T(f) cmocka_unit_test_setup_teardown(f, leak_setup, leak_teardown)

int main(void)
{
    brix_alloc_init();
    const struct CMUnitTest tests[] = {
        T(test_file_copy_checksum_and_cache_hit),
        T(test_file_bad_checksum),
        T(test_file_in_place_without_checksum),
        T(test_directory),
        T(test_missing_and_relative),
        T(test_unsupported_and_garbage),
        T(test_http_download_and_cache),
        T(test_http_errors),
        T(test_http_size_limit),
        T(test_http_tarball),
        T(test_http_tarball_escape_rejected),
        T(test_http_progress_logged),
        T(test_api_misuse),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
