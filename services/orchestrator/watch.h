/*
 * watch.h - WatchDeployment without a thread per watcher (watch.c).
 *
 * A watch is a deferred server stream (rpc_stream_defer) registered under
 * its deployment id. One watcher thread re-reads a watched deployment's
 * detail when a NOTIFY orch_deploy names it (orch_watch_notify, from the
 * listener in waiters.c) and at least every second, once for all of its
 * watchers, sends it to those that have not seen it, and ends the streams
 * when the deployment is over.
 *
 * The component is one per process (struct orch has no field for it yet):
 * start it once before the RPC server serves, stop it after the server
 * stopped.
 */
#ifndef SLIPWAY_ORCH_WATCH_H
#define SLIPWAY_ORCH_WATCH_H

#include <stddef.h>

struct orch;
struct rpc_ctx;

/* How often a watched deployment is re-read without a notification. */
#define ORCH_WATCH_PERIOD_MS 1000

/* Starts the watcher thread; at most max_watchers watches at once (past
 * it WatchDeployment answers RESOURCE_EXHAUSTED). Borrows o for the
 * component's life. Returns 0 or a negative code with err. Main thread. */
int orch_watch_start(struct orch *o, int max_watchers, char *err, size_t errlen);

/* Shutdown drain (an svc_on_drain function; arg is the struct orch): every
 * open watch is ended with UNAVAILABLE ("watch again") by the watcher
 * thread, and new ones are refused. Any thread; does not block. */
void orch_watch_drain(void *arg);

/* Ends every watch that is left, joins the thread and frees the component.
 * After the RPC server has shut down. NULL-safe: a no-op when never
 * started. Main thread. */
void orch_watch_stop(struct orch *o);

/* The domain part of WatchDeployment for deployment `id` (validated by the
 * caller): reads and authorizes as GetDeployment does, sends the detail,
 * and unless the deployment is already over, defers ctx and registers it.
 * Returns RPC_DEFERRED (the call now belongs to the watcher thread, or was
 * already finished), or a negative code with the message set through
 * rpc_errorf (the call was not deferred). Worker thread (it reads the
 * database and may ask the policy service). */
int orch_watch_deployment(struct orch *o, struct rpc_ctx *ctx, const char *id);

/* Deployment `id` changed (NOTIFY orch_deploy); NULL: any may have (the
 * listener reconnected). Only marks and wakes: never blocks on I/O. Any
 * thread; a no-op when the component is not running. */
void orch_watch_notify(struct orch *o, const char *id);

#endif
