/*
 * metrics.c - the orchestrator's Prometheus families (lib/metrics.h).
 *
 * Deployments by state, the queue, and agents by health live in
 * PostgreSQL, shared by the replicas, so they are read by a collector at
 * scrape time: on the metrics HTTP thread, at most every
 * ORCH_METRICS_INTERVAL_MS, in one read-only transaction that waits at
 * most ORCH_METRICS_TIMEOUT_MS for a pool connection and for each
 * statement (db_read_bounded). A scrape therefore never blocks an RPC
 * worker, and a slow database costs the scrape, not the service. Every
 * replica reports the same numbers: aggregate with max(), not sum().
 */
#include "orch.h"
#include "clock.h"
#include "log.h"
#include "metrics.h"

#include <stdlib.h>

#define ORCH_METRICS_INTERVAL_MS 2000
#define ORCH_METRICS_TIMEOUT_MS 1000

static const char *const state_names[] = {
	[OS_PENDING_APPROVAL] = "pending_approval", [OS_QUEUED] = "queued",
	[OS_RUNNING] = "running",		    [OS_PAUSED] = "paused",
	[OS_SUCCEEDED] = "succeeded",		    [OS_FAILED] = "failed",
	[OS_CANCELLED] = "cancelled",		    [OS_ROLLING_BACK] = "rolling_back",
	[OS_ROLLED_BACK] = "rolled_back",
};
#define NSTATES ((int)(sizeof state_names / sizeof state_names[0]))

static struct metrics_family *by_state, *agents, *lag, *queue, *queue_limit, *created,
	*collect_errors;

static int collect_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	(void)arg;
	PGresult *r = NULL;
	int rc = db_q(c, "SELECT state, count(*) FROM deployments GROUP BY state", 0, NULL, &r, err,
		      errlen);
	if (rc != 0)
		return rc;
	metrics_family_zero(by_state);
	double queued = 0;
	for (int i = 0; i < PQntuples(r); i++) {
		int64_t st = db_int64(r, i, 0), n = db_int64(r, i, 1);
		if (st > 0 && st < NSTATES && state_names[st] != NULL)
			metrics_set(metrics_with(by_state, state_names[st]), (double)n);
		if (st == OS_QUEUED || st == OS_PENDING_APPROVAL)
			queued += (double)n;
	}
	PQclear(r);
	metrics_set(metrics_with(queue), queued);

	char now[24];
	const char *v[1] = { db_i64(now, clock_wall_ms()) };
	rc = db_q(c,
		  "SELECT count(*) FILTER (WHERE NOT lost), count(*) FILTER (WHERE lost),"
		  " COALESCE(max($1::bigint - last_heartbeat_ms) FILTER (WHERE NOT lost), 0)"
		  " FROM agents",
		  1, v, &r, err, errlen);
	if (rc != 0)
		return rc;
	metrics_set(metrics_with(agents, "online"), (double)db_int64(r, 0, 0));
	metrics_set(metrics_with(agents, "lost"), (double)db_int64(r, 0, 1));
	int64_t lag_ms = db_int64(r, 0, 2);
	metrics_set(metrics_with(lag), lag_ms > 0 ? (double)lag_ms / 1e3 : 0);
	PQclear(r);
	return 0;
}

static void collect(void *arg)
{
	struct orch *o = arg;
	char err[256];
	int rc = db_read_bounded(o->db, ORCH_METRICS_TIMEOUT_MS, collect_tx, o, err, sizeof err);
	if (rc != 0) {
		metrics_add(metrics_with(collect_errors), 1);
		log_debug("metrics: cannot read deployments and agents", "error=%s", err);
	}
}

int orch_metrics_start(struct orch *o)
{
	by_state = metrics_gauge("slipway_orchestrator_deployments",
				 "Deployments by state (all replicas report the same: use max).",
				 "state");
	agents = metrics_gauge("slipway_orchestrator_agents",
			       "Registered agents by health (online, lost).", "health");
	lag = metrics_gauge("slipway_orchestrator_agent_heartbeat_lag_seconds",
			    "Longest time since the last heartbeat of an agent not yet lost (heartbeats "
			    "reach the database within about a second).",
			    NULL);
	queue = metrics_gauge("slipway_orchestrator_deployment_queue_depth",
			      "Deployments waiting: queued or pending approval.", NULL);
	queue_limit = metrics_gauge("slipway_orchestrator_deployment_queue_limit",
				    "--max-queue: past it new deployments get RESOURCE_EXHAUSTED.",
				    NULL);
	created = metrics_counter("slipway_orchestrator_deployments_created_total",
				  "Deployments created by this replica, by kind (deploy, rollback).",
				  "kind");
	collect_errors = metrics_counter("slipway_orchestrator_metrics_collect_errors_total",
					 "Scrapes that could not read the database in time (the "
					 "gauges keep their last values).",
					 NULL);
	for (int i = 1; i < NSTATES; i++)
		metrics_set(metrics_with(by_state, state_names[i]), 0);
	metrics_set(metrics_with(agents, "online"), 0);
	metrics_set(metrics_with(agents, "lost"), 0);
	metrics_set(metrics_with(lag), 0);
	metrics_set(metrics_with(queue), 0);
	metrics_set(metrics_with(queue_limit), (double)o->c.max_queue);
	metrics_add(metrics_with(created, "deploy"), 0);
	metrics_add(metrics_with(created, "rollback"), 0);
	metrics_add(metrics_with(collect_errors), 0);
	return metrics_collector_add(metrics_default(), collect, o, ORCH_METRICS_INTERVAL_MS);
}

void orch_metrics_stop(struct orch *o)
{
	metrics_collector_remove(metrics_default(), collect, o);
}

void orch_metrics_created(int is_rollback)
{
	metrics_add(metrics_with(created, is_rollback ? "rollback" : "deploy"), 1);
}
