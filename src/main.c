/*
 * main.c: the `paybridge` command. Subcommands are a table (name, handler,
 * one-line help), dispatched after the generic checks, like Redis commands.
 */
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"

struct command {
    const char *name;
    int (*run)(int argc, char **argv);
    const char *help;
};

static const struct command commands[] = {
    {"serve", pb_cli_serve, "serve -c FILE            run the daemon"},
    {"check", pb_cli_check, "check -c FILE            validate a config and its flows; print every error"},
    {"map", pb_cli_map, "map test FLOW.yaml SAMPLE.json   print the ERP documents a sample event maps to"},
    {"events", pb_cli_events, "events list|show ID -c FILE   inspect events and their whole trace"},
    {"dlq", pb_cli_dlq, "dlq list|show ID|replay ID|--all -c FILE   manage dead letters"},
    {"refund", pb_cli_refund, "refund --connection C --transaction T --amount A [--reason R] [--reference REF]   refund at the gateway, then the credit memo"},
    {"chargebacks", pb_cli_chargebacks, "chargebacks list|open|update   disputes, their deadlines and states"},
    {"reconcile", pb_cli_reconcile, "reconcile --connection C --date YYYY-MM-DD -c FILE   reconcile a day: settlement vs the ERP, journals, reports"},
    {"recon", pb_cli_recon, "recon list|show RUN|undo JOURNAL -c FILE   stored reconciliation runs; undo a journal"},
    {"secret", pb_cli_secret, "secret keygen|seal VALUE [-c FILE]   make a key; seal a secret for the config"},
    {"admin", pb_cli_admin, "admin hash-key KEY       hash an admin API key for admin.api_keys"},
    {"demo", pb_cli_demo, "demo [--duration N] [--rate R] [--port P] [--dir DIR]   run the embedded demo"},
    {NULL, NULL, NULL},
};

static void usage(FILE *f)
{
    fprintf(f, "usage: paybridge COMMAND [ARGS]\n\ncommands:\n");
    for (const struct command *c = commands; c->name; c++)
        fprintf(f, "  %s\n", c->help);
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 ||
        strcmp(argv[1], "help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    for (const struct command *c = commands; c->name; c++)
        if (strcmp(c->name, argv[1]) == 0)
            return c->run(argc - 1, argv + 1);
    fprintf(stderr, "paybridge: unknown command \"%s\"\n", argv[1]);
    usage(stderr);
    return 2;
}
