/*
 * metrics.h - Prometheus metrics: a registry of counters, gauges and
 * histograms with labels, the text exposition format 0.0.4, and the small
 * HTTP server (libmicrohttpd) that serves it on GET /metrics.
 *
 * The hot path is lock-free: a family keeps its children (one per set of
 * label values) in a fixed open-addressing table that is only ever added
 * to, so a lookup is a hash and a few atomic loads, and an update is an
 * atomic add (a compare-and-swap loop for the double-valued ones). Only
 * creating a child takes the family's mutex. Children are never freed
 * before the registry, so a pointer to one stays valid; a family holds at
 * most METRICS_MAX_CHILDREN of them and drops updates to any new label
 * set past that (counted by slipway_metrics_dropped_total), so a label
 * fed from input can never grow memory without bound. Callers still pick
 * labels with a bounded set of values (method names, status codes,
 * states), never ids.
 *
 * Values that live elsewhere (rows in PostgreSQL, the size of a table) are
 * set by collectors: functions run at scrape time on the metrics HTTP
 * thread, never on an RPC worker, and at most once per their interval
 * however often the endpoint is scraped. A collector that queries the
 * database bounds its own wait (db_acquire timeout, statement timeout).
 *
 * Most code uses the process-wide registry (metrics_default) through the
 * shorthands metrics_counter/gauge/histogram, which register a family the
 * first time and return the same family afterwards, so a module can ask
 * for its family where it uses it.
 */
#ifndef SLIPWAY_METRICS_H
#define SLIPWAY_METRICS_H

#include <stddef.h>
#include <stdint.h>

enum metrics_type { METRICS_COUNTER = 0, METRICS_GAUGE = 1, METRICS_HISTOGRAM = 2 };

#define METRICS_MAX_LABELS 4
#define METRICS_MAX_CHILDREN 500
#define METRICS_MAX_BUCKETS 32
#define METRICS_LABEL_VALUE_MAX 128 /* longer values are cut (at a UTF-8 boundary) */
#define METRICS_MAX_OUTPUT (16u << 20) /* the exposition text's hard cap */

struct metrics_registry;
struct metrics_family;
struct metrics_child;

/* The process-wide registry, created on first use (any thread). Never
 * freed: families registered by lib/ live as long as the process. */
struct metrics_registry *metrics_default(void);

/* A registry of one's own (tests). Returns 0 and *out (free with
 * metrics_registry_free), or SW_ENOMEM. */
int metrics_registry_new(struct metrics_registry **out);
/* Frees r, its families and children. No other thread may use r. NULL ok. */
void metrics_registry_free(struct metrics_registry *r);

/*
 * Registers a family, or returns the one already registered under name
 * when its type and labels are the same. name: [a-zA-Z_:][a-zA-Z0-9_:]*;
 * help: any text (escaped on output); labels: NULL or "" for none, else
 * up to METRICS_MAX_LABELS comma-separated names ([a-zA-Z_][a-zA-Z0-9_]*,
 * not starting with "__", and not "le" on a histogram). For histograms,
 * buckets are the upper bounds, strictly increasing and finite (the +Inf
 * bucket is implied); NULL picks metrics_default_buckets. Returns the
 * family (owned by r), or NULL when a rule above is broken, the name is
 * taken by a family of another shape, or memory runs out. Any thread.
 */
struct metrics_family *metrics_family_new(struct metrics_registry *r, enum metrics_type type,
					  const char *name, const char *help, const char *labels,
					  const double *buckets, size_t nbuckets);

/* metrics_family_new on the default registry. */
struct metrics_family *metrics_counter(const char *name, const char *help, const char *labels);
struct metrics_family *metrics_gauge(const char *name, const char *help, const char *labels);
struct metrics_family *metrics_histogram(const char *name, const char *help, const char *labels,
					 const double *buckets, size_t nbuckets);

/* Latency buckets in seconds, 1 ms to 30 s (what the RPC and database
 * histograms use). */
extern const double metrics_default_buckets[];
extern const size_t metrics_default_nbuckets;

/*
 * The child of f for the given label values (as many as f has labels, in
 * order; values are copied, cut to METRICS_LABEL_VALUE_MAX bytes). Created
 * on first use. Returns NULL when f is NULL, a value is NULL, or f is
 * full (the update is then dropped and counted). Any thread; lock-free
 * when the child exists.
 */
