/*
 * outbox.c - the transactional outbox and its relay (see outbox.h for
 * why the relay orders by the commit-time `seq` and not by `id`).
 */
#include "outbox.h"
#include "auditlog.h"
#include "err.h"
#include "log.h"
#include "metrics.h"
#include "trace.h"
#include "clock.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct outbox_relay {
	struct outbox_relay_opts o;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int kicked;
	int stopping;
	int64_t stop_deadline;
	unsigned long long delivered;
	/* metrics (metrics.h): refreshed by the relay thread on its own
	 * connection, so a scrape never queries the database for them */
	struct metrics_child *m_backlog, *m_oldest, *m_delivered;
	int64_t stats_ms;
};

#define OUTBOX_STATS_MS 5000
#define OUTBOX_ID_SIZE 65 /* an event id (1-64 characters) and its NUL */

/* Backlog and oldest age of the outbox (every replica reports the shared
 * table; take the max across replicas). Relay thread only. */
static void refresh_stats(struct outbox_relay *r, struct db_conn *c)
{
	int64_t now = clock_mono_ms();
	if (r->stats_ms != 0 && now - r->stats_ms < OUTBOX_STATS_MS)
		return;
	r->stats_ms = now;
	PGresult *res = NULL;
	char err[256];
	if (db_q(c,
		 "SELECT count(*), COALESCE(EXTRACT(EPOCH FROM clock_timestamp() - min(created_at)), 0)"
		 " FROM outbox",
		 0, NULL, &res, err, sizeof err) != 0)
		return;
	metrics_set(r->m_backlog, (double)db_int64(res, 0, 0));
	metrics_set(r->m_oldest, strtod(db_text(res, 0, 1), NULL));
	PQclear(res);
}

void outbox_detail(struct outbox_event *e, const char *key, const char *value)
{
	if (e->ndetails < OUTBOX_MAX_DETAILS) {
		e->keys[e->ndetails] = key;
		e->values[e->ndetails] = value ? value : "";
		e->ndetails++;
	}
}

size_t outbox_fit_text(const char *in, char *out, size_t max)
{
	const unsigned char *p = (const unsigned char *)in;
	size_t o = 0;
	while (*p && o < max) {
		unsigned char ch = *p;
		size_t len = auditlog_utf8_char((const char *)p);
		if (len == 0 || ch < 0x20 || ch == 0x7f) {
			out[o++] = '?';
			p++;
			continue;
		}
		if (o + len > max)
			break;
		memcpy(out + o, p, len);
		o += len;
		p += len;
	}
	out[o] = '\0';
	return o;
}

/* Builds, checks and packs e: id[] gets its event id, *out a new buffer
 * (free()) of *outlen bytes. 0, SW_EINVAL (an event no fitting can fix) or
 * SW_ENOMEM. */
