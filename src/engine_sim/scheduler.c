/*
 * Continuous batching; see scheduler.h for the policy. Lists are intrusive
 * doubly linked lists (O(1) preemption from the tail and re-queue at the
 * front); the step is an array of the sequences planned, in plan order.
 */
#include "engine_sim/scheduler.h"

#include "core/alloc.h"
#include "core/tokenizer.h"

#include <errno.h>
#include <string.h>

/* ------------------------------------------------------------- lists -- */

static void list_unlink(brix_seq_t **head, brix_seq_t **tail, brix_seq_t *q)
{
    if (q->prev)
        q->prev->next = q->next;
    else
        *head = q->next;
    if (q->next)
        q->next->prev = q->prev;
    else
        *tail = q->prev;
    q->prev = q->next = NULL;
}

static void list_push_tail(brix_seq_t **head, brix_seq_t **tail, brix_seq_t *q)
{
    q->next = NULL;
    q->prev = *tail;
    if (*tail)
        (*tail)->next = q;
    else
        *head = q;
    *tail = q;
}

static void list_push_front(brix_seq_t **head, brix_seq_t **tail, brix_seq_t *q)
{
    q->prev = NULL;
    q->next = *head;
    if (*head)
        (*head)->prev = q;
    else
        *tail = q;
    *head = q;
}

/* ---------------------------------------------------------- sequences -- */

