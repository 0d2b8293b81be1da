/*
 * Strict, position-aware validation of controller objects. Each field parser
 * takes the node and a dotted field path and, on failure, writes
 * "file:line:col: path: reason" once; callers just propagate -1. Unknown keys
 * in spec are errors (a typo like `replcas` must not silently mean 1), while
 * metadata keys Kubernetes sets (namespace, uid, …) are accepted and ignored.
 */
#include "controller/objects.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "controller/auth.h"
#include "core/alloc.h"
#include "core/time.h"

/* ------------------------------------------------------------- kinds -- */

static const struct {
    const char *alias;
    brix_kind_t kind;
} kind_aliases[] = {
    { "deployments", BRIX_KIND_DEPLOYMENT },
    { "deployment", BRIX_KIND_DEPLOYMENT },
    { "deploy", BRIX_KIND_DEPLOYMENT },
    { "modeldeployment", BRIX_KIND_DEPLOYMENT },
    { "modeldeployments", BRIX_KIND_DEPLOYMENT },
    { "md", BRIX_KIND_DEPLOYMENT },
    { "adapters", BRIX_KIND_ADAPTER },
    { "adapter", BRIX_KIND_ADAPTER },
    { "modeladapter", BRIX_KIND_ADAPTER },
    { "modeladapters", BRIX_KIND_ADAPTER },
    { "ma", BRIX_KIND_ADAPTER },
    { "lora", BRIX_KIND_ADAPTER },
    { "replicas", BRIX_KIND_REPLICA },
    { "replica", BRIX_KIND_REPLICA },
    { "pods", BRIX_KIND_REPLICA },
    { "pod", BRIX_KIND_REPLICA },
    { "po", BRIX_KIND_REPLICA },
    { "rs", BRIX_KIND_REPLICA },
    { "cluster", BRIX_KIND_CLUSTER },
};

brix_kind_t brix_kind_parse(const char *s)
{
    for (size_t i = 0; s && i < sizeof kind_aliases / sizeof *kind_aliases; i++)
        if (!strcasecmp(s, kind_aliases[i].alias))
            return kind_aliases[i].kind;
    return BRIX_KIND_NONE;
}

const char *brix_kind_name(brix_kind_t k)
{
    switch (k) {
    case BRIX_KIND_DEPLOYMENT:
        return "ModelDeployment";
    case BRIX_KIND_ADAPTER:
        return "ModelAdapter";
    case BRIX_KIND_REPLICA:
        return "Replica";
    case BRIX_KIND_CLUSTER:
        return "Cluster";
    default:
        return "?";
    }
}

const char *brix_kind_plural(brix_kind_t k)
{
    switch (k) {
    case BRIX_KIND_DEPLOYMENT:
        return "deployments";
    case BRIX_KIND_ADAPTER:
        return "adapters";
    case BRIX_KIND_REPLICA:
        return "replicas";
    default:
        return "?";
    }
}

/* ------------------------------------------------------------ labels -- */

int brix_labels_set(brix_labels_t *l, const char *k, const char *v)
{
    for (size_t i = 0; i < l->n; i++) {
        if (!strcmp(l->k[i], k)) {
            char *nv = brix_strdup(v);
            if (!nv)
                return -ENOMEM;
            brix_free(l->v[i]);
            l->v[i] = nv;
            return 0;
        }
    }
    char **nk = brix_realloc(l->k, (l->n + 1) * sizeof *nk);
    if (!nk)
        return -ENOMEM;
    l->k = nk;
    char **nv = brix_realloc(l->v, (l->n + 1) * sizeof *nv);
    if (!nv)
        return -ENOMEM;
    l->v = nv;
    char *a = brix_strdup(k), *b = brix_strdup(v);
    if (!a || !b) {
        brix_free(a);
        brix_free(b);
        return -ENOMEM;
    }
    l->k[l->n] = a;
    l->v[l->n] = b;
    l->n++;
    return 0;
}

const char *brix_labels_get(const brix_labels_t *l, const char *k)
{
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->k[i], k))
            return l->v[i];
    return NULL;
}

bool brix_labels_match(const brix_labels_t *sel, const brix_labels_t *labels)
{
    for (size_t i = 0; i < sel->n; i++) {
        const char *v = brix_labels_get(labels, sel->k[i]);
        if (!v || strcmp(v, sel->v[i]))
            return false;
    }
    return true;
}

