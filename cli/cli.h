/*
 * cli.h - what the `slipway` subcommands share: global options, connection
 * set-up from the SLIPWAY_* environment (the file `scripts/stack up` writes),
 * and output in table or JSON form.
 */
#ifndef SLIPWAY_CLI_H
#define SLIPWAY_CLI_H

#include "rpc.h"

#include <jansson.h>
#include <stdint.h>
#include <stdio.h>

/* -o: table and json for every command; csv (RFC 4180) and jsonl (one JSON
 * object a line) only for the commands that list records (record_cmds in
 * main.c). */
enum cli_output { CLI_TABLE = 0, CLI_JSON = 1, CLI_CSV = 2, CLI_JSONL = 3 };

enum { CLI_CONF_NAME = 64, CLI_CONF_CONTEXTS = 64, CLI_CONF_KEYS = 32 };

/* The config file's context in use (config.c): only paths and addresses. */
struct cli_conf {
	char path[4096];
	int exists;
	char current[CLI_CONF_NAME];  /* current-context in the file */
	char selected[CLI_CONF_NAME]; /* the context in use ("" none) */
	char contexts[CLI_CONF_CONTEXTS][CLI_CONF_NAME];
	int ncontexts;
	struct {
		char key[32];
		char val[512];
	} kv[CLI_CONF_KEYS];
	int nkv;
};

struct cli {
	enum cli_output output;
	int64_t timeout_ms;
	const char *ca, *cert, *key;   /* paths: flag, else SLIPWAY_CA/CERT/KEY */
	char *ca_pem, *cert_pem, *key_pem;
	int verbose;
	const char *group;          /* the running command's group, or NULL */
	const struct cli_cmd *cmd;  /* the running command (set by cli_dispatch) */
	struct cli_conf conf;
};

/*
 * Exit codes, the same for every command (README.md, `slipway help`):
 * 0 success, 1 the operation failed (e.g. a deployment rolled back), 2 usage,
 * 3 not found or not allowed (NOT_FOUND, PERMISSION_DENIED, UNAUTHENTICATED),
 * 4 the service cannot be reached (UNAVAILABLE, DEADLINE_EXCEEDED).
 */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2, CLI_DENIED = 3, CLI_UNREACHABLE = 4 };

struct cli_cmd;

/* A group or a command: argv[0] is its own name, as for main(). */
typedef int (*cli_cmd_fn)(struct cli *c, int argc, char **argv);

/*
 * One option of a command. The same row makes the getopt_long table
 * (cli_getopt), the --help text and the shell completion, so they cannot
 * drift apart. Tables end with a row whose name is NULL.
 */
struct cli_opt {
	const char *name; /* long name without the dashes */
	int has_arg;      /* no_argument or required_argument */
	int val;          /* what cli_getopt returns for it */
	const char *arg;  /* the value's placeholder ("DIR"); NULL for a flag */
	const char *help; /* one line */
};

/*
 * A command, or a group of commands (sub != NULL). Tables of commands end
 * with a row whose name is NULL.
 */
struct cli_cmd {
	const char *name;
	cli_cmd_fn fn;
	const char *summary;           /* one line, lower case, no full stop */
	const char *synopsis;          /* what follows "slipway [GROUP] NAME" in Usage */
	const struct cli_opt *opts;    /* NULL when the command takes no option */
	const char *examples;          /* lines separated by '\n', or NULL */
	const char *shorts;            /* getopt short options ("O:"), or NULL */
	const struct cli_cmd *sub;     /* a group: its commands */
};

/* Runs the command named argv[1] from the NULL-terminated table cmds
 * (argv[0] is the group), or prints the group's help. `group` is e.g.
 * "audit". Returns the command's exit code. */
int cli_dispatch(struct cli *c, const char *group, const struct cli_cmd *cmds, int argc,
		 char **argv);

/* getopt_long over the options of the running command (c->cmd), with the
 * table made from its cli_opt rows. Same contract as getopt_long: set
 * optind = 0 before the first call. --help never reaches it (cli_dispatch
 * answers it first). */
int cli_getopt(struct cli *c, int argc, char **argv);

/* Maps an SW_E* code from a failed call to the CLI exit code (3 not found
 * or denied, 4 unreachable, 1 otherwise). The one place of this mapping. */
int cli_exit_code(int sw_err);

