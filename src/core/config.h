/*
 * config — one declarative table of options per component (cf. redis config.c).
 *
 * Each entry names an option, its type, where it lives in the component's
 * config struct, its default (as text, parsed by the same setter as any other
 * value), its bounds and its help. The same table drives command-line parsing
 * (`--name value`, `--name=value`, `--no-name` for booleans), YAML files
 * (keys with '-' or '_'), runtime updates, defaults and `--help` output, so the
 * three can never disagree. Errors name the flag or file:line:col.
 */
#ifndef BRIX_CORE_CONFIG_H
#define BRIX_CORE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "core/yaml.h"

typedef enum brix_opt_type {
    BRIX_OPT_BOOL,    /* bool */
    BRIX_OPT_INT,     /* int64_t, bounded by [min, max] */
    BRIX_OPT_DOUBLE,  /* double, bounded by [min, max] */
    BRIX_OPT_STRING,  /* char * (owned, brix_malloc) */
    BRIX_OPT_STRLIST, /* brix_strlist_t; on the CLI takes one or more values (nargs='+') */
    BRIX_OPT_SIZE,    /* uint64_t bytes; accepts k/m/g suffixes (KiB...) */
    BRIX_OPT_DURATION /* uint64_t milliseconds; accepts ms/s/m suffixes, bare = ms */
} brix_opt_type_t;

typedef struct brix_strlist {
    size_t n;
    char **v;
} brix_strlist_t;

typedef struct brix_opt {
    const char *name; /* long flag without "--", e.g. "max-num-seqs" */
    brix_opt_type_t type;
    size_t offset;      /* offsetof(config struct, field) */
    const char *defval; /* textual default, NULL = zero/empty */
    double min, max;    /* bounds for numeric types (ignored when min > max) */
    const char *metavar;
    const char *help;
} brix_opt_t;

#define BRIX_OPT_END                                                                               \
    {                                                                                              \
        NULL, 0, 0, NULL, 0, 0, NULL, NULL                                                         \
    }

/* Sets every option to its default. Returns 0 or -1 (bad default: a bug). */
int brix_config_defaults(const brix_opt_t *tbl, void *cfg, char *err, size_t errlen);
/* Sets one option from text. `name` may use '-' or '_'. Returns 0, or -1 with err. */
int brix_config_set(const brix_opt_t *tbl, void *cfg, const char *name, const char *value,
                    char *err, size_t errlen);
/*
 * Parses argv[first..argc). Recognises --help/-h (returns 1) and leaves
 * everything else to the table; a positional argument or unknown flag is an
 * error (-1). A component that takes --config FILE lists it in its table as a
 * STRING and loads the file after parsing, then parses argv again so flags win.
 */
int brix_config_parse_args(const brix_opt_t *tbl, void *cfg, int argc, char **argv, int first,
                           char *err, size_t errlen);
/* Applies a YAML mapping of option: value (sequences allowed for STRLIST). */
int brix_config_apply_yaml(const brix_opt_t *tbl, void *cfg, const char *file,
                           const brix_yaml_node_t *map, char *err, size_t errlen);
int brix_config_load_file(const brix_opt_t *tbl, void *cfg, const char *path, char *err,
                          size_t errlen);
void brix_config_usage(FILE *out, const brix_opt_t *tbl, const char *usage, const char *about);
/* Frees strings and lists owned by cfg. */
void brix_config_free(const brix_opt_t *tbl, void *cfg);

void brix_strlist_free(brix_strlist_t *l);
int brix_strlist_push(brix_strlist_t *l, const char *s);

/* Parsing helpers shared with other modules (same syntax as options). */
int brix_parse_size(const char *s, uint64_t *out);
int brix_parse_duration_ms(const char *s, uint64_t *out);
int brix_parse_bool(const char *s, bool *out);

#endif
