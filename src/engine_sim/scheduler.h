/*
 * scheduler — continuous batching over the paged KV cache, after vLLM V1's
 * Scheduler (vllm/v1/core/sched/scheduler.py).
 *
 * A step is planned, timed and then committed:
 *  plan:   running sequences first, in admission order, each asking for the
 *          tokens it still lacks KV for (1 for a decode, the rest of the prompt
 *          for a prefill, capped by the token budget = chunked prefill); when
 *          blocks run out the most recently admitted running sequence is
 *          preempted (its blocks freed, recompute later) and put back at the
 *          front of the waiting queue. Only if nothing was preempted are
 *          waiting sequences admitted, in order, while the batch has room
 *          (max_num_seqs, token budget, free blocks, LoRA slots); a sequence
 *          whose adapter cannot get a slot is skipped, not blocking the rest.
 *          A newly admitted sequence first takes the longest run of cached
 *          blocks of its tokens (prefix caching; at most ntokens-1 tokens, so
 *          the last one is always computed to produce logits).
 *  time:   the profile's step latency for the planned prefill tokens and
 *          decode sequences, plus any LoRA loading it caused.
 *  commit: the clock advances; sequences get their KV computed; newly full
 *          blocks are hashed and registered in the prefix cache; a sequence
 *          whose every token now has KV samples one output token; finished
 *          sequences release their blocks.
 * The scheduler is pure logic: the engine drives it from a libuv timer, and
 * unit tests drive it directly.
 */
#ifndef BRIX_ENGINE_SIM_SCHEDULER_H
#define BRIX_ENGINE_SIM_SCHEDULER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/gpu_profile.h"
#include "engine_sim/kv_cache.h"
#include "engine_sim/lora.h"

typedef enum brix_seq_state {
    BRIX_SEQ_NEW,      /* created, not yet added */
    BRIX_SEQ_WAITING,  /* in the waiting queue (new or preempted) */
    BRIX_SEQ_RUNNING,  /* in the running batch, holding blocks */
    BRIX_SEQ_FINISHED, /* done; blocks released; owner may free it */
} brix_seq_state_t;

typedef enum brix_finish {
    BRIX_FINISH_NONE = 0,
    BRIX_FINISH_STOP,   /* end-of-sequence drawn, or a stop string matched */
    BRIX_FINISH_LENGTH, /* max_tokens or max_model_len reached */
    BRIX_FINISH_ABORT,  /* client went away or the request was cancelled */
} brix_finish_t;

typedef struct brix_seq brix_seq_t;

/* Where a sequence stands with an external KV cache (a KV connector). */
typedef enum brix_seq_kv {
    BRIX_SEQ_KV_NONE,    /* not looked up yet */
    BRIX_SEQ_KV_WAITING, /* lookup/load in flight (vLLM's WAITING_FOR_REMOTE_KVS): not admitted */
    BRIX_SEQ_KV_READY,   /* loaded: blocks [kv_from, kv_from + kv_blocks) verified */
    BRIX_SEQ_KV_DONE,    /* nothing (more) to load */
} brix_seq_kv_t;

struct brix_seq {
    brix_seq_t *prev, *next; /* waiting or running list */
    brix_seq_state_t state;
    uint64_t id;
    uint32_t *tokens; /* prompt then generated tokens */
    size_t ntokens, cap;
    size_t prompt_len;
    size_t num_computed; /* tokens whose KV is computed */
    uint32_t *blocks;
    size_t nblocks, blocks_cap;
    uint64_t *hashes; /* chain hashes of the full blocks of `tokens` */
    size_t nhashes, hashes_cap;
    size_t nregistered; /* leading blocks already offered to the prefix cache */
    brix_lora_t *lora;  /* NULL = base model */
    size_t max_tokens;  /* generated-token cap */
    size_t eos_at;      /* output length at which EOS is drawn, SIZE_MAX = never */
    bool prefill_only;  /* embeddings: finished once the prompt is computed */
    size_t generated;
    size_t cached_tokens; /* prefix-cache hit at first admission */
    bool admitted_once;
    uint32_t preemptions;
    uint64_t rng; /* output-token generator state */
    /* Simulated clock (seconds) at each phase, for vLLM's histograms. */
    double t_arrival, t_first_sched, t_first_token, t_last_token, t_finish;
    brix_finish_t finish;
    size_t step_tokens; /* scratch: tokens scheduled in the current step */
    /* external KV (only with a connector) */
    brix_seq_kv_t kv_state;
    size_t kv_from, kv_blocks; /* READY: the loaded run of prompt blocks */
    size_t kv_saved;           /* prompt blocks before this are saved or not ours to save */
    void *kv_job;              /* the connector's in-flight job */
    void *ud;                  /* owner's */
};

