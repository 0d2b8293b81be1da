/*
 * artifact — fetches file:// and http(s):// LoRA artifacts into a local cache.
 *
 * One fetch is one uv_queue_work job: the work function does every blocking step
 * (stat/copy, a libcurl easy transfer, `tar` child processes) on libuv's thread
 * pool and fills the job's result; the after-work callback hands it to the caller
 * on the loop thread and frees the job. Jobs share nothing but a temp-name counter.
 * Everything is written under cache_dir/.tmp-<key>-<pid>-<n> and appears under its
 * final name cache_dir/<key>-<basename> only by rename(2), after the size, checksum
 * and archive checks, so a name without the .tmp- prefix is always complete.
 */
#include "controller/artifact.h"

#include <ctype.h>
#include <curl/curl.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "core/alloc.h"
#include "core/buf.h"
#include "core/log.h"
#include "core/time.h"

extern char **environ;

#define ART_DEFAULT_MAX     (10ull << 30)
#define ART_DEFAULT_TIMEOUT (10ull * 60 * 1000)
#define ART_CONNECT_MS      30000L
#define ART_PROGRESS_MS     2000
#define ART_MAX_LISTING     (16u << 20) /* bytes of `tar -t` output we accept */

typedef struct art_job {
    uv_work_t work; /* first: the job is the uv_work_t */
    char *url, *sha, *cache_dir, *label;
    char *shown; /* url without userinfo/query, for messages and logs */
    uint64_t max_bytes, timeout_ms;
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
static int is_archive(const art_job_t *j)
{
    if (strncasecmp(j->url, "http", 4) != 0)
        return 0;
    size_t n;
    const char *p = url_path(j->url, &n);
    return has_suffix(p, n, ".tar.gz") || has_suffix(p, n, ".tgz");
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
    unsigned char d[EVP_MAX_MD_SIZE];
    if (brix_buf_printf(&f, "%s\n%s", j->url, j->sha ? j->sha : "") == 0 &&
        EVP_Digest(f.data, f.len, d, NULL, EVP_sha256(), NULL))
        to_hex(d, 8, j->key);
    brix_buf_reset(&f);

    size_t n; /* the basename of the URL path; an unpacked archive drops its suffix */
    const char *p = url_path(j->url, &n);
    n -= !is_archive(j) ? 0 : has_suffix(p, n, ".tgz") ? 4 : 7;
    const char *b = p + n;
    while (b > p && b[-1] != '/')
        b--;
    char base[81] = "artifact";
    for (size_t k = 0; k < (size_t)(p + n - b) && k < sizeof base - 1; k++) {
        base[k] = isalnum((unsigned char)b[k]) || strchr(".-_", b[k]) ? b[k] : '_';
        base[k + 1] = '\0';
    }
    if (j->key[0])
        brix_buf_printf(&f, "%s/%s-%s", dir, j->key, base);
    else
        brix_buf_free(&f);
    if (!(j->final = f.data)) {
        fail(j, BRIX_ART_IO, "out of memory");
        return -1;
    }
    struct stat st;
    if (lstat(j->final, &st) == 0) {
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
        if (strcmp(got, j->sha) != 0)
            fail(j, BRIX_ART_CHECKSUM, "%s: SHA-256 is %s, expected %s", j->shown, got, j->sha);
    }
    EVP_MD_CTX_free(s->md);
    s->md = NULL;
    return j->status != BRIX_ART_OK ? -1 : 0;
}

/* Runs tar with the archive on stdin (so a ':' in the path never means a remote
 * archive) and collects what it writes on out_fd (1 or 2) into out; the other
 * stream goes to /dev/null. Returns the exit status, or -1 if it did not run. */
static int run_tar(char *const argv[], const char *archive, int out_fd, brix_buf_t *out)
{
    int pfd[2];
    if (pipe2(pfd, O_CLOEXEC) != 0)
        return -1;
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 0, archive, O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
    posix_spawn_file_actions_adddup2(&fa, pfd[1], out_fd);
    pid_t pid;
    int rc = posix_spawnp(&pid, "tar", &fa, NULL, argv, environ);
    posix_spawn_file_actions_destroy(&fa);
    close(pfd[1]);
    if (rc != 0) {
        close(pfd[0]);
        return -1;
    }
    char buf[8192];
    ssize_t r;
    int overflow = 0;
    while ((r = read(pfd[0], buf, sizeof buf)) != 0) {
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0)
            break;
        if (out->len + (size_t)r > ART_MAX_LISTING || brix_buf_append(out, buf, (size_t)r) != 0)
            overflow = 1; /* keep draining so tar can finish */
    }
    close(pfd[0]);
    int st = 0;
    while (waitpid(pid, &st, 0) < 0 && errno == EINTR) {
    }
    return overflow ? -1 : WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* A member name that would land outside the extraction directory. */
static int unsafe_name(const char *s, size_t n)
{
    if (n > 0 && s[0] == '/')
        return 1;
    for (size_t i = 0; i < n;) {
        size_t c = i;
        while (c < n && s[c] != '/')
            c++;
        if (c - i == 2 && s[i] == '.' && s[i + 1] == '.')
            return 1;
        i = c + 1;
    }
    return 0;
}

/* After extraction: only directories, files that are not hard links (one could
 * be a link to a file outside), and symlinks that stay inside. */
static int check_entry(const char *p, const struct stat *sb, int flag, struct FTW *f)
{
    if (S_ISDIR(sb->st_mode) || (S_ISREG(sb->st_mode) && sb->st_nlink == 1))
        return 0;
    if (!S_ISLNK(sb->st_mode))
        return 1;
    char t[PATH_MAX];
    ssize_t n = readlink(p, t, sizeof t);
    return n < 0 || unsafe_name(t, (size_t)n);
}

/* Unpacks the verified archive at tmp into place as j->final. */
static void unpack(art_job_t *j, const char *tmp)
{
    brix_buf_t out = BRIX_BUF_INIT;
    char *dir = NULL, inner[PATH_MAX + 256];
    char *list_argv[] = { "tar", "-tzf", "-", NULL };
    int rc = run_tar(list_argv, tmp, 1, &out);
    if (rc != 0) {
        fail(j, BRIX_ART_IO, "%s: not a readable .tar.gz archive (tar -t exit %d)", j->shown, rc);
        goto done;
    }
    char *save = NULL;
    for (char *m = out.data ? strtok_r(out.data, "\n", &save) : NULL; m;
         m = strtok_r(NULL, "\n", &save))
        if (unsafe_name(m, strlen(m))) {
            fail(j, BRIX_ART_IO,
                 "%s: archive member '%.200s' has an absolute path or a '..' component; "
                 "refusing to unpack",
                 j->shown, m);
            goto done;
        }
    dir = tmp_name(j);
    if (!dir || mkdir(dir, 0755) != 0) {
        fail(j, BRIX_ART_IO, "creating %s: %s", dir ? dir : "temp dir", strerror(errno));
        goto done;
    }
    brix_buf_reset(&out);
    char *x_argv[] = { "tar", "--no-same-owner", "-xzf", "-", "-C", dir, NULL };
    rc = run_tar(x_argv, tmp, 2, &out);
    if (rc != 0) {
        fail(j, BRIX_ART_IO, "%s: unpacking failed (tar exit %d): %.300s", j->shown, rc,
             out.data ? out.data : "");
        goto done;
    }
    if (nftw(dir, check_entry, 16, FTW_PHYS) != 0) {
        fail(j, BRIX_ART_IO,
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
    if (count == 0)
        fail(j, BRIX_ART_IO, "%s: the archive is empty", j->shown);
    /* EEXIST/ENOTEMPTY: a concurrent fetch of the same key got there first; its copy is as good */
    else if (rename(one_dir ? inner : dir, j->final) != 0 &&
             !((errno == EEXIST || errno == ENOTEMPTY) && lstat(j->final, &st) == 0))
        fail(j, BRIX_ART_IO, "renaming into %s: %s", j->final, strerror(errno));
done:
    if (dir) /* rm -rf of what is left (all of it after a failure) */
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    brix_free(dir);
    brix_buf_free(&out);
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
static void fill_file(art_job_t *j, sink_t *s, const char *src)
{
    int fd = open(src, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        fail(j, BRIX_ART_IO, "%s: %s", j->shown, strerror(errno));
        return;
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
        else if (rename(tmp, j->final) != 0)
            fail(j, BRIX_ART_IO, "renaming into %s: %s", j->final, strerror(errno));
        if (j->status == BRIX_ART_OK)
            j->path = brix_strdup(j->final);
    }
    if (tmp)
        unlink(tmp); /* gone already after a rename; an archive is unpacked by now */
    brix_free(tmp);
}

/*
 * file://PATH. A regular file is used in place when no checksum is given: the
 * operator pointed at a local file they control, a copy would only go stale when
 * they edit it (the cache key is the URL), and directories are used in place
 * anyway. With a checksum it is copied into the cache while hashing, so the
 * engine reads exactly the bytes that were verified even if the source changes.
 */
static void fetch_file(art_job_t *j, const char *rest)
{
    if (rest[0] != '/') {
        fail(j, BRIX_ART_BAD_URL, "%s: file:// needs an absolute path (file:///abs/path)",
             j->shown);
        return;
    }
    char path[PATH_MAX], real[PATH_MAX];
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
    struct stat st;
    if (stat(path, &st) != 0 || !realpath(path, real)) {
        if (errno == ENOENT || errno == ENOTDIR)
            fail(j, BRIX_ART_NOT_FOUND, "%s: no such file or directory", j->shown);
        else
            fail(j, BRIX_ART_IO, "%s: %s", j->shown, strerror(errno));
    } else if (S_ISDIR(st.st_mode)) {
        if (j->sha) {
            fail(j, BRIX_ART_BAD_URL,
                 "%s is a directory; sha256 applies to a single file or archive, not a directory",
                 j->shown);
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
    j->done = done;
    j->ud = ud;
    if (!j->url || !j->cache_dir || !j->shown || !j->label ||
        (req->sha256 && req->sha256[0] && !j->sha)) {
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
        [BRIX_ART_OK] = "Fetched",         [BRIX_ART_UNSUPPORTED] = "UnsupportedScheme",
        [BRIX_ART_BAD_URL] = "InvalidURL", [BRIX_ART_NOT_FOUND] = "NotFound",
        [BRIX_ART_TOO_LARGE] = "TooLarge", [BRIX_ART_CHECKSUM] = "ChecksumMismatch",
        [BRIX_ART_IO] = "FetchFailed",
    };
    return (unsigned)s < sizeof names / sizeof names[0] ? names[s] : "Unknown";
}
