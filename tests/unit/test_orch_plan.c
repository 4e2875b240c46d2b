/*
 * test_orch_plan.c - the orchestrator's planner (services/orchestrator/
 * plan.c), by tables: single steps (what one snapshot plans), and whole
 * deployments simulated step by step with plan_apply and scripted agents
 * over a grid of environment sizes, batch sizes, max_unavailable,
 * failures, tolerances, retries, deadlines, canaries and outages; each
 * simulation checks the invariants a deployment must keep (no target sent
 * twice in a step, never more in flight than allowed, batches in order,
 * the expected end). Hundreds of cases, milliseconds in all.
 *
 * The planner is compiled into this test directly (it is pure C).
 */
#include "../../services/orchestrator/plan.c"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

static const struct plan_opts OPTS = { .stall_ms = 7000, .grant_margin_ms = 5000 };

/* ---- building snapshots ---- */

struct world {
	struct plan_deployment d;
	struct plan_target t[64];
};

/* nt targets in batches of `size` (the first batch `first` when > 0),
 * RUNNING, batch 0, everything else zero; a known-good release exists. */
static void build(struct world *w, int nt, int size, int first)
{
	memset(w, 0, sizeof *w);
	struct plan_deployment *d = &w->d;
	snprintf(d->id, sizeof d->id, "dep-1");
	snprintf(d->app, sizeof d->app, "web");
	snprintf(d->env, sizeof d->env, "prod");
	snprintf(d->version, sizeof d->version, "2.0.0");
	snprintf(d->digest, sizeof d->digest, "sha256:new");
	snprintf(d->good_version, sizeof d->good_version, "1.0.0");
	snprintf(d->good_digest, sizeof d->good_digest, "sha256:good");
	d->state = PLAN_D_RUNNING;
	d->action = PLAN_FAIL_ROLLBACK;
	d->deadline_ms = 300000;
	d->started_ms = 1000;
	d->last_step_ms = 1000;
	d->t = w->t;
	d->nt = nt;
	int b = 1, in = 0;
	for (int i = 0; i < nt; i++) {
		int cap = (b == 1 && first > 0) ? first : size;
		if (in == cap) {
			b++;
			in = 0;
		}
		snprintf(w->t[i].agent, sizeof w->t[i].agent, "spiffe://td/agent/h%02d", i);
		w->t[i].batch = b;
		w->t[i].state = PLAN_T_PENDING;
		in++;
	}
	d->total_batches = nt ? b : 0;
}

static int count(const struct plan *p, int kind)
{
	int n = 0;
	for (size_t i = 0; i < p->n; i++)
		n += p->a[i].kind == kind;
	return n;
}

static const struct plan_action *find(const struct plan *p, int kind)
{
	for (size_t i = 0; i < p->n; i++)
		if (p->a[i].kind == kind)
			return &p->a[i];
	return NULL;
}

static void one_step(struct world *w, int64_t now, struct plan *p)
{
	plan_reset(p);
	assert_int_equal(plan_step(&w->d, now, &OPTS, p), 0);
}

/* ---- single steps, by table ---- */

struct step_case {
	const char *name;
	int nt, size, first;      /* targets, batch size, canary batch */
	int batch;                /* current batch */
	const char *states;       /* per target: P D R S F K(skipped) */
	int max_unavailable;
	int max_failed, max_failed_pct;
	int action;               /* 1 rollback, 2 pause, 3 abort (ACTIONS) */
	int lost;                 /* bit mask of lost agents */
	int has_good;
	int64_t since;            /* batch_started_ms */
	int64_t now;
	/* expected */
	int dispatch, fail, rollback, finish_state, pause, start_batch, skip;
};