void brix_labels_free(brix_labels_t *l)
{
    for (size_t i = 0; i < l->n; i++) {
        brix_free(l->k[i]);
        brix_free(l->v[i]);
    }
    brix_free(l->k);
    brix_free(l->v);
    memset(l, 0, sizeof *l);
}

int brix_labels_json(brix_buf_t *b, const brix_labels_t *l)
{
    int rc = brix_buf_append_char(b, '{');
    for (size_t i = 0; !rc && i < l->n; i++) {
        if (i)
            rc |= brix_buf_append_char(b, ',');
        rc |= brix_buf_append_json_str(b, l->k[i], strlen(l->k[i]));
        rc |= brix_buf_append_char(b, ':');
        rc |= brix_buf_append_json_str(b, l->v[i], strlen(l->v[i]));
    }
    return rc | brix_buf_append_char(b, '}');
}

/* -------------------------------------------------------- validation -- */

typedef struct vctx {
    const char *file;
    const char *base_dir;
    char *err;
    size_t errlen;
} vctx_t;

__attribute__((format(printf, 4, 5))) static int fail(vctx_t *v, const brix_yaml_node_t *n,
                                                      const char *path, const char *fmt, ...)
{
    int off = snprintf(v->err, v->errlen, "%s:%d:%d: %s%s", v->file, n ? n->line : 1,
                       n ? n->col : 1, path ? path : "", path && *path ? ": " : "");
    if (off < 0 || (size_t)off >= v->errlen)
        return -1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->err + off, v->errlen - (size_t)off, fmt, ap);
    va_end(ap);
    return -1;
}

static int want_map(vctx_t *v, const brix_yaml_node_t *n, const char *path)
{
    if (!n || n->type != BRIX_YAML_MAP)
        return fail(v, n, path, "expected a mapping");
    return 0;
}

/* Every key of map n is one of keys[] (NULL-terminated). */
static int known_keys(vctx_t *v, const brix_yaml_node_t *n, const char *path,
                      const char *const *keys)
{
    for (size_t i = 0; i < n->n; i++) {
        const brix_yaml_node_t *k = n->items[2 * i];
        bool ok = false;
        for (size_t j = 0; keys[j] && !ok; j++)
            ok = k->type == BRIX_YAML_SCALAR && !strcmp(k->scalar, keys[j]);
        if (!ok) {
            char list[256] = "";
            for (size_t j = 0; keys[j]; j++) {
                size_t l = strlen(list);
                snprintf(list + l, sizeof list - l, "%s%s", j ? ", " : "", keys[j]);
            }
            return fail(v, k, path, "unknown field '%s' (known: %s)",
                        k->type == BRIX_YAML_SCALAR ? k->scalar : "?", list);
        }
    }
    return 0;
}

static int get_str(vctx_t *v, const brix_yaml_node_t *n, const char *path, char **out)
{
    if (!n || n->type != BRIX_YAML_SCALAR || brix_yaml_is_null(n))
        return fail(v, n, path, "expected a string");
    char *s = brix_strdup(n->scalar);
    if (!s)
        return fail(v, n, path, "out of memory");
    brix_free(*out);
    *out = s;
    return 0;
}

static int get_int(vctx_t *v, const brix_yaml_node_t *n, const char *path, int64_t min, int64_t max,
                   int64_t *out)
{
    if (!n || n->type != BRIX_YAML_SCALAR || n->quoted || !n->scalar[0])
        return fail(v, n, path, "expected an integer");
    char *end;
    errno = 0;
    long long x = strtoll(n->scalar, &end, 10);
    if (*end || errno)
        return fail(v, n, path, "expected an integer, got '%s'", n->scalar);
    if (x < min || x > max)
        return fail(v, n, path, "%lld is out of range [%lld, %lld]", x, (long long)min,
                    (long long)max);
    *out = x;
    return 0;
}

static int get_bool(vctx_t *v, const brix_yaml_node_t *n, const char *path, bool *out)
{
    if (!n || n->type != BRIX_YAML_SCALAR || brix_parse_bool(n->scalar, out))
        return fail(v, n, path, "expected true or false");
    return 0;
}

