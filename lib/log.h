/*
 * log.h - structured logging: one logfmt line per event on stderr.
 *
 *   ts=2026-11-26T17:54:19.123Z level=info service=audit req=4f1c... trace_id=0af7... msg="appended" seq=42
 *
 * Nothing is written until log_init() is called, so lib/ never prints on its
 * own: the service decides. Values formatted through the key/value format are
 * quoted and escaped automatically, so untrusted input can neither break a
 * line in two nor forge a key. The request id comes from a thread-local set
 * by the RPC layer for the duration of a handler (log_set_request_id), and
 * so does the trace id of the thread's W3C trace context (trace.h), when
 * one is set.
 *
 * Never pass secret values or key material to these functions.
 */
#ifndef SLIPWAY_LOG_H
#define SLIPWAY_LOG_H

#include <stddef.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO = 1, LOG_WARN = 2, LOG_ERROR = 3, LOG_OFF = 4 };

/* Sink for tests: receives every formatted line (with its trailing newline). */
typedef void (*log_sink_fn)(const char *line, size_t len, void *arg);

/* Enables logging for this process as service `service` (copied, at most 31
 * bytes) at level `min`. Call once from main before starting threads. */
void log_init(const char *service, enum log_level min);

/* Parses "debug", "info", "warn", "error", "off". Returns 0 or SW_EINVAL. */
int log_level_parse(const char *s, enum log_level *out);

/* Redirects output to `fn` (NULL restores stderr). Before threads start. */
void log_set_sink(log_sink_fn fn, void *arg);

/* Sets the calling thread's request id (copied, at most 63 bytes; NULL
 * clears it). Any thread. */
void log_set_request_id(const char *rid);

/* Returns the calling thread's request id, or "" when none. */
const char *log_request_id(void);

/* Sets the calling thread's trace id (32 hex digits, copied; NULL clears
 * it): while set, every line of the thread carries trace_id=. trace.h sets
 * it with the thread's trace context; other callers need not. Any thread. */
void log_set_trace_id(const char *trace_id);

/* Returns the calling thread's trace id, or "" when none. */
const char *log_trace_id(void);

/* Returns 1 if events at `lvl` are written. */
int log_enabled(enum log_level lvl);

/*
 * Writes one event. `msg` is a constant description; `kvfmt` is a printf
 * format of space-separated key=value pairs ("seq=%llu app=%s"), or NULL.
 * Supported conversions: d i u x X c s p f and the h hh l ll z j t length
 * modifiers, with flags, width and precision (including * forms). Every
 * %s and %c value is escaped and quoted when needed. Any thread.
 */
void log_emit(enum log_level lvl, const char *msg, const char *kvfmt, ...)
	__attribute__((format(printf, 3, 4)));

#define log_debug(...) log_emit(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_emit(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_emit(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_emit(LOG_ERROR, __VA_ARGS__)

#endif
