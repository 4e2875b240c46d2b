/*
 * trace.h - W3C Trace Context (https://www.w3.org/TR/trace-context/) for
 * following one request, or one deployment, across services in the logs.
 *
 * A trace context is the `traceparent` header, version 00:
 *
 *   00-<32 hex: trace id>-<16 hex: parent (span) id>-<2 hex: flags>
 *
 * The RPC layer parses it on every incoming call (an invalid value is
 * ignored and a new trace is started: it is never an error), makes it the
 * handler thread's current context, and every outgoing call made while a
 * context is current carries a child: the same trace id, a new span id.
 * Threads that act for something recorded earlier (the orchestrator driving
 * a deployment) set that trace as current with trace_enter_id.
 *
 * The current context is thread-local. While one is set, every log line of
 * the thread carries trace_id=<32 hex> (log.h), so `grep trace_id=X` over
 * all services' logs follows one deployment end to end.
 *
 * Trace ids are random 128-bit values chosen by whoever starts the trace
 * (the CLI, or a service for a call that arrives without one); they are
 * correlation ids, never secrets, and carry no authority.
 */
#ifndef SLIPWAY_TRACE_H
#define SLIPWAY_TRACE_H

#include <stddef.h>
#include <stdint.h>

#define TRACE_PARENT_LEN 55 /* "00-" 32 "-" 16 "-" 2 */
#define TRACE_ID_HEX 32

struct trace_ctx {
	uint8_t trace_id[16];
	uint8_t span_id[8];
	uint8_t flags;
	int valid; /* 0: no context */
};

/*
 * Parses a traceparent value of n bytes (not NUL-terminated). Follows the
 * specification's rules for a version-00 reader: lower-case hex only,
 * version ff is invalid, a version-00 value is exactly 55 bytes, a later
 * version at least 55 with '-' after the flags (its extra fields are
 * ignored), and neither the trace id nor the parent id may be all zeros.
 * Returns 0 and *out, or SW_EINVAL (out is then marked invalid). Any thread.
 */
int trace_parse(const char *s, size_t n, struct trace_ctx *out);

/* Writes t as a version-00 traceparent into out[TRACE_PARENT_LEN + 1].
 * Returns 0, or SW_EINVAL when t is not valid (out is then ""). */
int trace_format(const struct trace_ctx *t, char out[TRACE_PARENT_LEN + 1]);

/* Writes the trace id of t as 32 lower-case hex digits into
 * out[TRACE_ID_HEX + 1] ("" when t is not valid). */
void trace_id_hex(const struct trace_ctx *t, char out[TRACE_ID_HEX + 1]);

/* A new trace: random trace and span ids, flags 01 (sampled: every trace is
 * logged). */
void trace_new(struct trace_ctx *out);

/* A child of parent: the same trace id and flags, a new span id. When
 * parent is NULL or not valid, a new trace. */
void trace_child(const struct trace_ctx *parent, struct trace_ctx *out);

/* ---- the calling thread's current context ---- */

/* Makes a copy of t the calling thread's current context and sets the log
 * trace id (log_set_trace_id); NULL or an invalid t clears both. */
void trace_set_current(const struct trace_ctx *t);

/* The calling thread's current context (valid == 0 when none). */
const struct trace_ctx *trace_current(void);

/*
 * Makes a new span of the trace whose id is hex (32 lower-case hex digits,
 * as stored with a deployment) the current context. Returns 0, or
 * SW_EINVAL when hex is not a valid trace id (the current context is then
 * cleared: work for an untraced record logs without a trace id).
 */
int trace_enter_id(const char *hex);

#endif
