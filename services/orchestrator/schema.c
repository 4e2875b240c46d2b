/*
 * schema.c - the orchestrator's tables (schema "orchestrator").
 *
 * Intent and progress live here, so any replica can resume any deployment:
 * deployments (with their lease), per-target rows (the task state of each
 * target, its fencing generation and attempts), the timeline, agents, and
 * the known-good release of each environment (and, over the deployments
 * that succeeded, its known-good history). A partial unique index makes
 * "one active deployment per app x environment" a database fact.
 */
#include "orch.h"

const struct db_migration orch_migrations[] = {
	{ 1, "orchestrator",
	  OUTBOX_MIGRATION_SQL ";"
	  "CREATE TABLE agents ("
	  " id text PRIMARY KEY,"
	  " app text NOT NULL, environment text NOT NULL, region text NOT NULL DEFAULT '',"
	  " grp text NOT NULL DEFAULT '', labels json NOT NULL,"
	  " seal_key bytea NOT NULL, hostname text NOT NULL DEFAULT '',"
	  " agent_version text NOT NULL DEFAULT '',"
	  " registered_ms bigint NOT NULL, last_heartbeat_ms bigint NOT NULL,"
	  " lost boolean NOT NULL DEFAULT false,"
	  " runtime bytea NOT NULL DEFAULT ''::bytea,"
	  " running_digest text NOT NULL DEFAULT '',"
	  " next_generation bigint NOT NULL DEFAULT 0,"
	  " highest_seen bigint NOT NULL DEFAULT 0);"
	  "CREATE INDEX agents_env ON agents (app, environment);"
	  "CREATE TABLE deployments ("
	  " id text PRIMARY KEY,"
	  " queue_seq bigserial NOT NULL,"
	  " app text NOT NULL, environment text NOT NULL,"
	  " version text NOT NULL, digest text NOT NULL,"
	  " state smallint NOT NULL,"
	  " strategy json NOT NULL, failure json NOT NULL,"
	  " priority smallint NOT NULL DEFAULT 0,"
	  " requester text NOT NULL, idempotency_key text NOT NULL DEFAULT '',"
	  " created_ms bigint NOT NULL, started_ms bigint NOT NULL DEFAULT 0,"
	  " finished_ms bigint NOT NULL DEFAULT 0,"
	  " reason text NOT NULL DEFAULT '',"
	  " is_rollback boolean NOT NULL DEFAULT false, rollback_of text NOT NULL DEFAULT '',"
	  " break_glass boolean NOT NULL DEFAULT false, break_glass_reason text NOT NULL DEFAULT '',"
	  " total_batches int NOT NULL DEFAULT 0, current_batch int NOT NULL DEFAULT 0,"
	  " batch_started_ms bigint NOT NULL DEFAULT 0, batch_done_ms bigint NOT NULL DEFAULT 0,"
	  " rollback_digest text NOT NULL DEFAULT '', rollback_version text NOT NULL DEFAULT '',"
	  " rollback_started_ms bigint NOT NULL DEFAULT 0, rollback_duration_ms bigint NOT NULL DEFAULT 0,"
	  " has_secrets boolean NOT NULL DEFAULT false,"
	  " provenance bytea NOT NULL DEFAULT ''::bytea,"
	  " next_eval_ms bigint NOT NULL DEFAULT 0,"
	  " lease_owner text NOT NULL DEFAULT '', lease_expires_ms bigint NOT NULL DEFAULT 0,"
	  " lease_gen bigint NOT NULL DEFAULT 0);"
	  /* DDL takes no parameters: 3, 4, 8 are RUNNING, PAUSED, ROLLING_BACK. */
	  "CREATE UNIQUE INDEX deployments_one_active ON deployments (app, environment)"
	  " WHERE state IN (3, 4, 8);"
	  "CREATE UNIQUE INDEX deployments_idempotency ON deployments (requester, idempotency_key)"
	  " WHERE idempotency_key <> '';"
	  "CREATE INDEX deployments_state ON deployments (state, priority DESC, queue_seq);"
	  "CREATE INDEX deployments_env ON deployments (app, environment, created_ms DESC);"
	  "CREATE TABLE targets ("
	  " deployment_id text NOT NULL REFERENCES deployments (id),"
	  " agent_id text NOT NULL,"
	  " batch int NOT NULL,"
	  " phase smallint NOT NULL DEFAULT 0,"  /* 0 deploy, 1 rollback */
	  " state smallint NOT NULL,"
	  " attempts int NOT NULL DEFAULT 0,"
	  " generation bigint NOT NULL DEFAULT 0,"
	  " task_id text NOT NULL,"
	  " message text NOT NULL DEFAULT '',"
	  " previous_digest text NOT NULL DEFAULT '',"
	  " touched boolean NOT NULL DEFAULT false,"
	  " granted boolean NOT NULL DEFAULT false,"
	  " dispatched_ms bigint NOT NULL DEFAULT 0,"
	  " next_attempt_ms bigint NOT NULL DEFAULT 0,"
	  " updated_ms bigint NOT NULL,"
	  " PRIMARY KEY (deployment_id, agent_id));"
	  "CREATE UNIQUE INDEX targets_task ON targets (task_id);"
	  "CREATE INDEX targets_agent ON targets (agent_id, state);"
	  "CREATE TABLE timeline ("
	  " id bigserial PRIMARY KEY, deployment_id text NOT NULL,"
	  " time_ms bigint NOT NULL, event text NOT NULL, detail text NOT NULL DEFAULT '');"
	  "CREATE INDEX timeline_deployment ON timeline (deployment_id, id);"
	  "CREATE TABLE environments ("
	  " app text NOT NULL, environment text NOT NULL,"
	  " current_digest text NOT NULL DEFAULT '', current_version text NOT NULL DEFAULT '',"
	  " last_good_digest text NOT NULL DEFAULT '', last_good_version text NOT NULL DEFAULT '',"
	  " updated_ms bigint NOT NULL, pins_synced boolean NOT NULL DEFAULT false,"
	  " PRIMARY KEY (app, environment))" },
	/* The engine as planner, store and driver: when a deployment was last
	 * stepped (a gap extends its deadlines), and secrets grants as pending
	 * rows performed outside any transaction. */
	{ 2, "engine",
	  "ALTER TABLE deployments ADD COLUMN stepped_ms bigint NOT NULL DEFAULT 0;"
	  "CREATE TABLE grants ("
	  " deployment_id text NOT NULL REFERENCES deployments (id),"
	  " agent_id text NOT NULL,"
	  " done boolean NOT NULL DEFAULT false,"
	  " expires_ms bigint NOT NULL DEFAULT 0,"
	  " requested_ms bigint NOT NULL,"
	  " claim_until_ms bigint NOT NULL DEFAULT 0,"
	  " next_try_ms bigint NOT NULL DEFAULT 0,"
	  " attempts int NOT NULL DEFAULT 0,"
	  " error text NOT NULL DEFAULT '',"
	  " PRIMARY KEY (deployment_id, agent_id));"
	  "CREATE INDEX grants_pending ON grants (requested_ms) WHERE NOT done;"
	  "UPDATE deployments SET stepped_ms = greatest(started_ms, 0);"
	  /* An idempotency key is bound to the request it was first sent with. */
	  "ALTER TABLE deployments ADD COLUMN request_hash text NOT NULL DEFAULT ''" },
	/* Policy is asked again when a queued deployment would start: when
	 * admission asked (start_check_ms) and when the policy last allowed
	 * it (start_ok_ms); admission starts it only on an answer given after
	 * it asked. The known-good history (digests that succeeded in an
	 * environment, what a rollback may return to without approvals) is a
	 * query over deployments: this index serves it. */
	{ 3, "gates",
	  "ALTER TABLE deployments ADD COLUMN start_check_ms bigint NOT NULL DEFAULT 0;"
	  "ALTER TABLE deployments ADD COLUMN start_ok_ms bigint NOT NULL DEFAULT 0;"
	  "CREATE INDEX deployments_digest ON deployments (app, environment, digest)" },
	/* Tracing: the W3C trace id (32 hex) of the call that created a
	 * deployment. The engine, the side thread and the agents work on it
	 * under that trace, so its log lines carry trace_id in every service.
	 * '' for deployments created before (they log without one). */
	{ 4, "trace",
	  "ALTER TABLE deployments ADD COLUMN trace_id text NOT NULL DEFAULT ''" },
	/* Audit events keep the trace they were written under (outbox.h). */
	{ 5, "outbox trace", OUTBOX_TRACE_SQL },
};

const size_t orch_nmigrations = sizeof orch_migrations / sizeof orch_migrations[0];
