/*
 * Table-driven configuration. Values are always set through config_set_opt(),
 * whether they come from a default, a flag or a YAML file, so bounds and
 * syntax are checked in exactly one place.
 */
#include "core/config.h"

#include "core/alloc.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static bool name_eq(const char *a, const char *b)
{
    for (; *a && *b; a++, b++) {
        char x = *a == '_' ? '-' : *a, y = *b == '_' ? '-' : *b;
        if (x != y)
            return false;
    }
    return *a == *b;
}

static const brix_opt_t *find_opt(const brix_opt_t *tbl, const char *name, size_t len)
{
    for (const brix_opt_t *o = tbl; o->name; o++) {
        if (strlen(o->name) != len)
            continue;
        char tmp[128];
        if (len >= sizeof tmp)
            continue;
        memcpy(tmp, name, len);
        tmp[len] = '\0';
        if (name_eq(o->name, tmp))
            return o;
    }
    return NULL;
}

int brix_parse_bool(const char *s, bool *out)
{
    if (!strcasecmp(s, "true") || !strcasecmp(s, "yes") || !strcasecmp(s, "on") ||
        !strcmp(s, "1")) {
        *out = true;
        return 0;
    }
    if (!strcasecmp(s, "false") || !strcasecmp(s, "no") || !strcasecmp(s, "off") ||
        !strcmp(s, "0")) {
        *out = false;
        return 0;
    }
    return -1;
}

static int parse_scaled(const char *s, uint64_t *out, const char *const *units,
                        const uint64_t *mult, size_t nunits)
{
    errno = 0;
    char *end;
    if (!*s || *s == '-')
        return -1;
    double v = strtod(s, &end);
    if (errno || end == s || v < 0 || !isfinite(v))
        return -1;
    while (*end == ' ')
        end++;
    uint64_t m = 1;
    if (*end) {
        size_t i;
        for (i = 0; i < nunits; i++)
            if (!strcasecmp(end, units[i]))
                break;
        if (i == nunits)
            return -1;
        m = mult[i];
    } else if (nunits) {
        m = mult[0];
    }
    double r = v * (double)m;
    if (r > 1.8e19)
        return -1;
    *out = (uint64_t)llround(r);
    return 0;
}

int brix_parse_size(const char *s, uint64_t *out)
{
    static const char *const u[] = { "b", "k", "kb", "kib", "m", "mb", "mib", "g", "gb", "gib" };
    static const uint64_t m[] = { 1,       1024,    1024,    1024,    1 << 20,
                                  1 << 20, 1 << 20, 1 << 30, 1 << 30, 1 << 30 };
    return parse_scaled(s, out, u, m, sizeof u / sizeof *u);
}

int brix_parse_duration_ms(const char *s, uint64_t *out)
{
    static const char *const u[] = { "ms", "s", "m", "h" };
    static const uint64_t m[] = { 1, 1000, 60000, 3600000 };
    return parse_scaled(s, out, u, m, sizeof u / sizeof *u);
}

void brix_strlist_free(brix_strlist_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        brix_free(l->v[i]);
    brix_free(l->v);
    l->v = NULL;
    l->n = 0;
}

int brix_strlist_push(brix_strlist_t *l, const char *s)
{
    char **v = brix_realloc(l->v, (l->n + 1) * sizeof *v);
    if (!v)
        return -ENOMEM;
    l->v = v;
    if (!(v[l->n] = brix_strdup(s)))
        return -ENOMEM;
    l->n++;
    return 0;
}

static int check_bounds(const brix_opt_t *o, double v, char *err, size_t errlen)
{
    if (o->min <= o->max && (v < o->min || v > o->max)) {
        snprintf(err, errlen, "%s: %g is out of range [%g, %g]", o->name, v, o->min, o->max);
        return -1;
    }
    return 0;
}

