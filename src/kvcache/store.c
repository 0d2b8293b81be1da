/*
 * store — arena, size classes, index, eviction, leases and pins of one
 * kvcache node (see store.h for the design).
 */
#include "kvcache/store.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <xxhash.h>

#include "core/alloc.h"

#ifndef MFD_HUGETLB
#define MFD_HUGETLB 0x0004U
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define KVS_MIN_CLASS  4096u
#define KVS_HUGE_ALIGN (2u << 20)

enum { Q_NONE = 0, Q_MAIN = 1, Q_SMALL = 2, Q_PINNED = 3 };

struct brix_kvs_obj {
    brix_kvs_obj_t *hnext;       /* index chain (free list when unused) */
    brix_kvs_obj_t *prev, *next; /* policy queue, or the pinned list */
    uint64_t hash;
    uint64_t atime; /* store clock at the last touch */
    uint64_t pin_until;
    uint32_t ns, len, slab, idx, refs;
    uint8_t key[16];
    uint8_t cls, queue, freq;
};

typedef struct kvs_list {
    brix_kvs_obj_t *head, *tail; /* head = most recent */
    uint64_t n, bytes;
} kvs_list_t;

typedef struct kvs_slab {
    int cls;                  /* -1: in the free pool */
    uint32_t nused;           /* slots holding an object or a reservation */
    uint32_t nfree;           /* entries on freestk */
    uint64_t last_used;       /* store clock of the latest insert or touch in it */
    uint32_t *freestk;        /* free slot indexes */
    brix_kvs_obj_t **objs;    /* object per slot (NULL: free or reserved) */
    struct kvs_slab *lnext;   /* class partial list or free pool */
    struct kvs_slab **lprevp; /* where the pointer to this slab lives; NULL = on no list */
} kvs_slab_t;

typedef struct kvs_class {
    uint64_t size;
    uint32_t per_slab;
    kvs_slab_t *partial; /* slabs of this class with a free slot */
    kvs_list_t main, small;
    uint64_t bytes; /* slot bytes of this class's objects */
} kvs_class_t;

typedef struct brix_kvs_lease {
    uint64_t id, expires;
    brix_kvs_obj_t *obj;
    brix_kvs_owner_t *owner;
    struct brix_kvs_lease *hnext;
    struct brix_kvs_lease *oprev, *onext;
    struct brix_kvs_lease *eprev, *enext;
} kvs_lease_t;

struct brix_kvs {
    brix_kvs_cfg_t cfg;
    int fd;
    bool sealed;       /* fd sealed read-only for others: it may be passed (brix_kvs_fd) */
    uint64_t *ns_objs; /* objects per namespace id (cfg.max_namespaces + 1), or NULL */
    uint8_t *base;
    uint64_t arena_bytes, gen_bytes, slab_bytes, capacity;
    uint32_t nslabs, gen_per_slab;
    brix_kvs_hugepages_t hp;
    uint32_t *gen; /* = base */
    kvs_slab_t *slabs;
    kvs_slab_t *free_slabs;
    uint32_t nfree_slabs;
    kvs_class_t *classes;
    size_t nclasses;

    brix_kvs_obj_t **buckets;
    size_t nbuckets; /* power of two */
    brix_kvs_obj_t *obj_pool;
    uint64_t clock;

    /* S3-FIFO ghost: a direct-mapped table of recently evicted hashes. An
     * overwrite forgets an older ghost: approximate, bounded, no allocation. */
    uint64_t *ghost;
    size_t nghost; /* power of two */

    brix_kvs_obj_t *pinned; /* objects with a pin (detached from their queue) */

    kvs_lease_t **lbuckets;
    size_t nlbuckets;
    kvs_lease_t *lhead, *ltail; /* by expiry (= creation: lease_ms is fixed) */
    uint64_t next_lease_id;

    brix_kvs_stats_t st;
};

/* ------------------------------------------------------------ arena -- */

static uint64_t pow2_ceil(uint64_t v)
{
    uint64_t p = 1;
    while (p < v)
        p <<= 1;
    return p;
}

/* Huge pages backing the shmem mapping, from the kernel's own account. */
static bool smaps_has_thp(void)
{
    FILE *f = fopen("/proc/self/smaps_rollup", "r");
    if (!f)
        return false;
    char line[256];
    bool yes = false;
    while (fgets(line, sizeof line, f)) {
        unsigned long kb = 0;
        if ((sscanf(line, "ShmemPmdMapped: %lu", &kb) == 1 ||
             sscanf(line, "FilePmdMapped: %lu", &kb) == 1) &&
            kb > 0)
            yes = true;
    }
    fclose(f);
    return yes;
}

/*
 * Allocates every page by having the kernel write it: read(2) from /dev/zero
 * into the mapping. Measured on this project's VMs (paravirtual paging), the
 * first kernel write into a page ran at ~0.5 GB/s, later ones at ~8 GB/s,
 * whether or not the page had been populated (MADV_POPULATE_WRITE) or
 * written from user space; a PUT's payload is written by the kernel (recv
 * straight into the slot), so the arena is warmed that way once, here.
 * Falls back to MADV_POPULATE_WRITE, then to fallocate + a store per page.
 */
static int arena_populate(int fd, uint8_t *p, uint64_t n)
{
    int z = open("/dev/zero", O_RDONLY | O_CLOEXEC);
    if (z >= 0) {
        uint64_t off = 0;
        while (off < n) {
            size_t want = n - off > (8u << 20) ? (8u << 20) : (size_t)(n - off);
            ssize_t r = read(z, p + off, want);
            if (r < 0 && errno == EINTR)
                continue;
            if (r <= 0)
                break;
            off += (uint64_t)r;
        }
        close(z);
        if (off == n)
            return 0;
    }
    if (madvise(p, n, MADV_POPULATE_WRITE) == 0)
        return 0;
    if (errno != EINVAL)
        return -errno;
    if (fallocate(fd, 0, 0, (off_t)n) != 0)
        return -errno;
    for (uint64_t o = 0; o < n; o += 4096)
        ((volatile uint8_t *)p)[o] = 0;
    return 0;
}

