/*
 * sandbox/sbx.h: the contract between the sandbox framework (sandbox.c,
 * faults.c, main.c) and each emulated system (xero.c, opayo.c, ...).
 *
 * An emulator is a constant table, like a connector: it creates its state
 * from a JSON settings object and exposes a route table whose handlers take
 * the state as `arg`. The framework starts one pb_httpd per system on its own
 * loopback port, wraps every route with fault injection (latency, 500/503
 * rate, 429 bursts, connection resets, slow bodies) and adds the generic admin
 * routes /_sandbox/faults (GET/POST) and /_sandbox/health. Emulator-specific
 * admin routes (stats, resend, ...) live under /_sandbox/ in the emulator's own
 * table.
 *
 * Emulators keep their state in memory behind their own mutex; handlers run on
 * a thread per connection and may block.
 *
 * The emulators that count their replies by HTTP status (opayo.c, paytrace.c,
 * shop.c) build their table with sbx_routes_fill() and count with
 * sbx_count_status() (both in sandbox.c); the counters stay in their state.
 */
#ifndef PB_SANDBOX_SBX_H
#define PB_SANDBOX_SBX_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "core/err.h"
#include "net/httpd.h"

struct sbx_emulator_type {
    const char *name;   /* "xero", "opayo": also the --SYSTEM-port flag and pb_sandbox_port key */
    /* MUST: create state from settings (borrowed; may be an empty object). */
    void *(*create)(json_t *settings, struct pb_err *err);
    /* MUST: the route table (ends with {NULL}), handlers receive the state as arg. */
    const struct pb_http_route *(*routes)(void *state);
    /* MAY: called once the server listens, with its port (e.g. to build self URLs). */
    void (*started)(void *state, int port);
    /* MUST: stop threads, free state. */
    void (*destroy)(void *state);
};

/* One route of an emulator's table: what sbx_routes_fill() takes. */
struct sbx_route_spec {
    const char *method, *pattern;
    pb_http_handler handler;        /* the real handler; gets the state as arg */
};

/* The arg of each route of a filled table. */
struct sbx_route_slot {
    void *state;
    pb_http_handler handler;
};

/* Fills routes[0..n) with spec's methods and patterns, every route pointing
 * at `through` with &slots[i] = {state, spec[i].handler} as arg, and
 * routes[n] with the {NULL} end. slots holds n, routes n + 1; `through`
 * calls slot->handler(req, resp, slot->state) and does its counting. */
void sbx_routes_fill(const struct sbx_route_spec *spec, size_t n, void *state,
                     pb_http_handler through, struct sbx_route_slot *slots,
                     struct pb_http_route *routes);

/* Counts one reply of `status` in codes[]/counts[] (n slots, a code of 0 is
 * a free slot; a status that finds no slot is not counted). The caller holds
 * the lock that guards them. */
void sbx_count_status(int *codes, uint64_t *counts, size_t n, int status);

extern const struct sbx_emulator_type sbx_xero_type;
extern const struct sbx_emulator_type sbx_opayo_type;
extern const struct sbx_emulator_type sbx_shop_type;
extern const struct sbx_emulator_type sbx_sagex3_type;
extern const struct sbx_emulator_type sbx_syspro_type;
extern const struct sbx_emulator_type sbx_paytrace_type;

#endif
