/*
 * harness.h - helpers for integration tests over the real stack.
 *
 * Tests run under tests/run, which brings up a stack (scripts/stack up)
 * and exports its environment (SLIPWAY_PKI_DIR, SLIPWAY_PGURL, SLIPWAY_S3_*,
 * SLIPWAY_<SERVICE>_ADDR, ...). These helpers start and stop processes,
 * issue certificates and make mTLS clients.
 */
#ifndef SLIPWAY_HARNESS_H
#define SLIPWAY_HARNESS_H

#include "rpc.h"

#include <stddef.h>
#include <sys/types.h>

/* Returns getenv(name) or fails the test run when it is missing. */
const char *h_env(const char *name);

/* A fresh directory under $SLIPWAY_TEST_TMP (or /tmp); static storage. */
const char *h_tmpdir(const char *tag);

/* Reads a whole file into a new string (free()). NULL when missing. */
char *h_read_file(const char *path);

/* Runs a shell command made with printf's format (at most 2 KiB); returns
 * system()'s status. */
int h_run(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Enrolls agent (a SPIFFE ID) for app/env, as the stack's admin, with its
 * sealing key pk pinned (NULL: pinned at its first registration). Returns
 * the CLI's exit status. */
int h_enroll(const char *agent, const char *app, const char *env, const unsigned char *pk);

/* Counts the lines of path that contain needle. */
int h_grep_count(const char *path, const char *needle);

/* Issues a certificate for `uri` (a full SPIFFE ID, or NULL for none) and
 * optional second_uri in the CA at pki_dir, into <out_prefix>.crt/.key. */
void h_issue(const char *pki_dir, const char *out_prefix, const char *uri, const char *second_uri,
	     int server);

/* Client credentials from files; cert/key may be NULL (no client cert).
 * Calls fail at once when the server cannot be reached (like the CLI). */
/* The SPIFFE ID clients of servers a test started itself pin (NULL: learn
 * it from the server's certificate; the stack's services are always
 * pinned by their address). Set by tests whose servers come and go. */
extern const char *h_server_id;

struct rpc_client *h_client(const char *target, const char *ca, const char *cert,
			    const char *key);

/* The same, but calls wait for the server until their deadline and the
 * channel reconnects after a restart, as services' clients do. */
struct rpc_client *h_service_client(const char *target, const char *ca, const char *cert,
				    const char *key);

/* A child process. */
struct h_proc {
	pid_t pid;
	int port;
	char log[512];
	char port_file[512];
};

/* Starts argv[0] with argv (NULL-terminated) and waits up to 20 s for the
 * --port-file it was given (port_file may be NULL: no wait). stderr and
 * stdout go to log. Returns 0, or -1 if it exited or never wrote the file. */
int h_start(struct h_proc *p, char *const argv[], const char *port_file, const char *log);

/* Sends sig and waits up to timeout_ms for the exit. Returns the exit
 * status (0-255), 128+signal if killed by a signal, or -1 on timeout. */
int h_stop(struct h_proc *p, int sig, int timeout_ms);

/* Waits for exit without signalling. Same return values as h_stop. */
int h_wait(struct h_proc *p, int timeout_ms);

/* Stops the stack's PostgreSQL ($SLIPWAY_STACK_DIR/pg) with pg_ctl's
 * shutdown mode ("immediate": a crash, as a power cut or kill -9 would;
 * "fast": clients are told). Returns 0, or -1 (message on stderr). */
int h_pg_stop(const char *mode);

/* Starts the stack's PostgreSQL again with the options it ran with
 * (postmaster.opts) and waits until it accepts connections. Returns 0 or
 * -1. */
int h_pg_start(void);

/* grpc.health.v1 Check of the whole server at addr with the stack's admin
 * certificate: 1 SERVING, 0 NOT_SERVING, -1 no answer. */
int h_health(const char *addr);

/* Milliseconds on the monotonic clock. */
long long h_now_ms(void);

void h_sleep_ms(int ms);

#endif
