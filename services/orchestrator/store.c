/*
 * store.c - the only SQL for deployments, targets and tasks.
 *
 * Everything the engine, the task RPCs and the registry read or change
 * about a deployment's progress goes through these functions, each in the
 * caller's transaction (or its own short one where it says so). States
 * are bound as parameters from the named enums of plan.h, never written as
 * literals, so a grep for a state's name finds every place that sets it.
 *
 * The store applies what the planner decided (store_apply) and records the
 * remote calls it asked for as pending rows (secrets grants), which the
 * driver performs outside any transaction (store_grants_claim, then
 * store_grant_done or store_grant_failed).
 */
#include "clock.h"
#include "err.h"
#include "log.h"
#include "orch.h"
#include "trace.h"
#include "plan.h"

#include "slipway/v1/orchestrator.pb-c.h"
#include "slipway/v1/policy.pb-c.h"

#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A state as a bound parameter. */
static const char *st(char buf[8], int state)
{
	snprintf(buf, 8, "%d", state);
	return buf;
}

/* A set of states as a bound smallint[] parameter ("{3,4,8}"); the list
 * ends with 0. */
static const char *states(char buf[48], int first, ...)
{
	va_list ap;
	size_t n = 0;
	buf[n++] = '{';
	va_start(ap, first);
	for (int s = first; s != 0; s = va_arg(ap, int)) {
		int w = snprintf(buf + n, 48 - n, "%s%d", n > 1 ? "," : "", s);
		if (w < 0 || (size_t)w >= 48 - n)
			break;
		n += (size_t)w;
	}
	va_end(ap);
	snprintf(buf + n, 48 - n, "}");
	return buf;
}

#define ACTIVE(b) states(b, PLAN_D_RUNNING, PLAN_D_PAUSED, PLAN_D_ROLLING_BACK, 0)
#define UNFINISHED(b) states(b, PLAN_T_PENDING, PLAN_T_DISPATCHED, PLAN_T_RUNNING, 0)
#define IN_FLIGHT(b) states(b, PLAN_T_DISPATCHED, PLAN_T_RUNNING, 0)

static void resource(char *out, size_t len, const char *id)
{
	snprintf(out, len, "deployment/%s", id);
}

/* "batch started" -> "timeline.batch_started": lower-case letters and
 * digits kept, everything else one '_'. */
static void timeline_action(const char *event, char *out, size_t len)
{
	size_t o = (size_t)snprintf(out, len, "timeline.");
	int sep = 0;
	for (const char *p = event; *p && o + 2 < len; p++) {
		char ch = *p;
		if (ch >= 'A' && ch <= 'Z')
			ch = (char)(ch - 'A' + 'a');
		if ((ch >= 'a' && ch <= 'z') || (ch >= '0' && ch <= '9')) {
			if (sep && out[o - 1] != '.')
				out[o++] = '_';
			out[o++] = ch;
			sep = 0;
		} else {
			sep = 1;
		}
	}
	if (out[o - 1] == '.')
		out[o++] = 'x';
	out[o] = '\0';
}

/* FAILURE for failures, DENIED for refusals, else SUCCESS. */
static int timeline_outcome(const char *event)
{
	if (strstr(event, "failed") || strstr(event, "exceeded") || strstr(event, "lost"))
		return SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE;
	if (strstr(event, "denied") || strstr(event, "refused") || strstr(event, "rejected"))
		return SLIPWAY__V1__OUTCOME__OUTCOME_DENIED;
	return SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS;
}

int orch_timeline(struct orch *o, struct db_conn *c, const char *id, const char *event,
		  const char *detail, char *err, size_t errlen)
{
	char now[24], tid[24], eid[80], action[128], res[200];
	char ev[ORCH_TIMELINE_EVENT_MAX + 1], det[ORCH_TIMELINE_DETAIL_MAX + 1];
	int64_t t = clock_wall_ms();
	PGresult *r = NULL;
	/* Fitted once, so that the row and its audit event carry the same
	 * bytes: `slipway evidence verify` compares them. */
	outbox_fit_text(event, ev, ORCH_TIMELINE_EVENT_MAX);
	outbox_fit_text(detail ? detail : "", det, ORCH_TIMELINE_DETAIL_MAX);
	int rc = db_q(c,
		      "INSERT INTO timeline (deployment_id, time_ms, event, detail)"
		      " VALUES ($1, $2, $3, $4) RETURNING id",
		      4, (const char *[]){ id, db_i64(now, t), ev, det }, &r, err, errlen);
	if (rc != 0)
		return rc;
	snprintf(tid, sizeof tid, "%s", db_text(r, 0, 0));
	PQclear(r);
	/* The same row as an audit event, in this transaction: stable id
	 * (a retried relay delivers it once), the deployment as resource. */
	snprintf(eid, sizeof eid, "tl:%s:%s", id, tid);
	timeline_action(ev, action, sizeof action);
	resource(res, sizeof res, id);
	struct outbox_event e = { .event_id = eid,
				  .actor = o->self_id,
				  .action = action,
				  .resource = res,
				  .outcome = (Slipway__V1__Outcome)timeline_outcome(ev),
				  .time_unix_ms = t };
	outbox_detail(&e, "deployment_id", id);
	outbox_detail(&e, "timeline_id", tid);
	outbox_detail(&e, "event", ev);
	outbox_detail(&e, "detail", det);
	/* No kick: the relay's next round (at most its idle interval away)
	 * takes the line, and a rollout's target results then travel in a few
	 * large batches instead of one call each. */
	return outbox_add(c, "orchestrator", &e, err, errlen);
}

/* ---- approvals ---- */

/* What EvaluateDeployment is asked about a deployment (orch.h: ORCH_EVAL_*). */
#define EVAL_COLS                                                                              \
	"id, app, environment, version, digest, requester, break_glass, break_glass_reason,"  \
	" created_ms, provenance, trace_id"

int store_pending_approvals(struct db_conn *c, int64_t now, int limit, PGresult **out, char *err,
			    size_t errlen)
{
	char ms[24], lim[16], s[8];
	snprintf(lim, sizeof lim, "%d", limit);
	return db_q(c,
		    "SELECT " EVAL_COLS " FROM deployments"
		    " WHERE state = $1 AND next_eval_ms <= $2 ORDER BY queue_seq LIMIT $3",
		    3, (const char *[]){ st(s, PLAN_D_PENDING_APPROVAL), db_i64(ms, now), lim }, out, err,
		    errlen);
}

/* A deployment turned away (denied, sent back to approval, an action
 * refused): its timeline line, a DENIED audit event with `key` = detail,
 * and a wake-up for its watchers, in the caller's transaction. */
static int turned_away(struct db_conn *c, struct orch *o, const char *actor, const char *id,
		       const char *event, const char *action, const char *key, const char *detail,
		       char *err, size_t errlen)
{
	char res[200];
	resource(res, sizeof res, id);
	int rc = orch_timeline(o, c, id, event, detail, err, errlen);
	if (rc == 0)
		rc = orch_audit(o, c, actor, action, res, SLIPWAY__V1__OUTCOME__OUTCOME_DENIED, key,
				detail, NULL, NULL, err, errlen);
	if (rc == 0)
		rc = orch_notify_deployment(c, id, err, errlen);
	return rc;
}

/* Ends a deployment still in state `from` (waiting for approval, or queued
 * and asked again before its start) as FAILED: the policy denies it. Its
 * targets are skipped; the timeline and the audit log say why. */
static int deny(struct db_conn *c, struct orch *o, const char *id, int from, const char *reason,
		const char *detail, int64_t now, char *err, size_t errlen)
{
	char ms[24], s0[8], s1[8], t1[8];
	PGresult *u = NULL;
	int rc = db_q(c,
		      "UPDATE deployments SET state = $2, reason = $3, finished_ms = $4"
		      " WHERE id = $1 AND state = $5 RETURNING id",
		      5, (const char *[]){ id, st(s1, PLAN_D_FAILED), reason, db_i64(ms, now), st(s0, from) },
		      &u, err, errlen);
	if (rc == 0 && PQntuples(u) == 1) {
		rc = db_q(c, "UPDATE targets SET state = $2, message = 'denied' WHERE deployment_id = $1",
			  2, (const char *[]){ id, st(t1, PLAN_T_SKIPPED) }, NULL, err, errlen);
		if (rc == 0)
			rc = turned_away(c, o, o->self_id, id, "denied", "deploy.denied", "policy",
					 detail, err, errlen);
	}
	PQclear(u);
	return rc;
}

int store_approval_verdict(struct db_conn *c, struct orch *o, const char *id, int verdict,
			   const char *reason, int64_t now, char *err, size_t errlen)
{
	char next[24], s0[8], s1[8], res[200];
	PGresult *u = NULL;
	int rc;
	db_i64(next, now + 1000);
	st(s0, PLAN_D_PENDING_APPROVAL);
	resource(res, sizeof res, id);
	if (verdict < 0)
		return db_q(c, "UPDATE deployments SET next_eval_ms = $2 WHERE id = $1 AND state = $3", 3,
			    (const char *[]){ id, next, s0 }, NULL, err, errlen);
	if (verdict == SLIPWAY__V1__VERDICT__VERDICT_ALLOWED) {
		rc = db_q(c,
			  "UPDATE deployments SET state = $2, reason = '' WHERE id = $1 AND state = $3"
			  " RETURNING id",
			  3, (const char *[]){ id, st(s1, PLAN_D_QUEUED), s0 }, &u, err, errlen);
		if (rc == 0 && PQntuples(u) == 1) {
			rc = orch_timeline(o, c, id, "approved", reason, err, errlen);
			if (rc == 0)
				rc = orch_timeline(o, c, id, "queued", "", err, errlen);
			if (rc == 0)
				rc = orch_audit(o, c, o->self_id, "deploy.approved", res,
						SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS, "policy", reason, NULL,
						NULL, err, errlen);
		}
		PQclear(u);
		return rc;
	}
	if (verdict == SLIPWAY__V1__VERDICT__VERDICT_DENIED)
		return deny(c, o, id, PLAN_D_PENDING_APPROVAL, reason, reason, now, err, errlen);
	return db_q(c, "UPDATE deployments SET reason = $2, next_eval_ms = $3 WHERE id = $1 AND state = $4",
		    4, (const char *[]){ id, reason, next, s0 }, NULL, err, errlen);
}