/* `append` is set for the 2nd..nth value of a STRLIST on one command line. */
static int config_set_opt(const brix_opt_t *o, void *cfg, const char *v, bool append, char *err,
                          size_t errlen)
{
    void *field = (char *)cfg + o->offset;
    switch (o->type) {
    case BRIX_OPT_BOOL: {
        bool b;
        if (brix_parse_bool(v, &b)) {
            snprintf(err, errlen, "%s: expected true or false, got '%s'", o->name, v);
            return -1;
        }
        *(bool *)field = b;
        return 0;
    }
    case BRIX_OPT_INT: {
        errno = 0;
        char *end;
        long long x = strtoll(v, &end, 10);
        if (errno || end == v || *end) {
            snprintf(err, errlen, "%s: expected an integer, got '%s'", o->name, v);
            return -1;
        }
        if (check_bounds(o, (double)x, err, errlen))
            return -1;
        *(int64_t *)field = x;
        return 0;
    }
    case BRIX_OPT_DOUBLE: {
        errno = 0;
        char *end;
        double x = strtod(v, &end);
        if (errno || end == v || *end || !isfinite(x)) {
            snprintf(err, errlen, "%s: expected a number, got '%s'", o->name, v);
            return -1;
        }
        if (check_bounds(o, x, err, errlen))
            return -1;
        *(double *)field = x;
        return 0;
    }
    case BRIX_OPT_SIZE:
    case BRIX_OPT_DURATION: {
        uint64_t x;
        int rc = o->type == BRIX_OPT_SIZE ? brix_parse_size(v, &x) : brix_parse_duration_ms(v, &x);
        if (rc) {
            snprintf(err, errlen, "%s: expected %s, got '%s'", o->name,
                     o->type == BRIX_OPT_SIZE ? "a size like 64k, 16m, 1g"
                                              : "a duration like 500ms, 30s, 5m",
                     v);
            return -1;
        }
        if (check_bounds(o, (double)x, err, errlen))
            return -1;
        *(uint64_t *)field = x;
        return 0;
    }
    case BRIX_OPT_STRING: {
        char *s = brix_strdup(v);
        if (!s) {
            snprintf(err, errlen, "%s: out of memory", o->name);
            return -1;
        }
        brix_free(*(char **)field);
        *(char **)field = s;
        return 0;
    }
    case BRIX_OPT_STRLIST: {
        brix_strlist_t *l = field;
        if (!append)
            brix_strlist_free(l);
        if (!*v && !append)
            return 0; /* "" clears the list */
        if (brix_strlist_push(l, v)) {
            snprintf(err, errlen, "%s: out of memory", o->name);
            return -1;
        }
        return 0;
    }
    }
    snprintf(err, errlen, "%s: bad option type", o->name);
    return -1;
}

int brix_config_set(const brix_opt_t *tbl, void *cfg, const char *name, const char *value,
                    char *err, size_t errlen)
{
    const brix_opt_t *o = find_opt(tbl, name, strlen(name));
    if (!o) {
        snprintf(err, errlen, "unknown option '%s'", name);
        return -1;
    }
    return config_set_opt(o, cfg, value, false, err, errlen);
}

int brix_config_defaults(const brix_opt_t *tbl, void *cfg, char *err, size_t errlen)
{
    for (const brix_opt_t *o = tbl; o->name; o++) {
        if (o->defval && config_set_opt(o, cfg, o->defval, false, err, errlen))
            return -1;
    }
    return 0;
}

int brix_config_parse_args(const brix_opt_t *tbl, void *cfg, int argc, char **argv, int first,
                           char *err, size_t errlen)
{
    /* A list flag given several times accumulates; its first use on this
     * command line replaces what defaults or a config file set. */
    uint64_t seen[4] = { 0 };
    for (int i = first; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "--help") || !strcmp(a, "-h"))
            return 1;
        if (strncmp(a, "--", 2) || !a[2]) {
            snprintf(err, errlen, "unexpected argument '%s'", a);
            return -1;
        }
        a += 2;
        const char *eq = strchr(a, '=');
        size_t nlen = eq ? (size_t)(eq - a) : strlen(a);
        const brix_opt_t *o = find_opt(tbl, a, nlen);
        bool negated = false;
        if (!o && nlen > 3 && !strncmp(a, "no-", 3)) {
            o = find_opt(tbl, a + 3, nlen - 3);
            if (o && o->type != BRIX_OPT_BOOL)
                o = NULL;
            negated = o != NULL;
        }
        if (!o) {
            snprintf(err, errlen, "unknown option '--%.*s' (see --help)", (int)nlen, a);
            return -1;
        }
        if (o->type == BRIX_OPT_BOOL && !eq) {
            /* A bare boolean flag; an explicit true/false may follow. */
            const char *v = negated ? "false" : "true";
            bool b;
            if (i + 1 < argc && !brix_parse_bool(argv[i + 1], &b)) {
                v = (b != negated) ? "true" : "false";
                i++;
            }
            if (config_set_opt(o, cfg, v, false, err, errlen))
                return -1;
            continue;
        }
        if (negated) {
            snprintf(err, errlen, "--no-%s takes no value", o->name);
            return -1;
        }
        size_t oi = (size_t)(o - tbl);
        bool again = o->type == BRIX_OPT_STRLIST && oi < 256 && (seen[oi / 64] >> (oi % 64)) & 1;
        if (oi < 256)
            seen[oi / 64] |= 1ull << (oi % 64);
        if (eq) {
            if (config_set_opt(o, cfg, eq + 1, again, err, errlen))
                return -1;
            continue;
        }
        if (i + 1 >= argc) {
            snprintf(err, errlen, "--%s needs a value", o->name);
            return -1;
        }
        if (config_set_opt(o, cfg, argv[++i], again, err, errlen))
            return -1;
        /* nargs='+': a list keeps taking values until the next flag. */
        while (o->type == BRIX_OPT_STRLIST && i + 1 < argc && strncmp(argv[i + 1], "--", 2)) {
            if (config_set_opt(o, cfg, argv[++i], true, err, errlen))
                return -1;
        }
    }
    return 0;
}