/*
 * The fd is passed to same-host clients, who must only read it: a client
 * holding an unsealed O_RDWR memfd could ftruncate it (the server's next
 * touch of a slot is SIGBUS) or map it writable and rewrite any namespace's
 * values. Seals stop both for every holder of the file, even one that
 * reopens it through /proc/PID/fd: no size change (SHRINK, GROW), no new
 * writable mapping or write(2)/fallocate (FUTURE_WRITE; our own writable
 * mapping, made before, keeps working), and no removing the seals (SEAL).
 * False when the kernel cannot (F_SEAL_FUTURE_WRITE is Linux 5.1+): the
 * server then does not pass the fd at all.
 */
static bool arena_seal(int fd)
{
#ifdef F_SEAL_FUTURE_WRITE
    return fcntl(fd, F_ADD_SEALS,
                 F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_FUTURE_WRITE | F_SEAL_SEAL) == 0;
#else
    (void)fd;
    return false;
#endif
}

/*
 * MFD_HUGETLB first: reserved huge pages, and mmap fails at once (ENOMEM)
 * when the pool is short, so the fallback is safe. Otherwise a plain memfd:
 * mapped, advised MADV_HUGEPAGE and only then populated with
 * MADV_POPULATE_WRITE, because shmem picks huge pages at fault time from the
 * VMA's advice (an fallocate before the advice would get 4 KiB pages).
 */
static int arena_map(brix_kvs_t *s, char *err, size_t errlen)
{
    uint64_t n = s->arena_bytes;
    if (!s->cfg.no_hugepages) {
        int fd = memfd_create("brix-kvcache", MFD_CLOEXEC | MFD_HUGETLB | MFD_ALLOW_SEALING);
        if (fd >= 0) {
            void *p = MAP_FAILED;
            if (ftruncate(fd, (off_t)n) == 0)
                p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, fd, 0);
            if (p != MAP_FAILED) {
                s->fd = fd;
                s->base = p;
                s->hp = BRIX_KVS_HP_HUGETLB;
                s->sealed = arena_seal(fd);
                return 0;
            }
            close(fd);
        }
    }
    int fd = memfd_create("brix-kvcache", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0 && errno == EINVAL) /* a kernel without sealing: no SHM, see arena_seal */
        fd = memfd_create("brix-kvcache", MFD_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        snprintf(err, errlen, "memfd_create: %s", strerror(e));
        return -e;
    }
    if (ftruncate(fd, (off_t)n) != 0) {
        int e = errno;
        snprintf(err, errlen, "arena of %llu bytes: ftruncate: %s", (unsigned long long)n,
                 strerror(e));
        close(fd);
        return -e;
    }
    void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        snprintf(err, errlen, "arena of %llu bytes: mmap: %s", (unsigned long long)n, strerror(e));
        close(fd);
        return -e;
    }
    (void)madvise(p, n, MADV_HUGEPAGE);
    int rc = arena_populate(fd, p, n);
    if (rc) {
        snprintf(err, errlen, "arena of %llu bytes: populate: %s", (unsigned long long)n,
                 strerror(-rc));
        munmap(p, n);
        close(fd);
        return rc;
    }
    s->fd = fd;
    s->base = p;
    s->hp = smaps_has_thp() ? BRIX_KVS_HP_THP : BRIX_KVS_HP_NONE;
    s->sealed = arena_seal(fd); /* after the fill: it writes through our mapping only */
    return 0;
}

const char *brix_kvs_hugepages_str(brix_kvs_hugepages_t h)
{
    switch (h) {
    case BRIX_KVS_HP_HUGETLB:
        return "hugetlb";
    case BRIX_KVS_HP_THP:
        return "thp";
    default:
        return "none";
    }
}