/* Prints "slipway: <fmt>" to stderr and returns cli_exit_code(sw_err). */
int cli_fail_rc(int sw_err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * Connects to service `service` ("audit", "artifact", ...): the address is
 * `addr` when not NULL, else SLIPWAY_<SERVICE>_ADDR. Loads the TLS material
 * once. Returns 0 and *out (free with rpc_client_free), or prints why and
 * returns CLI_FAIL (CLI_UNREACHABLE when the address is unusable).
 */
int cli_connect(struct cli *c, const char *service, const char *addr, struct rpc_client **out);

/* Reads the config file ($XDG_CONFIG_HOME/slipway/config, else
 * ~/.config/slipway/config) into c->conf, keeping the settings of context
 * `want` (NULL: the file's current-context). No file is fine unless a
 * context is asked for. Returns CLI_OK, or prints why and returns
 * CLI_USAGE (a malformed file), CLI_DENIED (no such context) or CLI_FAIL. */
int cli_config_load(struct cli *c, const char *want);

/* The context's value of key ("ca", "orchestrator", ...), or NULL. */
const char *cli_config_get(const struct cli *c, const char *key);

/* The address of service: SLIPWAY_<SERVICE>_ADDR, else the context's
 * `<service> =`, else its `address =`; NULL when none. */
const char *cli_service_addr(const struct cli *c, const char *service);

/* Default call options (the global timeout). */
struct rpc_call_opts cli_call_opts(const struct cli *c);

/* One call to service (its address from SLIPWAY_<SERVICE>_ADDR). CLI_OK,
 * or the exit code of the failure (cli_exit_code) with the error printed. */
int cli_call(struct cli *c, const char *service, const ProtobufCServiceDescriptor *sd,
	     const char *method, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* Prints "slipway: <fmt>" to stderr and returns CLI_FAIL. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints the running command's Usage line (from its descriptor) to stderr
 * and returns CLI_USAGE. */
int cli_usage_cmd(const struct cli *c);

/* Prints "slipway: <fmt>" to stderr and returns CLI_USAGE. */
int cli_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

enum { CLI_TABLE_COLS = 12 };

/* A table printed with each column as wide as its widest cell (table.c). */
struct cli_table {
	int ncols;
	const char *align;                 /* one 'l' or 'r' per column */
	const char *head[CLI_TABLE_COLS];  /* borrowed */
	char **cells;                      /* owned copies, row by row */
	size_t n, cap, dropped;
};

/* Starts a table: align has one 'l' (left) or 'r' (right) per column, then
 * one header string per column (borrowed until cli_table_free). 0, or -1
 * for more than CLI_TABLE_COLS columns. */
int cli_table_init(struct cli_table *t, const char *align, ...);

/* Adds a row: one string per column, copied (NULL prints empty). 0, or -1
 * when out of memory or over the cap (the row is counted as not shown). */
int cli_table_row(struct cli_table *t, ...);

/* Prints the header and rows to f, columns two spaces apart. */
void cli_table_print(struct cli_table *t, FILE *f);

/* Releases the copies; t can be reused after cli_table_init. */
void cli_table_free(struct cli_table *t);

/* Prints j as indented JSON on stdout and releases it. */
void cli_print_json(json_t *j);

/* Writes one CSV record (RFC 4180) of n fields to f: a field holding a
 * comma, a double quote, CR or LF is quoted and its quotes doubled; NULL
 * is an empty field; the record ends in CRLF. */
void cli_csv_row(FILE *f, int n, const char *const *fields);

/* Writes j on one line (JSON Lines) and takes the reference. */
void cli_print_jsonl(json_t *j);

/* Parses a time for --since/--until: RFC 3339 ("2026-11-26T17:00:00Z",
 * "2026-11-26T19:00:00.5+02:00"), unix milliseconds, or a duration ago
 * ("15m", "24h", "7d"). 0 and *out_ms, or -1. */
int cli_parse_time(const char *s, int64_t *out_ms);

/* RFC 3339 UTC with milliseconds ("2026-11-26T17:00:00.000Z") into out;
 * "" for 0. Returns out. */
const char *cli_rfc3339(int64_t unix_ms, char out[32]);

/* A deployment state's name ("RUNNING"; "?" for an unknown value). */
const char *cli_deployment_state(int state);

/* Formats ms since the epoch as "2026-11-26 17:54:19Z" into out[32]
 * ("-" for 0). */
const char *cli_time(int64_t unix_ms, char out[32]);

/* Lower-case hex of n bytes into out (2n+1 bytes). */
void cli_hex(const uint8_t *p, size_t n, char *out);

/* True when stderr is a terminal (live views, progress bars). */
int cli_tty(void);

void cli_free(struct cli *c);

#endif
