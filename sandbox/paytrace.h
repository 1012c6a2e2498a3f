/*
 * sandbox/paytrace.h: the one name the PayTrace emulator (sandbox/paytrace.c)
 * exports, until sbx.h lists it beside sbx_xero_type and sbx_opayo_type.
 * Everything else about the emulator (settings, routes, the webhook format)
 * is in the header essay of paytrace.c; nothing here is internal.
 */
#ifndef PB_SANDBOX_PAYTRACE_H
#define PB_SANDBOX_PAYTRACE_H

#include "sbx.h"

extern const struct sbx_emulator_type sbx_paytrace_type;

#endif