int brix_kvs_open(const brix_kvs_cfg_t *cfg, brix_kvs_t **out, char *err, size_t errlen)
{
    *out = NULL;
    uint64_t largest = 64u << 20;
    if (cfg->max_value) {
        largest = pow2_ceil(cfg->max_value < KVS_MIN_CLASS ? KVS_MIN_CLASS : cfg->max_value);
    } else {
        /* a small arena gets smaller slabs: at least 8 of them */
        while (largest > (64u << 10) && cfg->capacity < 8 * largest)
            largest >>= 1;
    }
    if (cfg->capacity < 2 * largest) {
        snprintf(err, errlen,
                 "capacity %llu is too small for values of %llu bytes (at least twice the "
                 "largest class, %llu, is needed)",
                 (unsigned long long)cfg->capacity,
                 (unsigned long long)(cfg->max_value ? cfg->max_value : largest),
                 (unsigned long long)largest);
        return -EINVAL;
    }
    if (!(cfg->low_watermark > 0 && cfg->low_watermark <= cfg->high_watermark &&
          cfg->high_watermark <= 1.0)) {
        snprintf(err, errlen, "watermarks: need 0 < low <= high <= 1");
        return -EINVAL;
    }
    brix_kvs_t *s = brix_calloc(1, sizeof *s);
    if (!s)
        return -ENOMEM;
    s->cfg = *cfg;
    s->fd = -1;
    s->slab_bytes = largest;
    s->nslabs = (uint32_t)(cfg->capacity / largest);
    s->capacity = (uint64_t)s->nslabs * largest;
    s->gen_per_slab = (uint32_t)(largest / KVS_MIN_CLASS);
    uint64_t gen = (uint64_t)s->nslabs * s->gen_per_slab * sizeof(uint32_t);
    s->gen_bytes = (gen + KVS_HUGE_ALIGN - 1) / KVS_HUGE_ALIGN * KVS_HUGE_ALIGN;
    s->arena_bytes = s->gen_bytes + s->capacity;
    s->arena_bytes = (s->arena_bytes + KVS_HUGE_ALIGN - 1) / KVS_HUGE_ALIGN * KVS_HUGE_ALIGN;
    if (gen > UINT32_MAX) {
        snprintf(err, errlen, "capacity too large (generation words past 4 GiB)");
        brix_free(s);
        return -EINVAL;
    }
    s->st.capacity_bytes = s->capacity;
    s->st.slabs_total = s->nslabs;

    /* classes: p, 5p/4, 6p/4, 7p/4 for each power of two p up to the largest */
    size_t ncls = 0;
    for (uint64_t p = KVS_MIN_CLASS; p <= largest; p <<= 1)
        ncls += p < largest ? 4 : 1;
    s->classes = brix_calloc(ncls, sizeof *s->classes);
    s->slabs = brix_calloc(s->nslabs, sizeof *s->slabs);
    s->nbuckets = 1024;
    s->buckets = brix_calloc(s->nbuckets, sizeof *s->buckets);
    s->nlbuckets = 256;
    s->lbuckets = brix_calloc(s->nlbuckets, sizeof *s->lbuckets);
    s->nghost = pow2_ceil(s->capacity / KVS_MIN_CLASS / 4 + 1);
    if (s->nghost > (1u << 20))
        s->nghost = 1u << 20;
    s->ghost = cfg->policy == BRIX_KVS_S3FIFO ? brix_calloc(s->nghost, sizeof *s->ghost) : NULL;
    if (cfg->max_namespaces) {
        s->ns_objs = brix_calloc((size_t)cfg->max_namespaces + 1, sizeof *s->ns_objs);
        if (!s->ns_objs) {
            brix_kvs_close(s);
            return -ENOMEM;
        }
    }
    if (!s->classes || !s->slabs || !s->buckets || !s->lbuckets ||
        (cfg->policy == BRIX_KVS_S3FIFO && !s->ghost)) {
        brix_kvs_close(s);
        return -ENOMEM;
    }
    for (uint64_t p = KVS_MIN_CLASS; p <= largest; p <<= 1) {
        for (int q = 4; q < (p < largest ? 8 : 5); q++) {
            kvs_class_t *c = &s->classes[s->nclasses++];
            c->size = p * (uint64_t)q / 4;
            c->per_slab = (uint32_t)(largest / c->size);
        }
    }
    for (uint32_t i = s->nslabs; i-- > 0;) {
        kvs_slab_t *sl = &s->slabs[i];
        sl->cls = -1;
        sl->lnext = s->free_slabs;
        s->free_slabs = sl;
    }
    s->nfree_slabs = s->nslabs;
    s->st.slabs_free = s->nslabs;
    uint64_t seed = 0;
    if (getentropy(&seed, sizeof seed) != 0)
        seed = (uint64_t)getpid() << 32;
    s->next_lease_id = (seed | 1) & 0x7fffffffffffffffull;
    int rc = arena_map(s, err, errlen);
    if (rc) {
        brix_kvs_close(s);
        return rc;
    }
    s->gen = (uint32_t *)s->base;
    *out = s;
    return 0;
}

void brix_kvs_close(brix_kvs_t *s)
{
    if (!s)
        return;
    while (s->lhead) {
        kvs_lease_t *l = s->lhead;
        s->lhead = l->enext;
        brix_free(l);
    }
    for (size_t b = 0; s->buckets && b < s->nbuckets; b++) {
        for (brix_kvs_obj_t *o = s->buckets[b], *nx; o; o = nx) {
            nx = o->hnext;
            brix_free(o);
        }
    }
    for (brix_kvs_obj_t *o = s->obj_pool, *nx; o; o = nx) {
        nx = o->hnext;
        brix_free(o);
    }
    for (uint32_t i = 0; s->slabs && i < s->nslabs; i++) {
        brix_free(s->slabs[i].freestk);
        brix_free(s->slabs[i].objs);
    }
    if (s->base)
        munmap(s->base, s->arena_bytes);
    if (s->fd >= 0)
        close(s->fd);
    brix_free(s->slabs);
    brix_free(s->classes);
    brix_free(s->buckets);
    brix_free(s->lbuckets);
    brix_free(s->ghost);
    brix_free(s->ns_objs);
    brix_free(s);
}

int brix_kvs_fd(const brix_kvs_t *s)
{
    return s->sealed ? s->fd : -1;
}
uint8_t *brix_kvs_base(const brix_kvs_t *s)
{
    return s->base;
}
uint64_t brix_kvs_arena_bytes(const brix_kvs_t *s)
{
    return s->arena_bytes;
}
brix_kvs_hugepages_t brix_kvs_hugepages(const brix_kvs_t *s)
{
    return s->hp;
}
uint64_t brix_kvs_max_value(const brix_kvs_t *s)
{
    return s->cfg.max_value ? s->cfg.max_value : s->slab_bytes;
}
uint64_t brix_kvs_slab_bytes(const brix_kvs_t *s)
{
    return s->slab_bytes;
}
size_t brix_kvs_nclasses(const brix_kvs_t *s)
{
    return s->nclasses;
}
uint64_t brix_kvs_class_size(const brix_kvs_t *s, size_t i)
{
    return i < s->nclasses ? s->classes[i].size : 0;
}

