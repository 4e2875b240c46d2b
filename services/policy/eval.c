/*
 * eval.c - decisions: principal x action x resource against a compiled
 * policy (deny by default; any matching guardrail wins over every grant),
 * the reasons that explain them, and the escalation guard of ApplyPolicy.
 *
 * The hot path does a handful of hash lookups (bindings of the principal,
 * of its groups) plus a scan of the prefix bindings and the guardrails; it
 * never allocates and never blocks.
 */
#include "policy.h"
#include "err.h"
#include "weaken.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BITS(n) (((n) + 63) / 64)

static int list_match_exact(const struct pol_list *l, const char *s)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i], "*") == 0 || strcmp(l->v[i], s) == 0)
			return 1;
	return 0;
}

static int list_has(const struct pol_list *l, const char *s)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i], s) == 0)
			return 1;
	return 0;
}

static int rule_match(const struct pol_rule *r, const struct pol_query *q)
{
	return list_match_exact(&r->actions, q->action) && !list_has(&r->except_actions, q->action) &&
	       list_match_exact(&r->kinds, q->kind) && pol_list_glob(&r->apps, q->app) &&
	       pol_list_glob(&r->envs, q->env) && pol_list_glob(&r->names, q->name);
}

static int scope_match(const char *app, const char *env, const struct pol_query *q)
{
	return (app == NULL || strcmp(app, q->app) == 0) && (env == NULL || strcmp(env, q->env) == 0);
}

static int prefix_of(const char *prefix, const char *s)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

struct walk {
	const struct pol_policy *p;
	const struct pol_query *q;
	struct pol_result *r;
	uint64_t roles[BITS(POL_MAX_ROLES + 16)];
	uint64_t groups[BITS(POL_MAX_GROUPS)];
};

static void consider(struct walk *w, int bi)
{
	const struct pol_binding *b = &w->p->bindings[bi];
	struct pol_result *r = w->r;
	int expired = b->expires_ms != 0 && w->q->now_ms >= b->expires_ms;
	if (!expired)
		w->roles[b->role_index / 64] |= 1ULL << (b->role_index % 64);
	if (!scope_match(b->app, b->env, w->q))
		return;
	for (size_t i = 0; i < b->role->nrules; i++) {
		if (!rule_match(&b->role->rules[i], w->q))
			continue;
		if (expired) {
			if (r->nexpired < sizeof r->expired / sizeof r->expired[0])
				r->expired[r->nexpired++] = b;
		} else if (r->ngrants < POL_MAX_MATCH) {
			r->grants[r->ngrants].b = b;
			r->grants[r->ngrants].rule = (int)i;
			r->ngrants++;
		}
		return;
	}
}

/* The guardrail names the walk's principal (directly, by group or role). */
static int guard_subject(const struct walk *w, const struct pol_guard *g)
{
	const struct pol_policy *p = w->p;
	const char *who = w->q->principal;
	int subject = g->principals.n == 0 && g->groups.n == 0 && g->roles.n == 0;
	for (size_t i = 0; i < g->principals.n && !subject; i++) {
		const char *s = g->principals.v[i];
		size_t n = strlen(s);
		subject = s[n - 1] == '*' ? strncmp(who, s, n - 1) == 0 : strcmp(who, s) == 0;
	}
	for (size_t i = 0; i < g->groups.n && !subject; i++) {
		int gi = pol_group_find(p, g->groups.v[i]);
		subject = gi >= 0 && (w->groups[gi / 64] >> (gi % 64) & 1);
	}
	for (size_t i = 0; i < g->roles.n && !subject; i++) {
		int ri = pol_role_find(p, g->roles.v[i]);
		subject = ri >= 0 && (w->roles[ri / 64] >> (ri % 64) & 1);
	}
	return subject;
}

static int guard_applies(const struct walk *w, const struct pol_guard *g)
{
	return guard_subject(w, g) && scope_match(g->app, g->env, w->q) &&
	       rule_match(&g->forbid, w->q);
}

/* Visits every binding of q's principal: its groups and held roles into
 * w, matching grants into r. */
