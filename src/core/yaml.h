/*
 * yaml — a small document tree over libyaml, with positions.
 *
 * libyaml does the parsing; this module only keeps the events as a tree of
 * scalars, sequences and mappings, each with its 1-based line and column, so
 * that config and object loaders can report "file:line:col: what is wrong".
 * Anchors/aliases and tags are rejected (configs do not need them).
 * The whole tree is freed by brix_yaml_free(root).
 */
#ifndef BRIX_CORE_YAML_H
#define BRIX_CORE_YAML_H

#include <stdbool.h>
#include <stddef.h>

typedef enum brix_yaml_type {
    BRIX_YAML_SCALAR,
    BRIX_YAML_SEQ,
    BRIX_YAML_MAP,
} brix_yaml_type_t;

typedef struct brix_yaml_node brix_yaml_node_t;

struct brix_yaml_node {
    brix_yaml_type_t type;
    int line, col;
    char *scalar;             /* SCALAR: the value, NUL-terminated */
    bool quoted;              /* SCALAR: written in quotes (so "null" is a string) */
    bool key_pending;         /* MAP while building: a key has no value yet */
    size_t n;                 /* SEQ: items; MAP: pairs */
    brix_yaml_node_t **items; /* SEQ: n items; MAP: 2n nodes, key then value */
};

/* Parses text (len bytes) into *root. On error returns -1 and writes
 * "name:line:col: message" into err. An empty document gives an empty map. */
int brix_yaml_parse(const char *name, const char *text, size_t len, brix_yaml_node_t **root,
                    char *err, size_t errlen);
/* Reads and parses a file. */
int brix_yaml_load_file(const char *path, brix_yaml_node_t **root, char *err, size_t errlen);
/* Multi-document ("---"-separated) variants: *docs is a SEQ node whose items
 * are the non-empty documents, in order (possibly none). */
int brix_yaml_parse_docs(const char *name, const char *text, size_t len, brix_yaml_node_t **docs,
                         char *err, size_t errlen);
int brix_yaml_load_file_docs(const char *path, brix_yaml_node_t **docs, char *err, size_t errlen);
/* Reads a whole file (up to 64 MiB) into a brix_malloc'd, NUL-terminated
 * buffer. 0, or -1 with "path: reason" in err. */
int brix_file_read(const char *path, char **out, size_t *outlen, char *err, size_t errlen);
void brix_yaml_free(brix_yaml_node_t *n);

/* Mapping lookup by key (exact match); NULL when absent or n is not a map. */
brix_yaml_node_t *brix_yaml_get(const brix_yaml_node_t *map, const char *key);
/* True for an unquoted null scalar ("", "~", "null"). */
bool brix_yaml_is_null(const brix_yaml_node_t *n);

#endif