/* ---- admission ---- */

/* How long a "may start" answer of the policy service stays good for
 * admission: it is asked when the deployment would start, and admission
 * follows within a round; an answer older than this (the deployment was
 * overtaken by a hotfix, or the global cap filled meanwhile) is asked
 * again. */
#define START_OK_MS 5000

int store_admit(struct db_conn *c, struct orch *o, int64_t now, int *asked, char *err,
		size_t errlen)
{
	PGresult *r = NULL;
	char ms[24], lease[24], act[48], sq[8], sr[8];
	*asked = 0;
	int rc = db_q(c, "SELECT pg_advisory_xact_lock(hashtext('slipway.orchestrator.admission'))",
		      0, NULL, NULL, err, errlen);
	if (rc != 0)
		return rc;
	ACTIVE(act);
	if ((rc = db_q(c, "SELECT count(*) FROM deployments WHERE state = ANY($1::smallint[])", 1,
		       (const char *[]){ act }, &r, err, errlen)) != 0)
		return rc;
	int64_t running = db_int64(r, 0, 0);
	PQclear(r);
	r = NULL;
	if (running >= o->c.max_running)
		return 0;
	if ((rc = db_q(c,
		       "SELECT d.id, d.app, d.environment, d.is_rollback, d.start_check_ms,"
		       " d.start_ok_ms FROM deployments d WHERE d.state = $1"
		       " AND NOT EXISTS (SELECT 1 FROM deployments a WHERE a.app = d.app"
		       " AND a.environment = d.environment AND a.state = ANY($2::smallint[]))"
		       " ORDER BY d.priority DESC, d.queue_seq LIMIT 200",
		       2, (const char *[]){ st(sq, PLAN_D_QUEUED), act }, &r, err, errlen)) != 0)
		return rc;
	db_i64(ms, now);
	db_i64(lease, now + o->c.lease_ms);
	st(sr, PLAN_D_RUNNING);
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
		/* Policy is asked again before a deployment starts (a freeze
		 * may have begun, an approval expired, a binding been removed
		 * since it was queued): the side thread asks, this waits for an
		 * answer given after the question. A rollback (only ever to a
		 * release that succeeded here) is not asked. */
		int64_t check = db_int64(r, i, 4), okm = db_int64(r, i, 5);
		if (!db_bool(r, i, 3) && !(check > 0 && okm >= check && now - okm <= START_OK_MS)) {
			if (check == 0 || okm >= check) { /* not asked, or the answer is stale */
				char cm[24];
				rc = db_q(c,
					  "UPDATE deployments SET start_check_ms = $2, next_eval_ms = 0"
					  " WHERE id = $1 AND state = $3",
					  3, (const char *[]){ id, db_i64(cm, now > okm ? now : okm + 1), sq },
					  NULL, err, errlen);
				if (rc != 0)
					break;
				(*asked)++;
			}
			continue;
		}
		rc = db_q(c,
			  "UPDATE deployments SET state = $5, started_ms = $2, current_batch = 0,"
			  " lease_owner = $3, lease_expires_ms = $4, lease_gen = lease_gen + 1,"
			  " stepped_ms = $2, reason = '' WHERE id = $1 AND state = $6",
			  6, (const char *[]){ id, ms, o->replica, lease, sr, sq }, NULL, err, errlen);
		if (rc == 0)
			rc = orch_timeline(o, c, id, "started", o->replica, err, errlen);
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

int store_start_checks(struct db_conn *c, int64_t now, int limit, PGresult **out, char *err,
		       size_t errlen)
{
	char ms[24], lim[16], s[8];
	snprintf(lim, sizeof lim, "%d", limit);
	return db_q(c,
		    "SELECT " EVAL_COLS ", start_check_ms FROM deployments WHERE state = $1"
		    " AND start_check_ms > start_ok_ms AND next_eval_ms <= $2"
		    " ORDER BY priority DESC, queue_seq LIMIT $3",
		    3, (const char *[]){ st(s, PLAN_D_QUEUED), db_i64(ms, now), lim }, out, err, errlen);
}

int store_start_verdict(struct db_conn *c, struct orch *o, const char *id, int64_t check_ms,
			int verdict, const char *reason, int64_t now, char *err, size_t errlen)
{
	char ms[24], next[24], chk[24], sq[8], sp[8], detail[1200];
	PGresult *u = NULL;
	int rc;
	db_i64(ms, now);
	db_i64(next, now + 1000);
	db_i64(chk, check_ms);
	st(sq, PLAN_D_QUEUED);
	if (verdict < 0) /* the policy service could not say: ask again in a second */
		return db_q(c, "UPDATE deployments SET next_eval_ms = $2 WHERE id = $1 AND state = $3",
			    3, (const char *[]){ id, next, sq }, NULL, err, errlen);
	if (verdict == SLIPWAY__V1__VERDICT__VERDICT_ALLOWED)
		return db_q(c,
			    "UPDATE deployments SET start_ok_ms = greatest($2::bigint, start_check_ms)"
			    " WHERE id = $1 AND state = $3 AND start_check_ms = $4",
			    4, (const char *[]){ id, ms, sq, chk }, NULL, err, errlen);
	if (verdict == SLIPWAY__V1__VERDICT__VERDICT_DENIED) {
		snprintf(detail, sizeof detail, "policy no longer allows it to start: %.1000s", reason);
		return deny(c, o, id, PLAN_D_QUEUED, detail, detail, now, err, errlen);
	}
	/* NEEDS_APPROVAL: an approval expired or was withdrawn, or the policy
	 * changed; it waits for approval again (re-evaluated every second). */
	snprintf(detail, sizeof detail, "approvals no longer satisfy the policy: %.1000s", reason);
	rc = db_q(c,
		  "UPDATE deployments SET state = $2, reason = $3, next_eval_ms = $4,"
		  " start_check_ms = 0, start_ok_ms = 0 WHERE id = $1 AND state = $5 RETURNING id",
		  5, (const char *[]){ id, st(sp, PLAN_D_PENDING_APPROVAL), reason, next, sq }, &u, err,
		  errlen);
	if (rc == 0 && PQntuples(u) == 1) {
		rc = turned_away(c, o, o->self_id, id, "waiting for approval", "deploy.unapproved",
				 "policy", detail, err, errlen);
	}
	PQclear(u);
	return rc;
}

int store_eval_facts(struct db_conn *c, const char *id, PGresult **out, char *err, size_t errlen)
{
	int rc = db_q(c, "SELECT " EVAL_COLS ", is_rollback, state FROM deployments WHERE id = $1", 1,
		      (const char *[]){ id }, out, err, errlen);
	if (rc == 0 && PQntuples(*out) != 1) {
		PQclear(*out);
		*out = NULL;
		return sw_errf(err, errlen, SW_ENOTFOUND, "no deployment %s", id);
	}
	return rc;
}

int store_refused(struct db_conn *c, struct orch *o, const char *id, const char *action,
		  const char *actor, const char *why, char *err, size_t errlen)
{
	char event[64], act[64];
	snprintf(event, sizeof event, "%s refused", action);
	snprintf(act, sizeof act, "deploy.%s", action);
	return turned_away(c, o, actor, id, event, act, "reason", why, err, errlen);
}

int store_steppable(struct db_conn *c, const char *replica, int64_t now, PGresult **out, char *err,
		    size_t errlen)
{
	char ms[24], act[48];
	return db_q(c,
		    "SELECT id, trace_id FROM deployments WHERE state = ANY($3::smallint[])"
		    " AND (lease_owner = $1 OR lease_expires_ms < $2) ORDER BY priority DESC, queue_seq",
		    3, (const char *[]){ replica, db_i64(ms, now), ACTIVE(act) }, out, err, errlen);
}

/* ---- the snapshot ---- */

static void copy(char *dst, size_t len, const char *src)
{
	snprintf(dst, len, "%s", src ? src : "");
}

/* The canary's evidence from a packed AgentRuntime. */
static void runtime_into(struct plan_target *t, const uint8_t *raw, int len)
{
	Slipway__V1__AgentRuntime *rt =
		len > 0 ? slipway__v1__agent_runtime__unpack(NULL, (size_t)len, raw) : NULL;
	t->rt_present = rt != NULL;
	if (rt == NULL)
		return;
	copy(t->rt_digest, sizeof t->rt_digest, rt->digest);
	t->rt_running = rt->process == SLIPWAY__V1__PROCESS_STATE__PROCESS_RUNNING;
	t->rt_healthy = rt->healthy;
	copy(t->rt_detail, sizeof t->rt_detail, rt->health_detail);
	slipway__v1__agent_runtime__free_unpacked(rt, NULL);
}

void store_snapshot_free(struct plan_deployment *d)
{
	free(d->t);
	d->t = NULL;
	d->nt = 0;
}

int store_load(struct db_conn *c, struct orch *o, const char *id, int64_t now,
	       struct plan_deployment *d, int *skip, char *err, size_t errlen)
{
	PGresult *r = NULL;
	char ms[24], lease[24];
	memset(d, 0, sizeof *d);
	*skip = 0;
	int rc = db_q(c,
		      "SELECT d.id, d.app, d.environment, d.version, d.digest, d.rollback_version,"
		      " d.rollback_digest, d.state, d.is_rollback, d.has_secrets, d.current_batch,"
		      " d.total_batches, d.batch_started_ms, d.batch_done_ms, d.rollback_started_ms,"
		      " d.started_ms, d.lease_owner, d.lease_expires_ms, d.strategy::text,"
		      " d.failure::text, d.stepped_ms, coalesce(e.last_good_digest, ''),"
		      " coalesce(e.last_good_version, '') FROM deployments d LEFT JOIN environments e"
		      " ON e.app = d.app AND e.environment = d.environment"
		      " WHERE d.id = $1 FOR UPDATE OF d SKIP LOCKED",
		      1, (const char *[]){ id }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) != 1) {
		PQclear(r);
		*skip = 1; /* another replica is stepping it right now */
		return 0;
	}
	copy(d->id, sizeof d->id, db_text(r, 0, 0));
	copy(d->app, sizeof d->app, db_text(r, 0, 1));
	copy(d->env, sizeof d->env, db_text(r, 0, 2));
	copy(d->version, sizeof d->version, db_text(r, 0, 3));
	copy(d->digest, sizeof d->digest, db_text(r, 0, 4));
	copy(d->rb_version, sizeof d->rb_version, db_text(r, 0, 5));
	copy(d->rb_digest, sizeof d->rb_digest, db_text(r, 0, 6));
	d->state = (int)db_int64(r, 0, 7);
	d->is_rollback = db_bool(r, 0, 8);
	d->has_secrets = db_bool(r, 0, 9) && o->secrets != NULL;
	d->current_batch = (int)db_int64(r, 0, 10);
	d->total_batches = (int)db_int64(r, 0, 11);
	d->batch_started_ms = db_int64(r, 0, 12);
	d->batch_done_ms = db_int64(r, 0, 13);
	d->rollback_started_ms = db_int64(r, 0, 14);
	d->started_ms = db_int64(r, 0, 15);
	char owner[64];
	copy(owner, sizeof owner, db_text(r, 0, 16));
	int64_t lease_expires = db_int64(r, 0, 17);
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
	d->last_step_ms = db_int64(r, 0, 20);
	copy(d->good_digest, sizeof d->good_digest, db_text(r, 0, 21));
	copy(d->good_version, sizeof d->good_version, db_text(r, 0, 22));
	PQclear(r);
	r = NULL;
	if (d->state != PLAN_D_RUNNING && d->state != PLAN_D_PAUSED && d->state != PLAN_D_ROLLING_BACK) {
		*skip = 1;
		return 0;
	}
	/* Leases: step only what we own, or what its owner stopped renewing. */
	if (strcmp(owner, o->replica) != 0 && lease_expires >= now) {
		*skip = 1;
		return 0;
	}
	db_i64(ms, now);
	db_i64(lease, now + o->c.lease_ms);
	if (strcmp(owner, o->replica) != 0) {
		rc = db_q(c,
			  "UPDATE deployments SET lease_owner = $2, lease_expires_ms = $3,"
			  " lease_gen = lease_gen + 1 WHERE id = $1",
			  3, (const char *[]){ id, o->replica, lease }, NULL, err, errlen);
		if (rc == 0 && owner[0]) {
			char detail[200];
			snprintf(detail, sizeof detail, "%s took over from %s (lease expired)", o->replica,
				 owner);
			rc = orch_timeline(o, c, id, "taken over", detail, err, errlen);
			log_info("took over a deployment", "deployment=%s from=%s", id, owner);
		}
	} else {
		rc = db_q(c, "UPDATE deployments SET lease_expires_ms = $2 WHERE id = $1", 2,
			  (const char *[]){ id, lease }, NULL, err, errlen);
	}
	if (rc != 0)
		return rc;
	/* A paused deployment is stepped too (its lease kept), so a resume
	 * sees no gap; the planner is not asked about it. */
	if (d->state == PLAN_D_PAUSED) {
		d->last_step_ms = now;
		return db_q(c, "UPDATE deployments SET stepped_ms = $2 WHERE id = $1", 2,
			    (const char *[]){ id, ms }, NULL, err, errlen);
	}
	/* The runtime (up to 4 KiB an agent) only where the planner reads it:
	 * a canary's deployed targets while it bakes. */
	char ss[8], ph[8];
	rc = db_q(c,
		  "SELECT t.agent_id, t.batch, t.phase, t.state, t.attempts, t.touched,"
		  " t.next_attempt_ms, t.updated_ms, coalesce(g.expires_ms, 0),"
		  " coalesce(a.lost, true), coalesce(a.last_heartbeat_ms > t.updated_ms + 500, false),"
		  " CASE WHEN $2 AND t.batch = 1 AND t.phase = $3 AND t.state = $4"
		  " THEN coalesce(a.runtime, ''::bytea) ELSE ''::bytea END"
		  " FROM targets t LEFT JOIN agents a ON a.id = t.agent_id"
		  " LEFT JOIN grants g ON g.deployment_id = t.deployment_id AND g.agent_id = t.agent_id"
		  " AND g.done WHERE t.deployment_id = $1 ORDER BY t.batch, t.agent_id",
		  4, (const char *[]){ id, d->canary && d->state == PLAN_D_RUNNING ? "true" : "false",
				       st(ph, PLAN_PHASE_DEPLOY), st(ss, PLAN_T_SUCCEEDED) },
		  &r, err, errlen);
	if (rc != 0)
		return rc;
	d->nt = PQntuples(r);
	d->t = calloc((size_t)(d->nt ? d->nt : 1), sizeof *d->t);
	if (d->t == NULL) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	for (int i = 0; i < d->nt; i++) {
		struct plan_target *t = &d->t[i];
		copy(t->agent, sizeof t->agent, db_text(r, i, 0));
		t->batch = (int)db_int64(r, i, 1);
		t->phase = (int)db_int64(r, i, 2);
		t->state = (int)db_int64(r, i, 3);
		t->attempts = (int)db_int64(r, i, 4);
		t->touched = db_bool(r, i, 5);
		t->next_attempt_ms = db_int64(r, i, 6);
		t->updated_ms = db_int64(r, i, 7);
		t->grant_expires_ms = db_int64(r, i, 8);
		t->agent_lost = db_bool(r, i, 9);
		t->hb_fresh = db_bool(r, i, 10);
		uint8_t raw[ORCH_RUNTIME_MAX];
		runtime_into(t, raw, db_bytea(r, i, 11, raw, sizeof raw));
	}
	PQclear(r);
	return 0;
}