uint64_t brix_sched_rng_next(uint64_t *state)
{
    /* splitmix64: tiny, fast, and good enough for choosing words */
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

int brix_seq_init(brix_seq_t *q, const uint32_t *prompt, size_t n, size_t max_tokens)
{
    memset(q, 0, sizeof *q);
    q->cap = n + (max_tokens < 64 ? max_tokens : 64) + 1;
    q->tokens = brix_malloc(q->cap * sizeof *q->tokens);
    if (!q->tokens)
        return -ENOMEM;
    if (n)
        memcpy(q->tokens, prompt, n * sizeof *prompt);
    q->ntokens = q->prompt_len = n;
    q->max_tokens = max_tokens;
    q->eos_at = SIZE_MAX;
    q->state = BRIX_SEQ_NEW;
    return 0;
}

void brix_seq_free(brix_seq_t *q)
{
    brix_free(q->tokens);
    brix_free(q->blocks);
    brix_free(q->hashes);
    q->tokens = NULL;
    q->blocks = NULL;
    q->hashes = NULL;
}

static int seq_push_token(brix_seq_t *q, uint32_t tok)
{
    if (q->ntokens == q->cap) {
        size_t cap = q->cap * 2;
        uint32_t *t = brix_realloc(q->tokens, cap * sizeof *t);
        if (!t)
            return -ENOMEM;
        q->tokens = t;
        q->cap = cap;
    }
    q->tokens[q->ntokens++] = tok;
    return 0;
}

/* Chain hashes for every full block of q->tokens. */
static int seq_update_hashes(brix_sched_t *s, brix_seq_t *q)
{
    uint32_t bs = s->pool->block_size;
    size_t full = q->ntokens / bs;
    if (full <= q->nhashes)
        return 0;
    if (full > q->hashes_cap) {
        size_t cap = q->hashes_cap ? q->hashes_cap : 8;
        while (cap < full)
            cap *= 2;
        uint64_t *h = brix_realloc(q->hashes, cap * sizeof *h);
        if (!h)
            return -ENOMEM;
        q->hashes = h;
        q->hashes_cap = cap;
    }
    int64_t lora = q->lora ? q->lora->id : -1;
    for (size_t i = q->nhashes; i < full; i++) {
        uint64_t parent = i ? q->hashes[i - 1] : BRIX_KV_ROOT_HASH;
        q->hashes[i] = brix_kv_block_hash(parent, q->tokens + i * bs, bs, lora);
    }
    q->nhashes = full;
    return 0;
}

static size_t blocks_for(const brix_sched_t *s, size_t tokens)
{
    return (tokens + s->pool->block_size - 1) / s->pool->block_size;
}

static int seq_reserve_blocks(brix_seq_t *q, size_t n)
{
    if (n <= q->blocks_cap)
        return 0;
    size_t cap = q->blocks_cap ? q->blocks_cap : 8;
    while (cap < n)
        cap *= 2;
    uint32_t *b = brix_realloc(q->blocks, cap * sizeof *b);
    if (!b)
        return -ENOMEM;
    q->blocks = b;
    q->blocks_cap = cap;
    return 0;
}

/* Makes q hold blocks for `tokens` tokens; false when the pool is short. */
static bool seq_grow_blocks(brix_sched_t *s, brix_seq_t *q, size_t tokens)
{
    size_t want = blocks_for(s, tokens);
    if (want <= q->nblocks)
        return true;
    if (seq_reserve_blocks(q, want))
        return false;
    if (!brix_kv_pool_alloc(s->pool, want - q->nblocks, q->blocks + q->nblocks))
        return false;
    q->nblocks = want;
    return true;
}

static void seq_release_blocks(brix_sched_t *s, brix_seq_t *q)
{
    brix_kv_pool_release(s->pool, q->blocks, q->nblocks);
    q->nblocks = 0;
}

/* Offers newly full, computed blocks to the prefix cache and reports the
 * runs that got registered (one BlockStored per run, as vLLM batches them). */
static void seq_register_blocks(brix_sched_t *s, brix_seq_t *q)
{
    brix_kv_pool_t *p = s->pool;
    uint32_t bs = p->block_size;
    size_t full = q->num_computed / bs;
    if (full > q->nblocks)
        full = q->nblocks;
    if (!p->prefix_caching || full <= q->nregistered)
        return;
    if (seq_update_hashes(s, q))
        return; /* ENOMEM: skip caching, the sequence still runs */
    int64_t lora = q->lora ? q->lora->id : -1;
    size_t run = SIZE_MAX;
    for (size_t i = q->nregistered; i <= full; i++) {
        bool ok = i < full && brix_kv_pool_cache_block(p, q->blocks[i], q->hashes[i]);
        if (ok && run == SIZE_MAX)
            run = i;
        if (!ok && run != SIZE_MAX) {
            brix_kv_pool_report_stored(p, q->hashes + run, i - run, run > 0,
                                       run ? q->hashes[run - 1] : 0, q->tokens + run * bs,
                                       (i - run) * bs, lora);
            run = SIZE_MAX;
        }
    }
    q->nregistered = full;
}

/* ---------------------------------------------------------- scheduler -- */

int brix_sched_init(brix_sched_t *s, const brix_sched_cfg_t *cfg, brix_kv_pool_t *pool,
                    brix_lora_reg_t *loras, const brix_sched_cb_t *cb)
{
    memset(s, 0, sizeof *s);
    s->cfg = *cfg;
    s->pool = pool;
    s->loras = loras;
    s->cb = *cb;
    s->step_cap = cfg->max_num_seqs;
    s->step = brix_calloc(s->step_cap, sizeof *s->step);
    return s->step ? 0 : -ENOMEM;
}

void brix_sched_free(brix_sched_t *s)
{
    brix_free(s->step);
    s->step = NULL;
}

int brix_sched_add(brix_sched_t *s, brix_seq_t *q, double now)
{
    if (seq_update_hashes(s, q))
        return -ENOMEM;
    q->id = ++s->next_id;
    q->t_arrival = now;
    q->state = BRIX_SEQ_WAITING;
    list_push_tail(&s->wait_head, &s->wait_tail, q);
    s->nwaiting++;
    if (q->lora)
        q->lora->waiting++;
    return 0;
}

static void unplan(brix_sched_t *s, brix_seq_t *q)
{
    for (size_t i = 0; i < s->nstep; i++)
        if (s->step[i] == q)
            s->step[i] = NULL;
}

static void leave_running(brix_sched_t *s, brix_seq_t *q)
{
    list_unlink(&s->run_head, &s->run_tail, q);
    s->nrunning--;
    if (q->lora)
        brix_lora_stop(s->loras, q->lora);
    seq_release_blocks(s, q);
}

void brix_sched_abort(brix_sched_t *s, brix_seq_t *q)
{
    if (q->kv_state == BRIX_SEQ_KV_WAITING && s->kv && s->kv->cancel)
        s->kv->cancel(q, s->kv->ud);
    if (q->state == BRIX_SEQ_WAITING) {
        list_unlink(&s->wait_head, &s->wait_tail, q);
        s->nwaiting--;
        if (q->lora)
            q->lora->waiting--;
    } else if (q->state == BRIX_SEQ_RUNNING) {
        leave_running(s, q);
    }
    unplan(s, q);
    q->state = BRIX_SEQ_FINISHED;
    q->finish = BRIX_FINISH_ABORT;
    q->t_finish = s->now;
}

static void preempt(brix_sched_t *s, brix_seq_t *q)
{
    leave_running(s, q);
    q->num_computed = 0;
    q->nregistered = 0;
    q->state = BRIX_SEQ_WAITING;
    q->preemptions++;
    list_push_front(&s->wait_head, &s->wait_tail, q);
    s->nwaiting++;
    if (q->lora)
        q->lora->waiting++;
    s->st.preemptions++;
}

static void plan_add(brix_sched_t *s, brix_seq_t *q, size_t n, bool decode)
{
    s->step[s->nstep++] = q;
    q->step_tokens = n;
    if (decode) {
        s->plan_decode_seqs++;
        s->plan_decode_ctx += q->num_computed + 1;
    } else {
        s->plan_prefill_tokens += n;
    }
}

/* Blocks of q that a cache may supply: all full ones but the last token's
 * (the last token is always computed, to produce logits). */
static size_t max_hit_blocks(const brix_sched_t *s, const brix_seq_t *q)
{
    size_t max_hit = (q->ntokens - 1) / s->pool->block_size;
    return max_hit < q->nhashes ? max_hit : q->nhashes;
}

/* With a connector: whether the waiting sequence q must be skipped this step
 * because its external lookup/load is in flight (or cannot start yet). The
 * lookup covers the prompt blocks after the local prefix-cache hit. */
static bool kv_defer(brix_sched_t *s, brix_seq_t *q)
{
    if (q->kv_state == BRIX_SEQ_KV_WAITING)
        return true;
    if (q->kv_state != BRIX_SEQ_KV_NONE)
        return false;
    if (!s->kv->lookup) {
        q->kv_state = BRIX_SEQ_KV_DONE;
        return false;
    }
    size_t to = max_hit_blocks(s, q);
    size_t from = brix_kv_pool_count_cached(s->pool, q->hashes, to);
    int rc = s->kv->lookup(q, from, to, s->kv->ud);
    if (rc == -EAGAIN)
        return true;
    q->kv_state = rc == 1 ? BRIX_SEQ_KV_WAITING : BRIX_SEQ_KV_DONE;
    return rc == 1;
}

void brix_sched_kv_ready(brix_sched_t *s, brix_seq_t *q, size_t from, size_t n)
{
    (void)s;
    q->kv_state = BRIX_SEQ_KV_READY;
    q->kv_from = from;
    q->kv_blocks = n;
    q->kv_job = NULL;
}

/* Tries to admit the waiting sequence q; returns false if it cannot run now
 * because the step is out of budget or blocks (stop admitting). */
static bool admit(brix_sched_t *s, brix_seq_t *q, size_t *budget)
{
    brix_kv_pool_t *p = s->pool;
    uint32_t bs = p->block_size;
    size_t hit_blocks = 0;
    if (p->prefix_caching)
        hit_blocks = brix_kv_pool_count_cached(p, q->hashes, max_hit_blocks(s, q));
    /* Loaded blocks continue the local hit; if the local hit shrank since the
     * lookup (evictions), the loaded run no longer joins it and is dropped. */
    size_t ext_blocks = 0;
    if (q->kv_state == BRIX_SEQ_KV_READY) {
        size_t end = q->kv_from + q->kv_blocks, max_hit = max_hit_blocks(s, q);
        if (end > max_hit)
            end = max_hit;
        if (hit_blocks >= q->kv_from && end > hit_blocks)
            ext_blocks = end - hit_blocks;
    }
    size_t hit_tokens = (hit_blocks + ext_blocks) * bs;
    size_t need = q->ntokens - hit_tokens;
    size_t n = need < *budget ? need : *budget;
    if (!s->cfg.chunked_prefill && n < need)
        return false;
    /* loaded blocks need fresh local blocks like computed ones */
    size_t new_blocks = blocks_for(s, hit_tokens + n) - hit_blocks;
    if (seq_reserve_blocks(q, hit_blocks + new_blocks))
        return false;
    /* Take the hits first (they leave the free queue), then allocate; undo
     * the hits if the pool is short. */
    size_t got = brix_kv_pool_acquire_cached(p, q->hashes, hit_blocks, q->blocks);
    if (!brix_kv_pool_alloc(p, new_blocks, q->blocks + got)) {
        brix_kv_pool_release(p, q->blocks, got);
        return false;
    }
    q->nblocks = got + new_blocks;
    q->num_computed = hit_tokens;
    q->nregistered = got; /* loaded blocks get registered at commit, as computed ones */
    if (s->kv) {
        if (q->kv_state == BRIX_SEQ_KV_READY && s->kv->admitted)
            s->kv->admitted(q, ext_blocks, s->kv->ud);
        q->kv_state = BRIX_SEQ_KV_DONE;
        if (q->kv_saved < hit_blocks + ext_blocks)
            q->kv_saved = hit_blocks + ext_blocks; /* not computed here: not saved from here */
    }

    list_unlink(&s->wait_head, &s->wait_tail, q);
    s->nwaiting--;
    list_push_tail(&s->run_head, &s->run_tail, q);
    s->nrunning++;
    q->state = BRIX_SEQ_RUNNING;
    if (q->lora) {
        q->lora->waiting--;
        const brix_gpu_profile_t *pr = s->cfg.profile;
        s->plan_extra_s +=
            brix_lora_start(s->loras, q->lora, pr->lora_load_seconds, pr->lora_swap_seconds);
    }
    if (!q->admitted_once) {
        q->admitted_once = true;
        q->cached_tokens = hit_tokens;
        q->t_first_sched = s->now;
        if (p->prefix_caching) {
            s->st.prefix_queries += q->ntokens;
            s->st.prefix_hits += hit_blocks * bs;
        }
    }
    plan_add(s, q, n, false);
    *budget -= n;
    return true;
}

bool brix_sched_plan(brix_sched_t *s, double *seconds)
{
    s->nstep = 0;
    s->plan_prefill_tokens = s->plan_decode_ctx = s->plan_decode_seqs = 0;
    s->plan_extra_s = 0;
    size_t budget = s->cfg.max_num_batched_tokens;
    bool preempted = false;

    for (brix_seq_t *q = s->run_head; q && budget;) {
        brix_seq_t *next = q->next;
        size_t need = q->ntokens - q->num_computed;
        size_t n = need < budget ? need : budget;
        bool scheduled = true;
        while (!seq_grow_blocks(s, q, q->num_computed + n)) {
            brix_seq_t *victim = s->run_tail;
            preempt(s, victim);
            preempted = true;
            if (victim == q) {
                scheduled = false;
                break;
            }
        }
        if (!scheduled)
            break;
        bool decode = q->generated > 0 && need == 1;
        plan_add(s, q, n, decode);
        budget -= n;
        /* the victim may have been `next`: continue from what is still running */
        q = (next && next->state == BRIX_SEQ_RUNNING) ? next : NULL;
    }

    if (!preempted) {
        for (brix_seq_t *q = s->wait_head; q && budget && s->nrunning < s->cfg.max_num_seqs;) {
            brix_seq_t *next = q->next;
            if (q->lora && !brix_lora_admissible(s->loras, q->lora)) {
                q = next; /* skip: its adapter has no slot this step */
                continue;
            }
            if (s->kv && kv_defer(s, q)) {
                q = next; /* skip: waiting for remote KV */
                continue;
            }
            if (!admit(s, q, &budget))
                break;
            q = next;
        }
    }
    s->planned = s->nstep > 0;
    *seconds = s->planned ? brix_gpu_step_seconds(s->cfg.profile, s->plan_prefill_tokens,
                                                  s->plan_decode_ctx, s->plan_decode_seqs) +
                                s->plan_extra_s
                          : 0;
    return s->planned;
}

/* Hands the connector the prompt blocks this step completed (only computed
 * ones: hits and loads moved kv_saved past theirs at admission). */
static void kv_save_computed(brix_sched_t *s, brix_seq_t *q)
{
    size_t done = q->num_computed < q->prompt_len ? q->num_computed : q->prompt_len;
    size_t full = done / s->pool->block_size;
    if (full > q->nhashes)
        full = q->nhashes;
    if (full > q->kv_saved) {
        s->kv->save(q, q->kv_saved, full, s->kv->ud);
        q->kv_saved = full;
    }
}

static void finish(brix_sched_t *s, brix_seq_t *q, brix_finish_t why)
{
    leave_running(s, q);
    q->state = BRIX_SEQ_FINISHED;
    q->finish = why;
    q->t_finish = s->now;
    if (s->cb.on_finish)
        s->cb.on_finish(q, s->cb.ud);
}

void brix_sched_commit(brix_sched_t *s, double end)
{
    s->now = end;
    s->st.steps++;
    uint64_t total = 0;
    for (size_t i = 0; i < s->nstep; i++) {
        brix_seq_t *q = s->step[i];
        if (!q || q->state != BRIX_SEQ_RUNNING)
            continue;
        total += q->step_tokens;
        q->num_computed += q->step_tokens;
        q->step_tokens = 0;
        seq_register_blocks(s, q);
        if (s->kv && s->kv->save)
            kv_save_computed(s, q);
        if (q->num_computed < q->ntokens)
            continue; /* a prefill chunk; more to come */
        if (q->prefill_only) {
            q->t_first_token = end;
            s->st.prompt_tokens += q->prompt_len;
            finish(s, q, BRIX_FINISH_STOP);
            continue;
        }
        if (q->generated == 0) {
            q->t_first_token = end;
            s->st.prompt_tokens += q->prompt_len;
        }
        q->generated++;
        s->st.generation_tokens++;
        bool eos = q->generated >= q->eos_at;
        uint32_t tok = BRIX_TOK_EOS;
        if (!eos) {
            tok = brix_tok_out_id((uint32_t)(brix_sched_rng_next(&q->rng) % BRIX_TOK_OUT_VOCAB));
            if (seq_push_token(q, tok)) {
                finish(s, q, BRIX_FINISH_ABORT);
                continue;
            }
        }
        bool stop = s->cb.on_token ? s->cb.on_token(q, tok, s->cb.ud) : false;
        if (q->state != BRIX_SEQ_RUNNING)
            continue; /* aborted from inside the callback */
        q->t_last_token = end;
        if (eos || stop)
            finish(s, q, BRIX_FINISH_STOP);
        else if (q->generated >= q->max_tokens || q->ntokens >= s->cfg.max_model_len)
            finish(s, q, BRIX_FINISH_LENGTH);
    }
    if (s->cb.on_step)
        s->cb.on_step(total, s->cb.ud);
    s->nstep = 0;
    s->planned = false;
}

bool brix_sched_busy(const brix_sched_t *s)
{
    return s->nwaiting || s->nrunning;
}
