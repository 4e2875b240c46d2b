/*
 * tasks.c - what agents receive and what they report.
 *
 * A task is the current work of one target row: its id is stable for
 * (deployment, target, phase), and every dispatch gives it a new fencing
 * generation from the agent's counter. An agent only ever sees the newest
 * generation; a report for a superseded generation is answered
 * `superseded` and changes nothing. The SQL is in store.c; the retry
 * decision for a failed task is the planner's (plan_retry_at).
 */
#include "clock.h"
#include "err.h"
#include "log.h"
#include "orch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LOOKUP_CHUNK 500

int orch_next_tasks(struct orch *o, struct orch_task_query *q, size_t n, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	for (size_t i = 0; i < n; i++)
		q[i].found = 0;
	if (n == 0)
		return 0;
	int rc = db_acquire(o->db, &c, 5000, err, errlen);
	for (size_t off = 0; rc == 0 && off < n; off += LOOKUP_CHUNK)
		rc = store_next_tasks(c, q + off, n - off < LOOKUP_CHUNK ? n - off : LOOKUP_CHUNK, err,
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
	struct store_report_out out;
};

static int report_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct report_tx *t = arg;
	return store_report(c, t->o, t->agent, t->rep, t->resp, &t->out, err, errlen);
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
	if (t.out.unknown)
		return sw_errf(err, errlen, SW_ENOTFOUND, "no task %s", rep->task_id);
	if (t.out.not_yours)
		return sw_errf(err, errlen, SW_EPERM, "task %s is not held by %s", rep->task_id, agent);
	return 0;
}