static const struct step_case STEPS[] = {
	{ "first step starts batch 1", 4, 2, 0, 0, "PPPP", 0, 0, 0, 1, 0, 1, 0, 2000,
	  0, 0, 0, 0, 0, 1, 0 },
	{ "batch 1 dispatches all", 4, 2, 0, 1, "PPPP", 0, 0, 0, 1, 0, 1, 2000, 2100,
	  2, 0, 0, 0, 0, 0, 0 },
	{ "max_unavailable 1 dispatches one", 4, 2, 0, 1, "PPPP", 1, 0, 0, 1, 0, 1, 2000, 2100,
	  1, 0, 0, 0, 0, 0, 0 },
	{ "max_unavailable 1, one in flight: none", 4, 2, 0, 1, "DPPP", 1, 0, 0, 1, 0, 1, 2000, 2100,
	  0, 0, 0, 0, 0, 0, 0 },
	{ "batch done starts the next", 4, 2, 0, 1, "SSPP", 0, 0, 0, 1, 0, 1, 2000, 2100,
	  0, 0, 0, 0, 0, 2, 0 },
	{ "last batch done succeeds", 4, 2, 0, 2, "SSSS", 0, 0, 0, 1, 0, 1, 2000, 2100,
	  0, 0, 0, PLAN_D_SUCCEEDED, 0, 0, 0 },
	{ "one failure, none tolerated: rollback", 4, 2, 0, 1, "FSPP", 0, 0, 0, 1, 0, 1, 2000, 2100,
	  0, 0, 1, 0, 0, 0, 0 },
	{ "one failure tolerated: next batch", 4, 2, 0, 1, "FSPP", 0, 1, 0, 1, 0, 1, 2000, 2100,
	  0, 0, 0, 0, 0, 2, 0 },
	{ "25 percent of 4 tolerates one", 4, 2, 0, 1, "FSPP", 0, 0, 25, 1, 0, 1, 2000, 2100,
	  0, 0, 0, 0, 0, 2, 0 },
	{ "two failures, one tolerated: rollback", 4, 2, 0, 2, "FSFP", 0, 1, 0, 1, 0, 1, 2000, 2100,
	  0, 0, 1, 0, 0, 0, 0 },
	{ "failure with pause policy pauses", 4, 2, 0, 1, "FSPP", 0, 0, 0, 2, 0, 1, 2000, 2100,
	  0, 0, 0, 0, 1, 0, 0 },
	{ "failure with abort policy fails", 4, 2, 0, 1, "FSPP", 0, 0, 0, 3, 0, 1, 2000, 2100,
	  0, 0, 0, PLAN_D_FAILED, 0, 0, 1 },
	{ "rollback without known-good fails", 4, 2, 0, 1, "FSPP", 0, 0, 0, 1, 0, 0, 2000, 2100,
	  0, 0, 0, PLAN_D_FAILED, 0, 0, 1 },
	{ "pending target of a lost agent fails", 4, 2, 0, 1, "PPPP", 0, 0, 0, 1, 1, 1, 2000, 2100,
	  1, 1, 0, 0, 0, 0, 0 },
	{ "lost agent leaves room for the next", 4, 4, 0, 1, "PPPP", 2, 0, 0, 1, 1, 1, 2000, 2100,
	  2, 1, 0, 0, 0, 0, 0 },
	{ "in-flight targets of a lost agent fail", 4, 2, 0, 1, "DRPP", 0, 0, 0, 1, 2, 1, 2000, 2100,
	  0, 1, 0, 0, 0, 0, 0 },
	{ "a lost in-flight target frees its slot", 4, 4, 0, 1, "DPPP", 1, 0, 0, 1, 1, 1, 2000, 2100,
	  1, 1, 0, 0, 0, 0, 0 },
	{ "in-flight targets past the deadline fail", 4, 2, 0, 1, "DRPP", 0, 0, 0, 1, 0, 1, 2000,
	  2000 + 300001, 0, 2, 0, 0, 0, 0, 0 },
	{ "not yet past the deadline", 4, 2, 0, 1, "DRPP", 0, 0, 0, 1, 0, 1, 2000, 2000 + 300000,
	  0, 0, 0, 0, 0, 0, 0 },
	{ "deadline spares finished targets", 4, 2, 0, 1, "SRPP", 0, 0, 0, 1, 0, 1, 2000,
	  2000 + 400000, 0, 1, 0, 0, 0, 0, 0 },
	{ "single target environment", 1, 1, 0, 1, "S", 0, 0, 0, 1, 0, 1, 2000, 2100,
	  0, 0, 0, PLAN_D_SUCCEEDED, 0, 0, 0 },
	{ "empty batch of skipped targets completes", 4, 2, 0, 1, "KKPP", 0, 0, 0, 1, 0, 1, 2000,
	  2100, 0, 0, 0, 0, 0, 2, 0 },
};

