/*
 * artifact — fetches file:// and http(s):// LoRA artifacts into a local cache.
 *
 * One fetch is one uv_queue_work job: the work function does every blocking step
 * (stat/copy, a libcurl easy transfer, `gzip`/`tar` child processes) on libuv's
 * thread pool and fills the job's result; the after-work callback hands it to the
 * caller on the loop thread and frees the job. Jobs share a temp-name counter and
 * the cache lock (below). Everything is written under cache_dir/.tmp-<key>-<pid>-<n>
 * and appears under its final name cache_dir/<key>-<basename> only by rename(2),
 * after the size, checksum and archive checks, so a name without the .tmp- prefix
 * is always complete. An archive is never listed or unpacked whole before it is
 * judged: its tar stream is checked header by header on its way to `tar -x`.
 */
#include "controller/artifact.h"
#include "controller/tarscan.h"

#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "core/time.h"

extern char **environ;

#define ART_DEFAULT_MAX      (10ull << 30)
#define ART_DEFAULT_TIMEOUT  (10ull * 60 * 1000)
#define ART_CONNECT_MS       30000L
#define ART_PROGRESS_MS      2000
#define ART_DEFAULT_UNPACKED (20ull << 30)
#define ART_DEFAULT_FILES    10000

typedef struct art_job {
    uv_work_t work; /* first: the job is the uv_work_t */
    char *url, *sha, *cache_dir, *label;
    char *shown; /* url without userinfo/query, for messages and logs */
    uint64_t max_bytes, timeout_ms, max_unpacked, max_files;
    char **roots, **real_roots; /* file:// allowed roots as given, and realpath'd (or NULL) */
    size_t nroots;
    brix_art_done_fn done;
    void *ud;
    /* filled by the work function */
    char key[17];
    char *final; /* cache_dir(realpath)/<key>-<base> */
    brix_art_status_t status;
    char *path, *message;
    uint64_t bytes;
    int cached;
} art_job_t;

/* A process-wide counter is the one piece of shared state: two jobs of the same
 * URL in one process must not pick the same temp name. */
static atomic_uint g_tmp_seq;
static pthread_once_t g_curl_once = PTHREAD_ONCE_INIT;
/* Held around "does the entry exist / rename it into place" and the mtime touch
 * that marks a use, and by the cleanup around renaming an entry away: a fetch
 * never returns a path the cleanup is deleting, and a cleanup never deletes an
 * entry used after it started. Never held across I/O longer than a rename. */
static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;

static void curl_init_once(void)
{
    curl_global_init(CURL_GLOBAL_DEFAULT); /* refcounted; curl_uv.c may also call it */
}

__attribute__((format(printf, 3, 4))) static brix_art_status_t
fail(art_job_t *j, brix_art_status_t st, const char *fmt, ...)
{
    if (j->status != BRIX_ART_OK)
        return j->status; /* keep the first (root) cause */
    brix_buf_t b = BRIX_BUF_INIT;
    va_list ap;
    va_start(ap, fmt);
    brix_buf_vprintf(&b, fmt, ap);
    va_end(ap);
    j->status = st;
    j->message = b.data; /* NULL on ENOMEM: the callback then shows the status name */
    return st;
}

static void to_hex(const unsigned char *in, size_t n, char *out)
{
    for (size_t i = 0; i < n; i++)
        snprintf(out + 2 * i, 3, "%02x", in[i]);
}

/* mkdir -p; dir is modified while it runs and restored. */
static int mkdir_p(char *dir)
{
    for (char *s = dir + 1;; s++) {
        if (*s != '/' && *s != '\0')
            continue;
        char c = *s;
        *s = '\0';
        int rc = mkdir(dir, 0755) != 0 && errno != EEXIST ? -errno : 0;
        *s = c;
        if (rc || !c)
            return rc;
    }
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    remove(p);
    return 0;
}

/* Drops userinfo, query and fragment: presigned URLs carry secrets there. */
static char *shown_url(const char *url)
{
    const char *sep = strstr(url, "://");
    const char *host = sep ? sep + 3 : url;
    size_t hlen = strcspn(host, "/?#");
    const char *at = memchr(host, '@', hlen);
    brix_buf_t b = BRIX_BUF_INIT;
    if (brix_buf_append(&b, url, (size_t)(host - url)) != 0 ||
        brix_buf_append(&b, at ? at + 1 : host, strcspn(at ? at + 1 : host, "?#")) != 0) {
        brix_buf_free(&b);
        return NULL;
    }
    return b.data ? b.data : brix_strdup("");
}

static int has_suffix(const char *s, size_t n, const char *suf)
{
    size_t k = strlen(suf);
    return n >= k && strncasecmp(s + n - k, suf, k) == 0;
}

/* Length of the URL's path (after "scheme://host") up to a query or fragment. */
static const char *url_path(const char *url, size_t *len)
{
    const char *host = strstr(url, "://") + 3;
    const char *p = host + strcspn(host, "/?#");
    *len = strcspn(p, "?#");
    return p;
}

/* Only http(s) archives are unpacked (a file:// one is copied or used as it is). */
static int url_is_archive(const char *url)
{
    if (strncasecmp(url, "http", 4) != 0)
        return 0;
    size_t n;
    const char *p = url_path(url, &n);
    return has_suffix(p, n, ".tar.gz") || has_suffix(p, n, ".tgz");
}

static int is_archive(const art_job_t *j)
{
    return url_is_archive(j->url);
}

/* "<key>-<basename>": the key is 8 bytes of SHA-256(url "\n" sha) in hex; sha
 * is lowercase already. Appends to b; 0 or -ENOMEM. */
