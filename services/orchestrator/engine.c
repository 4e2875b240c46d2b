/*
 * engine.c - the scheduler every replica runs.
 *
 * Each round (every tick, or at once when kicked by a notification):
 *
 *   1. approvals: deployments waiting for approval are re-evaluated by the
 *      policy service (at most once a second each);
 *   2. admission: queued deployments start in priority order, FIFO within a
 *      priority, one active per app x environment, within the global cap
 *      (serialized across replicas by an advisory lock);
 *   3. stepping: each active deployment is stepped in its own transaction
 *      by the replica holding its lease; a lease expires when its owner
 *      stops renewing it (crash) and another replica takes the deployment
 *      over where the database says it is;
 *   4. pins: the artifact service learns each environment's current and
 *      last known-good digests (for garbage collection).
 *
 * Stepping a rolling deployment: a batch is dispatched (no more than
 * max_unavailable targets in flight), the next batch starts only when every
 * target of this one is done and no more targets failed than the policy
 * tolerates (after an optional pause), a batch that misses its progress
 * deadline fails its unfinished targets, and too many failures trigger the
 * failure action: rollback (every touched target back to the
 * environment's last known-good release, all at once), pause, or abort.
 */
#include "clock.h"
#include "err.h"
#include "log.h"
#include "orch.h"
#include "spiffe.h"

#include "slipway/v1/artifact.pb-c.h"
#include "slipway/v1/policy.pb-c.h"
#include "slipway/v1/secrets.pb-c.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int orch_timeline(struct db_conn *c, const char *id, const char *event, const char *detail,
		  char *err, size_t errlen)
{
	char now[24];
	return db_q(c, "INSERT INTO timeline (deployment_id, time_ms, event, detail) VALUES ($1, $2, $3, $4)",
		    4, (const char *[]){ id, db_i64(now, clock_wall_ms()), event, detail ? detail : "" },
		    NULL, err, errlen);
}

void orch_engine_kick(struct orch *o)
{
	pthread_mutex_lock(&o->mu);
	o->kicked = 1;
	pthread_cond_signal(&o->cv);
	pthread_mutex_unlock(&o->mu);
}

static void resource(char *out, size_t len, const char *id)
{
	snprintf(out, len, "deployment/%s", id);
}

/* ---- 1. approvals ---- */

static void evaluate_pending(struct orch *o)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[512], now[24];
	int64_t ms = clock_wall_ms();
	if (db_acquire(o->db, &c, 2000, err, sizeof err) != 0)
		return;
	int rc = db_q(c,
		      "SELECT id, app, environment, version, digest, requester, break_glass,"
		      " break_glass_reason, created_ms, provenance FROM deployments"
		      " WHERE state = 1 AND next_eval_ms <= $1 ORDER BY queue_seq LIMIT 20",
		      1, (const char *[]){ db_i64(now, ms) }, &r, err, sizeof err);
	db_release(o->db, c);
	if (rc != 0)
		return;
	for (int i = 0; i < PQntuples(r); i++) {
		const char *id = db_text(r, i, 0);
		uint8_t pbuf[4096];
		int plen = db_bytea(r, i, 9, pbuf, sizeof pbuf);
		Slipway__V1__Provenance *prov =
			plen > 0 ? slipway__v1__provenance__unpack(NULL, (size_t)plen, pbuf) : NULL;
		char reason[1024];
		int v = orch_evaluate(o, NULL, id, db_text(r, i, 1), db_text(r, i, 2), db_text(r, i, 3),
				      db_text(r, i, 4), db_text(r, i, 5), prov, db_bool(r, i, 6),
				      db_text(r, i, 7), db_int64(r, i, 8), reason, sizeof reason, err,
				      sizeof err);
		if (prov)
			slipway__v1__provenance__free_unpacked(prov, NULL);
		if (db_acquire(o->db, &c, 2000, err, sizeof err) != 0)
			break;
		char next[24], res[200];
		db_i64(next, clock_wall_ms() + 1000);
		resource(res, sizeof res, id);
		db_q(c, "BEGIN", 0, NULL, NULL, err, sizeof err);
		if (v < 0) {
			rc = db_q(c, "UPDATE deployments SET next_eval_ms = $2 WHERE id = $1 AND state = 1",
				  2, (const char *[]){ id, next }, NULL, err, sizeof err);
		} else if (v == SLIPWAY__V1__VERDICT__VERDICT_ALLOWED) {
			PGresult *u = NULL;
			rc = db_q(c,
				  "UPDATE deployments SET state = 2, reason = '' WHERE id = $1 AND state = 1"
				  " RETURNING id",
				  1, (const char *[]){ id }, &u, err, sizeof err);
			if (rc == 0 && PQntuples(u) == 1) {
				rc = orch_timeline(c, id, "approved", reason, err, sizeof err);
				if (rc == 0)
					rc = orch_timeline(c, id, "queued", "", err, sizeof err);
				if (rc == 0)
					rc = orch_audit(o, c, o->self_id, "deploy.approved", res,
							SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS, "policy", reason,
							NULL, NULL, err, sizeof err);
			}
			PQclear(u);
		} else if (v == SLIPWAY__V1__VERDICT__VERDICT_DENIED) {
			PGresult *u = NULL;
			rc = db_q(c,
				  "UPDATE deployments SET state = 6, reason = $2, finished_ms = $3"
				  " WHERE id = $1 AND state = 1 RETURNING id",
				  3, (const char *[]){ id, reason, db_i64(now, clock_wall_ms()) }, &u, err,
				  sizeof err);
			if (rc == 0 && PQntuples(u) == 1) {
				rc = db_q(c, "UPDATE targets SET state = 6, message = 'denied' WHERE deployment_id = $1",
					  1, (const char *[]){ id }, NULL, err, sizeof err);
				if (rc == 0)
					rc = orch_timeline(c, id, "denied", reason, err, sizeof err);
				if (rc == 0)
					rc = orch_audit(o, c, o->self_id, "deploy.denied", res,
							SLIPWAY__V1__OUTCOME__OUTCOME_DENIED, "policy", reason,
							NULL, NULL, err, sizeof err);
			}
			PQclear(u);
		} else {
			rc = db_q(c,
				  "UPDATE deployments SET reason = $2, next_eval_ms = $3 WHERE id = $1"
				  " AND state = 1",
				  3, (const char *[]){ id, reason, next }, NULL, err, sizeof err);
		}
		db_q(c, rc == 0 ? "COMMIT" : "ROLLBACK", 0, NULL, NULL, err, sizeof err);
		db_release(o->db, c);
	}
	PQclear(r);
}

/* ---- 2. admission ---- */