/* ---- applying a plan ---- */

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/*
 * Sends targets idx[0..n) of d their tasks with a few statements whatever n
 * is (a rollback dispatches every touched target at once): the agents'
 * rows are locked in id order (the heartbeat flusher locks them in the same
 * order, so the two never deadlock), each agent's next fencing generation
 * is taken (never below the highest the agent has reported seeing, so a
 * database restored from an older backup cannot hand out generations the
 * agent would ignore), the target rows are updated in one statement and
 * every agent is notified at commit. A target whose agent turned lost in
 * the meantime fails.
 */
static int dispatch(struct db_conn *c, struct orch *o, struct plan_deployment *d, const int *idx, int n,
		    int64_t now, char *err, size_t errlen)
{
	PGresult *r = NULL;
	char *sql = NULL, ms[24], head[360], tail[200], sd[8], sp[8], sf[8];
	const char **vals = NULL, **ids = NULL;
	char (*gens)[24] = NULL;
	int64_t *gen = NULL;
	int rc = 0, m = 0;
	if (n <= 0)
		return 0;
	db_i64(ms, now);
	vals = calloc((size_t)n * 3 + 4, sizeof *vals);
	ids = calloc((size_t)n, sizeof *ids);
	gens = calloc((size_t)n, sizeof *gens);
	gen = calloc((size_t)n, sizeof *gen);
	if (vals == NULL || ids == NULL || gens == NULL || gen == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < n; i++)
		ids[i] = d->t[idx[i]].agent;
	qsort(ids, (size_t)n, sizeof *ids, cmp_str);
	sql = db_values_sql("SELECT id FROM agents WHERE id IN (SELECT v.id FROM (VALUES", (size_t)n, 1,
			    ") AS v(id)) ORDER BY id FOR UPDATE");
	if (sql == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = db_q(c, sql, n, ids, NULL, err, errlen)) != 0)
		goto out;
	free(sql);
	sql = db_values_sql("UPDATE agents SET next_generation = greatest(next_generation, highest_seen) + 1"
			    " WHERE id IN (SELECT v.id FROM (VALUES",
			    (size_t)n, 1, ") AS v(id)) RETURNING id, next_generation, lost");
	if (sql == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = db_q(c, sql, n, ids, &r, err, errlen)) != 0)
		goto out;
	for (int k = 0; k < PQntuples(r); k++)
		for (int i = 0; i < n; i++)
			if (!db_bool(r, k, 2) && strcmp(d->t[idx[i]].agent, db_text(r, k, 0)) == 0)
				gen[i] = db_int64(r, k, 1);
	for (int i = 0; i < n && rc == 0; i++) {
		struct plan_target *t = &d->t[idx[i]];
		if (gen[i] != 0)
			continue;
		/* The host is gone: that is this target's failure, not a retry. */
		t->state = PLAN_T_FAILED;
		rc = db_q(c,
			  "UPDATE targets SET state = $3, message = 'agent lost', updated_ms = $4"
			  " WHERE deployment_id = $1 AND agent_id = $2",
			  4, (const char *[]){ d->id, t->agent, st(sf, PLAN_T_FAILED), ms }, NULL, err,
			  errlen);
		if (rc == 0)
			rc = orch_timeline(o, c, d->id, "target failed", "agent lost", err, errlen);
	}
	if (rc != 0)
		goto out;
	/* The target rows: VALUES (agent, generation), then the deployment,
	 * now, and the two states. */
	for (int i = 0; i < n; i++) {
		if (gen[i] == 0)
			continue;
		vals[2 * m] = d->t[idx[i]].agent;
		vals[2 * m + 1] = db_i64(gens[m], gen[i]);
		ids[m] = d->t[idx[i]].agent;
		m++;
	}
	if (m == 0)
		goto out;
	vals[2 * m] = d->id;
	vals[2 * m + 1] = ms;
	vals[2 * m + 2] = st(sd, PLAN_T_DISPATCHED);
	vals[2 * m + 3] = st(sp, PLAN_T_PENDING);
	snprintf(head, sizeof head,
		 "UPDATE targets t SET state = $%d, generation = v.g::bigint, attempts = t.attempts + 1,"
		 " dispatched_ms = $%d, updated_ms = $%d, touched = true, message = '' FROM (VALUES",
		 2 * m + 3, 2 * m + 2, 2 * m + 2);
	snprintf(tail, sizeof tail,
		 ") AS v(agent, g) WHERE t.deployment_id = $%d AND t.agent_id = v.agent AND t.state = $%d",
		 2 * m + 1, 2 * m + 4);
	free(sql);
	if ((sql = db_values_sql(head, (size_t)m, 2, tail)) == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	if ((rc = db_q(c, sql, 2 * m + 4, vals, NULL, err, errlen)) != 0)
		goto out;
	if ((rc = orch_notify_agents(c, ids, (size_t)m, err, errlen)) != 0)
		goto out;
	for (int i = 0; i < n; i++)
		if (gen[i] != 0) {
			struct plan_target *t = &d->t[idx[i]];
			t->state = PLAN_T_DISPATCHED;
			t->touched = 1;
			t->attempts++;
		}
out:
	PQclear(r);
	free(sql);
	free(vals);
	free(ids);
	free(gens);
	free(gen);
	return rc;
}

