/*
 * approval.c - deployment approvals (see approval.h and README.md).
 *
 * An approval request is one row per deployment, created by the first
 * EvaluateDeployment and kept current by later ones (a new digest restarts
 * the wait timer and leaves earlier approvals behind). Approvals are rows
 * bound to (deployment, digest, revision, approval-policy hash); they are
 * counted at evaluation time against the policy then in force, so that a
 * changed digest, a changed approval policy, an expired approval or an
 * approver who lost the right no longer counts. Every evaluation, approval
 * and rejection is recorded and audited in the transaction that makes it.
 */
#include "approval.h"
#include "rpc.h" /* rpc_new_request_id */
#include "db.h"
#include "digest.h"
#include "err.h"
#include "log.h"
#include "outbox.h"
#include "spiffe.h"
#include "clock.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_ROWS 1000      /* approvals read per deployment */
#define MAX_APPROVERS 256  /* distinct approvers counted */
#define MAX_REASONS 16
#define MAX_COMMENT 2048
#define MAX_ID 128

static void fmt_time(int64_t ms, char *out, size_t len)
{
	time_t t = (time_t)(ms / 1000);
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, len, "%Y-%m-%dT%H:%M:%SZ", &tm);
}

static int printable(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n > max)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return 0;
	return 1;
}

static int id_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > MAX_ID)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '_' || s[i] == '.' ||
		      s[i] == ':'))
			return 0;
	return 1;
}

static int name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 63)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!(isalnum((unsigned char)s[i]) || s[i] == '-' || s[i] == '_' || s[i] == '.'))
			return 0;
	return 1;
}

static const struct pol_approval *match_policy(const struct pol_policy *p, const char *app,
					       const char *env)
{
	for (size_t i = 0; i < p->napprovals; i++)
		if (pol_list_glob(&p->approvals[i].envs, env) &&
		    pol_list_glob(&p->approvals[i].apps, app))
			return &p->approvals[i];
	return NULL;
}

/*
 * The builders of a release: the identities that may not approve its
 * deployment, as a '\n'-separated list (what approval_requests.builder
 * holds). Only authenticated facts go in: the pusher (the artifact
 * service's mTLS peer), and, when the provenance statement verified with
 * a trusted key, the identity that key is bound to and the builder the
 * statement names. The builder text of an unsigned release is the
 * pusher's claim and is left out: it could name someone else to keep
 * them from approving, or hide who built it.
 */
#define BUILDERS_MAX (3 * 260)

static void builders_of(const Slipway__V1__Provenance *pv, char *out, size_t len)
{
	size_t o = 0;
	out[0] = '\0';
	if (pv == NULL)
		return;
	const char *v[3] = { pv->pusher, pv->verified ? pv->signer : "",
			     pv->verified ? pv->builder : "" };
	for (size_t i = 0; i < 3 && o < len; i++)
		if (v[i][0] != '\0')
			o += (size_t)snprintf(out + o, len - o, "%s%s", o ? "\n" : "", v[i]);
}

/* One builder names the approver when it equals the SPIFFE ID, or the
 * user name of a .../user/<name> ID. */
static int names_approver(const char *b, size_t n, const char *approver, const char *td)
{
	if (n == 0)
		return 0;
	if (strlen(approver) == n && memcmp(b, approver, n) == 0)
		return 1;
	struct spiffe_id id;
	return spiffe_parse(approver, td, &id, NULL, 0) == 0 && id.kind == SPIFFE_USER &&
	       strlen(id.name) == n && memcmp(id.name, b, n) == 0;
}

/* 1 when one of the builders (a '\n'-separated list) is the approver. */
static int is_builder(const char *builders, const char *approver, const char *td)
{
	if (builders == NULL)
		return 0;
	for (const char *p = builders; *p != '\0';) {
		const char *e = strchr(p, '\n');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (names_approver(p, n, approver, td))
			return 1;
		p += n;
		if (*p == '\n')
			p++;
	}
	return 0;
}

/* ---- freeze windows ---- */

static const char *const wdays[] = { "mon", "tue", "wed", "thu", "fri", "sat", "sun" };

static void local_text(int64_t local_s, char *out, size_t len)
{
	time_t t = (time_t)local_s;
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, len, "%Y-%m-%dT%H:%M", &tm);
}

/* Returns 1 when now falls in a freeze window of a (description in why). */
static int frozen(const struct pol_approval *a, int64_t now, char *why, size_t len)
{
	int64_t t = now / 1000;
	int64_t local = t + pol_tz_offset(a->tz, t);
	int64_t days = local >= 0 ? local / 86400 : -((-local + 86399) / 86400);
	int wd = (int)(((days + 3) % 7 + 7) % 7); /* 1970-01-01 was a Thursday; Monday = 0 */
	int mow = wd * 1440 + (int)((local - days * 86400) / 60);
	for (size_t i = 0; i < a->nweekly; i++) {
		const struct pol_weekly *w = &a->weekly[i];
		int in = w->start < w->end ? (mow >= w->start && mow < w->end)
					   : (mow >= w->start || mow < w->end);
		if (in) {
			snprintf(why, len, "weekly freeze %s %02d:%02d - %s %02d:%02d (%s)",
				 wdays[w->start / 1440], w->start % 1440 / 60, w->start % 60,
				 wdays[(w->end / 1440) % 7], w->end % 1440 / 60, w->end % 60,
				 a->tz_name);
			return 1;
		}
	}
	for (size_t i = 0; i < a->ndates; i++) {
		const struct pol_dates *d = &a->dates[i];
		if (local >= d->start && local < d->end) {
			char s[32], e[32];
			local_text(d->start, s, sizeof s);
			local_text(d->end, e, sizeof e);
			snprintf(why, len, "freeze %s - %s (%s)", s, e, a->tz_name);
			return 1;
		}
	}
	return 0;
}

