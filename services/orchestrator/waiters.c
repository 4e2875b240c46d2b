/*
 * waiters.c - long polls and cross-replica wake-ups.
 *
 * A PollTasks call is deferred (it holds no thread) and parked here. One
 * waker thread looks tasks up for parked agents when they arrive, when a
 * task is published for them, and answers them empty at their deadline.
 *
 * Publishing uses PostgreSQL NOTIFY inside the transaction that dispatches
 * the task, so every replica hears of it exactly when it is committed; a
 * listener connection per replica turns "orch_agent" notifications into
 * waker checks and "orch_deploy" ones into engine kicks. After the
 * listener reconnects it re-checks every parked call and kicks the engine,
 * so a missed notification costs latency, never a task.
 *
 * Parked calls are found by agent through a hash table, wait for a look-up
 * in a queue, and expire through a heap ordered by deadline, so that a
 * park, a notification and a deadline each cost O(log n) whatever the
 * number n of parked calls (every agent holds one). A call whose tasks are
 * being looked up stays parked (marked busy), so a notification that
 * arrives during the look-up queues it for another one: the look-up may
 * have read the database before the dispatching transaction committed.
 */
#include "clock.h"
#include "err.h"
#include "log.h"
#include "orch.h"
#include "spiffe.h"
#include "watch.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define WBUCKETS 16384
#define NO_HEAP ((size_t)-1)

struct waiter {
	struct waiter *prev, *next; /* its agent's hash chain */
	struct waiter *qnext;       /* the look-up queue */
	struct waiter *due_next;    /* this round's look-ups (waker only) */
	size_t hidx;                /* its place in the deadline heap, or NO_HEAP */
	struct rpc_ctx *ctx;
	char agent[SPIFFE_ID_MAX + 1];
	uint64_t highest;
	int64_t deadline_ms;
	int queued; /* in the look-up queue */
	int check;  /* a notification came while it was busy: look again */
	int busy;   /* being looked up now, outside the lock */
	int done;   /* answered this round (waker only) */
};

struct orch_waiters {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct waiter *buckets[WBUCKETS];
	struct waiter **heap; /* by deadline */
	size_t nheap, capheap;
	struct waiter *qhead, *qtail;
	size_t count;
	int draining;
	pthread_t waker, listener;
};

static uint32_t bucket_of(const char *agent)
{
	uint32_t h = 2166136261u;
	for (; *agent; agent++) {
		h ^= (unsigned char)*agent;
		h *= 16777619u;
	}
	return h & (WBUCKETS - 1);
}

/* ---- the deadline heap (w->mu held) ---- */

static void heap_set(struct orch_waiters *w, size_t i, struct waiter *x)
{
	w->heap[i] = x;
	x->hidx = i;
}

static void heap_up(struct orch_waiters *w, size_t i)
{
	struct waiter *x = w->heap[i];
	while (i > 0 && w->heap[(i - 1) / 2]->deadline_ms > x->deadline_ms) {
		heap_set(w, i, w->heap[(i - 1) / 2]);
		i = (i - 1) / 2;
	}
	heap_set(w, i, x);
}

static void heap_down(struct orch_waiters *w, size_t i)
{
	struct waiter *x = w->heap[i];
	for (;;) {
		size_t l = 2 * i + 1, r = l + 1, m = l;
		if (l >= w->nheap)
			break;
		if (r < w->nheap && w->heap[r]->deadline_ms < w->heap[l]->deadline_ms)
			m = r;
		if (w->heap[m]->deadline_ms >= x->deadline_ms)
			break;
		heap_set(w, i, w->heap[m]);
		i = m;
	}
	heap_set(w, i, x);
}

/* The room was reserved by heap_reserve. */
static void heap_push(struct orch_waiters *w, struct waiter *x)
{
	heap_set(w, w->nheap++, x);
	heap_up(w, w->nheap - 1);
}

