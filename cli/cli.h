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

enum cli_output { CLI_TABLE = 0, CLI_JSON = 1 };

struct cli {
	enum cli_output output;
	int64_t timeout_ms;
	const char *ca, *cert, *key;   /* paths: flag, else SLIPWAY_CA/CERT/KEY */
	char *ca_pem, *cert_pem, *key_pem;
	int verbose;
};

/* Exit codes: 0 success, 1 the operation failed, 2 usage error. */
enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* A group or a command: argv[0] is its own name, as for main(). */
typedef int (*cli_cmd_fn)(struct cli *c, int argc, char **argv);

struct cli_cmd {
	const char *name;
	cli_cmd_fn fn;
	const char *summary;
};

/* Runs the command named argv[1] from table cmds (argv[0] is the group),
 * or prints the group's usage. `group` is e.g. "audit". */
int cli_dispatch(struct cli *c, const char *group, const struct cli_cmd *cmds, size_t n,
		 int argc, char **argv);

/*
 * Connects to service `service` ("audit", "artifact", ...): the address is
 * `addr` when not NULL, else SLIPWAY_<SERVICE>_ADDR. Loads the TLS material
 * once. Returns 0 and *out (free with rpc_client_free), or prints why and
 * returns CLI_FAIL.
 */
int cli_connect(struct cli *c, const char *service, const char *addr, struct rpc_client **out);

/* Default call options (the global timeout). */
struct rpc_call_opts cli_call_opts(const struct cli *c);

/* One call to service (its address from SLIPWAY_<SERVICE>_ADDR). CLI_OK,
 * or CLI_FAIL with the error printed. */
int cli_call(struct cli *c, const char *service, const ProtobufCServiceDescriptor *sd,
	     const char *method, const ProtobufCMessage *req, ProtobufCMessage **resp);

/* Prints "slipway: <fmt>" to stderr and returns CLI_FAIL. */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints "slipway: <fmt>" to stderr and returns CLI_USAGE. */
int cli_usage(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Prints j as indented JSON on stdout and releases it. */
void cli_print_json(json_t *j);

/* Formats ms since the epoch as "2026-11-26 17:54:19Z" into out[32]
 * ("-" for 0). */
const char *cli_time(int64_t unix_ms, char out[32]);

/* Lower-case hex of n bytes into out (2n+1 bytes). */
void cli_hex(const uint8_t *p, size_t n, char *out);

/* True when stderr is a terminal (live views, progress bars). */
int cli_tty(void);

void cli_free(struct cli *c);

#endif