static int admit_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct orch *o = arg;
	PGresult *r = NULL;
	char now[24], lease[24];
	int64_t ms = clock_wall_ms();
	int rc = db_q(c, "SELECT pg_advisory_xact_lock(hashtext('slipway.orchestrator.admission'))",
		      0, NULL, NULL, err, errlen);
	if (rc != 0)
		return rc;
	if ((rc = db_q(c, "SELECT count(*) FROM deployments WHERE state IN (3, 4, 8)", 0, NULL, &r,
		       err, errlen)) != 0)
		return rc;
	int64_t running = db_int64(r, 0, 0);
	PQclear(r);
	r = NULL;
	if (running >= o->c.max_running)
		return 0;
	if ((rc = db_q(c,
		       "SELECT d.id, d.app, d.environment FROM deployments d WHERE d.state = 2"
		       " AND NOT EXISTS (SELECT 1 FROM deployments a WHERE a.app = d.app"
		       " AND a.environment = d.environment AND a.state IN (3, 4, 8))"
		       " ORDER BY d.priority DESC, d.queue_seq LIMIT 200",
		       0, NULL, &r, err, errlen)) != 0)
		return rc;
	db_i64(now, ms);
	db_i64(lease, ms + o->c.lease_ms);
	for (int i = 0; i < PQntuples(r) && running < o->c.max_running; i++) {
		const char *id = db_text(r, i, 0);
		/* FIFO within an environment: only its first queued deployment. */
		int seen = 0;
		for (int k = 0; k < i; k++)
			if (strcmp(db_text(r, k, 1), db_text(r, i, 1)) == 0 &&
			    strcmp(db_text(r, k, 2), db_text(r, i, 2)) == 0)
				seen = 1;
		if (seen)
			continue;
		rc = db_q(c,
			  "UPDATE deployments SET state = 3, started_ms = $2, current_batch = 0,"
			  " lease_owner = $3, lease_expires_ms = $4, lease_gen = lease_gen + 1,"
			  " reason = '' WHERE id = $1 AND state = 2",
			  4, (const char *[]){ id, now, o->replica, lease }, NULL, err, errlen);
		if (rc == 0)
			rc = orch_timeline(c, id, "started", o->replica, err, errlen);
		char res[200];
		resource(res, sizeof res, id);
		if (rc == 0)
			rc = orch_audit(o, c, o->self_id, "deploy.start", res,
					SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS, "replica", o->replica, NULL,
					NULL, err, errlen);
		if (rc != 0)
			break;
		running++;
	}
	PQclear(r);
	return rc;
}

/* ---- 3. stepping ---- */

struct target {
	char agent[SPIFFE_ID_MAX + 1];
	int batch, phase, state, attempts, touched, granted;
	int64_t next_attempt_ms, dispatched_ms, updated_ms;
	int64_t gen; /* the generation dispatch() took for it (0: none) */
};

struct dep {
	char id[ORCH_ID_MAX];
	char app[64], env[64], version[130], digest[80], rb_version[130], rb_digest[80];
	int state, is_rollback, has_secrets;
	int current_batch, total_batches;
	int64_t batch_started_ms, batch_done_ms, rollback_started_ms, started_ms;
	char lease_owner[64];
	int64_t lease_expires_ms;
	/* strategy and failure policy */
	int max_unavailable;
	int64_t pause_ms;
	int canary, manual_promotion; /* a canary: batch 1 bakes for bake_ms */
	int64_t bake_ms;
	int action, max_failed, max_failed_pct;
	int64_t deadline_ms;
	struct target *t;
	int nt;
	/* secrets to grant, listed once per step */
	Slipway__V1__SecretRef **refs;
	size_t nrefs;
	int refs_loaded;
	ProtobufCMessage *refs_msg;
};

