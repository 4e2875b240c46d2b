/*
 * orch.h - the orchestrator's shared state and domain functions.
 *
 *   schema.c    migrations (tables, the one-active-per-environment index)
 *   clients.c   calls to artifact (resolve, pins), policy (evaluate), secrets
 *               (grants) and the outbox relay to audit
 *   registry.c  agents: registration, heartbeats (kept in memory, flushed to
 *               the database in batches), loss detection
 *   waiters.c   long polls: PollTasks calls parked until a task is ready,
 *               woken through PostgreSQL LISTEN/NOTIFY on every replica
 *   deploy.c    creating deployments: validation, release resolution,
 *               targets, the policy gate, queue bound, idempotency
 *   plan.c      the planner: a pure function from a deployment's snapshot
 *               to the actions that move it forward (plan.h)
 *   store.c     the only SQL for deployments, targets and tasks: snapshots,
 *               applying plans, pending grants, reports, admission
 *   engine.c    the driver: approvals re-evaluated, admission, leases, and
 *               each step (load, plan, apply in one short transaction);
 *               remote calls (grants, policy, pins) on a side thread,
 *               never inside a transaction
 *   tasks.c     what agents receive and what they report
 *   views.c     read models: deployment detail, lists, environment status
 *   rpc.c       the Orchestrator and AgentControl RPCs
 *   metrics.c   Prometheus families: deployments by state, queue, agents
 *   main.c      start-up and shutdown
 */
#ifndef SLIPWAY_ORCH_H
#define SLIPWAY_ORCH_H

#include "authz.h"
#include "db.h"
#include "enroll.h"
#include "outbox.h"
#include "rpc.h"
#include "svc.h"

#include "plan.h"
#include "slipway/v1/orchestrator.pb-c.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

/* Deployment states (the proto's enum values, stored as smallint); target
 * states are the planner's (plan.h). */
#define OS_PENDING_APPROVAL ((int)SLIPWAY__V1__DEPLOYMENT_STATE__PENDING_APPROVAL)
#define OS_QUEUED ((int)SLIPWAY__V1__DEPLOYMENT_STATE__QUEUED)
#define OS_RUNNING ((int)SLIPWAY__V1__DEPLOYMENT_STATE__RUNNING)
#define OS_PAUSED ((int)SLIPWAY__V1__DEPLOYMENT_STATE__PAUSED)
#define OS_SUCCEEDED ((int)SLIPWAY__V1__DEPLOYMENT_STATE__SUCCEEDED)
#define OS_FAILED ((int)SLIPWAY__V1__DEPLOYMENT_STATE__FAILED)
#define OS_CANCELLED ((int)SLIPWAY__V1__DEPLOYMENT_STATE__CANCELLED)
#define OS_ROLLING_BACK ((int)SLIPWAY__V1__DEPLOYMENT_STATE__ROLLING_BACK)
#define OS_ROLLED_BACK ((int)SLIPWAY__V1__DEPLOYMENT_STATE__ROLLED_BACK)

/* The planner's enums are the proto's numbers. */
_Static_assert(PLAN_D_PENDING_APPROVAL == OS_PENDING_APPROVAL && PLAN_D_QUEUED == OS_QUEUED &&
		       PLAN_D_RUNNING == OS_RUNNING && PLAN_D_PAUSED == OS_PAUSED &&
		       PLAN_D_SUCCEEDED == OS_SUCCEEDED && PLAN_D_FAILED == OS_FAILED &&
		       PLAN_D_CANCELLED == OS_CANCELLED && PLAN_D_ROLLING_BACK == OS_ROLLING_BACK &&
		       PLAN_D_ROLLED_BACK == OS_ROLLED_BACK,
	       "deployment states");
_Static_assert((int)PLAN_T_PENDING == (int)SLIPWAY__V1__TARGET_STATE__TARGET_PENDING &&
		       (int)PLAN_T_DISPATCHED == (int)SLIPWAY__V1__TARGET_STATE__TARGET_DISPATCHED &&
		       (int)PLAN_T_RUNNING == (int)SLIPWAY__V1__TARGET_STATE__TARGET_RUNNING &&
		       (int)PLAN_T_SUCCEEDED == (int)SLIPWAY__V1__TARGET_STATE__TARGET_SUCCEEDED &&
		       (int)PLAN_T_FAILED == (int)SLIPWAY__V1__TARGET_STATE__TARGET_FAILED &&
		       (int)PLAN_T_SKIPPED == (int)SLIPWAY__V1__TARGET_STATE__TARGET_SKIPPED &&
		       (int)PLAN_T_ROLLED_BACK == (int)SLIPWAY__V1__TARGET_STATE__TARGET_ROLLED_BACK,
	       "target states");