static int cache_name(brix_buf_t *b, const char *url, const char *sha)
{
    brix_buf_t f = BRIX_BUF_INIT;
    unsigned char d[EVP_MAX_MD_SIZE];
    char key[17];
    int ok = brix_buf_printf(&f, "%s\n%s", url, sha ? sha : "") == 0 &&
             EVP_Digest(f.data, f.len, d, NULL, EVP_sha256(), NULL);
    brix_buf_free(&f);
    if (!ok)
        return -ENOMEM;
    to_hex(d, 8, key);
    size_t n; /* the basename of the URL path; an unpacked archive drops its suffix */
    const char *p = url_path(url, &n);
    n -= !url_is_archive(url) ? 0 : has_suffix(p, n, ".tgz") ? 4 : 7;
    const char *bn = p + n;
    while (bn > p && bn[-1] != '/')
        bn--;
    char base[81] = "artifact";
    for (size_t k = 0; k < (size_t)(p + n - bn) && k < sizeof base - 1; k++) {
        base[k] = isalnum((unsigned char)bn[k]) || strchr(".-_", bn[k]) ? bn[k] : '_';
        base[k + 1] = '\0';
    }
    return brix_buf_printf(b, "%s-%s", key, base) ? -ENOMEM : 0;
}

int brix_art_cache_name(const char *url, const char *sha256, char *out, size_t n)
{
    if (!url || !strstr(url, "://") || !out)
        return -EINVAL;
    char sha[65] = "";
    if (sha256 && sha256[0]) {
        snprintf(sha, sizeof sha, "%s", sha256);
        for (char *p = sha; *p; p++)
            *p = (char)tolower((unsigned char)*p);
    }
    brix_buf_t b = BRIX_BUF_INIT;
    int rc = cache_name(&b, url, sha[0] ? sha : NULL);
    if (rc == 0 && b.len >= n)
        rc = -ENOSPC;
    if (rc == 0)
        memcpy(out, b.data, b.len + 1);
    brix_buf_free(&b);
    return rc;
}

/* Marks a use of a cache entry (the cleanup evicts the least recently used). */
static void touch(const char *path)
{
    utimensat(AT_FDCWD, path, NULL, AT_SYMLINK_NOFOLLOW);
}

/* rename(2) into the cache under the cache lock, marked as just used. */
static int rename_in(const char *from, const char *to)
{
    pthread_mutex_lock(&g_cache_lock);
    int rc = rename(from, to) == 0 ? 0 : -errno;
    if (rc == 0)
        touch(to);
    pthread_mutex_unlock(&g_cache_lock);
    return rc;
}

/* Creates cache_dir, computes the key and the final name; 1 when it is cached. */
static int prepare_cache(art_job_t *j)
{
    char dir[PATH_MAX];
    int rc = mkdir_p(j->cache_dir);
    if (rc != 0 || !realpath(j->cache_dir, dir)) {
        fail(j, BRIX_ART_IO, "cache directory %s: %s", j->cache_dir, strerror(rc ? -rc : errno));
        return -1;
    }
    brix_buf_t f = BRIX_BUF_INIT;
    if (brix_buf_printf(&f, "%s/", dir) != 0 || cache_name(&f, j->url, j->sha) != 0) {
        brix_buf_free(&f);
        fail(j, BRIX_ART_IO, "out of memory");
        return -1;
    }
    j->final = f.data;
    memcpy(j->key, j->final + strlen(dir) + 1, 16);
    j->key[16] = '\0';
    struct stat st;
    pthread_mutex_lock(&g_cache_lock);
    int hit = lstat(j->final, &st) == 0;
    if (hit)
        touch(j->final);
    pthread_mutex_unlock(&g_cache_lock);
    if (hit) {
        j->path = brix_strdup(j->final);
        j->cached = 1;
        return 1;
    }
    return 0;
}

static char *tmp_name(const art_job_t *j)
{
    brix_buf_t b = BRIX_BUF_INIT;
    const char *dir_end = strrchr(j->final, '/');
    brix_buf_printf(&b, "%.*s/.tmp-%s-%ld-%u", (int)(dir_end - j->final), j->final, j->key,
                    (long)getpid(), atomic_fetch_add(&g_tmp_seq, 1));
    return b.data;
}

/* Where fetched bytes go: a temp file, hashed and counted on the way. */
typedef struct sink {
    art_job_t *j;
    FILE *f;
    EVP_MD_CTX *md;
    uint64_t n, next_log_ms; /* bytes so far; when to log progress next */
    int too_large, err;      /* err: errno of a failed write */
} sink_t;

static int sink_open(sink_t *s, art_job_t *j, const char *tmp)
{
    memset(s, 0, sizeof *s);
    s->j = j;
    s->next_log_ms = brix_now_ms() + ART_PROGRESS_MS;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0 || !(s->f = fdopen(fd, "wb"))) {
        fail(j, BRIX_ART_IO, "creating %s: %s", tmp, strerror(errno));
        if (fd >= 0)
            close(fd);
        return -1;
    }
    if (j->sha && (!(s->md = EVP_MD_CTX_new()) || !EVP_DigestInit_ex(s->md, EVP_sha256(), NULL))) {
        fail(j, BRIX_ART_IO, "SHA-256 unavailable in libcrypto");
        return -1;
    }
    return 0;
}

static int sink_write(sink_t *s, const void *p, size_t n)
{
    if (n > s->j->max_bytes - s->n) {
        s->too_large = 1;
        return -1;
    }
    if (fwrite(p, 1, n, s->f) != n) {
        s->err = errno ? errno : EIO;
        return -1;
    }
    if (s->md)
        EVP_DigestUpdate(s->md, p, n);
    s->n += n;
    return 0;
}

/* Closes the file (fsync'd, so a renamed artifact survives a crash) and checks
 * the digest; 0 when the bytes may be renamed into place. */