/* "30s", "5m", "1500ms", or a bare integer of seconds (as Kubernetes fields). */
static int get_duration(vctx_t *v, const brix_yaml_node_t *n, const char *path, int64_t *out)
{
    if (!n || n->type != BRIX_YAML_SCALAR || !n->scalar[0])
        return fail(v, n, path, "expected a duration such as 30s, 10m or 1500ms");
    const char *s = n->scalar;
    size_t l = strlen(s);
    bool bare = isdigit((unsigned char)s[l - 1]);
    uint64_t ms;
    if (bare) {
        char *end;
        errno = 0;
        unsigned long long x = strtoull(s, &end, 10);
        if (*end || errno || x > 100000000ull)
            return fail(v, n, path, "expected a duration such as 30s, 10m or 1500ms");
        ms = x * 1000;
    } else if (brix_parse_duration_ms(s, &ms) || ms > 100000000000ull) {
        return fail(v, n, path, "expected a duration such as 30s, 10m or 1500ms, got '%s'", s);
    }
    *out = (int64_t)ms;
    return 0;
}

static int get_strlist(vctx_t *v, const brix_yaml_node_t *n, const char *path, brix_strlist_t *out)
{
    if (!n || n->type != BRIX_YAML_SEQ)
        return fail(v, n, path, "expected a list of strings");
    brix_strlist_free(out);
    for (size_t i = 0; i < n->n; i++) {
        const brix_yaml_node_t *it = n->items[i];
        if (it->type != BRIX_YAML_SCALAR)
            return fail(v, it, path, "item %zu: expected a string", i);
        if (brix_strlist_push(out, it->scalar))
            return fail(v, it, path, "out of memory");
    }
    return 0;
}

static int get_labels(vctx_t *v, const brix_yaml_node_t *n, const char *path, brix_labels_t *out)
{
    if (!n || brix_yaml_is_null(n))
        return 0;
    if (want_map(v, n, path))
        return -1;
    for (size_t i = 0; i < n->n; i++) {
        const brix_yaml_node_t *k = n->items[2 * i], *val = n->items[2 * i + 1];
        if (k->type != BRIX_YAML_SCALAR || !k->scalar[0] || strlen(k->scalar) > 253)
            return fail(v, k, path, "keys must be non-empty strings of at most 253 characters");
        if (val->type != BRIX_YAML_SCALAR)
            return fail(v, val, path, "%s: values must be strings", k->scalar);
        if (brix_labels_set(out, k->scalar, val->scalar))
            return fail(v, k, path, "out of memory");
    }
    return 0;
}

bool brix_obj_name_valid(const char *s)
{
    size_t l = strlen(s);
    if (!l || l > 253)
        return false;
    for (size_t i = 0; i < l; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && c != '-' && c != '.')
            return false;
        if ((i == 0 || i == l - 1 || s[i - 1] == '.' || s[i + 1] == '.') && !alnum)
            return false;
    }
    return true;
}

static int64_t parse_iso_ms(const char *s)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    const char *end = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm);
    if (!end)
        return 0;
    int64_t ms = (int64_t)timegm(&tm) * 1000;
    if (*end == '.')
        ms += strtol(end + 1, NULL, 10) % 1000;
    return ms;
}

static int parse_meta(vctx_t *v, const brix_yaml_node_t *n, brix_meta_t *m)
{
    if (!n)
        return fail(v, NULL, "metadata", "missing (metadata.name is required)");
    if (want_map(v, n, "metadata"))
        return -1;
    const brix_yaml_node_t *name = brix_yaml_get(n, "name");
    if (!name)
        return fail(v, n, "metadata.name", "missing");
    if (get_str(v, name, "metadata.name", &m->name))
        return -1;
    if (!brix_obj_name_valid(m->name))
        return fail(v, name, "metadata.name",
                    "'%s' is not a valid name (lowercase letters, digits, '-' and '.', starting "
                    "and ending with a letter or digit, at most 253 characters)",
                    m->name);
    if (get_labels(v, brix_yaml_get(n, "labels"), "metadata.labels", &m->labels) ||
        get_labels(v, brix_yaml_get(n, "annotations"), "metadata.annotations", &m->annotations))
        return -1;
    const brix_yaml_node_t *g = brix_yaml_get(n, "generation");
    if (g && get_int(v, g, "metadata.generation", 0, INT64_MAX, &m->generation))
        return -1;
    const brix_yaml_node_t *c = brix_yaml_get(n, "creationTimestamp");
    if (c && c->type == BRIX_YAML_SCALAR)
        m->created_ms = (uint64_t)parse_iso_ms(c->scalar);
    const brix_yaml_node_t *d = brix_yaml_get(n, "deletionTimestamp");
    if (d && d->type == BRIX_YAML_SCALAR)
        m->deleting_ms = parse_iso_ms(d->scalar);
    return 0;
}

/* ---------------------------------------------------- ModelDeployment -- */

