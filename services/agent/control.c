/*
 * control.c - the agent's side of service AgentControl
 * (proto/slipway/v1/orchestrator.proto).
 *
 * Three threads:
 *
 *   heartbeat  RegisterAgent at start and whenever an answer says
 *              `reregister` (or the orchestrator does not know us), then
 *              Heartbeat every heartbeat_interval_ms with the runtime and
 *              the highest generation seen.
 *   poll       PollTasks long poll (wait_ms, deadline a few seconds later),
 *              fencing: a task below the highest generation seen is
 *              ignored; a new highest generation is persisted (fsync)
 *              before the task is accepted; a task already finished is
 *              not redone, its recorded result is reported again.
 *   worker     runs one task at a time: ReportTask(STARTED), the executor,
 *              the result recorded durably, ReportTask(SUCCEEDED|FAILED)
 *              retried with backoff until acknowledged. An answer with
 *              `superseded`, or a newer task arriving, stops the task at
 *              its next safe point, with nothing more reported.
 *
 * Every call has a deadline and goes to the active orchestrator replica
 * (--orchestrator-addr a,b,...); a call that times out or cannot reach it
 * moves every thread to the next replica at once (failover_locked).
 *
 * The orchestrator being down is never fatal: every call backs off and
 * tries again. The protocol is the product; the only test hook is
 * agent_crash_point (agent.h), read from the environment.
 */
#include "agent.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "trace.h"

#include "slipway/v1/orchestrator.pb-c.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_TASKS_PER_POLL 64
#define BACKOFF_MIN_MS 250
#define BACKOFF_MAX_MS 10000
#define REGISTER_TIMEOUT_MS 5000
#define REPORT_TIMEOUT_MS 5000
#define HB_TIMEOUT_MIN_MS 1000
#define HB_TIMEOUT_MAX_MS 5000
#define QUIET_LOG_MS 60000

struct agent_control {
	struct agent *a;
	pthread_mutex_t mu;
	pthread_cond_t cond;
	atomic_int stop;
	pthread_t hb, poll, work;
	int hb_started, poll_started, work_started;

	int registered;
	int need_register;
	long long interval_ms;

	struct agent_task pending;     /* the newest task waiting to run */
	int have_pending;
	struct agent_task rereport;    /* a finished task delivered again */
	int have_rereport;
	struct agent_task cur;         /* the task the worker runs */
	int running;
	int worker_done, hb_done, poll_done;

	struct rpc_stream *inflight[3]; /* calls in flight, by thread: stop cancels them */
	size_t inflight_addr[3];        /* ... and the replica each one went to */
	size_t active;                  /* the orchestrator replica calls go to */
};

enum { SLOT_HB = 0, SLOT_POLL = 1, SLOT_WORK = 2 };

/* ---------------------------------------------------------------- helpers */

static void wait_ms(struct agent_control *c, long long ms)
{
	struct timespec ts = clock_after(CLOCK_REALTIME, ms);
	pthread_mutex_lock(&c->mu);
	if (!atomic_load(&c->stop))
		pthread_cond_timedwait(&c->cond, &c->mu, &ts);
	pthread_mutex_unlock(&c->mu);
}

static long long next_backoff(long long b)
{
	b = b < BACKOFF_MIN_MS ? BACKOFF_MIN_MS : b * 2;
	return b > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : b;
}

/* Adds up to 25% of jitter so that many agents do not retry in step. */
static long long jitter(long long ms)
{
	unsigned r = (unsigned)agent_now_ms() * 2654435761u;
	return ms + (long long)(r % (unsigned)(ms / 4 + 1));
}

/* Logs a failing call on the first failure and then at most once a minute. */
struct quiet {
	int failing;
	int64_t last_ms;
	unsigned suppressed;
};

static void quiet_fail(struct quiet *q, const char *what, const char *err)
{
	int64_t now = agent_now_ms();
	if (!q->failing || now - q->last_ms >= QUIET_LOG_MS) {
		log_warn("orchestrator call failed; retrying", "call=%s error=%s suppressed=%u", what,
			 err, q->suppressed);
		q->last_ms = now;
		q->suppressed = 0;
	} else {
		q->suppressed++;
	}
	q->failing = 1;
}

