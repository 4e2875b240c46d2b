/*
 * svc.h - the daemon skeleton every Slipway service shares: the common
 * configuration options, signal handling, the mTLS server with the health
 * service, the port file and ordered shutdown. A service's main.c reads:
 *
 *   config -> logging -> svc_start (listeners) -> own start-up (database,
 *   S3, threads) -> svc_wait (signals) -> svc_stop -> own tear-down
 *
 * so that main.c holds start-up, signals and shutdown only.
 */
#ifndef SLIPWAY_SVC_H
#define SLIPWAY_SVC_H

#include "cfg.h"
#include "metrics.h"
#include "rpc.h"

#include <stddef.h>

struct svc_config {
	char *listen;
	char *port_file;
	char *ca;
	char *cert;
	char *key;
	char *trust_domain;
	char *log_level;
	long long workers;
	long long cq_threads;
	long long max_msg;
	long long max_queue;
	long long grace_ms;
	long long max_streams;
	long long max_streams_per_peer;
	long long max_calls_per_peer;
	long long max_worker_streams;
	long long stream_idle_ms;
	char *metrics_listen;     /* NULL/"": no metrics endpoint */
	int metrics_allow_remote;
	int no_access_log;
	long long stream_window; /* not a common option: a service that takes big
				  * uploads sets it (see rpc_server_opts) */
};

/* The options every service has, to put first in its table. */
#define SVC_COMMON_OPTS(c)                                                                     \
	{ "listen", CFG_STR, "127.0.0.1:0", 0, 0, 0,                                            \
	  "address to listen on (host:port; port 0 picks a free one)", &(c)->listen },            \
	{ "port-file", CFG_PATH, NULL, 0, 0, 0,                                                  \
	  "write the bound port here once serving", &(c)->port_file },                           \
	{ "ca", CFG_PATH, NULL, 0, 0, CFG_REQUIRED, "deployment CA certificate (PEM)", &(c)->ca }, \
	{ "cert", CFG_PATH, NULL, 0, 0, CFG_REQUIRED, "this service's certificate (PEM)",         \
	  &(c)->cert },                                                                           \
	{ "key", CFG_PATH, NULL, 0, 0, CFG_REQUIRED,                                             \
	  "this service's private key (PEM, mode 0600)", &(c)->key },                             \
	{ "trust-domain", CFG_STR, "slipway", 0, 0, 0, "SPIFFE trust domain of callers",        \
	  &(c)->trust_domain },                                                                   \
	{ "log-level", CFG_STR, "info", 0, 0, 0, "debug, info, warn or error", &(c)->log_level }, \
	{ "workers", CFG_INT, "16", 1, 1024, 0, "handler threads (blocking work)", &(c)->workers }, \
	{ "cq-threads", CFG_INT, "1", 1, 64, 0, "completion-queue threads", &(c)->cq_threads },  \
	{ "max-msg", CFG_SIZE, "4MiB", 1024, 64LL << 20, 0, "largest gRPC message accepted or sent", \
	  &(c)->max_msg },                                                                        \
	{ "max-queue", CFG_INT, "1024", 1, 1000000, 0,                                           \
	  "calls waiting for a handler thread before RESOURCE_EXHAUSTED", &(c)->max_queue },     \
	{ "shutdown-grace", CFG_MS, "10s", 0, 600000, 0,                                         \
	  "how long in-flight calls may run after SIGTERM", &(c)->grace_ms },                    \
	{ "max-streams", CFG_INT, "1024", 1, 1000000, 0,                                         \
	  "open streams (watches, uploads, downloads) in all; past it RESOURCE_EXHAUSTED",       \
	  &(c)->max_streams },                                                                    \
	{ "max-streams-per-peer", CFG_INT, "32", 1, 1000000, 0,                                   \
	  "open streams of one caller (SPIFFE ID); past it RESOURCE_EXHAUSTED",                  \
	  &(c)->max_streams_per_peer },                                                           \
	{ "max-calls-per-peer", CFG_INT, "0", 0, 1000000, 0,                                     \
	  "calls of one caller waiting for or on a handler thread; 0 = half of --workers",       \
	  &(c)->max_calls_per_peer },                                                             \
	{ "max-worker-streams", CFG_INT, "0", 0, 1000000, 0,                                     \
	  "streams holding a handler thread, in all; 0 = 3/4 of --workers",                      \
	  &(c)->max_worker_streams },                                                             \
	{ "stream-idle-timeout", CFG_MS, "60s", 0, 24LL * 3600 * 1000, 0,                        \
	  "cancel a stream whose handler waited this long for the client (0 = never)",          \
	  &(c)->stream_idle_ms },                                                                 \
	{ "no-access-log", CFG_BOOL, "false", 0, 0, 0,                                           \
	  "log successful calls at debug instead of one info line per call",                    \
	  &(c)->no_access_log },                                                                 \
	SVC_METRICS_OPTS(c)

/* The metrics endpoint's options (metrics.h), also for the agent. */
#define SVC_METRICS_OPTS(c)                                                                    \
	{ "metrics-listen", CFG_STR, NULL, 0, 0, 0,                                              \
	  "serve Prometheus metrics over plain HTTP on HOST:PORT (GET /metrics); off when unset", \
	  &(c)->metrics_listen },                                                                 \
	{ "metrics-allow-remote", CFG_BOOL, "false", 0, 0, 0,                                     \
	  "allow --metrics-listen on an address other than loopback",                            \
	  &(c)->metrics_allow_remote }