_Static_assert((int)PLAN_FAIL_ROLLBACK == (int)SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_ROLLBACK &&
		       (int)PLAN_FAIL_PAUSE == (int)SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_PAUSE &&
		       (int)PLAN_FAIL_ABORT == (int)SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_ABORT,
	       "failure actions");
_Static_assert(SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS == 1 && SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE == 2,
	       "outcomes (plan.c)");

#define ORCH_ID_MAX 48

struct orch_config {
	struct svc_config svc;
	char *pg_url;
	char *pg_sslmode;
	char *audit_addr, *policy_addr, *artifact_addr, *secrets_addr;
	char *replica;              /* this replica's name (leases) */
	long long db_pool;
	long long heartbeat_ms;     /* interval agents are told to use */
	long long lease_ms;
	long long tick_ms;
	long long max_running;      /* global cap on running deployments */
	long long max_queue;        /* queued + pending approval, before RESOURCE_EXHAUSTED */
	long long poll_max_ms;      /* longest long poll */
	long long grant_ttl_ms;     /* secrets grants */
};

struct orch_registry;
struct orch_waiters;

struct orch {
	struct orch_config c;
	char trust_domain[128];
	char self_id[256];      /* spiffe://<td>/service/orchestrator: actor of system events */
	char replica[64];
	struct db *db;
	struct rpc_client *audit, *policy, *artifact, *secrets;
	struct authz *authz;
	struct outbox_relay *relay;
	struct orch_registry *reg;
	uint64_t enroll_rev;             /* enrollments followed up to (side thread) */
	int enroll_synced;               /* a whole listing was reconciled once */
	struct orch_waiters *waiters;

	pthread_t engine;
	pthread_mutex_t mu;
	pthread_cond_t cv;      /* engine wake-ups */
	int kicked;
	pthread_t side;         /* remote calls: grants, approvals, pins */
	pthread_cond_t side_cv;
	int side_kicked;
	atomic_int stopping;
};

/* ---- metrics.c ---- */
/* Creates the families and registers the scrape-time collector (reads
 * o->db). Returns 0 or SW_ELIMIT. Main thread; stop before db_close. */
int orch_metrics_start(struct orch *o);
void orch_metrics_stop(struct orch *o);
/* One deployment created (after its transaction committed). Any thread. */
void orch_metrics_created(int is_rollback);

/* ---- schema.c ---- */
extern const struct db_migration orch_migrations[];
extern const size_t orch_nmigrations;

/* ---- clients.c ---- */
int orch_clients_open(struct orch *o, char *err, size_t errlen);
void orch_clients_close(struct orch *o);
/* Writes an audit event in the caller's transaction. An event about a
 * deployment ("deployment/<id>") also carries the deployment's app and
 * environment as details, read in the same transaction, so that the audit
 * service can search by them (EntryFilter.app, .environment). */
int orch_audit(struct orch *o, struct db_conn *c, const char *actor, const char *action,
	       const char *resource, int outcome, const char *k1, const char *v1, const char *k2,
	       const char *v2, char *err, size_t errlen);
/* orch_audit for a deployment that has no row (yet): app and env are given
 * (NULL or "" = unknown) instead of read. */
int orch_audit_scoped(struct orch *o, struct db_conn *c, const char *actor, const char *action,
		      const char *resource, int outcome, const char *app, const char *env,
		      const char *k1, const char *v1, const char *k2, const char *v2, char *err,
		      size_t errlen);

/* ---- registry.c ---- */
int orch_registry_start(struct orch *o, char *err, size_t errlen);
void orch_registry_stop(struct orch *o);
/* 1 when an agent's reported runtime may be stored: at most
 * ORCH_RUNTIME_MAX bytes packed, its digest empty or "sha256:<hex>". */
#define ORCH_RUNTIME_MAX 4096
int orch_runtime_ok(const Slipway__V1__AgentRuntime *rt);
/* Records a heartbeat in memory (flushed within a second). Returns 0,
 * SW_EINVAL for a runtime orch_runtime_ok refuses, or SW_ENOTFOUND when the
 * agent is not registered (it must re-register). Never blocks on the
 * database: safe on a completion-queue thread. */