static int load(struct db_conn *c, const char *id, struct orch *o, struct dep *d, int *skip,
		char *err, size_t errlen)
{
	PGresult *r = NULL;
	char now[24];
	int64_t ms = clock_wall_ms();
	*skip = 0;
	int rc = db_q(c,
		      "SELECT id, app, environment, version, digest, rollback_version, rollback_digest,"
		      " state, is_rollback, has_secrets, current_batch, total_batches,"
		      " batch_started_ms, batch_done_ms, rollback_started_ms, started_ms, lease_owner,"
		      " lease_expires_ms, strategy::text, failure::text FROM deployments"
		      " WHERE id = $1 FOR UPDATE SKIP LOCKED",
		      1, (const char *[]){ id }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) != 1) {
		PQclear(r);
		*skip = 1; /* another replica is stepping it right now */
		return 0;
	}
	snprintf(d->id, sizeof d->id, "%s", db_text(r, 0, 0));
	snprintf(d->app, sizeof d->app, "%s", db_text(r, 0, 1));
	snprintf(d->env, sizeof d->env, "%s", db_text(r, 0, 2));
	snprintf(d->version, sizeof d->version, "%s", db_text(r, 0, 3));
	snprintf(d->digest, sizeof d->digest, "%s", db_text(r, 0, 4));
	snprintf(d->rb_version, sizeof d->rb_version, "%s", db_text(r, 0, 5));
	snprintf(d->rb_digest, sizeof d->rb_digest, "%s", db_text(r, 0, 6));
	d->state = (int)db_int64(r, 0, 7);
	d->is_rollback = db_bool(r, 0, 8);
	d->has_secrets = db_bool(r, 0, 9);
	d->current_batch = (int)db_int64(r, 0, 10);
	d->total_batches = (int)db_int64(r, 0, 11);
	d->batch_started_ms = db_int64(r, 0, 12);
	d->batch_done_ms = db_int64(r, 0, 13);
	d->rollback_started_ms = db_int64(r, 0, 14);
	d->started_ms = db_int64(r, 0, 15);
	snprintf(d->lease_owner, sizeof d->lease_owner, "%s", db_text(r, 0, 16));
	d->lease_expires_ms = db_int64(r, 0, 17);
	json_error_t je;
	json_t *s = json_loads(db_text(r, 0, 18), 0, &je), *f = json_loads(db_text(r, 0, 19), 0, &je);
	d->max_unavailable = (int)json_integer_value(json_object_get(s, "max_unavailable"));
	d->pause_ms = json_integer_value(json_object_get(s, "pause_ms"));
	const char *kind = json_string_value(json_object_get(s, "kind"));
	d->canary = kind != NULL && strcmp(kind, "canary") == 0;
	d->bake_ms = json_integer_value(json_object_get(s, "bake_ms"));
	d->manual_promotion = json_is_true(json_object_get(s, "manual_promotion"));
	d->action = (int)json_integer_value(json_object_get(f, "action"));
	d->max_failed = (int)json_integer_value(json_object_get(f, "max_failed"));
	d->max_failed_pct = (int)json_integer_value(json_object_get(f, "max_failed_percent"));
	d->deadline_ms = json_integer_value(json_object_get(f, "progress_deadline_ms"));
	if (d->deadline_ms <= 0)
		d->deadline_ms = 300000;
	json_decref(s);
	json_decref(f);
	PQclear(r);
	r = NULL;
	if (d->state != OS_RUNNING && d->state != OS_PAUSED && d->state != OS_ROLLING_BACK) {
		*skip = 1;
		return 0;
	}
	/* Leases: step only what we own, or what its owner stopped renewing. */
	if (strcmp(d->lease_owner, o->replica) != 0 && d->lease_expires_ms >= ms) {
		*skip = 1;
		return 0;
	}
	char lease[24];
	db_i64(now, ms);
	db_i64(lease, ms + o->c.lease_ms);
	if (strcmp(d->lease_owner, o->replica) != 0) {
		rc = db_q(c,
			  "UPDATE deployments SET lease_owner = $2, lease_expires_ms = $3,"
			  " lease_gen = lease_gen + 1 WHERE id = $1",
			  3, (const char *[]){ id, o->replica, lease }, NULL, err, errlen);
		if (rc == 0 && d->lease_owner[0]) {
			char detail[200];
			snprintf(detail, sizeof detail, "%s took over from %s (lease expired)",
				 o->replica, d->lease_owner);
			rc = orch_timeline(c, id, "taken over", detail, err, errlen);
			log_info("took over a deployment", "deployment=%s from=%s", id, d->lease_owner);
		}
	} else {
		rc = db_q(c, "UPDATE deployments SET lease_expires_ms = $2 WHERE id = $1", 2,
			  (const char *[]){ id, lease }, NULL, err, errlen);
	}
	if (rc != 0)
		return rc;
	rc = db_q(c,
		  "SELECT agent_id, batch, phase, state, attempts, touched, granted, next_attempt_ms,"
		  " dispatched_ms, updated_ms FROM targets WHERE deployment_id = $1 ORDER BY batch, agent_id",
		  1, (const char *[]){ id }, &r, err, errlen);
	if (rc != 0)
		return rc;
	d->nt = PQntuples(r);
	d->t = calloc((size_t)(d->nt ? d->nt : 1), sizeof *d->t);
	if (d->t == NULL) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	for (int i = 0; i < d->nt; i++) {
		struct target *t = &d->t[i];
		snprintf(t->agent, sizeof t->agent, "%s", db_text(r, i, 0));
		t->batch = (int)db_int64(r, i, 1);
		t->phase = (int)db_int64(r, i, 2);
		t->state = (int)db_int64(r, i, 3);
		t->attempts = (int)db_int64(r, i, 4);
		t->touched = db_bool(r, i, 5);
		t->granted = db_bool(r, i, 6);
		t->next_attempt_ms = db_int64(r, i, 7);
		t->dispatched_ms = db_int64(r, i, 8);
		t->updated_ms = db_int64(r, i, 9);
	}
	PQclear(r);
	return 0;
}

static void dep_free(struct dep *d)
{
	free(d->t);
	if (d->refs_msg)
		protobuf_c_message_free_unpacked(d->refs_msg, NULL);
	d->t = NULL;
	d->refs_msg = NULL;
}