/* ---- counting ---- */

struct row {
	char approver[SPIFFE_ID_MAX + 1];
	char digest[80];
	char hash[65];
	int approve, bg;
	int64_t created, expires;
	uint64_t revision;
};

struct quorum_out {
	int met;
	size_t have_total;
	uint32_t have[32];
};

struct matcher {
	const struct pol_policy *p;
	const struct pol_quorum *q;
	const char *const *who;
	size_t n;
	int assign[MAX_APPROVERS];
	uint32_t filled[32];
	int visited[32];
	int gidx[32];
};

static int adj(struct matcher *m, size_t a, size_t g)
{
	return m->gidx[g] >= 0 && pol_in_group(m->p, m->gidx[g], m->who[a]);
}

/* Kuhn's augmenting path with group capacities: places approver a. */
static int augment(struct matcher *m, size_t a)
{
	for (size_t g = 0; g < m->q->ngroups; g++) {
		if (m->visited[g] || !adj(m, a, g))
			continue;
		m->visited[g] = 1;
		int room = m->filled[g] < m->q->counts[g];
		for (size_t b = 0; !room && b < m->n; b++)
			if (b != a && m->assign[b] == (int)g && augment(m, b))
				room = 1;
		if (room) {
			if (m->assign[a] >= 0)
				m->filled[m->assign[a]]--;
			m->assign[a] = (int)g;
			m->filled[g]++;
			return 1;
		}
	}
	return 0;
}

/* Group quotas need distinct people: one approver fills one slot at most. */
static void count_quorum(const struct pol_policy *p, const struct pol_quorum *q,
			 const char *const *who, size_t n, struct quorum_out *out)
{
	struct matcher m = { .p = p, .q = q, .who = who, .n = n };
	for (size_t i = 0; i < n; i++)
		m.assign[i] = -1;
	for (size_t g = 0; g < q->ngroups; g++)
		m.gidx[g] = pol_group_find(p, q->groups[g]);
	for (size_t a = 0; a < n; a++) {
		memset(m.visited, 0, sizeof m.visited);
		augment(&m, a);
	}
	out->have_total = n;
	out->met = n >= q->required;
	for (size_t g = 0; g < q->ngroups; g++) {
		out->have[g] = m.filled[g];
		if (m.filled[g] < q->counts[g])
			out->met = 0;
	}
}

/* ---- EvaluateDeployment ---- */

struct eval_args {
	struct pol_service *s;
	struct pol_policy *p;
	const Slipway__V1__DeploymentFacts *f;
	const char *caller;
	const char *builder, *ref;    /* authenticated: see builders_of; ref "" unless signed */
	const char *claimed_ref;      /* what an unsigned release claims (reasons only) */
	int verified;                 /* the provenance statement verified at push */
	int64_t now;
	/* out */
	int verdict;
	char reasons[MAX_REASONS][POL_REASON_LEN];
	size_t nreasons;
	size_t nmissing;
	char mgroup[33][64];
	uint32_t mreq[33], mhave[33];
	int64_t not_before;
	char decision_id[33];
	const struct pol_approval *a;
	int post_review;
};

_Static_assert(sizeof((struct eval_args *)0)->reasons ==
		       sizeof((struct pol_eval_out *)0)->reasons,
	       "reasons are copied whole into the result");

static void reason(struct eval_args *e, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void reason(struct eval_args *e, const char *fmt, ...)
{
	if (e->nreasons >= MAX_REASONS)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->reasons[e->nreasons++], POL_REASON_LEN, fmt, ap);
	va_end(ap);
}

static int load_rows(struct db_conn *c, const char *dep, struct row **rows, size_t *n, char *err,
		     size_t errlen)
{
	PGresult *r = NULL;
	char lim[24];
	int rc = db_q(c,
		      "SELECT approver, digest, policy_hash, approve, break_glass, created_ms,"
		      " expires_ms, revision FROM approvals WHERE deployment_id = $1"
		      " ORDER BY id LIMIT $2::int",
		      2, (const char *[]){ dep, db_i64(lim, MAX_ROWS) }, &r, err, errlen);
	*rows = NULL;
	*n = 0;
	if (rc != 0)
		return rc;
	int nr = PQntuples(r);
	*rows = calloc((size_t)nr + 1, sizeof **rows);
	if (*rows == NULL) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	for (int i = 0; i < nr; i++) {
		struct row *w = &(*rows)[i];
		snprintf(w->approver, sizeof w->approver, "%s", db_text(r, i, 0));
		snprintf(w->digest, sizeof w->digest, "%s", db_text(r, i, 1));
		snprintf(w->hash, sizeof w->hash, "%s", db_text(r, i, 2));
		w->approve = db_bool(r, i, 3);
		w->bg = db_bool(r, i, 4);
		w->created = db_int64(r, i, 5);
		w->expires = db_int64(r, i, 6);
		w->revision = (uint64_t)db_int64(r, i, 7);
	}
	*n = (size_t)nr;
	PQclear(r);
	return 0;
}

/* Holds approve on the deployment's app/environment under p. */
static int may_approve(const struct pol_policy *p, const char *who, const char *app,
		       const char *env, int64_t now)
{
	struct pol_query q = { who, "approve", "deployment", app, env, "", now };
	struct pol_result r;
	pol_eval(p, &q, 0, &r);
	return r.allowed;
}

