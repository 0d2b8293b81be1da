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
#include <math.h>
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
    { "podautoscalers", BRIX_KIND_AUTOSCALER },
    { "podautoscaler", BRIX_KIND_AUTOSCALER },
    { "pa", BRIX_KIND_AUTOSCALER },
    { "autoscalers", BRIX_KIND_AUTOSCALER },
    { "autoscaler", BRIX_KIND_AUTOSCALER },
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
    case BRIX_KIND_AUTOSCALER:
        return "PodAutoscaler";
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
    case BRIX_KIND_AUTOSCALER:
        return "podautoscalers";
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
    static const char *const keys[] = { "model",      "replicas",       "gpu",     "engine", "lora",
                                        "healthPath", "startupTimeout", "kvCache", NULL };
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
    d->kv_cache = d->command.n == 0;
    if ((n = brix_yaml_get(spec, "kvCache")) && get_bool(v, n, "spec.kvCache", &d->kv_cache))
        return -1;
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

/* ------------------------------------------------------ PodAutoscaler -- */

/* Facts: AIBrix api/autoscaling/v1alpha1/podautoscaler_types.go (fields,
 * enums, bounds), docs/source/features/autoscaling/metric-based-autoscaling.rst
 * (annotations, their units and defaults; schedule rules), and
 * pkg/controller/podautoscaler (annotations parsed with Go's
 * strconv.ParseFloat / time.ParseDuration / ParseBool). */

#define PA_DEFAULT_STABLE_MS 180000
#define PA_DEFAULT_PANIC_MS  60000

static const char *const pa_src_names[] = {
    [BRIX_PA_SRC_POD] = "pod",         [BRIX_PA_SRC_EXTERNAL] = "external",
    [BRIX_PA_SRC_GATEWAY] = "gateway", [BRIX_PA_SRC_RESOURCE] = "resource",
    [BRIX_PA_SRC_CUSTOM] = "custom",
};

const char *brix_pa_source_name(brix_pa_source_type_t t)
{
    return (unsigned)t < sizeof pa_src_names / sizeof *pa_src_names ? pa_src_names[t] : "?";
}

/* The annotations brix reads; anything else in AIBrix's autoscaling
 * namespaces is ignored (AIBrix logs and ignores them too). */
enum pa_annot {
    PA_UP_RATE,
    PA_DOWN_RATE,
    PA_UP_TOL,
    PA_DOWN_TOL,
    PA_PANIC,
    PA_UP_CD,
    PA_DOWN_CD,
    PA_ZERO,
    PA_APA_WINDOW,
    PA_NANNOT
};
static const char *const pa_annot_keys[PA_NANNOT] = {
    [PA_UP_RATE] = "autoscaling.aibrix.ai/max-scale-up-rate",
    [PA_DOWN_RATE] = "autoscaling.aibrix.ai/max-scale-down-rate",
    [PA_UP_TOL] = "autoscaling.aibrix.ai/scale-up-tolerance",
    [PA_DOWN_TOL] = "autoscaling.aibrix.ai/scale-down-tolerance",
    [PA_PANIC] = "autoscaling.aibrix.ai/panic-threshold",
    [PA_UP_CD] = "autoscaling.aibrix.ai/scale-up-cooldown-window",
    [PA_DOWN_CD] = "autoscaling.aibrix.ai/scale-down-cooldown-window",
    [PA_ZERO] = "autoscaling.aibrix.ai/scale-to-zero",
    [PA_APA_WINDOW] = "apa.autoscaling.aibrix.ai/window",
};

bool brix_pa_annotation_unknown(const char *key)
{
    const char *slash = strchr(key, '/');
    if (!slash)
        return false;
    size_t pl = (size_t)(slash - key);
    static const char ns[] = "autoscaling.aibrix.ai";
    size_t nl = sizeof ns - 1;
    /* autoscaling.aibrix.ai/… or any sub-namespace such as kpa.autoscaling.aibrix.ai/… */
    bool ours =
        pl >= nl && !strncmp(slash - nl, ns, nl) && (pl == nl || slash[-(long)nl - 1] == '.');
    if (!ours)
        return false;
    for (int i = 0; i < PA_NANNOT; i++)
        if (!strcmp(key, pa_annot_keys[i]))
            return false;
    return true;
}

/* Go's time.ParseDuration syntax, which AIBrix's annotations use: one or more
 * decimal numbers each with a unit (ns, us, µs, ms, s, m, h), e.g. "300ms",
 * "1.5h", "1h30m"; "0" alone; no sign (no window is negative) and no spaces.
 * Seconds, or -1. Each number goes through strtod and a division by an exact
 * power of ten, so "0.3s" and "300ms" give the same double as strtod("0.3")
 * and the canonical JSON re-reads to the same value. */
static int go_duration(const char *s, double *out)
{
    static const struct {
        const char *u;
        double mul, div;
    } units[] = {
        { "ns", 1, 1e9 }, { "us", 1, 1e6 }, { "\xc2\xb5s", 1, 1e6 }, { "\xce\xbcs", 1, 1e6 },
        { "ms", 1, 1e3 }, { "s", 1, 1 },    { "m", 60, 1 },          { "h", 3600, 1 },
    };
    if (!strcmp(s, "0")) {
        *out = 0;
        return 0;
    }
    if (*s == '+')
        s++;
    if (!*s)
        return -1;
    double total = 0;
    while (*s) {
        const char *p = s;
        size_t digits = 0;
        while (isdigit((unsigned char)*p))
            p++, digits++;
        if (*p == '.')
            for (p++; isdigit((unsigned char)*p); p++)
                digits++;
        if (!digits || p - s > 40)
            return -1;
        char num[48];
        memcpy(num, s, (size_t)(p - s));
        num[p - s] = '\0';
        double x = strtod(num, NULL);
        size_t best = 0, bi = 0;
        for (size_t i = 0; i < sizeof units / sizeof *units; i++) {
            size_t l = strlen(units[i].u);
            if (l > best && !strncmp(p, units[i].u, l))
                best = l, bi = i;
        }
        if (!best)
            return -1;
        total += x * units[bi].mul / units[bi].div;
        if (!(total <= 1e9)) /* also NaN */
            return -1;
        s = p + best;
    }
    *out = total;
    return 0;
}