static int parse_deploy(vctx_t *v, const brix_yaml_node_t *spec, brix_obj_t *o)
{
    static const char *const keys[] = { "model",      "replicas",       "gpu", "engine", "lora",
                                        "healthPath", "startupTimeout", NULL };
    static const char *const ekeys[] = { "command", "args", NULL };
    static const char *const lkeys[] = { "enabled", "maxLoras", "maxCpuLoras", "adapterCapacity",
                                         NULL };
    brix_deploy_spec_t *d = &o->d;
    d->replicas = 1;
    d->lora = true;
    d->max_loras = 4;
    d->max_cpu_loras = 0;
    d->adapter_capacity = 0;
    d->startup_timeout_ms = 120000;
    if (want_map(v, spec, "spec") || known_keys(v, spec, "spec", keys))
        return -1;
    const brix_yaml_node_t *n;
    if ((n = brix_yaml_get(spec, "model")) && get_str(v, n, "spec.model", &d->model))
        return -1;
    if (d->model && (!d->model[0] || strpbrk(d->model, " \t\r\n")))
        return fail(v, n, "spec.model", "must be non-empty and without spaces");
    if (!d->model && !(d->model = brix_strdup(o->meta.name)))
        return fail(v, spec, "spec", "out of memory");
    if ((n = brix_yaml_get(spec, "replicas")) &&
        get_int(v, n, "spec.replicas", 0, 256, &d->replicas))
        return -1;
    if ((n = brix_yaml_get(spec, "gpu")) && get_str(v, n, "spec.gpu", &d->gpu))
        return -1;
    if (!d->gpu && !(d->gpu = brix_strdup("a100")))
        return fail(v, spec, "spec", "out of memory");
    if ((n = brix_yaml_get(spec, "engine"))) {
        const brix_yaml_node_t *e;
        if (want_map(v, n, "spec.engine") || known_keys(v, n, "spec.engine", ekeys))
            return -1;
        if ((e = brix_yaml_get(n, "command")) &&
            get_strlist(v, e, "spec.engine.command", &d->command))
            return -1;
        if ((e = brix_yaml_get(n, "command")) && d->command.n == 0)
            return fail(v, e, "spec.engine.command", "must not be empty (omit it for engine-sim)");
        const brix_yaml_node_t *cmd = e;
        if ((e = brix_yaml_get(n, "args")) && get_strlist(v, e, "spec.engine.args", &d->args))
            return -1;
        bool has_port = false;
        for (size_t i = 0; i < d->command.n; i++)
            has_port |= strstr(d->command.v[i], "{port}") != NULL;
        for (size_t i = 0; i < d->args.n; i++)
            has_port |= strstr(d->args.v[i], "{port}") != NULL;
        if (d->command.n && !has_port)
            return fail(v, cmd, "spec.engine.command",
                        "the command or args must contain {port} where the replica's port goes");
    }
    /* a custom engine gets no LoRA flags from brix: LoRA only when asked for */
    d->lora = d->command.n == 0;
    if ((n = brix_yaml_get(spec, "lora"))) {
        const brix_yaml_node_t *e;
        if (want_map(v, n, "spec.lora") || known_keys(v, n, "spec.lora", lkeys))
            return -1;
        if ((e = brix_yaml_get(n, "enabled")) && get_bool(v, e, "spec.lora.enabled", &d->lora))
            return -1;
        if ((e = brix_yaml_get(n, "maxLoras")) &&
            get_int(v, e, "spec.lora.maxLoras", 1, 1024, &d->max_loras))
            return -1;
        if ((e = brix_yaml_get(n, "maxCpuLoras")) &&
            get_int(v, e, "spec.lora.maxCpuLoras", 1, 65536, &d->max_cpu_loras))
            return -1;
        if (d->max_cpu_loras && d->max_cpu_loras < d->max_loras)
            return fail(v, e, "spec.lora.maxCpuLoras", "must be >= maxLoras (%lld)",
                        (long long)d->max_loras);
        if ((e = brix_yaml_get(n, "adapterCapacity")) &&
            get_int(v, e, "spec.lora.adapterCapacity", 1, 65536, &d->adapter_capacity))
            return -1;
    }
    if (!d->max_cpu_loras)
        d->max_cpu_loras = d->max_loras;
    if (!d->adapter_capacity)
        d->adapter_capacity = d->max_cpu_loras;
    if ((n = brix_yaml_get(spec, "healthPath")) &&
        get_str(v, n, "spec.healthPath", &d->health_path))
        return -1;
    if (d->health_path && d->health_path[0] != '/')
        return fail(v, n, "spec.healthPath", "must start with '/'");
    if (!d->health_path && !(d->health_path = brix_strdup("/health")))
        return fail(v, spec, "spec", "out of memory");
    int64_t t;
    if ((n = brix_yaml_get(spec, "startupTimeout"))) {
        if (get_duration(v, n, "spec.startupTimeout", &t))
            return -1;
        if (t < 1000)
            return fail(v, n, "spec.startupTimeout", "must be at least 1s");
        d->startup_timeout_ms = (uint64_t)t;
    }
    return 0;
}

