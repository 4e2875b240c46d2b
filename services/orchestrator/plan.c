/*
 * plan.c - the planner: from a snapshot of one deployment and the time, the
 * actions that move it forward. Pure: no I/O, no clock, no globals; the
 * store applies the actions and the driver performs the remote calls.
 *
 * A running deployment goes region by region in batches (the store built
 * them at creation): the failure budget is checked first, then the batch's
 * progress deadline, then up to max_unavailable of its pending targets are
 * dispatched (each after a fresh secrets grant when the app has secrets);
 * a complete batch is followed by a pause, or for a canary by a bake, then
 * the next batch; the last one ends the deployment. Past the failure
 * budget the failure policy applies: rollback (every touched target back
 * to the environment's known-good release, at once), pause, or abort. A
 * rollback dispatches every touched target and ends when all are back.
 */
#include "plan.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void plan_reset(struct plan *p)
{
	p->n = 0;
	p->again = 0;
	p->oom = 0;
}

void plan_free(struct plan *p)
{
	free(p->a);
	memset(p, 0, sizeof *p);
}

const char *plan_kind_name(int kind)
{
	static const char *const names[] = {
		[PLAN_EXTEND_DEADLINES] = "extend-deadlines", [PLAN_START_BATCH] = "start-batch",
		[PLAN_BATCH_DONE] = "batch-done",             [PLAN_GRANT] = "grant",
		[PLAN_DISPATCH] = "dispatch",                 [PLAN_FAIL_TARGET] = "fail-target",
		[PLAN_SKIP_UNFINISHED] = "skip-unfinished",   [PLAN_START_ROLLBACK] = "start-rollback",
		[PLAN_PAUSE] = "pause",                       [PLAN_FINISH] = "finish",
		[PLAN_TIMELINE] = "timeline",                 [PLAN_WAIT] = "wait",
	};
	if (kind <= 0 || kind >= (int)(sizeof names / sizeof names[0]) || names[kind] == NULL)
		return "?";
	return names[kind];
}

static struct plan_action *add(struct plan *p, int kind, int target, int64_t value)
{
	if (p->n == p->cap) {
		size_t cap = p->cap ? p->cap * 2 : 16;
		struct plan_action *a = realloc(p->a, cap * sizeof *a);
		if (a == NULL) {
			p->oom = 1;
			return NULL;
		}
		p->a = a;
		p->cap = cap;
	}
	struct plan_action *x = &p->a[p->n++];
	memset(x, 0, sizeof *x);
	x->kind = kind;
	x->target = target;
	x->value = value;
	return x;
}