int orch_heartbeat(struct orch *o, const char *agent, const Slipway__V1__AgentRuntime *rt,
		   uint64_t highest_generation);
/* Registers (or re-registers) an agent inside its enrollment en (scope
 * labels that say otherwise are SW_EPERM; the scope stored is en's). */
int orch_register(struct orch *o, struct rpc_ctx *ctx, const char *agent,
		  const Slipway__V1__RegisterRequest *req, const struct enrollment *en, char *err,
		  size_t errlen);
/* Records a refused registration in the audit log (and the service log). */
int orch_register_denied(struct orch *o, const char *agent, const char *reason);
/* Drops the registration of an agent whose enrollment en no longer matches
 * it (removed, another scope or sealing key). */
int orch_agent_reconcile(struct orch *o, const struct enrollment *en, char *err, size_t errlen);
/* Drops every registered agent not in ids (a text[] literal). */
int orch_agents_drop_unenrolled(struct orch *o, const char *ids, char *err, size_t errlen);

/* ---- enrollments.c ---- */
/* The enrollment of an agent that registers: 0 with en filled (its sealing
 * key pinned now if it had none), SW_EPERM (recorded) when it is not
 * enrolled or presents another key, SW_EUNAVAIL when the policy service
 * cannot say. */
int orch_enrollment_check(struct orch *o, struct rpc_ctx *ctx, const char *agent,
			  const Slipway__V1__RegisterRequest *req, struct enrollment *en, char *err,
			  size_t errlen);
/* Follows enrollment changes (side thread): registrations that no longer
 * match their enrollment are dropped. */
void orch_enrollments_follow(struct orch *o);
/* Returns 1 when the agent is known and not lost. */
int orch_agent_online(struct orch *o, const char *agent);

/* ---- waiters.c ---- */
int orch_waiters_start(struct orch *o, char *err, size_t errlen);
void orch_waiters_stop(struct orch *o);
/* Parks a PollTasks call (deferred) until a task is ready or wait_ms. */
void orch_waiters_park(struct orch *o, struct rpc_ctx *ctx, const char *agent,
		       uint64_t highest_generation, int64_t wait_ms);
/* Finishes every parked call now (shutdown drain). */
void orch_waiters_drain(void *o);
/* Publishes "a task is ready for agent" to every replica (in the caller's
 * transaction: delivered at commit). */
int orch_notify_agent(struct db_conn *c, const char *agent, char *err, size_t errlen);
/* The same for n agents in one statement. */
int orch_notify_agents(struct db_conn *c, const char *const *agents, size_t n, char *err,
		       size_t errlen);
/* Publishes "deployment changed" so its owner steps it now. */
int orch_notify_deployment(struct db_conn *c, const char *id, char *err, size_t errlen);

/* ---- tasks.c ---- */
/* One parked PollTasks call for orch_next_tasks. */
struct orch_task_query {
	struct rpc_ctx *ctx;  /* the deferred call: its response is filled (borrowed) */
	const char *agent;    /* borrowed */
	uint64_t highest;     /* the highest generation the agent has seen */
	int found;            /* out: 1 when a task was put in the response */
};
/* For each query, fills its call's PollTasksResponse with the agent's
 * newest dispatched task above `highest` (at most one), with one database
 * query per few hundred agents. Returns 0 or a negative code with err (the
 * queries before the failure may be answered: `found` says). Any thread
 * that may block. */
int orch_next_tasks(struct orch *o, struct orch_task_query *q, size_t n, char *err,
		    size_t errlen);
int orch_report(struct orch *o, struct rpc_ctx *ctx, const char *agent,
		const Slipway__V1__TaskReport *rep, Slipway__V1__ReportTaskResponse *resp, char *err,
		size_t errlen);

/* ---- deploy.c ---- */
struct json_t;
/* The checks of a CreateDeployment request that need neither the database
 * nor another service (names, release, priority, idempotency key, break
 * glass, strategy and failure policy). On success *strategy and *failure
 * are new JSON objects (json_decref) with the defaults filled in. Returns 0
 * or SW_EINVAL naming the field. Any thread. */
int orch_create_check(const Slipway__V1__CreateDeploymentRequest *req, struct json_t **strategy,
		      struct json_t **failure, char *err, size_t errlen);