/* ------------------------------------------------------- ModelAdapter -- */

static bool hex64(const char *s)
{
    if (strlen(s) != 64)
        return false;
    for (; *s; s++)
        if (!isxdigit((unsigned char)*s) || isupper((unsigned char)*s))
            return false;
    return true;
}

static int resolve_file_url(vctx_t *v, const brix_yaml_node_t *n, brix_adapter_spec_t *a)
{
    const char *p = a->artifact_url + 7;
    if (*p == '/' || !v->base_dir)
        return 0;
    brix_buf_t b = { 0 };
    int rc =
        brix_buf_printf(&b, "file://%s/%s", v->base_dir, p[0] == '.' && p[1] == '/' ? p + 2 : p);
    if (rc) {
        brix_buf_free(&b);
        return fail(v, n, "spec.artifactURL", "out of memory");
    }
    brix_free(a->artifact_url);
    a->artifact_url = brix_strndup((const char *)b.data, b.len);
    brix_buf_free(&b);
    return a->artifact_url ? 0 : fail(v, n, "spec.artifactURL", "out of memory");
}

static int parse_adapter(vctx_t *v, const brix_yaml_node_t *spec, brix_obj_t *o)
{
    static const char *const keys[] = { "baseModel",   "podSelector",    "schedulerName",
                                        "artifactURL", "artifactSHA256", "credentialsSecretRef",
                                        "replicas",    "idleTTL",        "additionalConfig",
                                        NULL };
    static const char *const skeys[] = { "matchLabels", "matchExpressions", NULL };
    static const char *const sched[] = { "default", "leastAdapters", "binPack", "random", NULL };
    brix_adapter_spec_t *a = &o->a;
    a->idle_ttl_ms = -1;
    if (want_map(v, spec, "spec") || known_keys(v, spec, "spec", keys))
        return -1;
    const brix_yaml_node_t *n;
    if ((n = brix_yaml_get(spec, "baseModel")) && get_str(v, n, "spec.baseModel", &a->base_model))
        return -1;
    if (!(n = brix_yaml_get(spec, "podSelector")))
        return fail(v, spec, "spec.podSelector", "missing (required, as in AIBrix)");
    if (want_map(v, n, "spec.podSelector") || known_keys(v, n, "spec.podSelector", skeys))
        return -1;
    const brix_yaml_node_t *e = brix_yaml_get(n, "matchExpressions");
    if (e && !(e->type == BRIX_YAML_SEQ && e->n == 0) && !brix_yaml_is_null(e))
        return fail(v, e, "spec.podSelector.matchExpressions",
                    "not supported yet; use matchLabels");
    if (get_labels(v, brix_yaml_get(n, "matchLabels"), "spec.podSelector.matchLabels",
                   &a->selector))
        return -1;
    if (!a->selector.n)
        return fail(v, n, "spec.podSelector.matchLabels",
                    "must name at least one label, e.g. model.aibrix.ai/name: BASE-MODEL");
    if ((n = brix_yaml_get(spec, "schedulerName"))) {
        if (get_str(v, n, "spec.schedulerName", &a->scheduler))
            return -1;
        bool ok = false;
        for (size_t i = 0; sched[i] && !ok; i++)
            ok = !strcmp(a->scheduler, sched[i]);
        if (!ok)
            return fail(v, n, "spec.schedulerName",
                        "unknown scheduler '%s' (known: default, leastAdapters, binPack, random)",
                        a->scheduler);
    }
    if (!a->scheduler && !(a->scheduler = brix_strdup("default")))
        return fail(v, spec, "spec", "out of memory");
    if (!(n = brix_yaml_get(spec, "artifactURL")))
        return fail(v, spec, "spec.artifactURL", "missing (required, as in AIBrix)");
    if (get_str(v, n, "spec.artifactURL", &a->artifact_url))
        return -1;
    if (!strstr(a->artifact_url, "://"))
        return fail(v, n, "spec.artifactURL",
                    "'%s' has no scheme; use file://PATH, https://…, huggingface://…, s3://…",
                    a->artifact_url);
    if (!strncmp(a->artifact_url, "file://", 7) && resolve_file_url(v, n, a))
        return -1;
    if ((n = brix_yaml_get(spec, "artifactSHA256"))) {
        if (get_str(v, n, "spec.artifactSHA256", &a->sha256))
            return -1;
        if (!hex64(a->sha256))
            return fail(v, n, "spec.artifactSHA256", "expected 64 lowercase hex digits");
    }
    if ((n = brix_yaml_get(spec, "credentialsSecretRef"))) {
        if (want_map(v, n, "spec.credentialsSecretRef"))
            return -1;
        const brix_yaml_node_t *nm = brix_yaml_get(n, "name");
        if (!nm || get_str(v, nm, "spec.credentialsSecretRef.name", &a->credentials_ref))
            return nm ? -1 : fail(v, n, "spec.credentialsSecretRef.name", "missing");
    }
    if ((n = brix_yaml_get(spec, "replicas")) && !brix_yaml_is_null(n) &&
        get_int(v, n, "spec.replicas", 1, 1024, &a->replicas))
        return -1;
    if ((n = brix_yaml_get(spec, "idleTTL")) && get_duration(v, n, "spec.idleTTL", &a->idle_ttl_ms))
        return -1;
    if (get_labels(v, brix_yaml_get(spec, "additionalConfig"), "spec.additionalConfig",
                   &a->additional_config))
        return -1;
    return 0;
}

