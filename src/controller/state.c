/*
 * state — the controller's objects and replica records on disk, so a restart
 * loses nothing: one JSON file, written to a temp file, fsync'ed and renamed
 * over the old one (a crash leaves either the old or the new file, never a
 * mix). It is read back through the same validating parser as `brix apply`
 * (JSON is YAML), so a hand-edited state file gets file:line errors too.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "controller/ctl.h"
#include "core/alloc.h"
#include "core/log.h"
#include "core/time.h"

static int write_all(int fd, const char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static int render_state(brix_ctl_t *c, brix_buf_t *b)
{
    char ts[32];
    brix_time_iso8601(ts, brix_wall_ms());
    int rc =
        brix_buf_printf(b, "{\"brix\":\"controller-state\",\"format\":1,\"savedAt\":\"%s\",", ts);
    rc |= brix_buf_append_str(b, "\n\"deployments\":[");
    for (size_t i = 0; i < c->ndeploys; i++) {
        rc |= brix_buf_append_str(b, i ? ",\n" : "\n");
        rc |= brix_obj_json_open(b, c->deploys[i]) | brix_buf_append_char(b, '}');
    }
    rc |= brix_buf_append_str(b, "],\n\"adapters\":[");
    for (size_t i = 0; i < c->nadapters; i++) {
        brix_adapter_rt_t *a = c->adapters[i];
        rc |= brix_buf_append_str(b, i ? ",\n" : "\n");
        rc |= brix_obj_json_open(b, a->o);
        rc |= brix_buf_printf(b, ",\"status\":{\"scaled\":%s,\"lastUsedMs\":%llu",
                              a->scaled ? "true" : "false", (unsigned long long)a->last_used_wall);
        if (a->o->base_dir) /* where file:// artifacts of this object may be read from */
            rc |= brix_buf_append_str(b, ",\"baseDir\":") |
                  brix_buf_append_json_str(b, a->o->base_dir, strlen(a->o->base_dir));
        rc |= brix_buf_append_str(b, "}}");
    }
    rc |= brix_buf_append_str(b, "],\n\"autoscalers\":[");
    for (size_t i = 0; i < c->npas; i++) { /* with the scale each set: a restart keeps it */
        const brix_pa_rt_t *p = c->pas[i];
        rc |= brix_buf_append_str(b, i ? ",\n" : "\n");
        rc |= brix_obj_json_open(b, p->o);
        rc |= brix_buf_printf(b, ",\"status\":{\"scale\":%d,\"lastScaleMs\":%llu}}", p->scale,
                              (unsigned long long)p->last_scale_wall);
    }
    rc |= brix_buf_append_str(b, "],\n\"replicas\":[");
    for (size_t i = 0; i < c->nreps; i++) {
        brix_replica_t *r = c->reps[i];
        rc |= brix_buf_append_str(b, i ? ",\n{" : "\n{");
        rc |= brix_buf_append_str(b, "\"name\":") |
              brix_buf_append_json_str(b, r->name, strlen(r->name));
        rc |= brix_buf_append_str(b, ",\"deployment\":") |
              brix_buf_append_json_str(b, r->deployment, strlen(r->deployment));
        rc |= brix_buf_printf(b,
                              ",\"index\":%d,\"port\":%d,\"pid\":%d,\"startTicks\":%llu,"
                              "\"generation\":%lld,\"restarts\":%d,\"startedMs\":%llu,\"argv\":[",
                              r->index, r->port, r->pid, (unsigned long long)r->start_ticks,
                              (long long)r->generation, r->restarts,
                              (unsigned long long)r->started_wall_ms);
        for (size_t j = 0; j < r->argv.n; j++) {
            rc |= j ? brix_buf_append_char(b, ',') : 0;
            rc |= brix_buf_append_json_str(b, r->argv.v[j], strlen(r->argv.v[j]));
        }
        rc |= brix_buf_append_char(b, ']');
        if (r->log_path)
            rc |= brix_buf_append_str(b, ",\"log\":") |
                  brix_buf_append_json_str(b, r->log_path, strlen(r->log_path));
        rc |= brix_buf_append_char(b, '}');
    }
    return rc | brix_buf_append_str(b, "]}\n");
}