static void fill_states(struct world *w, const char *s, int lost)
{
	for (int i = 0; s[i] && i < w->d.nt; i++) {
		static const char codes[] = "PDRSFK";
		static const int st[] = { PLAN_T_PENDING, PLAN_T_DISPATCHED, PLAN_T_RUNNING,
					  PLAN_T_SUCCEEDED, PLAN_T_FAILED, PLAN_T_SKIPPED };
		const char *c = strchr(codes, s[i]);
		assert_non_null(c);
		w->t[i].state = st[c - codes];
		w->t[i].touched = w->t[i].state != PLAN_T_PENDING && w->t[i].state != PLAN_T_SKIPPED;
		w->t[i].agent_lost = (lost >> i) & 1;
	}
}

static void test_step_table(void **state)
{
	(void)state;
	struct plan p = { 0 };
	for (size_t k = 0; k < sizeof STEPS / sizeof STEPS[0]; k++) {
		const struct step_case *c = &STEPS[k];
		struct world w;
		build(&w, c->nt, c->size, c->first);
		fill_states(&w, c->states, c->lost);
		w.d.current_batch = c->batch;
		w.d.batch_started_ms = c->since;
		w.d.last_step_ms = c->now - 100;
		w.d.max_unavailable = c->max_unavailable;
		w.d.max_failed = c->max_failed;
		w.d.max_failed_pct = c->max_failed_pct;
		static const int ACTIONS[] = { 0, PLAN_FAIL_ROLLBACK, PLAN_FAIL_PAUSE, PLAN_FAIL_ABORT };
		w.d.action = ACTIONS[c->action];
		if (!c->has_good)
			w.d.good_digest[0] = '\0';
		one_step(&w, c->now, &p);
		const struct plan_action *fin = find(&p, PLAN_FINISH);
		const struct plan_action *sb = find(&p, PLAN_START_BATCH);
		if (count(&p, PLAN_DISPATCH) != c->dispatch || count(&p, PLAN_FAIL_TARGET) != c->fail ||
		    count(&p, PLAN_START_ROLLBACK) != c->rollback ||
		    (fin ? fin->state : 0) != c->finish_state || count(&p, PLAN_PAUSE) != c->pause ||
		    (sb ? (int)sb->value : 0) != c->start_batch ||
		    count(&p, PLAN_SKIP_UNFINISHED) != c->skip)
			fail_msg("case '%s': dispatch %d fail %d rollback %d finish %d pause %d batch %d skip %d",
				 c->name, count(&p, PLAN_DISPATCH), count(&p, PLAN_FAIL_TARGET),
				 count(&p, PLAN_START_ROLLBACK), fin ? fin->state : 0,
				 count(&p, PLAN_PAUSE), sb ? (int)sb->value : 0,
				 count(&p, PLAN_SKIP_UNFINISHED));
	}
	plan_free(&p);
}

/* ---- whole deployments, simulated ---- */

/* What each agent does with its task: succeed after `delay` ms, or fail
 * `fails` times first, or never answer (hang). */
struct script {
	int fails[64];      /* failures before success (-1: always fails) */
	int hang[64];       /* never reports */
	int64_t delay;      /* ms from dispatch to the report */
	int64_t outage_at, outage_ms; /* the engine cannot step in [at, at + ms) */
};

struct outcome {
	int state;
	int dispatches[64];  /* per target, per phase 0 */
	int rb_dispatches[64];
	int max_in_flight;
	int steps;
	int order_ok;        /* no target of batch b+1 dispatched before batch b is done */
};

