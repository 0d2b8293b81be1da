/*
 * log — leveled, line-atomic logging to stderr.
 *
 * One line per call: "<ISO-8601 UTC> <LEVEL> <component>[<pid>]: [req=<id>] message".
 * Each line is formatted into a stack buffer and written with one write(2), so
 * lines from different threads never interleave. Integration tests fail on any
 * ERROR line they did not expect, so ERROR means "an operator must look".
 */
#ifndef BRIX_CORE_LOG_H
#define BRIX_CORE_LOG_H

#include <stddef.h>

#include "core/buf.h"

typedef enum brix_log_level {
    BRIX_LOG_DEBUG = 0,
    BRIX_LOG_INFO = 1,
    BRIX_LOG_WARN = 2,
    BRIX_LOG_ERROR = 3,
    BRIX_LOG_OFF = 4,
} brix_log_level_t;

/* Sets the component name shown on each line (static string) and the level. */
void brix_log_init(const char *component, brix_log_level_t level);
void brix_log_set_level(brix_log_level_t level);
brix_log_level_t brix_log_get_level(void);
/* Parses "debug|info|warn|warning|error|off"; returns -1 when unknown. */
int brix_log_level_parse(const char *s);

void brix_log(brix_log_level_t level, const char *req_id, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Appends the same line to a buffer instead (for a writer that batches many
 * lines per write, like the gateway's access log); flush with brix_log_write. */
void brix_log_to(brix_buf_t *b, brix_log_level_t level, const char *req_id, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
void brix_log_write(const char *data, size_t len);

#define BRIX_DEBUG(...)                                                                            \
    do {                                                                                           \
        if (brix_log_get_level() <= BRIX_LOG_DEBUG)                                                \
            brix_log(BRIX_LOG_DEBUG, NULL, __VA_ARGS__);                                           \
    } while (0)
#define BRIX_INFO(...)  brix_log(BRIX_LOG_INFO, NULL, __VA_ARGS__)
#define BRIX_WARN(...)  brix_log(BRIX_LOG_WARN, NULL, __VA_ARGS__)
#define BRIX_ERROR(...) brix_log(BRIX_LOG_ERROR, NULL, __VA_ARGS__)

#endif
