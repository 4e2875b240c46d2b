/*
 * plan.h - the orchestrator's planner: a pure function from a snapshot of
 * one deployment to the list of actions that move it forward.
 *
 * The engine has three parts (see engine.c for the whole picture):
 *
 *   planner  (plan.c)   decides; no I/O, no clock, no allocation beyond the
 *                       plan it returns, so tables of cases test it in
 *                       milliseconds (tests/unit/test_orch_plan.c);
 *   store    (store.c)  the only SQL for deployments, targets and tasks: it
 *                       loads a snapshot and applies a plan's actions in the
 *                       caller's transaction;
 *   driver   (engine.c) runs a step: load, plan, apply in one short
 *                       transaction, then the remote calls the plan asked
 *                       for (secrets grants), outside any transaction,
 *                       recorded as pending rows first.
 *
 * This header needs nothing but the C library, so the unit tests link
 * plan.o alone.
 */
#ifndef SLIPWAY_ORCH_PLAN_H
#define SLIPWAY_ORCH_PLAN_H

#include <stddef.h>
#include <stdint.h>

/* Deployment states, as stored and as slipway.v1.DeploymentState numbers
 * them (orch.h checks that the two agree at compile time). */
enum plan_dstate {
	PLAN_D_PENDING_APPROVAL = 1,
	PLAN_D_QUEUED = 2,
	PLAN_D_RUNNING = 3,
	PLAN_D_PAUSED = 4,
	PLAN_D_SUCCEEDED = 5,
	PLAN_D_FAILED = 6,
	PLAN_D_CANCELLED = 7,
	PLAN_D_ROLLING_BACK = 8,
	PLAN_D_ROLLED_BACK = 9,
};

/* Target states (slipway.v1.TargetState). */
enum plan_tstate {
	PLAN_T_PENDING = 1,
	PLAN_T_DISPATCHED = 2,
	PLAN_T_RUNNING = 3,
	PLAN_T_SUCCEEDED = 4,
	PLAN_T_FAILED = 5,
	PLAN_T_SKIPPED = 6,
	PLAN_T_ROLLED_BACK = 7,
};

/* Target phases. */
enum plan_phase { PLAN_PHASE_DEPLOY = 0, PLAN_PHASE_ROLLBACK = 1 };

/* Failure actions (slipway.v1.FailureAction). */
enum plan_failure { PLAN_FAIL_ROLLBACK = 0, PLAN_FAIL_PAUSE = 1, PLAN_FAIL_ABORT = 2 };

#define PLAN_AGENT_MAX 256
#define PLAN_DETAIL_MAX 600

/* One target as the planner sees it. */
struct plan_target {
	char agent[PLAN_AGENT_MAX];
	int batch;              /* 1-based */
	int phase;              /* enum plan_phase */
	int state;              /* enum plan_tstate */
	int attempts;           /* dispatches so far in this phase */
	int touched;            /* ever sent a task of this deployment */
	int64_t next_attempt_ms; /* retry back-off: not dispatched before */
	int64_t updated_ms;     /* last state change (a task's success, for the bake) */
	int64_t grant_expires_ms; /* the secrets grant in force for it (0: none) */
	int agent_lost;         /* the registry's verdict on its agent */
	/* The canary's evidence, from the agent's newest flushed heartbeat. */
	int hb_fresh;           /* sent more than 500 ms after updated_ms */
	int rt_present;         /* a runtime was reported */
	char rt_digest[80];
	int rt_running;         /* PROCESS_RUNNING */
	int rt_healthy;         /* live health check passing */
	char rt_detail[208];
};

/* One deployment: the snapshot the planner decides from. */
struct plan_deployment {
	char id[48];
	char app[64], env[64];
	char version[130], digest[80];
	char rb_version[130], rb_digest[80];     /* the rollback's release, once started */
	char good_version[130], good_digest[80]; /* the environment's last known-good */
	int state;                               /* enum plan_dstate */
	int is_rollback;                         /* itself a rollback request */
	int has_secrets;
	int current_batch, total_batches;
	int64_t started_ms, batch_started_ms, rollback_started_ms;
	int64_t batch_done_ms;  /* the batch completed (pause, bake); -1 promoted by hand */
	int64_t last_step_ms;   /* when a replica last stepped it (0: never) */
	/* strategy */
	int max_unavailable;    /* 0: the whole batch */
	int64_t pause_ms;
	int canary, manual_promotion;
	int64_t bake_ms;
	/* failure policy */
	int action;             /* enum plan_failure */
	int max_failed, max_failed_pct;
	int64_t deadline_ms;    /* progress deadline of a batch (and of a rollback) */
	struct plan_target *t;  /* borrowed */
	int nt;
};

