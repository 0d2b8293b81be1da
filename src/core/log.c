/*
 * Logging: the level is a relaxed atomic so it can change at run time (SIGHUP
 * reload) without locks; the component name is set once at start-up.
 */
#include "core/log.h"

#include "core/time.h"

#include <stdint.h>

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const char *g_component = "brix";
static int g_pid; /* cached: getpid() is a system call in glibc >= 2.25 */
static atomic_int g_level = BRIX_LOG_INFO;

static const char *level_names[] = { "DEBUG", "INFO", "WARN", "ERROR" };

void brix_log_init(const char *component, brix_log_level_t level)
{
    if (component)
        g_component = component;
    g_pid = (int)getpid();
    atomic_store(&g_level, (int)level);
}

void brix_log_set_level(brix_log_level_t level)
{
    atomic_store(&g_level, (int)level);
}

brix_log_level_t brix_log_get_level(void)
{
    return (brix_log_level_t)atomic_load_explicit(&g_level, memory_order_relaxed);
}

int brix_log_level_parse(const char *s)
{
    if (!strcasecmp(s, "debug"))
        return BRIX_LOG_DEBUG;
    if (!strcasecmp(s, "info"))
        return BRIX_LOG_INFO;
    if (!strcasecmp(s, "warn") || !strcasecmp(s, "warning"))
        return BRIX_LOG_WARN;
    if (!strcasecmp(s, "error"))
        return BRIX_LOG_ERROR;
    if (!strcasecmp(s, "off"))
        return BRIX_LOG_OFF;
    return -1;
}

/* The line prefix up to the milliseconds changes once a second: cached per
 * thread, so a line costs one small snprintf instead of gmtime + strftime. */
static size_t line_prefix(char *out, size_t cap, brix_log_level_t level, const char *req_id)
{
    static _Thread_local char ts[32];
    static _Thread_local uint64_t ts_sec = UINT64_MAX;
    uint64_t ms = brix_wall_ms();
    if (ms / 1000 != ts_sec) {
        ts_sec = ms / 1000;
        brix_time_iso8601(ts, ts_sec * 1000);
        ts[19] = '\0'; /* keep "YYYY-MM-DDTHH:MM:SS", the ms are added below */
    }
    int n = snprintf(out, cap, "%s.%03uZ %-5s %s[%d]: ", ts, (unsigned)(ms % 1000),
                     level_names[level], g_component, g_pid);
    if (n < 0)
        return 0;
    if (req_id && *req_id && (size_t)n < cap) {
        int m = snprintf(out + n, cap - (size_t)n, "req=%s ", req_id);
        if (m > 0)
            n += m;
    }
    return (size_t)n < cap ? (size_t)n : cap - 1;
}

static size_t format_line(char *line, size_t cap, brix_log_level_t level, const char *req_id,
                          const char *fmt, va_list ap)
{
    size_t n = line_prefix(line, cap, level, req_id);
    int m = vsnprintf(line + n, cap - n, fmt, ap);
    if (m > 0)
        n += (size_t)m;
    if (n >= cap - 1) {
        n = cap - 5;
        memcpy(line + n, "...", 3);
        n += 3;
    }
    line[n++] = '\n';
    return n;
}

void brix_log(brix_log_level_t level, const char *req_id, const char *fmt, ...)
{
    if ((int)level < atomic_load_explicit(&g_level, memory_order_relaxed) || level >= BRIX_LOG_OFF)
        return;
    char line[2048];
    va_list ap;
    va_start(ap, fmt);
    size_t n = format_line(line, sizeof line, level, req_id, fmt, ap);
    va_end(ap);
    brix_log_write(line, n);
}

void brix_log_to(brix_buf_t *b, brix_log_level_t level, const char *req_id, const char *fmt, ...)
{
    if ((int)level < atomic_load_explicit(&g_level, memory_order_relaxed) || level >= BRIX_LOG_OFF)
        return;
    if (brix_buf_reserve(b, 2048))
        return;
    va_list ap;
    va_start(ap, fmt);
    b->len += format_line(b->data + b->len, 2048, level, req_id, fmt, ap);
    va_end(ap);
    b->data[b->len] = '\0';
}

void brix_log_write(const char *data, size_t len)
{
    while (len) {
        ssize_t w = write(STDERR_FILENO, data, len);
        if (w <= 0)
            return;
        data += w;
        len -= (size_t)w;
    }
}