static void quiet_ok(struct quiet *q, const char *what)
{
	if (q->failing)
		log_info("orchestrator reachable again", "call=%s", what);
	q->failing = 0;
}

/* Pointers into rt: valid while rt lives. */
static void fill_runtime(const struct agent_runtime *rt, char *endpoint, size_t elen,
			 Slipway__V1__AgentRuntime *pr)
{
	slipway__v1__agent_runtime__init(pr);
	pr->app = (char *)rt->app;
	pr->version = (char *)rt->version;
	pr->digest = (char *)rt->digest;
	pr->process = (Slipway__V1__ProcessState)rt->process;
	pr->healthy = rt->healthy;
	pr->health_detail = (char *)rt->health_detail;
	pr->restarts = rt->restarts;
	pr->health_checked_unix_ms = rt->health_checked_unix_ms;
	if (rt->port > 0)
		snprintf(endpoint, elen, "127.0.0.1:%d", rt->port);
	else
		endpoint[0] = '\0';
	pr->endpoint = endpoint;
}

static uint64_t highest_generation(struct agent_control *c)
{
	pthread_mutex_lock(&c->mu);
	uint64_t g = c->a->store.generation;
	pthread_mutex_unlock(&c->mu);
	return g;
}

/* Errors after which the next replica is tried: the replica did not
 * answer in time or could not be reached. */
static int replica_failed(int rc)
{
	return rc == SW_ETIMEDOUT || rc == SW_EUNAVAIL || rc == SW_ECANCELLED;
}

/* The call to replica idx failed with rc: when idx is still the active
 * one, make the next one active, and cancel the other threads' calls
 * still waiting on idx (a frozen replica holds a long poll until its
 * deadline), so that they move too. c->mu held. */
static void failover_locked(struct agent_control *c, size_t idx, const char *method, int rc,
			    const char *err)
{
	struct agent *a = c->a;
	if (a->norch < 2 || c->active != idx || !replica_failed(rc) || atomic_load(&c->stop))
		return;
	c->active = (idx + 1) % a->norch;
	log_warn("orchestrator replica failed: moving to the next one",
		 "call=%s from=%s to=%s error=%s", method, a->orch_addr[idx], a->orch_addr[c->active],
		 err);
	for (int i = 0; i < 3; i++)
		if (c->inflight[i] != NULL && c->inflight_addr[i] == idx)
			rpc_stream_cancel(c->inflight[i]);
}

/*
 * One unary call to the orchestrator, made as a stream so that
 * agent_control_stop can cancel it, to the active replica. It waits for
 * the replica to be reachable (wait-for-ready) up to timeout_ms rather
 * than failing fast: with gRPC core, a channel reconnects only while some
 * call waits on it, so an agent making fail-fast calls alone might never
 * get its connection back after an orchestrator restart. A call that
 * times out or cannot reach its replica makes the next replica active
 * (failover_locked); *moved (may be NULL) is then set: the caller may
 * retry at once instead of backing off. Returns 0 and *resp (free with
 * protobuf_c_message_free_unpacked), or the SW_E* code with err.
 */