/* Records the environment's current (and, on success, known-good) release. */
static int record_env(struct db_conn *c, const struct plan_deployment *d, const char *digest,
		      const char *version, int good, int64_t now, char *err, size_t errlen)
{
	char ms[24];
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
					 db_i64(ms, now) },
		    NULL, err, errlen);
}

static int set_state(struct db_conn *c, struct orch *o, struct plan_deployment *d, int state,
		     const char *event, const char *reason, const char *action, int outcome,
		     int64_t now, char *err, size_t errlen)
{
	char ms[24], s[8], res[200];
	int final = state == PLAN_D_SUCCEEDED || state == PLAN_D_FAILED || state == PLAN_D_ROLLED_BACK;
	int rc = db_q(c,
		      "UPDATE deployments SET state = $2, reason = $3,"
		      " finished_ms = CASE WHEN $4 THEN $5::bigint ELSE finished_ms END,"
		      " lease_owner = CASE WHEN $4 THEN '' ELSE lease_owner END WHERE id = $1",
		      5, (const char *[]){ d->id, st(s, state), reason, final ? "true" : "false",
					   db_i64(ms, now) },
		      NULL, err, errlen);
	if (rc == 0)
		rc = orch_timeline(o, c, d->id, event, reason, err, errlen);
	resource(res, sizeof res, d->id);
	if (rc == 0)
		rc = orch_audit(o, c, o->self_id, action, res, outcome, "release", d->digest, "reason",
				reason, err, errlen);
	d->state = state;
	return rc;
}

static int start_rollback(struct db_conn *c, struct orch *o, struct plan_deployment *d,
			  const char *why, int64_t now, char *err, size_t errlen)
{
	char ms[24], detail[1000], sp[8], ss[8], sr[8], ph[8], res[200];
	db_i64(ms, now);
	/* Every touched target goes back, in one batch: they already run (or
	 * were switching to) the bad release, so there is nothing to keep safe
	 * by going slower. Untouched targets never left the good release. */
	int rc = db_q(c,
		      "UPDATE targets SET phase = $3, state = $4, attempts = 0, next_attempt_ms = 0,"
		      " message = '', updated_ms = $2, task_id = deployment_id || ':rollback:' || agent_id"
		      " WHERE deployment_id = $1 AND touched",
		      4, (const char *[]){ d->id, ms, st(ph, PLAN_PHASE_ROLLBACK), st(sp, PLAN_T_PENDING) },
		      NULL, err, errlen);
	if (rc == 0)
		rc = db_q(c,
			  "UPDATE targets SET state = $3, message = 'not reached', updated_ms = $2"
			  " WHERE deployment_id = $1 AND NOT touched",
			  3, (const char *[]){ d->id, ms, st(ss, PLAN_T_SKIPPED) }, NULL, err, errlen);
	if (rc == 0)
		rc = db_q(c,
			  "UPDATE deployments SET state = $6, rollback_digest = $2, rollback_version = $3,"
			  " rollback_started_ms = $4, reason = $5 WHERE id = $1",
			  6, (const char *[]){ d->id, d->good_digest, d->good_version, ms, why,
					       st(sr, PLAN_D_ROLLING_BACK) },
			  NULL, err, errlen);
	snprintf(detail, sizeof detail, "%.600s; rolling back to %s@%s", why, d->app, d->good_version);
	if (rc == 0)
		rc = orch_timeline(o, c, d->id, "rolling back", detail, err, errlen);
	resource(res, sizeof res, d->id);
	if (rc == 0)
		rc = orch_audit(o, c, o->self_id, "rollback.start", res,
				SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, "to", d->good_digest, "reason", why,
				err, errlen);
	return rc;
}

/* The target rows `idx` were planned to need a secrets grant: a pending
 * grant row each (kept if one is already pending), performed by the driver
 * after commit. */
static int want_grants(struct db_conn *c, struct plan_deployment *d, const int *idx, int n,
		       int64_t now, char *err, size_t errlen)
{
	char ms[24];
	int rc = 0;
	db_i64(ms, now);
	for (int i = 0; i < n && rc == 0; i++) {
		const struct plan_target *t = &d->t[idx[i]];
		rc = db_q(c,
			  "INSERT INTO grants (deployment_id, agent_id, done, expires_ms, requested_ms)"
			  " VALUES ($1, $2, false, 0, $3) ON CONFLICT (deployment_id, agent_id) DO UPDATE"
			  " SET done = false, requested_ms = $3, claim_until_ms = 0 WHERE grants.done",
			  3, (const char *[]){ d->id, t->agent, ms }, NULL, err, errlen);
		if (rc == 0)
			rc = db_q(c,
				  "UPDATE targets SET message = 'waiting for a secrets grant'"
				  " WHERE deployment_id = $1 AND agent_id = $2",
				  2, (const char *[]){ d->id, t->agent }, NULL, err, errlen);
	}
	return rc;
}

