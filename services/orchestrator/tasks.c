/*
 * tasks.c - what agents receive and what they report.
 *
 * A task is the current work of one target row: its id is stable for
 * (deployment, target, phase), and every dispatch gives it a new fencing
 * generation from the agent's counter. An agent only ever sees the newest
 * generation; a report for a superseded generation is answered
 * `superseded` and changes nothing.
 */
#include "clock.h"
#include "err.h"
#include "log.h"
#include "orch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOOKUP_CHUNK 500

/* The columns of a task, in the order fill_task reads them. */
#define TASK_COLS                                                                            \
	"t.task_id, t.generation, t.phase, t.attempts, d.id, d.app, d.environment,"         \
	" d.version, d.digest, d.rollback_version, d.rollback_digest, d.has_secrets,"       \
	" t.dispatched_ms, coalesce((d.failure->>'progress_deadline_ms')::bigint, 300000)"

/* Fills resp with the task in row `row` of r, whose columns start at `col`
 * in the order of TASK_COLS (memory from the call's arena). Returns 0 or
 * SW_ENOMEM. */
static int fill_task(struct rpc_ctx *ctx, const PGresult *r, int row, int col,
		     Slipway__V1__PollTasksResponse *resp)
{
	Slipway__V1__Task *t = rpc_alloc(ctx, sizeof *t);
	Slipway__V1__Task **arr = rpc_alloc(ctx, sizeof *arr);
	if (t == NULL || arr == NULL)
		return SW_ENOMEM;
	slipway__v1__task__init(t);
	int rollback = db_int64(r, row, col + 2) == 1;
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
	arr[0] = t;
	resp->n_tasks = 1;
	resp->tasks = arr;
	return 0;
}

static int cmp_row_agent(const void *a, const void *b, void *arg)
{
	const PGresult *r = arg;
	return strcmp(db_text(r, *(const int *)a, 0), db_text(r, *(const int *)b, 0));
}

/* Answers one chunk: one query for every agent in q[0..n). */
static int lookup_chunk(struct db_conn *c, struct orch_task_query *q, size_t n, char *err,
			size_t errlen)
{
	PGresult *r = NULL;
	int *idx = NULL, rc = 0;
	char *sql = db_values_sql("SELECT DISTINCT ON (t.agent_id) t.agent_id, " TASK_COLS
				  " FROM targets t JOIN deployments d ON d.id = t.deployment_id"
				  " WHERE t.state = 2 AND d.state IN (3, 4, 8)"
				  " AND t.agent_id IN (SELECT w.a FROM (VALUES",
				  n, 1, ") AS w(a)) ORDER BY t.agent_id, t.generation DESC");
	const char **vals = calloc(n, sizeof *vals);
	if (sql == NULL || vals == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		vals[i] = q[i].agent;
	if ((rc = db_q(c, sql, (int)n, vals, &r, err, errlen)) != 0)
		goto out;
	/* Rows sorted by agent here (the database's collation may differ). */
	int rows = PQntuples(r);
	if (rows == 0)
		goto out;
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
			int mid = lo + (hi - lo) / 2, d = strcmp(q[i].agent, db_text(r, idx[mid], 0));
			if (d == 0)
				hit = idx[mid];
			else if (d < 0)
				hi = mid - 1;
			else
				lo = mid + 1;
		}
		if (hit < 0 || (uint64_t)db_int64(r, hit, 2) <= q[i].highest)
			continue;
		if (fill_task(q[i].ctx, r, hit, 1, (void *)rpc_response(q[i].ctx)) != 0) {
			rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
			goto out;
		}
		q[i].found = 1;
	}
out:
	PQclear(r);
	free(idx);
	free(vals);
	free(sql);
	return rc;
}

int orch_next_tasks(struct orch *o, struct orch_task_query *q, size_t n, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	for (size_t i = 0; i < n; i++)
		q[i].found = 0;
	if (n == 0)
		return 0;
	int rc = db_acquire(o->db, &c, 5000, err, errlen);
	for (size_t off = 0; rc == 0 && off < n; off += LOOKUP_CHUNK)
		rc = lookup_chunk(c, q + off, n - off < LOOKUP_CHUNK ? n - off : LOOKUP_CHUNK, err,
				  errlen);
	if (c != NULL)
		db_release(o->db, c);
	return rc;
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
	int64_t ms = clock_wall_ms();
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
