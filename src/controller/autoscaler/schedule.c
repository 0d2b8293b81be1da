/*
 * schedule — AIBrix's spec.schedules: daily windows, in an IANA time zone,
 * that override a PodAutoscaler's min/max replicas (facts: AIBrix's
 * PodAutoscaler API, shared/reference/aibrix.md §3). The first active window
 * in list order wins; outside every window the spec's own bounds apply.
 *
 * Windows are [start, end) in local minutes after midnight. A window whose
 * end is before its start runs over midnight and belongs to the day it
 * starts on (Fri 22:00-06:00 is active early on Saturday, not early Friday).
 * start == end means the whole day.
 *
 * Local time: glibc has no "localtime in zone Z" call, so the zone is read
 * from its TZif file here (RFC 8536): the transitions of the 64-bit block and,
 * past the last one, the POSIX TZ rule of the footer. The environment is never
 * touched, so this is safe in any thread.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>

#include "controller/autoscaler/as_internal.h"
#include "controller/autoscaler/tzif.h"

int brix_as_day_parse(const char *s)
{
    static const char *const shortn[] = { "sun", "mon", "tue", "wed", "thu", "fri", "sat" };
    static const char *const longn[] = { "sunday",   "monday", "tuesday", "wednesday",
                                         "thursday", "friday", "saturday" };
    if (!s)
        return -1;
    for (int i = 0; i < 7; i++)
        if (strcasecmp(s, shortn[i]) == 0 || strcasecmp(s, longn[i]) == 0)
            return i;
    return -1;
}

int brix_as_hhmm_parse(const char *s)
{
    if (!s || strlen(s) != 5 || s[2] != ':')
        return -1;
    for (int i = 0; i < 5; i++)
        if (i != 2 && (s[i] < '0' || s[i] > '9'))
            return -1;
    int h = (s[0] - '0') * 10 + (s[1] - '0');
    int m = (s[3] - '0') * 10 + (s[4] - '0');
    /* "24:00" is the end of the day, the only way to write a window that
     * ends at midnight without running over it. */
    if (m > 59 || h > 24 || (h == 24 && m != 0))
        return -1;
    return h * 60 + m;
}

static bool is_utc(const char *tz)
{
    return !tz || !tz[0] || strcmp(tz, "UTC") == 0 || strcmp(tz, "Etc/UTC") == 0;
}

/* A relative path of zone-name characters, no "..": nothing outside the
 * zoneinfo directory can be named. */
static bool name_ok(const char *tz)
{
    size_t n = strlen(tz);
    if (n >= 64 || tz[0] == '/' || tz[0] == '.')
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = tz[i];
        bool ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                  c == '_' || c == '-' || c == '+' || c == '/' || c == '.';
        if (!ok)
            return false;
    }
    return !strstr(tz, "..") && !strstr(tz, "//");
}

bool brix_as_timezone_valid(const char *tz)
{
    if (is_utc(tz))
        return true; /* built in: also where no zoneinfo is installed */
    if (!name_ok(tz))
        return false;
    char path[128];
    int w = snprintf(path, sizeof path, "%s/%s", BRIX_TZ_DIR, tz);
    if (w < 0 || (size_t)w >= sizeof path)
        return false;
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISREG(st.st_mode))
        return false;
    return brix_tzif_offset(tz, 0, NULL) == 0; /* a file, but is it a zone? */
}

/* Local weekday (0 = Sunday) and minute of the day of wall_ms in tz. */
static int local_time(const char *tz, int64_t wall_ms, int *wday, int *minute)
{
    int64_t secs = wall_ms >= 0 ? wall_ms / 1000 : -((-wall_ms + 999) / 1000);
    int32_t off = 0;
    if (!is_utc(tz)) {
        if (!name_ok(tz) || brix_tzif_offset(tz, secs, &off) < 0)
            return -EINVAL;
    }
    int64_t local = secs + off;
    int64_t days = local >= 0 ? local / 86400 : -((-local + 86399) / 86400);
    int64_t sod = local - days * 86400;
    /* 1970-01-01 was a Thursday (4). */
    int64_t wd = (days + 4) % 7;
    if (wd < 0)
        wd += 7;
    *wday = (int)wd;
    *minute = (int)(sod / 60);
    return 0;
}

static bool day_on(uint8_t days, int wday)
{
    return days == 0 || (days & (1u << wday)) != 0;
}

static bool window_active(const brix_as_schedule_t *w, int wday, int minute)
{
    int s = w->start_min, e = w->end_min;
    if (s == e)
        return day_on(w->days, wday);
    if (s < e)
        return day_on(w->days, wday) && minute >= s && minute < e;
    /* Over midnight: the evening part is today's, the morning part yesterday's. */
    if (minute >= s)
        return day_on(w->days, wday);
    if (minute < e)
        return day_on(w->days, (wday + 6) % 7);
    return false;
}

int brix_as_schedule_bounds(const brix_as_schedule_t *v, size_t n, int64_t wall_ms,
                            int32_t base_min, int32_t base_max, int32_t *min, int32_t *max,
                            const char **active)
{
    *min = base_min;
    *max = base_max;
    if (active)
        *active = NULL;
    for (size_t i = 0; i < n; i++) {
        int wday, minute;
        int rc = local_time(v[i].timezone, wall_ms, &wday, &minute);
        if (rc < 0)
            return rc;
        if (!window_active(&v[i], wday, minute))
            continue;
        if (v[i].min_replicas >= 0)
            *min = v[i].min_replicas;
        if (v[i].max_replicas >= 0)
            *max = v[i].max_replicas;
        /* A window that raises min above the spec's max (or lowers max under
         * its min) says what it wants for that window: the one it set wins. */
        if (*min > *max) {
            if (v[i].min_replicas >= 0)
                *max = *min;
            else
                *min = *max;
        }
        if (active)
            *active = v[i].name;
        return 0;
    }
    return 0;
}