int brix_config_apply_yaml(const brix_opt_t *tbl, void *cfg, const char *file,
                           const brix_yaml_node_t *map, char *err, size_t errlen)
{
    char e[256];
    if (map->type != BRIX_YAML_MAP) {
        snprintf(err, errlen, "%s:%d:%d: expected a mapping of option: value", file, map->line,
                 map->col);
        return -1;
    }
    for (size_t i = 0; i < map->n; i++) {
        const brix_yaml_node_t *k = map->items[2 * i], *v = map->items[2 * i + 1];
        if (k->type != BRIX_YAML_SCALAR) {
            snprintf(err, errlen, "%s:%d:%d: option names must be plain strings", file, k->line,
                     k->col);
            return -1;
        }
        const brix_opt_t *o = find_opt(tbl, k->scalar, strlen(k->scalar));
        if (!o) {
            snprintf(err, errlen, "%s:%d:%d: unknown option '%s'", file, k->line, k->col,
                     k->scalar);
            return -1;
        }
        if (v->type == BRIX_YAML_SEQ) {
            if (o->type != BRIX_OPT_STRLIST) {
                snprintf(err, errlen, "%s:%d:%d: %s takes a single value, not a list", file,
                         v->line, v->col, o->name);
                return -1;
            }
            brix_strlist_free((brix_strlist_t *)((char *)cfg + o->offset));
            for (size_t j = 0; j < v->n; j++) {
                const brix_yaml_node_t *it = v->items[j];
                if (it->type != BRIX_YAML_SCALAR) {
                    snprintf(err, errlen, "%s:%d:%d: %s: list items must be strings", file,
                             it->line, it->col, o->name);
                    return -1;
                }
                if (config_set_opt(o, cfg, it->scalar, true, e, sizeof e)) {
                    snprintf(err, errlen, "%s:%d:%d: %s", file, it->line, it->col, e);
                    return -1;
                }
            }
            continue;
        }
        if (v->type != BRIX_YAML_SCALAR) {
            snprintf(err, errlen, "%s:%d:%d: %s: expected a value, not a mapping", file, v->line,
                     v->col, o->name);
            return -1;
        }
        if (brix_yaml_is_null(v)) {
            /* `key:` or `key: ~` means "not set": the option's default */
            void *field = (char *)cfg + o->offset;
            if (o->type == BRIX_OPT_STRING) {
                brix_free(*(char **)field);
                *(char **)field = NULL;
            } else if (o->type == BRIX_OPT_STRLIST) {
                brix_strlist_free(field);
            }
            if (o->defval && config_set_opt(o, cfg, o->defval, false, e, sizeof e)) {
                snprintf(err, errlen, "%s:%d:%d: %s", file, v->line, v->col, e);
                return -1;
            }
            continue;
        }
        if (config_set_opt(o, cfg, v->scalar, false, e, sizeof e)) {
            snprintf(err, errlen, "%s:%d:%d: %s", file, v->line, v->col, e);
            return -1;
        }
    }
    return 0;
}

int brix_config_load_file(const brix_opt_t *tbl, void *cfg, const char *path, char *err,
                          size_t errlen)
{
    brix_yaml_node_t *root;
    if (brix_yaml_load_file(path, &root, err, errlen))
        return -1;
    int rc = brix_config_apply_yaml(tbl, cfg, path, root, err, errlen);
    brix_yaml_free(root);
    return rc;
}

void brix_config_usage(FILE *out, const brix_opt_t *tbl, const char *usage, const char *about)
{
    fprintf(out, "usage: %s\n", usage);
    if (about)
        fprintf(out, "\n%s\n", about);
    fprintf(out, "\noptions:\n");
    for (const brix_opt_t *o = tbl; o->name; o++) {
        char flag[96];
        const char *mv = o->metavar;
        if (!mv) {
            switch (o->type) {
            case BRIX_OPT_BOOL:
                mv = NULL;
                break;
            case BRIX_OPT_INT:
                mv = "N";
                break;
            case BRIX_OPT_DOUBLE:
                mv = "F";
                break;
            case BRIX_OPT_SIZE:
                mv = "SIZE";
                break;
            case BRIX_OPT_DURATION:
                mv = "DURATION";
                break;
            case BRIX_OPT_STRLIST:
                mv = "VALUE [VALUE ...]";
                break;
            default:
                mv = "VALUE";
                break;
            }
        }
        if (o->type == BRIX_OPT_BOOL)
            snprintf(flag, sizeof flag, "--[no-]%s", o->name);
        else
            snprintf(flag, sizeof flag, "--%s %s", o->name, mv);
        fprintf(out, "  %-36s %s", flag, o->help ? o->help : "");
        if (o->defval && *o->defval)
            fprintf(out, " (default: %s)", o->defval);
        fputc('\n', out);
    }
    fprintf(out, "  %-36s %s\n", "-h, --help", "show this help and exit");
}

void brix_config_free(const brix_opt_t *tbl, void *cfg)
{
    for (const brix_opt_t *o = tbl; o->name; o++) {
        void *field = (char *)cfg + o->offset;
        if (o->type == BRIX_OPT_STRING) {
            brix_free(*(char **)field);
            *(char **)field = NULL;
        } else if (o->type == BRIX_OPT_STRLIST) {
            brix_strlist_free(field);
        }
    }
}