static int ctl_call(struct agent_control *c, int slot, const char *method,
		    const ProtobufCMessage *req, ProtobufCMessage **resp, int64_t timeout_ms,
		    int *moved, char *err, size_t errlen)
{
	struct rpc_stream *s = NULL;
	ProtobufCMessage *m = NULL;
	struct rpc_call_opts o = { .timeout_ms = timeout_ms, .wait_for_ready = 1 };
	*resp = NULL;
	if (moved != NULL)
		*moved = 0;
	pthread_mutex_lock(&c->mu);
	size_t idx = c->active;
	pthread_mutex_unlock(&c->mu);
	int rc = rpc_stream_open(c->a->orch[idx], &slipway__v1__agent_control__descriptor, method,
				 &o, &s, err, errlen);
	if (rc != 0)
		return rc;
	pthread_mutex_lock(&c->mu);
	c->inflight[slot] = s;
	c->inflight_addr[slot] = idx;
	if (atomic_load(&c->stop) || c->active != idx)
		rpc_stream_cancel(s);
	pthread_mutex_unlock(&c->mu);
	if (rpc_stream_send(s, req) == 0)
		rpc_stream_close_send(s);
	int got = rpc_stream_recv(s, &m);
	if (got == 1) {
		/* A unary answer: read to the end so the status arrives. */
		ProtobufCMessage *extra = NULL;
		if (rpc_stream_recv(s, &extra) == 1) {
			protobuf_c_message_free_unpacked(extra, NULL);
			rpc_stream_cancel(s);
		}
	}
	pthread_mutex_lock(&c->mu);
	c->inflight[slot] = NULL;
	pthread_mutex_unlock(&c->mu);
	rc = rpc_stream_finish(s, err, errlen);
	if (rc == 0 && got != 1)
		rc = sw_errf(err, errlen, SW_EUNAVAIL, "%s: empty answer", method);
	if (rc != 0) {
		if (m != NULL)
			protobuf_c_message_free_unpacked(m, NULL);
		pthread_mutex_lock(&c->mu);
		failover_locked(c, idx, method, rc, err);
		if (moved != NULL)
			*moved = c->active != idx && !atomic_load(&c->stop);
		pthread_mutex_unlock(&c->mu);
		return rc;
	}
	*resp = m;
	return 0;
}

/* Errors that mean "the orchestrator does not know this agent". */
static int unknown_agent(int rc)
{
	return rc == SW_ENOTFOUND || rc == SW_EPRECOND;
}

/* ------------------------------------------------------- register, heartbeat */

static int do_register(struct agent_control *c, int *moved, char *err, size_t errlen)
{
	struct agent *a = c->a;
	struct agent_runtime rt;
	char endpoint[64];
	Slipway__V1__RegisterRequest req = SLIPWAY__V1__REGISTER_REQUEST__INIT;
	Slipway__V1__KeyValue kv[AGENT_MAX_LABELS], *kvp[AGENT_MAX_LABELS];
	Slipway__V1__AgentRuntime prt;
	ProtobufCMessage *resp = NULL;

	for (size_t i = 0; i < a->cfg->labels.n; i++) {
		slipway__v1__key_value__init(&kv[i]);
		kv[i].key = (char *)a->cfg->labels.v[i].key;
		kv[i].value = (char *)a->cfg->labels.v[i].value;
		kvp[i] = &kv[i];
	}
	req.n_labels = a->cfg->labels.n;
	req.labels = kvp;
	req.seal_public_key.data = a->keys.seal_pk;
	req.seal_public_key.len = sizeof a->keys.seal_pk;
	req.hostname = a->hostname;
	req.agent_version = SLIPWAY_VERSION;
	agent_runtime(a, &rt);
	fill_runtime(&rt, endpoint, sizeof endpoint, &prt);
	req.runtime = &prt;
	/* The orchestrator numbers new tasks above it, even if its database
	 * was restored from a backup older than what this agent has seen. */
	req.highest_generation = highest_generation(c);
	int rc = ctl_call(c, SLOT_HB, "RegisterAgent", &req.base, &resp, REGISTER_TIMEOUT_MS, moved,
			  err, errlen);
	if (rc != 0)
		return rc;
	Slipway__V1__RegisterResponse *r = (void *)resp;
	if (r->agent_id != NULL && r->agent_id[0] != '\0' && strcmp(r->agent_id, a->keys.self_id) != 0)
		log_warn("the orchestrator registered another identity", "registered=%s ours=%s",
			 r->agent_id, a->keys.self_id);
	pthread_mutex_lock(&c->mu);
	if (r->heartbeat_interval_ms >= 100 && r->heartbeat_interval_ms <= 600000)
		c->interval_ms = r->heartbeat_interval_ms;
	c->registered = 1;
	c->need_register = 0;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	log_info("registered with the orchestrator", "agent=%s interval_ms=%lld labels=%zu addr=%s",
		 a->keys.self_id, c->interval_ms, a->cfg->labels.n, a->orch_addr[c->active]);
	protobuf_c_message_free_unpacked(resp, NULL);
	return 0;
}

