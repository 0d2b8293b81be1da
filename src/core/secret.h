/*
 * secret — comparing credentials (API keys, tokens) without leaking them
 * through timing.
 *
 * brix_secret_read_file is the one reader of credential files.
 * Both sides are hashed with SHA-256 and the digests compared with
 * CRYPTO_memcmp, so the time taken depends neither on where the first
 * differing byte is nor on the length of the secret. Shared by every listener
 * that checks a bearer: the controller's API token, the gateway's admin key,
 * engine-sim's --api-key.
 */
#ifndef BRIX_CORE_SECRET_H
#define BRIX_CORE_SECRET_H

#include <stdbool.h>
#include <stddef.h>

/* True when given equals want. NULL or an empty want never matches (a
 * credential that is not configured cannot be presented). */
bool brix_secret_equal(const char *given, const char *want);

/* A credential file: one word; surrounding spaces and newlines are trimmed
 * (what `brix controller` and `brix up` write). At most 4 KiB is read; the
 * read buffer is cleansed. *out is the caller's (brix_free; cleanse it
 * first). 0, or -errno with err naming the file: unreadable, empty, or not
 * one word of printable ASCII (-EINVAL). */
int brix_secret_read_file(const char *path, char **out, char *err, size_t errlen);

#endif