/* The same for a Rollback request. */
int orch_rollback_check(const Slipway__V1__RollbackRequest *req, char *err, size_t errlen);
int orch_create(struct orch *o, struct rpc_ctx *ctx, const Slipway__V1__CreateDeploymentRequest *req,
		char *id_out, char *err, size_t errlen);
int orch_rollback_request(struct orch *o, struct rpc_ctx *ctx, const Slipway__V1__RollbackRequest *req,
			  char *id_out, char *err, size_t errlen);
/* Cancel, pause or resume ("cancel", "pause", "resume"). */
int orch_action(struct orch *o, struct rpc_ctx *ctx, const char *id, const char *action,
		const char *reason, char *err, size_t errlen);
/* Asks the policy service whether the caller may `action` deployments in
 * app/env. 0, or SW_EPERM / SW_EUNAVAIL with a message in err. */
int orch_authorize(struct orch *o, struct rpc_ctx *ctx, const char *action, const char *app,
		   const char *env, char *err, size_t errlen);
/* Asks the policy service about a deployment: returns the verdict (> 0,
 * slipway.v1.Verdict) with a human reason, or a negative code. */
int orch_evaluate(struct orch *o, struct rpc_ctx *ctx, const char *id, const char *app,
		  const char *env, const char *version, const char *digest, const char *requester,
		  const Slipway__V1__Provenance *prov, int break_glass, const char *bg_reason,
		  int64_t requested_ms, char *reason, size_t rlen, char *err, size_t errlen);
/* Looks up a deployment's app and environment (for authorization). */
int orch_deployment_scope(struct orch *o, const char *id, char *app, char *env, char *err,
			  size_t errlen);

/* ---- engine.c ---- */
int orch_engine_start(struct orch *o, char *err, size_t errlen);
void orch_engine_stop(struct orch *o);
void orch_engine_kick(struct orch *o);
/* Caps of a timeline line (fitted to printable UTF-8 at most this long). */
#define ORCH_TIMELINE_EVENT_MAX 120
#define ORCH_TIMELINE_DETAIL_MAX 1000
/*
 * Appends a timeline line in the caller's transaction, and the same line
 * as an audit event through the outbox (same transaction): event id
 * "tl:<deployment>:<timeline row id>", action "timeline.<event as
 * lower_snake>", resource "deployment/<id>", actor the orchestrator,
 * details deployment_id, timeline_id, event and detail, time the row's.
 * The evidence bundle (docs/evidence-format.md) rebuilds the timeline from
 * these events. Returns 0 or an SW_E* code with err.
 */
int orch_timeline(struct orch *o, struct db_conn *c, const char *id, const char *event,
		  const char *detail, char *err, size_t errlen);

/* A deployment to record (deploy.c plans it, store_create writes it). */
struct orch_new_deployment {
	struct orch *o;
	const char *id, *app, *env, *requester, *idem;
	const char *hash; /* of the request, bound to the idempotency key */
	const char *version, *digest;
	int state, priority, is_rollback, break_glass, has_secrets;
	const char *rollback_of, *bg_reason, *reason, *note;
	char *strategy, *failure;
	PGresult *agents; /* id, region */
	uint8_t *prov;    /* packed Provenance of the release (for re-evaluation) */
	size_t prov_len;
	int batch_size, canary_size, total_batches;
	int *batch_of; /* the batch of each row of agents */
	char existing[ORCH_ID_MAX];
};


/* ---- store.c (every function: the caller's transaction or connection) ---- */
int store_pending_approvals(struct db_conn *c, int64_t now, int limit, PGresult **out, char *err,
			    size_t errlen);
/* Records the policy verdict (< 0: could not ask; try again in a second). */
int store_approval_verdict(struct db_conn *c, struct orch *o, const char *id, int verdict,
			   const char *reason, int64_t now, char *err, size_t errlen);
/* Starts queued deployments within the caps (takes the admission lock).
 * One that would start but has no fresh "may start" answer of the policy
 * service is marked to be asked instead (*asked counts them; the side
 * thread asks: store_start_checks, store_start_verdict). Rollbacks are not
 * asked (they only return to releases that succeeded there). */
int store_admit(struct db_conn *c, struct orch *o, int64_t now, int *asked, char *err,
		size_t errlen);
/* Queued deployments admission wants policy asked about before they start:
 * the columns of store_pending_approvals, then start_check_ms (10). */