/* What the driver must do, in order. */
enum plan_kind {
	/* Deadlines move by `value` ms: the deployment was not stepped for that
	 * long (a database outage, a frozen or dead replica), and nobody could
	 * have stored the reports that would have met them. */
	PLAN_EXTEND_DEADLINES = 1,
	PLAN_START_BATCH,   /* current_batch = value, started now, not done */
	PLAN_BATCH_DONE,    /* batch_done_ms = value (0: not done; -1: promoted) */
	PLAN_GRANT,         /* target needs a (fresh) secrets grant before its task */
	PLAN_DISPATCH,      /* send target its task (a new fencing generation) */
	PLAN_FAIL_TARGET,   /* target -> FAILED, message = detail */
	PLAN_SKIP_UNFINISHED, /* every pending or in-flight target -> SKIPPED, message = detail */
	PLAN_START_ROLLBACK,  /* touched targets go back to the known-good release */
	PLAN_PAUSE,         /* deployment -> PAUSED, reason = detail */
	PLAN_FINISH,        /* deployment -> state (terminal), reason = detail */
	PLAN_TIMELINE,      /* a timeline line: event, detail */
	PLAN_WAIT,          /* nothing to do before `value` (wall ms) */
};

/* What a finished deployment records about its environment. */
enum plan_record {
	PLAN_RECORD_NONE = 0,
	PLAN_RECORD_GOOD,      /* the release is current and known-good */
	PLAN_RECORD_ROLLBACK,  /* the rollback's release is current */
};

struct plan_action {
	int kind;          /* enum plan_kind */
	int target;        /* index into the snapshot's targets, or -1 */
	int state;         /* PLAN_FINISH: the final state */
	int record;        /* PLAN_FINISH: enum plan_record */
	int64_t value;
	char event[40];    /* PLAN_TIMELINE, PLAN_PAUSE, PLAN_FINISH: the timeline event */
	char audit[32];    /* PLAN_PAUSE, PLAN_FINISH: the audit action */
	int outcome;       /* its slipway.v1.Outcome */
	char detail[PLAN_DETAIL_MAX];
};

struct plan {
	struct plan_action *a;
	size_t n, cap;
	int again;   /* state changed: plan again right after applying */
	int oom;     /* an action could not be recorded (the plan is void) */
};

/* Tunables the driver passes in. */
struct plan_opts {
	int64_t stall_ms;        /* a gap in stepping longer than this extends deadlines */
	int64_t grant_margin_ms; /* a grant must outlive its dispatch by this much (< the grants' lifetime) */
};

/* Plans one step of d at wall time now. `out` must be zeroed (or reset
 * with plan_reset); its actions are appended. Pure: reads d, writes out.
 * Returns 0, or -1 when out of memory (out->oom). Any thread. */
int plan_step(const struct plan_deployment *d, int64_t now, const struct plan_opts *opts,
	      struct plan *out);

/* Applies a plan to the snapshot in memory, as the store does to the
 * database (dispatch: DISPATCHED, attempts + 1, touched; grant: expires at
 * now + grant_ttl_ms). For tests and simulations. */
void plan_apply(struct plan_deployment *d, const struct plan *p, int64_t now, int64_t grant_ttl_ms);

/* The retry decision for a target whose task failed on attempt `attempts`
 * (1-based) when the policy allows `retries` retries with `backoff_ms`
 * doubling per attempt (capped at a minute): returns the wall time of the
 * next attempt, or -1 when the target has failed for good. */
int64_t plan_retry_at(int attempts, int retries, int64_t backoff_ms, int64_t now);

/* The number of failed targets tolerated out of n. */
int plan_tolerated(int n, int max_failed, int max_failed_pct);

void plan_reset(struct plan *p);
void plan_free(struct plan *p);
const char *plan_kind_name(int kind);

#endif
