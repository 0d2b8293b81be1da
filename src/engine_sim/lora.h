/*
 * lora — LoRA adapters of the simulated engine, as vLLM manages them.
 *
 * The registry holds every adapter the server knows (from --lora-modules or
 * /v1/load_lora_adapter); that is what /v1/models lists. Two LRU caches model
 * where the weights are: host memory (max_cpu_loras adapters; reading one from
 * disk costs the profile's lora_load_seconds) and GPU slots (max_loras; copying
 * one in costs lora_swap_seconds). The scheduler admits a request only if its
 * adapter is in the batch already or a slot can be freed for it.
 *
 * An adapter stays allocated while requests reference it, even after unload
 * (unload only removes it from the registry, as in vLLM).
 */
#ifndef BRIX_ENGINE_SIM_LORA_H
#define BRIX_ENGINE_SIM_LORA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct brix_lora {
    char *name;
    char *path;
    int64_t id;       /* vLLM's lora_int_id: 1, 2, ... in load order */
    uint32_t refs;    /* requests (waiting or running) using it, + 1 while registered */
    uint32_t running; /* sequences in the running batch */
    uint32_t waiting; /* sequences waiting */
    bool registered;
    bool in_cpu, in_gpu;
    uint64_t cpu_tick, gpu_tick; /* LRU stamps */
} brix_lora_t;

typedef struct brix_lora_reg {
    brix_lora_t **v; /* registered adapters, in load order */
    size_t n;
    brix_lora_t **gone; /* unloaded but still used by requests */
    size_t ngone;
    int64_t next_id;
    uint32_t max_loras, max_cpu_loras;
    uint64_t tick;
    uint32_t ncpu, ngpu;
    uint32_t nbusy; /* adapters with running sequences */
} brix_lora_reg_t;

void brix_lora_reg_init(brix_lora_reg_t *r, uint32_t max_loras, uint32_t max_cpu_loras);
void brix_lora_reg_free(brix_lora_reg_t *r);
brix_lora_t *brix_lora_find(const brix_lora_reg_t *r, const char *name);
/* By lora id, including unloaded adapters still in use; NULL when none. */
brix_lora_t *brix_lora_by_id(const brix_lora_reg_t *r, int64_t id);
/* Registers a new adapter (name must not be registered). NULL on ENOMEM. */
brix_lora_t *brix_lora_add(brix_lora_reg_t *r, const char *name, const char *path);
/* Unregisters; the object lives on until its last reference is dropped. */
int brix_lora_remove(brix_lora_reg_t *r, const char *name);
void brix_lora_ref(brix_lora_t *l);
void brix_lora_unref(brix_lora_reg_t *r, brix_lora_t *l);

/*
 * Makes l host-resident (loading it from "disk"), evicting the least recently
 * used host-resident adapter that is neither busy nor registered-and-in-a-slot
 * if the cache is full. Returns the simulated seconds it cost (0 if resident).
 */
double brix_lora_ensure_cpu(brix_lora_reg_t *r, brix_lora_t *l, double load_s);
/* Whether a sequence of l may join the running batch: l is busy already, or
 * fewer than max_loras adapters are busy (vLLM's per-batch adapter limit). */
bool brix_lora_admissible(const brix_lora_reg_t *r, const brix_lora_t *l);
/*
 * A sequence of l joins the running batch. If l was not busy it takes a GPU
 * slot (evicting the LRU idle holder) and, if needed, is loaded to host memory
 * first. Returns the simulated seconds this adds to the current step.
 */
double brix_lora_start(brix_lora_reg_t *r, brix_lora_t *l, double load_s, double swap_s);
/* A sequence of l leaves the running batch (finished or preempted). */
void brix_lora_stop(brix_lora_reg_t *r, brix_lora_t *l);
/* Comma-joined names of busy adapters (running) or with waiting sequences,
 * as vllm:lora_requests_info labels them. Writes "" when none. */
void brix_lora_names(const brix_lora_reg_t *r, bool running, char *out, size_t outlen);

#endif