/* -------------------------------------------------------------- parse -- */

int brix_obj_parse(const brix_yaml_node_t *doc, const char *file, const char *base_dir,
                   brix_obj_t **out, char *err, size_t errlen)
{
    vctx_t v = { file, base_dir, err, errlen };
    *out = NULL;
    if (want_map(&v, doc, ""))
        return -1;
    const brix_yaml_node_t *k = brix_yaml_get(doc, "kind");
    const brix_yaml_node_t *av = brix_yaml_get(doc, "apiVersion");
    if (!k || k->type != BRIX_YAML_SCALAR)
        return fail(&v, k ? k : doc, "kind", "missing (ModelDeployment or ModelAdapter)");
    brix_kind_t kind = !strcmp(k->scalar, "ModelDeployment") ? BRIX_KIND_DEPLOYMENT
                       : !strcmp(k->scalar, "ModelAdapter")  ? BRIX_KIND_ADAPTER
                       : !strcmp(k->scalar, "Cluster")       ? BRIX_KIND_CLUSTER
                                                             : BRIX_KIND_NONE;
    if (kind == BRIX_KIND_NONE && !strcmp(k->scalar, "List"))
        return fail(&v, k, "kind",
                    "a List (as `brix get -o yaml` prints) is not applied; apply its items as "
                    "documents separated by ---");
    if (kind == BRIX_KIND_NONE)
        return fail(&v, k, "kind",
                    "unknown kind '%s' (this controller manages ModelDeployment and "
                    "ModelAdapter)",
                    k->scalar);
    if (!av || av->type != BRIX_YAML_SCALAR)
        return fail(&v, av ? av : doc, "apiVersion", "missing");
    const char *want = kind == BRIX_KIND_ADAPTER      ? "model.aibrix.ai/v1alpha1"
                       : kind == BRIX_KIND_DEPLOYMENT ? "model.brix.dev/v1alpha1"
                                                      : "brix.dev/v1alpha1";
    if (strcmp(av->scalar, want))
        return fail(&v, av, "apiVersion", "%s objects use apiVersion %s, not '%s'", k->scalar, want,
                    av->scalar);
    brix_obj_t *o = brix_calloc(1, sizeof *o);
    if (!o || !(o->api_version = brix_strdup(want))) {
        brix_free(o);
        return fail(&v, doc, "", "out of memory");
    }
    o->kind = kind;
    if (kind == BRIX_KIND_ADAPTER && base_dir && base_dir[0] == '/' &&
        !(o->base_dir = brix_strdup(base_dir))) {
        brix_free(o->api_version);
        brix_free(o);
        return fail(&v, doc, "", "out of memory");
    }
    static const char *const top[] = { "apiVersion", "kind", "metadata", "spec", "status", NULL };
    int rc = 0;
    if (kind != BRIX_KIND_CLUSTER) {
        const brix_yaml_node_t *spec = brix_yaml_get(doc, "spec");
        rc = known_keys(&v, doc, "", top) ||
             parse_meta(&v, brix_yaml_get(doc, "metadata"), &o->meta);
        if (!rc && !spec)
            rc = fail(&v, doc, "spec", "missing");
        if (!rc && kind == BRIX_KIND_DEPLOYMENT && strlen(o->meta.name) > 63)
            rc = fail(&v, brix_yaml_get(brix_yaml_get(doc, "metadata"), "name"), "metadata.name",
                      "a ModelDeployment name has at most 63 characters (it names replicas, "
                      "labels and log files)");
        if (!rc)
            rc = kind == BRIX_KIND_DEPLOYMENT ? parse_deploy(&v, spec, o)
                                              : parse_adapter(&v, spec, o);
    }
    if (rc) {
        brix_obj_free(o);
        return -1;
    }
    *out = o;
    return 0;
}

