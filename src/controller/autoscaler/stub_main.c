/* TEMPORARY: replaced by the algorithms helper's files at merge. */
#include "controller/autoscaler/autoscaler.h"
#include <string.h>
int brix_as_state_init(brix_as_state_t *s) { memset(s, 0, sizeof *s); return 0; }
void brix_as_state_free(brix_as_state_t *s) { (void)s; }
int brix_as_observe(brix_as_state_t *s, const brix_as_params_t *p, const brix_as_sample_t *x) { (void)s; (void)p; (void)x; return 0; }
void brix_as_decide(const brix_as_params_t *p, brix_as_state_t *s, const brix_as_input_t *in, brix_as_decision_t *d)
{ (void)p; (void)s; memset(d, 0, sizeof *d); d->desired = in->current; d->reason = "Stub"; }
int brix_as_schedule_bounds(const brix_as_schedule_t *v, size_t n, int64_t wall_ms, int32_t base_min, int32_t base_max, int32_t *min, int32_t *max, const char **active)
{ (void)v; (void)n; (void)wall_ms; *min = base_min; *max = base_max; *active = NULL; return 0; }
