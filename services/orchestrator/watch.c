/*
 * watch.c - WatchDeployment streams that hold no thread (watch.h).
 *
 * The handler (a worker thread) reads and authorizes the detail once, sends
 * it, defers the stream (rpc_stream_defer) and registers it under its
 * deployment; the worker is then free. One watcher thread does the rest:
 * for each watched deployment that a NOTIFY orch_deploy named (the
 * listener in waiters.c calls orch_watch_notify) or that was not read for
 * ORCH_WATCH_PERIOD_MS, it reads the detail once for all of that
 * deployment's watchers, in the arena of one of them (the "lead", whose
 * read permission is checked again, as GetDeployment would), sends it to
 * each watcher that has not seen those bytes (SHA-256 of the packed
 * detail), and ends the streams OK once the deployment is terminal.
 * Cancelled calls (client gone, deadline) are dropped at once: the rpc
 * layer's cancel callback wakes the thread.
 *
 * Ownership: a registered watcher's ctx (the rpc layer's "app reference")
 * belongs to the watcher thread, the only thread that sends on it, reads
 * with its arena, finishes it and unlinks it. Handlers only append under
 * w->mu. rpc_finish and rpc_send_async are never called with w->mu held
 * (the cancel callback takes w->mu and rpc_finish waits for a running
 * callback).
 *
 * A read that fails for a passing reason (database, policy service down)
 * keeps the watchers and is retried a period later, so a watch rides out a
 * dependency outage; NOT_FOUND ends every watch of the deployment, and a
 * permission denial ends the lead's.
 */
#include "watch.h"

#include "clock.h"
#include "err.h"
#include "hash.h"
#include "log.h"
#include "orch.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct watcher {
	struct watcher *next;  /* its deployment's list (w->mu) */
	struct watcher *rnext; /* this round's snapshot (watcher thread only) */
	struct rpc_ctx *ctx;   /* the app reference: the watcher thread's */
	uint64_t since;        /* the deployment's read count when it joined */
	uint8_t last[HASH_SHA256_LEN];
	int finish;            /* this round: end the call */
	int code;              /* ... with this code */
};

struct watched {
	struct watched *next;
	char id[ORCH_ID_MAX];
	struct watcher *ws;
	uint64_t reads; /* reads started */
	int dirty;      /* notified since the last read started */
	int64_t next_ms;
};

struct orch_watch {
	struct orch *o;
	pthread_mutex_t mu;
	pthread_cond_t cv; /* CLOCK_MONOTONIC */
	struct watched *deps;
	int count;         /* watches registered or being set up */
	int max;
	int wake;          /* a call was cancelled */
	int draining, stop;
	pthread_t thread;
	int started;
};

/* The one component of this process (see watch.h). */
static struct orch_watch *the_watch;
static pthread_mutex_t the_mu = PTHREAD_MUTEX_INITIALIZER;

static int is_terminal(int state)
{
	return state == OS_SUCCEEDED || state == OS_FAILED || state == OS_CANCELLED ||
	       state == OS_ROLLED_BACK;
}

/* SHA-256 of the packed detail. Returns 0 or SW_ENOMEM. */
static int detail_hash(const Slipway__V1__DeploymentDetail *d, uint8_t h[HASH_SHA256_LEN])
{
	size_t len = slipway__v1__deployment_detail__get_packed_size(d);
	uint8_t *buf = malloc(len ? len : 1);
	if (buf == NULL)
		return SW_ENOMEM;
	slipway__v1__deployment_detail__pack(d, buf);
	hash_sha256(buf, len, NULL, 0, NULL, 0, h);
	free(buf);
	return 0;
}