int store_apply(struct db_conn *c, struct orch *o, struct plan_deployment *d,
		const struct plan *p, int64_t now, int *grants, char *err, size_t errlen)
{
	char ms[24], b[16], v[24], s1[8], s2[8], set[48];
	int rc = 0, *idx = NULL, ni = 0, *gidx = NULL, ng = 0;
	*grants = 0;
	db_i64(ms, now);
	idx = calloc((size_t)(d->nt ? d->nt : 1), sizeof *idx);
	gidx = calloc((size_t)(d->nt ? d->nt : 1), sizeof *gidx);
	if (idx == NULL || gidx == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	/* Every step renews the record of when it was stepped. */
	rc = db_q(c, "UPDATE deployments SET stepped_ms = $2 WHERE id = $1", 2,
		  (const char *[]){ d->id, ms }, NULL, err, errlen);
	for (size_t i = 0; i < p->n && rc == 0; i++) {
		const struct plan_action *x = &p->a[i];
		const struct plan_target *t = x->target >= 0 && x->target < d->nt ? &d->t[x->target] : NULL;
		switch (x->kind) {
		case PLAN_EXTEND_DEADLINES:
			rc = db_q(c,
				  "UPDATE deployments SET"
				  " batch_started_ms = CASE WHEN batch_started_ms > 0 THEN batch_started_ms + $2 ELSE 0 END,"
				  " rollback_started_ms = CASE WHEN rollback_started_ms > 0 THEN rollback_started_ms + $2 ELSE 0 END,"
				  " batch_done_ms = CASE WHEN batch_done_ms > 0 THEN batch_done_ms + $2 ELSE batch_done_ms END"
				  " WHERE id = $1",
				  2, (const char *[]){ d->id, db_i64(v, x->value) }, NULL, err, errlen);
			break;
		case PLAN_START_BATCH:
			snprintf(b, sizeof b, "%lld", (long long)x->value);
			rc = db_q(c,
				  "UPDATE deployments SET current_batch = $2, batch_started_ms = $3,"
				  " batch_done_ms = 0 WHERE id = $1",
				  3, (const char *[]){ d->id, b, ms }, NULL, err, errlen);
			break;
		case PLAN_BATCH_DONE:
			rc = db_q(c, "UPDATE deployments SET batch_done_ms = $2 WHERE id = $1", 2,
				  (const char *[]){ d->id, db_i64(v, x->value) }, NULL, err, errlen);
			break;
		case PLAN_GRANT:
			if (t != NULL)
				gidx[ng++] = x->target;
			break;
		case PLAN_DISPATCH:
			if (t != NULL)
				idx[ni++] = x->target;
			break;
		case PLAN_FAIL_TARGET:
			if (t == NULL)
				break;
			rc = db_q(c,
				  "UPDATE targets SET state = $3, message = $4, updated_ms = $5"
				  " WHERE deployment_id = $1 AND agent_id = $2 AND phase = $6",
				  6, (const char *[]){ d->id, t->agent, st(s1, PLAN_T_FAILED), x->detail, ms,
						       st(s2, t->phase) },
				  NULL, err, errlen);
			break;
		case PLAN_SKIP_UNFINISHED:
			rc = db_q(c,
				  "UPDATE targets SET state = $3, message = $4, updated_ms = $2"
				  " WHERE deployment_id = $1 AND state = ANY($5::smallint[])",
				  5, (const char *[]){ d->id, ms, st(s2, PLAN_T_SKIPPED), x->detail, UNFINISHED(set) },
				  NULL, err, errlen);
			break;
		case PLAN_START_ROLLBACK:
			rc = start_rollback(c, o, d, x->detail, now, err, errlen);
			break;
		case PLAN_PAUSE:
			rc = set_state(c, o, d, PLAN_D_PAUSED, x->event, x->detail, x->audit, x->outcome, now,
				       err, errlen);
			break;
		case PLAN_FINISH:
			if (x->record == PLAN_RECORD_GOOD) {
				rc = record_env(c, d, d->digest, d->version, 1, now, err, errlen);
			} else if (x->record == PLAN_RECORD_ROLLBACK) {
				rc = db_q(c, "UPDATE deployments SET rollback_duration_ms = $2 WHERE id = $1", 2,
					  (const char *[]){ d->id, db_i64(v, now - d->rollback_started_ms) },
					  NULL, err, errlen);
				if (rc == 0)
					rc = record_env(c, d, d->rb_digest, d->rb_version, 0, now, err, errlen);
			}
			if (rc == 0)
				rc = set_state(c, o, d, x->state, x->event, x->detail, x->audit, x->outcome,
					       now, err, errlen);
			break;
		case PLAN_TIMELINE:
			rc = orch_timeline(o, c, d->id, x->event, x->detail, err, errlen);
			break;
		default:
			break;
		}
	}
	if (rc == 0)
		rc = want_grants(c, d, gidx, ng, now, err, errlen);
	if (rc == 0)
		rc = dispatch(c, o, d, idx, ni, now, err, errlen);
	*grants = ng;
out:
	free(idx);
	free(gidx);
	return rc;
}

/* ---- secrets grants ---- */

int store_grants_claim(struct db_conn *c, int64_t now, int limit, PGresult **out, char *err,
		       size_t errlen)
{
	char ms[24], until[24], lim[16];
	snprintf(lim, sizeof lim, "%d", limit);
	/* A claim keeps two replicas (or two rounds) from asking at once; one
	 * that outlives its claim is asked again (the grant is idempotent by
	 * its id). */
	return db_q(c,
		    "UPDATE grants g SET claim_until_ms = $2, attempts = attempts + 1 FROM ("
		    " SELECT gr.deployment_id, gr.agent_id FROM grants gr WHERE NOT gr.done"
		    " AND gr.claim_until_ms < $1 AND gr.next_try_ms <= $1 ORDER BY gr.requested_ms"
		    " LIMIT $3 FOR UPDATE SKIP LOCKED) w, deployments d, agents a"
		    " WHERE g.deployment_id = w.deployment_id AND g.agent_id = w.agent_id"
		    " AND d.id = g.deployment_id AND a.id = g.agent_id"
		    " RETURNING g.deployment_id, g.agent_id, d.app, d.environment, a.seal_key,"
		    " g.requested_ms, g.attempts, d.trace_id",
		    3, (const char *[]){ db_i64(ms, now), db_i64(until, now + 15000), lim }, out, err,
		    errlen);
}

int store_grant_done(struct db_conn *c, const char *deployment, const char *agent,
		     int64_t requested_ms, int64_t expires_ms, char *err, size_t errlen)
{
	char e[24], rq[24];
	int rc = db_q(c,
		      "UPDATE grants SET done = true, expires_ms = $3, error = '', attempts = 0"
		      " WHERE deployment_id = $1 AND agent_id = $2 AND requested_ms = $4",
		      4, (const char *[]){ deployment, agent, db_i64(e, expires_ms), db_i64(rq, requested_ms) },
		      NULL, err, errlen);
	if (rc == 0)
		rc = db_q(c,
			  "UPDATE targets SET message = '' WHERE deployment_id = $1 AND agent_id = $2"
			  " AND message = 'waiting for a secrets grant'",
			  2, (const char *[]){ deployment, agent }, NULL, err, errlen);
	if (rc == 0)
		rc = orch_notify_deployment(c, deployment, err, errlen);
	return rc;
}

int store_grant_failed(struct db_conn *c, const char *deployment, const char *agent,
		       int64_t next_try_ms, const char *why, char *err, size_t errlen)
{
	char nt[24];
	return db_q(c,
		    "UPDATE grants SET claim_until_ms = 0, next_try_ms = $3, error = $4"
		    " WHERE deployment_id = $1 AND agent_id = $2 AND NOT done",
		    4, (const char *[]){ deployment, agent, db_i64(nt, next_try_ms), why }, NULL, err,
		    errlen);
}

/* ---- pins ---- */

int store_grant_refused(struct db_conn *c, struct orch *o, const char *deployment,
			const char *agent, int64_t next_try_ms, const char *why, char *err,
			size_t errlen)
{
	PGresult *r = NULL;
	char ms[24], sf[8], ss[8], set[48], detail[1000], res[200];
	int64_t now = clock_wall_ms();
	int rc = db_q(c, "SELECT state FROM deployments WHERE id = $1 FOR UPDATE", 1,
		      (const char *[]){ deployment }, &r, err, errlen);
	if (rc != 0)
		return rc;
	int state = PQntuples(r) == 1 ? (int)db_int64(r, 0, 0) : 0;
	PQclear(r);
	if (state != PLAN_D_RUNNING && state != PLAN_D_PAUSED) {
		/* A rollback is not abandoned: it keeps asking (back-off). */
		return store_grant_failed(c, deployment, agent, next_try_ms, why, err, errlen);
	}
	snprintf(detail, sizeof detail, "the secrets service refused the grant for %.200s: %.600s",
		 agent, why);
	db_i64(ms, now);
	rc = db_q(c,
		  "UPDATE deployments SET state = $2, reason = $3, finished_ms = $4, lease_owner = ''"
		  " WHERE id = $1",
		  4, (const char *[]){ deployment, st(sf, PLAN_D_FAILED), detail, ms }, NULL, err, errlen);
	/* As on cancel: work not started is skipped, running tasks superseded. */
	if (rc == 0)
		rc = db_q(c,
			  "UPDATE targets SET state = $3, message = 'secrets grant refused', updated_ms = $2"
			  " WHERE deployment_id = $1 AND state = ANY($4::smallint[])",
			  4, (const char *[]){ deployment, ms, st(ss, PLAN_T_SKIPPED), UNFINISHED(set) },
			  NULL, err, errlen);
	if (rc == 0)
		rc = db_q(c, "DELETE FROM grants WHERE deployment_id = $1 AND NOT done", 1,
			  (const char *[]){ deployment }, NULL, err, errlen);
	if (rc == 0)
		rc = orch_timeline(o, c, deployment, "failed", detail, err, errlen);
	resource(res, sizeof res, deployment);
	if (rc == 0)
		rc = orch_audit(o, c, o->self_id, "deploy.failed", res,
				SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, "reason", detail, NULL, NULL, err,
				errlen);
	if (rc == 0)
		rc = orch_notify_deployment(c, deployment, err, errlen);
	return rc;
}

int store_pins_unsynced(struct db_conn *c, PGresult **out, char *err, size_t errlen)
{
	return db_q(c,
		    "SELECT app, environment, current_digest, last_good_digest FROM environments"
		    " WHERE NOT pins_synced LIMIT 20",
		    0, NULL, out, err, errlen);
}

int store_pins_synced(struct db_conn *c, const char *app, const char *env, const char *current,
		      const char *good, char *err, size_t errlen)
{
	return db_q(c,
		    "UPDATE environments SET pins_synced = true WHERE app = $1 AND environment = $2"
		    " AND current_digest = $3 AND last_good_digest = $4",
		    4, (const char *[]){ app, env, current, good }, NULL, err, errlen);
}

/* ---- tasks ---- */

/* The columns of a task, in the order store_task_fill reads them. */
#define TASK_COLS                                                                            \
	"t.task_id, t.generation, t.phase, t.attempts, d.id, d.app, d.environment,"         \
	" d.version, d.digest, d.rollback_version, d.rollback_digest, d.has_secrets,"       \
	" t.dispatched_ms, coalesce((d.failure->>'progress_deadline_ms')::bigint, 300000),"  \
	" d.trace_id"

static int fill_task(struct rpc_ctx *ctx, const PGresult *r, int row, int col,
		     Slipway__V1__PollTasksResponse *resp)
{
	Slipway__V1__Task *t = rpc_alloc(ctx, sizeof *t);
	Slipway__V1__Task **arr = rpc_alloc(ctx, sizeof *arr);
	if (t == NULL || arr == NULL)
		return SW_ENOMEM;
	slipway__v1__task__init(t);
	int rollback = db_int64(r, row, col + 2) == PLAN_PHASE_ROLLBACK;
	t->task_id = rpc_strdup(ctx, db_text(r, row, col));
	t->generation = (uint64_t)db_int64(r, row, col + 1);
	t->kind = rollback ? SLIPWAY__V1__TASK_KIND__TASK_ROLLBACK : SLIPWAY__V1__TASK_KIND__TASK_DEPLOY;
	t->attempt = (uint32_t)db_int64(r, row, col + 3);
	t->deployment_id = rpc_strdup(ctx, db_text(r, row, col + 4));
	t->app = rpc_strdup(ctx, db_text(r, row, col + 5));
	t->environment = rpc_strdup(ctx, db_text(r, row, col + 6));
	t->version = rpc_strdup(ctx, db_text(r, row, col + (rollback ? 9 : 7)));
	t->digest = rpc_strdup(ctx, db_text(r, row, col + (rollback ? 10 : 8)));
	t->has_secrets = db_bool(r, row, col + 11);
	t->deadline_unix_ms = db_int64(r, row, col + 12) + db_int64(r, row, col + 13);
	t->trace_id = rpc_strdup(ctx, db_text(r, row, col + 14));
	arr[0] = t;
	resp->n_tasks = 1;
	resp->tasks = arr;
	return 0;
}

/* Gives the dispatched task `task_id` of `agent` a generation above
 * `highest` (what the agent reports having seen), in one statement, when
 * the database's counter is below it: the database never issued that
 * generation, so it forgot (a restore). In every other case (the agent
 * already holds this task, or saw a later one) nothing changes. Returns 0
 * with *gen, or -1 when nothing was renumbered. */
static int renumber(struct db_conn *c, const char *agent, const char *task_id, uint64_t highest,
		    uint64_t *gen)
{
	PGresult *r = NULL;
	char err[256], h[24], sd[8];
	int rc = db_q(c,
		      "WITH g AS (UPDATE agents SET next_generation = greatest(next_generation,"
		      " highest_seen, $2::bigint) + 1, highest_seen = greatest(highest_seen, $2::bigint)"
		      " WHERE id = $1 AND next_generation < $2::bigint RETURNING next_generation)"
		      " UPDATE targets t SET generation = g.next_generation FROM g WHERE t.task_id = $3"
		      " AND t.agent_id = $1 AND t.state = $4 AND t.generation <= $2::bigint"
		      " RETURNING t.generation",
		      4, (const char *[]){ agent, db_i64(h, (int64_t)highest), task_id,
					   st(sd, PLAN_T_DISPATCHED) },
		      &r, err, sizeof err);
	if (rc != 0 || PQntuples(r) != 1) {
		PQclear(r);
		return -1;
	}
	*gen = (uint64_t)db_int64(r, 0, 0);
	PQclear(r);
	log_warn("an agent has seen task generations this database never issued: was it restored"
		 " from an older backup? Its task is numbered above them",
		 "agent=%s task=%s highest_seen=%llu generation=%llu", agent, task_id,
		 (unsigned long long)highest, (unsigned long long)*gen);
	return 0;
}

static int cmp_row_agent(const void *a, const void *b, void *arg)
{
	const PGresult *r = arg;
	return strcmp(db_text(r, *(const int *)a, 0), db_text(r, *(const int *)b, 0));
}

int store_next_tasks(struct db_conn *c, struct orch_task_query *q, size_t n, char *err,
		     size_t errlen)
{
	PGresult *r = NULL;
	int *idx = NULL, rc = 0;
	char sd[8], act[48], head[700];
	/* db_values_sql numbers the VALUES from $1: ours follow them. */
	snprintf(head, sizeof head,
		 "SELECT DISTINCT ON (t.agent_id) t.agent_id, " TASK_COLS
		 " FROM targets t JOIN deployments d ON d.id = t.deployment_id"
		 " WHERE t.state = $%zu::smallint AND d.state = ANY($%zu::smallint[])"
		 " AND t.agent_id IN (SELECT w.a FROM (VALUES",
		 n + 1, n + 2);
	char *sql = db_values_sql(head, n, 1, ") AS w(a)) ORDER BY t.agent_id, t.generation DESC");
	const char **vals = calloc(n + 2, sizeof *vals);
	if (sql == NULL || vals == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		vals[i] = q[i].agent;
	vals[n] = st(sd, PLAN_T_DISPATCHED);
	vals[n + 1] = ACTIVE(act);
	if ((rc = db_q(c, sql, (int)n + 2, vals, &r, err, errlen)) != 0)
		goto out;
	int rows = PQntuples(r);
	if (rows == 0)
		goto out;
	/* Rows sorted by agent here (the database's collation may differ). */
	if ((idx = calloc((size_t)rows, sizeof *idx)) == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (int k = 0; k < rows; k++)
		idx[k] = k;
	qsort_r(idx, (size_t)rows, sizeof *idx, cmp_row_agent, r);
	for (size_t i = 0; i < n; i++) {
		int lo = 0, hi = rows - 1, hit = -1;
		while (lo <= hi && hit < 0) {
			int mid = lo + (hi - lo) / 2, cmp = strcmp(q[i].agent, db_text(r, idx[mid], 0));
			if (cmp == 0)
				hit = idx[mid];
			else if (cmp < 0)
				hi = mid - 1;
			else
				lo = mid + 1;
		}
		if (hit < 0)
			continue;
		uint64_t gen = (uint64_t)db_int64(r, hit, 2);
		if (gen == q[i].highest)
			continue; /* the agent holds this task (the usual re-poll) */
		if (gen < q[i].highest) {
			/* The agent has seen a generation at least as high as its
			 * current task's: the database forgot generations it issued
			 * (restored from an older backup). Number the task above
			 * what the agent has seen, or it would never run it. */
			if (renumber(c, q[i].agent, db_text(r, hit, 1), q[i].highest, &gen) != 0)
				continue;
		}
		if (fill_task(q[i].ctx, r, hit, 1, (void *)rpc_response(q[i].ctx)) != 0) {
			rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
			goto out;
		}
		((Slipway__V1__PollTasksResponse *)rpc_response(q[i].ctx))->tasks[0]->generation = gen;
		q[i].found = 1;
	}
out:
	PQclear(r);
	free(idx);
	free(vals);
	free(sql);
	return rc;
}

int store_report(struct db_conn *c, struct orch *o, const char *agent,
		 const Slipway__V1__TaskReport *rep, Slipway__V1__ReportTaskResponse *resp,
		 struct store_report_out *out, char *err, size_t errlen)
{
	PGresult *r = NULL;
	char ms[24], gen[24], s[8], ph[8];
	int64_t now = clock_wall_ms();
	memset(out, 0, sizeof *out);
	resp->accepted = 0;
	resp->superseded = 0;
	int rc = db_q(c,
		      "SELECT t.agent_id, t.generation, t.state, t.phase, t.attempts, t.deployment_id,"
		      " coalesce((d.failure->>'retries')::int, 0),"
		      " coalesce((d.failure->>'retry_backoff_ms')::bigint, 1000), d.state"
		      " FROM targets t JOIN deployments d ON d.id = t.deployment_id"
		      " WHERE t.task_id = $1 FOR UPDATE OF t",
		      1, (const char *[]){ rep->task_id }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) == 0) {
		out->unknown = 1;
		goto out;
	}
	if (strcmp(db_text(r, 0, 0), agent) != 0) {
		out->not_yours = 1;
		goto out;
	}
	snprintf(out->deployment, sizeof out->deployment, "%s", db_text(r, 0, 5));
	uint64_t generation = (uint64_t)db_int64(r, 0, 1);
	int state = (int)db_int64(r, 0, 2), phase = (int)db_int64(r, 0, 3);
	int attempts = (int)db_int64(r, 0, 4), retries = (int)db_int64(r, 0, 6);
	int64_t backoff = db_int64(r, 0, 7);
	int dstate = (int)db_int64(r, 0, 8);
	if (generation != rep->generation) {
		resp->superseded = 1;
		goto out;
	}
	resp->accepted = 1;
	if (state != PLAN_T_DISPATCHED && state != PLAN_T_RUNNING)
		goto out; /* already decided: a repeated report changes nothing */
	if (dstate != PLAN_D_RUNNING && dstate != PLAN_D_PAUSED && dstate != PLAN_D_ROLLING_BACK) {
		resp->superseded = 1; /* the deployment ended (cancelled, failed) */
		goto out;
	}
	db_i64(ms, now);
	db_i64(gen, (int64_t)generation);
	const char *prev = rep->runtime ? rep->runtime->digest : "";
	char msg[256];
	snprintf(msg, sizeof msg, "%.200s", rep->message);
	switch (rep->result) {
	case SLIPWAY__V1__TASK_RESULT__TASK_STARTED:
		rc = db_q(c,
			  "UPDATE targets SET state = $4, updated_ms = $2, touched = true,"
			  " previous_digest = CASE WHEN previous_digest = '' AND phase = $5 THEN $3"
			  " ELSE previous_digest END WHERE task_id = $1",
			  5, (const char *[]){ rep->task_id, ms, prev, st(s, PLAN_T_RUNNING),
					       st(ph, PLAN_PHASE_DEPLOY) },
			  NULL, err, errlen);
		break;
	case SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED:
		rc = db_q(c,
			  "UPDATE targets SET state = $3, updated_ms = $2, touched = true, message = ''"
			  " WHERE task_id = $1",
			  3, (const char *[]){ rep->task_id, ms,
					       st(s, phase == PLAN_PHASE_ROLLBACK ? PLAN_T_ROLLED_BACK
										: PLAN_T_SUCCEEDED) },
			  NULL, err, errlen);
		if (rc == 0)
			rc = orch_timeline(o, c, out->deployment,
					   phase == PLAN_PHASE_ROLLBACK ? "target rolled back"
									: "target succeeded",
					   agent, err, errlen);
		break;
	case SLIPWAY__V1__TASK_RESULT__TASK_FAILED: {
		char detail[600], next[24];
		int64_t at = plan_retry_at(attempts, retries, backoff, now);
		if (at >= 0) {
			rc = db_q(c,
				  "UPDATE targets SET state = $5, updated_ms = $2, touched = true,"
				  " message = $3, next_attempt_ms = $4 WHERE task_id = $1",
				  5, (const char *[]){ rep->task_id, ms, msg, db_i64(next, at),
						       st(s, PLAN_T_PENDING) },
				  NULL, err, errlen);
			snprintf(detail, sizeof detail, "%s: %s (attempt %d of %d; retrying)", agent, msg,
				 attempts, retries + 1);
		} else {
			rc = db_q(c,
				  "UPDATE targets SET state = $4, updated_ms = $2, touched = true,"
				  " message = $3 WHERE task_id = $1",
				  4, (const char *[]){ rep->task_id, ms, msg, st(s, PLAN_T_FAILED) }, NULL,
				  err, errlen);
			snprintf(detail, sizeof detail, "%s: %s", agent, msg);
		}
		if (rc == 0)
			rc = orch_timeline(o, c, out->deployment,
					   phase == PLAN_PHASE_ROLLBACK ? "rollback failed on a target"
									: "target failed",
					   detail, err, errlen);
		char res[200];
		resource(res, sizeof res, out->deployment);
		if (rc == 0)
			rc = orch_audit(o, c, agent,
					phase == PLAN_PHASE_ROLLBACK ? "rollback.target" : "deploy.target",
					res, SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, "reason", msg,
					"attempt", gen, err, errlen);
		break;
	}
	default:
		rc = sw_errf(err, errlen, SW_EINVAL, "result must be STARTED, SUCCEEDED or FAILED");
	}
	if (rc == 0)
		rc = orch_notify_deployment(c, out->deployment, err, errlen);
out:
	PQclear(r);
	return rc;
}

/* ---- the registry's part ---- */

int store_resend_running(struct db_conn *c, struct orch *o, const char *agent, int64_t now, char *deployment,
			 size_t dlen, char *err, size_t errlen)
{
	PGresult *r = NULL;
	char ms[24], sr[8], sd[8], act[48];
	deployment[0] = '\0';
	/* A restarted agent lost the task it was running: give it the same task
	 * again under a new generation (re-running it is harmless). */
	int rc = db_q(c,
		      "WITH g AS (UPDATE agents SET next_generation = greatest(next_generation, highest_seen) + 1"
		      "  WHERE id = $1 AND EXISTS (SELECT 1 FROM targets t JOIN deployments d"
		      "  ON d.id = t.deployment_id WHERE t.agent_id = $1 AND t.state = $3"
		      "  AND d.state = ANY($5::smallint[])) RETURNING next_generation)"
		      " UPDATE targets t SET state = $4, generation = g.next_generation,"
		      " updated_ms = $2, dispatched_ms = $2 FROM g, deployments d"
		      " WHERE t.agent_id = $1 AND t.state = $3 AND d.id = t.deployment_id"
		      " AND d.state = ANY($5::smallint[]) RETURNING t.deployment_id",
		      5, (const char *[]){ agent, db_i64(ms, now), st(sr, PLAN_T_RUNNING),
					   st(sd, PLAN_T_DISPATCHED), ACTIVE(act) },
		      &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) > 0) {
		snprintf(deployment, dlen, "%s", db_text(r, 0, 0));
		rc = orch_timeline(o, c, deployment, "task re-sent", agent, err, errlen);
		if (rc == 0)
			rc = orch_notify_agent(c, agent, err, errlen);
	}
	PQclear(r);
	return rc;
}

int store_notify_lost(struct db_conn *c, const char *agent, char *err, size_t errlen)
{
	PGresult *r = NULL;
	char fl[48], act[48];
	/* The deployments with work in flight on it decide at their next step
	 * (the planner fails those targets); wake their owners now. */
	int rc = db_q(c,
		      "SELECT DISTINCT t.deployment_id FROM targets t JOIN deployments d"
		      " ON d.id = t.deployment_id WHERE t.agent_id = $1"
		      " AND t.state = ANY($2::smallint[]) AND d.state = ANY($3::smallint[])",
		      3, (const char *[]){ agent, IN_FLIGHT(fl), ACTIVE(act) }, &r, err, errlen);
	if (rc != 0)
		return rc;
	for (int k = 0; k < PQntuples(r) && rc == 0; k++)
		rc = orch_notify_deployment(c, db_text(r, k, 0), err, errlen);
	PQclear(r);
	return rc;
}

/* ---- read models (views.c turns the rows into messages) ---- */

static pthread_once_t cols_once = PTHREAD_ONCE_INIT;
static char cols[1024];

static void cols_init(void)
{
	snprintf(cols, sizeof cols,
		 "d.id, d.app, d.environment, d.version, d.digest, d.state, d.strategy::text,"
		 " d.failure::text, d.priority, d.requester, d.created_ms, d.started_ms, d.finished_ms,"
		 " d.reason, d.is_rollback, d.rollback_of, d.total_batches, d.current_batch,"
		 " d.rollback_duration_ms, d.break_glass, d.break_glass_reason,"
		 " (SELECT count(*) FROM targets t WHERE t.deployment_id = d.id),"
		 " (SELECT count(*) FROM targets t WHERE t.deployment_id = d.id AND t.state IN (%d, %d)),"
		 " (SELECT count(*) FROM targets t WHERE t.deployment_id = d.id AND t.state = %d),"
		 " d.rollback_version",
		 PLAN_T_SUCCEEDED, PLAN_T_ROLLED_BACK, PLAN_T_FAILED);
}

const char *store_deployment_cols(void)
{
	pthread_once(&cols_once, cols_init);
	return cols;
}

int store_deployment_row(struct db_conn *c, const char *id, PGresult **out, char *err,
			 size_t errlen)
{
	char sql[1200];
	snprintf(sql, sizeof sql, "SELECT %s FROM deployments d WHERE d.id = $1", store_deployment_cols());
	int rc = db_q(c, sql, 1, (const char *[]){ id }, out, err, errlen);
	if (rc == 0 && PQntuples(*out) != 1) {
		PQclear(*out);
		*out = NULL;
		return sw_errf(err, errlen, SW_ENOTFOUND, "no deployment %s", id);
	}
	return rc;
}

int store_scope(struct db_conn *c, const char *id, char app[64], char env[64], char *err,
		size_t errlen)
{
	PGresult *r = NULL;
	int rc = db_q(c, "SELECT app, environment FROM deployments WHERE id = $1", 1,
		      (const char *[]){ id }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) != 1) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOTFOUND, "no deployment %s", id);
	}
	snprintf(app, 64, "%s", db_text(r, 0, 0));
	snprintf(env, 64, "%s", db_text(r, 0, 1));
	PQclear(r);
	return 0;
}

