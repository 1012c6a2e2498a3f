/*
 * cli/cli.h: subcommands of the `paybridge` binary. Each returns the process
 * exit status: 0 ok, 1 the operation failed, 2 usage error.
 */
#ifndef PB_CLI_CLI_H
#define PB_CLI_CLI_H

#include <stdio.h>

int pb_cli_serve(int argc, char **argv);
int pb_cli_check(int argc, char **argv);
int pb_cli_map(int argc, char **argv);
int pb_cli_events(int argc, char **argv);
int pb_cli_dlq(int argc, char **argv);
int pb_cli_secret(int argc, char **argv);
int pb_cli_admin(int argc, char **argv);
int pb_cli_demo(int argc, char **argv);
int pb_cli_refund(int argc, char **argv);
int pb_cli_chargebacks(int argc, char **argv);
int pb_cli_reconcile(int argc, char **argv);

int pb_cli_recon(int argc, char **argv);

/* cli/reconcile.c: one reconciliation run of `connection` for `date`
 * (YYYY-MM-DD), printed on `out`; a pb_rc (0 = it ran, breaks or not).
 * Exposed for the tests. */
struct pb_config;
struct pb_store;
struct pb_recon_db;
struct pb_err;
int pb_reconcile_once(struct pb_config *cfg, struct pb_store *store, struct pb_recon_db *db,
                      const char *connection, const char *date, FILE *out, struct pb_err *err);

/* Shared by subcommands: load the config, printing every diagnostic on stderr;
 * NULL when it has errors. init: initialise the connections (secrets). */
struct pb_config *pb_cli_load_config(const char *path, int init);

/* Shared by subcommands: "-c FILE" / "--config FILE" (default ./paybridge.yaml). */
const char *pb_cli_config_arg(int *argc, char **argv);

#endif