static int in_any_group(const struct pol_policy *p, const struct pol_list *groups, const char *who)
{
	for (size_t i = 0; i < groups->n; i++) {
		int g = pol_group_find(p, groups->v[i]);
		if (g >= 0 && pol_in_group(p, g, who))
			return 1;
	}
	return 0;
}

/* Decides the verdict from the request row's state and the approvals. */
static void decide(struct eval_args *e, const char *digest, const char *requester,
		   int64_t digest_since, int rejected, const char *rejected_by,
		   const struct row *rows, size_t nrows)
{
	const Slipway__V1__DeploymentFacts *f = e->f;
	const struct pol_policy *p = e->p;
	char res[300];
	pol_resource_text("deployment", f->app, f->environment, "", res, sizeof res);

	/* 1. RBAC: the requester must be allowed to deploy here. */
	struct pol_query q = { requester, "deploy", "deployment", f->app, f->environment, "",
			       e->now };
	struct pol_result r;
	pol_eval(p, &q, 0, &r);
	if (!r.allowed) {
		char rs[4][POL_REASON_LEN];
		size_t n = pol_reasons(p, &q, &r, rs, 4);
		e->verdict = SLIPWAY__V1__VERDICT__VERDICT_DENIED;
		reason(e, "requester %s may not deploy %s: %s", requester, res,
		       n ? rs[0] : "no rule allows it");
		return;
	}
	if (rejected) {
		e->verdict = SLIPWAY__V1__VERDICT__VERDICT_DENIED;
		reason(e, "rejected by %s", rejected_by);
		for (size_t i = 0; i < nrows; i++)
			if (!rows[i].approve)
				reason(e, "rejection by %s at revision %llu", rows[i].approver,
				       (unsigned long long)rows[i].revision);
		return;
	}
	const struct pol_approval *a = match_policy(p, f->app, f->environment);
	e->a = a;
	if (a == NULL) {
		e->verdict = SLIPWAY__V1__VERDICT__VERDICT_ALLOWED;
		reason(e, "no approval policy applies to %s", res);
		return;
	}
	/* 2. Where the release came from: only a signed ref counts, so an
	 * unsigned release fails allowed_refs whatever the patterns. */
	if (a->refs.n > 0 && (!e->verified || !pol_list_glob(&a->refs, e->ref))) {
		e->verdict = SLIPWAY__V1__VERDICT__VERDICT_DENIED;
		char allowed[300] = "";
		for (size_t i = 0, o = 0; i < a->refs.n && o < sizeof allowed; i++)
			o += (size_t)snprintf(allowed + o, sizeof allowed - o, "%s%s", i ? ", " : "",
					      a->refs.v[i]);
		if (!e->verified)
			reason(e, "approval policy %s allows releases built from %s only; this "
				  "release is unsigned: its ref '%s' is only claimed by the pusher "
				  "(no signed provenance statement)",
			       a->name, allowed, e->claimed_ref[0] ? e->claimed_ref : "-");
		else
			reason(e, "approval policy %s allows releases built from %s only; this one "
				  "is from '%s'",
			       a->name, allowed,
			       e->ref[0] ? e->ref : "(no ref in its signed provenance)");
		return;
	}
	/* 3. Freeze windows. */
	char fz[200];
	int bg = 0;
	if (frozen(a, e->now, fz, sizeof fz)) {
		if (!f->break_glass) {
			e->verdict = SLIPWAY__V1__VERDICT__VERDICT_DENIED;
			reason(e, "deployments to %s are frozen: %s; only break-glass may deploy", res,
			       fz);
			return;
		}
		if (!a->break_glass) {
			e->verdict = SLIPWAY__V1__VERDICT__VERDICT_DENIED;
			reason(e, "deployments to %s are frozen: %s; approval policy %s does not allow "
				  "break-glass",
			       res, fz, a->name);
			return;
		}
		bg = 1;
		reason(e, "break-glass during %s: reason '%s'", fz, f->break_glass_reason);
	}
	/* 4. Who approved this digest, under this approval policy, and counts. */
	const char *who[MAX_APPROVERS];
	size_t nwho = 0, old_digest = 0, expired = 0, other_policy = 0, not_bg = 0;
	for (size_t i = 0; i < nrows; i++) {
		const struct row *w = &rows[i];
		if (!w->approve)
			continue;
		if (strcmp(w->digest, digest) != 0) {
			old_digest++;
			continue;
		}
		if (strcmp(w->hash, a->hash) != 0) {
			other_policy++;
			continue;
		}
		if (w->expires != 0 && e->now >= w->expires) {
			expired++;
			continue;
		}
		if (bg && !w->bg) {
			not_bg++;
			continue;
		}
		if (strcmp(w->approver, requester) == 0 ||
		    is_builder(e->builder, w->approver, p->trust_domain)) {
			reason(e, "approval by %s does not count: self-approval", w->approver);
			continue;
		}
		if (!may_approve(p, w->approver, f->app, f->environment, e->now)) {
			reason(e, "approval by %s does not count: no longer allowed to approve %s",
			       w->approver, res);
			continue;
		}
		if (a->approver_groups.n > 0 && !in_any_group(p, &a->approver_groups, w->approver)) {
			reason(e, "approval by %s does not count: not in the approver groups",
			       w->approver);
			continue;
		}
		int dup = 0;
		for (size_t k = 0; k < nwho && !dup; k++)
			dup = strcmp(who[k], w->approver) == 0;
		if (!dup && nwho < MAX_APPROVERS)
			who[nwho++] = w->approver;
	}
	if (old_digest)
		reason(e, "%zu approval(s) for another digest do not count", old_digest);
	if (other_policy)
		reason(e, "%zu approval(s) given under a different approval policy do not count",
		       other_policy);
	if (expired)
		reason(e, "%zu approval(s) expired", expired);
	if (not_bg)
		reason(e, "%zu approval(s) were not given for break-glass", not_bg);

	const struct pol_quorum *qu = bg ? &a->bg : &a->quorum;
	struct quorum_out qo;
	count_quorum(p, qu, who, nwho, &qo);
	if (!qo.met) {
		e->verdict = SLIPWAY__V1__VERDICT__VERDICT_NEEDS_APPROVAL;
		for (size_t g = 0; g < qu->ngroups && e->nmissing < 32; g++) {
			if (qo.have[g] >= qu->counts[g])
				continue;
			snprintf(e->mgroup[e->nmissing], 64, "%s", qu->groups[g]);
			e->mreq[e->nmissing] = qu->counts[g];
			e->mhave[e->nmissing++] = qo.have[g];
		}
		if (qo.have_total < qu->required) {
			e->mgroup[e->nmissing][0] = '\0';
			e->mreq[e->nmissing] = qu->required;
			e->mhave[e->nmissing++] = (uint32_t)qo.have_total;
		}
		reason(e, "approval policy %s%s needs %u distinct approval(s) for digest %.19s..., "
			  "has %zu",
		       a->name, bg ? " (break-glass quorum)" : "", qu->required, digest,
		       qo.have_total);
		return;
	}
	/* 5. The wait timer (break-glass skips it). */
	if (!bg && a->wait_ms > 0 && e->now < digest_since + a->wait_ms) {
		char t[32];
		e->verdict = SLIPWAY__V1__VERDICT__VERDICT_NEEDS_APPROVAL;
		e->not_before = digest_since + a->wait_ms;
		fmt_time(e->not_before, t, sizeof t);
		reason(e, "approval policy %s: wait timer runs until %s", a->name, t);
		return;
	}
	e->verdict = SLIPWAY__V1__VERDICT__VERDICT_ALLOWED;
	reason(e, "approval policy %s satisfied: %zu distinct approval(s) of %u required%s", a->name,
	       qo.have_total, qu->required, bg ? " (break-glass quorum)" : "");
	if (bg) {
		e->post_review = 1;
		reason(e, "break-glass deployment: flagged for post-review");
	}
}

