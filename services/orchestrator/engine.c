/*
 * engine.c - the driver every replica runs.
 *
 * Two threads, so that no round of deciding ever waits on another service:
 *
 *   the engine thread touches only PostgreSQL. Each round (every tick, or
 *   at once when a notification kicks it): admission (queued deployments
 *   start in priority order, FIFO within a priority, one active per app x
 *   environment, within the global cap, serialized across replicas by an
 *   advisory lock; one without a fresh "may start" from the policy service
 *   is marked to be asked instead, and waits), then each active deployment this replica owns (or whose
 *   owner stopped renewing its lease) is stepped: in one short transaction
 *   the store loads its snapshot (locking its row, SKIP LOCKED, and renewing
 *   the lease), the planner decides (plan.c, pure), and the store applies
 *   the plan; when the plan changed something that lets it go further at
 *   once (a batch started, a rollback began), it is planned again.
 *
 *   the side thread makes the remote calls, each with a deadline and never
 *   inside a transaction: secrets grants the plans asked for (pending rows
 *   in `grants`, claimed, granted, then recorded; a crash between the call
 *   and the record repeats the call with the same request id, which the
 *   secrets service answers with the grant it made), approvals of deployments waiting
 *   for them and the policy's answer again for each queued deployment
 *   admission would start now (the policy service: admission starts it only
 *   on an answer given after it asked, so a freeze that began, an approval
 *   that expired or a binding removed while it waited stops it), and the
 *   pins of each environment's
 *   releases (the artifact service). A dead peer slows only its own work:
 *   after one failed call the rest of that kind waits for the next round.
 *
 * A gap in stepping a deployment (a database outage, a frozen or crashed
 * replica) extends its deadlines by the gap (the planner's
 * PLAN_EXTEND_DEADLINES): no report could have been stored meanwhile.
 */
#include "clock.h"
#include "err.h"
#include "hash.h"
#include "log.h"
#include "orch.h"
#include "plan.h"
#include "trace.h"
#include "watch.h"

#include "slipway/v1/artifact.pb-c.h"
#include "slipway/v1/policy.pb-c.h"
#include "slipway/v1/secrets.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Remote calls from the side thread: short, so a dead peer is noticed. */
#define SIDE_CALL_MS 3000

void orch_engine_kick(struct orch *o)
{
	pthread_mutex_lock(&o->mu);
	o->kicked = 1;
	pthread_cond_signal(&o->cv);
	pthread_mutex_unlock(&o->mu);
}

static void side_kick(struct orch *o)
{
	pthread_mutex_lock(&o->mu);
	o->side_kicked = 1;
	pthread_cond_signal(&o->side_cv);
	pthread_mutex_unlock(&o->mu);
}

/* Waits on cv until kicked (*flag), stopping, or `ms` have passed. */
static void nap(struct orch *o, pthread_cond_t *cv, int *flag, int64_t ms)
{
	struct timespec dl = clock_after(CLOCK_REALTIME, ms);
	pthread_mutex_lock(&o->mu);
	while (!*flag && !atomic_load(&o->stopping))
		if (pthread_cond_timedwait(cv, &o->mu, &dl) != 0)
			break;
	*flag = 0;
	pthread_mutex_unlock(&o->mu);
}

/* ---- the engine thread: admission and steps ---- */

struct admit_tx {
	struct orch *o;
	int asked;
};

static int admit_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct admit_tx *a = arg;
	return store_admit(c, a->o, clock_wall_ms(), &a->asked, err, errlen);
}

struct step_tx {
	struct orch *o;
	const char *id;
	int again, grants, changed;
	struct plan plan;
};

static int step_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct step_tx *s = arg;
	struct orch *o = s->o;
	struct plan_deployment d;
	int skip = 0, grants = 0;
	int64_t now = clock_wall_ms();
	/* Twice the lease: a replica that renews on time never trips it. A
	 * grant must leave its agent a minute (at most half its lifetime) to
	 * fetch the secrets. */
	struct plan_opts opts = { .stall_ms = 2 * o->c.lease_ms + 1000,
				  .grant_margin_ms = o->c.grant_ttl_ms / 2 < 60000 ? o->c.grant_ttl_ms / 2
										   : 60000 };
	s->again = 0;
	s->changed = 0;
	int rc = store_load(c, o, s->id, now, &d, &skip, err, errlen);
	if (rc != 0 || skip || d.state == PLAN_D_PAUSED) {
		store_snapshot_free(&d);
		return rc;
	}
	plan_reset(&s->plan);
	if (plan_step(&d, now, &opts, &s->plan) != 0)
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	if (rc == 0)
		rc = store_apply(c, o, &d, &s->plan, now, &grants, err, errlen);
	if (rc == 0) {
		s->again = s->plan.again;
		s->grants += grants;
		for (size_t i = 0; i < s->plan.n; i++)
			s->changed |= s->plan.a[i].kind != PLAN_WAIT;
	}
	store_snapshot_free(&d);
	return rc;
}