int brix_ctl_save(brix_ctl_t *c)
{
    brix_buf_t b = BRIX_BUF_INIT;
    if (render_state(c, &b)) {
        brix_buf_free(&b);
        BRIX_ERROR("state: out of memory");
        return -ENOMEM;
    }
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", c->state_path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    int rc = -EIO;
    if (fd < 0) {
        rc = -errno;
        BRIX_ERROR("state: %s: %s", tmp, strerror(errno));
        goto out;
    }
    /* the state keeps engine argv unredacted: owner-only, also when an older
     * version left a 0644 temp file behind */
    if (fchmod(fd, 0600) || write_all(fd, b.data, b.len) || fsync(fd)) {
        rc = errno ? -errno : -EIO;
        BRIX_ERROR("state: writing %s: %s", tmp, strerror(errno));
        close(fd);
        unlink(tmp);
        goto out;
    }
    close(fd);
    if (rename(tmp, c->state_path)) {
        rc = -errno;
        BRIX_ERROR("state: rename to %s: %s", c->state_path, strerror(errno));
        unlink(tmp);
        goto out;
    }
    int dfd = open(c->cfg.state_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* make the rename itself durable */
        fsync(dfd);
        close(dfd);
    }
    rc = 0;
out:
    brix_buf_free(&b);
    return rc;
}

static int64_t num(const brix_yaml_node_t *map, const char *key)
{
    const brix_yaml_node_t *n = brix_yaml_get(map, key);
    return n && n->type == BRIX_YAML_SCALAR ? strtoll(n->scalar, NULL, 10) : 0;
}

static const char *str(const brix_yaml_node_t *map, const char *key)
{
    const brix_yaml_node_t *n = brix_yaml_get(map, key);
    return n && n->type == BRIX_YAML_SCALAR ? n->scalar : NULL;
}

static int load_objects(brix_ctl_t *c, const brix_yaml_node_t *list, brix_kind_t kind, char *err,
                        size_t errlen)
{
    if (!list)
        return 0;
    if (list->type != BRIX_YAML_SEQ) {
        snprintf(err, errlen, "%s:%d:%d: expected a list", c->state_path, list->line, list->col);
        return -1;
    }
    for (size_t i = 0; i < list->n; i++) {
        brix_obj_t *o;
        const brix_yaml_node_t *st = brix_yaml_get(list->items[i], "status");
        if (brix_obj_parse(list->items[i], c->state_path, str(st, "baseDir"), &o, err, errlen))
            return -1;
        if (o->kind != kind) {
            snprintf(err, errlen, "%s:%d:%d: a %s in the %s list", c->state_path,
                     list->items[i]->line, list->items[i]->col, brix_kind_name(o->kind),
                     brix_kind_plural(kind));
            brix_obj_free(o);
            return -1;
        }
        brix_adapter_rt_t *a = NULL;
        if (brix_ctl_add(c, o, &a)) {
            brix_obj_free(o);
            return -1;
        }
        brix_pa_rt_t *pa = o->kind == BRIX_KIND_AUTOSCALER ? brix_ctl_pa(c, o->meta.name) : NULL;
        if (pa && str(st, "scale")) {
            int64_t sc = num(st, "scale");
            pa->scale = sc >= 0 && sc <= 100000 ? (int32_t)sc : -1;
            pa->last_scale_wall = (uint64_t)num(st, "lastScaleMs");
        }
        if (a) {
            const char *sc = str(st, "scaled");
            a->scaled = sc && !strcmp(sc, "true");
            a->last_used_wall = (uint64_t)num(st, "lastUsedMs");
        }
    }
    return 0;
}

