/*
 * store.c - the policy service's PostgreSQL side (schema `policy`):
 * revisions of the document, recorded decisions, the outbox; the revision
 * watcher that keeps the in-memory policy current across replicas
 * (LISTEN/NOTIFY, with a poll as a safety net); and the decision writer,
 * which group-commits the decisions that deferred Authorize calls must
 * record before they answer, and audits the summaries of denials that were
 * only counted (limit.c) when they are due.
 */
#include "policy.h"
#include "db.h"
#include "err.h"
#include "log.h"
#include "outbox.h"
#include "rpc.h" /* rpc_new_request_id */
#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define NOTIFY_CHANNEL "slipway_policy_revision"
#define POLL_MS 2000          /* safety-net poll of the latest revision */
#define WRITER_BATCH 256
#define WRITER_QUEUE_MAX 8192

static const struct db_migration migrations[] = {
	{ 1, "revisions, decisions, outbox",
	  "CREATE TABLE revisions ("
	  " revision bigint PRIMARY KEY CHECK (revision > 0),"
	  " document text NOT NULL,"
	  " sha256 text NOT NULL,"
	  " applied_by text NOT NULL,"
	  " request_id text NOT NULL DEFAULT '',"
	  " applied_at timestamptz NOT NULL DEFAULT now());"
	  "CREATE TABLE decisions ("
	  " id text PRIMARY KEY,"
	  " decided_at timestamptz NOT NULL DEFAULT now(),"
	  " principal text NOT NULL,"
	  " action text NOT NULL,"
	  " kind text NOT NULL,"
	  " app text NOT NULL DEFAULT '',"
	  " environment text NOT NULL DEFAULT '',"
	  " name text NOT NULL DEFAULT '',"
	  " allowed boolean NOT NULL,"
	  " reasons text[] NOT NULL,"
	  " revision bigint NOT NULL,"
	  " caller text NOT NULL,"
	  " request_id text NOT NULL DEFAULT '');"
	  "CREATE INDEX decisions_principal ON decisions (principal, decided_at);"
	  "CREATE INDEX decisions_at ON decisions (decided_at);" OUTBOX_MIGRATION_SQL },
	{ 2, "approval requests and approvals",
	  "CREATE TABLE approval_requests ("
	  " deployment_id text PRIMARY KEY,"
	  " app text NOT NULL,"
	  " environment text NOT NULL,"
	  " version text NOT NULL DEFAULT '',"
	  " digest text NOT NULL,"
	  " requester text NOT NULL,"
	  " builder text NOT NULL DEFAULT '',"
	  " ref text NOT NULL DEFAULT '',"
	  " break_glass boolean NOT NULL DEFAULT false,"
	  " break_glass_reason text NOT NULL DEFAULT '',"
	  " state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'rejected')),"
	  " verdict text NOT NULL DEFAULT '',"
	  " post_review_digest text NOT NULL DEFAULT '',"
	  " rejected_by text NOT NULL DEFAULT '',"
	  " requested_ms bigint NOT NULL,"
	  " digest_since_ms bigint NOT NULL,"
	  " updated_ms bigint NOT NULL);"
	  "CREATE TABLE approvals ("
	  " id bigserial PRIMARY KEY,"
	  " deployment_id text NOT NULL REFERENCES approval_requests (deployment_id),"
	  " approver text NOT NULL,"
	  " digest text NOT NULL,"
	  " revision bigint NOT NULL,"
	  " policy_hash text NOT NULL,"
	  " approve boolean NOT NULL,"
	  " comment text NOT NULL DEFAULT '',"
	  " groups text[] NOT NULL,"
	  " break_glass boolean NOT NULL DEFAULT false,"
	  " created_ms bigint NOT NULL,"
	  " expires_ms bigint NOT NULL DEFAULT 0);"
	  "CREATE INDEX approvals_deployment ON approvals (deployment_id, id);" },
	{ 3, "approval requests remember their last recorded decision",
	  "ALTER TABLE approval_requests ADD COLUMN last_outcome text NOT NULL DEFAULT '',"
	  " ADD COLUMN last_decision_id text NOT NULL DEFAULT ''" },
	{ 4, "agent enrollments (enroll.c)",
	  "CREATE SEQUENCE enrollment_revision;"
	  "CREATE TABLE enrollments ("
	  " agent_id text PRIMARY KEY,"
	  " app text NOT NULL,"
	  " environment text NOT NULL,"
	  " region text NOT NULL,"
	  " grp text NOT NULL DEFAULT '',"
	  " seal_key text NOT NULL DEFAULT '',"
	  " enrolled_by text NOT NULL,"
	  " enrolled_ms bigint NOT NULL,"
	  " key_pinned_by text NOT NULL DEFAULT '',"
	  " key_pinned_ms bigint NOT NULL DEFAULT 0,"
	  " removed boolean NOT NULL DEFAULT false,"
	  " revision bigint NOT NULL);"
	  "CREATE INDEX enrollments_revision ON enrollments (revision);" },
	{ 5, "outbox trace (outbox.h)", OUTBOX_TRACE_SQL },
};