int store_targets_of(struct db_conn *c, const char *id, PGresult **out, char *err, size_t errlen)
{
	return db_q(c,
		    "SELECT agent_id, batch, state, attempts, message, updated_ms, previous_digest, phase"
		    " FROM targets WHERE deployment_id = $1 ORDER BY batch, agent_id LIMIT 5000",
		    1, (const char *[]){ id }, out, err, errlen);
}

int store_timeline_of(struct db_conn *c, const char *id, PGresult **out, char *err, size_t errlen)
{
	return db_q(c,
		    "SELECT time_ms, event, detail FROM timeline WHERE deployment_id = $1"
		    " ORDER BY id LIMIT 2000",
		    1, (const char *[]){ id }, out, err, errlen);
}

int store_list(struct db_conn *c, const char *app, const char *env, int state, int64_t before,
	       int limit, PGresult **out, char *err, size_t errlen)
{
	char sql[1600], s[8], lim[24], tok[24];
	snprintf(s, sizeof s, "%d", state);
	snprintf(lim, sizeof lim, "%d", limit);
	snprintf(sql, sizeof sql,
		 "SELECT %s, d.queue_seq FROM deployments d WHERE ($1 = '' OR d.app = $1)"
		 " AND ($2 = '' OR d.environment = $2) AND ($3::int = 0 OR d.state = $3::int)"
		 " AND ($4::bigint = 0 OR d.queue_seq < $4::bigint)"
		 " ORDER BY d.queue_seq DESC LIMIT $5",
		 store_deployment_cols());
	return db_q(c, sql, 5, (const char *[]){ app, env, s, db_i64(tok, before), lim }, out, err,
		    errlen);
}

