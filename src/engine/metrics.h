/*
 * engine/metrics.h: counters and histograms for GET /metrics (Prometheus
 * text format 0.0.4). Lock-free: every counter is a relaxed atomic; a scrape
 * reads them without stopping the data path. Per-connection counters live in
 * a fixed array indexed by the connection's position in the config.
 */
#ifndef PB_ENGINE_METRICS_H
#define PB_ENGINE_METRICS_H

#include <stdatomic.h>
#include <stdint.h>

#define PB_METRICS_MAX_CONNS 64
#define PB_HIST_BUCKETS 15

struct pb_histogram {
    _Atomic uint64_t bucket[PB_HIST_BUCKETS + 1];  /* last = +Inf */
    _Atomic uint64_t count;
    _Atomic uint64_t sum_ns;
};

/* Upper bounds of the buckets in nanoseconds. */
extern const uint64_t pb_hist_bounds_ns[PB_HIST_BUCKETS];

void pb_histogram_observe(struct pb_histogram *h, uint64_t ns);

struct pb_conn_metrics {
    _Atomic uint64_t received;      /* requests on /hooks/{conn} */
    _Atomic uint64_t accepted;      /* new events committed */
    _Atomic uint64_t duplicate;     /* redeliveries acknowledged, not processed */
    _Atomic uint64_t rejected;      /* 4xx: auth, malformed, ... */
    _Atomic uint64_t unavailable;   /* 503: could not store */
    _Atomic uint64_t calls_done;    /* sink items succeeded */
    _Atomic uint64_t calls_retry;   /* sink items failed transiently */
    _Atomic uint64_t calls_dead;    /* items dead-lettered */
    struct pb_histogram call_latency;   /* per sink/confirm batch call */
};

struct pb_metrics {
    struct pb_conn_metrics conn[PB_METRICS_MAX_CONNS];
    struct pb_histogram ack_latency;    /* webhook received -> durable ack */
    struct pb_histogram job_latency;    /* job claimed -> completion committed */
    _Atomic uint64_t attempts;
    _Atomic uint64_t jobs_done;
    _Atomic uint64_t jobs_skipped;
    _Atomic uint64_t jobs_retried;
    _Atomic uint64_t jobs_dead;
    _Atomic uint64_t xref_hits;         /* steps satisfied from the xref, no ERP call */
};

#endif