int pol_store_migrate(struct db *db, char *err, size_t errlen)
{
	return db_migrate(db, migrations, sizeof migrations / sizeof migrations[0], err, errlen);
}

/* ---- current policy ---- */

struct pol_policy *pol_current(struct pol_service *s)
{
	pthread_mutex_lock(&s->mu);
	struct pol_policy *p = s->cur;
	pol_ref(p);
	pthread_mutex_unlock(&s->mu);
	return p;
}

void pol_install(struct pol_service *s, struct pol_policy *p)
{
	struct pol_policy *old = NULL;
	struct pol_rwatch *gone = NULL;
	pthread_mutex_lock(&s->mu);
	if (s->cur == NULL || p->revision > s->cur->revision) {
		old = s->cur;
		s->cur = p;
		p = NULL;
		pthread_cond_broadcast(&s->cv);
		gone = pol_watch_notify_locked(s);
	}
	uint64_t rev = s->cur->revision;
	pthread_mutex_unlock(&s->mu);
	pol_watch_finish(gone);
	if (old != NULL)
		log_info("policy revision in force", "revision=%llu", (unsigned long long)rev);
	pol_unref(old);
	pol_unref(p);
}

int pol_store_load(struct pol_service *s, uint64_t rev, struct pol_policy **out, char *err,
		   size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char rb[24];
	int rc;
	*out = NULL;
	if ((rc = db_acquire(s->db, &c, 5000, err, errlen)) != 0)
		return rc;
	if (rev == 0)
		rc = db_q(c,
			  "SELECT revision, document, applied_by,"
			  " (extract(epoch FROM applied_at) * 1000)::bigint"
			  " FROM revisions ORDER BY revision DESC LIMIT 1",
			  0, NULL, &r, err, errlen);
	else
		rc = db_q(c,
			  "SELECT revision, document, applied_by,"
			  " (extract(epoch FROM applied_at) * 1000)::bigint"
			  " FROM revisions WHERE revision = $1::bigint",
			  1, (const char *[]){ db_i64(rb, (int64_t)rev) }, &r, err, errlen);
	db_release(s->db, c);
	if (rc != 0)
		goto out;
	if (PQntuples(r) == 0 && rev != 0) {
		rc = sw_errf(err, errlen, SW_ENOTFOUND, "no policy revision %llu",
			     (unsigned long long)rev);
		goto out;
	}
	const char *doc = PQntuples(r) ? db_text(r, 0, 1) : "";
	char cerr[512];
	rc = pol_compile(doc, strlen(doc), &s->bopts, out, cerr, sizeof cerr);
	if (rc != 0) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "stored revision %s does not compile: %s",
			     PQntuples(r) ? db_text(r, 0, 0) : "0", cerr);
		goto out;
	}
	if (PQntuples(r)) {
		(*out)->revision = (uint64_t)db_int64(r, 0, 0);
		(*out)->applied_by = strdup(db_text(r, 0, 2));
		(*out)->applied_ms = db_int64(r, 0, 3);
	}
out:
	PQclear(r);
	return rc;
}

