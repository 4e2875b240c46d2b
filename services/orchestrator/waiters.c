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
 * A call whose tasks are being looked up stays in the list (marked busy),
 * so a notification that arrives during the look-up marks it for another
 * one: the look-up may have read the database before the dispatching
 * transaction committed.
 */
#include "err.h"
#include "log.h"
#include "orch.h"
#include "spiffe.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct waiter {
	struct waiter *prev, *next; /* the parked list */
	struct waiter *due_next;    /* this round's look-ups (waker only) */
	struct rpc_ctx *ctx;
	char agent[SPIFFE_ID_MAX + 1];
	uint64_t highest;
	int64_t deadline_ms;
	int check; /* look its tasks up on the next round */
	int busy;  /* being looked up now, outside the lock */
	int done;  /* answered this round (waker only) */
};

struct orch_waiters {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct waiter *list;
	int check_all;
	int draining;
	pthread_t waker, listener;
};

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
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
	x->deadline_ms = mono_ms() + wait_ms;
	x->check = 1;
	pthread_mutex_lock(&w->mu);
	if (w->draining) {
		pthread_mutex_unlock(&w->mu);
		free(x);
		rpc_finish(ctx, 0); /* an empty answer: the agent polls again */
		return;
	}
	x->next = w->list;
	if (w->list != NULL)
		w->list->prev = x;
	w->list = x;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

static void unlink_waiter(struct orch_waiters *w, struct waiter *x)
{
	if (x->prev != NULL)
		x->prev->next = x->next;
	else
		w->list = x->next;
	if (x->next != NULL)
		x->next->prev = x->prev;
}

static void mark_agent(struct orch_waiters *w, const char *agent)
{
	pthread_mutex_lock(&w->mu);
	for (struct waiter *x = w->list; x; x = x->next)
		if (strcmp(x->agent, agent) == 0)
			x->check = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
}

/* Marks busy and returns (linked through due_next) the waiters that need
 * an answer or a look-up now. They stay in the list. w->mu held. */
static struct waiter *take_due(struct orch_waiters *w, int64_t now, int all)
{
	struct waiter *due = NULL;
	for (struct waiter *x = w->list; x; x = x->next) {
		if (x->busy || !(all || x->check || x->deadline_ms <= now || w->draining))
			continue;
		x->busy = 1;
		x->check = 0; /* a notification from now on asks for another look */
		x->done = 0;
		x->due_next = due;
		due = x;
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
		int64_t now = mono_ms();
		int all = w->check_all;
		w->check_all = 0;
		struct waiter *due = take_due(w, now, all);
		if (due == NULL) {
			if (w->draining && w->list == NULL)
				break;
			int64_t next = now + 1000;
			for (struct waiter *x = w->list; x; x = x->next)
				if (!x->busy && x->deadline_ms < next)
					next = x->deadline_ms;
			struct timespec dl;
			clock_gettime(CLOCK_REALTIME, &dl);
			int64_t wait = next - now;
			dl.tv_sec += (time_t)(wait / 1000);
			dl.tv_nsec += (long)(wait % 1000) * 1000000L;
			if (dl.tv_nsec >= 1000000000L) {
				dl.tv_sec++;
				dl.tv_nsec -= 1000000000L;
			}
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
			if (found || draining || rpc_cancelled(x->ctx) || x->deadline_ms <= mono_ms()) {
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
				unlink_waiter(w, x);
				free(x);
			} else {
				x->busy = 0; /* check is set if a notification came meanwhile */
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
			pthread_mutex_lock(&w->mu);
			w->check_all = 1;
			pthread_cond_signal(&w->cv);
			pthread_mutex_unlock(&w->mu);
			orch_engine_kick(o);
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
			if (strcmp(n->relname, "orch_agent") == 0)
				mark_agent(w, n->extra);
			else
				kick = 1;
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
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	free(w);
	o->waiters = NULL;
}