static void step_all(struct orch *o)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[512];
	if (db_acquire(o->db, &c, 2000, err, sizeof err) != 0)
		return;
	int rc = store_steppable(c, o->replica, clock_wall_ms(), &r, err, sizeof err);
	db_release(o->db, c);
	if (rc != 0)
		return;
	struct step_tx s = { .o = o };
	for (int i = 0; i < PQntuples(r) && !atomic_load(&o->stopping); i++) {
		s.id = db_text(r, i, 0);
		/* Log lines, audit events and calls made for it carry its trace. */
		trace_enter_id(db_text(r, i, 1));
		for (int round = 0; round < 4; round++) {
			if (db_tx(o->db, NULL, step_tx, &s, err, sizeof err) != 0) {
				log_warn("step failed; will retry", "deployment=%s error=%s", s.id, err);
				break;
			}
			if (s.changed)
				orch_watch_notify(o, s.id); /* watchers see it now, not within a second */
			if (!s.again)
				break;
		}
	}
	trace_set_current(NULL);
	plan_free(&s.plan);
	PQclear(r);
	if (s.grants > 0)
		side_kick(o);
}

static void *engine_main(void *arg)
{
	struct orch *o = arg;
	char err[512];
	while (!atomic_load(&o->stopping)) {
		struct admit_tx a = { o, 0 };
		if (db_tx(o->db, NULL, admit_tx, &a, err, sizeof err) != 0)
			log_warn("admission failed", "error=%s", err);
		else if (a.asked > 0)
			side_kick(o); /* policy is asked before they start */
		step_all(o);
		nap(o, &o->cv, &o->kicked, o->c.tick_ms);
	}
	return NULL;
}

/* ---- the side thread: remote calls ---- */

/* The policy service's verdict on row i of a store_pending_approvals-shaped
 * result (reason filled), or a negative code. */
static int evaluate_row(struct orch *o, const PGresult *r, int i, char *reason, size_t rlen,
			char *err, size_t errlen)
{
	uint8_t pbuf[4096];
	/* The policy call, and the verdict's audit event, under its trace;
	 * the caller clears it after recording the verdict. */
	trace_enter_id(db_text(r, i, 10));
	int plen = db_bytea(r, i, 9, pbuf, sizeof pbuf);
	Slipway__V1__Provenance *prov =
		plen > 0 ? slipway__v1__provenance__unpack(NULL, (size_t)plen, pbuf) : NULL;
	int v = orch_evaluate(o, NULL, db_text(r, i, 0), db_text(r, i, 1), db_text(r, i, 2),
			      db_text(r, i, 3), db_text(r, i, 4), db_text(r, i, 5), prov,
			      db_bool(r, i, 6), db_text(r, i, 7), db_int64(r, i, 8), reason, rlen, err,
			      errlen);
	if (prov)
		slipway__v1__provenance__free_unpacked(prov, NULL);
	return v;
}

struct approval_tx {
	struct orch *o;
	const char *id, *reason;
	int verdict;
};

static int approval_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct approval_tx *t = arg;
	return store_approval_verdict(c, t->o, t->id, t->verdict, t->reason, clock_wall_ms(), err,
				      errlen);
}

/* Deployments waiting for approval are evaluated again (at most once a
 * second each). The policy service down: they wait (fail closed). */