static int load_replicas(brix_ctl_t *c, const brix_yaml_node_t *list)
{
    for (size_t i = 0; list && list->type == BRIX_YAML_SEQ && i < list->n; i++) {
        const brix_yaml_node_t *n = list->items[i];
        const char *name = str(n, "name"), *dep = str(n, "deployment");
        brix_obj_t *d = dep ? brix_ctl_deploy(c, dep) : NULL;
        if (!name || !d)
            continue;
        brix_replica_t *r = brix_calloc(1, sizeof *r);
        brix_replica_t **v = brix_realloc(c->reps, (c->nreps + 1) * sizeof *v);
        if (v)
            c->reps = v;
        if (!r || !v || !(r->name = brix_strdup(name)) || !(r->deployment = brix_strdup(dep)) ||
            !(r->model = brix_strdup(d->d.model))) {
            if (r)
                brix_ctl_replica_free(NULL, r);
            return -1;
        }
        r->index = (int)num(n, "index");
        r->port = (int)num(n, "port");
        r->pid = (int)num(n, "pid");
        r->start_ticks = (uint64_t)num(n, "startTicks");
        r->generation = num(n, "generation");
        r->restarts = (int)num(n, "restarts");
        r->started_wall_ms = (uint64_t)num(n, "startedMs");
        r->backoff_ms = 1000;
        snprintf(r->url, sizeof r->url, "http://127.0.0.1:%d", r->port);
        const brix_yaml_node_t *av = brix_yaml_get(n, "argv");
        for (size_t j = 0; av && av->type == BRIX_YAML_SEQ && j < av->n; j++)
            if (av->items[j]->type == BRIX_YAML_SCALAR)
                brix_strlist_push(&r->argv, av->items[j]->scalar);
        const char *log = str(n, "log");
        r->log_path = log ? brix_strdup(log) : NULL;
        c->reps[c->nreps++] = r;
        if (r->pid > 0 && c->prov->ops->adopt(c->prov, r) == 0) {
            /* the labels are recomputed from the deployment, as on a start */
            r->phase = BRIX_RP_STARTING;
            r->started_ms = brix_now_ms();
            brix_ctl_replica_labels(r, d);
            BRIX_INFO("replica %s: adopted running pid %d on %s", r->name, r->pid, r->url);
        } else {
            if (r->pid > 0)
                BRIX_INFO("replica %s: pid %d from the last run is gone; starting it again",
                          r->name, r->pid);
            r->pid = 0;
            r->phase = BRIX_RP_PENDING;
            r->restart_at_ms = brix_now_ms();
        }
    }
    return 0;
}

int brix_ctl_load(brix_ctl_t *c, char *err, size_t errlen)
{
    struct stat st;
    if (stat(c->state_path, &st) != 0) {
        int e = errno;
        if (e == ENOENT)
            return 0; /* a first start */
        snprintf(err, errlen, "%s: %s", c->state_path, strerror(e));
        return -e;
    }
    brix_yaml_node_t *root;
    if (brix_yaml_load_file(c->state_path, &root, err, errlen))
        return -EINVAL;
    int rc = -EINVAL;
    if (root->type != BRIX_YAML_MAP || !str(root, "brix") ||
        strcmp(str(root, "brix"), "controller-state")) {
        snprintf(err, errlen, "%s: not a brix controller state file", c->state_path);
        goto out;
    }
    if (load_objects(c, brix_yaml_get(root, "deployments"), BRIX_KIND_DEPLOYMENT, err, errlen) ||
        load_objects(c, brix_yaml_get(root, "adapters"), BRIX_KIND_ADAPTER, err, errlen) ||
        load_objects(c, brix_yaml_get(root, "autoscalers"), BRIX_KIND_AUTOSCALER, err, errlen) ||
        load_replicas(c, brix_yaml_get(root, "replicas"))) {
        if (!err[0]) {
            snprintf(err, errlen, "%s: out of memory", c->state_path);
            rc = -ENOMEM;
        }
        goto out;
    }
    BRIX_INFO("state: %zu deployment(s), %zu adapter(s), %zu autoscaler(s), %zu replica(s) from "
              "%s",
              c->ndeploys, c->nadapters, c->npas, c->nreps, c->state_path);
    rc = 0;
out:
    brix_yaml_free(root);
    return rc;
}