int brix_kvs_class_of(const brix_kvs_t *s, uint64_t len)
{
    if (len > brix_kvs_max_value(s))
        return -1;
    size_t lo = 0, hi = s->nclasses; /* first class with size >= len */
    while (lo < hi) {
        size_t mid = (lo + hi) / 2;
        if (s->classes[mid].size < len)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < s->nclasses ? (int)lo : -1;
}

void brix_kvs_get_stats(const brix_kvs_t *s, brix_kvs_stats_t *out)
{
    *out = s->st;
}

/* ------------------------------------------------------------ slots -- */

static uint32_t gen_index(const brix_kvs_t *s, uint32_t slab, uint32_t idx)
{
    return slab * s->gen_per_slab + idx;
}

/* Release-store: a same-host reader that sees the new word after its copy
 * knows the copy may be torn. */
static void gen_bump(brix_kvs_t *s, uint32_t slab, uint32_t idx)
{
    uint32_t *g = &s->gen[gen_index(s, slab, idx)];
    __atomic_store_n(g, *g + 1, __ATOMIC_RELEASE);
}

static uint64_t slot_offset(const brix_kvs_t *s, uint32_t slab, uint32_t idx, uint64_t size)
{
    return s->gen_bytes + (uint64_t)slab * s->slab_bytes + (uint64_t)idx * size;
}

static void slab_list_push(kvs_slab_t **head, kvs_slab_t *sl)
{
    sl->lnext = *head;
    if (*head)
        (*head)->lprevp = &sl->lnext;
    *head = sl;
    sl->lprevp = head;
}

static void slab_list_remove(kvs_slab_t *sl)
{
    if (!sl->lprevp)
        return;
    *sl->lprevp = sl->lnext;
    if (sl->lnext)
        sl->lnext->lprevp = sl->lprevp;
    sl->lnext = NULL;
    sl->lprevp = NULL;
}

static int slab_assign(brix_kvs_t *s, int cls)
{
    kvs_slab_t *sl = s->free_slabs;
    if (!sl)
        return -ENOSPC;
    kvs_class_t *c = &s->classes[cls];
    uint32_t *stk = brix_malloc(c->per_slab * sizeof *stk);
    brix_kvs_obj_t **objs = brix_calloc(c->per_slab, sizeof *objs);
    if (!stk || !objs) {
        brix_free(stk);
        brix_free(objs);
        return -ENOMEM;
    }
    s->free_slabs = sl->lnext;
    if (s->free_slabs)
        s->free_slabs->lprevp = &s->free_slabs;
    sl->lnext = NULL;
    sl->lprevp = NULL;
    s->nfree_slabs--;
    s->st.slabs_free--;
    sl->cls = cls;
    sl->last_used = s->clock;
    sl->nused = 0;
    sl->nfree = c->per_slab;
    for (uint32_t i = 0; i < c->per_slab; i++)
        stk[i] = c->per_slab - 1 - i; /* pops 0 first */
    sl->freestk = stk;
    sl->objs = objs;
    slab_list_push(&c->partial, sl);
    return 0;
}

static int slot_alloc(brix_kvs_t *s, int cls, uint32_t *slab, uint32_t *idx)
{
    kvs_class_t *c = &s->classes[cls];
    if (!c->partial) {
        int rc = slab_assign(s, cls);
        if (rc)
            return rc;
    }
    kvs_slab_t *sl = c->partial;
    uint32_t i = sl->freestk[--sl->nfree];
    sl->nused++;
    if (!sl->nfree)
        slab_list_remove(sl);
    *slab = (uint32_t)(sl - s->slabs);
    *idx = i;
    gen_bump(s, *slab, i);
    return 0;
}

static void slot_free(brix_kvs_t *s, uint32_t slab, uint32_t idx)
{
    kvs_slab_t *sl = &s->slabs[slab];
    kvs_class_t *c = &s->classes[sl->cls];
    gen_bump(s, slab, idx);
    sl->objs[idx] = NULL;
    sl->freestk[sl->nfree++] = idx;
    sl->nused--;
    if (sl->nfree == 1)
        slab_list_push(&c->partial, sl);
    if (sl->nused == 0) { /* back to the pool: any class may take it */
        slab_list_remove(sl);
        brix_free(sl->freestk);
        brix_free(sl->objs);
        sl->freestk = NULL;
        sl->objs = NULL;
        sl->cls = -1;
        sl->nfree = 0;
        slab_list_push(&s->free_slabs, sl);
        s->nfree_slabs++;
        s->st.slabs_free++;
    }
}

/* ------------------------------------------------------------ index -- */

static uint64_t key_hash(uint32_t ns, const uint8_t key[16])
{
    return XXH3_64bits_withSeed(key, 16, ns);
}

static brix_kvs_obj_t *index_find(const brix_kvs_t *s, uint32_t ns, const uint8_t key[16],
                                  uint64_t h)
{
    for (brix_kvs_obj_t *o = s->buckets[h & (s->nbuckets - 1)]; o; o = o->hnext)
        if (o->hash == h && o->ns == ns && !memcmp(o->key, key, 16))
            return o;
    return NULL;
}

static void index_grow(brix_kvs_t *s)
{
    size_t nb = s->nbuckets * 2;
    brix_kvs_obj_t **b = brix_calloc(nb, sizeof *b);
    if (!b)
        return; /* longer chains, still correct */
    for (size_t i = 0; i < s->nbuckets; i++) {
        for (brix_kvs_obj_t *o = s->buckets[i], *nx; o; o = nx) {
            nx = o->hnext;
            o->hnext = b[o->hash & (nb - 1)];
            b[o->hash & (nb - 1)] = o;
        }
    }
    brix_free(s->buckets);
    s->buckets = b;
    s->nbuckets = nb;
}

static void index_insert(brix_kvs_t *s, brix_kvs_obj_t *o)
{
    if (s->st.objects + 1 > s->nbuckets)
        index_grow(s);
    brix_kvs_obj_t **b = &s->buckets[o->hash & (s->nbuckets - 1)];
    o->hnext = *b;
    *b = o;
    s->st.objects++;
    if (s->ns_objs && o->ns <= s->cfg.max_namespaces)
        s->ns_objs[o->ns]++;
}

static void index_remove(brix_kvs_t *s, brix_kvs_obj_t *o)
{
    brix_kvs_obj_t **pp = &s->buckets[o->hash & (s->nbuckets - 1)];
    while (*pp && *pp != o)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = o->hnext;
    o->hnext = NULL;
    s->st.objects--;
    if (s->ns_objs && o->ns <= s->cfg.max_namespaces)
        s->ns_objs[o->ns]--;
}

uint64_t brix_kvs_ns_objects(const brix_kvs_t *s, uint32_t ns)
{
    if (!s->ns_objs || ns > s->cfg.max_namespaces)
        return UINT64_MAX;
    return s->ns_objs[ns];
}

brix_kvs_obj_t *brix_kvs_find(brix_kvs_t *s, uint32_t ns, const uint8_t key[16])
{
    return index_find(s, ns, key, key_hash(ns, key));
}

uint32_t brix_kvs_obj_len(const brix_kvs_obj_t *o)
{
    return o->len;
}
uint64_t brix_kvs_obj_offset(const brix_kvs_t *s, const brix_kvs_obj_t *o)
{
    return slot_offset(s, o->slab, o->idx, s->classes[o->cls].size);
}
const uint8_t *brix_kvs_obj_data(const brix_kvs_t *s, const brix_kvs_obj_t *o)
{
    return s->base + brix_kvs_obj_offset(s, o);
}
uint32_t brix_kvs_obj_gen_off(const brix_kvs_t *s, const brix_kvs_obj_t *o)
{
    return gen_index(s, o->slab, o->idx) * (uint32_t)sizeof(uint32_t);
}
uint32_t brix_kvs_obj_gen(const brix_kvs_t *s, const brix_kvs_obj_t *o)
{
    return s->gen[gen_index(s, o->slab, o->idx)];
}
uint32_t brix_kvs_obj_refs(const brix_kvs_obj_t *o)
{
    return o->refs;
}

/* ----------------------------------------------------------- queues -- */

static kvs_list_t *obj_list(brix_kvs_t *s, brix_kvs_obj_t *o)
{
    kvs_class_t *c = &s->classes[o->cls];
    return o->queue == Q_SMALL ? &c->small : o->queue == Q_MAIN ? &c->main : NULL;
}

static void list_push_head(kvs_list_t *l, brix_kvs_obj_t *o, uint64_t size)
{
    o->prev = NULL;
    o->next = l->head;
    if (l->head)
        l->head->prev = o;
    else
        l->tail = o;
    l->head = o;
    l->n++;
    l->bytes += size;
}

static void list_remove(kvs_list_t *l, brix_kvs_obj_t *o, uint64_t size)
{
    if (o->prev)
        o->prev->next = o->next;
    else
        l->head = o->next;
    if (o->next)
        o->next->prev = o->prev;
    else
        l->tail = o->prev;
    o->prev = o->next = NULL;
    l->n--;
    l->bytes -= size;
}

static void queue_detach(brix_kvs_t *s, brix_kvs_obj_t *o)
{
    kvs_list_t *l = obj_list(s, o);
    if (l)
        list_remove(l, o, s->classes[o->cls].size);
    o->queue = Q_NONE;
}

static void queue_attach(brix_kvs_t *s, brix_kvs_obj_t *o, int q)
{
    kvs_class_t *c = &s->classes[o->cls];
    o->queue = (uint8_t)q;
    list_push_head(q == Q_SMALL ? &c->small : &c->main, o, c->size);
}

static bool ghost_has(const brix_kvs_t *s, uint64_t h)
{
    return s->ghost && h && s->ghost[h & (s->nghost - 1)] == h;
}

static void touch(brix_kvs_t *s, brix_kvs_obj_t *o)
{
    o->atime = ++s->clock;
    s->slabs[o->slab].last_used = o->atime;
    if (o->queue == Q_PINNED || o->queue == Q_NONE)
        return;
    if (s->cfg.policy == BRIX_KVS_S3FIFO) {
        if (o->freq < 3)
            o->freq++;
        return;
    }
    kvs_list_t *l = obj_list(s, o);
    if (l->head != o) {
        uint64_t sz = s->classes[o->cls].size;
        list_remove(l, o, sz);
        list_push_head(l, o, sz);
    }
}

/* A batch in the store's order: prefix = last key first, so the chain's root
 * ends up the most recent and its leaves are evicted first. */
#define FOR_ORDER(s, i, n)                                                                         \
    for (size_t i##_k = 0, i = (s)->cfg.order == BRIX_KVS_ORDER_PREFIX ? (n)-1 : 0; i##_k < (n);   \
         i##_k++, i = (s)->cfg.order == BRIX_KVS_ORDER_PREFIX ? (n)-1 - i##_k : i##_k)

/* --------------------------------------------------------- eviction -- */

static void obj_free(brix_kvs_t *s, brix_kvs_obj_t *o)
{
    kvs_class_t *c = &s->classes[o->cls];
    if (o->queue == Q_PINNED) {
        /* unlink from the pinned list (singly walked, doubly linked) */
        if (o->prev)
            o->prev->next = o->next;
        else
            s->pinned = o->next;
        if (o->next)
            o->next->prev = o->prev;
        s->st.pins_active--;
        s->st.pinned_bytes -= c->size;
        o->queue = Q_NONE;
    } else {
        queue_detach(s, o);
    }
    index_remove(s, o);
    c->bytes -= c->size;
    s->st.used_bytes -= c->size;
    s->st.payload_bytes -= o->len;
    slot_free(s, o->slab, o->idx);
    o->hnext = s->obj_pool;
    s->obj_pool = o;
}

static void evict(brix_kvs_t *s, brix_kvs_obj_t *o)
{
    if (s->ghost && o->queue == Q_SMALL)
        s->ghost[o->hash & (s->nghost - 1)] = o->hash;
    s->st.evictions++;
    s->st.evicted_bytes += o->len;
    obj_free(s, o);
}

static void rotate(brix_kvs_t *s, brix_kvs_obj_t *o, int to)
{
    queue_detach(s, o);
    queue_attach(s, o, to);
}

/* The object the class's policy gives up next, or NULL when every one is
 * referenced. S3-FIFO (Yang et al., SOSP'23): the small queue holds new
 * objects; its tail goes to main if it was read again, else out (remembered
 * in the ghost); main is a FIFO with reinsertion while the frequency lasts. */
static brix_kvs_obj_t *class_victim(brix_kvs_t *s, kvs_class_t *c)
{
    uint64_t steps = 2 * (c->main.n + c->small.n) + 2;
    while (steps--) {
        if (s->cfg.policy == BRIX_KVS_LRU) {
            brix_kvs_obj_t *t = c->main.tail;
            if (!t)
                return NULL;
            if (!t->refs)
                return t;
            rotate(s, t, Q_MAIN); /* being read: give it another round */
            continue;
        }
        bool from_small =
            c->small.n && (c->small.bytes * 10 >= c->main.bytes + c->small.bytes || !c->main.n);
        if (from_small) {
            brix_kvs_obj_t *t = c->small.tail;
            if (t->freq) {
                t->freq = 0;
                rotate(s, t, Q_MAIN);
            } else if (t->refs) {
                rotate(s, t, Q_SMALL);
            } else {
                return t;
            }
        } else {
            brix_kvs_obj_t *t = c->main.tail;
            if (!t)
                return NULL;
            if (t->freq || t->refs) {
                if (t->freq)
                    t->freq--;
                rotate(s, t, Q_MAIN);
            } else {
                return t;
            }
        }
    }
    return NULL;
}

/* One eviction across classes: the class whose candidate was used least
 * recently. False when nothing is evictable. */
static bool evict_one(brix_kvs_t *s)
{
    brix_kvs_obj_t *best = NULL;
    for (size_t i = 0; i < s->nclasses; i++) {
        kvs_class_t *c = &s->classes[i];
        if (!c->main.n && !c->small.n)
            continue;
        brix_kvs_obj_t *v = class_victim(s, c);
        if (v && (!best || v->atime < best->atime))
            best = v;
    }
    if (!best)
        return false;
    evict(s, best);
    return true;
}

/* A slab every object of which may go now (nothing referenced, pinned or
 * reserved). */
static bool slab_evictable(const brix_kvs_t *s, const kvs_slab_t *sl)
{
    uint32_t per = s->classes[sl->cls].per_slab, nobj = 0;
    for (uint32_t j = 0; j < per; j++) {
        const brix_kvs_obj_t *o = sl->objs[j];
        if (!o)
            continue;
        if (o->refs || o->queue == Q_PINNED)
            return false;
        nobj++;
    }
    return nobj == sl->nused;
}

/* Frees a whole slab of a class other than cls, for cls: the one used least
 * recently, if that was before `before` (the atime of cls's own next
 * victim: a slab colder than it is the better loss). memcached's slab
 * reassignment does the same (it evicts a slab). Tries the 8 coldest. */
static bool slab_reclaim(brix_kvs_t *s, int cls, uint64_t before)
{
    uint32_t tried[8];
    size_t ntried = 0;
    while (ntried < 8) {
        kvs_slab_t *best = NULL;
        for (uint32_t i = 0; i < s->nslabs; i++) {
            kvs_slab_t *sl = &s->slabs[i];
            if (sl->cls < 0 || sl->cls == cls || sl->last_used >= before ||
                (best && sl->last_used >= best->last_used))
                continue;
            bool seen = false;
            for (size_t t = 0; t < ntried && !seen; t++)
                seen = tried[t] == i;
            if (!seen)
                best = sl;
        }
        if (!best)
            return false;
        tried[ntried++] = (uint32_t)(best - s->slabs);
        if (!slab_evictable(s, best))
            continue;
        uint32_t per = s->classes[best->cls].per_slab;
        brix_kvs_obj_t **objs = best->objs;
        for (uint32_t j = 0; j < per; j++) {
            brix_kvs_obj_t *o = objs[j];
            if (o) {
                bool last = best->nused == 1;
                evict(s, o); /* the last one frees the slab and its arrays */
                if (last)
                    break;
            }
        }
        return true;
    }
    return false;
}

static void evict_to_watermark(brix_kvs_t *s, uint64_t extra)
{
    uint64_t high = (uint64_t)(s->cfg.high_watermark * (double)s->capacity);
    uint64_t low = (uint64_t)(s->cfg.low_watermark * (double)s->capacity);
    if (s->st.used_bytes + s->st.reserved_bytes + extra <= high)
        return;
    while (s->st.used_bytes + s->st.reserved_bytes + extra > low && evict_one(s))
        ;
}

/* ------------------------------------------------------------- reads -- */

size_t brix_kvs_match(brix_kvs_t *s, uint32_t ns, const uint8_t (*keys)[16], size_t n)
{
    size_t r = 0;
    while (r < n && brix_kvs_find(s, ns, keys[r]))
        r++;
    if (r) {
        FOR_ORDER(s, i, r)
        {
            touch(s, brix_kvs_find(s, ns, keys[i]));
        }
    }
    return r;
}

size_t brix_kvs_get(brix_kvs_t *s, uint32_t ns, const uint8_t (*keys)[16], size_t n,
                    brix_kvs_obj_t **objs)
{
    size_t hits = 0;
    for (size_t i = 0; i < n; i++) {
        objs[i] = brix_kvs_find(s, ns, keys[i]);
        if (objs[i]) {
            objs[i]->refs++;
            hits++;
        }
    }
    if (n) {
        FOR_ORDER(s, i, n)
        {
            if (objs[i])
                touch(s, objs[i]);
        }
    }
    s->st.gets += n;
    s->st.hits += hits;
    s->st.misses += n - hits;
    return hits;
}

void brix_kvs_ref(brix_kvs_obj_t *o)
{
    o->refs++;
}

void brix_kvs_unref(brix_kvs_t *s, brix_kvs_obj_t *o)
{
    (void)s;
    if (o->refs)
        o->refs--;
}

/* ------------------------------------------------------------ writes -- */

uint16_t brix_kvs_reserve(brix_kvs_t *s, uint32_t ns, const uint8_t key[16], uint64_t len,
                          uint64_t now_ms, brix_kvs_resv_t *r)
{
    (void)now_ms;
    memset(r, 0, sizeof *r);
    memcpy(r->key, key, 16);
    if (len == 0)
        return BRIXKV_ST_BAD_REQUEST;
    int cls = brix_kvs_class_of(s, len);
    if (cls < 0) {
        s->st.put_too_large++;
        return BRIXKV_ST_TOO_LARGE;
    }
    if (brix_kvs_find(s, ns, key))
        return BRIXKV_ST_EXISTS; /* counted and touched at commit */
    kvs_class_t *c = &s->classes[cls];
    if (s->cfg.max_reserved && s->st.reserved_bytes + c->size > s->cfg.max_reserved) {
        s->st.put_no_space++;
        return BRIXKV_ST_NO_SPACE; /* checked before any eviction */
    }
    evict_to_watermark(s, c->size);
    uint32_t slab = 0, idx = 0;
    for (;;) {
        int rc = slot_alloc(s, cls, &slab, &idx);
        if (rc == 0)
            break;
        if (rc == -ENOMEM)
            return BRIXKV_ST_INTERNAL;
        /* the class is full and no slab is free: take a whole slab of
         * another class if it is colder than this class's next victim,
         * else evict that victim */
        brix_kvs_obj_t *v = (c->main.n || c->small.n) ? class_victim(s, c) : NULL;
        if (slab_reclaim(s, cls, v ? v->atime : UINT64_MAX))
            continue;
        if (!v) {
            s->st.put_no_space++;
            return BRIXKV_ST_NO_SPACE;
        }
        evict(s, v);
    }
    r->slab = slab;
    r->idx = idx;
    r->len = (uint32_t)len;
    r->ptr = s->base + slot_offset(s, slab, idx, c->size);
    s->st.reserved_bytes += c->size;
    return BRIXKV_ST_OK;
}

void brix_kvs_unreserve(brix_kvs_t *s, brix_kvs_resv_t *r)
{
    if (!r->ptr)
        return;
    kvs_slab_t *sl = &s->slabs[r->slab];
    s->st.reserved_bytes -= s->classes[sl->cls].size;
    slot_free(s, r->slab, r->idx);
    r->ptr = NULL;
}

void brix_kvs_commit(brix_kvs_t *s, uint32_t ns, brix_kvs_resv_t *r, uint16_t *st, size_t n,
                     uint64_t now_ms)
{
    if (!n)
        return;
    FOR_ORDER(s, i, n)
    {
        if (st[i] == BRIXKV_ST_EXISTS) {
            brix_kvs_obj_t *o = brix_kvs_find(s, ns, r[i].key);
            if (o)
                touch(s, o); /* a put of a stored key refreshes it (LMCache #460) */
            s->st.put_exists++;
            continue;
        }
        if (st[i] != BRIXKV_ST_OK || !r[i].ptr)
            continue;
        uint64_t h = key_hash(ns, r[i].key);
        brix_kvs_obj_t *o = index_find(s, ns, r[i].key, h);
        if (o) { /* stored meanwhile (another connection, or twice in this batch) */
            touch(s, o);
            brix_kvs_unreserve(s, &r[i]);
            st[i] = BRIXKV_ST_EXISTS;
            s->st.put_exists++;
            continue;
        }
        o = s->obj_pool;
        if (o)
            s->obj_pool = o->hnext;
        else
            o = brix_malloc(sizeof *o);
        if (!o) {
            brix_kvs_unreserve(s, &r[i]);
            st[i] = BRIXKV_ST_INTERNAL;
            continue;
        }
        kvs_slab_t *sl = &s->slabs[r[i].slab];
        kvs_class_t *c = &s->classes[sl->cls];
        memset(o, 0, sizeof *o);
        o->hash = h;
        o->ns = ns;
        o->len = r[i].len;
        o->slab = r[i].slab;
        o->idx = r[i].idx;
        o->cls = (uint8_t)sl->cls;
        memcpy(o->key, r[i].key, 16);
        o->atime = ++s->clock;
        sl->last_used = o->atime;
        sl->objs[o->idx] = o;
        index_insert(s, o);
        /* S3-FIFO: new objects start in the small queue unless recently
         * evicted from it (a ghost hit goes straight to main) */
        bool small = s->cfg.policy == BRIX_KVS_S3FIFO && !ghost_has(s, h);
        queue_attach(s, o, small ? Q_SMALL : Q_MAIN);
        c->bytes += c->size;
        s->st.reserved_bytes -= c->size;
        s->st.used_bytes += c->size;
        s->st.payload_bytes += o->len;
        s->st.puts++;
        r[i].ptr = NULL;
    }
    evict_to_watermark(s, 0);
    (void)now_ms;
}

uint16_t brix_kvs_delete(brix_kvs_t *s, uint32_t ns, const uint8_t key[16], uint64_t now_ms)
{
    brix_kvs_obj_t *o = brix_kvs_find(s, ns, key);
    if (!o)
        return BRIXKV_ST_NOT_FOUND;
    if (o->refs || (o->queue == Q_PINNED && o->pin_until > now_ms))
        return BRIXKV_ST_BUSY;
    obj_free(s, o);
    return BRIXKV_ST_OK;
}

/* ------------------------------------------------------------- pins -- */

static void pin_unlink(brix_kvs_t *s, brix_kvs_obj_t *o)
{
    if (o->prev)
        o->prev->next = o->next;
    else
        s->pinned = o->next;
    if (o->next)
        o->next->prev = o->prev;
    o->prev = o->next = NULL;
    s->st.pins_active--;
    s->st.pinned_bytes -= s->classes[o->cls].size;
    o->pin_until = 0;
    o->queue = Q_NONE;
    queue_attach(s, o, Q_MAIN); /* unpinned: back as recently used */
}

uint16_t brix_kvs_pin(brix_kvs_t *s, uint32_t ns, const uint8_t key[16], uint64_t ttl_ms,
                      uint64_t now_ms)
{
    brix_kvs_obj_t *o = brix_kvs_find(s, ns, key);
    if (!o)
        return BRIXKV_ST_NOT_FOUND;
    if (ttl_ms > s->cfg.max_pin_ms)
        return BRIXKV_ST_BAD_REQUEST;
    if (ttl_ms == 0) {
        if (o->queue == Q_PINNED)
            pin_unlink(s, o);
        return BRIXKV_ST_OK;
    }
    if (o->queue != Q_PINNED) {
        uint64_t size = s->classes[o->cls].size;
        if ((double)(s->st.pinned_bytes + size) > s->cfg.max_pinned_fraction * (double)s->capacity)
            return BRIXKV_ST_NO_SPACE;
        queue_detach(s, o);
        o->queue = Q_PINNED;
        o->prev = NULL;
        o->next = s->pinned;
        if (s->pinned)
            s->pinned->prev = o;
        s->pinned = o;
        s->st.pins_active++;
        s->st.pinned_bytes += size;
    }
    o->pin_until = now_ms + ttl_ms;
    return BRIXKV_ST_OK;
}

/* ----------------------------------------------------------- leases -- */

void brix_kvs_owner_init(brix_kvs_owner_t *ow)
{
    ow->head = NULL;
    ow->nleases = 0;
}

static void lease_hash_grow(brix_kvs_t *s)
{
    size_t nb = s->nlbuckets * 2;
    kvs_lease_t **b = brix_calloc(nb, sizeof *b);
    if (!b)
        return;
    for (size_t i = 0; i < s->nlbuckets; i++) {
        for (kvs_lease_t *l = s->lbuckets[i], *nx; l; l = nx) {
            nx = l->hnext;
            l->hnext = b[l->id & (nb - 1)];
            b[l->id & (nb - 1)] = l;
        }
    }
    brix_free(s->lbuckets);
    s->lbuckets = b;
    s->nlbuckets = nb;
}

int brix_kvs_lease(brix_kvs_t *s, brix_kvs_owner_t *ow, brix_kvs_obj_t *o, uint64_t now_ms,
                   uint64_t *id)
{
    if (ow->nleases >= s->cfg.max_leases_per_owner)
        return -ENOSPC;
    kvs_lease_t *l = brix_calloc(1, sizeof *l);
    if (!l)
        return -ENOMEM;
    if (s->st.leases_active + 1 > s->nlbuckets)
        lease_hash_grow(s);
    l->id = s->next_lease_id++;
    if (!l->id)
        l->id = s->next_lease_id++;
    l->expires = now_ms + s->cfg.lease_ms;
    l->obj = o;
    l->owner = ow;
    o->refs++;
    l->hnext = s->lbuckets[l->id & (s->nlbuckets - 1)];
    s->lbuckets[l->id & (s->nlbuckets - 1)] = l;
    l->onext = ow->head;
    if (ow->head)
        ow->head->oprev = l;
    ow->head = l;
    ow->nleases++;
    l->eprev = s->ltail;
    if (s->ltail)
        s->ltail->enext = l;
    else
        s->lhead = l;
    s->ltail = l;
    s->st.leases_active++;
    *id = l->id;
    return 0;
}

static void lease_end(brix_kvs_t *s, kvs_lease_t *l)
{
    kvs_lease_t **pp = &s->lbuckets[l->id & (s->nlbuckets - 1)];
    while (*pp && *pp != l)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = l->hnext;
    brix_kvs_owner_t *ow = l->owner;
    if (l->oprev)
        l->oprev->onext = l->onext;
    else
        ow->head = l->onext;
    if (l->onext)
        l->onext->oprev = l->oprev;
    ow->nleases--;
    if (l->eprev)
        l->eprev->enext = l->enext;
    else
        s->lhead = l->enext;
    if (l->enext)
        l->enext->eprev = l->eprev;
    else
        s->ltail = l->eprev;
    brix_kvs_unref(s, l->obj);
    s->st.leases_active--;
    brix_free(l);
}

bool brix_kvs_release(brix_kvs_t *s, brix_kvs_owner_t *ow, uint64_t id)
{
    for (kvs_lease_t *l = s->lbuckets[id & (s->nlbuckets - 1)]; l; l = l->hnext) {
        if (l->id == id) {
            if (l->owner != ow)
                return false; /* only the connection that took it */
            lease_end(s, l);
            return true;
        }
    }
    return false;
}

void brix_kvs_owner_drop(brix_kvs_t *s, brix_kvs_owner_t *ow)
{
    while (ow->head)
        lease_end(s, ow->head);
}

void brix_kvs_tick(brix_kvs_t *s, uint64_t now_ms)
{
    while (s->lhead && s->lhead->expires <= now_ms) {
        s->st.leases_expired++;
        lease_end(s, s->lhead);
    }
    for (brix_kvs_obj_t *o = s->pinned, *nx; o; o = nx) {
        nx = o->next;
        if (o->pin_until <= now_ms)
            pin_unlink(s, o);
    }
    evict_to_watermark(s, 0);
}