static int sink_finish(sink_t *s, const char *tmp)
{
    art_job_t *j = s->j;
    int ok = j->status == BRIX_ART_OK && !s->too_large && !s->err;
    if (s->f) {
        if (ok && (fflush(s->f) != 0 || fsync(fileno(s->f)) != 0))
            s->err = errno;
        if (fclose(s->f) != 0 && !s->err)
            s->err = errno;
        s->f = NULL;
    }
    if (s->too_large)
        fail(j, BRIX_ART_TOO_LARGE, "%s: larger than the limit of %llu bytes", j->shown,
             (unsigned long long)j->max_bytes);
    else if (s->err)
        fail(j, BRIX_ART_IO, "writing %s: %s", tmp, strerror(s->err));
    else if (s->md && j->status == BRIX_ART_OK) {
        unsigned char d[EVP_MAX_MD_SIZE];
        unsigned int dn = 0;
        char got[2 * EVP_MAX_MD_SIZE + 1];
        EVP_DigestFinal_ex(s->md, d, &dn);
        to_hex(d, dn, got);
        /* only a prefix: enough to tell two versions apart, and the message
         * never serves as a way to learn a file's full hash */
        if (strcmp(got, j->sha) != 0)
            fail(j, BRIX_ART_CHECKSUM, "%s: SHA-256 starts %.12s..., expected %s", j->shown, got,
                 j->sha);
    }
    EVP_MD_CTX_free(s->md);
    s->md = NULL;
    return j->status != BRIX_ART_OK ? -1 : 0;
}

/* After extraction (a second line behind the stream checks): only directories,
 * files that are not hard links, and symlinks that stay inside. */
static int check_entry(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    if (S_ISDIR(sb->st_mode) || (S_ISREG(sb->st_mode) && sb->st_nlink == 1))
        return 0;
    if (!S_ISLNK(sb->st_mode))
        return 1;
    char t[PATH_MAX];
    ssize_t n = readlink(p, t, sizeof t);
    return n < 0 || brix_tarscan_unsafe_name(t, (size_t)n);
}

static pid_t spawn_fds(char *const argv[], int in_fd, const char *in_path, int out_fd, int err_fd)
{
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    if (in_path)
        posix_spawn_file_actions_addopen(&fa, 0, in_path, O_RDONLY, 0);
    else
        posix_spawn_file_actions_adddup2(&fa, in_fd, 0);
    if (out_fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, out_fd, 1);
    else
        posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    if (err_fd >= 0)
        posix_spawn_file_actions_adddup2(&fa, err_fd, 2);
    else
        posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    return rc == 0 ? pid : -1;
}

static int reap(pid_t pid)
{
    int st = 0;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR)
            return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static int send_all_fd(int fd, const unsigned char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL); /* a socket: tar dying is EPIPE, no signal */
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

/* gzip -dc < archive | brix_tarscan_block | tar -x -C dir. Returns 0 when tar unpacked
 * a stream that passed every check; otherwise the job's status says why. */
static void stream_unpack(art_job_t *j, const char *archive, const char *dir)
{
    int gz[2] = { -1, -1 }, tx[2] = { -1, -1 }, errfd = -1;
    pid_t gzpid = -1, tarpid = -1;
    brix_tarscan_t t;
    brix_tarscan_init(&t, j->max_unpacked, j->max_files);
    unsigned char *buf = brix_malloc(65536 + 512);
    size_t blen = 0;
    int tar_gone = 0;
    if (!buf || pipe2(gz, O_CLOEXEC) != 0 ||
        socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, tx) != 0) {
        fail(j, BRIX_ART_IO, "unpacking %s: %s", j->shown, buf ? strerror(errno) : "out of memory");
        goto out;
    }
    /* tar's complaints, for the message; an unnamed file so nothing is left behind */
    const char *cdir_end = strrchr(j->final, '/');
    char cdir[PATH_MAX];
    snprintf(cdir, sizeof cdir, "%.*s", (int)(cdir_end - j->final), j->final);
    errfd = open(cdir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    char *gz_argv[] = { "gzip", "-dc", NULL };
    char *x_argv[] = {
        "tar", "--no-same-owner", "--no-same-permissions", "-xf", "-", "-C", (char *)dir, NULL
    };
    gzpid = spawn_fds(gz_argv, -1, archive, gz[1], -1);
    tarpid = spawn_fds(x_argv, tx[1], NULL, -1, errfd);
    close(gz[1]);
    close(tx[1]);
    gz[1] = tx[1] = -1;
    if (gzpid < 0 || tarpid < 0) {
        fail(j, BRIX_ART_IO, "unpacking %s: cannot run %s", j->shown, gzpid < 0 ? "gzip" : "tar");
        goto out;
    }
    ssize_t r;
    while (!t.done && j->status == BRIX_ART_OK && (r = read(gz[0], buf + blen, 65536)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            fail(j, BRIX_ART_IO, "unpacking %s: %s", j->shown, strerror(errno));
            break;
        }
        size_t have = blen + (size_t)r, off = 0, ok_end = 0;
        while (have - off >= 512 && !t.done) {
            if (brix_tarscan_block(&t, buf + off) != 0) {
                static const brix_art_status_t st[] = {
                    [BRIX_TARSCAN_BAD] = BRIX_ART_IO,
                    [BRIX_TARSCAN_TOO_LARGE] = BRIX_ART_TOO_LARGE,
                    [BRIX_TARSCAN_UNSAFE] = BRIX_ART_UNSAFE,
                    [BRIX_TARSCAN_NOMEM] = BRIX_ART_IO,
                };
                fail(j, st[t.verdict], "%s: %s", j->shown, t.why);
                break;
            }
            off += 512;
            ok_end = off;
        }
        if (ok_end && !tar_gone && send_all_fd(tx[0], buf, ok_end) != 0)
            tar_gone = 1; /* its exit status tells why */
        if (j->status != BRIX_ART_OK || t.done || tar_gone)
            break;
        blen = have - off; /* a partial block waits for the next read */
        memmove(buf, buf + off, blen);
    }
    if (j->status == BRIX_ART_OK && !t.done && !tar_gone && (blen || brix_tarscan_pending(&t)))
        fail(j, BRIX_ART_IO, "%s: not a valid .tar.gz archive (truncated)", j->shown);
out:
    /* stop gzip at once: on a refused bomb it would otherwise inflate the rest */
    if (gzpid > 0) {
        close(gz[0]);
        gz[0] = -1;
        int stop = t.done || tar_gone || j->status != BRIX_ART_OK;
        if (stop)
            kill(gzpid, SIGKILL);
        int st = reap(gzpid);
        st = stop ? 0 : st;
        if (st != 0)
            fail(j, BRIX_ART_IO, "%s: not a valid .tar.gz archive (gzip exit %d)", j->shown, st);
    }
    if (tx[0] >= 0)
        shutdown(tx[0], SHUT_WR); /* EOF for tar */
    if (tarpid > 0) {
        if (j->status != BRIX_ART_OK)
            kill(tarpid, SIGKILL);
        int st = reap(tarpid);
        if (st != 0 && j->status == BRIX_ART_OK) {
            char msg[301] = "";
            ssize_t n = errfd >= 0 ? pread(errfd, msg, sizeof msg - 1, 0) : 0;
            msg[n > 0 ? n : 0] = '\0';
            msg[strcspn(msg, "\n")] = '\0';
            fail(j, BRIX_ART_IO, "%s: unpacking failed (tar exit %d): %s", j->shown, st, msg);
        }
    }
    int fds[] = { gz[0], gz[1], tx[0], tx[1], errfd };
    for (size_t k = 0; k < sizeof fds / sizeof *fds; k++)
        if (fds[k] >= 0)
            close(fds[k]);
    brix_tarscan_free(&t);
    brix_free(buf);
}