static void simulate(struct world *w, const struct script *s, struct outcome *out)
{
	struct plan p = { 0 };
	struct plan_deployment *d = &w->d;
	int64_t now = 2000, due[64] = { 0 };
	int failed_so_far[64] = { 0 };
	memset(out, 0, sizeof *out);
	out->order_ok = 1;
	for (int step = 0; step < 20000; step++) {
		now += 100;
		out->steps = step;
		/* Agents report. */
		for (int i = 0; i < d->nt; i++) {
			struct plan_target *t = &w->t[i];
			if (!in_flight(t->state) || now < due[i] || s->hang[i])
				continue;
			if (s->outage_ms > 0 && now >= s->outage_at && now < s->outage_at + s->outage_ms)
				continue; /* the report cannot be stored: the agent retries */
			int fails = s->fails[i];
			if (t->phase == PLAN_PHASE_DEPLOY && (fails < 0 || failed_so_far[i] < fails)) {
				failed_so_far[i]++;
				int64_t at = plan_retry_at(t->attempts, 0, 1000, now);
				t->state = at < 0 ? PLAN_T_FAILED : PLAN_T_PENDING;
			} else {
				t->state = t->phase == PLAN_PHASE_DEPLOY ? PLAN_T_SUCCEEDED : PLAN_T_ROLLED_BACK;
			}
			t->updated_ms = now;
			/* Healthy heartbeats from then on. */
			t->hb_fresh = 1;
			t->rt_present = 1;
			snprintf(t->rt_digest, sizeof t->rt_digest, "%s",
				 t->phase == PLAN_PHASE_DEPLOY ? d->digest : d->good_digest);
			t->rt_running = t->rt_healthy = 1;
		}
		if (s->outage_ms > 0 && now >= s->outage_at && now < s->outage_at + s->outage_ms)
			continue;
		for (int round = 0; round < 4; round++) {
			plan_reset(&p);
			assert_int_equal(plan_step(d, now, &OPTS, &p), 0);
			/* No target twice in one plan. */
			int seen[64] = { 0 };
			for (size_t k = 0; k < p.n; k++)
				if (p.a[k].kind == PLAN_DISPATCH) {
					int i = p.a[k].target;
					assert_true(i >= 0 && i < d->nt);
					assert_int_equal(seen[i], 0);
					seen[i] = 1;
					if (w->t[i].phase == PLAN_PHASE_DEPLOY)
						out->dispatches[i]++;
					else
						out->rb_dispatches[i]++;
					due[i] = now + s->delay;
					/* Batches in order. */
					for (int j = 0; j < d->nt; j++)
						if (w->t[j].phase == PLAN_PHASE_DEPLOY &&
						    w->t[j].batch < w->t[i].batch && unfinished(w->t[j].state) &&
						    w->t[i].phase == PLAN_PHASE_DEPLOY)
							out->order_ok = 0;
				}
			plan_apply(d, &p, now, 3600000);
			d->last_step_ms = now;
			int fly = 0;
			for (int i = 0; i < d->nt; i++)
				fly += w->t[i].phase == PLAN_PHASE_DEPLOY && in_flight(w->t[i].state);
			if (fly > out->max_in_flight)
				out->max_in_flight = fly;
			if (!p.again)
				break;
		}
		if (d->state != PLAN_D_RUNNING && d->state != PLAN_D_ROLLING_BACK)
			break;
	}
	out->state = d->state;
	plan_free(&p);
}

/* Rolling deployments over a grid: every target dispatched once, never
 * more than max_unavailable in flight, batches in order, SUCCEEDED. */
static void test_rolling_grid(void **state)
{
	(void)state;
	int cases = 0;
	for (int nt = 1; nt <= 12; nt++)
		for (int size = 1; size <= 5; size++)
			for (int mu = 0; mu <= 3; mu++) {
				struct world w;
				struct script s = { .delay = 300 };
				struct outcome o;
				build(&w, nt, size, 0);
				w.d.max_unavailable = mu;
				simulate(&w, &s, &o);
				if (o.state != PLAN_D_SUCCEEDED || !o.order_ok)
					fail_msg("nt=%d size=%d mu=%d: state %d order %d", nt, size, mu,
						 o.state, o.order_ok);
				for (int i = 0; i < nt; i++)
					assert_int_equal(o.dispatches[i], 1);
				int cap = mu > 0 ? mu : size;
				if (o.max_in_flight > cap)
					fail_msg("nt=%d size=%d mu=%d: %d in flight", nt, size, mu,
						 o.max_in_flight);
				cases++;
			}
	assert_int_equal(cases, 12 * 5 * 4);
}

