/*
 * sandbox/syspro.h: the SYSPRO e.net Solutions (REST) emulator's type, for
 * the sandbox framework's table and for tests that start it on their own.
 * Everything else about it (routes, settings, replies) is in the header
 * essay of sandbox/syspro.c.
 */
#ifndef PB_SANDBOX_SYSPRO_H
#define PB_SANDBOX_SYSPRO_H

#include "sbx.h"

extern const struct sbx_emulator_type sbx_syspro_type;

#endif