/* Lists the secrets in the deployment's scope once per step. */
static int load_refs(struct orch *o, struct dep *d, char *err, size_t errlen)
{
	if (d->refs_loaded)
		return 0;
	Slipway__V1__SecretScope scope = SLIPWAY__V1__SECRET_SCOPE__INIT;
	Slipway__V1__ListSecretsRequest req = SLIPWAY__V1__LIST_SECRETS_REQUEST__INIT;
	scope.app = d->app;
	scope.environment = d->env;
	req.scope = &scope;
	req.page_size = 1000;
	struct rpc_call_opts co = { .timeout_ms = 5000 };
	int rc = rpc_call(o->secrets, &slipway__v1__secrets__descriptor, "ListSecrets", &req.base,
			  &d->refs_msg, &co, err, errlen);
	if (rc != 0)
		return rc;
	Slipway__V1__ListSecretsResponse *r = (void *)d->refs_msg;
	d->refs = calloc(r->n_secrets ? r->n_secrets : 1, sizeof *d->refs);
	if (d->refs == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	for (size_t i = 0; i < r->n_secrets; i++) {
		Slipway__V1__SecretRef *ref = malloc(sizeof *ref);
		if (ref == NULL)
			return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		slipway__v1__secret_ref__init(ref);
		ref->name = r->secrets[i]->name;
		ref->scope = r->secrets[i]->scope;
		ref->version = r->secrets[i]->version;
		d->refs[d->nrefs++] = ref;
	}
	d->refs_loaded = 1;
	return 0;
}

static void refs_free(struct dep *d)
{
	for (size_t i = 0; i < d->nrefs; i++)
		free(d->refs[i]);
	free(d->refs);
	d->refs = NULL;
	d->nrefs = 0;
}

static int grant(struct orch *o, struct db_conn *c, struct dep *d, const char *agent, char *err,
		 size_t errlen)
{
	PGresult *r = NULL;
	int rc = db_q(c, "SELECT seal_key FROM agents WHERE id = $1", 1, (const char *[]){ agent }, &r,
		      err, errlen);
	if (rc != 0)
		return rc;
	uint8_t key[32];
	int kl = db_bytea(r, 0, 0, key, sizeof key);
	PQclear(r);
	if (kl != 32)
		return sw_errf(err, errlen, SW_EPRECOND, "agent %s has no sealing key", agent);
	if ((rc = load_refs(o, d, err, errlen)) != 0)
		return rc;
	Slipway__V1__CreateGrantRequest req = SLIPWAY__V1__CREATE_GRANT_REQUEST__INIT;
	req.deployment_id = d->id;
	req.agent = (char *)agent;
	req.agent_public_key.data = key;
	req.agent_public_key.len = 32;
	req.n_secrets = d->nrefs;
	req.secrets = d->refs;
	req.expires_unix_ms = clock_wall_ms() + o->c.grant_ttl_ms;
	req.app = d->app;
	req.environment = d->env;
	ProtobufCMessage *m = NULL;
	struct rpc_call_opts co = { .timeout_ms = 5000 };
	rc = rpc_call(o->secrets, &slipway__v1__secrets__descriptor, "CreateGrant", &req.base, &m, &co,
		      err, errlen);
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}

static int cmp_target_agent(const void *a, const void *b)
{
	const struct target *x = *(struct target *const *)a, *y = *(struct target *const *)b;
	return strcmp(x->agent, y->agent);
}

static int cmp_agent_target(const void *key, const void *elem)
{
	return strcmp(key, (*(struct target *const *)elem)->agent);
}

/*
 * Sends targets ts[0..n) (PENDING targets of d) their tasks with a few
 * statements whatever n is, since a rollback dispatches every touched
 * target at once: the agents' rows are locked in id order (the heartbeat
 * flusher locks them in the same order, so the two never deadlock), each
 * agent's next fencing generation is taken, the target rows are updated in
 * one statement and every agent is notified at commit. A target whose agent
 * is lost fails; one whose secrets grant cannot be made yet is tried again
 * shortly. Updates the targets in memory; sorts ts by agent.
 */
static int dispatch(struct orch *o, struct db_conn *c, struct dep *d, struct target **ts, int n,
		    char *err, size_t errlen)
{
	PGresult *r = NULL;
	char *sql = NULL, now[24], next[24], head[320], tail[160];
	const char **vals = NULL;
	char (*gens)[24] = NULL;
	struct target **go = NULL; /* the ones dispatched now */
	int rc = 0, m = 0;
	int64_t ms = clock_wall_ms();
	if (n <= 0)
		return 0;
	db_i64(now, ms);
	qsort(ts, (size_t)n, sizeof *ts, cmp_target_agent);
	vals = calloc((size_t)n * 3 + 2, sizeof *vals);
	gens = calloc((size_t)n, sizeof *gens);
	go = calloc((size_t)n, sizeof *go);
	if (vals == NULL || gens == NULL || go == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < n; i++) {
		vals[i] = ts[i]->agent;
		ts[i]->gen = 0;
	}
	sql = db_values_sql("SELECT id FROM agents WHERE id IN (SELECT v.id FROM (VALUES", (size_t)n, 1,
			    ") AS v(id)) ORDER BY id FOR UPDATE");
	if (sql == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = db_q(c, sql, n, vals, NULL, err, errlen)) != 0)
		goto out;
	free(sql);
	sql = db_values_sql("UPDATE agents SET next_generation = next_generation + 1 WHERE id IN"
			    " (SELECT v.id FROM (VALUES",
			    (size_t)n, 1, ") AS v(id)) RETURNING id, next_generation, lost");
	if (sql == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = db_q(c, sql, n, vals, &r, err, errlen)) != 0)
		goto out;
	for (int k = 0; k < PQntuples(r); k++) {
		struct target **t = bsearch(db_text(r, k, 0), ts, (size_t)n, sizeof *ts, cmp_agent_target);
		if (t != NULL && !db_bool(r, k, 2))
			(*t)->gen = db_int64(r, k, 1);
	}
	for (int i = 0; i < n && rc == 0; i++) {
		struct target *t = ts[i];
		if (t->gen == 0) {
			/* The host is gone: that is this target's failure, not a retry. */
			t->state = OT_FAILED;
			rc = db_q(c,
				  "UPDATE targets SET state = 5, message = 'agent lost', updated_ms = $3"
				  " WHERE deployment_id = $1 AND agent_id = $2",
				  3, (const char *[]){ d->id, t->agent, now }, NULL, err, errlen);
			if (rc == 0)
				rc = orch_timeline(c, d->id, "target failed", "agent lost", err, errlen);
			continue;
		}
		if (d->has_secrets && !t->granted && o->secrets != NULL) {
			char gerr[256];
			if (grant(o, c, d, t->agent, gerr, sizeof gerr) != 0) {
				/* Secrets are not ready: try this target again shortly. */
				log_warn("secrets grant failed; will retry", "deployment=%s agent=%s error=%s",
					 d->id, t->agent, gerr);
				rc = db_q(c,
					  "UPDATE targets SET next_attempt_ms = $3, message = $4"
					  " WHERE deployment_id = $1 AND agent_id = $2",
					  4, (const char *[]){ d->id, t->agent, db_i64(next, ms + 2000), "waiting for a secrets grant" },
					  NULL, err, errlen);
				continue;
			}
			t->granted = 1;
		}
		go[m++] = t;
	}
	if (rc != 0 || m == 0)
		goto out;
	/* The target rows: VALUES (agent, generation, granted), then $3m+1 = the
	 * deployment and $3m+2 = now. */
	for (int i = 0; i < m; i++) {
		vals[3 * i] = go[i]->agent;
		vals[3 * i + 1] = db_i64(gens[i], go[i]->gen);
		vals[3 * i + 2] = go[i]->granted ? "true" : "false";
	}
	vals[3 * m] = d->id;
	vals[3 * m + 1] = now;
	snprintf(head, sizeof head,
		 "UPDATE targets t SET state = 2, generation = v.g::bigint, attempts = t.attempts + 1,"
		 " dispatched_ms = $%d, updated_ms = $%d, touched = true, granted = v.gr::boolean,"
		 " message = '' FROM (VALUES",
		 3 * m + 2, 3 * m + 2);
	snprintf(tail, sizeof tail,
		 ") AS v(agent, g, gr) WHERE t.deployment_id = $%d AND t.agent_id = v.agent AND t.state = 1",
		 3 * m + 1);
	free(sql);
	if ((sql = db_values_sql(head, (size_t)m, 3, tail)) == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = db_q(c, sql, 3 * m + 2, vals, NULL, err, errlen)) != 0)
		goto out;
	for (int i = 0; i < m; i++)
		vals[i] = go[i]->agent;
	if ((rc = orch_notify_agents(c, vals, (size_t)m, err, errlen)) != 0)
		goto out;
	for (int i = 0; i < m; i++) {
		go[i]->state = OT_DISPATCHED;
		go[i]->touched = 1;
		go[i]->attempts++;
	}
out:
	PQclear(r);
	free(sql);
	free(vals);
	free(gens);
	free(go);
	return rc;
}

static int set_state(struct orch *o, struct db_conn *c, struct dep *d, int state, const char *event,
		     const char *reason, const char *action, int outcome, char *err, size_t errlen)
{
	char now[24], st[8], res[200];
	int64_t ms = clock_wall_ms();
	int final = state == OS_SUCCEEDED || state == OS_FAILED || state == OS_ROLLED_BACK;
	snprintf(st, sizeof st, "%d", state);
	db_i64(now, ms);
	int rc = db_q(c,
		      "UPDATE deployments SET state = $2, reason = $3,"
		      " finished_ms = CASE WHEN $4 THEN $5::bigint ELSE finished_ms END,"
		      " lease_owner = CASE WHEN $4 THEN '' ELSE lease_owner END WHERE id = $1",
		      5, (const char *[]){ d->id, st, reason, final ? "true" : "false", now }, NULL, err,
		      errlen);
	if (rc == 0)
		rc = orch_timeline(c, d->id, event, reason, err, errlen);
	resource(res, sizeof res, d->id);
	if (rc == 0)
		rc = orch_audit(o, c, o->self_id, action, res, outcome, "release", d->digest, "reason",
				reason, err, errlen);
	d->state = state;
	return rc;
}