static void evaluate_pending(struct orch *o)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[512];
	if (db_acquire(o->db, &c, 2000, err, sizeof err) != 0)
		return;
	int rc = store_pending_approvals(c, clock_wall_ms(), 20, &r, err, sizeof err);
	db_release(o->db, c);
	if (rc != 0)
		return;
	for (int i = 0; i < PQntuples(r) && !atomic_load(&o->stopping); i++) {
		const char *id = db_text(r, i, 0);
		char reason[1024] = "";
		int v = evaluate_row(o, r, i, reason, sizeof reason, err, sizeof err);
		struct approval_tx t = { o, id, reason, v };
		if (db_tx(o->db, NULL, approval_tx, &t, err, sizeof err) != 0)
			log_warn("approval not recorded; will retry", "deployment=%s error=%s", id, err);
		trace_set_current(NULL);
		if (v < 0)
			break; /* the policy service is unavailable: the rest waits too */
	}
	PQclear(r);
}

struct start_tx {
	struct orch *o;
	const char *id, *reason;
	int64_t check_ms;
	int verdict;
};

static int start_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct start_tx *t = arg;
	return store_start_verdict(c, t->o, t->id, t->check_ms, t->verdict, t->reason,
				   clock_wall_ms(), err, errlen);
}

/* Queued deployments that admission would start now are evaluated again:
 * the policy may have changed since they were queued (a freeze began, an
 * approval expired or was withdrawn, a binding was removed). The policy
 * service down: they wait (fail closed). */
static void evaluate_starts(struct orch *o)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[512];
	int decided = 0;
	if (db_acquire(o->db, &c, 2000, err, sizeof err) != 0)
		return;
	int rc = store_start_checks(c, clock_wall_ms(), 20, &r, err, sizeof err);
	db_release(o->db, c);
	if (rc != 0)
		return;
	for (int i = 0; i < PQntuples(r) && !atomic_load(&o->stopping); i++) {
		const char *id = db_text(r, i, 0);
		char reason[1024] = "";
		int v = evaluate_row(o, r, i, reason, sizeof reason, err, sizeof err);
		if (v < 0)
			log_warn("cannot ask the policy before a start; will retry", "deployment=%s error=%s",
				 id, err);
		struct start_tx t = { o, id, reason, db_int64(r, i, 11), v };
		if (db_tx(o->db, NULL, start_tx, &t, err, sizeof err) != 0)
			log_warn("start verdict not recorded; will retry", "deployment=%s error=%s", id,
				 err);
		else if (v >= 0)
			decided++;
		trace_set_current(NULL);
		if (v < 0)
			break; /* the policy service is unavailable: the rest waits too */
	}
	PQclear(r);
	if (decided > 0)
		orch_engine_kick(o);
}

/* The secrets in a deployment's scope, listed once per round. */
struct refs {
	char app[64], env[64];
	ProtobufCMessage *msg;
	Slipway__V1__SecretRef **refs;
	size_t n;
};

static void refs_free(struct refs *f)
{
	for (size_t i = 0; i < f->n; i++)
		free(f->refs[i]);
	free(f->refs);
	if (f->msg)
		protobuf_c_message_free_unpacked(f->msg, NULL);
	memset(f, 0, sizeof *f);
}

static int refs_load(struct orch *o, struct refs *f, const char *app, const char *env, char *err,
		     size_t errlen)
{
	if (f->msg != NULL && strcmp(f->app, app) == 0 && strcmp(f->env, env) == 0)
		return 0;
	refs_free(f);
	Slipway__V1__SecretScope scope = SLIPWAY__V1__SECRET_SCOPE__INIT;
	Slipway__V1__ListSecretsRequest req = SLIPWAY__V1__LIST_SECRETS_REQUEST__INIT;
	scope.app = (char *)app;
	scope.environment = (char *)env;
	req.scope = &scope;
	req.page_size = 1000;
	struct rpc_call_opts co = { .timeout_ms = SIDE_CALL_MS };
	int rc = rpc_call(o->secrets, &slipway__v1__secrets__descriptor, "ListSecrets", &req.base,
			  &f->msg, &co, err, errlen);
	if (rc != 0)
		return rc;
	Slipway__V1__ListSecretsResponse *r = (void *)f->msg;
	f->refs = calloc(r->n_secrets ? r->n_secrets : 1, sizeof *f->refs);
	if (f->refs == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	for (size_t i = 0; i < r->n_secrets; i++) {
		Slipway__V1__SecretRef *ref = malloc(sizeof *ref);
		if (ref == NULL)
			return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		slipway__v1__secret_ref__init(ref);
		ref->name = r->secrets[i]->name;
		ref->scope = r->secrets[i]->scope;
		ref->version = r->secrets[i]->version;
		f->refs[f->n++] = ref;
	}
	snprintf(f->app, sizeof f->app, "%s", app);
	snprintf(f->env, sizeof f->env, "%s", env);
	return 0;
}

struct grant_rec {
	struct orch *o;
	const char *deployment, *agent, *why;
	int64_t requested_ms, expires_ms, next_try_ms;
	int ok, refused;
};

static int grant_rec_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct grant_rec *g = arg;
	if (g->ok)
		return store_grant_done(c, g->deployment, g->agent, g->requested_ms, g->expires_ms, err,
					errlen);
	if (g->refused)
		return store_grant_refused(c, g->o, g->deployment, g->agent, g->next_try_ms, g->why,
					   err, errlen);
	return store_grant_failed(c, g->deployment, g->agent, g->next_try_ms, g->why, err, errlen);
}

