/*
 * Event-driven tree builder: a stack of open collections; each scalar or
 * finished collection is appended to the collection on top.
 */
#include "core/yaml.h"

#include "core/alloc.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <yaml.h>

#define MAX_DEPTH 64

static brix_yaml_node_t *node_new(brix_yaml_type_t t, const yaml_mark_t *m)
{
    brix_yaml_node_t *n = brix_calloc(1, sizeof *n);
    if (n) {
        n->type = t;
        n->line = (int)m->line + 1;
        n->col = (int)m->column + 1;
    }
    return n;
}

static int node_push(brix_yaml_node_t *parent, brix_yaml_node_t *child)
{
    size_t cnt = parent->type == BRIX_YAML_MAP ? parent->n * 2 : parent->n;
    /* A map holds pairs: count items, and bump n once a value arrives. */
    size_t slots = cnt + (parent->key_pending ? 1 : 0);
    brix_yaml_node_t **it = brix_realloc(parent->items, (slots + 1) * sizeof *it);
    if (!it)
        return -ENOMEM;
    parent->items = it;
    it[slots] = child;
    if (parent->type == BRIX_YAML_SEQ) {
        parent->n++;
    } else if (parent->key_pending) { /* this is the pending key's value */
        parent->key_pending = false;
        parent->n++;
    } else {
        parent->key_pending = true;
    }
    return 0;
}

void brix_yaml_free(brix_yaml_node_t *n)
{
    if (!n)
        return;
    if (n->type == BRIX_YAML_SCALAR) {
        brix_free(n->scalar);
    } else {
        size_t cnt = n->type == BRIX_YAML_MAP ? n->n * 2 + (n->key_pending ? 1 : 0) : n->n;
        for (size_t i = 0; i < cnt; i++)
            brix_yaml_free(n->items[i]);
        brix_free(n->items);
    }
    brix_free(n);
}

/* multi: every document becomes an item of a sequence node (empty documents
 * are skipped); otherwise a second document is an error. */
static int parse(const char *name, const char *text, size_t len, bool multi,
                 brix_yaml_node_t **root, char *err, size_t errlen)
{
    yaml_parser_t p;
    yaml_event_t ev;
    brix_yaml_node_t *stack[MAX_DEPTH];
    int depth = 0;
    brix_yaml_node_t *doc = NULL;
    int rc = -1, docs = 0;
    brix_yaml_node_t *all = NULL;

    *root = NULL;
    if (multi) {
        yaml_mark_t m0 = { 0, 0, 0 };
        if (!(all = node_new(BRIX_YAML_SEQ, &m0))) {
            snprintf(err, errlen, "%s: out of memory", name);
            return -1;
        }
    }
    if (!yaml_parser_initialize(&p)) {
        snprintf(err, errlen, "%s: out of memory", name);
        return -1;
    }
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    for (;;) {
        if (!yaml_parser_parse(&p, &ev)) {
            snprintf(err, errlen, "%s:%zu:%zu: %s%s%s", name, p.problem_mark.line + 1,
                     p.problem_mark.column + 1, p.problem ? p.problem : "syntax error",
                     p.context ? " " : "", p.context ? p.context : "");
            goto out;
        }
        brix_yaml_node_t *n = NULL;
        int done = 0;
        switch (ev.type) {
        case YAML_STREAM_END_EVENT:
            done = 1;
            break;
        case YAML_DOCUMENT_END_EVENT:
            if (multi && doc) {
                bool empty = brix_yaml_is_null(doc);
                if (empty) {
                    brix_yaml_free(doc);
                } else if (node_push(all, doc)) {
                    snprintf(err, errlen, "%s: out of memory", name);
                    yaml_event_delete(&ev);
                    goto out;
                }
                doc = NULL;
            }
            break;
        case YAML_DOCUMENT_START_EVENT:
            if (++docs > 1 && !multi) {
                snprintf(err, errlen, "%s:%zu:%zu: only one YAML document is allowed", name,
                         ev.start_mark.line + 1, ev.start_mark.column + 1);
                yaml_event_delete(&ev);
                goto out;
            }
            break;
        case YAML_ALIAS_EVENT:
            snprintf(err, errlen, "%s:%zu:%zu: YAML aliases are not supported", name,
                     ev.start_mark.line + 1, ev.start_mark.column + 1);
            yaml_event_delete(&ev);
            goto out;
        case YAML_SCALAR_EVENT:
            n = node_new(BRIX_YAML_SCALAR, &ev.start_mark);
            if (n) {
                n->scalar = brix_strndup((const char *)ev.data.scalar.value, ev.data.scalar.length);
                n->quoted = ev.data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                            ev.data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE ||
                            ev.data.scalar.style == YAML_LITERAL_SCALAR_STYLE ||
                            ev.data.scalar.style == YAML_FOLDED_SCALAR_STYLE;
                if (!n->scalar) {
                    brix_free(n);
                    n = NULL;
                }
            }
            break;
        case YAML_SEQUENCE_START_EVENT:
        case YAML_MAPPING_START_EVENT:
            if (depth >= MAX_DEPTH) {
                snprintf(err, errlen, "%s:%zu:%zu: nesting deeper than %d", name,
                         ev.start_mark.line + 1, ev.start_mark.column + 1, MAX_DEPTH);
                yaml_event_delete(&ev);
                goto out;
            }
            n = node_new(ev.type == YAML_SEQUENCE_START_EVENT ? BRIX_YAML_SEQ : BRIX_YAML_MAP,
                         &ev.start_mark);
            if (n && depth > 0 && node_push(stack[depth - 1], n)) {
                brix_yaml_free(n);
                n = NULL;
            }
            if (!n) {
                snprintf(err, errlen, "%s: out of memory", name);
                yaml_event_delete(&ev);
                goto out;
            }
            if (depth == 0)
                doc = n;
            stack[depth++] = n;
            yaml_event_delete(&ev);
            continue;
        case YAML_SEQUENCE_END_EVENT:
        case YAML_MAPPING_END_EVENT:
            depth--;
            break;
        default:
            break;
        }
        if (ev.type == YAML_SCALAR_EVENT) {
            if (!n) {
                snprintf(err, errlen, "%s: out of memory", name);
                yaml_event_delete(&ev);
                goto out;
            }
            if (depth == 0) {
                if (doc) {
                    brix_yaml_free(n);
                } else {
                    doc = n;
                }
            } else if (node_push(stack[depth - 1], n)) {
                brix_yaml_free(n);
                snprintf(err, errlen, "%s: out of memory", name);
                yaml_event_delete(&ev);
                goto out;
            }
        }
        yaml_event_delete(&ev);
        if (done)
            break;
    }
    if (multi) {
        *root = all;
        all = NULL;
        rc = 0;
        goto out;
    }
    if (!doc) {
        yaml_mark_t m = { 0, 0, 0 };
        doc = node_new(BRIX_YAML_MAP, &m);
        if (!doc) {
            snprintf(err, errlen, "%s: out of memory", name);
            goto out;
        }
    }
    *root = doc;
    doc = NULL;
    rc = 0;
out:
    /* On error `doc` owns every node pushed so far. */
    brix_yaml_free(doc);
    brix_yaml_free(all);
    yaml_parser_delete(&p);
    return rc;
}