static int pack_event(const char *service, const struct outbox_event *e, char id[OUTBOX_ID_SIZE],
		      uint8_t **out, size_t *outlen, char *err, size_t errlen)
{
	Slipway__V1__AuditEvent ev = SLIPWAY__V1__AUDIT_EVENT__INIT;
	Slipway__V1__KeyValue kv[OUTBOX_MAX_DETAILS + 1];
	Slipway__V1__KeyValue *kvp[OUTBOX_MAX_DETAILS + 1];
	char resource[AUDITLOG_MAX_RESOURCE + 1];
	char *values = NULL;

	*out = NULL;
	*outlen = 0;
	/* An event id is 1-64 characters (audit-canonical.md): a longer one
	 * is a bug, refused here, never cut (two cut ids could collide). */
	if (e->event_id != NULL && strlen(e->event_id) >= OUTBOX_ID_SIZE)
		return sw_errf(err, errlen, SW_EINVAL, "invalid audit event (a bug in %s): event id "
			       "longer than 64 characters", service);
	if (e->event_id != NULL && e->event_id[0] != '\0')
		snprintf(id, OUTBOX_ID_SIZE, "%s", e->event_id);
	else
		rpc_new_request_id(id);
	ev.event_id = id;
	ev.actor = (char *)(e->actor ? e->actor : "");
	ev.service = (char *)service;
	ev.action = (char *)(e->action ? e->action : "");
	/* Free text is fitted to the log's caps here, so that an event can never
	 * be refused by the audit service later and block the relay. */
	if (outbox_fit_text(e->resource ? e->resource : "", resource, AUDITLOG_MAX_RESOURCE) == 0)
		snprintf(resource, sizeof resource, "-");
	ev.resource = resource;
	ev.outcome = e->outcome;
	ev.request_id = (char *)(e->request_id ? e->request_id : log_request_id());
	if (!auditlog_token_ok(ev.request_id, 0, 64, "ABCDEFGHIJKLMNOPQRSTUVWXYZ._:-"))
		ev.request_id = "";
	ev.time_unix_ms = e->time_unix_ms > 0 ? e->time_unix_ms : clock_wall_ms();
	values = malloc(AUDITLOG_MAX_DETAILS_BYTES + 1);
	if (values == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	size_t used = 0, budget = AUDITLOG_MAX_DETAILS_BYTES - 32, nd = 0;
	int truncated = 0;
	for (size_t i = 0; i < e->ndetails && i < OUTBOX_MAX_DETAILS; i++) {
		size_t kl = strlen(e->keys[i]);
		if (used + kl >= budget) {
			truncated = 1;
			break;
		}
		size_t room = budget - used - kl;
		size_t cap = room < AUDITLOG_MAX_VALUE ? room : AUDITLOG_MAX_VALUE;
		size_t vl = outbox_fit_text(e->values[i], values + used, cap);
		if (vl < strlen(e->values[i]))
			truncated = 1;
		slipway__v1__key_value__init(&kv[nd]);
		kv[nd].key = (char *)e->keys[i];
		kv[nd].value = values + used;
		kvp[nd] = &kv[nd];
		nd++;
		used += vl + 1 + kl;
	}
	if (truncated || e->ndetails > OUTBOX_MAX_DETAILS) {
		slipway__v1__key_value__init(&kv[nd]);
		kv[nd].key = "truncated";
		kv[nd].value = "true";
		kvp[nd] = &kv[nd];
		nd++;
	}
	ev.n_details = nd;
	ev.details = kvp;
	char why[256];
	if (auditlog_check_event(&ev, why, sizeof why) != 0) {
		free(values);
		return sw_errf(err, errlen, SW_EINVAL, "invalid audit event (a bug in %s): %s", service,
			       why);
	}

	size_t n = slipway__v1__audit_event__get_packed_size(&ev);
	uint8_t *buf = malloc(n ? n : 1);
	if (buf == NULL) {
		free(values);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	slipway__v1__audit_event__pack(&ev, buf);
	free(values);
	*out = buf;
	*outlen = n;
	return 0;
}

#define ADD_STMT "slipway_outbox_add"
#define ADD_SQL "INSERT INTO outbox (event_id, event, trace_id) VALUES ($1, $2, $3)"

int outbox_add(struct db_conn *c, const char *service, const struct outbox_event *e, char *err,
	       size_t errlen)
{
	char id[OUTBOX_ID_SIZE];
	uint8_t *buf = NULL;
	size_t n = 0;
	int rc = pack_event(service, e, id, &buf, &n, err, errlen);
	if (rc != 0)
		return rc;
	/* The trace current when the event was written: the relay delivers
	 * it under that trace. */
	char trace_hex[TRACE_ID_HEX + 1];
	trace_id_hex(trace_current(), trace_hex);
	const char *vals[3] = { id, (const char *)buf, trace_hex };
	int lens[3] = { 0, (int)n, 0 };
	int fmts[3] = { 0, 1, 0 };
	rc = db_exec_prepared(c, ADD_STMT, ADD_SQL, 3, vals, lens, fmts, 0, NULL, err, errlen);
	free(buf);
	return rc;
}

/* ---------------------------------------------------------------- group commit */

/* One caller of outbox_group_commit, on its own stack. */
struct waiter {
	char id[OUTBOX_ID_SIZE];
	char trace[TRACE_ID_HEX + 1]; /* the caller's trace, "" for none */
	uint8_t *buf;
	size_t len;
	int done, rc;
	char err[256];
	pthread_cond_t cv; /* signalled when done, or when it is to lead */
	struct waiter *next;
};

struct outbox_group {
	struct db *db;
	char *service;
	int max_batch;
	pthread_mutex_t mu;
	struct waiter *head, **tail; /* queued, not yet taken by a leader */
	int leading;                 /* a leader is writing a batch */
	unsigned long long commits, events;
};

int outbox_group_new(struct db *db, const char *service, int max_batch,
		     struct outbox_group **out, char *err, size_t errlen)
{
	*out = NULL;
	struct outbox_group *g = calloc(1, sizeof *g);
	if (g == NULL || (g->service = strdup(service)) == NULL) {
		free(g);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	g->db = db;
	g->max_batch = max_batch > 0 ? (max_batch > OUTBOX_GROUP_MAX ? OUTBOX_GROUP_MAX : max_batch)
				     : 64;
	g->tail = &g->head;
	pthread_mutex_init(&g->mu, NULL);
	*out = g;
	return 0;
}

void outbox_group_free(struct outbox_group *g)
{
	if (g == NULL)
		return;
	pthread_mutex_destroy(&g->mu);
	free(g->service);
	free(g);
}

void outbox_group_stats(struct outbox_group *g, unsigned long long *commits,
			unsigned long long *events)
{
	pthread_mutex_lock(&g->mu);
	*commits = g->commits;
	*events = g->events;
	pthread_mutex_unlock(&g->mu);
}

/* Writes a batch of n events as one statement outside any transaction
 * block: PostgreSQL runs it as one transaction, so the rows commit
 * together (one WAL flush, one turn of the commit-order lock) or not at
 * all. Retried once when aborted (a lock timeout: nothing committed). */
static int write_batch(struct outbox_group *g, struct waiter *const *w, int n, char *err,
		       size_t errlen)
{
	const char **vals = calloc((size_t)n * 3, sizeof *vals);
	int *lens = calloc((size_t)n * 3, sizeof *lens), *fmts = calloc((size_t)n * 3, sizeof *fmts);
	char *sql = n > 1 ? db_values_sql("INSERT INTO outbox (event_id, event, trace_id) VALUES",
					  (size_t)n, 3, "")
			  : NULL;
	struct db_conn *c = NULL;
	int rc = 0;
	if (vals == NULL || lens == NULL || fmts == NULL || (n > 1 && sql == NULL)) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		vals[3 * i] = w[i]->id;
		vals[3 * i + 1] = (const char *)w[i]->buf;
		lens[3 * i + 1] = (int)w[i]->len;
		fmts[3 * i + 1] = 1;
		vals[3 * i + 2] = w[i]->trace;
	}
	for (int attempt = 0; attempt < 2; attempt++) {
		rc = db_acquire(g->db, &c, 10000, err, errlen);
		if (rc != 0)
			goto out;
		/* One event (the usual case at low load) takes the prepared
		 * statement; a batch's text differs with its size. */
		rc = n == 1 ? db_exec_prepared(c, ADD_STMT, ADD_SQL, 3, vals, lens, fmts, 0, NULL, err,
					       errlen)
			    : db_exec(c, sql, n * 3, vals, lens, fmts, 0, NULL, err, errlen);
		db_release(g->db, c);
		c = NULL;
		if (rc != SW_EABORTED)
			break;
	}
out:
	free(sql);
	free(vals);
	free(lens);
	free(fmts);
	return rc;
}

int outbox_group_commit(struct outbox_group *g, const struct outbox_event *e, char *err,
			size_t errlen)
{
	struct waiter me = { 0 };
	struct waiter *batch[OUTBOX_GROUP_MAX];
	int rc = pack_event(g->service, e, me.id, &me.buf, &me.len, err, errlen);
	if (rc != 0)
		return rc;
	trace_id_hex(trace_current(), me.trace);
	/* Each caller sleeps on its own condition variable: a commit wakes the
	 * callers it answered and the next leader, not every waiter. */
	pthread_cond_init(&me.cv, NULL);
	pthread_mutex_lock(&g->mu);
	*g->tail = &me;
	g->tail = &me.next;
	while (!me.done) {
		if (g->leading) {
			pthread_cond_wait(&me.cv, &g->mu);
			continue;
		}
		/* Lead: take what is queued (in order, up to the cap), write it
		 * as one transaction, then answer everyone in it. */
		g->leading = 1;
		int n = 0;
		while (g->head != NULL && n < g->max_batch) {
			batch[n++] = g->head;
			g->head = g->head->next;
		}
		if (g->head == NULL)
			g->tail = &g->head;
		pthread_mutex_unlock(&g->mu);
		char why[256];
		int brc = write_batch(g, batch, n, why, sizeof why);
		pthread_mutex_lock(&g->mu);
		for (int i = 0; i < n; i++) {
			batch[i]->rc = brc;
			if (brc != 0)
				snprintf(batch[i]->err, sizeof batch[i]->err, "%s", why);
			batch[i]->done = 1;
			if (batch[i] != &me)
				pthread_cond_signal(&batch[i]->cv);
		}
		if (brc == 0) {
			g->commits++;
			g->events += (unsigned long long)n;
		}
		g->leading = 0;
		if (g->head != NULL)
			pthread_cond_signal(&g->head->cv); /* the next leader */
	}
	pthread_mutex_unlock(&g->mu);
	pthread_cond_destroy(&me.cv);
	free(me.buf);
	if (me.rc != 0)
		return sw_errf(err, errlen, me.rc, "%s", me.err);
	return 0;
}

/* Waits up to ms for a kick or stop. */
#define OUTBOX_LINGER_MS 20

static void nap(struct outbox_relay *r, int ms)
{
	struct timespec dl = clock_after(CLOCK_REALTIME, ms);
	pthread_mutex_lock(&r->mu);
	while (!r->kicked && !r->stopping)
		if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) != 0)
			break;
	r->kicked = 0;
	pthread_mutex_unlock(&r->mu);
}