typedef struct brix_sched_cfg {
    size_t max_num_seqs;
    size_t max_num_batched_tokens;
    size_t max_model_len;
    bool chunked_prefill;
    const brix_gpu_profile_t *profile;
} brix_sched_cfg_t;

typedef struct brix_sched_stats {
    uint64_t preemptions;
    uint64_t prefix_queries; /* tokens looked up in the prefix cache */
    uint64_t prefix_hits;    /* tokens found */
    uint64_t prompt_tokens;  /* full prompt length, counted at first token */
    uint64_t generation_tokens;
    uint64_t steps;
} brix_sched_stats_t;

typedef struct brix_sched_cb {
    /* A sequence produced `token`. Return true to finish it now with STOP
     * (a stop string matched). Not called for prefill-only sequences. */
    bool (*on_token)(brix_seq_t *s, uint32_t token, void *ud);
    /* The sequence finished (s->finish says why); its blocks are released and
     * it is out of every queue; the owner may free it after this returns. */
    void (*on_finish)(brix_seq_t *s, void *ud);
    /* Step bookkeeping for metrics: tokens scheduled in the step just committed. */
    void (*on_step)(uint64_t tokens, void *ud);
    void *ud;
} brix_sched_cb_t;

/* A KV connector's scheduler side (vLLM's get_num_new_matched_tokens and
 * the save path); NULL members are not called. */
typedef struct brix_sched_kv {
    /* Called once when the waiting sequence q is first considered: its local
     * prefix-cache hit ends at prompt block `from`, and blocks up to `to` could
     * be loaded. Returns 1 when a load started (q waits until the connector
     * calls brix_sched_kv_ready), 0 when there is nothing to load, -EAGAIN to
     * be asked again at the next step (the connector is saturated). */
    int (*lookup)(brix_seq_t *q, size_t from, size_t to, void *ud);
    /* q leaves the scheduler (abort) while its load is in flight. */
    void (*cancel)(brix_seq_t *q, void *ud);
    /* q was admitted using ext_blocks loaded blocks (0 when its load gave
     * nothing usable). */
    void (*admitted)(brix_seq_t *q, size_t ext_blocks, void *ud);
    /* Prompt blocks [from, to) of q were just computed (full, hashed). */
    void (*save)(brix_seq_t *q, size_t from, size_t to, void *ud);
    void *ud;
} brix_sched_kv_t;

typedef struct brix_sched {
    brix_sched_cfg_t cfg;
    const brix_sched_kv_t *kv; /* NULL = no connector */
    brix_kv_pool_t *pool;
    brix_lora_reg_t *loras;
    brix_sched_cb_t cb;
    brix_seq_t *wait_head, *wait_tail;
    brix_seq_t *run_head, *run_tail;
    size_t nwaiting, nrunning;
    /* the planned step */
    brix_seq_t **step;
    size_t nstep, step_cap;
    uint64_t plan_prefill_tokens, plan_decode_ctx, plan_decode_seqs;
    double plan_extra_s; /* LoRA loads caused by the plan */
    bool planned;
    double now; /* simulated clock, seconds */
    brix_sched_stats_t st;
    uint64_t next_id;
} brix_sched_t;

int brix_sched_init(brix_sched_t *s, const brix_sched_cfg_t *cfg, brix_kv_pool_t *pool,
                    brix_lora_reg_t *loras, const brix_sched_cb_t *cb);
void brix_sched_free(brix_sched_t *s);

/* Initialises a sequence with its prompt (copied). Returns 0 or -ENOMEM. */
int brix_seq_init(brix_seq_t *q, const uint32_t *prompt, size_t n, size_t max_tokens);
void brix_seq_free(brix_seq_t *q);

/* Adds a sequence at the tail of the waiting queue; `now` is its arrival on
 * the simulated clock. Its prompt block hashes are computed here. */
int brix_sched_add(brix_sched_t *s, brix_seq_t *q, double now);
/* Removes a waiting or running sequence and finishes it with ABORT (on_finish
 * is not called: the caller is the one aborting). */
void brix_sched_abort(brix_sched_t *s, brix_seq_t *q);

/* Plans the next step; returns false when there is nothing to run. *seconds is
 * its simulated duration. Planning twice without commit is not allowed. */
bool brix_sched_plan(brix_sched_t *s, double *seconds);
/* Applies the planned step at simulated time `end` (seconds). */
void brix_sched_commit(brix_sched_t *s, double end);
/* Whether any sequence is waiting or running. */
bool brix_sched_busy(const brix_sched_t *s);

/* The connector finished q's load: blocks [from, from + n) of its prompt are
 * loaded (n may be 0). q becomes admissible; the caller kicks the engine. */
void brix_sched_kv_ready(brix_sched_t *s, brix_seq_t *q, size_t from, size_t n);

/* Deterministic output token generator shared with the API layer. */
uint64_t brix_sched_rng_next(uint64_t *state);

#endif