/* Failures against tolerances and policies: k targets always fail. */
static void test_failure_grid(void **state)
{
	(void)state;
	for (int nt = 2; nt <= 10; nt++)
		for (int k = 1; k <= nt; k++)
			for (int tol = 0; tol <= 2; tol++)
				for (int action = PLAN_FAIL_ROLLBACK; action <= PLAN_FAIL_ABORT; action++) {
					struct world w;
					struct script s = { .delay = 200 };
					struct outcome o;
					build(&w, nt, 2, 0);
					w.d.max_failed = tol;
					w.d.action = action;
					for (int i = nt - k; i < nt; i++)
						s.fails[i] = -1; /* the last k fail */
					simulate(&w, &s, &o);
					int want;
					if (k <= tol)
						want = PLAN_D_SUCCEEDED;
					else if (action == PLAN_FAIL_ROLLBACK)
						want = PLAN_D_ROLLED_BACK;
					else if (action == PLAN_FAIL_PAUSE)
						want = PLAN_D_PAUSED;
					else
						want = PLAN_D_FAILED;
					if (o.state != want)
						fail_msg("nt=%d k=%d tol=%d action=%d: state %d, want %d", nt,
							 k, tol, action, o.state, want);
					if (want == PLAN_D_ROLLED_BACK)
						for (int i = 0; i < nt; i++)
							/* Touched targets go back once; others never. */
							assert_int_equal(o.rb_dispatches[i], o.dispatches[i] > 0);
				}
}

/* Retries: a target failing r times with r retries allowed succeeds. */
static void test_retry_at(void **state)
{
	(void)state;
	static const struct {
		int attempts, retries;
		int64_t backoff, want;
	} T[] = {
		{ 1, 0, 1000, -1 },      { 1, 1, 1000, 1000 },    { 2, 1, 1000, -1 },
		{ 2, 3, 1000, 2000 },    { 3, 3, 1000, 4000 },    { 4, 3, 1000, -1 },
		{ 5, 3, 1000, -1 },      { 10, 20, 1000, 60000 }, { 1, 2, 0, 0 },
		{ 7, 9, 50000, 60000 },
	};
	for (size_t i = 0; i < sizeof T / sizeof T[0]; i++) {
		int64_t got = plan_retry_at(T[i].attempts, T[i].retries, T[i].backoff, 100);
		int64_t want = T[i].want < 0 ? -1 : 100 + T[i].want;
		if (got != want)
			fail_msg("attempts %d retries %d backoff %lld: %lld, want %lld", T[i].attempts,
				 T[i].retries, (long long)T[i].backoff, (long long)got, (long long)want);
	}
	static const struct {
		int n, max, pct, want;
	} U[] = { { 10, 0, 0, 0 }, { 10, 2, 0, 2 }, { 10, 0, 25, 2 }, { 10, 3, 25, 3 },
		  { 3, 0, 50, 1 }, { 1, 0, 99, 0 },   { 100, 5, 10, 10 } };
	for (size_t i = 0; i < sizeof U / sizeof U[0]; i++)
		assert_int_equal(plan_tolerated(U[i].n, U[i].max, U[i].pct), U[i].want);
}

/* A hung target fails at the progress deadline; an outage of the engine
 * (nobody could store reports) does not count against it. */
static void test_deadlines_and_outages(void **state)
{
	(void)state;
	for (int hang = 0; hang <= 1; hang++)
		for (int64_t outage = 0; outage <= 40000; outage += 10000) {
			struct world w;
			struct script s = { .delay = 2000, .outage_at = 3000, .outage_ms = outage };
			struct outcome o;
			build(&w, 6, 2, 0);
			w.d.deadline_ms = 5000; /* shorter than the outage */
			w.d.action = PLAN_FAIL_ABORT;
			s.hang[3] = hang;
			simulate(&w, &s, &o);
			int want = hang ? PLAN_D_FAILED : PLAN_D_SUCCEEDED;
			if (o.state != want)
				fail_msg("hang=%d outage=%lld: state %d, want %d", hang, (long long)outage,
					 o.state, want);
			for (int i = 0; i < 6; i++)
				assert_true(o.dispatches[i] <= 1);
		}
}