/* Waits ms (or until stopping) whatever kicks arrive meanwhile: lets a
 * burst of events gather into one batch. */
static void linger(struct outbox_relay *r, int ms)
{
	struct timespec dl = clock_after(CLOCK_REALTIME, ms);
	pthread_mutex_lock(&r->mu);
	while (!r->stopping)
		if (pthread_cond_timedwait(&r->cv, &r->mu, &dl) != 0)
			break;
	pthread_mutex_unlock(&r->mu);
}

static uint64_t be64(const char *p)
{
	const unsigned char *u = (const unsigned char *)p;
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | u[i];
	return v;
}

/* One delivery round: returns the number of events delivered, 0 when the
 * outbox is empty, or a negative code. */
static int deliver(struct outbox_relay *r, struct db_conn *c, char *err, size_t errlen)
{
	PGresult *res = NULL;
	char lim[24];
	/* Commit order (seq, assigned at commit); rows written before the
	 * outbox had seq come first, in id order. */
	int rc = db_exec(c,
			 "SELECT id, event, trace_id FROM outbox ORDER BY seq NULLS FIRST, id LIMIT $1::int",
			 1,
			 (const char *[]){ db_i64(lim, r->o.batch) }, NULL, NULL, 1, &res, err,
			 errlen);
	if (rc != 0)
		return rc;
	int rows = PQntuples(res);
	if (rows == 0) {
		PQclear(res);
		return 0;
	}
	/* This round delivers the leading run of events of one trace, under
	 * that trace; the next round takes the next run. Order is kept. */
	char trace_hex[TRACE_ID_HEX + 1];
	snprintf(trace_hex, sizeof trace_hex, "%s", PQgetvalue(res, 0, 2));
	for (int i = 1; i < rows; i++)
		if (strcmp(PQgetvalue(res, i, 2), trace_hex) != 0) {
			rows = i;
			break;
		}
	int n = 0;
	Slipway__V1__AuditEvent **evs = calloc((size_t)rows, sizeof *evs);
	size_t idlen = (size_t)rows * 22 + 3;
	char *ids = malloc(idlen);
	size_t off = 0;
	if (evs == NULL || ids == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	ids[off++] = '{';
	for (int i = 0; i < rows; i++) {
		uint64_t id = be64(PQgetvalue(res, i, 0));
		off += (size_t)snprintf(ids + off, idlen - off, "%s%llu", i ? "," : "",
					(unsigned long long)id);
		evs[n] = slipway__v1__audit_event__unpack(NULL, (size_t)PQgetlength(res, i, 1),
							  (const uint8_t *)PQgetvalue(res, i, 1));
		if (evs[n] == NULL) {
			/* Cannot happen unless the table was edited by hand: keep it
			 * out of the way rather than block every later event. */
			log_error("outbox event does not decode; skipped", "id=%llu",
				  (unsigned long long)id);
			continue;
		}
		n++;
	}
	ids[off++] = '}';
	ids[off] = '\0';
	if (n > 0) {
		Slipway__V1__AppendBatchRequest req = SLIPWAY__V1__APPEND_BATCH_REQUEST__INIT;
		req.n_events = (size_t)n;
		req.events = evs;
		ProtobufCMessage *resp = NULL;
		struct rpc_call_opts co = { .timeout_ms = 10000 };
		trace_enter_id(trace_hex); /* "" (untraced events): none */
		rc = rpc_call(r->o.audit, &slipway__v1__audit__descriptor, "AppendBatch", &req.base,
			      &resp, &co, err, errlen);
		trace_set_current(NULL);
		if (resp != NULL)
			protobuf_c_message_free_unpacked(resp, NULL);
		if (rc != 0)
			goto out;
	}
	rc = db_q(c, "DELETE FROM outbox WHERE id = ANY($1::bigint[])", 1, (const char *[]){ ids },
		  NULL, err, errlen);
	if (rc == 0) {
		rc = n;
		pthread_mutex_lock(&r->mu);
		r->delivered += (unsigned long long)n;
		metrics_add(r->m_delivered, n);
		pthread_mutex_unlock(&r->mu);
	}
out:
	for (int i = 0; evs != NULL && i < n; i++)
		slipway__v1__audit_event__free_unpacked(evs[i], NULL);
	free(evs);
	free(ids);
	PQclear(res);
	return rc;
}

/* Gives an outbox created before commit ordering existed its seq column
 * and trigger (OUTBOX_COMMIT_ORDER_SQL), once. Runs while holding the relay
 * lock, so replicas do not race each other's DDL. Returns 0 or a code. */
static int ensure_commit_order(struct db_conn *c, char *err, size_t errlen)
{
	PGresult *res = NULL;
	int rc = db_q(c,
		      "SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_commit_order'"
		      " AND tgrelid = to_regclass('outbox')",
		      0, NULL, &res, err, errlen);
	int have = rc == 0 && db_int64(res, 0, 0) > 0;
	PQclear(res);
	if (rc != 0 || have)
		return rc;
	res = PQexec(db_pg(c), "BEGIN;" OUTBOX_COMMIT_ORDER_SQL ";COMMIT");
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "outbox commit order: %s",
			     PQresultErrorMessage(res));
		PQclear(res);
		res = PQexec(db_pg(c), "ROLLBACK");
		PQclear(res);
		return rc;
	}
	PQclear(res);
	log_info("outbox upgraded to commit-order relaying", NULL);
	return 0;
}