static const char *verdict_name(int v)
{
	switch (v) {
	case SLIPWAY__V1__VERDICT__VERDICT_ALLOWED: return "ALLOWED";
	case SLIPWAY__V1__VERDICT__VERDICT_NEEDS_APPROVAL: return "NEEDS_APPROVAL";
	case SLIPWAY__V1__VERDICT__VERDICT_DENIED: return "DENIED";
	default: return "UNSPECIFIED";
	}
}

static int eval_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct eval_args *e = arg;
	const Slipway__V1__DeploymentFacts *f = e->f;
	PGresult *r = NULL;
	struct row *rows = NULL;
	size_t nrows = 0;
	char nb[24], rb[24], b3[24];
	int rc;

	/* A retried transaction starts over. */
	e->nreasons = e->nmissing = 0;
	e->not_before = 0;
	e->a = NULL;
	e->post_review = 0;

	if ((rc = db_q(c,
		       "SELECT app, environment, digest, requester, state, rejected_by,"
		       " digest_since_ms, post_review_digest"
		       " FROM approval_requests WHERE deployment_id = $1 FOR UPDATE",
		       1, (const char *[]){ f->deployment_id }, &r, err, errlen)) != 0)
		return rc;
	db_i64(nb, e->now);
	const char *bgv = f->break_glass ? "true" : "false";
	char digest_since_txt[24], requester[SPIFFE_ID_MAX + 1], rejected_by[SPIFFE_ID_MAX + 1] = "";
	char post_review_digest[80] = "";
	int rejected = 0;
	int64_t digest_since = e->now;
	snprintf(requester, sizeof requester, "%s", f->requester);
	if (PQntuples(r) == 0) {
		const char *v[12] = { f->deployment_id, f->app, f->environment, f->version, f->digest,
				      f->requester, e->builder, e->ref, bgv, f->break_glass_reason,
				      nb, nb };
		PQclear(r);
		r = NULL;
		rc = db_q(c,
			  "INSERT INTO approval_requests (deployment_id, app, environment, version,"
			  " digest, requester, builder, ref, break_glass, break_glass_reason,"
			  " requested_ms, digest_since_ms, updated_ms)"
			  " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::boolean, $10, $11::bigint,"
			  " $12::bigint, $11::bigint)",
			  12, v, NULL, err, errlen);
		if (rc != 0)
			return rc;
	} else {
		if (strcmp(db_text(r, 0, 0), f->app) != 0 ||
		    strcmp(db_text(r, 0, 1), f->environment) != 0 ||
		    strcmp(db_text(r, 0, 3), f->requester) != 0) {
			rc = sw_errf(err, errlen, SW_EINVAL,
				     "deployment %s was requested by %s for %s/%s; its app, "
				     "environment and requester cannot change",
				     f->deployment_id, db_text(r, 0, 3), db_text(r, 0, 0),
				     db_text(r, 0, 1));
			PQclear(r);
			return rc;
		}
		rejected = strcmp(db_text(r, 0, 4), "rejected") == 0;
		snprintf(rejected_by, sizeof rejected_by, "%s", db_text(r, 0, 5));
		snprintf(post_review_digest, sizeof post_review_digest, "%s", db_text(r, 0, 7));
		int new_digest = strcmp(db_text(r, 0, 2), f->digest) != 0;
		digest_since = new_digest ? e->now : db_int64(r, 0, 6);
		PQclear(r);
		r = NULL;
		db_i64(digest_since_txt, digest_since);
		const char *v[9] = { f->deployment_id, f->version, f->digest, e->builder, e->ref,
				     bgv, f->break_glass_reason, digest_since_txt, nb };
		rc = db_q(c,
			  "UPDATE approval_requests SET version = $2, digest = $3, builder = $4,"
			  " ref = $5, break_glass = $6::boolean, break_glass_reason = $7,"
			  " digest_since_ms = $8::bigint, updated_ms = $9::bigint"
			  " WHERE deployment_id = $1",
			  9, v, NULL, err, errlen);
		if (rc != 0)
			return rc;
	}
	if ((rc = load_rows(c, f->deployment_id, &rows, &nrows, err, errlen)) != 0)
		return rc;
	decide(e, f->digest, requester, digest_since, rejected, rejected_by, rows, nrows);
	free(rows);

	/* The decision, recorded and audited when it says something new: the
	 * orchestrator asks again every second while a deployment waits, and an
	 * unchanged answer (same verdict, digest, revision, missing approvals,
	 * wait) is not a new decision. */
	const char *rv[MAX_REASONS];
	for (size_t i = 0; i < e->nreasons; i++)
		rv[i] = e->reasons[i];
	char missing[512] = "";
	for (size_t i = 0, o = 0; i < e->nmissing && o < sizeof missing; i++)
		o += (size_t)snprintf(missing + o, sizeof missing - o, "%s%s %u/%u", i ? ", " : "",
				      e->mgroup[i][0] ? e->mgroup[i] : "total", e->mhave[i],
				      e->mreq[i]);
	char outcome[1024];
	snprintf(outcome, sizeof outcome, "%s|%s|%llu|%s|%lld|%d|%d", verdict_name(e->verdict),
		 f->digest, (unsigned long long)e->p->revision, missing, (long long)e->not_before,
		 e->post_review, f->break_glass);
	PGresult *lr = NULL;
	if ((rc = db_q(c,
		       "UPDATE approval_requests SET verdict = $2 WHERE deployment_id = $1"
		       " RETURNING last_outcome, last_decision_id",
		       2, (const char *[]){ f->deployment_id, verdict_name(e->verdict) }, &lr, err,
		       errlen)) != 0)
		return rc;
	int unchanged = PQntuples(lr) == 1 && strcmp(db_text(lr, 0, 0), outcome) == 0 &&
			strlen(db_text(lr, 0, 1)) < sizeof e->decision_id;
	if (unchanged)
		snprintf(e->decision_id, sizeof e->decision_id, "%s", db_text(lr, 0, 1));
	PQclear(lr);
	if (unchanged)
		return 0;
	struct pol_decision d = { .principal = requester, .action = "deploy", .kind = "deployment",
				  .app = f->app, .env = f->environment, .name = f->deployment_id,
				  .allowed = e->verdict == SLIPWAY__V1__VERDICT__VERDICT_ALLOWED,
				  .nreasons = e->nreasons, .reasons = rv, .revision = e->p->revision,
				  .caller = e->caller, .event_action = "deployment.evaluate" };
	rpc_new_request_id(d.id);
	memcpy(e->decision_id, d.id, sizeof d.id);
	d.ekeys[d.nextra] = "deployment_id", d.evals[d.nextra++] = f->deployment_id;
	d.ekeys[d.nextra] = "verdict", d.evals[d.nextra++] = verdict_name(e->verdict);
	d.ekeys[d.nextra] = "digest", d.evals[d.nextra++] = f->digest;
	d.ekeys[d.nextra] = "version", d.evals[d.nextra++] = f->version;
	d.ekeys[d.nextra] = "approval_policy", d.evals[d.nextra++] = e->a ? e->a->name : "";
	d.ekeys[d.nextra] = "missing", d.evals[d.nextra++] = missing;
	d.ekeys[d.nextra] = "not_before_unix_ms", d.evals[d.nextra++] = db_i64(b3, e->not_before);
	d.ekeys[d.nextra] = "break_glass", d.evals[d.nextra++] = bgv;
	d.ekeys[d.nextra] = "post_review", d.evals[d.nextra++] = e->post_review ? "required" : "";
	if ((rc = pol_record(c, &d, err, errlen)) != 0)
		return rc;
	if ((rc = db_q(c,
		       "UPDATE approval_requests SET last_outcome = $2, last_decision_id = $3"
		       " WHERE deployment_id = $1",
		       3, (const char *[]){ f->deployment_id, outcome, d.id }, NULL, err, errlen)) != 0)
		return rc;

	/* A break-glass deployment is flagged once per digest for post-review. */
	if (e->post_review && strcmp(post_review_digest, f->digest) != 0) {
		char res[400];
		pol_resource_text("deployment", f->app, f->environment, f->deployment_id, res,
				  sizeof res);
		struct outbox_event ev = { .actor = requester,
					   .action = "deployment.break_glass",
					   .resource = res,
					   .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
		outbox_detail(&ev, "post_review", "required");
		outbox_detail(&ev, "deployment_id", f->deployment_id);
		outbox_detail(&ev, "digest", f->digest);
		outbox_detail(&ev, "reason", f->break_glass_reason);
		outbox_detail(&ev, "approval_policy", e->a->name);
		outbox_detail(&ev, "decision_id", d.id);
		outbox_detail(&ev, "revision", db_i64(rb, (int64_t)e->p->revision));
		outbox_detail(&ev, "app", f->app);
		outbox_detail(&ev, "environment", f->environment);
		if ((rc = outbox_add(c, "policy", &ev, err, errlen)) != 0)
			return rc;
		rc = db_q(c,
			  "UPDATE approval_requests SET post_review_digest = $2 WHERE deployment_id = $1",
			  2, (const char *[]){ f->deployment_id, f->digest }, NULL, err, errlen);
	}
	return rc;
}