/* strconv.ParseFloat's decimal numbers: the whole string, finite, no spaces. */
static int parse_float(const char *s, double *out)
{
    if (!*s || isspace((unsigned char)*s))
        return -1;
    char *end;
    errno = 0;
    double x = strtod(s, &end);
    if (*end || errno || !isfinite(x))
        return -1;
    *out = x;
    return 0;
}

/* A number given as a YAML number or as a string holding one (AIBrix's
 * targetValue is a string; users also write 0.5 unquoted). */
static int get_number(vctx_t *v, const brix_yaml_node_t *n, const char *path, double *out)
{
    if (!n || n->type != BRIX_YAML_SCALAR || brix_yaml_is_null(n))
        return fail(v, n, path, "expected a number");
    if (parse_float(n->scalar, out))
        return fail(v, n, path, "expected a number, got '%s'", n->scalar);
    return 0;
}

static bool dns_label(const char *s)
{
    size_t l = strlen(s);
    if (!l || l > 63)
        return false;
    for (size_t i = 0; i < l; i++) {
        bool alnum = (s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9');
        if (!alnum && (s[i] != '-' || i == 0 || i == l - 1))
            return false;
    }
    return true;
}

static int parse_pa_target(vctx_t *v, const brix_yaml_node_t *n, brix_pa_spec_t *p)
{
    /* corev1.ObjectReference: the keys besides apiVersion/kind/name are
     * accepted (kubectl-made YAML carries them) and not used */
    static const char *const keys[] = { "apiVersion",      "kind",      "name", "namespace", "uid",
                                        "resourceVersion", "fieldPath", NULL };
    if (!n)
        return fail(v, NULL, "spec.scaleTargetRef",
                    "missing (required: {apiVersion: apps/v1, kind: Deployment, name: NAME})");
    if (want_map(v, n, "spec.scaleTargetRef") || known_keys(v, n, "spec.scaleTargetRef", keys))
        return -1;
    const brix_yaml_node_t *e;
    if ((e = brix_yaml_get(n, "apiVersion")) &&
        get_str(v, e, "spec.scaleTargetRef.apiVersion", &p->target_api_version))
        return -1;
    if (!(e = brix_yaml_get(n, "kind")))
        return fail(v, n, "spec.scaleTargetRef.kind", "missing (Deployment or ModelDeployment)");
    if (get_str(v, e, "spec.scaleTargetRef.kind", &p->target_kind))
        return -1;
    if (strcmp(p->target_kind, "Deployment") && strcmp(p->target_kind, "ModelDeployment"))
        return fail(v, e, "spec.scaleTargetRef.kind",
                    "'%s' cannot be scaled here: locally the target is a ModelDeployment, named "
                    "with kind Deployment (as in AIBrix's samples) or ModelDeployment",
                    p->target_kind);
    if (!(e = brix_yaml_get(n, "name")))
        return fail(v, n, "spec.scaleTargetRef.name", "missing (the ModelDeployment to scale)");
    if (get_str(v, e, "spec.scaleTargetRef.name", &p->target_name))
        return -1;
    if (!brix_obj_name_valid(p->target_name) || strlen(p->target_name) > 63)
        return fail(v, e, "spec.scaleTargetRef.name", "'%s' is not a valid ModelDeployment name",
                    p->target_name);
    return 0;
}

static int parse_pa_metric(vctx_t *v, const brix_yaml_node_t *n, size_t i, brix_pa_metric_t *m)
{
    static const char *const keys[] = {
        "metricSourceType", "protocolType", "endpoint", "path", "port",
        "targetMetric",     "targetValue",  NULL
    };
    char path[96], fp[128];
    snprintf(path, sizeof path, "spec.metricsSources[%zu]", i);
#define FP(f) (snprintf(fp, sizeof fp, "%s.%s", path, f), fp)
    if (want_map(v, n, path) || known_keys(v, n, path, keys))
        return -1;
    const brix_yaml_node_t *e, *tn;
    char *type = NULL;
    if (!(tn = brix_yaml_get(n, "metricSourceType")))
        return fail(v, n, FP("metricSourceType"),
                    "missing (pod, resource, external or brix's gateway)");
    if (get_str(v, tn, FP("metricSourceType"), &type))
        return -1;
    bool domain = !strcmp(type, "domain");
    int t = domain ? BRIX_PA_SRC_EXTERNAL : -1;
    for (int k = 0; t < 0 && k < (int)(sizeof pa_src_names / sizeof *pa_src_names); k++)
        if (!strcmp(type, pa_src_names[k]))
            t = k;
    if (t < 0) {
        fail(v, tn, FP("metricSourceType"),
             "unknown source type '%s' (pod, resource, custom, external, domain, gateway)", type);
        brix_free(type);
        return -1;
    }
    brix_free(type);
    m->type = (brix_pa_source_type_t)t;
    if (m->type == BRIX_PA_SRC_CUSTOM)
        return fail(v, tn, FP("metricSourceType"),
                    "custom reads the Kubernetes custom metrics API (custom.metrics.k8s.io), which "
                    "a local controller does not have; use pod, gateway, or external with an "
                    "endpoint");
    if ((e = brix_yaml_get(n, "protocolType"))) {
        if (get_str(v, e, FP("protocolType"), &m->protocol))
            return -1;
        if (strcmp(m->protocol, "http") && strcmp(m->protocol, "https"))
            return fail(v, e, FP("protocolType"), "expected http or https, got '%s'", m->protocol);
    }
    if ((e = brix_yaml_get(n, "endpoint")) && get_str(v, e, FP("endpoint"), &m->endpoint))
        return -1;
    if (m->endpoint && (!m->endpoint[0] || strpbrk(m->endpoint, " /\t\r\n?#")))
        return fail(v, e, FP("endpoint"), "expected host or host:port, got '%s'", m->endpoint);
    if ((e = brix_yaml_get(n, "path")) && get_str(v, e, FP("path"), &m->path))
        return -1;
    if (m->path && strpbrk(m->path, " \t\r\n#"))
        return fail(v, e, FP("path"), "must not contain spaces or '#'");
    if ((e = brix_yaml_get(n, "port"))) {
        if (get_str(v, e, FP("port"), &m->port))
            return -1;
        char *end;
        long pt = strtol(m->port, &end, 10);
        if (!m->port[0] || *end || pt < 1 || pt > 65535)
            return fail(v, e, FP("port"), "expected a port number 1..65535, got '%s'", m->port);
    }
    if (m->type == BRIX_PA_SRC_EXTERNAL && !m->endpoint)
        return fail(v, tn, FP("metricSourceType"),
                    "%s without endpoint reads the Kubernetes external metrics API "
                    "(external.metrics.k8s.io), which a local controller does not have; set "
                    "protocolType, endpoint and path to read an HTTP endpoint",
                    domain ? "domain" : "external");
    if (m->type == BRIX_PA_SRC_EXTERNAL && (!m->protocol || !m->path))
        return fail(v, n, FP(!m->protocol ? "protocolType" : "path"),
                    "missing (an external source with an endpoint needs protocolType, endpoint "
                    "and path, as in AIBrix)");
    if (!m->protocol && (m->type == BRIX_PA_SRC_POD || m->type == BRIX_PA_SRC_EXTERNAL) &&
        !(m->protocol = brix_strdup("http")))
        return fail(v, n, path, "out of memory");
    if (!(e = brix_yaml_get(n, "targetMetric")))
        return fail(v, n, FP("targetMetric"),
                    "missing (e.g. num_requests_waiting, gpu_cache_usage_perc)");
    if (get_str(v, e, FP("targetMetric"), &m->target_metric))
        return -1;
    if (!m->target_metric[0] || strpbrk(m->target_metric, " \t\r\n{}\""))
        return fail(v, e, FP("targetMetric"), "expected a metric name, got '%s'", m->target_metric);
    if (m->type == BRIX_PA_SRC_RESOURCE && strcmp(m->target_metric, "cpu") &&
        strcmp(m->target_metric, "memory"))
        return fail(v, e, FP("targetMetric"), "a resource source measures cpu or memory, not '%s'",
                    m->target_metric);
    if (!(e = brix_yaml_get(n, "targetValue")))
        return fail(v, n, FP("targetValue"), "missing (the per-replica target, e.g. \"0.5\")");
    if (get_number(v, e, FP("targetValue"), &m->target))
        return -1;
    if (!(m->target > 0))
        return fail(v, e, FP("targetValue"), "must be greater than 0, got '%s'", e->scalar);
    if (!(m->target_value = brix_strdup(e->scalar)))
        return fail(v, e, path, "out of memory");
#undef FP
    return 0;
}

/* A schedule as day-minute intervals on a week: [start, end) on each of its
 * days, or over midnight [start, 24:00) on its days plus [00:00, end) on the
 * next ones. */
static int sched_spans(const brix_as_schedule_t *s, uint8_t days[2], int lo[2], int hi[2])
{
    uint8_t d = s->days ? s->days : 0x7f;
    days[0] = d;
    lo[0] = s->start_min;
    if (s->end_min > s->start_min) {
        hi[0] = s->end_min;
        return 1;
    }
    hi[0] = 24 * 60;
    days[1] = (uint8_t)(((d << 1) | (d >> 6)) & 0x7f); /* Saturday's night is Sunday's */
    lo[1] = 0;
    hi[1] = s->end_min;
    return 2;
}

static bool sched_overlap(const brix_as_schedule_t *a, const brix_as_schedule_t *b)
{
    uint8_t da[2], db[2];
    int la[2], ha[2], lb[2], hb[2];
    int na = sched_spans(a, da, la, ha), nb = sched_spans(b, db, lb, hb);
    for (int x = 0; x < na; x++)
        for (int y = 0; y < nb; y++)
            if ((da[x] & db[y]) && la[x] < hb[y] && lb[y] < ha[x])
                return true;
    return false;
}

static int parse_pa_schedule(vctx_t *v, const brix_yaml_node_t *n, size_t i, brix_pa_spec_t *p,
                             brix_as_schedule_t *s)
{
    static const char *const keys[] = { "name",    "timezone",    "daysOfWeek",  "startTime",
                                        "endTime", "minReplicas", "maxReplicas", NULL };
    char path[64], fp[96];
    snprintf(path, sizeof path, "spec.schedules[%zu]", i);
#define FP(f) (snprintf(fp, sizeof fp, "%s.%s", path, f), fp)
    if (want_map(v, n, path) || known_keys(v, n, path, keys))
        return -1;
    const brix_yaml_node_t *e;
    s->min_replicas = s->max_replicas = -1;
    if (!(e = brix_yaml_get(n, "name")))
        return fail(v, n, FP("name"), "missing");
    if (e->type != BRIX_YAML_SCALAR || !dns_label(e->scalar))
        return fail(v, e, FP("name"),
                    "expected a DNS label (lowercase letters, digits and '-', at most 63)");
    snprintf(s->name, sizeof s->name, "%s", e->scalar);
    for (size_t j = 0; j < i; j++)
        if (!strcmp(p->schedules[j].name, s->name))
            return fail(v, e, FP("name"), "'%s' is already the name of schedule %zu", s->name, j);
    if ((e = brix_yaml_get(n, "timezone"))) {
        if (e->type != BRIX_YAML_SCALAR || brix_yaml_is_null(e) ||
            strlen(e->scalar) >= sizeof s->timezone || !brix_as_timezone_valid(e->scalar))
            return fail(v, e, FP("timezone"),
                        "'%s' is not a time zone this machine knows (IANA names such as "
                        "America/Los_Angeles; omit for UTC)",
                        e->type == BRIX_YAML_SCALAR ? e->scalar : "?");
        snprintf(s->timezone, sizeof s->timezone, "%s", e->scalar);
    }
    if ((e = brix_yaml_get(n, "daysOfWeek"))) {
        if (e->type != BRIX_YAML_SEQ || e->n == 0)
            return fail(v, e, FP("daysOfWeek"),
                        "expected a non-empty list of days (Mon … Sun); omit for every day");
        for (size_t k = 0; k < e->n; k++) {
            const brix_yaml_node_t *d = e->items[k];
            int day = d->type == BRIX_YAML_SCALAR ? brix_as_day_parse(d->scalar) : -1;
            if (day < 0 || day > 6)
                return fail(v, d, FP("daysOfWeek"),
                            "'%s' is not a day (Mon, Tue, Wed, Thu, Fri, "
                            "Sat, Sun)",
                            d->type == BRIX_YAML_SCALAR ? d->scalar : "?");
            s->days |= (uint8_t)(1u << day);
        }
    }
    const brix_yaml_node_t *st = brix_yaml_get(n, "startTime"), *en = brix_yaml_get(n, "endTime");
    if (!st)
        return fail(v, n, FP("startTime"), "missing (HH:MM)");
    if (st->type != BRIX_YAML_SCALAR || (s->start_min = brix_as_hhmm_parse(st->scalar)) < 0)
        return fail(v, st, FP("startTime"),
                    "expected HH:MM (00:00 … 23:59, two digits each), "
                    "got '%s'",
                    st->type == BRIX_YAML_SCALAR ? st->scalar : "?");
    if (!en)
        return fail(v, n, FP("endTime"), "missing (HH:MM)");
    if (en->type != BRIX_YAML_SCALAR || (s->end_min = brix_as_hhmm_parse(en->scalar)) < 0)
        return fail(v, en, FP("endTime"),
                    "expected HH:MM (00:00 … 23:59, two digits each), "
                    "got '%s'",
                    en->type == BRIX_YAML_SCALAR ? en->scalar : "?");
    if (s->end_min == s->start_min) /* an end before the start runs over midnight */
        return fail(v, en, FP("endTime"),
                    "equals startTime %s (an empty window; an endTime before startTime runs "
                    "over midnight)",
                    st->scalar);
    int64_t x;
    if ((e = brix_yaml_get(n, "minReplicas"))) {
        if (get_int(v, e, FP("minReplicas"), 0, 256, &x))
            return -1;
        s->min_replicas = (int32_t)x;
    }
    if ((e = brix_yaml_get(n, "maxReplicas"))) {
        if (get_int(v, e, FP("maxReplicas"), 0, 256, &x))
            return -1;
        s->max_replicas = (int32_t)x;
    }
    if (s->min_replicas < 0 && s->max_replicas < 0)
        return fail(v, n, path, "sets neither minReplicas nor maxReplicas (at least one)");
    int64_t emin = s->min_replicas >= 0 ? s->min_replicas : p->min_replicas;
    int64_t emax = s->max_replicas >= 0 ? s->max_replicas : p->max_replicas;
    if (emin > emax) { /* point at the override that makes it so */
        bool by_min = s->min_replicas >= 0;
        return fail(v, brix_yaml_get(n, by_min ? "minReplicas" : "maxReplicas"),
                    FP(by_min ? "minReplicas" : "maxReplicas"),
                    "effective minReplicas %lld is above effective maxReplicas %lld",
                    (long long)emin, (long long)emax);
    }
    /* AIBrix refuses overlapping windows rather than pick one. Zones differ:
     * the overlap depends on the date (DST), so only same-zone pairs are
     * checked; at run time the first active schedule in list order wins. */
    for (size_t j = 0; j < i; j++) {
        const brix_as_schedule_t *o = &p->schedules[j];
        if (strcmp(o->timezone, s->timezone) || !sched_overlap(s, o))
            continue;
        return fail(v, n, path, "overlaps schedule '%s' (same days, overlapping times)", o->name);
    }
#undef FP
    return 0;
}

static int parse_pa_slo(vctx_t *v, const brix_yaml_node_t *n, brix_pa_spec_t *p)
{
    static const char *const keys[] = { "ttft", "itl", "headroom", NULL };
    if (want_map(v, n, "spec.slo") || known_keys(v, n, "spec.slo", keys))
        return -1;
    const char *names[2] = { "ttft", "itl" };
    double *dst[2] = { &p->slo_ttft_s, &p->slo_itl_s };
    for (int i = 0; i < 2; i++) {
        const brix_yaml_node_t *e = brix_yaml_get(n, names[i]);
        char fp[32];
        snprintf(fp, sizeof fp, "spec.slo.%s", names[i]);
        if (!e)
            continue;
        if (e->type != BRIX_YAML_SCALAR || go_duration(e->scalar, dst[i]))
            return fail(v, e, fp, "expected a duration such as \"500ms\" or \"2s\", got '%s'",
                        e->type == BRIX_YAML_SCALAR ? e->scalar : "?");
        if (!(*dst[i] > 0) || *dst[i] > 600)
            return fail(v, e, fp, "must be more than 0 and at most 10m, got '%s'", e->scalar);
    }
    if (!p->slo_ttft_s && !p->slo_itl_s)
        return fail(v, n, "spec.slo", "sets neither ttft nor itl (at least one target)");
    p->slo_headroom = 0.8;
    const brix_yaml_node_t *e = brix_yaml_get(n, "headroom");
    if (e && get_number(v, e, "spec.slo.headroom", &p->slo_headroom))
        return -1;
    if (!(p->slo_headroom > 0 && p->slo_headroom <= 1))
        return fail(v, e, "spec.slo.headroom",
                    "must be more than 0 and at most 1 (the share of measured capacity planned "
                    "for), got '%s'",
                    e->scalar);
    return 0;
}

/* The annotations, with AIBrix's units; a bad value names the annotation and
 * the unit it wants. */
static int parse_pa_annotations(vctx_t *v, const brix_yaml_node_t *ann, brix_pa_spec_t *p,
                                uint64_t *apa_window_ms)
{
    brix_as_params_t *q = &p->params;
    for (size_t i = 0; ann && ann->type == BRIX_YAML_MAP && i < ann->n; i++) {
        const brix_yaml_node_t *k = ann->items[2 * i], *val = ann->items[2 * i + 1];
        int a = 0;
        while (a < PA_NANNOT && strcmp(k->scalar, pa_annot_keys[a]))
            a++;
        if (a == PA_NANNOT)
            continue;
        char path[128];
        snprintf(path, sizeof path, "metadata.annotations[\"%s\"]", pa_annot_keys[a]);
        const char *s = val->scalar;
        double x = 0;
        switch (a) {
        case PA_UP_RATE:
        case PA_DOWN_RATE:
            /* AIBrix takes any float; at or below 1 a rate forbids moving in that
             * direction at all (Knative requires > 1 as well) */
            if (parse_float(s, &x) || x <= 1 || x > 1000)
                return fail(v, val, path,
                            "expected a factor above 1 such as \"2.0\" (a decision may "
                            "multiply or divide the scale by at most this; 1 would forbid "
                            "scaling that way), got '%s'",
                            s);
            *(a == PA_UP_RATE ? &q->max_up_rate : &q->max_down_rate) = x;
            break;
        case PA_UP_TOL:
        case PA_DOWN_TOL:
            if (parse_float(s, &x) || x < 0 || x > 1)
                return fail(v, val, path,
                            "expected a fraction from 0 to 1 such as \"0.1\" (10%% around the "
                            "target), got '%s'",
                            s);
            *(a == PA_UP_TOL ? &q->up_tolerance : &q->down_tolerance) = x;
            break;
        case PA_PANIC:
            if (parse_float(s, &x) || x <= 1 || x > 1000)
                return fail(v, val, path,
                            "expected a factor greater than 1 such as \"2.0\" (panic when the "
                            "panic-window demand is this many times the capacity), got '%s'",
                            s);
            q->panic_threshold = x;
            break;
        case PA_UP_CD:
        case PA_DOWN_CD:
        case PA_APA_WINDOW:
            if (go_duration(s, &x) || x > 7 * 86400)
                return fail(v, val, path,
                            "expected a duration such as \"30s\", \"5m\" or \"1h30m\" (Go syntax, "
                            "at most 168h), got '%s'",
                            s);
            if (a == PA_APA_WINDOW && (x < 1 || x > 3600))
                return fail(v, val, path, "the APA window must be from 1s to 1h, got '%s'", s);
            if (a == PA_APA_WINDOW)
                *apa_window_ms = (uint64_t)llround(x * 1000);
            else
                *(a == PA_UP_CD ? &q->up_stabilization_ms : &q->down_stabilization_ms) =
                    (uint64_t)llround(x * 1000);
            break;
        case PA_ZERO: {
            /* Go's strconv.ParseBool */
            static const char *const t[] = { "1", "t", "T", "TRUE", "true", "True" };
            static const char *const f[] = { "0", "f", "F", "FALSE", "false", "False" };
            int b = -1;
            for (int j = 0; j < 6 && b < 0; j++)
                b = !strcmp(s, t[j]) ? 1 : !strcmp(s, f[j]) ? 0 : -1;
            if (b < 0)
                return fail(v, val, path, "expected \"true\" or \"false\", got '%s'", s);
            q->scale_to_zero = b == 1;
            break;
        }
        }
    }
    return 0;
}

static int parse_pa(vctx_t *v, const brix_yaml_node_t *spec, const brix_yaml_node_t *doc,
                    brix_obj_t *o)
{
    static const char *const keys[] = { "scaleTargetRef",
                                        "subTargetSelector",
                                        "minReplicas",
                                        "maxReplicas",
                                        "scalingStrategy",
                                        "metricsSources",
                                        "observeWindowSeconds",
                                        "panicWindowSeconds",
                                        "predictive",
                                        "schedules",
                                        "slo",
                                        NULL };
    brix_pa_spec_t *p = &o->pa;
    p->min_replicas = 1;
    if (want_map(v, spec, "spec") || known_keys(v, spec, "spec", keys))
        return -1;
    if (parse_pa_target(v, brix_yaml_get(spec, "scaleTargetRef"), p))
        return -1;
    const brix_yaml_node_t *n, *e;
    if ((n = brix_yaml_get(spec, "subTargetSelector"))) {
        static const char *const skeys[] = { "roleName", NULL };
        if (want_map(v, n, "spec.subTargetSelector") ||
            known_keys(v, n, "spec.subTargetSelector", skeys))
            return -1;
        /* stored for Kubernetes (StormService roles); a ModelDeployment has none */
        if ((e = brix_yaml_get(n, "roleName")) &&
            get_str(v, e, "spec.subTargetSelector.roleName", &p->sub_target_role))
            return -1;
    }
    if ((n = brix_yaml_get(spec, "minReplicas")) && !brix_yaml_is_null(n) &&
        get_int(v, n, "spec.minReplicas", 0, 256, &p->min_replicas))
        return -1;
    if (!(n = brix_yaml_get(spec, "maxReplicas")))
        return fail(v, spec, "spec.maxReplicas", "missing (required, as in AIBrix)");
    if (get_int(v, n, "spec.maxReplicas", 1, 256, &p->max_replicas))
        return -1;
    if (p->max_replicas < p->min_replicas)
        return fail(v, n, "spec.maxReplicas", "%lld is below minReplicas %lld",
                    (long long)p->max_replicas, (long long)p->min_replicas);
    const brix_yaml_node_t *sn = brix_yaml_get(spec, "scalingStrategy");
    if (!sn)
        return fail(v, spec, "spec.scalingStrategy", "missing (HPA, KPA, APA or brix's SLO)");
    int strat = sn->type == BRIX_YAML_SCALAR ? brix_as_strategy_parse(sn->scalar) : -1;
    if (strat < 0)
        return fail(v, sn, "spec.scalingStrategy", "unknown strategy '%s' (HPA, KPA, APA, SLO)",
                    sn->type == BRIX_YAML_SCALAR ? sn->scalar : "?");
    p->strategy = (brix_as_strategy_t)strat;
    if ((n = brix_yaml_get(spec, "metricsSources")) && !brix_yaml_is_null(n)) {
        if (n->type != BRIX_YAML_SEQ)
            return fail(v, n, "spec.metricsSources", "expected a list");
        for (size_t i = 0; i < n->n; i++) {
            if (i >= BRIX_AS_MAX_METRICS) {
                char path[64];
                snprintf(path, sizeof path, "spec.metricsSources[%zu]", i);
                return fail(v, n->items[i], path, "at most %d metric sources", BRIX_AS_MAX_METRICS);
            }
            p->nmetrics = (int)i + 1; /* so brix_obj_free frees a half-parsed one */
            if (parse_pa_metric(v, n->items[i], i, &p->metrics[i]))
                return -1;
        }
    }
    if (!p->nmetrics && p->strategy != BRIX_AS_SLO)
        return fail(v, n ? n : spec, "spec.metricsSources",
                    "%s needs at least one metric source (only SLO sizes from the gateways' "
                    "load alone)",
                    brix_as_strategy_name(p->strategy));
    int64_t w;
    if ((n = brix_yaml_get(spec, "observeWindowSeconds"))) {
        if (get_int(v, n, "spec.observeWindowSeconds", 1, 3600, &w))
            return -1;
        p->observe_window_ms = w * 1000;
    }
    if ((n = brix_yaml_get(spec, "panicWindowSeconds"))) {
        if (get_int(v, n, "spec.panicWindowSeconds", 1, 3600, &w))
            return -1;
        p->panic_window_ms = w * 1000;
    }
    int64_t stable = p->observe_window_ms ? p->observe_window_ms : PA_DEFAULT_STABLE_MS;
    int64_t panic = p->panic_window_ms ? p->panic_window_ms : PA_DEFAULT_PANIC_MS;
    if (panic > stable) /* as AIBrix, with the defaults standing in for omitted fields */
        return fail(v, n ? n : brix_yaml_get(spec, "observeWindowSeconds"),
                    n ? "spec.panicWindowSeconds" : "spec.observeWindowSeconds",
                    "the panic window (%llds) is longer than the stable window (%llds); set "
                    "panicWindowSeconds at most observeWindowSeconds",
                    (long long)(panic / 1000), (long long)(stable / 1000));
    if ((n = brix_yaml_get(spec, "predictive"))) {
        static const char *const pkeys[] = { "mode", "horizonSeconds", NULL };
        if (want_map(v, n, "spec.predictive") || known_keys(v, n, "spec.predictive", pkeys))
            return -1;
        if ((e = brix_yaml_get(n, "mode"))) {
            if (get_str(v, e, "spec.predictive.mode", &p->predictive_mode))
                return -1;
            if (strcmp(p->predictive_mode, "Preview") && strcmp(p->predictive_mode, "Auto"))
                return fail(v, e, "spec.predictive.mode", "expected Preview or Auto, got '%s'",
                            p->predictive_mode);
        }
        if (!p->predictive_mode && !(p->predictive_mode = brix_strdup("Preview")))
            return fail(v, n, "spec.predictive", "out of memory");
        if ((e = brix_yaml_get(n, "horizonSeconds"))) {
            if (get_int(v, e, "spec.predictive.horizonSeconds", 1, 3600, &w))
                return -1;
            p->predictive_horizon_ms = w * 1000;
        }
    }
    if ((n = brix_yaml_get(spec, "schedules")) && !brix_yaml_is_null(n)) {
        if (n->type != BRIX_YAML_SEQ || n->n == 0)
            return fail(v, n, "spec.schedules", "expected a non-empty list (or omit it)");
        for (size_t i = 0; i < n->n; i++) {
            if (i >= BRIX_AS_MAX_SCHEDULES) {
                char path[64];
                snprintf(path, sizeof path, "spec.schedules[%zu]", i);
                return fail(v, n->items[i], path, "at most %d schedules", BRIX_AS_MAX_SCHEDULES);
            }
            if (parse_pa_schedule(v, n->items[i], i, p, &p->schedules[i]))
                return -1;
            p->nschedules = i + 1;
        }
    }
    n = brix_yaml_get(spec, "slo");
    if (n && p->strategy != BRIX_AS_SLO)
        return fail(v, n, "spec.slo",
                    "is brix's SLO mode and needs scalingStrategy: SLO (the strategy is %s)",
                    brix_as_strategy_name(p->strategy));
    if (!n && p->strategy == BRIX_AS_SLO)
        return fail(v, sn, "spec.slo",
                    "missing: scalingStrategy SLO needs spec.slo with a ttft and/or itl target, "
                    "e.g. slo: {ttft: 500ms}");
    if (n && parse_pa_slo(v, n, p))
        return -1;

    /* params: everything the algorithms read, defaults filled in */
    brix_as_params_t *q = &p->params;
    brix_as_params_default(q);
    q->strategy = p->strategy;
    q->min_replicas = (int32_t)p->min_replicas;
    q->max_replicas = (int32_t)p->max_replicas;
    q->nmetrics = p->nmetrics;
    for (int i = 0; i < p->nmetrics; i++)
        q->target[i] = p->metrics[i].target;
    q->panic_threshold = 2.0;
    q->max_up_rate = q->max_down_rate = 2.0;
    q->up_tolerance = q->down_tolerance = 0.1;
    q->up_stabilization_ms = 0;
    q->down_stabilization_ms = 300000;
    q->scale_to_zero = false;
    uint64_t apa_window_ms = 0;
    if (parse_pa_annotations(v, brix_yaml_get(brix_yaml_get(doc, "metadata"), "annotations"), p,
                             &apa_window_ms))
        return -1;
    /* observeWindowSeconds is the stable window; AIBrix's older APA
     * annotation stands in for it when the spec field is absent */
    q->stable_window_ms = p->observe_window_ms ? (uint64_t)p->observe_window_ms
                          : apa_window_ms && p->strategy == BRIX_AS_APA ? apa_window_ms
                                                                        : PA_DEFAULT_STABLE_MS;
    q->panic_window_ms = (uint64_t)panic;
    if (q->panic_window_ms > q->stable_window_ms)
        q->panic_window_ms = q->stable_window_ms;
    q->zero_grace_ms = q->stable_window_ms;
    q->slo_ttft_s = p->slo_ttft_s;
    q->slo_itl_s = p->slo_itl_s;
    q->slo_headroom = p->slo_headroom ? p->slo_headroom : 0.8;
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
        return fail(&v, k ? k : doc, "kind",
                    "missing (ModelDeployment, ModelAdapter or PodAutoscaler)");
    brix_kind_t kind = !strcmp(k->scalar, "ModelDeployment") ? BRIX_KIND_DEPLOYMENT
                       : !strcmp(k->scalar, "ModelAdapter")  ? BRIX_KIND_ADAPTER
                       : !strcmp(k->scalar, "PodAutoscaler") ? BRIX_KIND_AUTOSCALER
                       : !strcmp(k->scalar, "Cluster")       ? BRIX_KIND_CLUSTER
                                                             : BRIX_KIND_NONE;
    if (kind == BRIX_KIND_NONE && !strcmp(k->scalar, "List"))
        return fail(&v, k, "kind",
                    "a List (as `brix get -o yaml` prints) is not applied; apply its items as "
                    "documents separated by ---");
    if (kind == BRIX_KIND_NONE)
        return fail(&v, k, "kind",
                    "unknown kind '%s' (this controller manages ModelDeployment, "
                    "ModelAdapter and PodAutoscaler)",
                    k->scalar);
    if (!av || av->type != BRIX_YAML_SCALAR)
        return fail(&v, av ? av : doc, "apiVersion", "missing");
    const char *want = kind == BRIX_KIND_ADAPTER      ? "model.aibrix.ai/v1alpha1"
                       : kind == BRIX_KIND_DEPLOYMENT ? "model.brix.dev/v1alpha1"
                       : kind == BRIX_KIND_AUTOSCALER ? "autoscaling.aibrix.ai/v1alpha1"
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
            rc = kind == BRIX_KIND_DEPLOYMENT   ? parse_deploy(&v, spec, o)
                 : kind == BRIX_KIND_AUTOSCALER ? parse_pa(&v, spec, doc, o)
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
    brix_free(o->pa.target_api_version);
    brix_free(o->pa.target_kind);
    brix_free(o->pa.target_name);
    brix_free(o->pa.sub_target_role);
    for (int i = 0; i < o->pa.nmetrics && i < BRIX_AS_MAX_METRICS; i++) {
        brix_pa_metric_t *m = &o->pa.metrics[i];
        brix_free(m->protocol);
        brix_free(m->endpoint);
        brix_free(m->path);
        brix_free(m->port);
        brix_free(m->target_metric);
        brix_free(m->target_value);
    }
    brix_free(o->pa.predictive_mode);
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

/* The shortest decimal that reads back as exactly x (so the state file and
 * "unchanged" comparisons are stable). */
static int jdouble(brix_buf_t *b, double x, const char *suffix)
{
    char s[40];
    snprintf(s, sizeof s, "%.15g", x);
    if (strtod(s, NULL) != x)
        snprintf(s, sizeof s, "%.17g", x);
    return brix_buf_printf(b, "%s%s", s, suffix);
}

static int jostr(brix_buf_t *b, bool *first, const char *key, const char *val)
{
    if (!val)
        return 0;
    int rc = *first ? 0 : brix_buf_append_char(b, ',');
    *first = false;
    return rc | jstr(b, key, val);
}

static int pa_spec_json(brix_buf_t *b, const brix_pa_spec_t *p)
{
    static const char *const days[] = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" };
    bool first = true;
    int rc = brix_buf_append_str(b, "{\"scaleTargetRef\":{");
    rc |= jostr(b, &first, "apiVersion", p->target_api_version);
    rc |= jostr(b, &first, "kind", p->target_kind) | jostr(b, &first, "name", p->target_name);
    rc |= brix_buf_append_char(b, '}');
    if (p->sub_target_role)
        rc |= brix_buf_append_str(b, ",\"subTargetSelector\":{") |
              jstr(b, "roleName", p->sub_target_role) | brix_buf_append_char(b, '}');
    rc |= brix_buf_printf(b, ",\"minReplicas\":%lld,\"maxReplicas\":%lld,",
                          (long long)p->min_replicas, (long long)p->max_replicas);
    rc |= jstr(b, "scalingStrategy", brix_as_strategy_name(p->strategy));
    rc |= brix_buf_append_str(b, ",\"metricsSources\":[");
    for (int i = 0; i < p->nmetrics; i++) {
        const brix_pa_metric_t *m = &p->metrics[i];
        first = true;
        rc |= brix_buf_append_str(b, i ? ",{" : "{");
        rc |= jostr(b, &first, "metricSourceType", brix_pa_source_name(m->type));
        rc |= jostr(b, &first, "protocolType", m->protocol);
        rc |= jostr(b, &first, "endpoint", m->endpoint) | jostr(b, &first, "path", m->path);
        rc |= jostr(b, &first, "port", m->port);
        rc |= jostr(b, &first, "targetMetric", m->target_metric);
        rc |= jostr(b, &first, "targetValue", m->target_value) | brix_buf_append_char(b, '}');
    }
    rc |= brix_buf_append_char(b, ']');
    if (p->observe_window_ms)
        rc |= brix_buf_printf(b, ",\"observeWindowSeconds\":%lld",
                              (long long)(p->observe_window_ms / 1000));
    if (p->panic_window_ms)
        rc |= brix_buf_printf(b, ",\"panicWindowSeconds\":%lld",
                              (long long)(p->panic_window_ms / 1000));
    if (p->predictive_mode) {
        rc |= brix_buf_append_str(b, ",\"predictive\":{") | jstr(b, "mode", p->predictive_mode);
        if (p->predictive_horizon_ms)
            rc |= brix_buf_printf(b, ",\"horizonSeconds\":%lld",
                                  (long long)(p->predictive_horizon_ms / 1000));
        rc |= brix_buf_append_char(b, '}');
    }
    if (p->nschedules)
        rc |= brix_buf_append_str(b, ",\"schedules\":[");
    for (size_t i = 0; i < p->nschedules; i++) {
        const brix_as_schedule_t *s = &p->schedules[i];
        rc |= brix_buf_append_str(b, i ? ",{" : "{") | jstr(b, "name", s->name);
        if (s->timezone[0])
            rc |= brix_buf_append_char(b, ',') | jstr(b, "timezone", s->timezone);
        if (s->days) {
            /* Monday first, as people write weeks */
            rc |= brix_buf_append_str(b, ",\"daysOfWeek\":[");
            bool f = true;
            for (int k = 1; k <= 7; k++)
                if (s->days & (1u << (k % 7))) {
                    rc |= brix_buf_printf(b, "%s\"%s\"", f ? "" : ",", days[k % 7]);
                    f = false;
                }
            rc |= brix_buf_append_char(b, ']');
        }
        rc |=
            brix_buf_printf(b, ",\"startTime\":\"%02d:%02d\",\"endTime\":\"%02d:%02d\"",
                            s->start_min / 60, s->start_min % 60, s->end_min / 60, s->end_min % 60);
        if (s->min_replicas >= 0)
            rc |= brix_buf_printf(b, ",\"minReplicas\":%d", (int)s->min_replicas);
        if (s->max_replicas >= 0)
            rc |= brix_buf_printf(b, ",\"maxReplicas\":%d", (int)s->max_replicas);
        rc |= brix_buf_append_char(b, '}');
    }
    if (p->nschedules)
        rc |= brix_buf_append_char(b, ']');
    if (p->strategy == BRIX_AS_SLO) {
        rc |= brix_buf_append_str(b, ",\"slo\":{");
        if (p->slo_ttft_s)
            rc |= brix_buf_append_str(b, "\"ttft\":\"") | jdouble(b, p->slo_ttft_s, "s\"");
        if (p->slo_itl_s)
            rc |= brix_buf_append_str(b, p->slo_ttft_s ? ",\"itl\":\"" : "\"itl\":\"") |
                  jdouble(b, p->slo_itl_s, "s\"");
        rc |= brix_buf_append_str(b, ",\"headroom\":") | jdouble(b, p->slo_headroom, "");
        rc |= brix_buf_append_char(b, '}');
    }
    return rc | brix_buf_append_char(b, '}');
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
        rc |= brix_buf_printf(b, "\"kvCache\":%s,", d->kv_cache ? "true" : "false");
        rc |= jdur(b, "startupTimeout", (int64_t)d->startup_timeout_ms);
        return rc | brix_buf_append_char(b, '}');
    }
    if (o->kind == BRIX_KIND_AUTOSCALER)
        return pa_spec_json(b, &o->pa);
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
