/*
 * rpc_limits.h - admission limits of the RPC server (rpc.c only): how many
 * streams one service and one caller (SPIFFE ID) may hold open, and how
 * many calls one caller may have queued for or running on the handler
 * threads. A call past a limit is refused at once (RESOURCE_EXHAUSTED),
 * never queued, so that one certificate holder cannot take every thread
 * or every stream of a service from the others.
 *
 * Counting: a call is admitted once, when it arrives, with what it will
 * hold: a stream slot (client- and server-streaming calls, for the call's
 * whole life) and a worker slot (calls whose handler runs on the worker
 * pool, from the queue until the handler returns or defers). Streams that
 * hold a worker are also counted service-wide, so that the rest of the
 * pool stays for unary calls.
 */
#ifndef SLIPWAY_RPC_LIMITS_H
#define SLIPWAY_RPC_LIMITS_H

#include <stddef.h>

struct rpc_limits_opts {
	int max_streams;          /* open streams in the service (>= 1) */
	int max_streams_per_peer; /* open streams of one caller (>= 1) */
	int max_calls_per_peer;   /* calls of one caller queued or on a worker (>= 1) */
	int max_worker_streams;   /* streams queued or on a worker, in all (>= 1) */
};

struct rpc_limits;
struct rpc_limits_peer;

/* What one admitted call holds; zero-initialised means nothing. */
struct rpc_hold {
	struct rpc_limits_peer *peer;
	int stream;  /* holds a stream slot */
	int worker;  /* holds a worker slot */
};

/* Creates the limits (values < 1 are taken as 1). Returns 0 and *out (free
 * with rpc_limits_free) or SW_ENOMEM. */
int rpc_limits_new(const struct rpc_limits_opts *o, struct rpc_limits **out);
void rpc_limits_free(struct rpc_limits *l);

/*
 * Admits a call of `peer` (borrowed) that opens a stream (stream != 0)
 * and/or needs a worker (worker != 0). A service principal (service != 0)
 * is not held to max_calls_per_peer: our services call each other on
 * behalf of many users at once (the orchestrator's handlers each call
 * the artifact service), so one per-caller share would turn one user's
 * load into refusals for all; every other limit applies to it. On success
 * returns 0 and fills *h; past a limit returns SW_ELIMIT with a message
 * naming the flag that sets it in why, and holds nothing. Any thread.
 */
int rpc_limits_admit(struct rpc_limits *l, const char *peer, int service, int stream,
		     int worker, struct rpc_hold *h, char *why, size_t whylen);

/* Gives the worker slot of h back (the handler returned or deferred). Any
 * thread; a no-op when h holds none. */
void rpc_limits_release_worker(struct rpc_limits *l, struct rpc_hold *h);

/* Gives everything h still holds back (the call is over). Any thread. */
void rpc_limits_release(struct rpc_limits *l, struct rpc_hold *h);

/* Current counts, for tests: open streams and worker slots in use. */
void rpc_limits_counts(struct rpc_limits *l, int *streams, int *worker_streams);

#endif