static void walk_collect(struct walk *w, const struct pol_policy *p, const struct pol_query *q,
			 struct pol_result *r)
{
	size_t n;
	memset(w->roles, 0, sizeof w->roles);
	memset(w->groups, 0, sizeof w->groups);
	w->p = p;
	w->q = q;
	w->r = r;
	r->allowed = 0;
	r->ngrants = r->nforbids = r->nexpired = r->ngroups = 0;

	/* Groups of the principal. */
	const int *gv = pol_index_get(p->member_of, q->principal, &n);
	for (size_t i = 0; i < n; i++)
		w->groups[gv[i] / 64] |= 1ULL << (gv[i] % 64);
	for (size_t i = 0; i < p->nprefix_members; i++)
		if (prefix_of(p->prefix_member[i], q->principal)) {
			int g = p->prefix_member_group[i];
			w->groups[g / 64] |= 1ULL << (g % 64);
		}

	/* Bindings: to the principal, to a prefix of it, to its groups. */
	const int *bv = pol_index_get(p->by_principal, q->principal, &n);
	for (size_t i = 0; i < n; i++)
		consider(w, bv[i]);
	for (size_t i = 0; i < p->nprefix_bindings; i++)
		if (prefix_of(p->bindings[p->prefix_bindings[i]].subject, q->principal))
			consider(w, p->prefix_bindings[i]);
	for (size_t g = 0; g < p->ngroups; g++) {
		if (!(w->groups[g / 64] >> (g % 64) & 1))
			continue;
		if (r->ngroups < POL_MAX_MATCH)
			r->groups[r->ngroups++] = (int)g;
		bv = pol_index_get(p->by_group, p->groups[g].name, &n);
		for (size_t i = 0; i < n; i++)
			consider(w, bv[i]);
	}
}

void pol_eval(const struct pol_policy *p, const struct pol_query *q, int all,
	      struct pol_result *r)
{
	struct walk w;
	(void)all; /* every binding of the principal is visited: guardrails need its roles */
	walk_collect(&w, p, q, r);
	/* Guardrails override any grant. */
	for (size_t i = 0; i < p->nguards; i++)
		if (guard_applies(&w, &p->guards[i]) && r->nforbids < POL_MAX_MATCH)
			r->forbids[r->nforbids++] = &p->guards[i];
	r->allowed = r->ngrants > 0 && r->nforbids == 0;
}

void pol_resource_text(const char *kind, const char *app, const char *env, const char *name,
		       char *out, size_t len)
{
	app = app ? app : "";
	env = env ? env : "";
	name = name ? name : "";
	if (name[0])
		snprintf(out, len, "%s/%s/%s/%s", kind, app[0] ? app : "-", env[0] ? env : "-", name);
	else if (env[0])
		snprintf(out, len, "%s/%s/%s", kind, app[0] ? app : "-", env);
	else if (app[0])
		snprintf(out, len, "%s/%s", kind, app);
	else
		snprintf(out, len, "%s", kind);
}

static void scope_text(const char *app, const char *env, char *out, size_t len)
{
	if (app == NULL)
		snprintf(out, len, "globally");
	else if (env == NULL)
		snprintf(out, len, "at app %s", app);
	else
		snprintf(out, len, "at app %s environment %s", app, env);
}

static const char *subject_kind(enum pol_subject k)
{
	return k == POL_SUBJ_GROUP ? "group" : k == POL_SUBJ_PREFIX ? "principals under" : "principal";
}

void pol_describe_grant(const struct pol_grant *g, char *out, size_t len)
{
	const struct pol_binding *b = g->b;
	char sc[200];
	scope_text(b->app, b->env, sc, sizeof sc);
	snprintf(out, len, "%s: role %s (rule %d) to %s %s%s %s", b->label, b->role->name, g->rule,
		 subject_kind(b->skind), b->subject, b->skind == POL_SUBJ_PREFIX ? "*" : "", sc);
}

void pol_describe_guard(const struct pol_guard *g, char *out, size_t len)
{
	snprintf(out, len, "guardrail %s%s%s", g->name, g->description ? ": " : "",
		 g->description ? g->description : "");
}

