/*
 * Artifact fetcher: file:// (copy with checksum, in place without, directory,
 * missing), unsupported and malformed URLs, the cache (second fetch is a hit),
 * and http:// against a tiny blocking server on a thread in this process
 * (checksum, 404/500, size limit with and without Content-Length, redirects,
 * .tar.gz unpacked, archives with ../ or absolute members refused, progress
 * logged during a slow download). After each
 * failure the cache must hold no temp files.
 *
 * Hardening (issue 11): a gzip bomb and an archive with too many files fail
 * with TooLarge and leave the cache as it was; links out of the archive, hard
 * links, devices, GNU long names and pax paths with '..' are refused (the
 * archives are built here with python3's tarfile, none is committed); file://
 * reads only under the allowed roots (/etc/shadow, /etc/passwd, '..' and
 * symlink escapes refused, with no hash of the file in the message); the LRU
 * cleanup evicts an unreferenced entry and keeps a referenced one.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
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
#include <time.h>
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
    const char *roots[4]; /* file:// roots given to every fetch (default: base) */
    size_t nroots;
    uint64_t max_unpacked, max_files; /* 0: the module's defaults */
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
    g.roots[0] = g.base;
    g.nroots = 1;
    g.max_unpacked = g.max_files = 0;
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
                           .label = "test",
                           .roots = g.roots,
                           .nroots = g.nroots,
                           .max_unpacked = g.max_unpacked,
                           .max_files = g.max_files };
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
    /* a gzip bomb: 32 MiB of zeros (a sparse file: nothing on disk) in ~32 KiB;
     * and an archive of 20 small files */
    if (sh("mkdir -p %s/bz %s/many && truncate -s 32M %s/bz/zeros && "
           "tar -czf %s/bomb.tgz -C %s/bz zeros && rm -f %s/bz/zeros && "
           "for i in $(seq 1 20); do printf $i > %s/many/f$i; done && "
           "tar -czf %s/many.tgz -C %s many",
           b, b, b, b, b, b, b, b, b) != 0)
        return -1;
    /* hostile and unusual members, written with python3's tarfile */
    char py[PATH_MAX];
    snprintf(py, sizeof py, "%s/mk.py", b);
    FILE *f = fopen(py, "w");
    if (!f)
        return -1;
    fputs(
        "import io, sys, tarfile\n"
        "d = sys.argv[1]\n"
        "def mk(name, members, fmt=tarfile.GNU_FORMAT):\n"
        "    with tarfile.open(d + '/' + name, 'w:gz', format=fmt) as t:\n"
        "        for m, data in members:\n"
        "            t.addfile(m, io.BytesIO(data) if data is not None else None)\n"
        "def ti(name, type=tarfile.REGTYPE, size=0, link=''):\n"
        "    m = tarfile.TarInfo(name); m.type = type; m.size = size; m.linkname = link\n"
        "    return m\n"
        "ok = (ti('ad/ok', size=2), b'ok')\n"
        "mk('sym_out.tgz', [ok, (ti('ad/l', tarfile.SYMTYPE, link='/etc/passwd'), None)])\n"
        "mk('sym_up.tgz', [ok, (ti('ad/l', tarfile.SYMTYPE, link='../../x'), None)])\n"
        "mk('hard.tgz', [ok, (ti('ad/h', tarfile.LNKTYPE, link='/etc/passwd'), None)])\n"
        "mk('dev.tgz', [ok, (ti('ad/null', tarfile.CHRTYPE), None)])\n"
        "mk('fifo.tgz', [ok, (ti('ad/p', tarfile.FIFOTYPE), None)])\n"
        "mk('long_up.tgz', [ok, (ti('ad/' + 'a' * 120 + '/../../../x', size=1), b'x')])\n"
        "mk('pax_up.tgz', [ok, (ti('ad/' + 'b' * 150 + '/../../../x', size=1), b'x')],\n"
        "   tarfile.PAX_FORMAT)\n"
        "long = 'ad/' + 'c' * 150 + '/w.bin'\n"
        "for fmt, n in ((tarfile.PAX_FORMAT, 'good_pax.tgz'), (tarfile.GNU_FORMAT,\n"
        "               'good_gnu.tgz')):\n"
        "    mk(n, [(ti('ad', tarfile.DIRTYPE), None), (ti(long, size=5), b'hello'),\n"
        "           (ti('ad/lnk', tarfile.SYMTYPE, link='c' * 150 + '/w.bin'), None), ok], fmt)\n",
        f);
    fclose(f);
    if (sh("python3 %s %s", py, b) != 0)
        return -1;

    return stub_server_start(&g.srv, serve_one);
}

