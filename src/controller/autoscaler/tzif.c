/*
 * tzif — see tzif.h. Format facts from RFC 8536 ("The Time Zone Information
 * Format") and POSIX.1-2017 §8.3 (the TZ variable), read for the layout only.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "controller/autoscaler/tzif.h"
#include "core/alloc.h"

#define TZIF_MAX_BYTES (256u * 1024u) /* the largest real zone is ~4 KB */

static uint32_t be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64(const unsigned char *p)
{
    return (int64_t)((uint64_t)be32(p) << 32 | be32(p + 4));
}

/* ------------------------------------------------------ civil calendar -- */

/* Days from 1970-01-01 to y-m-d (proleptic Gregorian; m 1..12). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int64_t year_of_days(int64_t z)
{
    z += 719468;
    int64_t era = (z >= 0 ? z : z - 146096) / 146097;
    int64_t doe = z - era * 146097;
    int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    int64_t mp = (5 * doy + 2) / 153;
    int m = (int)(mp < 10 ? mp + 3 : mp - 9);
    return yoe + era * 400 + (m <= 2);
}

static bool leap(int64_t y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int64_t floor_div(int64_t a, int64_t b)
{
    return a >= 0 ? a / b : -((-a + b - 1) / b);
}

/* ------------------------------------------------------- POSIX TZ rule -- */

typedef struct tz_date {
    char kind; /* 'J' (1..365, no Feb 29), 'N' (0..365), 'M' */
    int a, b, c;
    int32_t secs; /* local time of day of the change, may be < 0 or > 24 h */
} tz_date_t;

static const char *parse_name(const char *s)
{
    if (*s == '<') {
        while (*s && *s != '>')
            s++;
        return *s == '>' ? s + 1 : NULL;
    }
    const char *b = s;
    while ((*s >= 'A' && *s <= 'Z') || (*s >= 'a' && *s <= 'z'))
        s++;
    return s - b >= 3 ? s : NULL;
}

static const char *parse_num(const char *s, int *v, int max)
{
    if (*s < '0' || *s > '9')
        return NULL;
    int n = 0;
    while (*s >= '0' && *s <= '9') {
        n = n * 10 + (*s++ - '0');
        if (n > max)
            return NULL;
    }
    *v = n;
    return s;
}

/* [+-]hh[:mm[:ss]] → seconds (hours up to 167, RFC 8536's extension). */
static const char *parse_hms(const char *s, int32_t *secs)
{
    int sign = 1, h = 0, m = 0, sec = 0;
    if (*s == '+' || *s == '-')
        sign = *s++ == '-' ? -1 : 1;
    if (!(s = parse_num(s, &h, 167)))
        return NULL;
    if (*s == ':') {
        if (!(s = parse_num(s + 1, &m, 59)))
            return NULL;
        if (*s == ':' && !(s = parse_num(s + 1, &sec, 59)))
            return NULL;
    }
    *secs = sign * (h * 3600 + m * 60 + sec);
    return s;
}

static const char *parse_date(const char *s, tz_date_t *d)
{
    d->secs = 7200; /* POSIX default: 02:00 */
    if (*s == 'J') {
        d->kind = 'J';
        if (!(s = parse_num(s + 1, &d->a, 365)) || d->a < 1)
            return NULL;
    } else if (*s == 'M') {
        d->kind = 'M';
        if (!(s = parse_num(s + 1, &d->a, 12)) || d->a < 1 || *s != '.')
            return NULL;
        if (!(s = parse_num(s + 1, &d->b, 5)) || d->b < 1 || *s != '.')
            return NULL;
        if (!(s = parse_num(s + 1, &d->c, 6)))
            return NULL;
    } else {
        d->kind = 'N';
        if (!(s = parse_num(s, &d->a, 365)))
            return NULL;
    }
    if (*s == '/' && !(s = parse_hms(s + 1, &d->secs)))
        return NULL;
    return s;
}