size_t pol_reasons(const struct pol_policy *p, const struct pol_query *q,
		   const struct pol_result *r, char (*out)[POL_REASON_LEN], size_t max)
{
	size_t n = 0;
	char res[300];
	(void)p;
	pol_resource_text(q->kind, q->app, q->env, q->name, res, sizeof res);
	if (r->nforbids > 0) {
		for (size_t i = 0; i < r->nforbids && n < max; i++) {
			char d[230];
			pol_describe_guard(r->forbids[i], d, sizeof d);
			snprintf(out[n++], POL_REASON_LEN, "denied by %s", d);
		}
		return n;
	}
	if (r->allowed) {
		char d[230];
		pol_describe_grant(&r->grants[0], d, sizeof d);
		snprintf(out[n++], POL_REASON_LEN, "allowed by %s", d);
		return n;
	}
	if (n < max)
		snprintf(out[n++], POL_REASON_LEN, "no binding grants %s on %s to %s (deny by default)", q->action,
			 res, q->principal);
	for (size_t i = 0; i < r->nexpired && n < max; i++) {
		char t[32];
		time_t s = (time_t)(r->expired[i]->expires_ms / 1000);
		struct tm tm;
		gmtime_r(&s, &tm);
		strftime(t, sizeof t, "%Y-%m-%dT%H:%M:%SZ", &tm);
		snprintf(out[n++], POL_REASON_LEN, "%s (role %s) would allow it but expired at %s",
			 r->expired[i]->label, r->expired[i]->role->name, t);
	}
	return n;
}

int pol_must_audit(const char *kind, const char *action, int allowed)
{
	return !allowed || strcmp(action, "deploy") == 0 || strcmp(action, "approve") == 0 ||
	       strcmp(kind, "secret") == 0 || strcmp(kind, "policy") == 0;
}

/* ------------------------------------------------------------------ */
/* escalation guard                                                    */

/* want is covered by have: have has "*" or every entry of want. */
static int covers_exact(const struct pol_list *have, const struct pol_list *want)
{
	if (list_has(have, "*"))
		return 1;
	for (size_t i = 0; i < want->n; i++)
		if (!list_has(have, want->v[i]))
			return 0;
	return 1;
}

/* Pattern lists: an empty list (any) covers everything. */
static int covers_glob(const struct pol_list *have, const struct pol_list *want)
{
	if (have->n == 0 || list_has(have, "*"))
		return 1;
	if (want->n == 0)
		return 0;
	for (size_t i = 0; i < want->n; i++)
		if (!list_has(have, want->v[i]))
			return 0;
	return 1;
}

/* Binding scope (a, e) contains (app, env). */
static int scope_contains(const char *a, const char *e, const char *app, const char *env)
{
	if (a == NULL)
		return 1;
	if (app == NULL || strcmp(a, app) != 0)
		return 0;
	return e == NULL || (env != NULL && strcmp(e, env) == 0);
}

/* The actor's active bindings in cur (exact, prefix, groups). */
static size_t actor_bindings(const struct pol_policy *cur, const char *actor, int64_t now,
			     const struct pol_binding **out, size_t max)
{
	size_t n = 0, k;
	const int *v = pol_index_get(cur->by_principal, actor, &k);
	for (size_t i = 0; i < k && n < max; i++)
		out[n++] = &cur->bindings[v[i]];
	for (size_t i = 0; i < cur->nprefix_bindings && n < max; i++)
		if (prefix_of(cur->bindings[cur->prefix_bindings[i]].subject, actor))
			out[n++] = &cur->bindings[cur->prefix_bindings[i]];
	for (size_t g = 0; g < cur->ngroups; g++) {
		if (!pol_in_group(cur, (int)g, actor))
			continue;
		v = pol_index_get(cur->by_group, cur->groups[g].name, &k);
		for (size_t i = 0; i < k && n < max; i++)
			out[n++] = &cur->bindings[v[i]];
	}
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (out[i]->expires_ms == 0 || now < out[i]->expires_ms)
			out[m++] = out[i];
	return m;
}