/* Health probe: returns 0 when the service can do its work, else a
 * negative code with the reason in why. Called from a worker thread. */
typedef int (*svc_probe_fn)(void *arg, char *why, size_t whylen);

struct svc;

/*
 * Parses the configuration and handles --help / --check-config (printing to
 * stdout; *exit_code is then set and the caller exits with it). Otherwise
 * starts logging as `name`, blocks SIGTERM/SIGINT/SIGHUP for every thread,
 * disables core dumps and initialises gRPC. Returns 0, or a negative code
 * with a message in err (the caller prints it and exits 2).
 */
int svc_configure(const char *name, const char *env_prefix, struct cfg_opt *opts, size_t n,
		  int argc, char **argv, int *exit_code, char *err, size_t errlen);

/* The process set-up svc_configure does after logging, for daemons without
 * a listener (the agent): SIGTERM/SIGINT/SIGHUP blocked for every thread
 * (wait for them with sigwait), SIGPIPE ignored, no core dumps and not
 * dumpable (PR_SET_DUMPABLE 0: no ptrace or /proc/PID/mem or environ for
 * other processes of the user), gRPC initialised. Call from main before any thread starts. */
void svc_process_init(void);

/* Creates the mTLS server from the common options, with the health service
 * registered (probe may be NULL: always SERVING). Returns a new svc (free
 * with svc_free). Add the service's own handlers with svc_server() before
 * svc_start. */
int svc_new(const char *name, const struct svc_config *c, svc_probe_fn probe, void *probe_arg,
	    struct svc **out, char *err, size_t errlen);

struct rpc_server *svc_server(struct svc *s);

/* Adds a function run when shutdown begins (before in-flight calls drain),
 * e.g. to end long polls. At most 8. */
void svc_on_drain(struct svc *s, void (*fn)(void *), void *arg);

/* Checks --metrics-listen with the configuration: NULL or "" (off), or a
 * HOST:PORT that is loopback unless allow_remote. Returns 0 or SW_EINVAL
 * with the reason naming the flags. svc_configure runs it for services;
 * the agent calls it itself. Any thread. */
int svc_metrics_check(const char *listen, int allow_remote, char *err, size_t errlen);

/* Starts the metrics endpoint when listen is set (metrics.h; the agent
 * calls it directly, services through svc_start). Returns 0 with *out
 * NULL when listen is NULL or "". Main thread. */
int svc_metrics_start(const char *name, const char *listen, int allow_remote,
		      struct metrics_http **out, char *err, size_t errlen);

/* Starts serving, starts the metrics endpoint (--metrics-listen) and
 * writes the port file. */
int svc_start(struct svc *s, char *err, size_t errlen);

/* Blocks until SIGTERM or SIGINT, then arms the second signal: another
 * SIGTERM or SIGINT during shutdown exits the process at once with status
 * 1. Returns the signal number. SIGHUP runs the reload function set with
 * svc_on_reload (its failure is logged) and waits on; without one it is
 * logged and ignored. No signal handler runs: the signals stay blocked and
 * the calling thread takes them with sigwait, so the reload is ordinary
 * code on this (the main) thread. Needs the signal mask of
 * svc_process_init. */
int svc_wait_signal(void);

/* The reload function for SIGHUP (NULL: none). svc_new sets the service's
 * (svc_reload_tls); the agent sets its own. Main thread, before waiting. */
void svc_on_reload(int (*fn)(void *arg, char *err, size_t errlen), void *arg);

/*
 * Certificate rotation for a process whose identity is the files ca, cert
 * and key: reads them again, checks them (tls_check_material: the key is
 * the certificate's, the certificate verifies against the CA, and it is
 * still `expect_id` when that is not NULL; with a server, one clients
 * accept as a server's), then switches every reloadable
 * client (rpc_client_reload_all) and, when srv is not NULL, the server
 * (rpc_server_set_tls), and logs the new serial and expiry. A bad set is
 * refused with SW_EINVAL and the reason in err: nothing changes and the
 * old certificate stays in service. Main thread.
 */
int svc_reload_files(const char *ca, const char *cert, const char *key, const char *expect_id,
		     struct rpc_server *srv, char *err, size_t errlen);

/* svc_wait_signal, logged with the service's grace period. */
int svc_wait(struct svc *s);

/* Ordered shutdown: stop the metrics endpoint (so that no collector runs
 * while the service tears down what collectors read), stop accepting,
 * drain in-flight calls for up to the grace period, then cancel the rest
 * and join the RPC threads. */
void svc_stop(struct svc *s);

void svc_free(struct svc *s);

/* Opens a client to the service named `service` ("policy") at `target`
 * with this service's own certificate (the --ca/--cert/--key of c),
 * pinned to spiffe://<c->trust_domain>/service/<service>. Returns 0 and
 * *out (free with rpc_client_free). */
int svc_client(const struct svc_config *c, const char *target, const char *service,
	       struct rpc_client **out, char *err, size_t errlen);

/* Writes text to path atomically (temporary file + rename), mode 0644. */
int svc_write_file_atomic(const char *path, const char *text, char *err, size_t errlen);

#endif