static int group_teardown(void **state)
{
    (void)state;
    stub_server_stop(&g.srv);
    sh("chmod -R u+w %s; rm -rf %s", g.base, g.base);
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
    /* a prefix of the real hash, never all of it */
    assert_null(strstr(o.msg, g.payload_sha));
    char prefix[13];
    memcpy(prefix, g.payload_sha, 12);
    prefix[12] = '\0';
    assert_non_null(strstr(o.msg, prefix));
    assert_null(strstr(o.msg, g.payload_sha + 12));
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
    g.roots[1] = "/nonexistent-brix";
    g.nroots = 2;
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
    assert_int_equal(o.status, BRIX_ART_UNSAFE);
    assert_string_equal(brix_art_status_name(o.status), "UnsafeArchive");
    assert_non_null(strstr(o.msg, "'../evil'"));
    o = fetch_http("/files/abs.tgz", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_UNSAFE);
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

/* Names in dir, sorted and joined: what "the disk as it was" compares. */
static void listing(const char *dir, char *out, size_t n)
{
    char cmd[PATH_MAX + 64];
    snprintf(cmd, sizeof cmd, "ls -A %s 2>/dev/null | sort", dir);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t k = fread(out, 1, n - 1, p);
    out[k] = '\0';
    pclose(p);
}

static void test_tarball_bomb_and_file_count(void **state)
{
    fresh_cache();
    got_t o = fetch_http("/files/adapter.tar.gz", NULL, 0); /* something already cached */
    assert_int_equal(o.status, BRIX_ART_OK);
    char before[4096], after[4096];
    listing(g.cache, before, sizeof before);

    g.max_unpacked = 1 << 20;
    o = fetch_http("/files/bomb.tgz", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_TOO_LARGE);
    assert_string_equal(brix_art_status_name(o.status), "TooLarge");
    assert_non_null(strstr(o.msg, "unpacked size over 1048576 bytes"));
    assert_string_equal(o.path, "");
    listing(g.cache, after, sizeof after);
    assert_string_equal(after, before); /* no temp dir, no partial file */

    /* under the limit the same archive unpacks: the limit is what refused it */
    g.max_unpacked = 64u << 20;
    o = fetch_http("/files/bomb.tgz", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_OK);
    struct stat st;
    char zeros[PATH_MAX + 8];
    snprintf(zeros, sizeof zeros, "%s/zeros", o.path);
    assert_int_equal(stat(zeros, &st), 0);
    assert_int_equal(st.st_size, 32 << 20);
    char rm[PATH_MAX + 16];
    snprintf(rm, sizeof rm, "rm -rf %s", o.path);
    assert_int_equal(system(rm), 0);

    /* 20 files + their directory against a limit of 10 */
    g.max_unpacked = 0;
    g.max_files = 10;
    o = fetch_http("/files/many.tgz", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_TOO_LARGE);
    assert_non_null(strstr(o.msg, "more than 10 files"));
    listing(g.cache, after, sizeof after);
    assert_string_equal(after, before);
    g.max_files = 21;
    o = fetch_http("/files/many.tgz", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_OK);
    assert_int_equal(count_entries(o.path, NULL), 20);
    assert_no_temp();
}

static void test_tarball_hostile_members(void **state)
{
    fresh_cache();
    static const struct {
        const char *file, *want;
    } cases[] = {
        { "sym_out.tgz", "is a symlink to '/etc/passwd', outside the archive" },
        { "sym_up.tgz", "is a symlink to '../../x', outside the archive" },
        { "hard.tgz", "'ad/h' is a hard link" },
        { "dev.tgz", "'ad/null' is a device file or a FIFO" },
        { "fifo.tgz", "'ad/p' is a device file or a FIFO" },
        { "long_up.tgz", "/../../../x' has an absolute path or a '..' component" },
        { "pax_up.tgz", "/../../../x' has an absolute path or a '..' component" },
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char path[128];
        snprintf(path, sizeof path, "/files/%s", cases[i].file);
        got_t o = fetch_http(path, NULL, 0);
        if (o.status != BRIX_ART_UNSAFE || !strstr(o.msg, cases[i].want))
            fail_msg("%s: status %d, message '%s'", cases[i].file, o.status, o.msg);
        assert_int_equal(count_entries(g.cache, NULL), 0);
    }
    /* long names (GNU L and pax path) and an inward symlink are fine */
    const char *good[] = { "/files/good_pax.tgz", "/files/good_gnu.tgz" };
    for (size_t i = 0; i < 2; i++) {
        got_t o = fetch_http(good[i], NULL, 0);
        if (o.status != BRIX_ART_OK)
            fail_msg("%s: %s", good[i], o.msg);
        char p[PATH_MAX + 32];
        size_t n = 0;
        snprintf(p, sizeof p, "%s/lnk", o.path);
        char *b = read_file(p, &n);
        assert_non_null(b);
        assert_string_equal(b, "hello");
        free(b);
    }
}

static void sha_of_file(const char *path, char out[65])
{
    size_t n = 0;
    char *b = read_file(path, &n);
    assert_non_null(b);
    sha_hex(b, n, out);
    free(b);
}

/* A refused file:// fetch: the reason, the roots named, nothing about the file. */
static void assert_refused(const char *url, const char *sha, const char *file_sha)
{
    got_t o = fetch(url, sha, 0);
    if (o.status != BRIX_ART_NOT_ALLOWED)
        fail_msg("%s: status %d (%s)", url, o.status, o.msg);
    assert_string_equal(brix_art_status_name(o.status), "ArtifactNotAllowed");
    assert_non_null(strstr(o.msg, g.base)); /* names the allowed root */
    assert_non_null(strstr(o.msg, "--artifact-root"));
    assert_null(strstr(o.msg, "no such file"));
    if (file_sha) {
        char prefix[9];
        memcpy(prefix, file_sha, 8);
        prefix[8] = '\0';
        assert_null(strstr(o.msg, prefix));
    }
    assert_string_equal(o.path, "");
}

static void test_file_roots(void **state)
{
    fresh_cache();
    char wrong[65], passwd_sha[65], url[PATH_MAX + 64], dir[PATH_MAX];
    memset(wrong, '0', 64);
    wrong[64] = '\0';
    sha_of_file("/etc/passwd", passwd_sha);
    assert_refused("file:///etc/shadow", NULL, NULL);
    assert_refused("file:///etc/shadow", wrong, NULL);
    assert_refused("file:///etc/passwd", NULL, NULL);
    assert_refused("file:///etc/passwd", wrong, passwd_sha);  /* readable, still no hash */
    assert_refused("file:///nonexistent-brix/x", NULL, NULL); /* no existence oracle */
    snprintf(url, sizeof url, "file://%s/src/../../../../../../etc/passwd", g.base);
    assert_refused(url, wrong, passwd_sha);
    snprintf(url, sizeof url, "file://%s/%%2e%%2e/%%2e%%2e/etc/passwd", g.base);
    assert_refused(url, wrong, passwd_sha);

    /* a symlink inside the root leading out, to a file and from a directory */
    snprintf(dir, sizeof dir, "%s/links", g.base);
    assert_int_equal(sh("mkdir -p %s/ad && ln -sf /etc/passwd %s/pw && ln -sf /etc %s/etc && "
                        "ln -sf /etc/passwd %s/ad/weights && printf '{}' > %s/ad/a.json",
                        dir, dir, dir, dir, dir),
                     0);
    snprintf(url, sizeof url, "file://%s/pw", dir);
    assert_refused(url, NULL, NULL);
    assert_refused(url, wrong, passwd_sha);
    snprintf(url, sizeof url, "file://%s/etc/passwd", dir);
    assert_refused(url, wrong, passwd_sha);
    snprintf(url, sizeof url, "file://%s/ad", dir);
    assert_refused(url, NULL, NULL);
    assert_int_equal(count_entries(g.cache, NULL), -1); /* nothing was copied */

    /* no roots at all: every file:// refused */
    g.nroots = 0;
    got_t o = fetch("file:///etc/passwd", NULL, 0);
    assert_int_equal(o.status, BRIX_ART_NOT_ALLOWED);
    assert_non_null(strstr(o.msg, "(none)"));

    /* a root given through a symlink allows what is under its target */
    char link_root[PATH_MAX], src[PATH_MAX];
    snprintf(link_root, sizeof link_root, "%s/rootlink", g.base);
    snprintf(src, sizeof src, "%s/t", g.base);
    assert_int_equal(symlink(src, link_root), 0);
    g.roots[0] = link_root;
    g.nroots = 1;
    snprintf(url, sizeof url, "file://%s/myadapter", link_root);
    o = fetch(url, NULL, 0);
    assert_int_equal(o.status, BRIX_ART_OK);
    snprintf(url, sizeof url, "file://%s/t/myadapter/adapter_config.json", g.base);
    o = fetch(url, NULL, 0); /* the real path of the same file, also under the target */
    assert_int_equal(o.status, BRIX_ART_OK);
    snprintf(url, sizeof url, "file://%s/src/plain.bin", g.base); /* not under it */
    assert_int_equal(fetch(url, NULL, 0).status, BRIX_ART_NOT_ALLOWED);
    unlink(link_root);
}

static void set_age(const char *path, int seconds_ago)
{
    struct timespec ts[2];
    clock_gettime(CLOCK_REALTIME, &ts[0]);
    ts[0].tv_sec -= seconds_ago;
    ts[1] = ts[0];
    assert_int_equal(utimensat(AT_FDCWD, path, ts, AT_SYMLINK_NOFOLLOW), 0);
}

static int exists(const char *p)
{
    struct stat st;
    return lstat(p, &st) == 0;
}

static void gc_done(const brix_art_gc_result_t *r, void *ud)
{
    *(brix_art_gc_result_t *)ud = *r;
}

static void test_cache_lru_cleanup(void **state)
{
    fresh_cache();
    got_t a = fetch_http("/adapter.bin", g.payload_sha, 0); /* 5000 bytes, referenced */
    got_t b = fetch_http("/redirect", NULL, 0);             /* 5000 bytes */
    got_t c = fetch_http("/files/flat.tgz", NULL, 0);       /* a directory of 2 bytes */
    assert_int_equal(a.status | b.status | c.status, BRIX_ART_OK);
    char name[256];
    assert_int_equal(brix_art_cache_name("http://x/y/adapter.tgz", NULL, name, sizeof name), 0);
    assert_non_null(strstr(name, "-adapter"));
    assert_int_equal(brix_art_cache_name("http://x/y/adapter.tgz", NULL, name, 10), -ENOSPC);
    char url[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/adapter.bin", g.srv.port);
    assert_int_equal(brix_art_cache_name(url, g.payload_sha, name, sizeof name), 0);
    assert_string_equal(strrchr(a.path, '/') + 1, name); /* how the controller names its keep set */
    set_age(a.path, 300);                                /* a is the oldest, then b, then c */
    set_age(b.path, 200);
    set_age(c.path, 100);
    /* a crash leftover of another process, and a fetch of ours in flight */
    char junk[PATH_MAX + 64], ours[PATH_MAX + 64];
    snprintf(junk, sizeof junk, "%s/.tmp-0123456789abcdef-999999999-3", g.cache);
    snprintf(ours, sizeof ours, "%s/.tmp-0123456789abcdef-%ld-7", g.cache, (long)getpid());
    write_file(junk, "junk", 4);
    write_file(ours, "busy", 4);

    const char *keep[] = { "unrelated", a.path };
    brix_art_gc_req_t req = { .cache_dir = g.cache, .max_bytes = 6000, .keep = keep, .nkeep = 2 };
    brix_art_gc_result_t r;
    brix_art_gc_run(&req, &r);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.evicted, 1);
    assert_int_equal(r.evicted_bytes, 5000);
    assert_int_equal(r.bytes, 5002);
    assert_int_equal(r.temps_removed, 1);
    assert_true(exists(a.path)); /* the oldest, but referenced */
    assert_false(exists(b.path));
    assert_true(exists(c.path));
    assert_false(exists(junk));
    assert_true(exists(ours));
    unlink(ours);

    /* a cache hit marks a use: c is fetched again and survives a limit of 0,
     * while a, no longer referenced, goes (through the thread-pool API) */
    assert_int_equal(fetch_http("/files/flat.tgz", NULL, 0).cached, 1);
    req.nkeep = 1;
    req.max_bytes = 0;
    uv_loop_t loop;
    uv_loop_init(&loop);
    memset(&r, 0xff, sizeof r);
    assert_int_equal(brix_art_gc(&loop, &req, gc_done, &r), 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&loop), 0);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.evicted, 1);
    assert_false(exists(a.path));
    assert_true(exists(c.path));
    assert_int_equal(r.bytes, 2);
    assert_int_equal(count_entries(g.cache, NULL), 1);

    /* an empty cache directory, and a missing one, are empty caches */
    char empty[PATH_MAX + 16];
    snprintf(empty, sizeof empty, "%s/empty-cache", g.base);
    assert_int_equal(mkdir(empty, 0755), 0);
    req.cache_dir = empty;
    brix_art_gc_run(&req, &r);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.bytes, 0);
    req.cache_dir = "/nonexistent-brix/cache";
    brix_art_gc_run(&req, &r);
    assert_int_equal(r.err, 0);
    assert_int_equal(r.bytes, 0);
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
        T(test_tarball_bomb_and_file_count),
        T(test_tarball_hostile_members),
        T(test_file_roots),
        T(test_cache_lru_cleanup),
        T(test_api_misuse),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