/* A stall shows as deadlines extended by the gap, and nothing else. */
static void test_stall_extends(void **state)
{
	(void)state;
	struct world w;
	struct plan p = { 0 };
	build(&w, 4, 2, 0);
	fill_states(&w, "DDPP", 0);
	w.d.current_batch = 1;
	w.d.batch_started_ms = 10000;
	w.d.last_step_ms = 11000;
	one_step(&w, 11000 + OPTS.stall_ms + 1, &p);
	assert_int_equal(count(&p, PLAN_EXTEND_DEADLINES), 1);
	assert_int_equal(find(&p, PLAN_EXTEND_DEADLINES)->value, OPTS.stall_ms + 1);
	assert_int_equal(count(&p, PLAN_FAIL_TARGET) + count(&p, PLAN_DISPATCH), 0);
	one_step(&w, 11000 + OPTS.stall_ms, &p);
	assert_int_equal(count(&p, PLAN_EXTEND_DEADLINES), 0);
	plan_free(&p);
}

/* Canaries: bake, promote, manual promotion, a degrading canary, a canary
 * with no healthy target. */
static void test_canary(void **state)
{
	(void)state;
	struct plan p = { 0 };
	for (int manual = 0; manual <= 1; manual++) {
		struct world w;
		struct script s = { .delay = 200 };
		struct outcome o;
		build(&w, 6, 5, 1);
		w.d.canary = 1;
		w.d.bake_ms = 3000;
		w.d.manual_promotion = manual;
		simulate(&w, &s, &o);
		assert_int_equal(o.state, manual ? PLAN_D_PAUSED : PLAN_D_SUCCEEDED);
		if (manual) {
			/* A resume promotes: batch_done_ms -1 and RUNNING again. */
			assert_int_equal(w.d.batch_done_ms, -1);
			w.d.state = PLAN_D_RUNNING;
			simulate(&w, &s, &o);
			assert_int_equal(o.state, PLAN_D_SUCCEEDED);
		}
	}
	/* The canary degrades while baking: it fails and the deployment rolls back. */
	struct world w;
	build(&w, 6, 5, 1);
	w.d.canary = 1;
	w.d.bake_ms = 3000;
	fill_states(&w, "SPPPPP", 0);
	w.d.current_batch = 1;
	w.d.batch_started_ms = 2000;
	w.d.batch_done_ms = 2500;
	w.d.last_step_ms = 2900;
	w.t[0].updated_ms = 2400;
	w.t[0].hb_fresh = 1;
	w.t[0].rt_present = 1;
	snprintf(w.t[0].rt_digest, sizeof w.t[0].rt_digest, "%s", w.d.digest);
	w.t[0].rt_running = 1;
	w.t[0].rt_healthy = 0;
	snprintf(w.t[0].rt_detail, sizeof w.t[0].rt_detail, "HTTP 500");
	one_step(&w, 3000, &p);
	assert_int_equal(count(&p, PLAN_FAIL_TARGET), 1);
	assert_non_null(strstr(find(&p, PLAN_FAIL_TARGET)->detail, "HTTP 500"));
	plan_apply(&w.d, &p, 3000, 0);
	one_step(&w, 3100, &p);
	assert_int_equal(count(&p, PLAN_START_ROLLBACK), 1);
	/* No heartbeat yet after the switch: no promotion, however long. */
	build(&w, 6, 5, 1);
	w.d.canary = 1;
	w.d.bake_ms = 1000;
	fill_states(&w, "SPPPPP", 0);
	w.d.current_batch = 1;
	w.d.batch_done_ms = 2500;
	w.d.last_step_ms = 99000;
	one_step(&w, 99100, &p);
	assert_int_equal(count(&p, PLAN_START_BATCH), 0);
	assert_int_equal(count(&p, PLAN_WAIT), 1);
	/* Every canary target failed within the tolerance: never promoted. */
	build(&w, 6, 5, 1);
	w.d.canary = 1;
	w.d.max_failed = 1;
	fill_states(&w, "FPPPPP", 0);
	w.d.current_batch = 1;
	w.d.last_step_ms = 2900;
	one_step(&w, 3000, &p);
	assert_int_equal(count(&p, PLAN_START_BATCH), 0);
	assert_int_equal(count(&p, PLAN_START_ROLLBACK), 1);
	plan_free(&p);
}

/* Secrets: a target gets a grant first, then its task; an expired grant
 * (a rollback long after the deployment started) is renewed, not reused. */
