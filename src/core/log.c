/*
 * Logging: the level is a relaxed atomic so it can change at run time (SIGHUP
 * reload) without locks; the component name is set once at start-up.
 */
#include "core/log.h"

#include "core/time.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

static const char *g_component = "brix";
static atomic_int g_level = BRIX_LOG_INFO;

static const char *level_names[] = { "DEBUG", "INFO", "WARN", "ERROR" };

void brix_log_init(const char *component, brix_log_level_t level)
{
    if (component)
        g_component = component;
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

void brix_log(brix_log_level_t level, const char *req_id, const char *fmt, ...)
{
    if ((int)level < atomic_load_explicit(&g_level, memory_order_relaxed) || level >= BRIX_LOG_OFF)
        return;
    char line[2048];
    char ts[32];
    brix_time_iso8601(ts, brix_wall_ms());
    int n = snprintf(line, sizeof line, "%s %-5s %s[%d]: ", ts, level_names[level], g_component,
                     (int)getpid());
    if (req_id && *req_id && n > 0 && (size_t)n < sizeof line)
        n += snprintf(line + n, sizeof line - (size_t)n, "req=%s ", req_id);
    if (n > 0 && (size_t)n < sizeof line) {
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
    }
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line - 1) {
        n = (int)sizeof line - 5;
        memcpy(line + n, "...", 3);
        n += 3;
    }
    line[n++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, (size_t)n);
    (void)w;
}