static int do_heartbeat(struct agent_control *c, int *moved, char *err, size_t errlen)
{
	struct agent *a = c->a;
	struct agent_runtime rt;
	char endpoint[64];
	Slipway__V1__HeartbeatRequest req = SLIPWAY__V1__HEARTBEAT_REQUEST__INIT;
	Slipway__V1__AgentRuntime prt;
	ProtobufCMessage *resp = NULL;
	agent_runtime(a, &rt);
	fill_runtime(&rt, endpoint, sizeof endpoint, &prt);
	req.runtime = &prt;
	req.highest_generation = highest_generation(c);
	/* Half an interval (1-5 s): a replica that does not answer costs at
	 * most that much before the next one is tried. */
	pthread_mutex_lock(&c->mu);
	long long timeout = c->interval_ms / 2;
	pthread_mutex_unlock(&c->mu);
	if (timeout < HB_TIMEOUT_MIN_MS)
		timeout = HB_TIMEOUT_MIN_MS;
	if (timeout > HB_TIMEOUT_MAX_MS)
		timeout = HB_TIMEOUT_MAX_MS;
	int rc = ctl_call(c, SLOT_HB, "Heartbeat", &req.base, &resp, timeout, moved, err, errlen);
	if (rc != 0)
		return rc;
	Slipway__V1__HeartbeatResponse *r = (void *)resp;
	pthread_mutex_lock(&c->mu);
	if (r->heartbeat_interval_ms >= 100 && r->heartbeat_interval_ms <= 600000)
		c->interval_ms = r->heartbeat_interval_ms;
	if (r->reregister) {
		c->need_register = 1;
		log_info("the orchestrator asks this agent to register again", NULL);
	}
	pthread_mutex_unlock(&c->mu);
	protobuf_c_message_free_unpacked(resp, NULL);
	return 0;
}

