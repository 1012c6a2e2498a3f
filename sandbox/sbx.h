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
 */
#ifndef PB_SANDBOX_SBX_H
#define PB_SANDBOX_SBX_H

#include <jansson.h>

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

extern const struct sbx_emulator_type sbx_xero_type;
extern const struct sbx_emulator_type sbx_opayo_type;
extern const struct sbx_emulator_type sbx_shop_type;
extern const struct sbx_emulator_type sbx_sagex3_type;
extern const struct sbx_emulator_type sbx_syspro_type;
extern const struct sbx_emulator_type sbx_paytrace_type;

#endif