/* The rpc layer's cancel callback (a completion-queue thread): wake up. */
static void on_cancel(struct rpc_ctx *ctx, void *arg)
{
	(void)ctx;
	struct orch_watch *w = arg;
	pthread_mutex_lock(&w->mu);
	w->wake = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static void finish(struct rpc_ctx *ctx, int code, const char *msg)
{
	if (code != 0 && msg != NULL)
		code = rpc_errorf(ctx, code, "%s", msg);
	rpc_finish(ctx, code);
}

int orch_watch_deployment(struct orch *o, struct rpc_ctx *ctx, const char *id)
{
	pthread_mutex_lock(&the_mu);
	struct orch_watch *w = the_watch; /* stopped only after the server */
	pthread_mutex_unlock(&the_mu);
	struct watcher *x = NULL;
	char err[512] = "";
	if (w == NULL)
		return rpc_errorf(ctx, SW_EUNAVAIL, "watches are not available yet");
	pthread_mutex_lock(&w->mu);
	if (w->draining) {
		pthread_mutex_unlock(&w->mu);
		return rpc_errorf(ctx, SW_EUNAVAIL, "the orchestrator is shutting down: watch again");
	}
	if (w->count >= w->max) {
		pthread_mutex_unlock(&w->mu);
		return rpc_errorf(ctx, SW_ELIMIT,
				  "too many deployment watches (%d): try again later, or poll "
				  "GetDeployment",
				  w->max);
	}
	w->count++; /* reserved */
	pthread_mutex_unlock(&w->mu);

	Slipway__V1__DeploymentDetail d = SLIPWAY__V1__DEPLOYMENT_DETAIL__INIT;
	struct rpc_mark mark = rpc_arena_mark(ctx);
	int rc = orch_get_detail(o, ctx, id, &d, err, sizeof err);
	if (rc == 0 && (x = calloc(1, sizeof *x)) == NULL)
		rc = sw_errf(err, sizeof err, SW_ENOMEM, "out of memory");
	if (rc == 0)
		rc = detail_hash(&d, x->last);
	if (rc != 0) {
		free(x);
		pthread_mutex_lock(&w->mu);
		w->count--;
		pthread_mutex_unlock(&w->mu);
		return rpc_errorf(ctx, rc, "%s", err[0] ? err : sw_strerror(rc));
	}
	/* From here on the call is deferred: every path finishes it. */
	rpc_stream_defer(ctx, on_cancel, w);
	rc = rpc_send_async(ctx, &d.base);
	int over = is_terminal((int)d.deployment->state);
	rpc_arena_release(ctx, mark);
	const char *why = rc == SW_ERANGE ? "the deployment's detail is over the message cap" : NULL;

	pthread_mutex_lock(&w->mu);
	struct watched *dp = NULL;
	if (rc == 0 && !over && w->draining) {
		rc = SW_EUNAVAIL;
		why = "the orchestrator is shutting down: watch again";
	}
	if (rc == 0 && !over) {
		for (dp = w->deps; dp != NULL && strcmp(dp->id, id) != 0; dp = dp->next)
			;
		if (dp == NULL && (dp = calloc(1, sizeof *dp)) != NULL) {
			snprintf(dp->id, sizeof dp->id, "%s", id);
			dp->next_ms = clock_mono_ms() + ORCH_WATCH_PERIOD_MS;
			dp->next = w->deps;
			w->deps = dp;
		}
		if (dp == NULL)
			rc = SW_ENOMEM;
	}
	if (rc != 0 || over) {
		w->count--;
		pthread_mutex_unlock(&w->mu);
		free(x);
		finish(ctx, rc, why);
		return RPC_DEFERRED;
	}
	x->ctx = ctx;
	x->since = dp->reads; /* a read already started may predate our own */
	x->next = dp->ws;
	dp->ws = x;
	pthread_mutex_unlock(&w->mu);
	return RPC_DEFERRED;
}

void orch_watch_notify(struct orch *o, const char *id)
{
	(void)o;
	pthread_mutex_lock(&the_mu);
	struct orch_watch *w = the_watch;
	if (w != NULL) {
		pthread_mutex_lock(&w->mu);
		int any = 0;
		for (struct watched *dp = w->deps; dp != NULL; dp = dp->next)
			if (id == NULL || strcmp(dp->id, id) == 0) {
				dp->dirty = 1;
				any = 1;
			}
		if (any)
			pthread_cond_signal(&w->cv);
		pthread_mutex_unlock(&w->mu);
	}
	pthread_mutex_unlock(&the_mu);
}

/* Unlinks cancelled watchers (every watcher when draining) into *gone and
 * frees deployments nobody watches. w->mu held. */
static void sweep(struct orch_watch *w, struct watcher **gone)
{
	struct watched **pp = &w->deps;
	while (*pp != NULL) {
		struct watched *dp = *pp;
		struct watcher **xp = &dp->ws;
		while (*xp != NULL) {
			struct watcher *x = *xp;
			if (w->draining || rpc_cancelled(x->ctx)) {
				*xp = x->next;
				x->code = w->draining ? SW_EUNAVAIL : SW_ECANCELLED;
				x->next = *gone;
				*gone = x;
			} else {
				xp = &x->next;
			}
		}
		if (dp->ws == NULL) {
			*pp = dp->next;
			free(dp);
		} else {
			pp = &dp->next;
		}
	}
}

/* One read of dp's detail for its watchers. Called and returns with w->mu
 * held; drops it around the read and the sends. */
static void read_round(struct orch_watch *w, struct watched *dp, int64_t now)
{
	struct orch *o = w->o;
	char err[512] = "";
	dp->dirty = 0;
	dp->next_ms = now + ORCH_WATCH_PERIOD_MS;
	uint64_t r = ++dp->reads;
	/* Those that joined before this read; later ones wait for the next
	 * (their own first detail may be newer than this read). */
	struct watcher *snap = NULL, *lead = NULL;
	for (struct watcher *x = dp->ws; x != NULL; x = x->next)
		if (x->since < r) {
			x->rnext = snap;
			x->finish = 0;
			snap = x;
			lead = x;
		} else {
			dp->dirty = 1;
		}
	if (lead == NULL)
		return;
	pthread_mutex_unlock(&w->mu);

	Slipway__V1__DeploymentDetail d = SLIPWAY__V1__DEPLOYMENT_DETAIL__INIT;
	struct rpc_mark mark = rpc_arena_mark(lead->ctx);
	uint8_t h[HASH_SHA256_LEN];
	int rc = orch_get_detail(o, lead->ctx, dp->id, &d, err, sizeof err);
	if (rc == 0)
		rc = detail_hash(&d, h);
	int again = 0;
	if (rc == SW_ENOTFOUND) {
		for (struct watcher *x = snap; x != NULL; x = x->rnext) {
			x->finish = 1;
			x->code = rc;
		}
	} else if (rc == SW_EPERM) {
		lead->finish = 1; /* the others keep watching under another lead */
		lead->code = rc;
		again = 1;
	} else if (rc != 0) {
		if (!rpc_cancelled(lead->ctx))
			log_warn("deployment watch: read failed; retrying", "deployment=%s error=%s",
				 dp->id, err[0] ? err : sw_strerror(rc));
		again = rpc_cancelled(lead->ctx); /* another lead at once */
	} else {
		int over = is_terminal((int)d.deployment->state);
		for (struct watcher *x = snap; x != NULL; x = x->rnext) {
			int sent = memcmp(x->last, h, sizeof h) == 0;
			if (!sent) {
				int s = rpc_send_async(x->ctx, &d.base);
				if (s == 0) {
					memcpy(x->last, h, sizeof h);
					sent = 1;
				} else if (s != SW_ELIMIT) {
					/* ELIMIT: a client that does not read; a later
					 * round sends it the newest detail. */
					x->finish = 1;
					x->code = s;
				}
			}
			if (over && sent && !x->finish) {
				x->finish = 1;
				x->code = 0;
			}
		}
	}
	/* The detail lives in the lead's arena: release it before any call,
	 * the lead's included, is finished. */
	rpc_arena_release(lead->ctx, mark);
	int ended = 0;
	for (struct watcher *x = snap; x != NULL; x = x->rnext)
		if (x->finish) {
			const char *msg = x->code == SW_ENOTFOUND || x->code == SW_EPERM ? err
					  : x->code == SW_ERANGE ? "the deployment's detail is over the message cap"
								  : NULL;
			finish(x->ctx, x->code, msg);
			x->ctx = NULL;
			ended++;
		}

	pthread_mutex_lock(&w->mu);
	if (again)
		dp->dirty = 1;
	if (ended > 0) {
		struct watcher **xp = &dp->ws;
		while (*xp != NULL) {
			struct watcher *x = *xp;
			if (x->ctx == NULL) {
				*xp = x->next;
				free(x);
			} else {
				xp = &x->next;
			}
		}
		w->count -= ended;
	}
}

static void *watch_main(void *arg)
{
	struct orch_watch *w = arg;
	pthread_mutex_lock(&w->mu);
	for (;;) {
		struct watcher *gone = NULL;
		w->wake = 0;
		sweep(w, &gone);
		if (gone != NULL) {
			int n = 0;
			pthread_mutex_unlock(&w->mu);
			while (gone != NULL) {
				struct watcher *x = gone;
				gone = x->next;
				finish(x->ctx, x->code,
				       x->code == SW_EUNAVAIL ? "the orchestrator is shutting down: watch again"
							      : NULL);
				free(x);
				n++;
			}
			pthread_mutex_lock(&w->mu);
			w->count -= n;
			continue;
		}
		if (w->stop && w->count == 0)
			break;
		int64_t now = clock_mono_ms();
		struct watched *due = NULL;
		int64_t next = now + ORCH_WATCH_PERIOD_MS;
		for (struct watched *dp = w->deps; dp != NULL; dp = dp->next) {
			if (dp->dirty || dp->next_ms <= now) {
				/* The one waiting longest goes first. */
				if (due == NULL || dp->next_ms < due->next_ms)
					due = dp;
			} else if (dp->next_ms < next) {
				next = dp->next_ms;
			}
		}
		if (due != NULL) {
			read_round(w, due, now);
			continue;
		}
		if (w->wake)
			continue;
		int64_t wait = next - now;
		if (w->stop && wait > 100)
			wait = 100; /* handlers still finishing their set-up */
		struct timespec dl = clock_after(CLOCK_MONOTONIC, wait);
		pthread_cond_timedwait(&w->cv, &w->mu, &dl);
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

int orch_watch_start(struct orch *o, int max_watchers, char *err, size_t errlen)
{
	struct orch_watch *w = calloc(1, sizeof *w);
	if (w == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, &ca);
	pthread_condattr_destroy(&ca);
	w->o = o;
	w->max = max_watchers > 0 ? max_watchers : 1;
	if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
		pthread_mutex_destroy(&w->mu);
		pthread_cond_destroy(&w->cv);
		free(w);
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the watcher thread");
	}
	w->started = 1;
	pthread_mutex_lock(&the_mu);
	the_watch = w;
	pthread_mutex_unlock(&the_mu);
	return 0;
}

void orch_watch_drain(void *arg)
{
	(void)arg;
	pthread_mutex_lock(&the_mu);
	struct orch_watch *w = the_watch;
	if (w != NULL) {
		pthread_mutex_lock(&w->mu);
		w->draining = 1;
		pthread_cond_signal(&w->cv);
		pthread_mutex_unlock(&w->mu);
	}
	pthread_mutex_unlock(&the_mu);
}

void orch_watch_stop(struct orch *o)
{
	(void)o;
	pthread_mutex_lock(&the_mu);
	struct orch_watch *w = the_watch;
	the_watch = NULL;
	pthread_mutex_unlock(&the_mu);
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	w->draining = 1;
	w->stop = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	free(w);
}