static void test_grants(void **state)
{
	(void)state;
	struct world w;
	struct plan p = { 0 };
	build(&w, 2, 2, 0);
	w.d.has_secrets = 1;
	w.d.current_batch = 1;
	w.d.batch_started_ms = 2000;
	w.d.last_step_ms = 2000;
	one_step(&w, 2100, &p);
	assert_int_equal(count(&p, PLAN_GRANT), 2);
	assert_int_equal(count(&p, PLAN_DISPATCH), 0);
	plan_apply(&w.d, &p, 2100, 3600000);
	one_step(&w, 2200, &p);
	assert_int_equal(count(&p, PLAN_DISPATCH), 2);
	/* Rollback two hours later: the grants expired. */
	fill_states(&w, "FS", 0);
	w.t[0].touched = w.t[1].touched = 1;
	int64_t later = 2200 + 2 * 3600000;
	w.d.last_step_ms = later - 100;
	w.d.batch_started_ms = later - 1000;
	one_step(&w, later, &p);
	assert_int_equal(count(&p, PLAN_START_ROLLBACK), 1);
	plan_apply(&w.d, &p, later, 3600000);
	/* plan_apply renewed nothing yet: the rollback's dispatch asks again. */
	for (int i = 0; i < 2; i++)
		w.t[i].grant_expires_ms = 2100 + 3600000;
	one_step(&w, later + 100, &p);
	assert_int_equal(count(&p, PLAN_GRANT), 2);
	assert_int_equal(count(&p, PLAN_DISPATCH), 0);
	plan_free(&p);
}

/* Rollback: every touched target dispatched at once, untouched skipped;
 * a target failing its rollback ends it FAILED ("rollback incomplete"). */
static void test_rollback(void **state)
{
	(void)state;
	struct world w;
	struct plan p = { 0 };
	build(&w, 6, 2, 0);
	fill_states(&w, "SSFDPP", 0);
	w.d.current_batch = 2;
	w.d.batch_started_ms = 2000;
	w.d.last_step_ms = 2000;
	one_step(&w, 2100, &p);
	assert_int_equal(count(&p, PLAN_START_ROLLBACK), 1);
	plan_apply(&w.d, &p, 2100, 0);
	assert_int_equal(w.d.state, PLAN_D_ROLLING_BACK);
	assert_string_equal(w.d.rb_digest, "sha256:good");
	one_step(&w, 2200, &p);
	assert_int_equal(count(&p, PLAN_DISPATCH), 4);
	assert_int_equal(w.t[4].state, PLAN_T_SKIPPED);
	plan_apply(&w.d, &p, 2200, 0);
	w.t[0].state = w.t[1].state = w.t[2].state = PLAN_T_ROLLED_BACK;
	w.t[3].state = PLAN_T_FAILED;
	one_step(&w, 2300, &p);
	assert_non_null(find(&p, PLAN_FINISH));
	assert_int_equal(find(&p, PLAN_FINISH)->state, PLAN_D_FAILED);
	assert_int_equal(find(&p, PLAN_FINISH)->record, PLAN_RECORD_ROLLBACK);
	/* A rollback request that fails does not roll back itself. */
	build(&w, 2, 2, 0);
	w.d.is_rollback = 1;
	fill_states(&w, "FS", 0);
	w.d.current_batch = 1;
	w.d.last_step_ms = 2000;
	one_step(&w, 2100, &p);
	assert_int_equal(count(&p, PLAN_START_ROLLBACK), 0);
	assert_int_equal(find(&p, PLAN_FINISH)->state, PLAN_D_FAILED);
	/* Paused or finished deployments plan nothing. */
	static const int idle[] = { PLAN_D_PAUSED, PLAN_D_SUCCEEDED, PLAN_D_QUEUED, PLAN_D_CANCELLED };
	for (size_t i = 0; i < sizeof idle / sizeof idle[0]; i++) {
		w.d.state = idle[i];
		one_step(&w, 2100, &p);
		assert_int_equal((int)p.n, 0);
	}
	plan_free(&p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_step_table),
		cmocka_unit_test(test_rolling_grid),
		cmocka_unit_test(test_failure_grid),
		cmocka_unit_test(test_retry_at),
		cmocka_unit_test(test_deadlines_and_outages),
		cmocka_unit_test(test_stall_extends),
		cmocka_unit_test(test_canary),
		cmocka_unit_test(test_grants),
		cmocka_unit_test(test_rollback),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