int brix_yaml_parse(const char *name, const char *text, size_t len, brix_yaml_node_t **root,
                    char *err, size_t errlen)
{
    return parse(name, text, len, false, root, err, errlen);
}

int brix_yaml_parse_docs(const char *name, const char *text, size_t len, brix_yaml_node_t **docs,
                         char *err, size_t errlen)
{
    return parse(name, text, len, true, docs, err, errlen);
}

int brix_file_read(const char *path, char **out, size_t *outlen, char *err, size_t errlen)
{
    *out = NULL;
    *outlen = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        snprintf(err, errlen, "%s: %s", path, strerror(errno));
        return -1;
    }
    char *data = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (cap - len < 4096) {
            if (cap > (64u << 20)) {
                snprintf(err, errlen, "%s: file larger than 64 MiB", path);
                brix_free(data);
                fclose(f);
                return -1;
            }
            char *d = brix_realloc(data, cap + 65536);
            if (!d) {
                brix_free(data);
                fclose(f);
                snprintf(err, errlen, "%s: out of memory", path);
                return -1;
            }
            data = d;
            cap += 65536;
        }
        size_t r = fread(data + len, 1, cap - len, f);
        len += r;
        if (r == 0)
            break;
    }
    int bad = ferror(f);
    fclose(f);
    if (bad) {
        snprintf(err, errlen, "%s: read error", path);
        brix_free(data);
        return -1;
    }
    data[len] = '\0'; /* the loop leaves at least 4096 spare bytes */
    *out = data;
    *outlen = len;
    return 0;
}

static int load_file(const char *path, bool multi, brix_yaml_node_t **root, char *err,
                     size_t errlen)
{
    char *data;
    size_t len;
    *root = NULL;
    if (brix_file_read(path, &data, &len, err, errlen))
        return -1;
    int rc = parse(path, data ? data : "", len, multi, root, err, errlen);
    brix_free(data);
    return rc;
}

int brix_yaml_load_file(const char *path, brix_yaml_node_t **root, char *err, size_t errlen)
{
    return load_file(path, false, root, err, errlen);
}

int brix_yaml_load_file_docs(const char *path, brix_yaml_node_t **docs, char *err, size_t errlen)
{
    return load_file(path, true, docs, err, errlen);
}

brix_yaml_node_t *brix_yaml_get(const brix_yaml_node_t *map, const char *key)
{
    if (!map || map->type != BRIX_YAML_MAP)
        return NULL;
    for (size_t i = 0; i < map->n; i++) {
        brix_yaml_node_t *k = map->items[2 * i];
        if (k->type == BRIX_YAML_SCALAR && !strcmp(k->scalar, key))
            return map->items[2 * i + 1];
    }
    return NULL;
}

bool brix_yaml_is_null(const brix_yaml_node_t *n)
{
    return n && n->type == BRIX_YAML_SCALAR && !n->quoted &&
           (!n->scalar[0] || !strcmp(n->scalar, "~") || !strcmp(n->scalar, "null"));
}