/* Records the environment's current (and, on success, known-good) release. */
static int record_env(struct db_conn *c, struct dep *d, const char *digest, const char *version,
		      int good, char *err, size_t errlen)
{
	char now[24];
	return db_q(c,
		    "INSERT INTO environments (app, environment, current_digest, current_version,"
		    " last_good_digest, last_good_version, updated_ms) VALUES ($1, $2, $3, $4,"
		    " CASE WHEN $5 THEN $3 ELSE '' END, CASE WHEN $5 THEN $4 ELSE '' END, $6)"
		    " ON CONFLICT (app, environment) DO UPDATE SET current_digest = $3,"
		    " current_version = $4,"
		    " last_good_digest = CASE WHEN $5 THEN $3 ELSE environments.last_good_digest END,"
		    " last_good_version = CASE WHEN $5 THEN $4 ELSE environments.last_good_version END,"
		    " updated_ms = $6, pins_synced = false",
		    6, (const char *[]){ d->app, d->env, digest, version, good ? "true" : "false",
					 db_i64(now, clock_wall_ms()) },
		    NULL, err, errlen);
}

static int start_rollback(struct orch *o, struct db_conn *c, struct dep *d, const char *why,
			  char *err, size_t errlen)
{
	PGresult *r = NULL;
	char now[24], detail[600];
	int64_t ms = clock_wall_ms();
	int rc = db_q(c,
		      "SELECT last_good_digest, last_good_version FROM environments"
		      " WHERE app = $1 AND environment = $2",
		      2, (const char *[]){ d->app, d->env }, &r, err, errlen);
	if (rc != 0)
		return rc;
	char good[80], goodv[130];
	snprintf(good, sizeof good, "%s", db_text(r, 0, 0));
	snprintf(goodv, sizeof goodv, "%s", db_text(r, 0, 1));
	PQclear(r);
	db_i64(now, ms);
	if (good[0] == '\0' || strcmp(good, d->digest) == 0) {
		snprintf(detail, sizeof detail, "%s; no known-good release to roll back to", why);
		rc = db_q(c,
			  "UPDATE targets SET state = 6, message = 'not reached', updated_ms = $2"
			  " WHERE deployment_id = $1 AND state IN (1, 2, 3)",
			  2, (const char *[]){ d->id, now }, NULL, err, errlen);
		return rc ? rc : set_state(o, c, d, OS_FAILED, "failed", detail, "deploy.failed",
					   SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, err, errlen);
	}
	/* Every touched target goes back, in one batch: they already run (or
	 * were switching to) the bad release, so there is nothing to keep safe
	 * by going slower. Untouched targets never left the good release. */
	rc = db_q(c,
		  "UPDATE targets SET phase = 1, state = 1, attempts = 0, next_attempt_ms = 0,"
		  " message = '', updated_ms = $2, task_id = deployment_id || ':rollback:' || agent_id"
		  " WHERE deployment_id = $1 AND touched",
		  2, (const char *[]){ d->id, now }, NULL, err, errlen);
	if (rc == 0)
		rc = db_q(c,
			  "UPDATE targets SET state = 6, message = 'not reached', updated_ms = $2"
			  " WHERE deployment_id = $1 AND NOT touched",
			  2, (const char *[]){ d->id, now }, NULL, err, errlen);
	if (rc == 0)
		rc = db_q(c,
			  "UPDATE deployments SET state = 8, rollback_digest = $2, rollback_version = $3,"
			  " rollback_started_ms = $4, reason = $5 WHERE id = $1",
			  5, (const char *[]){ d->id, good, goodv, now, why }, NULL, err, errlen);
	snprintf(detail, sizeof detail, "%s; rolling back to %s@%s", why, d->app, goodv);
	if (rc == 0)
		rc = orch_timeline(c, d->id, "rolling back", detail, err, errlen);
	char res[200];
	resource(res, sizeof res, d->id);
	if (rc == 0)
		rc = orch_audit(o, c, o->self_id, "rollback.start", res,
				SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, "to", good, "reason", why, err,
				errlen);
	if (rc != 0)
		return rc;
	d->state = OS_ROLLING_BACK;
	d->rollback_started_ms = ms;
	snprintf(d->rb_digest, sizeof d->rb_digest, "%s", good);
	snprintf(d->rb_version, sizeof d->rb_version, "%s", goodv);
	for (int i = 0; i < d->nt; i++) {
		struct target *t = &d->t[i];
		if (t->touched) {
			t->phase = 1;
			t->state = OT_PENDING;
			t->attempts = 0;
			t->next_attempt_ms = 0;
		} else {
			t->state = OT_SKIPPED;
		}
	}
	struct target **ts = calloc((size_t)(d->nt ? d->nt : 1), sizeof *ts);
	int n = 0;
	if (ts == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	for (int i = 0; i < d->nt; i++)
		if (d->t[i].phase == 1 && d->t[i].state == OT_PENDING)
			ts[n++] = &d->t[i];
	rc = dispatch(o, c, d, ts, n, err, errlen);
	free(ts);
	return rc;
}

/* Fails the unfinished targets of `batch` (0 = all) when the batch has run
 * longer than the progress deadline. *failed receives how many. */
static int fail_overdue(struct db_conn *c, struct dep *d, int batch, int64_t since, int *failed,
			char *err, size_t errlen)
{
	char now[24], b[16];
	int64_t ms = clock_wall_ms();
	*failed = 0;
	if (since == 0 || ms - since <= d->deadline_ms)
		return 0;
	snprintf(b, sizeof b, "%d", batch);
	PGresult *r = NULL;
	int rc = db_q(c,
		      "UPDATE targets SET state = 5, message = 'progress deadline exceeded',"
		      " updated_ms = $2 WHERE deployment_id = $1 AND state IN (1, 2, 3)"
		      " AND ($3::int = 0 OR batch = $3::int) RETURNING agent_id",
		      3, (const char *[]){ d->id, db_i64(now, ms), b }, &r, err, errlen);
	if (rc != 0)
		return rc;
	int n = PQntuples(r);
	*failed = n;
	for (int i = 0; i < n; i++)
		for (int k = 0; k < d->nt; k++)
			if (strcmp(d->t[k].agent, db_text(r, i, 0)) == 0)
				d->t[k].state = OT_FAILED;
	PQclear(r);
	if (n > 0) {
		char detail[128];
		snprintf(detail, sizeof detail, "%d target(s) missed the %lld ms progress deadline", n,
			 (long long)d->deadline_ms);
		rc = orch_timeline(c, d->id, "progress deadline exceeded", detail, err, errlen);
	}
	return rc;
}

/* The failure policy: rollback (not of a rollback), pause, or abort. */
static int apply_failure(struct orch *o, struct db_conn *c, struct dep *d, const char *detail,
			 char *err, size_t errlen)
{
	char now[24];
	if (d->action == SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_ROLLBACK && !d->is_rollback)
		return start_rollback(o, c, d, detail, err, errlen);
	if (d->action == SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_PAUSE)
		return set_state(o, c, d, OS_PAUSED, "paused", detail, "deploy.pause",
				 SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, err, errlen);
	int rc = db_q(c,
		      "UPDATE targets SET state = 6, message = 'aborted', updated_ms = $2"
		      " WHERE deployment_id = $1 AND state IN (1, 2, 3)",
		      2, (const char *[]){ d->id, db_i64(now, clock_wall_ms()) }, NULL, err, errlen);
	return rc ? rc : set_state(o, c, d, OS_FAILED, "failed", detail, "deploy.failed",
				   SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, err, errlen);
}

/* While a canary bakes, each of its targets must still run the release,
 * healthy: its agent not lost and, once it has heartbeated since its task
 * succeeded (as flushed to the database, and more than 500 ms after, so
 * that a heartbeat composed before the switch does not count), showing the
 * new digest in PROCESS_RUNNING with a passing live health check. A target
 * that does not is failed with the reason, and the failure policy applies
 * at the next step. Sets *bad to the number failed and *unseen to the
 * number with no such heartbeat yet (no evidence either way). */
static int canary_check(struct db_conn *c, struct dep *d, int64_t ms, int *bad, int *unseen,
			char *err, size_t errlen)
{
	PGresult *r = NULL;
	char now[24], st[8];
	*bad = *unseen = 0;
	snprintf(st, sizeof st, "%d", OT_SUCCEEDED);
	int rc = db_q(c,
		      "SELECT t.agent_id, a.lost, a.runtime, a.last_heartbeat_ms > t.updated_ms + 500"
		      " FROM targets t JOIN agents a ON a.id = t.agent_id"
		      " WHERE t.deployment_id = $1 AND t.phase = 0 AND t.batch = 1 AND t.state = $2",
		      2, (const char *[]){ d->id, st }, &r, err, errlen);
	if (rc != 0)
		return rc;
	db_i64(now, ms);
	for (int i = 0; i < PQntuples(r) && rc == 0; i++) {
		const char *agent = db_text(r, i, 0);
		char why[300] = "";
		if (db_bool(r, i, 1)) {
			snprintf(why, sizeof why, "its agent is lost");
		} else if (!db_bool(r, i, 3)) {
			(*unseen)++;
			continue;
		} else {
			uint8_t raw[ORCH_RUNTIME_MAX];
			int len = db_bytea(r, i, 2, raw, sizeof raw);
			Slipway__V1__AgentRuntime *rt =
				len > 0 ? slipway__v1__agent_runtime__unpack(NULL, (size_t)len, raw)
					: NULL;
			if (rt == NULL)
				snprintf(why, sizeof why, "its agent reports no runtime");
			else if (strcmp(rt->digest, d->digest) != 0)
				snprintf(why, sizeof why, "it no longer runs %s", d->digest);
			else if (rt->process != SLIPWAY__V1__PROCESS_STATE__PROCESS_RUNNING)
				snprintf(why, sizeof why, "the process is not running (state %d)",
					 (int)rt->process);
			else if (!rt->healthy)
				snprintf(why, sizeof why, "health check failing: %.200s",
					 rt->health_detail);
			if (rt != NULL)
				slipway__v1__agent_runtime__free_unpacked(rt, NULL);
		}
		if (why[0] == '\0')
			continue;
		char msg[400], detail[700];
		snprintf(msg, sizeof msg, "canary unhealthy while baking: %s", why);
		snprintf(detail, sizeof detail, "%s: %s", agent, why);
		snprintf(st, sizeof st, "%d", OT_FAILED);
		rc = db_q(c,
			  "UPDATE targets SET state = $3, message = $4, updated_ms = $5"
			  " WHERE deployment_id = $1 AND agent_id = $2 AND phase = 0",
			  5, (const char *[]){ d->id, agent, st, msg, now }, NULL, err, errlen);
		if (rc == 0)
			rc = orch_timeline(c, d->id, "canary target failed", detail, err, errlen);
		(*bad)++;
	}
	PQclear(r);
	if (rc == 0 && *bad > 0) /* whatever is left bakes again from the start */
		rc = db_q(c, "UPDATE deployments SET batch_done_ms = 0 WHERE id = $1", 1,
			  (const char *[]){ d->id }, NULL, err, errlen);
	return rc;
}

/* The canary batch is complete: it bakes (see canary_check), then is
 * promoted on its own or, with manual promotion, the deployment pauses
 * until a resume promotes it (batch_done_ms -1 records that). Sets *go when
 * the next batch may start. */
static int canary_gate(struct orch *o, struct db_conn *c, struct dep *d, int64_t ms,
		       int *go, int *again, char *err, size_t errlen)
{
	char now[24], detail[256];
	int rc;
	*go = 0;
	db_i64(now, ms);
	if (d->batch_done_ms < 0) {
		*go = 1; /* promoted */
		return orch_timeline(c, d->id, "canary promoted", "by a resume", err, errlen);
	}
	int ok = 0;
	for (int i = 0; i < d->nt; i++)
		ok += d->t[i].batch == 1 && d->t[i].phase == 0 && d->t[i].state == OT_SUCCEEDED;
	if (ok == 0) /* every canary target failed, within the tolerance: nothing to promote */
		return apply_failure(o, c, d, "no canary target is healthy", err, errlen);
	if (d->batch_done_ms == 0) {
		snprintf(detail, sizeof detail, "canary of %d target%s healthy; baking for %lld ms",
			 ok, ok == 1 ? "" : "s", (long long)d->bake_ms);
		rc = db_q(c, "UPDATE deployments SET batch_done_ms = $2 WHERE id = $1", 2,
			  (const char *[]){ d->id, now }, NULL, err, errlen);
		return rc ? rc : orch_timeline(c, d->id, "canary baking", detail, err, errlen);
	}
	int bad = 0, unseen = 0;
	if ((rc = canary_check(c, d, ms, &bad, &unseen, err, errlen)) != 0)
		return rc;
	if (bad > 0) {
		*again = 1; /* apply the failure policy */
		return 0;
	}
	/* Promotion needs the time and, from every canary target, a heartbeat
	 * since its deployment (an agent that never sends one is lost). */
	if (ms - d->batch_done_ms < d->bake_ms || unseen > 0)
		return 0;
	snprintf(detail, sizeof detail, "canary of %d target%s healthy for %lld ms", ok,
		 ok == 1 ? "" : "s", (long long)(ms - d->batch_done_ms));
	if (!d->manual_promotion) {
		*go = 1;
		return orch_timeline(c, d->id, "canary promoted", detail, err, errlen);
	}
	rc = db_q(c, "UPDATE deployments SET batch_done_ms = -1 WHERE id = $1", 1,
		  (const char *[]){ d->id }, NULL, err, errlen);
	char reason[400];
	snprintf(reason, sizeof reason, "%s; waiting for promotion (slipway resume %s)", detail, d->id);
	return rc ? rc : set_state(o, c, d, OS_PAUSED, "canary waiting for promotion", reason,
				   "deploy.pause", SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS, err, errlen);
}

static int step_running(struct orch *o, struct db_conn *c, struct dep *d, int *again, char *err,
			size_t errlen)
{
	int64_t ms = clock_wall_ms();
	char now[24], detail[256];
	int rc = 0, n = 0, failed = 0;
	db_i64(now, ms);
	for (int i = 0; i < d->nt; i++)
		if (d->t[i].phase == 0) {
			n++;
			failed += d->t[i].state == OT_FAILED;
		}
	int threshold = d->max_failed;
	if (d->max_failed_pct > 0 && n * d->max_failed_pct / 100 > threshold)
		threshold = n * d->max_failed_pct / 100;
	if (failed > threshold) {
		snprintf(detail, sizeof detail, "%d of %d targets failed (tolerated: %d)", failed, n,
			 threshold);
		return apply_failure(o, c, d, detail, err, errlen);
	}
	if (d->current_batch == 0) {
		d->current_batch = 1;
		d->batch_started_ms = ms;
		rc = db_q(c,
			  "UPDATE deployments SET current_batch = 1, batch_started_ms = $2,"
			  " batch_done_ms = 0 WHERE id = $1",
			  2, (const char *[]){ d->id, now }, NULL, err, errlen);
		snprintf(detail, sizeof detail, "batch 1 of %d", d->total_batches);
		if (rc == 0)
			rc = orch_timeline(c, d->id, "batch started", detail, err, errlen);
		if (rc != 0)
			return rc;
	}
	int cur = d->current_batch, overdue = 0;
	if ((rc = fail_overdue(c, d, cur, d->batch_started_ms, &overdue, err, errlen)) != 0)
		return rc;
	if (overdue > 0) {
		*again = 1; /* apply the failure policy next */
		return 0;
	}
	int in_flight = 0, size = 0, done = 0;
	for (int i = 0; i < d->nt; i++) {
		struct target *t = &d->t[i];
		if (t->batch != cur || t->phase != 0)
			continue;
		size++;
		in_flight += t->state == OT_DISPATCHED || t->state == OT_RUNNING;
		done += t->state == OT_SUCCEEDED || t->state == OT_FAILED || t->state == OT_SKIPPED;
	}
	int limit = d->max_unavailable > 0 ? d->max_unavailable : size;
	struct target **ts = calloc((size_t)(d->nt ? d->nt : 1), sizeof *ts);
	if (ts == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	/* Up to the limit in flight; a target that fails at once (its agent is
	 * lost) leaves room for the next one. */
	for (int i = 0, got = 1; got > 0 && in_flight < limit && rc == 0;) {
		got = 0;
		for (; i < d->nt && in_flight + got < limit; i++) {
			struct target *t = &d->t[i];
			if (t->batch != cur || t->phase != 0 || t->state != OT_PENDING ||
			    t->next_attempt_ms > ms)
				continue;
			ts[got++] = t;
		}
		rc = dispatch(o, c, d, ts, got, err, errlen);
		for (int k = 0; k < got && rc == 0; k++) {
			in_flight += ts[k]->state == OT_DISPATCHED;
			if (ts[k]->state == OT_FAILED)
				*again = 1;
		}
	}
	free(ts);
	if (rc != 0 || done < size)
		return rc;
	/* The batch is complete and within the failure budget. */
	if (cur >= d->total_batches) {
		rc = record_env(c, d, d->digest, d->version, 1, err, errlen);
		snprintf(detail, sizeof detail, "%s@%s on %d targets in %lld ms", d->app, d->version, n,
			 (long long)(ms - d->started_ms));
		return rc ? rc : set_state(o, c, d, OS_SUCCEEDED, "succeeded", detail,
					   "deploy.succeeded", SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS,
					   err, errlen);
	}
	if (d->canary && cur == 1) {
		int go = 0;
		rc = canary_gate(o, c, d, ms, &go, again, err, errlen);
		if (rc != 0 || !go)
			return rc;
	} else if (d->pause_ms > 0) {
		if (d->batch_done_ms == 0) {
			snprintf(detail, sizeof detail, "batch %d healthy; pausing %lld ms", cur,
				 (long long)d->pause_ms);
			rc = db_q(c, "UPDATE deployments SET batch_done_ms = $2 WHERE id = $1", 2,
				  (const char *[]){ d->id, now }, NULL, err, errlen);
			return rc ? rc : orch_timeline(c, d->id, "batch healthy", detail, err, errlen);
		}
		if (ms - d->batch_done_ms < d->pause_ms)
			return 0;
	}
	char b[16];
	snprintf(b, sizeof b, "%d", cur + 1);
	rc = db_q(c,
		  "UPDATE deployments SET current_batch = $2, batch_started_ms = $3, batch_done_ms = 0"
		  " WHERE id = $1",
		  3, (const char *[]){ d->id, b, now }, NULL, err, errlen);
	snprintf(detail, sizeof detail, "batch %d of %d", cur + 1, d->total_batches);
	if (rc == 0)
		rc = orch_timeline(c, d->id, "batch started", detail, err, errlen);
	*again = 1; /* dispatch the new batch now */
	return rc;
}

static int step_rolling_back(struct orch *o, struct db_conn *c, struct dep *d, char *err,
			     size_t errlen)
{
	int64_t ms = clock_wall_ms();
	int overdue = 0;
	int rc = fail_overdue(c, d, 0, d->rollback_started_ms, &overdue, err, errlen);
	int total = 0, done = 0, failed = 0, n = 0;
	struct target **ts = calloc((size_t)(d->nt ? d->nt : 1), sizeof *ts);
	if (ts == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	for (int i = 0; i < d->nt; i++) {
		struct target *t = &d->t[i];
		if (t->phase == 1 && t->state == OT_PENDING && t->next_attempt_ms <= ms)
			ts[n++] = t;
	}
	if (rc == 0)
		rc = dispatch(o, c, d, ts, n, err, errlen);
	free(ts);
	if (rc != 0)
		return rc;
	for (int i = 0; i < d->nt; i++) {
		struct target *t = &d->t[i];
		if (t->phase != 1)
			continue;
		total++;
		done += t->state == OT_ROLLED_BACK || t->state == OT_FAILED || t->state == OT_SKIPPED;
		failed += t->state == OT_FAILED;
	}
	if (done < total)
		return 0;
	int64_t took = ms - d->rollback_started_ms;
	char detail[300], took_s[24];
	db_i64(took_s, took);
	rc = db_q(c, "UPDATE deployments SET rollback_duration_ms = $2 WHERE id = $1", 2,
		  (const char *[]){ d->id, took_s }, NULL, err, errlen);
	if (rc == 0)
		rc = record_env(c, d, d->rb_digest, d->rb_version, 0, err, errlen);
	if (rc != 0)
		return rc;
	if (failed > 0) {
		snprintf(detail, sizeof detail, "rollback to %s@%s failed on %d of %d targets after %lld ms",
			 d->app, d->rb_version, failed, total, (long long)took);
		return set_state(o, c, d, OS_FAILED, "rollback incomplete", detail, "rollback.failed",
				 SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, err, errlen);
	}
	snprintf(detail, sizeof detail, "%d targets back on %s@%s in %lld ms", total, d->app,
		 d->rb_version, (long long)took);
	return set_state(o, c, d, OS_ROLLED_BACK, "rolled back", detail, "rollback.done",
			 SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS, err, errlen);
}

struct step_tx {
	struct orch *o;
	const char *id;
	int again;
};

static int step_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct step_tx *s = arg;
	struct dep d;
	int skip = 0;
	memset(&d, 0, sizeof d);
	int rc = load(c, s->id, s->o, &d, &skip, err, errlen);
	if (rc == 0 && !skip) {
		if (d.state == OS_RUNNING)
			rc = step_running(s->o, c, &d, &s->again, err, errlen);
		else if (d.state == OS_ROLLING_BACK)
			rc = step_rolling_back(s->o, c, &d, err, errlen);
	}
	refs_free(&d);
	dep_free(&d);
	return rc;
}

static void step_all(struct orch *o)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[512], now[24];
	if (db_acquire(o->db, &c, 2000, err, sizeof err) != 0)
		return;
	int rc = db_q(c,
		      "SELECT id FROM deployments WHERE state IN (3, 4, 8)"
		      " AND (lease_owner = $1 OR lease_expires_ms < $2) ORDER BY priority DESC, queue_seq",
		      2, (const char *[]){ o->replica, db_i64(now, clock_wall_ms()) }, &r, err, sizeof err);
	db_release(o->db, c);
	if (rc != 0)
		return;
	for (int i = 0; i < PQntuples(r) && !atomic_load(&o->stopping); i++) {
		struct step_tx s = { .o = o, .id = db_text(r, i, 0) };
		for (int round = 0; round < 4; round++) {
			s.again = 0;
			if (db_tx(o->db, NULL, step_tx, &s, err, sizeof err) != 0) {
				log_warn("step failed", "deployment=%s error=%s", s.id, err);
				break;
			}
			if (!s.again)
				break;
		}
	}
	PQclear(r);
}

/* ---- 4. pins ---- */

static void sync_pins(struct orch *o)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char err[256];
	if (db_acquire(o->db, &c, 2000, err, sizeof err) != 0)
		return;
	int rc = db_q(c,
		      "SELECT app, environment, current_digest, last_good_digest FROM environments"
		      " WHERE NOT pins_synced LIMIT 20",
		      0, NULL, &r, err, sizeof err);
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
		struct rpc_call_opts co = { .timeout_ms = 5000 };
		if (rpc_call(o->artifact, &slipway__v1__artifact__descriptor, "SetPins", &req.base, &m,
			     &co, err, sizeof err) != 0) {
			log_warn("pins not synced; will retry", "app=%s environment=%s error=%s", req.app,
				 req.environment, err);
			continue;
		}
		protobuf_c_message_free_unpacked(m, NULL);
		if (db_acquire(o->db, &c, 2000, err, sizeof err) == 0) {
			db_q(c,
			     "UPDATE environments SET pins_synced = true WHERE app = $1 AND environment = $2"
			     " AND current_digest = $3 AND last_good_digest = $4",
			     4, (const char *[]){ req.app, req.environment, req.current_digest, req.last_good_digest },
			     NULL, err, sizeof err);
			db_release(o->db, c);
		}
	}
	PQclear(r);
}

