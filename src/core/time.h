/*
 * time — monotonic and wall clocks. Latencies are always measured on the
 * monotonic clock; the wall clock is only for timestamps shown to people
 * (logs, `created` fields).
 */
#ifndef BRIX_CORE_TIME_H
#define BRIX_CORE_TIME_H

#include <stddef.h>
#include <stdint.h>

uint64_t brix_now_ns(void);  /* CLOCK_MONOTONIC */
uint64_t brix_now_ms(void);  /* CLOCK_MONOTONIC */
uint64_t brix_wall_ms(void); /* CLOCK_REALTIME, ms since the epoch */
int64_t brix_wall_s(void);   /* CLOCK_REALTIME, s since the epoch */
/* Writes "2026-11-25T15:01:10.123Z" (24 chars + NUL) into out. */
void brix_time_iso8601(char out[32], uint64_t wall_ms);
/* Writes an RFC 7231 IMF-fixdate ("Wed, 25 Nov 2026 15:01:10 GMT"). */
void brix_time_http_date(char out[40], int64_t wall_s);

#endif
