/*
 * sandbox/sandbox.h: start and stop the emulators of external systems on
 * loopback, so that paybridge can be tested with no network.
 *
 * One call starts every system named in a settings object, each on its own
 * pb_httpd (thread per connection, 8 MiB bodies), with fault injection
 * wrapped around its routes and the generic admin routes added:
 *
 *   GET  /_sandbox/health   {"status":"ok","system":"xero","port":N,"uptime_s":N}
 *   GET  /_sandbox/faults   the live fault settings and counters (faults.h)
 *   POST /_sandbox/faults   merge a JSON object of faults; {"reset":true} clears
 *
 * and GET /_sandbox/stats of an emulator is decorated with the framework's
 * own numbers ("faults":{...},"faults_injected":n, and the injected replies
 * added to "requests" and "responses"), so that an emulator never needs to
 * know about the framework. A successful POST /_sandbox/reset of an emulator
 * also zeroes the fault counters (not the fault settings).
 *
 * Settings (borrowed by pb_sandbox_start, never kept):
 *   {"bind":"127.0.0.1",
 *    "xero":  {"port":0, "enabled":true, "faults":{...}, ...emulator keys...},
 *    "opayo": {...}}
 * A system whose key is absent, false, or has "enabled":false is not started.
 * Port 0 picks a free port; pb_sandbox_port() tells which. Unknown top-level
 * keys are an error (a typo must not silently disable a system).
 *
 * Threading: pb_sandbox_port() and pb_sandbox_set_faults() may be called from
 * any thread while the sandbox runs; start and stop are not concurrent with
 * anything else on the same sandbox.
 */
#ifndef PB_SANDBOX_SANDBOX_H
#define PB_SANDBOX_SANDBOX_H

#include <jansson.h>
#include <stddef.h>

#include "core/err.h"

#define PB_SANDBOX_MAX_BODY (8u * 1024u * 1024u)

struct pb_sandbox;

/* Start the systems in `settings` (borrowed). On success *out owns them all;
 * on failure nothing is left running and err says which system and why. */
enum pb_rc pb_sandbox_start(json_t *settings, struct pb_sandbox **out, struct pb_err *err);

/* The port of a running system, or -1 when it is not running. */
int pb_sandbox_port(const struct pb_sandbox *sb, const char *system);

/* Merge `faults` (borrowed JSON object, see faults.h) into a running system's
 * faults. PB_ERR_NOTFOUND when the system is not running, PB_ERR_INVALID for
 * a bad key or value (then nothing changes). */
enum pb_rc pb_sandbox_set_faults(struct pb_sandbox *sb, const char *system, json_t *faults,
                                 struct pb_err *err);

/* {"xero":41234,"opayo":41235}: the running systems and their ports, as a
 * new object the caller owns (NULL when out of memory). */
json_t *pb_sandbox_ports_json(const struct pb_sandbox *sb);

/* Names of the emulators linked into this build, for i = 0, 1, ... until it
 * returns NULL ("xero", "opayo"). */
const char *pb_sandbox_system_name(size_t i);

/* Stop every system, wait for their handlers, free everything. NULL is a no-op. */
void pb_sandbox_stop(struct pb_sandbox *sb);

#endif