struct metrics_child *metrics_withv(struct metrics_family *f, const char *const *values);
/* metrics_withv with the values as arguments: metrics_with(f, "a", "b"). */
struct metrics_child *metrics_with(struct metrics_family *f, ...);

/* Updates. c may be NULL (nothing happens), so that
 * metrics_add(metrics_with(f, ...), 1) needs no check. Any thread.
 * metrics_add: counters and gauges (a counter ignores v < 0 and NaN);
 * metrics_set: gauges only; metrics_observe: histograms only. */
void metrics_add(struct metrics_child *c, double v);
void metrics_set(struct metrics_child *c, double v);
void metrics_observe(struct metrics_child *c, double v);

/* The value of a counter or gauge child, or the count of a histogram's
 * (tests). 0 for NULL. */
double metrics_value(const struct metrics_child *c);

/* Sets every child of gauge family f to 0 (a collector about to set the
 * values it finds: label sets that vanished read 0, not a stale value). */
void metrics_family_zero(struct metrics_family *f);

/*
 * A collector: fn(arg) runs at scrape time, before the text is made, at
 * most once per interval_ms (0: on every scrape), one collector at a time,
 * on the thread that renders (the metrics HTTP thread). It sets gauges.
 * Returns 0, or SW_ELIMIT past 32 collectors. Borrows arg until
 * metrics_collector_remove(r, fn, arg) returns; after that fn is neither
 * running nor will run. Any thread.
 */
int metrics_collector_add(struct metrics_registry *r, void (*fn)(void *), void *arg,
			  int64_t interval_ms);
void metrics_collector_remove(struct metrics_registry *r, void (*fn)(void *), void *arg);

/*
 * Runs the collectors and writes the exposition text (format 0.0.4) of
 * every family of r into a new buffer: *out (free()) of *len bytes,
 * NUL-terminated. Families appear in registration order, children in
 * creation order. Returns 0, SW_ENOMEM, or SW_ELIMIT past
 * METRICS_MAX_OUTPUT. Any thread (scrapes are serialized).
 */
int metrics_render(struct metrics_registry *r, char **out, size_t *len);

/* Writes v as Prometheus does: the shortest text that reads back as v,
 * "+Inf", "-Inf" or "NaN". buf needs 32 bytes. Returns buf. */
const char *metrics_format_double(char buf[32], double v);

/* ---- the standard families ---- */

/* Sets slipway_build_info{service,version} 1 and
 * process_start_time_seconds (now) on the default registry. Call once at
 * start-up, from main. */
void metrics_process_init(const char *service);

/*
 * One finished server call (lib/rpc.c calls it where every call ends):
 * slipway_rpc_server_handled_total{service,method,code} and the
 * slipway_rpc_server_handling_seconds{service,method} histogram. path is
 * "/package.Service/Method", or NULL for a method the server does not
 * have (recorded as service="unknown", method="unknown": a caller cannot
 * make up label values). code is the gRPC status name ("OK"). Any thread.
 */
void metrics_rpc_observe(const char *path, const char *code, double seconds);

/* One finished client call: slipway_rpc_client_handled_total and
 * slipway_rpc_client_handling_seconds, labelled as above. Any thread. */
void metrics_rpc_client_observe(const char *path, const char *code, double seconds);

/* ---- the HTTP endpoint ---- */

struct metrics_http;

/*
 * Serves the default registry on listen ("HOST:PORT", host an IPv4 or
 * [IPv6] literal or "localhost"; port 0 picks a free one), on one thread
 * of libmicrohttpd's own. GET (and HEAD) /metrics answer the text, other
 * paths 404, other methods 405. A host that is not a loopback address is
 * refused (SW_EPERM) unless allow_remote: the metrics carry no secrets,
 * but what runs where and how busy it is is still nobody else's business,
 * so exposure is a decision the operator makes explicitly. Returns 0 and
 * *out (stop with metrics_http_stop), SW_EINVAL for a bad address, or
 * SW_EUNAVAIL when it cannot bind. Main thread.
 */
int metrics_http_start(const char *listen, int allow_remote, struct metrics_http **out,
		       char *err, size_t errlen);

/* The port bound. */
int metrics_http_port(const struct metrics_http *h);

/* Stops serving and joins the thread. NULL ok. Main thread. */
void metrics_http_stop(struct metrics_http *h);

/* Whether listen's host is a loopback address; parses like
 * metrics_http_start. Returns 1, 0, or SW_EINVAL. */
int metrics_listen_is_loopback(const char *listen);

#endif