static int lists_overlap(const struct pol_list *a, const struct pol_list *b)
{
	if (list_has(a, "*") || list_has(b, "*"))
		return 1;
	for (size_t i = 0; i < a->n; i++)
		if (list_has(b, a->v[i]))
			return 1;
	return 0;
}

/* Guardrail g may forbid the walk's principal part of rule want somewhere
 * within scope (app, env) (NULL = wider). Patterns are ignored: a guardrail
 * that might apply counts. */
static int guard_overlaps(const struct walk *w, const struct pol_guard *g,
			  const struct pol_rule *want, const char *app, const char *env)
{
	if (!guard_subject(w, g))
		return 0;
	if ((g->app != NULL && app != NULL && strcmp(g->app, app) != 0) ||
	    (g->env != NULL && env != NULL && strcmp(g->env, env) != 0))
		return 0;
	int act = 0;
	for (size_t i = 0; i < want->actions.n && !act; i++) {
		const char *a = want->actions.v[i];
		act = strcmp(a, "*") == 0 || (list_match_exact(&g->forbid.actions, a) &&
					      !list_has(&g->forbid.except_actions, a));
	}
	return act && lists_overlap(&g->forbid.kinds, &want->kinds);
}

/* The actor (walk w) holds rule want at scope (app, env); with any_scope,
 * at some scope (for roles, which have none until bound). */
static int holds_rule(const struct pol_policy *cur, const struct walk *w,
		      const struct pol_binding *const *mine, size_t nmine,
		      const struct pol_rule *want, const char *app, const char *env, int any_scope)
{
	int covered = 0;
	for (size_t i = 0; i < nmine && !covered; i++) {
		const struct pol_binding *b = mine[i];
		if (!any_scope && !scope_contains(b->app, b->env, app, env))
			continue;
		for (size_t k = 0; k < b->role->nrules && !covered; k++) {
			const struct pol_rule *h = &b->role->rules[k];
			covered = covers_exact(&h->actions, &want->actions) &&
				  covers_exact(&h->kinds, &want->kinds) &&
				  covers_glob(&h->apps, &want->apps) &&
				  covers_glob(&h->envs, &want->envs) &&
				  covers_glob(&h->names, &want->names);
		}
	}
	if (!covered || any_scope)
		return covered;
	/* A guardrail that forbids the actor some of this within that scope
	 * means the actor does not hold all of it there. */
	for (size_t g = 0; g < cur->nguards; g++)
		if (guard_overlaps(w, &cur->guards[g], want, app, env))
			return 0;
	return 1;
}

static void list_text(const struct pol_list *l, char *out, size_t len)
{
	size_t o = 0;
	out[0] = '\0';
	for (size_t k = 0; k < l->n && o < len; k++) {
		int n = snprintf(out + o, len - o, "%s%s", k ? "," : "", l->v[k]);
		if (n < 0)
			break;
		o += (size_t)n;
	}
}

static int holds_escalate(const struct pol_policy *cur, const char *actor, int64_t now,
			  const char *app, const char *env)
{
	struct pol_query q = { actor, "escalate", "policy", app ? app : "", env ? env : "", "", now };
	struct pol_result r;
	pol_eval(cur, &q, 0, &r);
	return r.allowed;
}

