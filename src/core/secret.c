/*
 * secret — constant-time credential comparison (see secret.h).
 */
#include "core/secret.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "core/alloc.h"

#include <openssl/crypto.h>
#include <openssl/sha.h>

bool brix_secret_equal(const char *given, const char *want)
{
    if (!given || !want || !*want)
        return false;
    unsigned char a[SHA256_DIGEST_LENGTH], b[SHA256_DIGEST_LENGTH];
    SHA256((const unsigned char *)given, strlen(given), a);
    SHA256((const unsigned char *)want, strlen(want), b);
    return CRYPTO_memcmp(a, b, sizeof a) == 0;
}

#define SECRET_FILE_MAX 4096

int brix_secret_read_file(const char *path, char **out, char *err, size_t errlen)
{
    *out = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "%s: %s", path, strerror(e));
        return -e;
    }
    char buf[SECRET_FILE_MAX + 1];
    size_t n = 0;
    int rc = 0;
    while (n < SECRET_FILE_MAX) {
        ssize_t r = read(fd, buf + n, SECRET_FILE_MAX - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            rc = -errno;
            snprintf(err, errlen, "%s: %s", path, strerror(-rc));
            break;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    buf[n] = '\0';
    char *s = buf, *e = buf + n;
    while (s < e && (*s == ' ' || *s == '\t' || *s == '\r' || *s == '\n'))
        s++;
    while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        e--;
    for (const char *p = s; !rc && p < e; p++)
        if (*p < 0x21 || *p > 0x7e) {
            snprintf(err, errlen, "%s: the credential must be one word of printable ASCII", path);
            rc = -EINVAL;
        }
    if (!rc && e == s) {
        snprintf(err, errlen, "%s: no key or token in the file", path);
        rc = -EINVAL;
    }
    if (!rc && !(*out = brix_strndup(s, (size_t)(e - s)))) {
        snprintf(err, errlen, "out of memory");
        rc = -ENOMEM;
    }
    OPENSSL_cleanse(buf, sizeof buf);
    return rc;
}