/* Performs the grants the plans asked for. Returns how many were made. */
static int make_grants(struct orch *o)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[512];
	struct refs refs = { 0 };
	int made = 0, down = 0;
	if (o->secrets == NULL)
		return 0;
	if (db_acquire(o->db, &c, 2000, err, sizeof err) != 0)
		return 0;
	int rc = store_grants_claim(c, clock_wall_ms(), 50, &r, err, sizeof err);
	db_release(o->db, c);
	if (rc != 0)
		return 0;
	for (int i = 0; i < PQntuples(r) && !atomic_load(&o->stopping); i++) {
		const char *dep = db_text(r, i, 0), *agent = db_text(r, i, 1);
		int64_t now = clock_wall_ms();
		uint8_t key[32];
		char gerr[256] = "";
		struct grant_rec g = { o, dep, agent, gerr, db_int64(r, i, 5), 0, 0, 0, 0 };
		int attempts = (int)db_int64(r, i, 6);
		int kl = db_bytea(r, i, 4, key, sizeof key);
		trace_enter_id(db_text(r, i, 7)); /* the grant is for its deployment */
		if (down) {
			snprintf(gerr, sizeof gerr, "the secrets service is unavailable");
		} else if (kl != 32) {
			snprintf(gerr, sizeof gerr, "agent %s has no sealing key", agent);
		} else if (refs_load(o, &refs, db_text(r, i, 2), db_text(r, i, 3), gerr, sizeof gerr) == 0) {
			Slipway__V1__CreateGrantRequest req = SLIPWAY__V1__CREATE_GRANT_REQUEST__INIT;
			req.deployment_id = (char *)dep;
			req.agent = (char *)agent;
			req.agent_public_key.data = key;
			req.agent_public_key.len = 32;
			req.n_secrets = refs.n;
			req.secrets = refs.refs;
			req.expires_unix_ms = now + o->c.grant_ttl_ms;
			req.app = refs.app;
			req.environment = refs.env;
			/* The pending row's identity: a repeat after a crash or a
			 * lost answer names the same grant instead of a second one. */
			char rid[128], ah[65];
			uint8_t h[32];
			hash_sha256(agent, strlen(agent), NULL, 0, NULL, 0, h);
			hash_hex(h, 8, ah);
			snprintf(rid, sizeof rid, "%.60s:%lld:%s", dep, (long long)g.requested_ms, ah);
			req.request_id = rid;
			ProtobufCMessage *m = NULL;
			struct rpc_call_opts co = { .timeout_ms = SIDE_CALL_MS };
			int grc = rpc_call(o->secrets, &slipway__v1__secrets__descriptor, "CreateGrant",
					   &req.base, &m, &co, gerr, sizeof gerr);
			if (grc == 0) {
				g.ok = 1;
				g.expires_ms = ((Slipway__V1__CreateGrantResponse *)m)->expires_unix_ms;
				made++;
			} else if (grc == SW_EPERM || grc == SW_EPRECOND) {
				/* An answer, not an outage: the grant is refused (the
				 * orchestrator may no longer grant these secrets here, or
				 * a version was disabled). The deployment stops. */
				g.refused = 1;
			} else {
				down = 1;
			}
			if (m != NULL)
				protobuf_c_message_free_unpacked(m, NULL);
		} else {
			down = 1;
		}
		if (!g.ok) {
			/* Back off: 1, 2, 4 ... 15 s. */
			int64_t wait = 1000;
			for (int k = 1; k < attempts && wait < 15000; k++)
				wait *= 2;
			g.next_try_ms = now + (wait > 15000 ? 15000 : wait);
			if (g.refused)
				log_warn("secrets grant refused; the deployment stops (a rollback retries)",
					 "deployment=%s agent=%s error=%s", dep, agent, gerr);
			else if (!down || i == 0)
				log_warn("secrets grant failed; will retry", "deployment=%s agent=%s error=%s",
					 dep, agent, gerr);
		}
		if (db_tx(o->db, NULL, grant_rec_tx, &g, err, sizeof err) != 0)
			log_warn("grant not recorded; will be asked again", "deployment=%s agent=%s error=%s",
				 dep, agent, err);
		else if (g.refused)
			orch_engine_kick(o); /* it may have ended: the queue moves */
		trace_set_current(NULL);
	}
	refs_free(&refs);
	PQclear(r);
	if (made > 0)
		orch_engine_kick(o);
	return made;
}