void brix_obj_free(brix_obj_t *o)
{
    if (!o)
        return;
    brix_free(o->api_version);
    brix_free(o->meta.name);
    brix_labels_free(&o->meta.labels);
    brix_labels_free(&o->meta.annotations);
    brix_free(o->d.model);
    brix_free(o->d.gpu);
    brix_strlist_free(&o->d.command);
    brix_strlist_free(&o->d.args);
    brix_free(o->d.health_path);
    brix_free(o->a.base_model);
    brix_labels_free(&o->a.selector);
    brix_free(o->a.scheduler);
    brix_free(o->a.artifact_url);
    brix_free(o->a.sha256);
    brix_free(o->a.credentials_ref);
    brix_labels_free(&o->a.additional_config);
    brix_free(o->base_dir);
    brix_free(o);
}

/* -------------------------------------------------------------- JSON -- */

static int jstr(brix_buf_t *b, const char *key, const char *val)
{
    return brix_buf_printf(b, "\"%s\":", key) | brix_buf_append_json_str(b, val, strlen(val));
}

static int jlist(brix_buf_t *b, const char *key, const brix_strlist_t *l)
{
    int rc = brix_buf_printf(b, "\"%s\":[", key);
    for (size_t i = 0; i < l->n; i++) {
        rc |= i ? brix_buf_append_char(b, ',') : 0;
        rc |= brix_buf_append_json_str(b, l->v[i], strlen(l->v[i]));
    }
    return rc | brix_buf_append_char(b, ']');
}

static int jdur(brix_buf_t *b, const char *key, int64_t ms)
{
    if (ms % 1000 == 0)
        return brix_buf_printf(b, "\"%s\":\"%llds\"", key, (long long)(ms / 1000));
    return brix_buf_printf(b, "\"%s\":\"%lldms\"", key, (long long)ms);
}

/* redact: for API output (secrets in argv and URLs hidden); the state file
 * and the "unchanged" comparisons use the real values. */
static int spec_json(brix_buf_t *b, const brix_obj_t *o, bool redact)
{
    int rc = 0;
    if (o->kind == BRIX_KIND_DEPLOYMENT) {
        const brix_deploy_spec_t *d = &o->d;
        rc |= brix_buf_append_char(b, '{') | jstr(b, "model", d->model);
        rc |= brix_buf_printf(b, ",\"replicas\":%lld,", (long long)d->replicas);
        rc |= jstr(b, "gpu", d->gpu) | brix_buf_append_str(b, ",\"engine\":{");
        if (d->command.n)
            rc |= (redact ? brix_buf_append_str(b, "\"command\":") |
                                brix_auth_redact_json(b, &d->command)
                          : jlist(b, "command", &d->command)) |
                  brix_buf_append_char(b, ',');
        rc |= redact ? brix_buf_append_str(b, "\"args\":") | brix_auth_redact_json(b, &d->args)
                     : jlist(b, "args", &d->args);
        rc |= brix_buf_printf(b,
                              "},\"lora\":{\"enabled\":%s,\"maxLoras\":%lld,\"maxCpuLoras\":%lld,"
                              "\"adapterCapacity\":%lld},",
                              d->lora ? "true" : "false", (long long)d->max_loras,
                              (long long)d->max_cpu_loras, (long long)d->adapter_capacity);
        rc |= jstr(b, "healthPath", d->health_path) | brix_buf_append_char(b, ',');
        rc |= jdur(b, "startupTimeout", (int64_t)d->startup_timeout_ms);
        return rc | brix_buf_append_char(b, '}');
    }
    const brix_adapter_spec_t *a = &o->a;
    rc |= brix_buf_append_char(b, '{');
    if (a->base_model)
        rc |= jstr(b, "baseModel", a->base_model) | brix_buf_append_char(b, ',');
    rc |= brix_buf_append_str(b, "\"podSelector\":{\"matchLabels\":");
    rc |= brix_labels_json(b, &a->selector) | brix_buf_append_str(b, "},");
    rc |= jstr(b, "schedulerName", a->scheduler) | brix_buf_append_char(b, ',');
    if (redact) { /* user info in a URL is a password */
        brix_buf_t u = BRIX_BUF_INIT;
        bool pending = false;
        rc |= brix_auth_redact_str(&u, a->artifact_url, &pending);
        rc |= brix_buf_append_str(b, "\"artifactURL\":") |
              brix_buf_append_json_str(b, u.data ? u.data : "", u.len);
        brix_buf_free(&u);
    } else {
        rc |= jstr(b, "artifactURL", a->artifact_url);
    }
    if (a->sha256)
        rc |= brix_buf_append_char(b, ',') | jstr(b, "artifactSHA256", a->sha256);
    if (a->credentials_ref)
        rc |= brix_buf_append_str(b, ",\"credentialsSecretRef\":{") |
              jstr(b, "name", a->credentials_ref) | brix_buf_append_char(b, '}');
    if (a->replicas)
        rc |= brix_buf_printf(b, ",\"replicas\":%lld", (long long)a->replicas);
    if (a->idle_ttl_ms >= 0)
        rc |= brix_buf_append_char(b, ',') | jdur(b, "idleTTL", a->idle_ttl_ms);
    if (a->additional_config.n)
        rc |= brix_buf_append_str(b, ",\"additionalConfig\":") |
              brix_labels_json(b, &a->additional_config);
    return rc | brix_buf_append_char(b, '}');
}