/* Unpacks the verified archive at tmp into place as j->final. */
static void unpack(art_job_t *j, const char *tmp)
{
    char *dir = tmp_name(j), inner[PATH_MAX + 256];
    if (!dir || mkdir(dir, 0755) != 0) {
        fail(j, BRIX_ART_IO, "creating %s: %s", dir ? dir : "temp dir", strerror(errno));
        goto done;
    }
    stream_unpack(j, tmp, dir);
    if (j->status != BRIX_ART_OK)
        goto done;
    if (nftw(dir, check_entry, 16, FTW_PHYS) != 0) {
        fail(j, BRIX_ART_UNSAFE,
             "%s: archive holds a special file, a hard link or a symlink leading outside it",
             j->shown);
        goto done;
    }
    /* One top-level directory (the usual `tar -czf a.tgz adapter/`): that is the artifact. */
    DIR *d = opendir(dir);
    struct dirent *de;
    int count = 0;
    while (d && (de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") && strcmp(de->d_name, "..") && ++count == 1)
            snprintf(inner, sizeof inner, "%s/%s", dir, de->d_name);
    if (d)
        closedir(d);
    struct stat st;
    int one_dir = count == 1 && lstat(inner, &st) == 0 && S_ISDIR(st.st_mode);
    int rc = count ? rename_in(one_dir ? inner : dir, j->final) : 0;
    if (count == 0)
        fail(j, BRIX_ART_IO, "%s: the archive is empty", j->shown);
    /* EEXIST/ENOTEMPTY: a concurrent fetch of the same key got there first; its copy is as good */
    else if (rc != 0 && !((rc == -EEXIST || rc == -ENOTEMPTY) && lstat(j->final, &st) == 0))
        fail(j, BRIX_ART_IO, "renaming into %s: %s", j->final, strerror(-rc));
done:
    if (dir) /* rm -rf of what is left (all of it after a failure) */
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    brix_free(dir);
}

static size_t on_body(char *p, size_t size, size_t nmemb, void *ud)
{
    return sink_write(ud, p, size * nmemb) == 0 ? size * nmemb : 0;
}

static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    sink_t *s = ud;
    uint64_t now = brix_now_ms();
    if (now < s->next_log_ms)
        return 0;
    s->next_log_ms = now + ART_PROGRESS_MS;
    double mib = (double)dlnow / 1048576.0, of = (double)dltotal / 1048576.0;
    if (dltotal > 0)
        BRIX_INFO("artifact %s: %.1f MiB of %.1f MiB (%d%%)", s->j->label, mib, of,
                  (int)(dlnow * 100 / dltotal));
    else
        BRIX_INFO("artifact %s: %.1f MiB (size not known yet)", s->j->label, mib);
    return 0;
}

/* Fills the sink from the URL with one blocking libcurl transfer. */
static void fill_http(art_job_t *j, sink_t *s, const char *unused)
{
    CURL *c = curl_easy_init();
    if (!c) {
        fail(j, BRIX_ART_IO, "libcurl could not start a transfer");
        return;
    }
    char err[CURL_ERROR_SIZE] = "";
    uint64_t max = j->max_bytes > (uint64_t)INT64_MAX ? (uint64_t)INT64_MAX : j->max_bytes;
    long timeout = j->timeout_ms > (uint64_t)LONG_MAX ? LONG_MAX : (long)j->timeout_ms;
    curl_easy_setopt(c, CURLOPT_URL, j->url);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, err);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L); /* we are on a pool thread */
    curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
    curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https"); /* curl >= 7.85 (Debian 12) */
    curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
                     timeout < ART_CONNECT_MS ? timeout : ART_CONNECT_MS);
    /* Rejects a too-large Content-Length up front; on_body catches the rest. */
    curl_easy_setopt(c, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)max);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "brix/" BRIX_VERSION);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, s);
    curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
    curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(c, CURLOPT_XFERINFODATA, s);
    CURLcode rc = curl_easy_perform(c);
    long code = 0;
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(c);
    if (rc == CURLE_FILESIZE_EXCEEDED)
        s->too_large = 1; /* reported by sink_finish, like a limit hit in on_body */
    else if (rc == CURLE_HTTP_RETURNED_ERROR)
        fail(j, code == 404 ? BRIX_ART_NOT_FOUND : BRIX_ART_IO, "HTTP %ld from %s", code, j->shown);
    else if (rc != CURLE_OK && !s->too_large && !s->err)
        fail(j, rc == CURLE_URL_MALFORMAT ? BRIX_ART_BAD_URL : BRIX_ART_IO, "%s: %s", j->shown,
             err[0] ? err : curl_easy_strerror(rc));
    else if (rc == CURLE_OK && (code < 200 || code >= 300))
        fail(j, BRIX_ART_IO, "HTTP %ld from %s", code, j->shown);
}