int store_env_deployments(struct db_conn *c, const char *app, const char *env, PGresult **out,
			  char *err, size_t errlen)
{
	char sql[1600], act[48], live[48];
	snprintf(sql, sizeof sql,
		 "SELECT %s FROM deployments d WHERE d.app = $1 AND d.environment = $2"
		 " AND d.state = ANY($3::smallint[]) ORDER BY (d.state = ANY($4::smallint[])) DESC,"
		 " d.priority DESC, d.queue_seq",
		 store_deployment_cols());
	return db_q(c, sql, 4,
		    (const char *[]){ app, env,
				      states(live, PLAN_D_PENDING_APPROVAL, PLAN_D_QUEUED, PLAN_D_RUNNING,
					     PLAN_D_PAUSED, PLAN_D_ROLLING_BACK, 0),
				      ACTIVE(act) },
		    out, err, errlen);
}

int store_counts(struct db_conn *c, int64_t *active, int64_t *queued, char *err, size_t errlen)
{
	PGresult *r = NULL;
	char act[48], q[8];
	int rc = db_q(c,
		      "SELECT (SELECT count(*) FROM deployments WHERE state = ANY($1::smallint[])),"
		      " (SELECT count(*) FROM deployments WHERE state = $2)",
		      2, (const char *[]){ ACTIVE(act), st(q, PLAN_D_QUEUED) }, &r, err, errlen);
	if (rc != 0)
		return rc;
	*active = db_int64(r, 0, 0);
	*queued = db_int64(r, 0, 1);
	PQclear(r);
	return 0;
}

int store_queue_position(struct db_conn *c, const char *id, uint32_t *pos, char *err,
			 size_t errlen)
{
	PGresult *r = NULL;
	char q[8];
	int rc = db_q(c,
		      "SELECT count(*) FROM deployments q, deployments me WHERE me.id = $1 AND q.state = $2"
		      " AND (q.priority > me.priority OR (q.priority = me.priority AND q.queue_seq <= me.queue_seq))",
		      2, (const char *[]){ id, st(q, PLAN_D_QUEUED) }, &r, err, errlen);
	if (rc == 0)
		*pos = (uint32_t)db_int64(r, 0, 0);
	PQclear(r);
	return rc;
}

/* ---- requests ---- */

int store_known_good(struct db_conn *c, const char *app, const char *env, char *digest,
		     size_t dlen, char *err, size_t errlen)
{
	PGresult *r = NULL;
	int rc = db_q(c,
		      "SELECT last_good_digest FROM environments WHERE app = $1 AND environment = $2",
		      2, (const char *[]){ app, env }, &r, err, errlen);
	if (rc != 0)
		return rc;
	snprintf(digest, dlen, "%s", PQntuples(r) == 1 ? db_text(r, 0, 0) : "");
	PQclear(r);
	return 0;
}

int store_ran_good(struct db_conn *c, const char *app, const char *env, const char *digest,
		   char *err, size_t errlen)
{
	PGresult *r = NULL;
	char ss[8], sr[8];
	/* A deployment of it that succeeded, a rollback to it that finished,
	 * or the environment's known-good release. */
	int rc = db_q(c,
		      "SELECT EXISTS (SELECT 1 FROM deployments WHERE app = $1 AND environment = $2"
		      " AND ((digest = $3 AND state = $4) OR (rollback_digest = $3 AND state = $5)))"
		      " OR EXISTS (SELECT 1 FROM environments WHERE app = $1 AND environment = $2"
		      " AND last_good_digest = $3)",
		      5, (const char *[]){ app, env, digest, st(ss, PLAN_D_SUCCEEDED),
					   st(sr, PLAN_D_ROLLED_BACK) },
		      &r, err, errlen);
	if (rc != 0)
		return rc;
	rc = db_bool(r, 0, 0) ? 1 : 0;
	PQclear(r);
	return rc;
}

int store_audit_refusal(struct db_conn *c, struct orch *o, const char *actor, const char *action,
			const char *resource_, const char *release, const char *why, char *err,
			size_t errlen)
{
	return orch_audit(o, c, actor, action, resource_, SLIPWAY__V1__OUTCOME__OUTCOME_DENIED,
			  "reason", why, "release", release, err, errlen);
}

