/*
 * engine/metrics.c: histogram buckets. Rendering lives in admin/api.c.
 */
#include "engine/metrics.h"

const uint64_t pb_hist_bounds_ns[PB_HIST_BUCKETS] = {
    250000ull,     500000ull,     1000000ull,    2500000ull,    5000000ull,
    10000000ull,   25000000ull,   50000000ull,   100000000ull,  250000000ull,
    500000000ull,  1000000000ull, 2500000000ull, 5000000000ull, 10000000000ull,
};

void pb_histogram_observe(struct pb_histogram *h, uint64_t ns)
{
    int i = 0;
    while (i < PB_HIST_BUCKETS && ns > pb_hist_bounds_ns[i])
        i++;
    atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->count, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&h->sum_ns, ns, memory_order_relaxed);
}