int pol_evaluate_deployment(struct pol_service *s, const char *caller,
			    const Slipway__V1__DeploymentFacts *f, struct pol_eval_out *out,
			    char *err, size_t errlen)
{
	char why[200];
	if (!id_ok(f->deployment_id))
		return sw_errf(err, errlen, SW_EINVAL,
			       "deployment_id: 1-%d of [A-Za-z0-9._:-] required", MAX_ID);
	if (!name_ok(f->app) || !name_ok(f->environment))
		return sw_errf(err, errlen, SW_EINVAL,
			       "app and environment: [A-Za-z0-9._-]{1,63} required");
	if (digest_parse(f->digest, NULL) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "digest: sha256:<64 lower-case hex> required");
	if (spiffe_parse(f->requester, s->bopts.trust_domain, NULL, why, sizeof why) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "requester: %s", why);
	if (!printable(f->version, 128))
		return sw_errf(err, errlen, SW_EINVAL, "version: at most 128 printable bytes");
	/* Only what the artifact service authenticated decides (see
	 * builders_of): the ref of a release whose statement did not verify is
	 * a claim, and counts as no ref. */
	const Slipway__V1__Provenance *pv = f->provenance;
	const char *claimed_ref = pv ? pv->ref : "";
	const char *ref = pv && pv->verified ? pv->ref : "";
	if (pv != NULL && (!printable(pv->builder, 256) || !printable(pv->ref, 256) ||
			   !printable(pv->signer, 256) || !printable(pv->pusher, 256)))
		return sw_errf(err, errlen, SW_EINVAL,
			       "provenance builder, ref, signer and pusher: at most 256 printable "
			       "bytes");
	char builder[BUILDERS_MAX];
	builders_of(pv, builder, sizeof builder);
	if (!printable(f->break_glass_reason, 1024))
		return sw_errf(err, errlen, SW_EINVAL,
			       "break_glass_reason: at most 1024 printable bytes");
	if (f->break_glass && f->break_glass_reason[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL,
			       "break-glass needs a reason (break_glass_reason)");

	struct eval_args *e = calloc(1, sizeof *e);
	if (e == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	e->s = s;
	e->p = pol_current(s);
	e->f = f;
	e->caller = caller;
	e->builder = builder;
	e->ref = ref;
	e->claimed_ref = claimed_ref;
	e->verified = pv != NULL && pv->verified;
	e->now = clock_wall_ms();
	int rc = db_tx(s->db, NULL, eval_tx, e, err, errlen);
	if (rc != 0)
		goto out;
	pol_kick(s);
	memset(out, 0, sizeof *out);
	out->verdict = e->verdict;
	out->revision = e->p->revision;
	out->not_before_ms = e->not_before;
	memcpy(out->decision_id, e->decision_id, sizeof out->decision_id);
	out->nreasons = e->nreasons;
	memcpy(out->reasons, e->reasons, sizeof out->reasons);
	for (size_t i = 0; i < e->nmissing && i < POL_EVAL_MAX_MISSING; i++) {
		snprintf(out->missing[i].group, sizeof out->missing[i].group, "%s", e->mgroup[i]);
		out->missing[i].required = e->mreq[i];
		out->missing[i].have = e->mhave[i];
		out->nmissing++;
	}
	log_info("deployment evaluated", "deployment=%s verdict=%s revision=%llu",
		 f->deployment_id, verdict_name(e->verdict), (unsigned long long)e->p->revision);
out:
	pol_unref(e->p);
	free(e);
	return rc;
}

/* ---- Approve / Reject ---- */

static int query(struct pol_service *s, const char *sql, int n, const char *const *vals,
		 PGresult **r, char *err, size_t errlen);

struct approve_args {
	struct pol_policy *p;
	const char *dep, *digest, *comment, *approver;
	int approve;
	int64_t now;
	/* out */
	char used_digest[80];
	int64_t expires;
	int bg;
	size_t ngroups;
	const char *groups[POL_MAX_MATCH];
};

static int approve_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct approve_args *a = arg;
	PGresult *r = NULL;
	int rc;
	if ((rc = db_q(c,
		       "SELECT app, environment, digest, requester, builder, state, break_glass"
		       " FROM approval_requests WHERE deployment_id = $1 FOR UPDATE",
		       1, (const char *[]){ a->dep }, &r, err, errlen)) != 0)
		return rc;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOTFOUND, "no approval request for deployment %s",
			       a->dep);
	}
	char app[64], env[64], requester[SPIFFE_ID_MAX + 1], builder[BUILDERS_MAX];
	snprintf(app, sizeof app, "%s", db_text(r, 0, 0));
	snprintf(env, sizeof env, "%s", db_text(r, 0, 1));
	snprintf(a->used_digest, sizeof a->used_digest, "%s", db_text(r, 0, 2));
	snprintf(requester, sizeof requester, "%s", db_text(r, 0, 3));
	snprintf(builder, sizeof builder, "%s", db_text(r, 0, 4));
	int rejected = strcmp(db_text(r, 0, 5), "rejected") == 0;
	a->bg = db_bool(r, 0, 6);
	PQclear(r);
	if (rejected)
		return sw_errf(err, errlen, SW_EPRECOND, "deployment %s was rejected; it is over",
			       a->dep);
	if (a->digest[0] != '\0' && strcmp(a->digest, a->used_digest) != 0)
		return sw_errf(err, errlen, SW_EPRECOND,
			       "deployment %s is now for digest %s, not %s: look again",
			       a->dep, a->used_digest, a->digest);
	if (a->approve && (strcmp(a->approver, requester) == 0 ||
			   is_builder(builder, a->approver, a->p->trust_domain)))
		return sw_errf(err, errlen, SW_EPERM,
			       "%s may not approve deployment %s: self-approval (%s)", a->approver,
			       a->dep,
			       strcmp(a->approver, requester) == 0
				       ? "you requested it"
				       : "you built the release: you pushed it, or signed it, or "
					 "its signed statement names you");

	const struct pol_approval *ap = match_policy(a->p, app, env);
	a->expires = ap && ap->ttl_ms ? a->now + ap->ttl_ms : 0;
	a->ngroups = 0;
	for (size_t g = 0; g < a->p->ngroups && a->ngroups < POL_MAX_MATCH; g++)
		if (pol_in_group(a->p, (int)g, a->approver))
			a->groups[a->ngroups++] = a->p->groups[g].name;
	/* groups as a text[] literal (names are [A-Za-z0-9._-]). */
	char garr[POL_MAX_MATCH * 66 + 4];
	size_t o = 0;
	garr[o++] = '{';
	for (size_t i = 0; i < a->ngroups; i++)
		o += (size_t)snprintf(garr + o, sizeof garr - o, "%s\"%s\"", i ? "," : "",
				      a->groups[i]);
	snprintf(garr + o, sizeof garr - o, "}");
	char rev[24], cr[24], ex[24];
	const char *v[11] = { a->dep, a->approver, a->used_digest, db_i64(rev, (int64_t)a->p->revision),
			      ap ? ap->hash : "", a->approve ? "true" : "false", a->comment, garr,
			      a->bg ? "true" : "false", db_i64(cr, a->now), db_i64(ex, a->expires) };
	if ((rc = db_q(c,
		       "INSERT INTO approvals (deployment_id, approver, digest, revision, policy_hash,"
		       " approve, comment, groups, break_glass, created_ms, expires_ms)"
		       " VALUES ($1, $2, $3, $4::bigint, $5, $6::boolean, $7, $8::text[],"
		       " $9::boolean, $10::bigint, $11::bigint)",
		       11, v, NULL, err, errlen)) != 0)
		return rc;
	if (!a->approve &&
	    (rc = db_q(c,
		       "UPDATE approval_requests SET state = 'rejected', rejected_by = $2,"
		       " verdict = 'DENIED', updated_ms = $3::bigint WHERE deployment_id = $1",
		       3, (const char *[]){ a->dep, a->approver, cr }, NULL, err, errlen)) != 0)
		return rc;
	char res[400];
	pol_resource_text("deployment", app, env, a->dep, res, sizeof res);
	struct outbox_event e = { .actor = a->approver,
				  .action = a->approve ? "deployment.approve" : "deployment.reject",
				  .resource = res,
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "deployment_id", a->dep);
	outbox_detail(&e, "digest", a->used_digest);
	outbox_detail(&e, "revision", rev);
	outbox_detail(&e, "comment", a->comment);
	outbox_detail(&e, "approval_policy", ap ? ap->name : "");
	outbox_detail(&e, "expires_unix_ms", ex);
	outbox_detail(&e, "break_glass", a->bg ? "true" : "false");
	outbox_detail(&e, "app", app);
	outbox_detail(&e, "environment", env);
	return outbox_add(c, "policy", &e, err, errlen);
}