static void *relay_main(void *arg)
{
	struct outbox_relay *r = arg;
	struct db_conn *c = NULL;
	int have_lock = 0, backoff = 100, last_failed = 0, ordered = 0;
	char err[512];

	for (;;) {
		pthread_mutex_lock(&r->mu);
		int stopping = r->stopping;
		int64_t deadline = r->stop_deadline;
		pthread_mutex_unlock(&r->mu);
		if (stopping && clock_mono_ms() > deadline)
			break;
		if (c == NULL) {
			if (db_acquire(r->o.db, &c, 2000, err, sizeof err) != 0) {
				c = NULL;
				if (stopping)
					break;
				nap(r, backoff);
				continue;
			}
			have_lock = 0;
		}
		refresh_stats(r, c);
		if (!have_lock) {
			PGresult *res = NULL;
			int rc = db_q(c,
				      "SELECT pg_try_advisory_lock(hashtext('slipway.outbox.' || "
				      "current_schema()))",
				      0, NULL, &res, err, sizeof err);
			have_lock = rc == 0 && db_bool(res, 0, 0);
			PQclear(res);
			if (rc != 0) {
				db_release(r->o.db, c);
				c = NULL;
			}
			if (!have_lock) {
				if (stopping)
					break;
				nap(r, r->o.idle_ms);
				continue;
			}
			if (!ordered) {
				int orc = ensure_commit_order(c, err, sizeof err);
				if (orc != 0 && orc != SW_EUNAVAIL)
					log_error("cannot set up commit-order relaying; relaying by id",
						  "error=%s", err);
				/* Once, unless the database was away: no DDL every round. */
				ordered = orc != SW_EUNAVAIL;
			}
		}
		int rc = deliver(r, c, err, sizeof err);
		if (rc > 0) {
			if (last_failed)
				log_info("audit delivery resumed", NULL);
			backoff = 100;
			last_failed = 0;
			/* A partial batch during a burst (a rollout's target
			 * results): wait a moment so that the next round carries
			 * many events in one AppendBatch instead of a few. */
			if (rc < r->o.batch && !stopping)
				linger(r, OUTBOX_LINGER_MS);
			continue;
		}
		if (rc == 0) {
			if (stopping)
				break; /* drained */
			nap(r, r->o.idle_ms);
			continue;
		}
		if (!last_failed)
			log_warn("audit delivery failing; will retry", "error=%s", err);
		if (rc == SW_EINVAL)
			/* Cannot happen for events written by outbox_add (they are
			 * checked against the same rules); if the audit service's
			 * rules changed, an operator must look: keep the event. */
			log_error("the audit service refuses an outbox event; delivery blocked",
				  "error=%s", err);
		last_failed = 1;
		if (rc == SW_EUNAVAIL && PQstatus(db_pg(c)) != CONNECTION_OK) {
			db_release(r->o.db, c); /* reconnects; the lock went with the session */
			c = NULL;
		}
		if (stopping)
			break;
		nap(r, backoff);
		backoff = backoff * 2 > r->o.max_backoff_ms ? r->o.max_backoff_ms : backoff * 2;
	}
	if (c != NULL) {
		if (have_lock)
			db_q(c,
			     "SELECT pg_advisory_unlock(hashtext('slipway.outbox.' || current_schema()))",
			     0, NULL, NULL, err, sizeof err);
		db_release(r->o.db, c);
	}
	return NULL;
}