static int json_open(brix_buf_t *b, const brix_obj_t *o, bool redact)
{
    char ts[32];
    int rc = brix_buf_append_char(b, '{') | jstr(b, "apiVersion", o->api_version);
    rc |= brix_buf_append_char(b, ',') | jstr(b, "kind", brix_kind_name(o->kind));
    rc |= brix_buf_append_str(b, ",\"metadata\":{") | jstr(b, "name", o->meta.name);
    rc |= brix_buf_printf(b, ",\"generation\":%lld", (long long)o->meta.generation);
    brix_time_iso8601(ts, o->meta.created_ms);
    rc |= brix_buf_append_char(b, ',') | jstr(b, "creationTimestamp", ts);
    if (o->meta.deleting_ms) {
        brix_time_iso8601(ts, (uint64_t)o->meta.deleting_ms);
        rc |= brix_buf_append_char(b, ',') | jstr(b, "deletionTimestamp", ts);
    }
    if (o->meta.labels.n)
        rc |= brix_buf_append_str(b, ",\"labels\":") | brix_labels_json(b, &o->meta.labels);
    if (o->meta.annotations.n)
        rc |=
            brix_buf_append_str(b, ",\"annotations\":") | brix_labels_json(b, &o->meta.annotations);
    rc |= brix_buf_append_str(b, "},\"spec\":") | spec_json(b, o, redact);
    return rc ? -ENOMEM : 0;
}

int brix_obj_json_open(brix_buf_t *b, const brix_obj_t *o)
{
    return json_open(b, o, false);
}

int brix_obj_json_open_redacted(brix_buf_t *b, const brix_obj_t *o)
{
    return json_open(b, o, true);
}

bool brix_obj_spec_same(const brix_obj_t *a, const brix_obj_t *b)
{
    if (a->kind != b->kind)
        return false;
    brix_buf_t x = { 0 }, y = { 0 };
    int rc = spec_json(&x, a, false) | spec_json(&y, b, false);
    bool same = !rc && x.len == y.len && !memcmp(x.data, y.data, x.len);
    brix_buf_free(&x);
    brix_buf_free(&y);
    return same;
}

bool brix_obj_same(const brix_obj_t *a, const brix_obj_t *b)
{
    if (a->kind != b->kind)
        return false;
    brix_buf_t x = { 0 }, y = { 0 };
    int rc = spec_json(&x, a, false) | spec_json(&y, b, false) |
             brix_labels_json(&x, &a->meta.labels) | brix_labels_json(&y, &b->meta.labels) |
             brix_labels_json(&x, &a->meta.annotations) |
             brix_labels_json(&y, &b->meta.annotations);
    bool same = !rc && x.len == y.len && !memcmp(x.data, y.data, x.len);
    brix_buf_free(&x);
    brix_buf_free(&y);
    return same;
}