static void *engine_main(void *arg)
{
	struct orch *o = arg;
	char err[512];
	int64_t last_eval = 0, last_pins = 0;
	while (!atomic_load(&o->stopping)) {
		int64_t ms = clock_wall_ms();
		if (ms - last_eval >= 250) {
			evaluate_pending(o);
			last_eval = ms;
		}
		if (db_tx(o->db, NULL, admit_tx, o, err, sizeof err) != 0)
			log_warn("admission failed", "error=%s", err);
		step_all(o);
		if (ms - last_pins >= 1000) {
			sync_pins(o);
			last_pins = ms;
		}
		struct timespec dl;
		clock_gettime(CLOCK_REALTIME, &dl);
		dl.tv_sec += (time_t)(o->c.tick_ms / 1000);
		dl.tv_nsec += (long)(o->c.tick_ms % 1000) * 1000000L;
		if (dl.tv_nsec >= 1000000000L) {
			dl.tv_sec++;
			dl.tv_nsec -= 1000000000L;
		}
		pthread_mutex_lock(&o->mu);
		while (!o->kicked && !atomic_load(&o->stopping))
			if (pthread_cond_timedwait(&o->cv, &o->mu, &dl) != 0)
				break;
		o->kicked = 0;
		pthread_mutex_unlock(&o->mu);
	}
	return NULL;
}

int orch_engine_start(struct orch *o, char *err, size_t errlen)
{
	if (pthread_create(&o->engine, NULL, engine_main, o) != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot start the engine");
	return 0;
}

void orch_engine_stop(struct orch *o)
{
	atomic_store(&o->stopping, 1);
	orch_engine_kick(o);
	pthread_join(o->engine, NULL);
}
