/*
 * Adapter registry and its two LRU caches. Counts are small (tens to a few
 * hundred adapters), so LRU victims are found by a linear scan over the
 * registered adapters rather than with linked lists.
 */
#include "engine_sim/lora.h"

#include "core/alloc.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

void brix_lora_reg_init(brix_lora_reg_t *r, uint32_t max_loras, uint32_t max_cpu_loras)
{
    memset(r, 0, sizeof *r);
    r->max_loras = max_loras ? max_loras : 1;
    r->max_cpu_loras = max_cpu_loras >= r->max_loras ? max_cpu_loras : r->max_loras;
    r->next_id = 1;
}

static void lora_destroy(brix_lora_t *l)
{
    brix_free(l->name);
    brix_free(l->path);
    brix_free(l);
}

void brix_lora_reg_free(brix_lora_reg_t *r)
{
    for (size_t i = 0; i < r->n; i++)
        lora_destroy(r->v[i]);
    for (size_t i = 0; i < r->ngone; i++)
        lora_destroy(r->gone[i]);
    brix_free(r->v);
    brix_free(r->gone);
    memset(r, 0, sizeof *r);
}

brix_lora_t *brix_lora_find(const brix_lora_reg_t *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++)
        if (!strcmp(r->v[i]->name, name))
            return r->v[i];
    return NULL;
}

brix_lora_t *brix_lora_by_id(const brix_lora_reg_t *r, int64_t id)
{
    for (size_t i = 0; i < r->n + r->ngone; i++) {
        brix_lora_t *l = i < r->n ? r->v[i] : r->gone[i - r->n];
        if (l->id == id)
            return l;
    }
    return NULL;
}

brix_lora_t *brix_lora_add(brix_lora_reg_t *r, const char *name, const char *path)
{
    brix_lora_t **v = brix_realloc(r->v, (r->n + 1) * sizeof *v);
    if (!v)
        return NULL;
    r->v = v;
    brix_lora_t *l = brix_calloc(1, sizeof *l);
    if (!l)
        return NULL;
    l->name = brix_strdup(name);
    l->path = brix_strdup(path);
    if (!l->name || !l->path) {
        lora_destroy(l);
        return NULL;
    }
    l->id = r->next_id++;
    l->refs = 1;
    l->registered = true;
    r->v[r->n++] = l;
    return l;
}

static void drop_caches(brix_lora_reg_t *r, brix_lora_t *l)
{
    if (l->in_cpu) {
        l->in_cpu = false;
        r->ncpu--;
    }
    if (l->in_gpu) {
        l->in_gpu = false;
        r->ngpu--;
    }
}

int brix_lora_remove(brix_lora_reg_t *r, const char *name)
{
    for (size_t i = 0; i < r->n; i++) {
        brix_lora_t *l = r->v[i];
        if (strcmp(l->name, name))
            continue;
        memmove(&r->v[i], &r->v[i + 1], (r->n - i - 1) * sizeof *r->v);
        r->n--;
        l->registered = false;
        if (l->refs > 1) {
            /* still used: keep it listed for metrics until the last use */
            brix_lora_t **g = brix_realloc(r->gone, (r->ngone + 1) * sizeof *g);
            if (g) {
                r->gone = g;
                r->gone[r->ngone++] = l;
            }
        }
        brix_lora_unref(r, l);
        return 0;
    }
    return -ENOENT;
}

void brix_lora_ref(brix_lora_t *l)
{
    l->refs++;
}

void brix_lora_unref(brix_lora_reg_t *r, brix_lora_t *l)
{
    if (--l->refs)
        return;
    for (size_t i = 0; i < r->ngone; i++) {
        if (r->gone[i] == l) {
            r->gone[i] = r->gone[--r->ngone];
            break;
        }
    }
    drop_caches(r, l);
    lora_destroy(l);
}

double brix_lora_ensure_cpu(brix_lora_reg_t *r, brix_lora_t *l, double load_s)
{
    l->cpu_tick = ++r->tick;
    if (l->in_cpu)
        return 0;
    if (r->ncpu >= r->max_cpu_loras) {
        brix_lora_t *victim = NULL;
        for (size_t i = 0; i < r->n; i++) {
            brix_lora_t *c = r->v[i];
            if (c != l && c->in_cpu && !c->running && (!victim || c->cpu_tick < victim->cpu_tick))
                victim = c;
        }
        if (victim) {
            victim->in_cpu = false;
            r->ncpu--;
            if (victim->in_gpu) { /* a GPU copy without a host copy is not kept */
                victim->in_gpu = false;
                r->ngpu--;
            }
        }
    }
    l->in_cpu = true;
    r->ncpu++;
    return load_s;
}

bool brix_lora_admissible(const brix_lora_reg_t *r, const brix_lora_t *l)
{
    return l->running > 0 || r->nbusy < r->max_loras;
}

double brix_lora_start(brix_lora_reg_t *r, brix_lora_t *l, double load_s, double swap_s)
{
    double cost = 0;
    if (l->running++ > 0)
        return 0;
    r->nbusy++;
    cost += brix_lora_ensure_cpu(r, l, load_s);
    l->gpu_tick = ++r->tick;
    if (!l->in_gpu) {
        if (r->ngpu >= r->max_loras) {
            brix_lora_t *victim = NULL;
            for (size_t i = 0; i < r->n; i++) {
                brix_lora_t *c = r->v[i];
                if (c != l && c->in_gpu && !c->running &&
                    (!victim || c->gpu_tick < victim->gpu_tick))
                    victim = c;
            }
            if (victim) {
                victim->in_gpu = false;
                r->ngpu--;
            }
        }
        l->in_gpu = true;
        r->ngpu++;
        cost += swap_s;
    }
    return cost;
}

void brix_lora_stop(brix_lora_reg_t *r, brix_lora_t *l)
{
    if (l->running && --l->running == 0)
        r->nbusy--;
}

void brix_lora_names(const brix_lora_reg_t *r, bool running, char *out, size_t outlen)
{
    size_t pos = 0;
    out[0] = '\0';
    for (size_t i = 0; i < r->n + r->ngone; i++) {
        const brix_lora_t *l = i < r->n ? r->v[i] : r->gone[i - r->n];
        if (running ? !l->running : !l->waiting)
            continue;
        int w = snprintf(out + pos, outlen - pos, "%s%s", pos ? "," : "", l->name);
        if (w < 0 || (size_t)w >= outlen - pos)
            break;
        pos += (size_t)w;
    }
}
