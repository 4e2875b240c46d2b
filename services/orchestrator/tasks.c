/*
 * tasks.c - what agents receive and what they report.
 *
 * A task is the current work of one target row: its id is stable for
 * (deployment, target, phase), and every dispatch gives it a new fencing
 * generation from the agent's counter. An agent only ever sees the newest
 * generation; a report for a superseded generation is answered
 * `superseded` and changes nothing.
 */
#include "err.h"
#include "log.h"
#include "orch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define FAILURE_COLS "failure"

int orch_next_task(struct orch *o, struct rpc_ctx *ctx, const char *agent,
		   uint64_t highest_generation, Slipway__V1__PollTasksResponse *resp, char *err,
		   size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	char hg[24];
	int rc = db_acquire(o->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = db_q(c,
		  "SELECT t.task_id, t.generation, t.phase, t.attempts, d.id, d.app, d.environment,"
		  " d.version, d.digest, d.rollback_version, d.rollback_digest, d.has_secrets,"
		  " t.dispatched_ms, coalesce((d.failure->>'progress_deadline_ms')::bigint, 300000)"
		  " FROM targets t JOIN deployments d ON d.id = t.deployment_id"
		  " WHERE t.agent_id = $1 AND t.state = 2 AND t.generation > $2"
		  " AND d.state IN (3, 4, 8)"
		  " ORDER BY t.generation DESC LIMIT 1",
		  2, (const char *[]){ agent, db_i64(hg, (int64_t)highest_generation) }, &r, err, errlen);
	db_release(o->db, c);
	if (rc != 0)
		return rc;
	int n = PQntuples(r);
	if (n == 0) {
		PQclear(r);
		return 0;
	}
	Slipway__V1__Task *t = rpc_alloc(ctx, sizeof *t);
	Slipway__V1__Task **arr = rpc_alloc(ctx, sizeof *arr);
	if (t == NULL || arr == NULL) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	slipway__v1__task__init(t);
	int rollback = db_int64(r, 0, 2) == 1;
	t->task_id = rpc_strdup(ctx, db_text(r, 0, 0));
	t->generation = (uint64_t)db_int64(r, 0, 1);
	t->kind = rollback ? SLIPWAY__V1__TASK_KIND__TASK_ROLLBACK : SLIPWAY__V1__TASK_KIND__TASK_DEPLOY;
	t->attempt = (uint32_t)db_int64(r, 0, 3);
	t->deployment_id = rpc_strdup(ctx, db_text(r, 0, 4));
	t->app = rpc_strdup(ctx, db_text(r, 0, 5));
	t->environment = rpc_strdup(ctx, db_text(r, 0, 6));
	t->version = rpc_strdup(ctx, db_text(r, 0, rollback ? 9 : 7));
	t->digest = rpc_strdup(ctx, db_text(r, 0, rollback ? 10 : 8));
	t->has_secrets = db_bool(r, 0, 11);
	t->deadline_unix_ms = db_int64(r, 0, 12) + db_int64(r, 0, 13);
	PQclear(r);
	arr[0] = t;
	resp->n_tasks = 1;
	resp->tasks = arr;
	return 1;
}

struct report_tx {
	struct orch *o;
	const char *agent;
	const Slipway__V1__TaskReport *rep;
	Slipway__V1__ReportTaskResponse *resp;
	int not_yours, unknown;
	char deployment[ORCH_ID_MAX];
};

static int report_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct report_tx *t = arg;
	const Slipway__V1__TaskReport *rep = t->rep;
	PGresult *r = NULL;
	char now[24], gen[24];
	int64_t ms = orch_now_ms();
	t->not_yours = t->unknown = 0;
	t->resp->accepted = 0;
	t->resp->superseded = 0;
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
		t->unknown = 1;
		goto out;
	}
	if (strcmp(db_text(r, 0, 0), t->agent) != 0) {
		t->not_yours = 1;
		goto out;
	}
	snprintf(t->deployment, sizeof t->deployment, "%s", db_text(r, 0, 5));
	uint64_t generation = (uint64_t)db_int64(r, 0, 1);
	int state = (int)db_int64(r, 0, 2), phase = (int)db_int64(r, 0, 3);
	int attempts = (int)db_int64(r, 0, 4), retries = (int)db_int64(r, 0, 6);
	int64_t backoff = db_int64(r, 0, 7);
	int dstate = (int)db_int64(r, 0, 8);
	if (generation != rep->generation) {
		t->resp->superseded = 1;
		goto out;
	}
	t->resp->accepted = 1;
	if (state != OT_DISPATCHED && state != OT_RUNNING)
		goto out; /* already decided: a repeated report changes nothing */
	if (dstate != OS_RUNNING && dstate != OS_PAUSED && dstate != OS_ROLLING_BACK) {
		t->resp->superseded = 1; /* the deployment ended (cancelled, failed) */
		goto out;
	}
	db_i64(now, ms);
	db_i64(gen, (int64_t)generation);
	const char *prev = rep->runtime ? rep->runtime->digest : "";
	char msg[256];
	snprintf(msg, sizeof msg, "%.200s", rep->message);
	switch (rep->result) {
	case SLIPWAY__V1__TASK_RESULT__TASK_STARTED:
		rc = db_q(c,
			  "UPDATE targets SET state = 3, updated_ms = $2, touched = true,"
			  " previous_digest = CASE WHEN previous_digest = '' AND phase = 0 THEN $3"
			  " ELSE previous_digest END WHERE task_id = $1",
			  3, (const char *[]){ rep->task_id, now, prev }, NULL, err, errlen);
		break;
	case SLIPWAY__V1__TASK_RESULT__TASK_SUCCEEDED:
		rc = db_q(c,
			  "UPDATE targets SET state = $3, updated_ms = $2, touched = true, message = ''"
			  " WHERE task_id = $1",
			  3, (const char *[]){ rep->task_id, now, phase == 1 ? "7" : "4" }, NULL, err,
			  errlen);
		break;
	case SLIPWAY__V1__TASK_RESULT__TASK_FAILED: {
		char detail[600];
		if (attempts <= retries) {
			/* Retry with exponential backoff (capped at a minute). */
			int64_t wait = backoff;
			for (int i = 1; i < attempts && wait < 60000; i++)
				wait *= 2;
			if (wait > 60000)
				wait = 60000;
			char next[24];
			rc = db_q(c,
				  "UPDATE targets SET state = 1, updated_ms = $2, touched = true,"
				  " message = $3, next_attempt_ms = $4 WHERE task_id = $1",
				  4, (const char *[]){ rep->task_id, now, msg, db_i64(next, ms + wait) },
				  NULL, err, errlen);
			snprintf(detail, sizeof detail, "%s: %s (attempt %d of %d; retrying)", t->agent,
				 msg, attempts, retries + 1);
		} else {
			rc = db_q(c,
				  "UPDATE targets SET state = 5, updated_ms = $2, touched = true,"
				  " message = $3 WHERE task_id = $1",
				  3, (const char *[]){ rep->task_id, now, msg }, NULL, err, errlen);
			snprintf(detail, sizeof detail, "%s: %s", t->agent, msg);
		}
		if (rc == 0)
			rc = orch_timeline(c, t->deployment,
					   phase == 1 ? "rollback failed on a target" : "target failed",
					   detail, err, errlen);
		if (rc == 0)
			rc = orch_audit(t->o, c, t->agent, phase == 1 ? "rollback.target" : "deploy.target",
					t->deployment, SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, "reason", msg,
					"attempt", gen, err, errlen);
		break;
	}
	default:
		rc = sw_errf(err, errlen, SW_EINVAL, "result must be STARTED, SUCCEEDED or FAILED");
	}
	if (rc == 0)
		rc = orch_notify_deployment(c, t->deployment, err, errlen);
out:
	PQclear(r);
	return rc;
}

int orch_report(struct orch *o, struct rpc_ctx *ctx, const char *agent,
		const Slipway__V1__TaskReport *rep, Slipway__V1__ReportTaskResponse *resp, char *err,
		size_t errlen)
{
	(void)ctx;
	if (rep->task_id[0] == '\0' || strlen(rep->task_id) > 400)
		return sw_errf(err, errlen, SW_EINVAL, "task_id is required");
	if (strlen(rep->message) > 4096)
		return sw_errf(err, errlen, SW_EINVAL, "message too long");
	struct report_tx t = { .o = o, .agent = agent, .rep = rep, .resp = resp };
	int rc = db_tx(o->db, NULL, report_tx, &t, err, errlen);
	if (rc != 0)
		return rc;
	if (t.unknown)
		return sw_errf(err, errlen, SW_ENOTFOUND, "no task %s", rep->task_id);
	if (t.not_yours)
		return sw_errf(err, errlen, SW_EPERM, "task %s is not held by %s", rep->task_id, agent);
	return 0;
}