int store_start_checks(struct db_conn *c, int64_t now, int limit, PGresult **out, char *err,
		       size_t errlen);
/* Records the answer to the question asked at check_ms: ALLOWED lets
 * admission start it; DENIED ends it FAILED (targets skipped, timeline
 * "denied", audit deploy.denied); NEEDS_APPROVAL sends it back to
 * PENDING_APPROVAL (audit deploy.unapproved); < 0: ask again in a second. */
int store_start_verdict(struct db_conn *c, struct orch *o, const char *id, int64_t check_ms,
			int verdict, const char *reason, int64_t now, char *err, size_t errlen);
/* What EvaluateDeployment is asked about deployment id (the columns of
 * store_pending_approvals, then is_rollback (10) and state (11));
 * SW_ENOTFOUND when there is none. *out: free with PQclear. */
int store_eval_facts(struct db_conn *c, const char *id, PGresult **out, char *err, size_t errlen);
/* A request about deployment id that the policy refused ("resume"): a
 * timeline line "<action> refused" and an audit event deploy.<action>,
 * DENIED, with the reason; the deployment is unchanged. */
int store_refused(struct db_conn *c, struct orch *o, const char *id, const char *action,
		  const char *actor, const char *why, char *err, size_t errlen);
/* The ids of active deployments this replica owns or may take over. */
int store_steppable(struct db_conn *c, const char *replica, int64_t now, PGresult **out, char *err,
		    size_t errlen);
/* Locks deployment `id` (SKIP LOCKED: *skip when another replica holds it,
 * or it is not active, or another replica's lease is live), takes or renews
 * its lease, and fills d (targets in d->t: free with store_snapshot_free).
 * A paused deployment is only leased (d->nt 0). */
int store_load(struct db_conn *c, struct orch *o, const char *id, int64_t now,
	       struct plan_deployment *d, int *skip, char *err, size_t errlen);
void store_snapshot_free(struct plan_deployment *d);
/* Applies a plan made from d (d's targets updated in memory for the
 * dispatch). *grants: how many grants were asked for (pending rows). */
int store_apply(struct db_conn *c, struct orch *o, struct plan_deployment *d,
		const struct plan *p, int64_t now, int *grants, char *err, size_t errlen);
/* Claims up to `limit` pending grants (deployment_id, agent_id, app,
 * environment, seal_key, requested_ms, attempts) for 15 s. */
int store_grants_claim(struct db_conn *c, int64_t now, int limit, PGresult **out, char *err,
		       size_t errlen);
int store_grant_done(struct db_conn *c, const char *deployment, const char *agent,
		     int64_t requested_ms, int64_t expires_ms, char *err, size_t errlen);
int store_grant_failed(struct db_conn *c, const char *deployment, const char *agent,
		       int64_t next_try_ms, const char *why, char *err, size_t errlen);
/* The secrets service refused a grant (PERMISSION_DENIED: the policy no
 * longer lets the orchestrator grant these secrets here; FAILED_PRECONDITION:
 * a version disabled or destroyed). A running or paused deployment ends
 * FAILED with that reason (unfinished targets skipped, pending grants
 * dropped, timeline, audit deploy.failed); a rollback keeps asking, as
 * store_grant_failed. Takes the deployment's row lock. */
int store_grant_refused(struct db_conn *c, struct orch *o, const char *deployment,
			const char *agent, int64_t next_try_ms, const char *why, char *err,
			size_t errlen);
int store_pins_unsynced(struct db_conn *c, PGresult **out, char *err, size_t errlen);
int store_pins_synced(struct db_conn *c, const char *app, const char *env, const char *current,
		      const char *good, char *err, size_t errlen);
int store_next_tasks(struct db_conn *c, struct orch_task_query *q, size_t n, char *err,
		     size_t errlen);
struct store_report_out {
	int unknown, not_yours;
	char deployment[ORCH_ID_MAX];
};
int store_report(struct db_conn *c, struct orch *o, const char *agent,
		 const Slipway__V1__TaskReport *rep, Slipway__V1__ReportTaskResponse *resp,
		 struct store_report_out *out, char *err, size_t errlen);
/* A re-registered agent's RUNNING task goes out again under a new
 * generation; `deployment` receives its deployment ("" when none). */
int store_resend_running(struct db_conn *c, struct orch *o, const char *agent, int64_t now, char *deployment,
			 size_t dlen, char *err, size_t errlen);
