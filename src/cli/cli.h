/*
 * cli/cli.h: subcommands of the `paybridge` binary. Each returns the process
 * exit status: 0 ok, 1 the operation failed, 2 usage error.
 */
#ifndef PB_CLI_CLI_H
#define PB_CLI_CLI_H

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

/* Shared by subcommands: "-c FILE" / "--config FILE" (default ./paybridge.yaml). */
const char *pb_cli_config_arg(int *argc, char **argv);

#endif