/* Records a new deployment, its targets, timeline and audit event. */
int store_create(struct db_conn *c, struct orch_new_deployment *t, char *err, size_t errlen)
{
	PGresult *r = NULL;
	char now[24], stb[8], pr[8], nb[16];
	int64_t ms = clock_wall_ms();
	t->existing[0] = '\0';
	if (t->idem[0]) { /* a concurrent retry may have won since the first look */
		int rc = store_idempotent(c, t->requester, t->idem, t->hash, t->existing, err, errlen);
		if (rc != 0)
			return rc < 0 ? rc : 0;
	}
	/* The queue is bounded (counted inside the transaction). */
	char waiting_set[48];
	int rc = db_q(c, "SELECT count(*) FROM deployments WHERE state = ANY($1::smallint[])", 1,
		      (const char *[]){ states(waiting_set, PLAN_D_PENDING_APPROVAL, PLAN_D_QUEUED, 0) },
		      &r, err, errlen);
	if (rc != 0)
		return rc;
	int64_t waiting = db_int64(r, 0, 0);
	PQclear(r);
	r = NULL;
	if (waiting >= t->o->c.max_queue)
		return sw_errf(err, errlen, SW_ELIMIT,
			       "the deployment queue is full (%lld waiting); try again later",
			       (long long)waiting);
	snprintf(stb, sizeof stb, "%d", t->state);
	snprintf(pr, sizeof pr, "%d", t->priority);
	snprintf(nb, sizeof nb, "%d", t->total_batches);
	const char *v[18] = { t->id, t->app, t->env, t->version, t->digest, stb, t->strategy,
			      t->failure, pr, t->requester, t->idem, db_i64(now, ms),
			      t->is_rollback ? "true" : "false", t->rollback_of,
			      t->break_glass ? "true" : "false", t->bg_reason, t->reason, nb };
	const char *v20[22];
	int lens[22] = { 0 }, fmts[22] = { 0 };
	memcpy(v20, v, sizeof v);
	v20[18] = t->has_secrets ? "true" : "false";
	v20[19] = t->prov ? (const char *)t->prov : "";
	lens[19] = (int)t->prov_len;
	fmts[19] = 1;
	v20[20] = t->hash ? t->hash : "";
	/* The trace of the call that created it (trace.h): the engine, the
	 * side thread and the agents work on the deployment under it. */
	char trace_hex[TRACE_ID_HEX + 1];
	trace_id_hex(trace_current(), trace_hex);
	v20[21] = trace_hex;
	rc = db_exec(c,
		     "INSERT INTO deployments (id, app, environment, version, digest, state, strategy,"
		     " failure, priority, requester, idempotency_key, created_ms, is_rollback,"
		     " rollback_of, break_glass, break_glass_reason, reason, total_batches, has_secrets,"
		     " provenance, next_eval_ms, request_hash, trace_id) VALUES ($1, $2, $3, $4, $5, $6,"
		     " $7::json, $8::json, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $12,"
		     " $21, $22)",
		     22, v20, lens, fmts, 0, NULL, err, errlen);
	if (rc != 0)
		return rc;
	/* Targets, in the batches create_common planned. */
	for (int i = 0; i < PQntuples(t->agents); i++) {
		const char *agent = db_text(t->agents, i, 0);
		char task[512], b[16];
		snprintf(task, sizeof task, "%s:deploy:%s", t->id, agent);
		snprintf(b, sizeof b, "%d", t->batch_of[i]);
		char sp[8];
		rc = db_q(c,
			  "INSERT INTO targets (deployment_id, agent_id, batch, state, task_id,"
			  " updated_ms) VALUES ($1, $2, $3, $6, $4, $5)",
			  6, (const char *[]){ t->id, agent, b, task, now, st(sp, PLAN_T_PENDING) }, NULL,
			  err, errlen);
		if (rc != 0)
			return rc;
	}
	char detail[600];
	const char *note = t->note ? t->note : "";
	snprintf(detail, sizeof detail, "%s@%s (%s) to %s by %s%s%s", t->app, t->version, t->digest,
		 t->env, t->requester, note[0] ? ": " : "", note);
	rc = orch_timeline(t->o, c, t->id, t->is_rollback ? "rollback requested" : "created", detail, err,
			   errlen);
	if (rc == 0)
		rc = orch_timeline(t->o, c, t->id,
				   t->state == OS_PENDING_APPROVAL ? "waiting for approval" : "queued",
				   t->reason, err, errlen);
	char res[200];
	snprintf(res, sizeof res, "deployment/%s", t->id);
	/* The request names what is deployed, so that an evidence bundle
	 * rests on the log alone (docs/evidence-format.md). */
	struct outbox_event e = { .actor = t->requester,
				  .action = t->is_rollback ? "rollback.request" : "deploy.request",
				  .resource = res,
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "release", detail);
	outbox_detail(&e, "state", t->state == OS_PENDING_APPROVAL ? "pending_approval" : "queued");
	outbox_detail(&e, "app", t->app);
	outbox_detail(&e, "environment", t->env);
	outbox_detail(&e, "version", t->version);
	outbox_detail(&e, "digest", t->digest);
	outbox_detail(&e, "break_glass", t->break_glass ? "true" : "false");
	outbox_detail(&e, "break_glass_reason", t->bg_reason ? t->bg_reason : "");
	outbox_detail(&e, "rollback_of", t->rollback_of ? t->rollback_of : "");
	if (rc == 0)
		rc = outbox_add(c, "orchestrator", &e, err, errlen);
	if (rc == 0)
		outbox_relay_kick(t->o->relay);
	if (rc == 0)
		rc = orch_notify_deployment(c, t->id, err, errlen);
	return rc;
}


int store_idempotent(struct db_conn *c, const char *requester, const char *key, const char *hash,
		     char id_out[ORCH_ID_MAX], char *err, size_t errlen)
{
	PGresult *r = NULL;
	int rc = db_q(c,
		      "SELECT id, request_hash FROM deployments WHERE requester = $1"
		      " AND idempotency_key = $2",
		      2, (const char *[]){ requester, key }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) != 1) {
		PQclear(r);
		return 0;
	}
	snprintf(id_out, ORCH_ID_MAX, "%s", db_text(r, 0, 0));
	rc = strcmp(db_text(r, 0, 1), hash) == 0 ? 1 : SW_EEXIST;
	PQclear(r);
	if (rc == SW_EEXIST)
		return sw_errf(err, errlen, SW_EEXIST,
			       "idempotency key '%s' was first used for deployment %s with different"
			       " parameters; use a new key for a different request",
			       key, id_out);
	return rc;
}

/* ---- requests: cancel, pause, resume ---- */

int store_action(struct db_conn *c, struct orch *o, const char *id, const char *action,
		 const char *reason, const char *actor, char *err, size_t errlen)
{
	PGresult *r = NULL;
	char ms[24], s1[8], s2[8], s3[8], ph[8], set[48];
	int64_t now = clock_wall_ms();
	int rc = db_q(c, "SELECT state FROM deployments WHERE id = $1 FOR UPDATE", 1,
		      (const char *[]){ id }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) != 1) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOTFOUND, "no deployment %s", id);
	}
	int state = (int)db_int64(r, 0, 0);
	PQclear(r);
	db_i64(ms, now);
	const char *event;
	if (strcmp(action, "cancel") == 0) {
		if (state == PLAN_D_ROLLING_BACK)
			return sw_errf(err, errlen, SW_EPRECOND, "a rollback in progress cannot be cancelled");
		if (state != PLAN_D_PENDING_APPROVAL && state != PLAN_D_QUEUED &&
		    state != PLAN_D_RUNNING && state != PLAN_D_PAUSED)
			return sw_errf(err, errlen, SW_EPRECOND, "deployment %s has already ended", id);
		rc = db_q(c,
			  "UPDATE deployments SET state = $4, finished_ms = $2, reason = $3,"
			  " lease_owner = '' WHERE id = $1",
			  4, (const char *[]){ id, ms, reason, st(s1, PLAN_D_CANCELLED) }, NULL, err, errlen);
		/* Work not started is skipped; running tasks are superseded. */
		if (rc == 0)
			rc = db_q(c,
				  "UPDATE targets SET state = $3, message = 'cancelled', updated_ms = $2"
				  " WHERE deployment_id = $1 AND state = ANY($4::smallint[])",
				  4, (const char *[]){ id, ms, st(s2, PLAN_T_SKIPPED), UNFINISHED(set) }, NULL,
				  err, errlen);
		event = "cancelled";
	} else if (strcmp(action, "pause") == 0) {
		if (state != PLAN_D_RUNNING)
			return sw_errf(err, errlen, SW_EPRECOND, "only a running deployment can be paused");
		rc = db_q(c, "UPDATE deployments SET state = $3, reason = $2 WHERE id = $1", 3,
			  (const char *[]){ id, reason, st(s1, PLAN_D_PAUSED) }, NULL, err, errlen);
		event = "paused";
	} else {
		if (state != PLAN_D_PAUSED)
			return sw_errf(err, errlen, SW_EPRECOND, "only a paused deployment can be resumed");
		rc = db_q(c,
			  "UPDATE deployments SET state = $3, reason = '', batch_started_ms = $2,"
			  " stepped_ms = $2 WHERE id = $1",
			  3, (const char *[]){ id, ms, st(s1, PLAN_D_RUNNING) }, NULL, err, errlen);
		/* Resuming after a failure pause tries the failed targets again. */
		if (rc == 0)
			rc = db_q(c,
				  "UPDATE targets SET state = $3, attempts = 0, next_attempt_ms = 0,"
				  " updated_ms = $2 WHERE deployment_id = $1 AND phase = $5 AND state = $4",
				  5, (const char *[]){ id, ms, st(s2, PLAN_T_PENDING), st(s3, PLAN_T_FAILED),
						       st(ph, PLAN_PHASE_DEPLOY) },
				  NULL, err, errlen);
		event = "resumed";
	}
	char detail[1200], res[200], act[32];
	snprintf(detail, sizeof detail, "by %s%s%s", actor, reason[0] ? ": " : "", reason);
	resource(res, sizeof res, id);
	if (rc == 0)
		rc = orch_timeline(o, c, id, event, detail, err, errlen);
	snprintf(act, sizeof act, "deploy.%s", action);
	if (rc == 0)
		rc = orch_audit(o, c, actor, act, res, SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS, "reason",
				reason, NULL, NULL, err, errlen);
	if (rc == 0)
		rc = orch_notify_deployment(c, id, err, errlen);
	return rc;
}