/* Wakes the owners of deployments with work in flight on a lost agent. */
int store_notify_lost(struct db_conn *c, const char *agent, char *err, size_t errlen);
/* Looks an idempotency key up: 0 when unused, 1 with *id_out when it names
 * a deployment made from the same request (hash), SW_EEXIST (with a
 * message) when it was used for a different one. */
int store_idempotent(struct db_conn *c, const char *requester, const char *key, const char *hash,
		     char id_out[ORCH_ID_MAX], char *err, size_t errlen);
/* The environment's last known-good digest ("" when none). */
int store_known_good(struct db_conn *c, const char *app, const char *env, char *digest,
		     size_t dlen, char *err, size_t errlen);
/* The known-good history: 1 when `digest` ran successfully in app/env
 * (a deployment of it succeeded, a rollback to it finished, or it is the
 * environment's known-good release), 0 when not, or a negative code. */
int store_ran_good(struct db_conn *c, const char *app, const char *env, const char *digest,
		   char *err, size_t errlen);
/* An audit event (outcome DENIED) for a request refused before anything
 * was recorded (resource: what it was about). */
int store_audit_refusal(struct db_conn *c, struct orch *o, const char *actor, const char *action,
			const char *resource_, const char *release, const char *why, char *err,
			size_t errlen);
/* Records t (the queue bound checked inside the transaction; an
 * idempotency key that won a race fills t->existing instead). */
int store_create(struct db_conn *c, struct orch_new_deployment *t, char *err, size_t errlen);
/* Read models: the deployment columns orch_deployment_from_row reads; one
 * deployment (SW_ENOTFOUND); its app and environment; its targets; its
 * timeline; a page of the list (limit rows, newest first, before a
 * queue_seq: 0 = none); an environment's active and waiting deployments
 * (the active first, then in admission order); the active and queued
 * counts; a queued deployment's position in admission order. */
const char *store_deployment_cols(void);
int store_deployment_row(struct db_conn *c, const char *id, PGresult **out, char *err,
			 size_t errlen);
int store_scope(struct db_conn *c, const char *id, char app[64], char env[64], char *err,
		size_t errlen);
int store_targets_of(struct db_conn *c, const char *id, PGresult **out, char *err, size_t errlen);
int store_timeline_of(struct db_conn *c, const char *id, PGresult **out, char *err, size_t errlen);
int store_list(struct db_conn *c, const char *app, const char *env, int state, int64_t before,
	       int limit, PGresult **out, char *err, size_t errlen);
int store_env_deployments(struct db_conn *c, const char *app, const char *env, PGresult **out,
			  char *err, size_t errlen);
int store_counts(struct db_conn *c, int64_t *active, int64_t *queued, char *err, size_t errlen);
int store_queue_position(struct db_conn *c, const char *id, uint32_t *pos, char *err,
			 size_t errlen);
/* Cancel, pause or resume, checked against the deployment's state. */
int store_action(struct db_conn *c, struct orch *o, const char *id, const char *action,
		 const char *reason, const char *actor, char *err, size_t errlen);

/* ---- views.c ---- */
int orch_get_detail(struct orch *o, struct rpc_ctx *ctx, const char *id,
		    Slipway__V1__DeploymentDetail *out, char *err, size_t errlen);
int orch_list(struct orch *o, struct rpc_ctx *ctx, const Slipway__V1__ListDeploymentsRequest *req,
	      Slipway__V1__ListDeploymentsResponse *out, char *err, size_t errlen);
int orch_status(struct orch *o, struct rpc_ctx *ctx, const char *app, const char *env,
		Slipway__V1__EnvironmentStatus *out, char *err, size_t errlen);
int orch_list_agents(struct orch *o, struct rpc_ctx *ctx, const Slipway__V1__ListAgentsRequest *req,
		     Slipway__V1__ListAgentsResponse *out, char *err, size_t errlen);
/* Fills a Deployment from a row of store_deployment_cols(). */
int orch_deployment_from_row(struct rpc_ctx *ctx, PGresult *r, int row, Slipway__V1__Deployment *d);

/* ---- rpc.c ---- */
int orch_rpc_register(struct orch *o, struct rpc_server *srv, char *err, size_t errlen);

/* ---- small helpers (deploy.c) ---- */
void orch_new_id(char out[ORCH_ID_MAX], const char *prefix);

#endif