struct pins_tx {
	const char *app, *env, *cur, *good;
};

static int pins_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct pins_tx *p = arg;
	return store_pins_synced(c, p->app, p->env, p->cur, p->good, err, errlen);
}

/* The artifact service learns each environment's current and known-good
 * digests (garbage collection keeps them). */
static void sync_pins(struct orch *o)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[256];
	if (db_acquire(o->db, &c, 2000, err, sizeof err) != 0)
		return;
	int rc = store_pins_unsynced(c, &r, err, sizeof err);
	db_release(o->db, c);
	if (rc != 0)
		return;
	for (int i = 0; i < PQntuples(r); i++) {
		Slipway__V1__SetPinsRequest req = SLIPWAY__V1__SET_PINS_REQUEST__INIT;
		req.app = (char *)db_text(r, i, 0);
		req.environment = (char *)db_text(r, i, 1);
		req.current_digest = (char *)db_text(r, i, 2);
		req.last_good_digest = (char *)db_text(r, i, 3);
		ProtobufCMessage *m = NULL;
		struct rpc_call_opts co = { .timeout_ms = SIDE_CALL_MS };
		if (rpc_call(o->artifact, &slipway__v1__artifact__descriptor, "SetPins", &req.base, &m,
			     &co, err, sizeof err) != 0) {
			log_warn("pins not synced; will retry", "app=%s environment=%s error=%s", req.app,
				 req.environment, err);
			break; /* the artifact service is unavailable: the rest waits */
		}
		protobuf_c_message_free_unpacked(m, NULL);
		struct pins_tx p = { req.app, req.environment, req.current_digest, req.last_good_digest };
		if (db_tx(o->db, NULL, pins_tx, &p, err, sizeof err) != 0)
			break;
	}
	PQclear(r);
}

static void *side_main(void *arg)
{
	struct orch *o = arg;
	int64_t last_eval = 0, last_pins = 0, last_enroll = 0;
	while (!atomic_load(&o->stopping)) {
		int64_t ms = clock_wall_ms();
		make_grants(o);
		evaluate_starts(o); /* a deployment about to start waits on it: every round */
		if (ms - last_enroll >= 1000) {
			orch_enrollments_follow(o);
			last_enroll = ms;
		}
		if (ms - last_eval >= 250) {
			evaluate_pending(o);
			last_eval = ms;
		}
		if (ms - last_pins >= 1000) {
			sync_pins(o);
			last_pins = ms;
		}
		nap(o, &o->side_cv, &o->side_kicked, o->c.tick_ms);
	}
	return NULL;
}

int orch_engine_start(struct orch *o, char *err, size_t errlen)
{
	pthread_cond_init(&o->side_cv, NULL);
	if (pthread_create(&o->engine, NULL, engine_main, o) != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the engine");
	if (pthread_create(&o->side, NULL, side_main, o) != 0) {
		atomic_store(&o->stopping, 1);
		orch_engine_kick(o);
		pthread_join(o->engine, NULL);
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the engine's side thread");
	}
	return 0;
}

void orch_engine_stop(struct orch *o)
{
	atomic_store(&o->stopping, 1);
	orch_engine_kick(o);
	side_kick(o);
	pthread_join(o->engine, NULL);
	pthread_join(o->side, NULL);
	pthread_cond_destroy(&o->side_cv);
}