static int latest_revision(struct pol_service *s, uint64_t *rev, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	int rc = db_acquire(s->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = db_q(c, "SELECT coalesce(max(revision), 0) FROM revisions", 0, NULL, &r, err, errlen);
	db_release(s->db, c);
	if (rc == 0)
		*rev = (uint64_t)db_int64(r, 0, 0);
	PQclear(r);
	return rc;
}

int pol_refresh(struct pol_service *s, char *err, size_t errlen)
{
	uint64_t latest = 0;
	int rc = latest_revision(s, &latest, err, errlen);
	if (rc != 0)
		return rc;
	struct pol_policy *cur = pol_current(s);
	uint64_t have = cur->revision;
	pol_unref(cur);
	if (latest <= have)
		return 0;
	struct pol_policy *p = NULL;
	if ((rc = pol_store_load(s, latest, &p, err, errlen)) != 0)
		return rc;
	pol_install(s, p);
	return 0;
}

/* ---- revision watcher ---- */

static void nap_ms(struct pol_service *s, int ms)
{
	struct pollfd pf = { .fd = s->wake[0], .events = POLLIN };
	poll(&pf, 1, ms);
}

static void *watcher_main(void *arg)
{
	struct pol_service *s = arg;
	PGconn *pg = NULL;
	int backoff = 200, failing = 0;
	int64_t next_poll = 0;
	char err[512];

	while (!atomic_load(&s->stop)) {
		if (pg == NULL || PQstatus(pg) != CONNECTION_OK) {
			if (pg != NULL)
				PQfinish(pg);
			pg = db_connect_plain(s->pg_url, s->pg_sslmode);
			PGresult *r = NULL;
			if (PQstatus(pg) == CONNECTION_OK)
				r = PQexec(pg, "LISTEN " NOTIFY_CHANNEL);
			if (r == NULL || PQresultStatus(r) != PGRES_COMMAND_OK) {
				if (!failing)
					log_warn("revision watcher cannot listen; retrying", "error=%s",
						 PQerrorMessage(pg));
				failing = 1;
				PQclear(r);
				PQfinish(pg);
				pg = NULL;
				nap_ms(s, backoff);
				backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
				continue;
			}
			PQclear(r);
			if (failing)
				log_info("revision watcher listening again", NULL);
			failing = 0;
			backoff = 200;
			next_poll = 0; /* notifications may have been missed */
		}
		int notified = 0;
		if (clock_mono_ms() < next_poll) {
			struct pollfd pf[2] = { { .fd = PQsocket(pg), .events = POLLIN },
						{ .fd = s->wake[0], .events = POLLIN } };
			int wait = (int)(next_poll - clock_mono_ms());
			if (wait > 0 && poll(pf, 2, wait) < 0 && errno != EINTR)
				nap_ms(s, 100);
			if (atomic_load(&s->stop))
				break;
			if (!PQconsumeInput(pg))
				continue; /* reconnect */
			PGnotify *n;
			while ((n = PQnotifies(pg)) != NULL) {
				notified = 1;
				PQfreemem(n);
			}
		}
		if (notified || clock_mono_ms() >= next_poll) {
			if (pol_refresh(s, err, sizeof err) != 0)
				log_warn("cannot load the latest policy revision", "error=%s", err);
			next_poll = clock_mono_ms() + POLL_MS;
		}
	}
	if (pg != NULL)
		PQfinish(pg);
	return NULL;
}

int pol_watcher_start(struct pol_service *s, char *err, size_t errlen)
{
	if (pipe2(s->wake, O_CLOEXEC | O_NONBLOCK) != 0)
		return sw_errf(err, errlen, SW_EIO, "pipe: %s", strerror(errno));
	atomic_store(&s->stop, 0);
	if (pthread_create(&s->watcher, NULL, watcher_main, s) != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the revision watcher");
	s->watcher_started = 1;
	return 0;
}

void pol_watcher_stop(struct pol_service *s)
{
	if (!s->watcher_started)
		return;
	atomic_store(&s->stop, 1);
	ssize_t w = write(s->wake[1], "x", 1);
	(void)w;
	pthread_join(s->watcher, NULL);
	close(s->wake[0]);
	close(s->wake[1]);
	s->watcher_started = 0;
}

/* ---- decisions ---- */

/* Builds a PostgreSQL text[] literal of the reasons into a new string. */
static char *pg_array(const char *const *v, size_t n)
{
	size_t cap = 3;
	for (size_t i = 0; i < n; i++)
		cap += 3 + 2 * strlen(v[i]);
	char *out = malloc(cap), *o = out;
	if (out == NULL)
		return NULL;
	*o++ = '{';
	for (size_t i = 0; i < n; i++) {
		if (i)
			*o++ = ',';
		*o++ = '"';
		for (const char *p = v[i]; *p; p++) {
			if (*p == '"' || *p == '\\')
				*o++ = '\\';
			*o++ = *p;
		}
		*o++ = '"';
	}
	*o++ = '}';
	*o = '\0';
	return out;
}

int pol_record(struct db_conn *c, const struct pol_decision *d, char *err, size_t errlen)
{
	char rev[24], res[400], joined[2048];
	int rc;
	char *arr = pg_array(d->reasons, d->nreasons);
	if (arr == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	const char *vals[12] = { d->id,
				 d->principal,
				 d->action,
				 d->kind,
				 d->app ? d->app : "",
				 d->env ? d->env : "",
				 d->name ? d->name : "",
				 d->allowed ? "true" : "false",
				 arr,
				 db_i64(rev, (int64_t)d->revision),
				 d->caller ? d->caller : "",
				 d->request_id ? d->request_id : log_request_id() };
	rc = db_q(c,
		      "INSERT INTO decisions (id, principal, action, kind, app, environment, name,"
		      " allowed, reasons, revision, caller, request_id)"
		      " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::boolean, $9::text[], $10::bigint,"
		      " $11, $12)",
		      12, vals, NULL, err, errlen);
	free(arr);
	if (rc != 0)
		return rc;
	size_t off = 0;
	joined[0] = '\0';
	for (size_t i = 0; i < d->nreasons && off + 1 < sizeof joined; i++) {
		int n = snprintf(joined + off, sizeof joined - off, "%s%s", i ? "; " : "",
				 d->reasons[i]);
		if (n < 0)
			break;
		off += (size_t)n;
	}
	pol_resource_text(d->kind, d->app, d->env, d->name, res, sizeof res);
	struct outbox_event e = { .event_id = d->id,
				  .actor = d->principal,
				  .action = d->event_action ? d->event_action : "policy.decision",
				  .resource = res,
				  .outcome = d->allowed ? SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS
							: SLIPWAY__V1__OUTCOME__OUTCOME_DENIED,
				  .request_id = d->request_id };
	outbox_detail(&e, "decision_id", d->id);
	outbox_detail(&e, "action", d->action);
	outbox_detail(&e, "allowed", d->allowed ? "true" : "false");
	outbox_detail(&e, "reasons", joined);
	outbox_detail(&e, "revision", rev);
	outbox_detail(&e, "caller", d->caller ? d->caller : "");
	/* The scope, for the auditor's search by app and environment. */
	if (d->app != NULL && d->app[0] != '\0')
		outbox_detail(&e, "app", d->app);
	if (d->env != NULL && d->env[0] != '\0')
		outbox_detail(&e, "environment", d->env);
	if (d->note != NULL)
		outbox_detail(&e, "note", d->note);
	for (size_t i = 0; i < d->nextra && i < 12; i++)
		outbox_detail(&e, d->ekeys[i], d->evals[i]);
	if ((rc = outbox_add(c, "policy", &e, err, errlen)) != 0)
		return rc;
	return d->summary != NULL ? pol_record_summary(c, d->summary, err, errlen) : 0;
}

static void rfc3339(int64_t ms, char *out, size_t len)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	char s[32];
	gmtime_r(&t, &tm);
	strftime(s, sizeof s, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out, len, "%s.%03dZ", s, (int)(ms % 1000));
}

int pol_record_summary(struct db_conn *c, const struct pol_denial_summary *s, char *err,
		       size_t errlen)
{
	char n[24], from[40], to[40], lim[24];
	snprintf(n, sizeof n, "%llu", (unsigned long long)s->suppressed);
	snprintf(lim, sizeof lim, "%u", s->per_minute);
	rfc3339(s->from_ms, from, sizeof from);
	rfc3339(s->to_ms, to, sizeof to);
	struct outbox_event e = { .actor = s->principal,
				  .action = "policy.denials_suppressed",
				  .resource = "policy",
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_DENIED };
	outbox_detail(&e, "suppressed", n);
	outbox_detail(&e, "window_start", from);
	outbox_detail(&e, "window_end", to);
	outbox_detail(&e, "limit_per_minute", lim);
	outbox_detail(&e, "note",
		      "denials of this principal past the limit were answered (denied) but not "
		      "recorded one by one");
	return outbox_add(c, "policy", &e, err, errlen);
}

struct rec_args {
	const struct pol_decision *d;
	size_t n;
	const struct pol_denial_summary *sum;
	size_t nsum;
};

static int rec_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct rec_args *a = arg;
	for (size_t i = 0; i < a->n; i++) {
		int rc = pol_record(c, &a->d[i], err, errlen);
		if (rc != 0)
			return rc;
	}
	for (size_t i = 0; i < a->nsum; i++) {
		int rc = pol_record_summary(c, &a->sum[i], err, errlen);
		if (rc != 0)
			return rc;
	}
	return 0;
}

void pol_kick(struct pol_service *s)
{
	outbox_relay_kick(s->relay);
}

int pol_record_now(struct pol_service *s, const struct pol_decision *d, char *err,
		   size_t errlen)
{
	struct rec_args a = { d, 1, NULL, 0 };
	int rc = db_tx(s->db, NULL, rec_tx, &a, err, errlen);
	if (rc == 0)
		pol_kick(s);
	return rc;
}

/* ---- the service's own callers ---- */

int pol_check_caller(struct pol_service *s, const char *caller, const char *request_id,
		     const char *action, const char *kind, const char *app, const char *env,
		     const char *name, char *err, size_t errlen)
{
	struct pol_policy *p = pol_current(s);
	struct pol_query q = { caller, action, kind, app ? app : "", env ? env : "",
			       name ? name : "", clock_wall_ms() };
	struct pol_result r;
	char reasons[16][POL_REASON_LEN], rerr[512];
	const char *rv[16];
	int rc = 0;

	pol_eval(p, &q, 0, &r);
	size_t n = pol_reasons(p, &q, &r, reasons, 16);
	for (size_t i = 0; i < n; i++)
		rv[i] = reasons[i];
	if (pol_must_audit(kind, action, r.allowed)) {
		struct pol_decision d = { .principal = q.principal, .action = action, .kind = kind,
					  .app = q.app, .env = q.env, .name = q.name,
					  .allowed = r.allowed, .nreasons = n, .reasons = rv,
					  .revision = p->revision, .caller = caller,
					  .request_id = request_id };
		rpc_new_request_id(d.id);
		if (pol_record_now(s, &d, rerr, sizeof rerr) != 0) {
			log_error("cannot record a decision", "error=%s", rerr);
			if (r.allowed) {
				rc = sw_errf(err, errlen, SW_EUNAVAIL,
					     "cannot record the decision: %s", rerr);
				goto out;
			}
		}
	}
	if (!r.allowed)
		rc = sw_errf(err, errlen, SW_EPERM, "permission denied: %s may not %s %s: %s",
			     q.principal, action, kind, n ? reasons[0] : "no rule allows it");
out:
	pol_unref(p);
	return rc;
}

/* ---- decision writer ---- */

struct pending {
	struct pending *next;
	pol_writer_done_fn done;
	void *arg;
	struct pol_decision d;
	int code;
};

struct pol_writer {
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct pending *head, **tail;
	size_t len;
	int stop;
};

/* Audits the summaries of suppressed denials that are due (limit.c): a
 * minute after a principal's first uncounted denial, on eviction, or with
 * all every open count. sum (cap entries) holds the ones a failed write
 * left (*held), retried first. Returns how many were written, or a
 * negative code. Writer thread. */
static int flush_summaries(struct pol_service *s, int all, struct pol_denial_summary *sum,
			   size_t cap, size_t *held)
{
	char err[512];
	if (s->limiter == NULL)
		return 0;
	*held += pol_limiter_due(s->limiter, clock_wall_ms(), all, sum + *held, cap - *held);
	if (*held == 0)
		return 0;
	struct rec_args a = { NULL, 0, sum, *held };
	int rc = db_tx(s->db, NULL, rec_tx, &a, err, sizeof err);
	if (rc != 0) {
		log_error("cannot record summaries of suppressed denials", "count=%zu error=%s",
			  *held, err);
		return rc;
	}
	int n = (int)*held;
	*held = 0;
	pol_kick(s);
	return n;
}

static void *writer_main(void *arg)
{
	struct pol_service *s = arg;
	struct pol_writer *w = s->writer;
	struct pol_decision *batch = calloc(WRITER_BATCH, sizeof *batch);
	struct pending **items = calloc(WRITER_BATCH, sizeof *items);
	struct pol_denial_summary *sum = calloc(WRITER_BATCH, sizeof *sum);
	size_t held = 0;
	char err[512];

	for (;;) {
		pthread_mutex_lock(&w->mu);
		/* Wake at least every second for the summaries that are due. */
		if (w->head == NULL && !w->stop) {
			struct timespec dl = clock_after(CLOCK_REALTIME, 1000);
			pthread_cond_timedwait(&w->cv, &w->mu, &dl);
		}
		if (w->head == NULL && w->stop) {
			pthread_mutex_unlock(&w->mu);
			break;
		}
		size_t n = 0;
		while (w->head != NULL && n < WRITER_BATCH && batch != NULL && items != NULL) {
			items[n] = w->head;
			w->head = w->head->next;
			w->len--;
			n++;
		}
		if (w->head == NULL)
			w->tail = &w->head;
		pthread_mutex_unlock(&w->mu);
		if (sum != NULL)
			flush_summaries(s, 0, sum, WRITER_BATCH, &held);
		if (n == 0)
			continue;

		int rc = SW_ENOMEM;
		if (batch != NULL && items != NULL) {
			for (size_t i = 0; i < n; i++)
				batch[i] = items[i]->d;
			struct rec_args a = { batch, n, NULL, 0 };
			rc = db_tx(s->db, NULL, rec_tx, &a, err, sizeof err);
		}
		if (rc == 0)
			pol_kick(s);
		else
			log_error("cannot record decisions", "count=%zu error=%s", n, err);
		for (size_t i = 0; i < n; i++) {
			struct pending *p = items[i];
			char why[600];
			if (rc != 0 && p->d.allowed) {
				snprintf(why, sizeof why, "the decision could not be recorded: %s",
					 err);
				p->done(p->arg, SW_EUNAVAIL, why);
			} else {
				p->done(p->arg, p->code, NULL); /* a denial stands even unrecorded */
			}
			free(p);
		}
	}
	/* At shutdown every open count is summarized now, a batch at a time. */
	while (sum != NULL && flush_summaries(s, 1, sum, WRITER_BATCH, &held) > 0)
		;
	free(sum);
	free(batch);
	free(items);
	return NULL;
}

int pol_writer_start(struct pol_service *s, char *err, size_t errlen)
{
	struct pol_writer *w = calloc(1, sizeof *w);
	if (w == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	pthread_mutex_init(&w->mu, NULL);
	pthread_cond_init(&w->cv, NULL);
	w->tail = &w->head;
	s->writer = w;
	if (pthread_create(&w->thread, NULL, writer_main, s) != 0) {
		s->writer = NULL;
		free(w);
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the decision writer");
	}
	return 0;
}

void pol_writer_stop(struct pol_service *s)
{
	struct pol_writer *w = s->writer;
	if (w == NULL)
		return;
	pthread_mutex_lock(&w->mu);
	w->stop = 1;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	pthread_join(w->thread, NULL);
	pthread_mutex_destroy(&w->mu);
	pthread_cond_destroy(&w->cv);
	free(w);
	s->writer = NULL;
}

int pol_writer_submit(struct pol_service *s, const struct pol_decision *d, int code,
		      pol_writer_done_fn done, void *arg)
{
	struct pol_writer *w = s->writer;
	struct pending *p = malloc(sizeof *p);
	if (p == NULL)
		return SW_ENOMEM;
	p->next = NULL;
	p->done = done;
	p->arg = arg;
	p->d = *d;
	p->code = code;
	pthread_mutex_lock(&w->mu);
	if (w->stop || w->len >= WRITER_QUEUE_MAX) {
		pthread_mutex_unlock(&w->mu);
		free(p);
		return SW_ELIMIT;
	}
	*w->tail = p;
	w->tail = &p->next;
	w->len++;
	pthread_cond_signal(&w->cv);
	pthread_mutex_unlock(&w->mu);
	return 0;
}

/* ---- apply ---- */

struct apply_args {
	struct pol_policy *next;
	uint64_t base, expected;
	const char *actor;
	uint64_t rev;
	int changed;
};

static int apply_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct apply_args *a = arg;
	PGresult *r = NULL;
	char b1[24], b2[24];
	int rc;

	/* One apply at a time across replicas. */
	if ((rc = db_q(c, "SELECT pg_advisory_xact_lock(hashtext('slipway.policy.apply'))", 0, NULL,
		       NULL, err, errlen)) != 0)
		return rc;
	if ((rc = db_q(c,
		       "SELECT revision, sha256 FROM revisions ORDER BY revision DESC LIMIT 1", 0,
		       NULL, &r, err, errlen)) != 0)
		return rc;
	uint64_t cur = PQntuples(r) ? (uint64_t)db_int64(r, 0, 0) : 0;
	int same = PQntuples(r) ? strcmp(db_text(r, 0, 1), a->next->sha256) == 0
				: strcmp(a->next->text, "{}") == 0;
	PQclear(r);
	if (a->expected != 0 && a->expected != cur)
		return sw_errf(err, errlen, SW_EPRECOND,
			       "expected revision %llu but the current revision is %llu",
			       (unsigned long long)a->expected, (unsigned long long)cur);
	if (cur != a->base)
		return sw_errf(err, errlen, SW_EPRECOND,
			       "the policy changed while this document was checked (now at "
			       "revision %llu); apply again",
			       (unsigned long long)cur);
	a->rev = cur;
	a->changed = 0;
	if (same)
		return 0;
	a->rev = cur + 1;
	a->changed = 1;
	const char *rid = log_request_id();
	const char *vals[5] = { db_i64(b1, (int64_t)a->rev), a->next->text, a->next->sha256,
				a->actor, rid };
	if ((rc = db_q(c,
		       "INSERT INTO revisions (revision, document, sha256, applied_by, request_id)"
		       " VALUES ($1::bigint, $2, $3, $4, $5)",
		       5, vals, NULL, err, errlen)) != 0)
		return rc;
	char counts[160];
	snprintf(counts, sizeof counts, "roles=%zu groups=%zu bindings=%zu guardrails=%zu approval_policies=%zu",
		 a->next->nroles, a->next->ngroups, a->next->nbindings, a->next->nguards,
		 a->next->napprovals);
	struct outbox_event e = { .actor = a->actor,
				  .action = "policy.apply",
				  .resource = "policy",
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "revision", b1);
	outbox_detail(&e, "previous_revision", db_i64(b2, (int64_t)cur));
	outbox_detail(&e, "sha256", a->next->sha256);
	outbox_detail(&e, "compiled", counts);
	if ((rc = outbox_add(c, "policy", &e, err, errlen)) != 0)
		return rc;
	return db_q(c, "SELECT pg_notify('" NOTIFY_CHANNEL "', $1)", 1, (const char *[]){ b1 },
		    NULL, err, errlen);
}

int pol_store_apply(struct pol_service *s, struct pol_policy *next, uint64_t base_rev,
		    uint64_t expected, const char *actor, uint64_t *rev, int *changed, char *err,
		    size_t errlen)
{
	struct apply_args a = { .next = next, .base = base_rev, .expected = expected,
				.actor = actor };
	int rc = db_tx(s->db, NULL, apply_tx, &a, err, errlen);
	if (rc != 0)
		return rc;
	*rev = a.rev;
	*changed = a.changed;
	if (a.changed) {
		/* Install it here at once; other replicas hear the NOTIFY. */
		next->revision = a.rev;
		next->applied_by = strdup(actor);
		next->applied_ms = clock_wall_ms();
		pol_ref(next);
		pol_install(s, next);
		pol_kick(s);
	}
	return 0;
}