int pol_approve(struct pol_service *s, const char *approver, const char *request_id,
		const char *dep, const char *digest, const char *comment, int approve,
		struct pol_approve_out *out, char *err, size_t errlen)
{
	PGresult *r = NULL;
	int rc;

	if (!id_ok(dep))
		return sw_errf(err, errlen, SW_EINVAL,
			       "deployment_id: 1-%d of [A-Za-z0-9._:-] required", MAX_ID);
	if (digest[0] != '\0' && digest_parse(digest, NULL) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "digest: sha256:<64 lower-case hex> or empty");
	if (!printable(comment, MAX_COMMENT))
		return sw_errf(err, errlen, SW_EINVAL, "comment: at most %d printable bytes",
			       MAX_COMMENT);
	if (!approve && comment[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL, "a rejection needs a comment");

	/* Where the deployment goes decides who may approve it. */
	rc = query(s, "SELECT app, environment FROM approval_requests WHERE deployment_id = $1", 1,
		   (const char *[]){ dep }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOTFOUND, "no approval request for deployment %s",
			       dep);
	}
	char app[64], env[64];
	snprintf(app, sizeof app, "%s", db_text(r, 0, 0));
	snprintf(env, sizeof env, "%s", db_text(r, 0, 1));
	PQclear(r);
	if ((rc = pol_check_caller(s, approver, request_id, "approve", "deployment", app, env, NULL,
				   err, errlen)) != 0)
		return rc;

