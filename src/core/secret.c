/*
 * secret — constant-time credential comparison (see secret.h).
 */
#include "core/secret.h"

#include <string.h>

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