static int heap_reserve(struct orch_waiters *w)
{
	if (w->nheap < w->capheap)
		return 0;
	size_t cap = w->capheap ? w->capheap * 2 : 1024;
	struct waiter **h = realloc(w->heap, cap * sizeof *h);
	if (h == NULL)
		return SW_ENOMEM;
	w->heap = h;
	w->capheap = cap;
	return 0;
}

static void heap_remove(struct orch_waiters *w, struct waiter *x)
{
	size_t i = x->hidx;
	if (i == NO_HEAP)
		return;
	x->hidx = NO_HEAP;
	struct waiter *last = w->heap[--w->nheap];
	if (i == w->nheap)
		return;
	heap_set(w, i, last);
	heap_down(w, i);
	heap_up(w, last->hidx);
}

/* ---- the look-up queue (w->mu held) ---- */

static void enqueue(struct orch_waiters *w, struct waiter *x)
{
	if (x->busy) {
		x->check = 1; /* once this round is over */
		return;
	}
	if (x->queued)
		return;
	x->queued = 1;
	x->qnext = NULL;
	if (w->qtail != NULL)
		w->qtail->qnext = x;
	else
		w->qhead = x;
	w->qtail = x;
}

void orch_waiters_park(struct orch *o, struct rpc_ctx *ctx, const char *agent,
		       uint64_t highest_generation, int64_t wait_ms)
{
	struct orch_waiters *w = o->waiters;
	struct waiter *x = calloc(1, sizeof *x);
	if (x == NULL) {
		rpc_finish(ctx, SW_ENOMEM);
		return;
	}
	int64_t left = rpc_remaining_ms(ctx);
	if (left != INT64_MAX && left - 500 < wait_ms)
		wait_ms = left - 500;
	if (wait_ms < 0)
		wait_ms = 0;
	if (wait_ms > o->c.poll_max_ms)
		wait_ms = o->c.poll_max_ms;
	x->ctx = ctx;
	snprintf(x->agent, sizeof x->agent, "%s", agent);
	x->highest = highest_generation;
	x->deadline_ms = clock_mono_ms() + wait_ms;
	x->hidx = NO_HEAP;
	pthread_mutex_lock(&w->mu);
	if (w->draining || heap_reserve(w) != 0) {
		int draining = w->draining;
		pthread_mutex_unlock(&w->mu);
		free(x);
		/* Draining: an empty answer, the agent polls again. */
		rpc_finish(ctx, draining ? 0 : SW_ENOMEM);
		return;
	}
	uint32_t b = bucket_of(x->agent);
	x->next = w->buckets[b];
	if (x->next != NULL)
		x->next->prev = x;
	w->buckets[b] = x;
	heap_push(w, x);
	enqueue(w, x); /* its first look-up */
	w->count++;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* Forgets an answered waiter and frees it. w->mu held. */
static void unpark(struct orch_waiters *w, struct waiter *x)
{
	if (x->prev != NULL)
		x->prev->next = x->next;
	else
		w->buckets[bucket_of(x->agent)] = x->next;
	if (x->next != NULL)
		x->next->prev = x->prev;
	heap_remove(w, x);
	w->count--;
	free(x);
}

static void mark_agent(struct orch_waiters *w, const char *agent)
{
	pthread_mutex_lock(&w->mu);
	for (struct waiter *x = w->buckets[bucket_of(agent)]; x; x = x->next)
		if (strcmp(x->agent, agent) == 0)
			enqueue(w, x);
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* Queues every parked call for a look-up (after missed notifications). */
static void mark_all(struct orch_waiters *w)
{
	pthread_mutex_lock(&w->mu);
	for (size_t b = 0; b < WBUCKETS; b++)
		for (struct waiter *x = w->buckets[b]; x; x = x->next)
			enqueue(w, x);
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static void take(struct waiter **due, struct waiter *x)
{
	x->busy = 1;
	x->check = 0; /* a notification from now on asks for another look */
	x->done = 0;
	x->due_next = *due;
	*due = x;
}

/* Marks busy and returns (linked through due_next) the waiters that need a
 * look-up or an answer now: the queued ones and the expired ones (every
 * one when draining). They stay parked. w->mu held. */
static struct waiter *take_due(struct orch_waiters *w, int64_t now)
{
	struct waiter *due = NULL;
	if (w->draining) {
		for (size_t b = 0; b < WBUCKETS; b++)
			for (struct waiter *x = w->buckets[b]; x; x = x->next)
				if (!x->busy)
					take(&due, x);
		w->qhead = w->qtail = NULL;
		return due;
	}
	while (w->qhead != NULL) {
		struct waiter *x = w->qhead;
		w->qhead = x->qnext;
		x->queued = 0;
		take(&due, x);
	}
	w->qtail = NULL;
	/* Expired: out of the heap (answered this round, or put back). */
	while (w->nheap > 0 && w->heap[0]->deadline_ms <= now) {
		struct waiter *x = w->heap[0];
		heap_remove(w, x);
		if (!x->busy)
			take(&due, x);
	}
	return due;
}

static void *waker_main(void *arg)
{
	struct orch *o = arg;
	struct orch_waiters *w = o->waiters;
	char err[256];
	pthread_mutex_lock(&w->mu);
	for (;;) {
		int64_t now = clock_mono_ms();
		struct waiter *due = take_due(w, now);
		if (due == NULL) {
			if (w->draining && w->count == 0)
				break;
			int64_t next = now + 1000;
			if (w->nheap > 0 && w->heap[0]->deadline_ms < next)
				next = w->heap[0]->deadline_ms;
			int64_t wait = next - now;
			struct timespec dl = clock_after(CLOCK_REALTIME, wait);
			pthread_cond_timedwait(&w->cv, &w->mu, &dl);
			continue;
		}
		int draining = w->draining;
		pthread_mutex_unlock(&w->mu);
		/* Only the waker touches a busy waiter's ctx, highest and done;
		 * the listener may still set its check flag (under the lock).
		 * One look-up for all of them: a rollback wakes every touched
		 * agent at once. */
		size_t nq = 0, k = 0;
		for (struct waiter *x = due; x; x = x->due_next)
			nq += !draining && !rpc_cancelled(x->ctx);
		struct orch_task_query *q = nq ? calloc(nq, sizeof *q) : NULL;
		if (q != NULL) {
			for (struct waiter *x = due; x && k < nq; x = x->due_next)
				if (!draining && !rpc_cancelled(x->ctx))
					q[k++] = (struct orch_task_query){ x->ctx, x->agent, x->highest, 0 };
			if (orch_next_tasks(o, q, k, err, sizeof err) != 0)
				log_warn("task look-up failed", "agents=%zu error=%s", k, err);
		} else if (nq > 0) {
			log_warn("task look-up failed", "agents=%zu error=out of memory", nq);
		}
		k = 0;
		for (struct waiter *x = due; x; x = x->due_next) {
			int found = 0;
			if (q != NULL && k < nq && q[k].ctx == x->ctx)
				found = q[k++].found;
			if (found || draining || rpc_cancelled(x->ctx) || x->deadline_ms <= clock_mono_ms()) {
				rpc_finish(x->ctx, 0);
				x->done = 1;
			}
		}
		free(q);
		pthread_mutex_lock(&w->mu);
		while (due) {
			struct waiter *x = due;
			due = x->due_next;
			if (x->done) {
				unpark(w, x);
				continue;
			}
			x->busy = 0;
			if (x->hidx == NO_HEAP) /* taken as expired, yet not answered */
				heap_push(w, x); /* room: it was in the heap before */
			if (x->check) {
				x->check = 0;
				enqueue(w, x);
			}
		}
	}
	pthread_mutex_unlock(&w->mu);
	return NULL;
}

int orch_notify_agent(struct db_conn *c, const char *agent, char *err, size_t errlen)
{
	return db_q(c, "SELECT pg_notify('orch_agent', $1)", 1, (const char *[]){ agent }, NULL, err,
		    errlen);
}

int orch_notify_agents(struct db_conn *c, const char *const *agents, size_t n, char *err,
		       size_t errlen)
{
	if (n == 0)
		return 0;
	char *sql = db_values_sql("SELECT pg_notify('orch_agent', v.a) FROM (VALUES", n, 1, ") AS v(a)");
	if (sql == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	int rc = db_q(c, sql, (int)n, agents, NULL, err, errlen);
	free(sql);
	return rc;
}

int orch_notify_deployment(struct db_conn *c, const char *id, char *err, size_t errlen)
{
	return db_q(c, "SELECT pg_notify('orch_deploy', $1)", 1, (const char *[]){ id }, NULL, err,
		    errlen);
}

static void *listener_main(void *arg)
{
	struct orch *o = arg;
	struct orch_waiters *w = o->waiters;
	struct db_conn *c = NULL;
	char err[256];
	while (!atomic_load(&o->stopping)) {
		if (c == NULL) {
			if (db_acquire(o->db, &c, 2000, err, sizeof err) != 0 ||
			    db_q(c, "LISTEN orch_agent", 0, NULL, NULL, err, sizeof err) != 0 ||
			    db_q(c, "LISTEN orch_deploy", 0, NULL, NULL, err, sizeof err) != 0) {
				if (c != NULL) {
					db_release(o->db, c);
					c = NULL;
				}
				struct timespec ts = { 0, 200 * 1000000L };
				nanosleep(&ts, NULL);
				continue;
			}
			/* Anything published while we were not listening. */
			mark_all(w);
			orch_engine_kick(o);
			orch_watch_notify(o, NULL);
		}
		PGconn *pg = db_pg(c);
		struct pollfd pfd = { .fd = PQsocket(pg), .events = POLLIN };
		int pr = poll(&pfd, 1, 200);
		if (pr < 0)
			continue;
		if (PQconsumeInput(pg) == 0 || PQstatus(pg) != CONNECTION_OK) {
			log_warn("notification listener lost its connection; reconnecting", NULL);
			/* Mark it broken so the pool reconnects it. */
			db_release(o->db, c);
			c = NULL;
			continue;
		}
		PGnotify *n;
		int kick = 0;
		while ((n = PQnotifies(pg)) != NULL) {
			if (strcmp(n->relname, "orch_agent") == 0) {
				mark_agent(w, n->extra);
			} else {
				kick = 1;
				orch_watch_notify(o, n->extra); /* its watchers re-read it */
			}
			PQfreemem(n);
		}
		if (kick)
			orch_engine_kick(o);
	}
	if (c != NULL) {
		db_q(c, "UNLISTEN *", 0, NULL, NULL, err, sizeof err);
		db_release(o->db, c);
	}
	return NULL;
}

int orch_waiters_start(struct orch *o, char *err, size_t errlen)
{
	struct orch_waiters *w = calloc(1, sizeof *w);
	if (w == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	o->waiters = w;
	if (pthread_create(&w->waker, NULL, waker_main, o) != 0 ||
	    pthread_create(&w->listener, NULL, listener_main, o) != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the long-poll threads");
	return 0;
}

void orch_waiters_drain(void *arg)
{
	struct orch *o = arg;
	struct orch_waiters *w = o->waiters;
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	w->draining = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

void orch_waiters_stop(struct orch *o)
{
	struct orch_waiters *w = o->waiters;
	if (w == NULL)
		return;
	orch_waiters_drain(o);
	pthread_join(w->waker, NULL);
	pthread_join(w->listener, NULL);
	free(w->heap);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	free(w);
	o->waiters = NULL;
}