static void *hb_main(void *arg)
{
	struct agent_control *c = arg;
	struct quiet q = { 0 };
	long long backoff = 0;
	size_t hops = 0; /* replicas tried at once since the last success */
	char err[256];
	log_set_request_id(NULL);
	while (!atomic_load(&c->stop)) {
		pthread_mutex_lock(&c->mu);
		int reg = !c->registered || c->need_register;
		long long interval = c->interval_ms;
		pthread_mutex_unlock(&c->mu);
		int moved = 0;
		if (reg) {
			int rc = do_register(c, &moved, err, sizeof err);
			if (rc != 0) {
				quiet_fail(&q, "RegisterAgent", err);
				/* Another replica: at once, each once per round. */
				if (moved && ++hops < c->a->norch)
					continue;
				hops = 0;
				backoff = next_backoff(backoff);
				wait_ms(c, jitter(backoff));
				continue;
			}
			quiet_ok(&q, "RegisterAgent");
			backoff = 0;
			hops = 0;
			continue; /* the first heartbeat follows at once */
		}
		int rc = do_heartbeat(c, &moved, err, sizeof err);
		agent_metrics_heartbeat(rc == 0);
		if (rc != 0) {
			quiet_fail(&q, "Heartbeat", err);
			if (unknown_agent(rc)) {
				pthread_mutex_lock(&c->mu);
				c->need_register = 1;
				pthread_mutex_unlock(&c->mu);
			}
			/* The next replica hears from this agent now, not an
			 * interval later. */
			if (moved && ++hops < c->a->norch)
				continue;
		} else {
			quiet_ok(&q, "Heartbeat");
		}
		hops = 0;
		pthread_mutex_lock(&c->mu);
		reg = c->need_register;
		pthread_mutex_unlock(&c->mu);
		if (!reg)
			wait_ms(c, interval);
	}
	pthread_mutex_lock(&c->mu);
	c->hb_done = 1;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* --------------------------------------------------------------- polling */

/* Copies a Task into t. Returns 0, or SW_EINVAL when a field does not fit
 * (t->task_id is still set when that one fits, so the task can be failed). */
static int copy_task(const Slipway__V1__Task *in, struct agent_task *t)
{
	memset(t, 0, sizeof *t);
	if (in->task_id == NULL || in->task_id[0] == '\0' || strlen(in->task_id) > AGENT_ID_MAX)
		return SW_ERANGE;
	snprintf(t->task_id, sizeof t->task_id, "%s", in->task_id);
	t->generation = in->generation;
	t->kind = (int)in->kind;
	t->attempt = in->attempt;
	t->deadline_unix_ms = in->deadline_unix_ms;
	t->has_secrets = in->has_secrets;
	/* The deployment's trace, when it is a well-formed one (else none:
	 * it only labels log lines and calls). */
	if (in->trace_id != NULL && strlen(in->trace_id) == TRACE_ID_HEX)
		snprintf(t->trace_id, sizeof t->trace_id, "%s", in->trace_id);
	atomic_init(&t->superseded, 0);
	const char *f[5] = { in->deployment_id, in->app, in->environment, in->version, in->digest };
	char *d[5] = { t->deployment_id, t->app, t->environment, t->version, t->digest };
	size_t cap[5] = { sizeof t->deployment_id, sizeof t->app, sizeof t->environment,
			  sizeof t->version, sizeof t->digest };
	int rc = 0;
	for (int i = 0; i < 5; i++) {
		const char *s = f[i] ? f[i] : "";
		if (strlen(s) >= cap[i])
			rc = SW_EINVAL;
		snprintf(d[i], cap[i], "%s", s);
	}
	/* An over-long field: the executor fails the task with this. */
	if (rc != 0)
		snprintf(t->invalid, sizeof t->invalid, "a field of the task is too long");
	return 0;
}

static void copy_task_struct(struct agent_task *dst, const struct agent_task *src)
{
	memcpy(dst, src, sizeof *dst);
	atomic_init(&dst->superseded, 0);
}

/* Applies the fencing rules to one delivered task. c->mu held. */
static void accept_task(struct agent_control *c, const struct agent_task *t)
{
	struct agent_store *s = &c->a->store;
	char err[256];
	switch (agent_fence_classify(s, t, c->running ? &c->cur : NULL,
				     c->have_pending ? &c->pending : NULL)) {
	case AGENT_FENCE_STALE:
		log_info("ignoring a stale task", "task=%s generation=%" PRIu64 " highest=%" PRIu64,
			 t->task_id, t->generation, s->generation);
		return;
	case AGENT_FENCE_CONFLICT:
		log_warn("ignoring a task that reuses a generation",
			 "task=%s generation=%" PRIu64 " holder=%s", t->task_id, t->generation,
			 s->generation_task);
		return;
	case AGENT_FENCE_BUSY:
		return;
	case AGENT_FENCE_REREPORT:
		if (c->have_rereport && strcmp(c->rereport.task_id, t->task_id) == 0)
			return;
		log_info("task delivered again: reporting its recorded result",
			 "task=%s generation=%" PRIu64, t->task_id, t->generation);
		copy_task_struct(&c->rereport, t);
		c->have_rereport = 1;
		pthread_cond_broadcast(&c->cond);
		return;
	case AGENT_FENCE_RESUME:
		/* Accepted before but never finished (the agent stopped or
		 * crashed): do it now; a deploy is safe to run again. */
		log_info("resuming a task accepted before", "task=%s generation=%" PRIu64,
			 t->task_id, t->generation);
		break;
	case AGENT_FENCE_NEW:
		if (agent_store_set_generation(s, t->generation, t->task_id, err, sizeof err) != 0) {
			log_error("cannot persist the task generation: not accepting the task",
				  "task=%s error=%s", t->task_id, err);
			return;
		}
		break;
	}
	if (c->have_pending)
		log_info("a newer task replaces one that had not started", "dropped=%s task=%s",
			 c->pending.task_id, t->task_id);
	copy_task_struct(&c->pending, t);
	c->have_pending = 1;
	if (c->running)
		log_info("a newer task supersedes the running one", "running=%s task=%s",
			 c->cur.task_id, t->task_id);
	pthread_cond_broadcast(&c->cond);
}

static int poll_once(struct agent_control *c, int *ntasks, int *moved, char *err, size_t errlen)
{
	struct agent *a = c->a;
	ProtobufCMessage *m = NULL;
	long long wait = a->cfg->poll_wait_ms;
	*ntasks = 0;
	Slipway__V1__PollTasksRequest req = SLIPWAY__V1__POLL_TASKS_REQUEST__INIT;
	req.wait_ms = wait;
	req.highest_generation = highest_generation(c);
	int rc = ctl_call(c, SLOT_POLL, "PollTasks", &req.base, &m, wait + 5000, moved, err, errlen);
	if (rc != 0)
		return rc;
	Slipway__V1__PollTasksResponse *r = (void *)m;
	size_t n = r->n_tasks > MAX_TASKS_PER_POLL ? MAX_TASKS_PER_POLL : r->n_tasks;
	struct agent_task *v = calloc(n ? n : 1, sizeof *v);
	size_t nv = 0;
	for (size_t i = 0; v != NULL && i < n; i++) {
		if (copy_task(r->tasks[i], &v[nv]) != 0) {
			log_warn("ignoring a task without a usable id", NULL);
			continue;
		}
		/* Keep them in generation order. */
		for (size_t j = nv; j > 0 && v[j - 1].generation > v[j].generation; j--) {
			struct agent_task tmp;
			copy_task_struct(&tmp, &v[j]);
			copy_task_struct(&v[j], &v[j - 1]);
			copy_task_struct(&v[j - 1], &tmp);
		}
		nv++;
	}
	pthread_mutex_lock(&c->mu);
	for (size_t i = 0; i < nv; i++)
		accept_task(c, &v[i]);
	pthread_mutex_unlock(&c->mu);
	free(v);
	*ntasks = (int)nv;
	protobuf_c_message_free_unpacked(m, NULL);
	return 0;
}

static void *poll_main(void *arg)
{
	struct agent_control *c = arg;
	struct quiet q = { 0 };
	long long backoff = 0;
	size_t hops = 0;
	char err[256];
	log_set_request_id(NULL);
	while (!atomic_load(&c->stop)) {
		pthread_mutex_lock(&c->mu);
		while (!c->registered && !atomic_load(&c->stop))
			pthread_cond_wait(&c->cond, &c->mu);
		pthread_mutex_unlock(&c->mu);
		if (atomic_load(&c->stop))
			break;
		int64_t t0 = agent_now_ms();
		int n = 0, moved = 0;
		int rc = poll_once(c, &n, &moved, err, sizeof err);
		if (atomic_load(&c->stop))
			break;
		if (rc != 0) {
			/* Moved to another replica (this call failed, or the
			 * heartbeat thread found the replica dead and cancelled
			 * it): poll there at once, each replica once per round. */
			if (moved && ++hops < c->a->norch)
				continue;
			hops = 0;
			quiet_fail(&q, "PollTasks", err);
			if (unknown_agent(rc)) {
				pthread_mutex_lock(&c->mu);
				c->need_register = 1;
				pthread_cond_broadcast(&c->cond);
				pthread_mutex_unlock(&c->mu);
			}
			backoff = next_backoff(backoff);
			wait_ms(c, jitter(backoff));
			continue;
		}
		quiet_ok(&q, "PollTasks");
		backoff = 0;
		hops = 0;
		/* An orchestrator that answers an empty poll at once is not long
		 * polling: do not spin on it. */
		if (n == 0 && agent_now_ms() - t0 < 1000)
			wait_ms(c, 1000);
	}
	pthread_mutex_lock(&c->mu);
	c->poll_done = 1;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* ----------------------------------------------------------------- worker */

static int task_cancel(struct agent *a, const struct agent_task *t, void *arg)
{
	(void)a;
	struct agent_control *c = arg;
	if (atomic_load(&c->stop) || atomic_load(&t->superseded))
		return 1;
	pthread_mutex_lock(&c->mu);
	int newer = c->have_pending && c->pending.generation > t->generation;
	pthread_mutex_unlock(&c->mu);
	return newer;
}

enum { REPORT_ACKED = 0, REPORT_SUPERSEDED = 1, REPORT_GAVE_UP = 2, REPORT_REFUSED = 3 };

/* Reports until acknowledged. Gives up when the agent stops (the result is
 * recorded: it is reported again when the task is delivered again), when
 * a newer task arrives, or on an answer that retrying cannot change. */
static int report(struct agent_control *c, struct agent_task *t, int result, const char *msg,
		  int64_t duration_ms)
{
	struct agent *a = c->a;
	long long backoff = 0;
	size_t hops = 0;
	struct quiet q = { 0 };
	char err[256];
	for (int attempt = 1;; attempt++) {
		struct agent_runtime rt;
		char endpoint[64];
		Slipway__V1__AgentRuntime prt;
		Slipway__V1__TaskReport req = SLIPWAY__V1__TASK_REPORT__INIT;
		ProtobufCMessage *resp = NULL;
		agent_runtime(a, &rt);
		fill_runtime(&rt, endpoint, sizeof endpoint, &prt);
		req.task_id = t->task_id;
		req.generation = t->generation;
		req.result = (Slipway__V1__TaskResult)result;
		req.message = (char *)msg;
		req.runtime = &prt;
		req.duration_ms = duration_ms;
		int moved = 0;
		int rc = ctl_call(c, SLOT_WORK, "ReportTask", &req.base, &resp, REPORT_TIMEOUT_MS,
				  &moved, err, sizeof err);
		if (rc == 0) {
			Slipway__V1__ReportTaskResponse *r = (void *)resp;
			int sup = r->superseded;
			log_info("task reported", "task=%s generation=%" PRIu64 " result=%d accepted=%d superseded=%d",
				 t->task_id, t->generation, result, (int)r->accepted, sup);
			protobuf_c_message_free_unpacked(resp, NULL);
			if (sup) {
				atomic_store(&t->superseded, 1);
				return REPORT_SUPERSEDED;
			}
			return REPORT_ACKED;
		}
		if (rc == SW_EINVAL || rc == SW_ENOTFOUND || rc == SW_EPERM || rc == SW_EPRECOND ||
		    rc == SW_EEXIST || rc == SW_EUNIMPL) {
			log_warn("the orchestrator refused the report", "task=%s error=%s", t->task_id,
				 err);
			return REPORT_REFUSED;
		}
		quiet_fail(&q, "ReportTask", err);
		if (atomic_load(&c->stop) || task_cancel(a, t, c))
			return REPORT_GAVE_UP;
		if (moved && ++hops < a->norch)
			continue; /* another replica: at once */
		hops = 0;
		backoff = next_backoff(backoff);
		wait_ms(c, jitter(backoff));
		if (atomic_load(&c->stop) || task_cancel(a, t, c))
			return REPORT_GAVE_UP;
		(void)attempt;
	}
}

static void *work_main(void *arg)
{
	struct agent_control *c = arg;
	struct agent *a = c->a;
	char err[256];
	log_set_request_id(NULL);
	for (;;) {
		pthread_mutex_lock(&c->mu);
		while (!c->have_pending && !c->have_rereport && !atomic_load(&c->stop))
			pthread_cond_wait(&c->cond, &c->mu);
		if (atomic_load(&c->stop)) {
			pthread_mutex_unlock(&c->mu);
			break;
		}
		if (c->have_rereport) {
			struct agent_task t;
			copy_task_struct(&t, &c->rereport);
			c->have_rereport = 0;
			pthread_mutex_unlock(&c->mu);
			int result;
			char msg[AGENT_MSG_MAX];
			if (agent_store_get_result(&a->store, t.task_id, t.generation, &result, msg,
						   sizeof msg) == 0)
				report(c, &t, result, msg, 0);
			continue;
		}
		copy_task_struct(&c->cur, &c->pending);
		c->have_pending = 0;
		c->running = 1;
		pthread_mutex_unlock(&c->mu);

		struct agent_task *t = &c->cur;
		struct agent_result res;
		log_set_request_id(t->task_id);
		trace_enter_id(t->trace_id); /* its deployment's trace (or none) */
		int r = report(c, t, SLIPWAY__V1__TASK_RESULT__TASK_STARTED, "", 0);
		if (r == REPORT_SUPERSEDED || task_cancel(a, t, c)) {
			log_info("task superseded before it started", "task=%s", t->task_id);
		} else if (r == REPORT_REFUSED) {
			/* The orchestrator says this agent does not hold the task. */
			log_warn("task refused by the orchestrator: not run", "task=%s", t->task_id);
		} else if (agent_exec(a, t, task_cancel, c, &res) == 0) {
			agent_crash_point("before-result");
			if (agent_store_put_result(&a->store, t->task_id, t->generation, res.result,
						   res.message, err, sizeof err) != 0)
				log_error("cannot record the task result", "task=%s error=%s", t->task_id,
					  err);
			report(c, t, res.result, res.message, res.duration_ms);
			agent_metrics_task(res.result == SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED,
					   res.duration_ms);
		}
		log_set_request_id(NULL);
		trace_set_current(NULL);
		pthread_mutex_lock(&c->mu);
		c->running = 0;
		pthread_mutex_unlock(&c->mu);
	}
	pthread_mutex_lock(&c->mu);
	c->worker_done = 1;
	pthread_cond_broadcast(&c->cond);
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

/* ------------------------------------------------------------- life cycle */

int agent_control_start(struct agent *a, char *err, size_t errlen)
{
	struct agent_control *c = calloc(1, sizeof *c);
	if (c == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	if (a->norch == 0) {
		free(c);
		return sw_errf(err, errlen, SW_EINVAL, "--orchestrator-addr is required");
	}
	c->a = a;
	c->interval_ms = a->cfg->heartbeat_ms;
	pthread_mutex_init(&c->mu, NULL);
	pthread_cond_init(&c->cond, NULL);
	atomic_init(&c->stop, 0);
	a->control = c;
	if (pthread_create(&c->work, NULL, work_main, c) == 0)
		c->work_started = 1;
	if (pthread_create(&c->poll, NULL, poll_main, c) == 0)
		c->poll_started = 1;
	if (pthread_create(&c->hb, NULL, hb_main, c) == 0)
		c->hb_started = 1;
	if (!c->work_started || !c->poll_started || !c->hb_started) {
		agent_control_stop(a);
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the control threads");
	}
	return 0;
}

/* Waits until *flag is set (c->mu held by the caller) or ms pass. */
static int wait_flag(struct agent_control *c, const int *flag, long long ms)
{
	struct timespec ts = clock_after(CLOCK_REALTIME, ms);
	while (!*flag)
		if (pthread_cond_timedwait(&c->cond, &c->mu, &ts) != 0)
			break;
	return *flag;
}

int agent_control_stop(struct agent *a)
{
	struct agent_control *c = a->control;
	if (c == NULL)
		return 0;
	atomic_store(&c->stop, 1);
	pthread_mutex_lock(&c->mu);
	for (int i = 0; i < 3; i++)
		if (c->inflight[i] != NULL)
			rpc_stream_cancel(c->inflight[i]);
	pthread_cond_broadcast(&c->cond);
	/* The task reaches a safe point, or completes if it is past its switch,
	 * within the shutdown grace. A call still waiting for an unreachable
	 * orchestrator to accept it cannot be cancelled before it starts; those
	 * threads hold nothing durable, so they get a short while only. */
	int done = !c->work_started || wait_flag(c, &c->worker_done, a->cfg->shutdown_grace_ms);
	int rest = (!c->poll_started || wait_flag(c, &c->poll_done, 2000)) &&
		   (!c->hb_started || wait_flag(c, &c->hb_done, 2000));
	pthread_mutex_unlock(&c->mu);
	if (!done) {
		log_error("the running task did not reach a safe point within the grace period",
			  "grace_ms=%lld", a->cfg->shutdown_grace_ms);
		return SW_ETIMEDOUT; /* the caller exits without freeing */
	}
	if (!rest)
		return SW_ETIMEDOUT;
	if (c->work_started)
		pthread_join(c->work, NULL);
	if (c->poll_started)
		pthread_join(c->poll, NULL);
	if (c->hb_started)
		pthread_join(c->hb, NULL);
	pthread_cond_destroy(&c->cond);
	pthread_mutex_destroy(&c->mu);
	free(c);
	a->control = NULL;
	return 0;
}
