/*
 * secret — comparing credentials (API keys, tokens) without leaking them
 * through timing.
 *
 * Both sides are hashed with SHA-256 and the digests compared with
 * CRYPTO_memcmp, so the time taken depends neither on where the first
 * differing byte is nor on the length of the secret. Shared by every listener
 * that checks a bearer: the controller's API token, the gateway's admin key,
 * engine-sim's --api-key.
 */
#ifndef BRIX_CORE_SECRET_H
#define BRIX_CORE_SECRET_H

#include <stdbool.h>

/* True when given equals want. NULL or an empty want never matches (a
 * credential that is not configured cannot be presented). */
bool brix_secret_equal(const char *given, const char *want);

#endif