int outbox_relay_start(const struct outbox_relay_opts *o, struct outbox_relay **out, char *err,
		       size_t errlen)
{
	*out = NULL;
	if (o->db == NULL || o->audit == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "outbox relay needs a database and an audit client");
	struct outbox_relay *r = calloc(1, sizeof *r);
	if (r == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	r->o = *o;
	if (r->o.batch <= 0)
		r->o.batch = 256;
	if (r->o.idle_ms <= 0)
		r->o.idle_ms = 200;
	if (r->o.max_backoff_ms <= 0)
		r->o.max_backoff_ms = 5000;
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
	r->m_backlog = metrics_with(metrics_gauge("slipway_outbox_backlog_events",
						  "Audit events in this service's outbox, not yet "
						  "delivered to the audit service.",
						  NULL));
	r->m_oldest = metrics_with(metrics_gauge("slipway_outbox_oldest_age_seconds",
						 "Age of the oldest undelivered outbox event (0 "
						 "when empty).",
						 NULL));
	r->m_delivered = metrics_with(metrics_counter("slipway_outbox_delivered_total",
						      "Outbox events delivered to the audit service "
						      "by this process.",
						      NULL));
	if (pthread_create(&r->thread, NULL, relay_main, r) != 0) {
		free(r);
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the outbox relay thread");
	}
	*out = r;
	return 0;
}

void outbox_relay_kick(struct outbox_relay *r)
{
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	r->kicked = 1;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

void outbox_relay_stop(struct outbox_relay *r, int timeout_ms)
{
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->mu);
	r->stopping = 1;
	r->stop_deadline = clock_mono_ms() + timeout_ms;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->thread, NULL);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	free(r);
}

unsigned long long outbox_relay_delivered(struct outbox_relay *r)
{
	pthread_mutex_lock(&r->mu);
	unsigned long long n = r->delivered;
	pthread_mutex_unlock(&r->mu);
	return n;
}
