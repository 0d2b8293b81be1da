/*
 * tzif — the UTC offset of an IANA zone at a given instant, read from the
 * zone's TZif file (RFC 8536) without setting TZ: the transitions of the file
 * (its 64-bit block when present) and, after the last transition, the POSIX TZ
 * rule in its footer (which "slim" zone files rely on for every date after
 * 2007 or so). No state and no environment: safe from any thread.
 */
#ifndef BRIX_CONTROLLER_TZIF_H
#define BRIX_CONTROLLER_TZIF_H

#include <stdint.h>

#ifndef BRIX_TZ_DIR
#define BRIX_TZ_DIR "/usr/share/zoneinfo"
#endif

/* *off = seconds east of UTC in zone `name` (a path under BRIX_TZ_DIR, already
 * checked by the caller) at Unix time t. off may be NULL (a validity check).
 * 0, -ENOENT/-EACCES (no such file), -EINVAL (not a TZif file), -ENOMEM. */
int brix_tzif_offset(const char *name, int64_t t, int32_t *off);

/* The offset a POSIX TZ string ("CET-1CEST,M3.5.0,M10.5.0/3") gives at t;
 * exposed for the unit tests. 0 or -EINVAL. */
int brix_tzif_posix_offset(const char *rule, int64_t t, int32_t *off);

#endif
