/* Thin wrappers over clock_gettime; see time.h. */
#include "core/time.h"

#include <stdio.h>
#include <time.h>

uint64_t brix_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t brix_now_ms(void)
{
    return brix_now_ns() / 1000000ull;
}

uint64_t brix_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000ull + (uint64_t)ts.tv_nsec / 1000000ull;
}

int64_t brix_wall_s(void)
{
    return (int64_t)(brix_wall_ms() / 1000);
}

void brix_time_iso8601(char out[32], uint64_t wall_ms)
{
    time_t s = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&s, &tm);
    /* strftime avoids -Wformat-truncation noise on the int fields. */
    size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(out + n, 32 - n, ".%03uZ", (unsigned)(wall_ms % 1000));
}

void brix_time_http_date(char out[40], int64_t wall_s)
{
    static const char *days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    static const char *mons[] = { "Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                  "Jul", "Aug", "Sep", "Oct", "Nov", "Dec" };
    time_t s = (time_t)wall_s;
    struct tm tm;
    gmtime_r(&s, &tm);
    char hms[16];
    strftime(hms, sizeof hms, "%H:%M:%S", &tm);
    snprintf(out, 40, "%s, %02d %s %04d %s GMT", days[tm.tm_wday], tm.tm_mday % 100,
             mons[tm.tm_mon], (tm.tm_year + 1900) % 10000, hms);
}