	struct approve_args *a = calloc(1, sizeof *a);
	if (a == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	a->p = pol_current(s);
	a->dep = dep;
	a->digest = digest;
	a->comment = comment;
	a->approver = approver;
	a->approve = approve;
	a->now = clock_wall_ms();
	rc = db_tx(s->db, NULL, approve_tx, a, err, errlen);
	if (rc == SW_EPERM) {
		/* A refused self-approval is a recorded denial. */
		char rerr[512];
		const char *rv[1] = { err };
		struct pol_decision d = { .principal = a->approver, .action = "approve",
					  .kind = "deployment", .app = app, .env = env, .name = dep,
					  .allowed = 0, .nreasons = 1, .reasons = rv,
					  .revision = a->p->revision, .caller = a->approver,
					  .request_id = request_id,
					  .note = "self-approval refused" };
		rpc_new_request_id(d.id);
		if (pol_record_now(s, &d, rerr, sizeof rerr) != 0)
			log_error("cannot record a decision", "error=%s", rerr);
	}
	if (rc != 0)
		goto out;
	pol_kick(s);
	memset(out, 0, sizeof *out);
	snprintf(out->digest, sizeof out->digest, "%s", a->used_digest);
	out->revision = a->p->revision;
	out->created_ms = a->now;
	out->expires_ms = a->expires;
	out->break_glass = a->bg;
	/* Group names point into a->p: copy them before releasing it. */
	for (size_t i = 0; i < a->ngroups && i < POL_MAX_MATCH; i++)
		snprintf(out->groups[out->ngroups++], sizeof out->groups[0], "%s", a->groups[i]);
	log_info(approve ? "deployment approved" : "deployment rejected",
		 "deployment=%s by=%s digest=%s", dep, a->approver, a->used_digest);
out:
	pol_unref(a->p);
	free(a);
	return rc;
}

/* ---- ListApprovals ---- */

/* Parses a text[] of simple names ({a,b} or {"a","b"}) into row->groups,
 * pointing into buf (cap bytes); names past POL_MAX_MATCH are dropped
 * (Approve never stores more). */
static void parse_groups(const char *arr, char *buf, size_t cap, struct pol_approval_row *row)
{
	size_t o = 0;
	const char *p = arr;
	row->ngroups = 0;
	if (*p == '{')
		p++;
	while (*p && *p != '}') {
		if (*p == ',' || *p == '"') {
			p++;
			continue;
		}
		const char *e = p;
		while (*e && *e != ',' && *e != '}' && *e != '"')
			e++;
		size_t n = (size_t)(e - p);
		if (row->ngroups < POL_MAX_MATCH && o + n + 1 <= cap) {
			memcpy(buf + o, p, n);
			buf[o + n] = '\0';
			row->groups[row->ngroups++] = buf + o;
			o += n + 1;
		}
		p = e;
	}
}

/* Runs one query on a pooled connection. */
static int query(struct pol_service *s, const char *sql, int n, const char *const *vals,
		 PGresult **r, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	int rc = db_acquire(s->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = db_q(c, sql, n, vals, r, err, errlen);
	db_release(s->db, c);
	return rc;
}

int pol_list_approvals(struct pol_service *s, const char *caller, const char *request_id,
		       const char *dep, pol_approval_fn fn, void *arg, char *err, size_t errlen)
{
	char lim[24], app[64], env[64];
	char gbuf[POL_MAX_MATCH * (POL_NAME_MAX + 1)];
	PGresult *r = NULL;
	int rc;
	if (!id_ok(dep))
		return sw_errf(err, errlen, SW_EINVAL,
			       "deployment_id: 1-%d of [A-Za-z0-9._:-] required", MAX_ID);
	rc = query(s, "SELECT app, environment FROM approval_requests WHERE deployment_id = $1", 1,
		   (const char *[]){ dep }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOTFOUND, "no approval request for deployment %s",
			       dep);
	}
	snprintf(app, sizeof app, "%s", db_text(r, 0, 0));
	snprintf(env, sizeof env, "%s", db_text(r, 0, 1));
	PQclear(r);
	r = NULL;
	if ((rc = pol_check_caller(s, caller, request_id, "read", "deployment", app, env, NULL, err,
				   errlen)) != 0)
		return rc;
	rc = query(s,
		   "SELECT approver, digest, revision, comment, approve, created_ms, expires_ms,"
		   " groups, break_glass FROM approvals WHERE deployment_id = $1 ORDER BY id"
		   " LIMIT $2::int",
		   2, (const char *[]){ dep, db_i64(lim, MAX_ROWS) }, &r, err, errlen);
	if (rc != 0)
		return rc;
	int n = PQntuples(r);
	for (int i = 0; i < n && rc == 0; i++) {
		struct pol_approval_row row = {
			.deployment_id = dep,
			.approver = db_text(r, i, 0),
			.digest = db_text(r, i, 1),
			.revision = (uint64_t)db_int64(r, i, 2),
			.comment = db_text(r, i, 3),
			.approve = db_bool(r, i, 4),
			.created_ms = db_int64(r, i, 5),
			.expires_ms = db_int64(r, i, 6),
			.break_glass = db_bool(r, i, 8),
		};
		parse_groups(db_text(r, i, 7), gbuf, sizeof gbuf, &row);
		rc = fn(&row, arg);
	}
	PQclear(r);
	return rc;
}