static void detailf(struct plan_action *x, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void detailf(struct plan_action *x, const char *fmt, ...)
{
	va_list ap;
	if (x == NULL)
		return;
	va_start(ap, fmt);
	vsnprintf(x->detail, sizeof x->detail, fmt, ap);
	va_end(ap);
}

static void timeline(struct plan *p, const char *event, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void timeline(struct plan *p, const char *event, const char *fmt, ...)
{
	struct plan_action *x = add(p, PLAN_TIMELINE, -1, 0);
	va_list ap;
	if (x == NULL)
		return;
	snprintf(x->event, sizeof x->event, "%s", event);
	va_start(ap, fmt);
	vsnprintf(x->detail, sizeof x->detail, fmt, ap);
	va_end(ap);
}

/* Outcomes (slipway.v1.Outcome) the audit events carry. */
#define OUTCOME_SUCCESS 1
#define OUTCOME_FAILURE 2

static void finish(struct plan *p, int state, int record, const char *event, const char *audit,
		   int outcome, const char *detail)
{
	struct plan_action *x = add(p, PLAN_FINISH, -1, 0);
	if (x == NULL)
		return;
	x->state = state;
	x->record = record;
	x->outcome = outcome;
	snprintf(x->event, sizeof x->event, "%s", event);
	snprintf(x->audit, sizeof x->audit, "%s", audit);
	snprintf(x->detail, sizeof x->detail, "%s", detail);
}

static void pause_(struct plan *p, const char *event, int outcome, const char *detail)
{
	struct plan_action *x = add(p, PLAN_PAUSE, -1, 0);
	if (x == NULL)
		return;
	x->outcome = outcome;
	snprintf(x->event, sizeof x->event, "%s", event);
	snprintf(x->audit, sizeof x->audit, "deploy.pause");
	snprintf(x->detail, sizeof x->detail, "%s", detail);
}

static void wait_until(struct plan *p, int64_t at)
{
	/* One wake-up: the earliest. */
	for (size_t i = 0; i < p->n; i++)
		if (p->a[i].kind == PLAN_WAIT) {
			if (at < p->a[i].value)
				p->a[i].value = at;
			return;
		}
	add(p, PLAN_WAIT, -1, at);
}

int plan_tolerated(int n, int max_failed, int max_failed_pct)
{
	int t = max_failed > 0 ? max_failed : 0;
	if (max_failed_pct > 0 && n * max_failed_pct / 100 > t)
		t = n * max_failed_pct / 100;
	return t;
}

int64_t plan_retry_at(int attempts, int retries, int64_t backoff_ms, int64_t now)
{
	if (attempts > retries)
		return -1;
	int64_t wait = backoff_ms > 0 ? backoff_ms : 0;
	for (int i = 1; i < attempts && wait < 60000; i++)
		wait *= 2;
	if (wait > 60000)
		wait = 60000;
	return now + wait;
}

static int unfinished(int state)
{
	return state == PLAN_T_PENDING || state == PLAN_T_DISPATCHED || state == PLAN_T_RUNNING;
}

static int in_flight(int state)
{
	return state == PLAN_T_DISPATCHED || state == PLAN_T_RUNNING;
}

/* The failure policy: rollback (not of a rollback, and only when there is
 * a known-good release other than this one), pause, or abort. */
static void apply_failure(const struct plan_deployment *d, struct plan *p, const char *why)
{
	char detail[PLAN_DETAIL_MAX];
	if (d->action == PLAN_FAIL_ROLLBACK && !d->is_rollback) {
		if (d->good_digest[0] != '\0' && strcmp(d->good_digest, d->digest) != 0) {
			struct plan_action *x = add(p, PLAN_START_ROLLBACK, -1, 0);
			detailf(x, "%s", why);
			p->again = 1;
			return;
		}
		snprintf(detail, sizeof detail, "%.500s; no known-good release to roll back to", why);
		struct plan_action *x = add(p, PLAN_SKIP_UNFINISHED, -1, 0);
		detailf(x, "not reached");
		finish(p, PLAN_D_FAILED, PLAN_RECORD_NONE, "failed", "deploy.failed", OUTCOME_FAILURE,
		       detail);
		return;
	}
	if (d->action == PLAN_FAIL_PAUSE) {
		pause_(p, "paused", OUTCOME_FAILURE, why);
		return;
	}
	struct plan_action *x = add(p, PLAN_SKIP_UNFINISHED, -1, 0);
	detailf(x, "aborted");
	finish(p, PLAN_D_FAILED, PLAN_RECORD_NONE, "failed", "deploy.failed", OUTCOME_FAILURE, why);
}

/* A target needs a grant before its task when the app has secrets and the
 * grant in force (if any) would expire too soon for its agent to fetch
 * them: within grant_margin_ms (the driver makes it well under the grants'
 * lifetime, so a fresh grant always passes). */
static int needs_grant(const struct plan_deployment *d, const struct plan_target *t, int64_t now,
		       const struct plan_opts *o)
{
	return d->has_secrets && t->grant_expires_ms < now + o->grant_margin_ms;
}

/* A target whose agent is lost fails at once: that is this target's
 * failure, not a retry (the host is gone). The timeline names the agent. */
static void fail_lost(const struct plan_deployment *d, struct plan *p, int i, const char *why)
{
	struct plan_action *x = add(p, PLAN_FAIL_TARGET, i, 0);
	detailf(x, "%s", why);
	timeline(p, "agent lost", "%s", d->t[i].agent);
	p->again = 1;
}

/* Sends tasks to the pending targets of `phase` (and `batch`, when > 0)
 * whose back-off has passed, up to `limit` in flight (< 0: no limit).
 * Pending or in-flight targets whose agent is lost fail (fail_lost) and
 * leave room for others. Returns how many were dispatched or asked a grant
 * for. */
static int dispatch(const struct plan_deployment *d, struct plan *p, int phase, int batch,
		    int limit, int64_t now, const struct plan_opts *o)
{
	int busy = 0, sent = 0;
	int64_t next = 0;
	for (int i = 0; i < d->nt; i++) {
		const struct plan_target *t = &d->t[i];
		if (t->phase != phase || (batch > 0 && t->batch != batch) || !in_flight(t->state))
			continue;
		if (t->agent_lost)
			fail_lost(d, p, i, "agent lost (missed 3 heartbeats)");
		else
			busy++;
	}
	for (int i = 0; i < d->nt; i++) {
		const struct plan_target *t = &d->t[i];
		if (t->phase != phase || (batch > 0 && t->batch != batch) || t->state != PLAN_T_PENDING)
			continue;
		if (t->agent_lost) {
			fail_lost(d, p, i, "agent lost");
			continue;
		}
		if (limit >= 0 && busy >= limit)
			continue;
		if (t->next_attempt_ms > now) {
			if (next == 0 || t->next_attempt_ms < next)
				next = t->next_attempt_ms;
			continue;
		}
		add(p, needs_grant(d, t, now, o) ? PLAN_GRANT : PLAN_DISPATCH, i, 0);
		busy++;
		sent++;
	}
	if (next > 0)
		wait_until(p, next);
	return sent;
}

/* Fails the unfinished targets of `phase` (and `batch` when > 0) once the
 * progress deadline counted from `since` has passed. Returns how many. */
static int fail_overdue(const struct plan_deployment *d, struct plan *p, int phase, int batch,
			int64_t since, int64_t now)
{
	int n = 0;
	if (since <= 0)
		return 0;
	if (now - since <= d->deadline_ms) {
		wait_until(p, since + d->deadline_ms + 1);
		return 0;
	}
	for (int i = 0; i < d->nt; i++) {
		const struct plan_target *t = &d->t[i];
		if (t->phase != phase || (batch > 0 && t->batch != batch) || !unfinished(t->state))
			continue;
		struct plan_action *x = add(p, PLAN_FAIL_TARGET, i, 0);
		detailf(x, "progress deadline exceeded");
		n++;
	}
	if (n > 0) {
		timeline(p, "progress deadline exceeded", "%d target(s) missed the %lld ms progress deadline",
			 n, (long long)d->deadline_ms);
		p->again = 1;
	}
	return n;
}

/* Why a baking canary target is unhealthy ("" when it is healthy or there
 * is no evidence yet: *unseen says which). */
static void canary_verdict(const struct plan_deployment *d, const struct plan_target *t,
			   char *why, size_t len, int *unseen)
{
	why[0] = '\0';
	*unseen = 0;
	if (t->agent_lost)
		snprintf(why, len, "its agent is lost");
	else if (!t->hb_fresh)
		*unseen = 1;
	else if (!t->rt_present)
		snprintf(why, len, "its agent reports no runtime");
	else if (strcmp(t->rt_digest, d->digest) != 0)
		snprintf(why, len, "it no longer runs %s", d->digest);
	else if (!t->rt_running)
		snprintf(why, len, "the process is not running");
	else if (!t->rt_healthy)
		snprintf(why, len, "health check failing: %.200s", t->rt_detail);
}

/* The canary batch is complete: it bakes, then is promoted on its own or,
 * with manual promotion, the deployment pauses until a resume promotes it
 * (batch_done_ms -1 records that). Returns 1 when the next batch may
 * start. */
static int canary_gate(const struct plan_deployment *d, struct plan *p, int64_t now)
{
	int ok = 0;
	if (d->batch_done_ms < 0) {
		timeline(p, "canary promoted", "by a resume");
		return 1;
	}
	for (int i = 0; i < d->nt; i++)
		ok += d->t[i].batch == 1 && d->t[i].phase == PLAN_PHASE_DEPLOY &&
		      d->t[i].state == PLAN_T_SUCCEEDED;
	if (ok == 0) { /* every canary target failed, within the tolerance */
		apply_failure(d, p, "no canary target is healthy");
		return 0;
	}
	if (d->batch_done_ms == 0) {
		add(p, PLAN_BATCH_DONE, -1, now);
		timeline(p, "canary baking", "canary of %d target%s healthy; baking for %lld ms", ok,
			 ok == 1 ? "" : "s", (long long)d->bake_ms);
		wait_until(p, now + d->bake_ms);
		return 0;
	}
	int bad = 0, unseen = 0;
	for (int i = 0; i < d->nt; i++) {
		const struct plan_target *t = &d->t[i];
		char why[300];
		int u = 0;
		if (t->batch != 1 || t->phase != PLAN_PHASE_DEPLOY || t->state != PLAN_T_SUCCEEDED)
			continue;
		canary_verdict(d, t, why, sizeof why, &u);
		unseen += u;
		if (why[0] == '\0')
			continue;
		struct plan_action *x = add(p, PLAN_FAIL_TARGET, i, 0);
		detailf(x, "canary unhealthy while baking: %s", why);
		timeline(p, "canary target failed", "%s: %s", t->agent, why);
		bad++;
	}
	if (bad > 0) { /* the failure policy next; whatever is left bakes again */
		add(p, PLAN_BATCH_DONE, -1, 0);
		p->again = 1;
		return 0;
	}
	/* Promotion needs the time and, from every canary target, a heartbeat
	 * since its deployment (an agent that never sends one is lost). */
	if (now - d->batch_done_ms < d->bake_ms || unseen > 0) {
		wait_until(p, now - d->batch_done_ms < d->bake_ms ? d->batch_done_ms + d->bake_ms
								   : now + 500);
		return 0;
	}
	char detail[256];
	snprintf(detail, sizeof detail, "canary of %d target%s healthy for %lld ms", ok,
		 ok == 1 ? "" : "s", (long long)(now - d->batch_done_ms));
	if (!d->manual_promotion) {
		timeline(p, "canary promoted", "%s", detail);
		return 1;
	}
	add(p, PLAN_BATCH_DONE, -1, -1);
	char reason[PLAN_DETAIL_MAX];
	snprintf(reason, sizeof reason, "%s; waiting for promotion (slipway resume %s)", detail, d->id);
	pause_(p, "canary waiting for promotion", OUTCOME_SUCCESS, reason);
	return 0;
}

static void step_running(const struct plan_deployment *d, struct plan *p, int64_t now,
			 const struct plan_opts *o)
{
	int n = 0, failed = 0;
	for (int i = 0; i < d->nt; i++)
		if (d->t[i].phase == PLAN_PHASE_DEPLOY) {
			n++;
			failed += d->t[i].state == PLAN_T_FAILED;
		}
	int threshold = plan_tolerated(n, d->max_failed, d->max_failed_pct);
	if (failed > threshold) {
		char why[200];
		snprintf(why, sizeof why, "%d of %d targets failed (tolerated: %d)", failed, n, threshold);
		apply_failure(d, p, why);
		return;
	}
	int cur = d->current_batch;
	if (cur == 0) {
		add(p, PLAN_START_BATCH, -1, 1);
		timeline(p, "batch started", "batch 1 of %d", d->total_batches);
		p->again = 1;
		return;
	}
	if (fail_overdue(d, p, PLAN_PHASE_DEPLOY, cur, d->batch_started_ms, now) > 0)
		return;
	int size = 0, done = 0;
	for (int i = 0; i < d->nt; i++) {
		const struct plan_target *t = &d->t[i];
		if (t->batch != cur || t->phase != PLAN_PHASE_DEPLOY)
			continue;
		size++;
		done += !unfinished(t->state);
	}
	dispatch(d, p, PLAN_PHASE_DEPLOY, cur, d->max_unavailable > 0 ? d->max_unavailable : size, now,
		 o);
	if (done < size)
		return;
	/* The batch is complete and within the failure budget. */
	if (cur >= d->total_batches) {
		char detail[300];
		snprintf(detail, sizeof detail, "%s@%s on %d targets in %lld ms", d->app, d->version, n,
			 (long long)(now - d->started_ms));
		finish(p, PLAN_D_SUCCEEDED, PLAN_RECORD_GOOD, "succeeded", "deploy.succeeded",
		       OUTCOME_SUCCESS, detail);
		return;
	}
	if (d->canary && cur == 1) {
		if (!canary_gate(d, p, now))
			return;
	} else if (d->pause_ms > 0) {
		if (d->batch_done_ms == 0) {
			add(p, PLAN_BATCH_DONE, -1, now);
			timeline(p, "batch healthy", "batch %d healthy; pausing %lld ms", cur,
				 (long long)d->pause_ms);
			wait_until(p, now + d->pause_ms);
			return;
		}
		if (now - d->batch_done_ms < d->pause_ms) {
			wait_until(p, d->batch_done_ms + d->pause_ms);
			return;
		}
	}
	add(p, PLAN_START_BATCH, -1, cur + 1);
	timeline(p, "batch started", "batch %d of %d", cur + 1, d->total_batches);
	p->again = 1;
}

static void step_rolling_back(const struct plan_deployment *d, struct plan *p, int64_t now,
			      const struct plan_opts *o)
{
	if (fail_overdue(d, p, PLAN_PHASE_ROLLBACK, 0, d->rollback_started_ms, now) > 0)
		return;
	dispatch(d, p, PLAN_PHASE_ROLLBACK, 0, -1, now, o);
	int total = 0, done = 0, failed = 0;
	for (int i = 0; i < d->nt; i++) {
		const struct plan_target *t = &d->t[i];
		if (t->phase != PLAN_PHASE_ROLLBACK)
			continue;
		total++;
		done += !unfinished(t->state);
		failed += t->state == PLAN_T_FAILED;
	}
	if (done < total)
		return;
	int64_t took = now - d->rollback_started_ms;
	char detail[400];
	if (failed > 0) {
		snprintf(detail, sizeof detail, "rollback to %s@%s failed on %d of %d targets after %lld ms",
			 d->app, d->rb_version, failed, total, (long long)took);
		finish(p, PLAN_D_FAILED, PLAN_RECORD_ROLLBACK, "rollback incomplete", "rollback.failed",
		       OUTCOME_FAILURE, detail);
		return;
	}
	snprintf(detail, sizeof detail, "%d targets back on %s@%s in %lld ms", total, d->app,
		 d->rb_version, (long long)took);
	finish(p, PLAN_D_ROLLED_BACK, PLAN_RECORD_ROLLBACK, "rolled back", "rollback.done",
	       OUTCOME_SUCCESS, detail);
}

int plan_step(const struct plan_deployment *d, int64_t now, const struct plan_opts *o,
	      struct plan *out)
{
	if (d->state != PLAN_D_RUNNING && d->state != PLAN_D_ROLLING_BACK)
		return 0;
	/* Nobody stepped it for a while: no report could have been stored, so
	 * the time does not count against the targets. */
	if (d->last_step_ms > 0 && now - d->last_step_ms > o->stall_ms) {
		int64_t gap = now - d->last_step_ms;
		add(out, PLAN_EXTEND_DEADLINES, -1, gap);
		timeline(out, "deadlines extended",
			 "not stepped for %lld ms (database or replica unavailable); deadlines moved by as much",
			 (long long)gap);
		out->again = 1;
		return out->oom ? -1 : 0;
	}
	if (d->state == PLAN_D_RUNNING)
		step_running(d, out, now, o);
	else
		step_rolling_back(d, out, now, o);
	return out->oom ? -1 : 0;
}

void plan_apply(struct plan_deployment *d, const struct plan *p, int64_t now, int64_t grant_ttl_ms)
{
	for (size_t i = 0; i < p->n; i++) {
		const struct plan_action *x = &p->a[i];
		struct plan_target *t = x->target >= 0 && x->target < d->nt ? &d->t[x->target] : NULL;
		switch (x->kind) {
		case PLAN_EXTEND_DEADLINES:
			if (d->batch_started_ms > 0)
				d->batch_started_ms += x->value;
			if (d->rollback_started_ms > 0)
				d->rollback_started_ms += x->value;
			if (d->batch_done_ms > 0)
				d->batch_done_ms += x->value;
			d->last_step_ms = now;
			break;
		case PLAN_START_BATCH:
			d->current_batch = (int)x->value;
			d->batch_started_ms = now;
			d->batch_done_ms = 0;
			break;
		case PLAN_BATCH_DONE:
			d->batch_done_ms = x->value;
			break;
		case PLAN_GRANT:
			if (t)
				t->grant_expires_ms = now + grant_ttl_ms;
			break;
		case PLAN_DISPATCH:
			if (t) {
				t->state = PLAN_T_DISPATCHED;
				t->attempts++;
				t->touched = 1;
				t->updated_ms = now;
			}
			break;
		case PLAN_FAIL_TARGET:
			if (t) {
				t->state = PLAN_T_FAILED;
				t->updated_ms = now;
			}
			break;
		case PLAN_SKIP_UNFINISHED:
			for (int k = 0; k < d->nt; k++)
				if (unfinished(d->t[k].state))
					d->t[k].state = PLAN_T_SKIPPED;
			break;
		case PLAN_START_ROLLBACK:
			d->state = PLAN_D_ROLLING_BACK;
			d->rollback_started_ms = now;
			snprintf(d->rb_digest, sizeof d->rb_digest, "%s", d->good_digest);
			snprintf(d->rb_version, sizeof d->rb_version, "%s", d->good_version);
			for (int k = 0; k < d->nt; k++) {
				struct plan_target *u = &d->t[k];
				if (u->touched) {
					u->phase = PLAN_PHASE_ROLLBACK;
					u->state = PLAN_T_PENDING;
					u->attempts = 0;
					u->next_attempt_ms = 0;
				} else {
					u->state = PLAN_T_SKIPPED;
				}
			}
			break;
		case PLAN_PAUSE:
			d->state = PLAN_D_PAUSED;
			break;
		case PLAN_FINISH:
			d->state = x->state;
			break;
		default:
			break;
		}
	}
}
