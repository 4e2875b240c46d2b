/*
 * metrics.c - the agent's Prometheus families (lib/metrics.h): heartbeats,
 * tasks and restarts of the supervised application. Every family gets its
 * series at start-up (value 0), so a scrape shows it before the first
 * event. Any thread.
 */
#include "agent.h"
#include "metrics.h"

static const double task_buckets[] = { 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800 };

static struct metrics_family *heartbeats(void)
{
	return metrics_counter("slipway_agent_heartbeats_total",
			       "Heartbeats sent to the orchestrator, by outcome (ok, failed).",
			       "outcome");
}

static struct metrics_family *tasks(void)
{
	return metrics_counter("slipway_agent_tasks_total",
			       "Tasks this agent ran to an end, by result (succeeded, failed).",
			       "result");
}

static struct metrics_family *task_seconds(void)
{
	return metrics_histogram("slipway_agent_task_duration_seconds",
				 "How long the tasks this agent ran took.", NULL, task_buckets,
				 sizeof task_buckets / sizeof task_buckets[0]);
}

static struct metrics_family *restarts(void)
{
	return metrics_counter("slipway_agent_app_restarts_total",
			       "Restarts of the supervised application after it exited.", NULL);
}

void agent_metrics_init(void)
{
	metrics_add(metrics_with(heartbeats(), "ok"), 0);
	metrics_add(metrics_with(heartbeats(), "failed"), 0);
	metrics_add(metrics_with(tasks(), "succeeded"), 0);
	metrics_add(metrics_with(tasks(), "failed"), 0);
	metrics_with(task_seconds());
	metrics_add(metrics_with(restarts()), 0);
}

void agent_metrics_heartbeat(int ok)
{
	metrics_add(metrics_with(heartbeats(), ok ? "ok" : "failed"), 1);
}

void agent_metrics_task(int succeeded, int64_t duration_ms)
{
	metrics_add(metrics_with(tasks(), succeeded ? "succeeded" : "failed"), 1);
	metrics_observe(metrics_with(task_seconds()), (double)duration_ms / 1e3);
}

void agent_metrics_restart(void)
{
	metrics_add(metrics_with(restarts()), 1);
}