/* Appends printf output to err at *off, bounded (cut at errlen). */
static void append(char *err, size_t errlen, size_t *off, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void append(char *err, size_t errlen, size_t *off, const char *fmt, ...)
{
	if (*off + 1 >= errlen)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(err + *off, errlen - *off, fmt, ap);
	va_end(ap);
	if (n > 0)
		*off += (size_t)n < errlen - *off ? (size_t)n : errlen - *off - 1;
}

int pol_escalation_judge(const struct pol_policy *cur, const struct pol_policy *next,
			 const char *actor, int64_t now, struct pol_weaken *w, char *err,
			 size_t errlen)
{
	const struct pol_binding **mb = NULL;
	char acts[200], kinds[200], sc[160];
	size_t ndenied = 0, off = 0;

	for (size_t i = 0; i < w->n; i++)
		w->v[i].denied = 0;
	if (holds_escalate(cur, actor, now, NULL, NULL))
		return 0;
	if (w->overflow)
		return sw_errf(err, errlen, SW_EPERM,
			       "escalation guard: the document weakens the policy in more than %d ways; "
			       "only a holder of the escalate permission on policy globally may apply it",
			       POL_WEAKEN_MAX);

	mb = calloc(4096, sizeof *mb);
	if (mb == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	size_t nmine = actor_bindings(cur, actor, now, mb, 4096);
	struct walk wk;
	struct pol_result wr;
	struct pol_query wq = { actor, "", "", "", "", "", now };
	walk_collect(&wk, cur, &wq, &wr);

	/* Who may make each change. */
	for (size_t i = 0; i < w->n; i++) {
		struct pol_weak *c = &w->v[i];
		const char *app = c->app[0] ? c->app : NULL, *env = c->env[0] ? c->env : NULL;
		if (c->cls == POL_WEAK_PROTECTION) {
			c->denied = !holds_escalate(cur, actor, now, app, env);
		} else if (c->cls == POL_WEAK_GRANT_BINDING) {
			/* Delegation: what the actor holds there, it may hand out. */
			const struct pol_binding *nb = &next->bindings[c->index];
			int held = 1;
			for (size_t r = 0; r < nb->role->nrules && held; r++)
				held = holds_rule(cur, &wk, mb, nmine, &nb->role->rules[r], nb->app,
						  nb->env, 0);
			c->denied = !held && !holds_escalate(cur, actor, now, nb->app, nb->env);
		} else {
			const struct pol_rule *want = &next->roles[c->index].rules[c->rule];
			c->denied = !holds_rule(cur, &wk, mb, nmine, want, NULL, NULL, 1);
		}
		ndenied += (size_t)c->denied;
	}
	if (ndenied == 0) {
		free(mb);
		if (errlen > 0)
			err[0] = '\0';
		return 0;
	}
	/* The refusal names every refused change up front (paths), then says
	 * what each weakens, as far as the message goes. */
	append(err, errlen, &off,
	       "escalation guard: %s lacks the escalate permission on policy for %zu weakening "
	       "change(s): ",
	       actor, ndenied);
	for (size_t i = 0, k = 0; i < w->n; i++)
		if (w->v[i].denied)
			append(err, errlen, &off, "%s%s", k++ ? ", " : "", w->v[i].path);
	for (size_t i = 0, k = 0; i < w->n; i++) {
		const struct pol_weak *c = &w->v[i];
		if (!c->denied)
			continue;
		pol_weak_scope_text(c, sc, sizeof sc);
		append(err, errlen, &off, "%s%zu. %s: %s (needs escalate %s", k ? "; " : " -- ", k + 1,
		       c->path, c->what, sc);
		k++;
		if (c->cls == POL_WEAK_GRANT_BINDING) {
			const struct pol_binding *nb = &next->bindings[c->index];
			for (size_t r = 0; r < nb->role->nrules; r++) {
				if (holds_rule(cur, &wk, mb, nmine, &nb->role->rules[r], nb->app, nb->env,
					       0))
					continue;
				list_text(&nb->role->rules[r].actions, acts, sizeof acts);
				list_text(&nb->role->rules[r].kinds, kinds, sizeof kinds);
				append(err, errlen, &off, ", or holding %s on %s there, which it does not",
				       acts, kinds);
				break;
			}
		} else if (c->cls == POL_WEAK_GRANT_ROLE) {
			append(err, errlen, &off, ", or holding it somewhere, which it does not");
		}
		append(err, errlen, &off, ")");
	}
	free(mb);
	return SW_EPERM;
}

int pol_escalation_check(const struct pol_policy *cur, const struct pol_policy *next,
			 const char *actor, int64_t now, char *err, size_t errlen)
{
	struct pol_weaken w = { 0 };
	int rc = pol_weaken(cur, next, &w, err, errlen);
	if (rc == 0)
		rc = pol_escalation_judge(cur, next, actor, now, &w, err, errlen);
	pol_weaken_free(&w);
	return rc;
}