/* Local midnight (as days since the epoch) of the rule's day in year y. */
static int64_t rule_day(const tz_date_t *d, int64_t y)
{
    int64_t jan1 = days_from_civil(y, 1, 1);
    if (d->kind == 'J')
        return jan1 + d->a - 1 + (leap(y) && d->a >= 60 ? 1 : 0);
    if (d->kind == 'N')
        return jan1 + d->a;
    static const int mdays[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
    int64_t first = days_from_civil(y, d->a, 1);
    int wd1 = (int)(((first + 4) % 7 + 7) % 7);
    int day = 1 + (d->c - wd1 + 7) % 7 + (d->b - 1) * 7;
    int len = mdays[d->a - 1] + (d->a == 2 && leap(y) ? 1 : 0);
    while (day > len)
        day -= 7;
    return first + day - 1;
}

int brix_tzif_posix_offset(const char *rule, int64_t t, int32_t *off)
{
    const char *s = parse_name(rule);
    int32_t std_west, dst_west;
    if (!s || !(s = parse_hms(s, &std_west)))
        return -EINVAL;
    int32_t std_off = -std_west;
    if (!*s) {
        if (off)
            *off = std_off;
        return 0;
    }
    if (!(s = parse_name(s)))
        return -EINVAL;
    int32_t dst_off = std_off + 3600;
    if (*s && *s != ',') {
        if (!(s = parse_hms(s, &dst_west)))
            return -EINVAL;
        dst_off = -dst_west;
    }
    tz_date_t start = { 'M', 3, 2, 0, 7200 }, end = { 'M', 11, 1, 0, 7200 }; /* POSIX default */
    if (*s == ',') {
        if (!(s = parse_date(s + 1, &start)) || *s != ',')
            return -EINVAL;
        if (!(s = parse_date(s + 1, &end)))
            return -EINVAL;
    }
    if (*s)
        return -EINVAL;
    if (!off)
        return 0;
    /* Check the year of t and its neighbours: a southern-hemisphere DST spans
     * new year, and a change time may spill into the next day or year. */
    int64_t y = year_of_days(floor_div(t + std_off, 86400));
    bool dst = false;
    int64_t best = INT64_MIN;
    for (int64_t yy = y - 1; yy <= y + 1; yy++) {
        int64_t on = rule_day(&start, yy) * 86400 + start.secs - std_off;
        int64_t offt = rule_day(&end, yy) * 86400 + end.secs - dst_off;
        /* The latest change at or before t decides. */
        if (on <= t && on > best) {
            best = on;
            dst = true;
        }
        if (offt <= t && offt > best) {
            best = offt;
            dst = false;
        }
    }
    *off = dst ? dst_off : std_off;
    return 0;
}

/* ------------------------------------------------------------ the file -- */

typedef struct tzif_counts {
    uint32_t isut, isstd, leap, time, type, chr;
} tzif_counts_t;

static size_t block_len(const tzif_counts_t *c, size_t tsize)
{
    return (size_t)c->time * tsize + c->time + (size_t)c->type * 6 + c->chr +
           (size_t)c->leap * (tsize + 4) + c->isstd + c->isut;
}

static void read_counts(const unsigned char *h, tzif_counts_t *c)
{
    c->isut = be32(h + 20);
    c->isstd = be32(h + 24);
    c->leap = be32(h + 28);
    c->time = be32(h + 32);
    c->type = be32(h + 36);
    c->chr = be32(h + 40);
}

static int load(const char *name, unsigned char **buf, size_t *len)
{
    char path[256];
    int w = snprintf(path, sizeof path, "%s/%s", BRIX_TZ_DIR, name);
    if (w < 0 || (size_t)w >= sizeof path)
        return -ENAMETOOLONG;
    FILE *f = fopen(path, "rbe"); /* e: O_CLOEXEC, replicas are forked */
    if (!f)
        return -errno;
    long size = -1;
    if (fseek(f, 0, SEEK_END) == 0)
        size = ftell(f);
    if (size < 0 || (unsigned long)size > TZIF_MAX_BYTES || fseek(f, 0, SEEK_SET) != 0) {
        fclose(f);
        return -EINVAL;
    }
    unsigned char *b = brix_malloc((size_t)size + 1);
    if (!b) {
        fclose(f);
        return -ENOMEM;
    }
    size_t n = fread(b, 1, (size_t)size, f);
    fclose(f);
    *buf = b;
    *len = n;
    return 0;
}

int brix_tzif_offset(const char *name, int64_t t, int32_t *off)
{
    unsigned char *b = NULL;
    size_t len = 0;
    int rc = load(name, &b, &len);
    if (rc < 0)
        return rc;
    rc = -EINVAL;
    if (len < 44 || memcmp(b, "TZif", 4) != 0)
        goto out;
    tzif_counts_t c;
    read_counts(b, &c);
    size_t p = 44, tsize = 4;
    if (c.time > 65536 || c.type > 256 || c.chr > 65536 || c.leap > 65536 || c.isstd > 256 ||
        c.isut > 256)
        goto out;
    if (b[4] >= '2') {
        /* Skip the 32-bit block: the 64-bit one follows with its own header. */
        p += block_len(&c, 4);
        if (p + 44 > len || memcmp(b + p, "TZif", 4) != 0)
            goto out;
        read_counts(b + p, &c);
        if (c.time > 65536 || c.type > 256 || c.chr > 65536 || c.leap > 65536 || c.isstd > 256 ||
            c.isut > 256)
            goto out;
        p += 44;
        tsize = 8;
    }
    if (c.type == 0 || p + block_len(&c, tsize) > len)
        goto out;
    const unsigned char *times = b + p;
    const unsigned char *idx = times + (size_t)c.time * tsize;
    const unsigned char *types = idx + c.time;

    /* The footer: "\n<POSIX TZ>\n" after the 64-bit block. */
    char footer[128] = "";
    if (tsize == 8) {
        size_t f = p + block_len(&c, tsize);
        if (f < len && b[f] == '\n') {
            size_t e = f + 1;
            while (e < len && b[e] != '\n')
                e++;
            if (e < len && e - f - 1 < sizeof footer) {
                memcpy(footer, b + f + 1, e - f - 1);
                footer[e - f - 1] = 0;
            }
        }
    }
    if (footer[0] && brix_tzif_posix_offset(footer, 0, NULL) < 0)
        footer[0] = 0; /* unreadable rule: fall back to the last transition */

    /* The last transition at or before t. */
    size_t lo = 0, hi = c.time;
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        int64_t tm = tsize == 8 ? be64(times + mid * 8) : (int32_t)be32(times + mid * 4);
        if (tm <= t)
            lo = mid + 1;
        else
            hi = mid;
    }
    rc = 0;
    if (!off)
        goto out;
    if (lo == c.time && footer[0]) {
        rc = brix_tzif_posix_offset(footer, t, off);
        goto out;
    }
    size_t type = lo == 0 ? 0 : idx[lo - 1];
    if (type >= c.type) {
        rc = -EINVAL;
        goto out;
    }
    *off = (int32_t)be32(types + type * 6);
out:
    brix_free(b);
    return rc;
}