/* Fills the sink with a copy of the local file src. */
static int real_allowed(const art_job_t *j, const char *real);

static void fill_file(art_job_t *j, sink_t *s, const char *src)
{
    int fd = open(src, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0) {
        fail(j, BRIX_ART_IO, "%s: %s", j->shown, strerror(errno));
        return;
    }
    /* src passed the root check, but a directory on its way may have been
     * swapped for a symlink since: check what was actually opened */
    char proc[64], opened[PATH_MAX];
    snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(proc, opened, sizeof opened - 1);
    if (n > 0) {
        opened[n] = '\0';
        if (!real_allowed(j, opened)) {
            close(fd);
            fail(j, BRIX_ART_NOT_ALLOWED, "%s changed while it was checked; not read", j->shown);
            return;
        }
    }
    char buf[65536];
    ssize_t r;
    while ((r = read(fd, buf, sizeof buf)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            fail(j, BRIX_ART_IO, "reading %s: %s", src, strerror(errno));
        if (r < 0 || sink_write(s, buf, (size_t)r) != 0)
            break;
    }
    close(fd);
}

/* The one path into the cache: a hit returns at once; otherwise fill a temp
 * file, check size and checksum, and rename (or unpack) it into place. */
static void fetch_to_cache(art_job_t *j, void (*fill)(art_job_t *, sink_t *, const char *),
                           const char *arg)
{
    if (prepare_cache(j) != 0)
        return;
    sink_t s = { 0 };
    char *tmp = tmp_name(j);
    if (!tmp)
        fail(j, BRIX_ART_IO, "out of memory");
    else if (sink_open(&s, j, tmp) == 0)
        fill(j, &s, arg);
    if (tmp && sink_finish(&s, tmp) == 0) {
        j->bytes = s.n;
        if (is_archive(j))
            unpack(j, tmp);
        else {
            int rc = rename_in(tmp, j->final);
            if (rc != 0)
                fail(j, BRIX_ART_IO, "renaming into %s: %s", j->final, strerror(-rc));
        }
        if (j->status == BRIX_ART_OK)
            j->path = brix_strdup(j->final);
    }
    if (tmp)
        unlink(tmp); /* gone already after a rename; an archive is unpacked by now */
    brix_free(tmp);
}

/* Collapses "//", "/./" and "/../" (".." at / stays /) without touching the disk. */
static void lexical_clean(char *p)
{
    char *out = p;
    const char *s = p;
    while (*s) {
        while (*s == '/')
            s++;
        if (!*s)
            break;
        size_t n = strcspn(s, "/");
        if (n == 2 && s[0] == '.' && s[1] == '.') {
            while (out > p && *--out != '/') {
            }
        } else if (!(n == 1 && s[0] == '.')) {
            *out++ = '/';
            memmove(out, s, n);
            out += n;
        }
        s += n;
    }
    if (out == p)
        *out++ = '/';
    *out = '\0';
}

/* path is root or below it (both absolute and clean). */
static int under(const char *path, const char *root)
{
    size_t n = strlen(root);
    while (n > 1 && root[n - 1] == '/')
        n--;
    if (n == 1 && root[0] == '/')
        return 1;
    return strncmp(path, root, n) == 0 && (path[n] == '/' || path[n] == '\0');
}

/* After realpath: inside one of the realpath'd roots. */
static int real_allowed(const art_job_t *j, const char *real)
{
    for (size_t i = 0; i < j->nroots; i++)
        if (j->real_roots[i] && under(real, j->real_roots[i]))
            return 1;
    return 0;
}

static void not_allowed(art_job_t *j, const char *why)
{
    brix_buf_t b = BRIX_BUF_INIT;
    for (size_t i = 0; i < j->nroots && b.len < 600; i++)
        brix_buf_printf(&b, "%s%s", i ? ", " : "", j->roots[i]);
    /* short: it becomes a status condition (240 characters); roots last */
    fail(j, BRIX_ART_NOT_ALLOWED, "%s %s not under an allowed --artifact-root (%s)", j->shown, why,
         b.data ? b.data : "none");
    brix_buf_free(&b);
}

/* A directory used in place: a symlink inside it must not lead out of the roots
 * (the engine would follow it). nftw has no user pointer: one walk per thread. */
static __thread art_job_t *t_walk_job;
static __thread uint64_t t_walk_n;

static int check_dir_entry(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    if (++t_walk_n > t_walk_job->max_files)
        return 2;
    if (!S_ISLNK(sb->st_mode))
        return 0;
    char real[PATH_MAX];
    return realpath(p, real) && !real_allowed(t_walk_job, real) ? 1 : 0; /* dangling: harmless */
}

/*
 * file://PATH. Only under the allowed roots: the path is first checked as
 * written (lexically cleaned, nothing on disk touched: a path outside is
 * refused without telling whether it exists), then after realpath (a symlink
 * out of a root is refused). A regular file is used in place when no checksum
 * is given: the operator pointed at a local file they control, a copy would
 * only go stale when they edit it (the cache key is the URL), and directories
 * are used in place anyway. With a checksum it is copied into the cache while
 * hashing, so the engine reads exactly the bytes that were verified even if
 * the source changes.
 */
static void fetch_file(art_job_t *j, const char *rest)
{
    if (rest[0] != '/') {
        fail(j, BRIX_ART_BAD_URL, "%s: file:// needs an absolute path (file:///abs/path)",
             j->shown);
        return;
    }
    char path[PATH_MAX], clean[PATH_MAX], real[PATH_MAX];
    if (strlen(rest) >= sizeof path) {
        fail(j, BRIX_ART_BAD_URL, "%.200s...: path too long", j->shown);
        return;
    }
    size_t k = 0; /* percent-decoded (file:///my%20dir/x); %00 stays as it is */
    for (const char *p = rest; *p; p++) {
        unsigned v = 0;
        int esc = p[0] == '%' && isxdigit((unsigned char)p[1]) && isxdigit((unsigned char)p[2]) &&
                  sscanf(p + 1, "%2x", &v) == 1 && v != 0;
        path[k++] = esc ? (char)v : *p;
        p += esc ? 2 : 0;
    }
    path[k] = '\0';
    memcpy(clean, path, k + 1);
    lexical_clean(clean);
    int ok = 0;
    for (size_t i = 0; i < j->nroots && !ok; i++) {
        char root[PATH_MAX];
        snprintf(root, sizeof root, "%s", j->roots[i]);
        lexical_clean(root); /* a relative root (--state-dir .brix) counts only as resolved */
        ok = (j->roots[i][0] == '/' && under(clean, root)) ||
             (j->real_roots[i] && under(clean, j->real_roots[i]));
    }
    if (!ok) {
        not_allowed(j, "is");
        return;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !realpath(path, real)) {
        if (errno == ENOENT || errno == ENOTDIR)
            fail(j, BRIX_ART_NOT_FOUND, "%s: no such file or directory", j->shown);
        else
            fail(j, BRIX_ART_IO, "%s: %s", j->shown, strerror(errno));
    } else if (!real_allowed(j, real)) {
        not_allowed(j, "resolves (through a symlink) to a path");
    } else if (S_ISDIR(st.st_mode)) {
        t_walk_job = j;
        t_walk_n = 0;
        int walk = j->sha ? 0 : nftw(real, check_dir_entry, 16, FTW_PHYS);
        if (j->sha) {
            fail(j, BRIX_ART_BAD_URL,
                 "%s is a directory; sha256 applies to a single file or archive, not a directory",
                 j->shown);
        } else if (walk == 1) {
            not_allowed(j, "holds a symlink to a path");
        } else if (walk == 2) {
            fail(j, BRIX_ART_TOO_LARGE, "%s: the directory holds more than %llu files", j->shown,
                 (unsigned long long)j->max_files);
        } else {
            char cfg[PATH_MAX + 32]; /* vLLM needs it; engine-sim does not care */
            snprintf(cfg, sizeof cfg, "%s/adapter_config.json", real);
            BRIX_INFO("artifact %s: using directory %s (%s)", j->label, real,
                      access(cfg, F_OK) == 0 ? "adapter_config.json present"
                                             : "no adapter_config.json inside");
            j->path = brix_strdup(real);
        }
    } else if (!S_ISREG(st.st_mode)) {
        fail(j, BRIX_ART_IO, "%s is not a regular file or a directory", j->shown);
    } else if (!j->sha) {
        j->path = brix_strdup(real);
    } else if ((uint64_t)st.st_size > j->max_bytes) {
        fail(j, BRIX_ART_TOO_LARGE, "%s: %llu bytes, over the limit of %llu", j->shown,
             (unsigned long long)st.st_size, (unsigned long long)j->max_bytes);
    } else {
        fetch_to_cache(j, fill_file, real);
    }
}

static void art_work(uv_work_t *w)
{
    art_job_t *j = (art_job_t *)w;
    const char *u = j->url;
    size_t slen = 0; /* RFC 3986 scheme: ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) */
    while (isalnum((unsigned char)u[slen]) || (slen && u[slen] && strchr("+-.", u[slen])))
        slen++;
    int garbage = u[strcspn(u, " \t\r\n\"<>\\^`{|}")] != '\0';
    if (j->sha && (strlen(j->sha) != 64 || strspn(j->sha, "0123456789abcdef") != 64)) {
        fail(j, BRIX_ART_BAD_URL, "sha256 '%.80s' is not 64 hex digits", j->sha);
    } else if (slen == 0 || slen > 32 || strncmp(u + slen, "://", 3) != 0 ||
               !isalpha((unsigned char)u[0]) || garbage || u[slen + 3] == '\0') {
        fail(j, BRIX_ART_BAD_URL, "artifactURL '%.200s' is not a valid URL (expected scheme://...)",
             j->shown);
    } else if (slen == 4 && strncasecmp(u, "file", 4) == 0) {
        char real
            [PATH_MAX]; /* a root that does not resolve allows only what is under it as written */
        for (size_t i = 0; i < j->nroots; i++)
            j->real_roots[i] = realpath(j->roots[i], real) ? brix_strdup(real) : NULL;
        fetch_file(j, u + 7);
    } else if ((slen == 4 && strncasecmp(u, "http", 4) == 0) ||
               (slen == 5 && strncasecmp(u, "https", 5) == 0)) {
        if (strchr("/?#", u[slen + 3]))
            fail(j, BRIX_ART_BAD_URL, "%s: no host in URL", j->shown);
        else
            fetch_to_cache(j, fill_http, NULL);
    } else {
        fail(j, BRIX_ART_UNSUPPORTED,
             "artifactURL scheme '%.*s://' is not supported yet by the local provider "
             "(supported: file://, http://, https://)",
             (int)slen, u);
    }
    if (j->status == BRIX_ART_OK && !j->path)
        fail(j, BRIX_ART_IO, "out of memory");
    if (j->status != BRIX_ART_OK)
        BRIX_WARN("artifact %s: %s: %s", j->label, brix_art_status_name(j->status),
                  j->message ? j->message : "");
    else if (!j->cached && j->bytes)
        BRIX_INFO("artifact %s: fetched %llu bytes from %s into %s", j->label,
                  (unsigned long long)j->bytes, j->shown, j->path);
}

static void job_free(art_job_t *j)
{
    brix_free(j->url);
    brix_free(j->sha);
    brix_free(j->cache_dir);
    brix_free(j->label);
    brix_free(j->shown);
    brix_free(j->final);
    brix_free(j->path);
    brix_free(j->message);
    for (size_t i = 0; i < j->nroots; i++) {
        brix_free(j->roots[i]);
        brix_free(j->real_roots[i]);
    }
    brix_free(j->roots);
    brix_free(j->real_roots);
    brix_free(j);
}

static void art_after(uv_work_t *w, int status)
{
    art_job_t *j = (art_job_t *)w;
    if (status == UV_ECANCELED) /* nobody else holds the uv_work_t, but be exact */
        fail(j, BRIX_ART_IO, "%s: fetch cancelled", j->shown);
    brix_art_result_t r = {
        .status = j->status,
        .path = j->status == BRIX_ART_OK ? j->path : NULL,
        .message = j->status == BRIX_ART_OK ? NULL
                   : j->message             ? j->message
                                            : brix_art_status_name(j->status),
        .bytes = j->bytes,
        .cached = j->cached,
    };
    j->done(&r, j->ud);
    job_free(j);
}

int brix_art_fetch(uv_loop_t *loop, const brix_art_req_t *req, brix_art_done_fn done, void *ud)
{
    if (!loop || !req || !req->url || !req->cache_dir || !req->cache_dir[0] || !done)
        return -EINVAL;
    pthread_once(&g_curl_once, curl_init_once); /* on the caller's thread, before any job */
    art_job_t *j = brix_calloc(1, sizeof *j);
    if (!j)
        return -ENOMEM;
    j->url = brix_strdup(req->url);
    j->cache_dir = brix_strdup(req->cache_dir);
    j->shown = shown_url(req->url);
    j->label = brix_strdup(req->label ? req->label : j->shown ? j->shown : "");
    j->sha = req->sha256 && req->sha256[0] ? brix_strdup(req->sha256) : NULL;
    j->max_bytes = req->max_bytes ? req->max_bytes : ART_DEFAULT_MAX;
    j->timeout_ms = req->timeout_ms ? req->timeout_ms : ART_DEFAULT_TIMEOUT;
    j->max_unpacked = req->max_unpacked ? req->max_unpacked : ART_DEFAULT_UNPACKED;
    j->max_files = req->max_files ? req->max_files : ART_DEFAULT_FILES;
    j->done = done;
    j->ud = ud;
    int nomem = !j->url || !j->cache_dir || !j->shown || !j->label ||
                (req->sha256 && req->sha256[0] && !j->sha);
    if (req->nroots && !nomem) {
        j->roots = brix_calloc(req->nroots, sizeof *j->roots);
        j->real_roots = brix_calloc(req->nroots, sizeof *j->real_roots);
        nomem = !j->roots || !j->real_roots;
        for (size_t i = 0; i < req->nroots && !nomem; i++, j->nroots++)
            nomem = !req->roots[i] || !(j->roots[i] = brix_strdup(req->roots[i]));
    }
    if (nomem) {
        job_free(j);
        return -ENOMEM;
    }
    for (char *p = j->sha; p && *p; p++) /* lowercase for the key and comparisons */
        *p = (char)tolower((unsigned char)*p);
    int rc = uv_queue_work(loop, &j->work, art_work, art_after);
    if (rc != 0)
        job_free(j);
    return rc;
}

const char *brix_art_status_name(brix_art_status_t s)
{
    static const char *const names[] = {
        [BRIX_ART_OK] = "Fetched",           [BRIX_ART_UNSUPPORTED] = "UnsupportedScheme",
        [BRIX_ART_BAD_URL] = "InvalidURL",   [BRIX_ART_NOT_FOUND] = "NotFound",
        [BRIX_ART_TOO_LARGE] = "TooLarge",   [BRIX_ART_CHECKSUM] = "ChecksumMismatch",
        [BRIX_ART_IO] = "FetchFailed",       [BRIX_ART_NOT_ALLOWED] = "ArtifactNotAllowed",
        [BRIX_ART_UNSAFE] = "UnsafeArchive",
    };
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "Unknown";
}

/* ------------------------------------------------------------ cleanup -- */

typedef struct gc_entry {
    char *name;
    uint64_t size;
    struct timespec mtime;
} gc_entry_t;

static __thread uint64_t t_tree_bytes;

static int add_size(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    if (S_ISREG(sb->st_mode))
        t_tree_bytes += (uint64_t)sb->st_size;
    return 0;
}

static uint64_t tree_size(const char *path)
{
    t_tree_bytes = 0;
    nftw(path, add_size, 16, FTW_PHYS);
    return t_tree_bytes;
}

static void rm_rf(const char *path)
{
    nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

/* The pid in ".tmp-<key>-<pid>-<n>" (or ".tmp-gc-<pid>-<n>"); 0 if none. */
static long tmp_pid(const char *name)
{
    const char *last = strrchr(name, '-');
    if (!last || last == name)
        return 0;
    const char *prev = last - 1;
    while (prev > name && *prev != '-')
        prev--;
    return *prev == '-' ? strtol(prev + 1, NULL, 10) : 0;
}

static int kept(const brix_art_gc_req_t *req, const char *name)
{
    size_t n = strlen(name);
    for (size_t i = 0; i < req->nkeep; i++) {
        const char *k = req->keep[i];
        if (!k)
            continue;
        if (!strcmp(k, name))
            return 1;
        for (const char *p = strstr(k, name); p; p = strstr(p + 1, name))
            if (p > k && p[-1] == '/' && (p[n] == '\0' || p[n] == '/'))
                return 1;
    }
    return 0;
}

static int by_mtime(const void *a, const void *b)
{
    const gc_entry_t *x = a, *y = b;
    if (x->mtime.tv_sec != y->mtime.tv_sec)
        return x->mtime.tv_sec < y->mtime.tv_sec ? -1 : 1;
    return x->mtime.tv_nsec < y->mtime.tv_nsec ? -1 : x->mtime.tv_nsec > y->mtime.tv_nsec;
}

void brix_art_gc_run(const brix_art_gc_req_t *req, brix_art_gc_result_t *res)
{
    memset(res, 0, sizeof *res);
    /* used within the last second counts as used since the start: file systems
     * stamp times from a coarser clock than clock_gettime */
    struct timespec start;
    clock_gettime(CLOCK_REALTIME, &start);
    start.tv_sec -= 1;
    DIR *d = opendir(req->cache_dir);
    if (!d) {
        res->err = errno == ENOENT ? 0 : -errno;
        return;
    }
    gc_entry_t *v = NULL;
    size_t n = 0, cap = 0;
    struct dirent *de;
    brix_buf_t p = BRIX_BUF_INIT;
    while ((de = readdir(d)) != NULL) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        brix_buf_reset(&p);
        if (brix_buf_printf(&p, "%s/%s", req->cache_dir, de->d_name) != 0)
            break;
        if (!strncmp(de->d_name, ".tmp-", 5)) {
            /* our own are fetches in flight; any other pid's crashed (one
             * controller per state dir) */
            if (tmp_pid(de->d_name) != (long)getpid()) {
                rm_rf(p.data);
                res->temps_removed++;
            }
            continue;
        }
        struct stat st;
        if (lstat(p.data, &st) != 0)
            continue;
        if (n == cap) {
            size_t nc = cap ? 2 * cap : 32;
            gc_entry_t *nv = brix_realloc(v, nc * sizeof *nv);
            if (!nv)
                break;
            v = nv;
            cap = nc;
        }
        v[n].name = brix_strdup(de->d_name);
        if (!v[n].name)
            break;
        v[n].size = S_ISDIR(st.st_mode) ? tree_size(p.data) : (uint64_t)st.st_size;
        v[n].mtime = st.st_mtim;
        res->bytes += v[n].size;
        n++;
    }
    closedir(d);
    if (n) /* qsort's pointer may not be NULL even for 0 elements */
        qsort(v, n, sizeof *v, by_mtime);
    for (size_t i = 0; i < n && res->bytes > req->max_bytes; i++) {
        if (kept(req, v[i].name))
            continue;
        brix_buf_reset(&p);
        char *gone = NULL;
        brix_buf_t g = BRIX_BUF_INIT;
        if (brix_buf_printf(&p, "%s/%s", req->cache_dir, v[i].name) != 0 ||
            brix_buf_printf(&g, "%s/.tmp-gc-%ld-%u", req->cache_dir, (long)getpid(),
                            atomic_fetch_add(&g_tmp_seq, 1)) != 0) {
            brix_buf_free(&g);
            break;
        }
        struct stat st;
        pthread_mutex_lock(&g_cache_lock);
        int used = lstat(p.data, &st) != 0 || st.st_mtim.tv_sec > start.tv_sec ||
                   (st.st_mtim.tv_sec == start.tv_sec && st.st_mtim.tv_nsec >= start.tv_nsec);
        if (!used && rename(p.data, g.data) == 0)
            gone = g.data;
        pthread_mutex_unlock(&g_cache_lock);
        if (gone) {
            rm_rf(gone);
            res->bytes -= v[i].size;
            res->evicted++;
            res->evicted_bytes += v[i].size;
        }
        brix_buf_free(&g);
    }
    for (size_t i = 0; i < n; i++)
        brix_free(v[i].name);
    brix_free(v);
    brix_buf_free(&p);
}

typedef struct gc_job {
    uv_work_t work; /* first */
    brix_art_gc_req_t req;
    brix_art_gc_result_t res;
    brix_art_gc_fn done;
    void *ud;
} gc_job_t;

static void gc_free(gc_job_t *g)
{
    for (size_t i = 0; i < g->req.nkeep; i++)
        brix_free((char *)g->req.keep[i]);
    brix_free((void *)g->req.keep);
    brix_free((char *)g->req.cache_dir);
    brix_free(g);
}

static void gc_work(uv_work_t *w)
{
    gc_job_t *g = (gc_job_t *)w;
    brix_art_gc_run(&g->req, &g->res);
}

static void gc_after(uv_work_t *w, int status)
{
    gc_job_t *g = (gc_job_t *)w;
    if (status == UV_ECANCELED)
        g->res.err = UV_ECANCELED;
    g->done(&g->res, g->ud);
    gc_free(g);
}

int brix_art_gc(uv_loop_t *loop, const brix_art_gc_req_t *req, brix_art_gc_fn done, void *ud)
{
    if (!loop || !req || !req->cache_dir || !done)
        return -EINVAL;
    gc_job_t *g = brix_calloc(1, sizeof *g);
    if (!g)
        return -ENOMEM;
    g->done = done;
    g->ud = ud;
    g->req.max_bytes = req->max_bytes;
    char **keep = req->nkeep ? brix_calloc(req->nkeep, sizeof *keep) : NULL;
    g->req.keep = (const char *const *)keep;
    int nomem = !(g->req.cache_dir = brix_strdup(req->cache_dir)) || (req->nkeep && !keep);
    for (size_t i = 0; i < req->nkeep && !nomem; i++, g->req.nkeep++)
        nomem = req->keep[i] && !(keep[i] = brix_strdup(req->keep[i]));
    if (nomem) {
        gc_free(g);
        return -ENOMEM;
    }
    int rc = uv_queue_work(loop, &g->work, gc_work, gc_after);
    if (rc != 0)
        gc_free(g);
    return rc;
}
