/*
 * weaken.c - which changes of a policy document weaken it: a pure function
 * of the current and the proposed compiled documents (no actor, no clock,
 * no I/O). The escalation guard (pol_escalation_judge, eval.c) decides who
 * may make them; `policy diff` and dry runs list them.
 *
 * Every field of the document model (doc.c) is classified as neutral,
 * tightening or weakening; the table is in services/policy/README.md
 * ("Weakening"). Comparisons of patterns are proofs of containment, not
 * guesses: when one pattern cannot be shown to cover another, the change
 * counts as weakening (deny by default).
 */
#include "weaken.h"
#include "err.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct ctx {
	const struct pol_policy *o, *n;
	struct pol_weaken *w;
	int oom;
};

static void add(struct ctx *c, enum pol_weak_class cls, const char *app, const char *env,
		int index, int rule, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 8, 9)));
static void add(struct ctx *c, enum pol_weak_class cls, const char *app, const char *env,
		int index, int rule, const char *path, const char *fmt, ...)
{
	struct pol_weaken *w = c->w;
	if (c->oom)
		return;
	if (w->n >= POL_WEAKEN_MAX) {
		w->overflow = 1;
		return;
	}
	if (w->n == w->cap) {
		size_t cap = w->cap ? w->cap * 2 : 16;
		struct pol_weak *v = realloc(w->v, cap * sizeof *v);
		if (v == NULL) {
			c->oom = 1;
			return;
		}
		w->v = v;
		w->cap = cap;
	}
	struct pol_weak *e = &w->v[w->n++];
	memset(e, 0, sizeof *e);
	e->cls = cls;
	e->index = index;
	e->rule = rule;
	snprintf(e->path, sizeof e->path, "%s", path);
	snprintf(e->app, sizeof e->app, "%s", app ? app : "");
	snprintf(e->env, sizeof e->env, "%s", app && env ? env : "");
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->what, sizeof e->what, fmt, ap);
	va_end(ap);
}

/* ---- patterns ---- */

static int has_wild(const char *s)
{
	return strpbrk(s, "*?") != NULL;
}

static int names_has(const struct pol_list *l, const char *s)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i], s) == 0)
			return 1;
	return 0;
}

/* Every string that glob p matches, glob q matches too (provably: q is
 * "*", equals p, matches the literal p, or is a literal prefix plus '*'
 * that p starts with). */
static int glob_covers(const char *q, const char *p)
{
	if (strcmp(q, "*") == 0 || strcmp(q, p) == 0)
		return 1;
	if (!has_wild(p))
		return pol_glob(q, p);
	size_t n = strlen(q);
	if (n == 0 || q[n - 1] != '*' || strcspn(q, "*?") != n - 1)
		return 0;
	return strncmp(p, q, n - 1) == 0;
}

/* Pattern lists (empty = any value): have matches every value want does. */
static int globs_cover(const struct pol_list *have, const struct pol_list *want)
{
	if (have->n == 0)
		return 1;
	if (want->n == 0)
		return names_has(have, "*");
	for (size_t i = 0; i < want->n; i++) {
		int found = 0;
		for (size_t k = 0; k < have->n && !found; k++)
			found = glob_covers(have->v[k], want->v[i]);
		if (!found)
			return 0;
	}
	return 1;
}

/* Name lists where "*" is every name (actions, kinds). */
static int names_cover(const struct pol_list *have, const struct pol_list *want)
{
	if (names_has(have, "*"))
		return 1;
	for (size_t i = 0; i < want->n; i++)
		if (!names_has(have, want->v[i]))
			return 0;
	return 1;
}

/* Two globs may match a common string (0 only when provably not). */
static int globs_may_meet(const char *p, const char *q)
{
	if (!has_wild(p))
		return pol_glob(q, p);
	if (!has_wild(q))
		return pol_glob(p, q);
	size_t a = strcspn(p, "*?"), b = strcspn(q, "*?");
	return strncmp(p, q, a < b ? a : b) == 0;
}

static int lists_may_meet(const struct pol_list *a, const struct pol_list *b)
{
	if (a->n == 0 || b->n == 0)
		return 1;
	for (size_t i = 0; i < a->n; i++)
		for (size_t k = 0; k < b->n; k++)
			if (globs_may_meet(a->v[i], b->v[k]))
				return 1;
	return 0;
}

/* Role rule h grants everything rule w grants. */
static int rule_covers(const struct pol_rule *h, const struct pol_rule *w)
{
	return names_cover(&h->actions, &w->actions) && names_cover(&h->kinds, &w->kinds) &&
	       globs_cover(&h->apps, &w->apps) && globs_cover(&h->envs, &w->envs) &&
	       globs_cover(&h->names, &w->names);
}

static void join_text(const struct pol_list *l, char *out, size_t len)
{
	size_t o = 0;
	out[0] = '\0';
	if (l->n == 0)
		snprintf(out, len, "(any)");
	for (size_t k = 0; k < l->n && o < len; k++) {
		int n = snprintf(out + o, len - o, "%s%s", k ? "," : "", l->v[k]);
		if (n < 0)
			break;
		o += (size_t)n;
	}
}

/* Scope (a, e) contains (app, env); NULL = wider. */
static int scope_holds(const char *a, const char *e, const char *app, const char *env)
{
	if (a == NULL)
		return 1;
	if (app == NULL || strcmp(a, app) != 0)
		return 0;
	return e == NULL || (env != NULL && strcmp(e, env) == 0);
}

void pol_weak_scope_text(const struct pol_weak *c, char *out, size_t len)
{
	if (c->app[0] == '\0')
		snprintf(out, len, "globally");
	else if (c->env[0] == '\0')
		snprintf(out, len, "at app %s", c->app);
	else
		snprintf(out, len, "at app %s environment %s", c->app, c->env);
}

static void scope_words(const char *app, const char *env, char *out, size_t len)
{
	if (app == NULL)
		snprintf(out, len, "globally");
	else if (env == NULL)
		snprintf(out, len, "at app %s", app);
	else
		snprintf(out, len, "at app %s environment %s", app, env);
}

/* ---- groups ---- */

/* Member m is within group gi of p: an equal exact member, or a prefix
 * member that covers it. */
static int member_within(const struct pol_policy *p, int gi, const struct pol_member *m)
{
	if (gi < 0)
		return 0;
	if (!m->prefix) {
		size_t k;
		const int *v = pol_index_get(p->member_of, m->id, &k);
		for (size_t i = 0; i < k; i++)
			if (v[i] == gi)
				return 1;
	}
	const struct pol_group *g = &p->groups[gi];
	for (size_t i = 0; i < g->n; i++)
		if (g->m[i].prefix && strncmp(m->id, g->m[i].id, strlen(g->m[i].id)) == 0)
			return 1;
	return 0;
}

/* Group `name` of n has a member not within the group of that name in o. */
static int group_grew(const struct pol_policy *o, const struct pol_policy *n, const char *name)
{
	int gn = pol_group_find(n, name), go = pol_group_find(o, name);
	if (gn < 0)
		return 0;
	for (size_t i = 0; i < n->groups[gn].n; i++)
		if (!member_within(o, go, &n->groups[gn].m[i]))
			return 1;
	return 0;
}

static int quorum_names(const struct pol_quorum *q, const char *g)
{
	for (size_t i = 0; i < q->ngroups; i++)
		if (strcmp(q->groups[i], g) == 0)
			return 1;
	return 0;
}

static void approval_scope(const struct pol_approval *a, const char **app, const char **env);

/* m leaves group `name`: it lifts every guardrail that reaches m through
 * that group, directly or through a role bound to the group. */
static void left_group(struct ctx *c, const char *name, const struct pol_member *m)
{
	const struct pol_policy *o = c->o;
	char path[POL_WEAKEN_PATH];
	snprintf(path, sizeof path, "$.groups.%s", name);
	for (size_t g = 0; g < o->nguards; g++) {
		const struct pol_guard *gd = &o->guards[g];
		if (names_has(&gd->groups, name))
			add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, path,
			    "removing %s%s lifts guardrail '%s' from them", m->id, m->prefix ? "*" : "",
			    gd->name);
		size_t k;
		const int *v = pol_index_get(o->by_group, name, &k);
		for (size_t b = 0; b < k; b++) {
			const struct pol_binding *ob = &o->bindings[v[b]];
			if (names_has(&gd->roles, ob->role->name))
				add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, path,
				    "removing %s%s takes away role %s (%s), which lifts guardrail '%s' "
				    "from them",
				    m->id, m->prefix ? "*" : "", ob->role->name, ob->label, gd->name);
		}
	}
}

/* m joins group `name`: one more person who may approve, or fill a group's
 * quota, in each approval policy that names the group. (Bindings to the
 * group are grants: see bindings().) */
static void joined_group(struct ctx *c, const char *name, const struct pol_member *m)
{
	const struct pol_policy *n = c->n;
	char path[POL_WEAKEN_PATH];
	snprintf(path, sizeof path, "$.groups.%s", name);
	for (size_t i = 0; i < n->napprovals; i++) {
		const struct pol_approval *a = &n->approvals[i];
		const char *app, *env;
		approval_scope(a, &app, &env);
		if (names_has(&a->approver_groups, name))
			add(c, POL_WEAK_PROTECTION, app, env, -1, -1, path,
			    "adding %s%s lets them approve for approval policy '%s'", m->id,
			    m->prefix ? "*" : "", a->name);
		else if (quorum_names(&a->quorum, name) || (a->break_glass && quorum_names(&a->bg, name)))
			add(c, POL_WEAK_PROTECTION, app, env, -1, -1, path,
			    "adding %s%s lets them fill group %s's quota in approval policy '%s'",
			    m->id, m->prefix ? "*" : "", name, a->name);
	}
}

/* A guardrail of o reaches the members of group `name`: it names the
 * group, or a role bound to the group. */
static int group_guarded(const struct pol_policy *o, const char *name)
{
	size_t k;
	const int *v = pol_index_get(o->by_group, name, &k);
	for (size_t g = 0; g < o->nguards; g++) {
		if (names_has(&o->guards[g].groups, name))
			return 1;
		for (size_t i = 0; i < k; i++)
			if (names_has(&o->guards[g].roles, o->bindings[v[i]].role->name))
				return 1;
	}
	return 0;
}

/* An approval policy of n names group `name`. */
static int group_approves(const struct pol_policy *n, const char *name)
{
	for (size_t i = 0; i < n->napprovals; i++) {
		const struct pol_approval *a = &n->approvals[i];
		if (names_has(&a->approver_groups, name) || quorum_names(&a->quorum, name) ||
		    (a->break_glass && quorum_names(&a->bg, name)))
			return 1;
	}
	return 0;
}

static void groups(struct ctx *c)
{
	const struct pol_policy *o = c->o, *n = c->n;
	for (size_t g = 0; g < o->ngroups && !c->w->overflow; g++) {
		if (!group_guarded(o, o->groups[g].name))
			continue;
		int ng = pol_group_find(n, o->groups[g].name);
		for (size_t i = 0; i < o->groups[g].n && !c->w->overflow; i++)
			if (!member_within(n, ng, &o->groups[g].m[i]))
				left_group(c, o->groups[g].name, &o->groups[g].m[i]);
	}
	for (size_t g = 0; g < n->ngroups && !c->w->overflow; g++) {
		if (!group_approves(n, n->groups[g].name))
			continue;
		int og = pol_group_find(o, n->groups[g].name);
		for (size_t i = 0; i < n->groups[g].n && !c->w->overflow; i++)
			if (!member_within(o, og, &n->groups[g].m[i]))
				joined_group(c, n->groups[g].name, &n->groups[g].m[i]);
	}
}

/* ---- roles and bindings: grants ---- */

/* Rule k of role r (of n) is not covered by a rule of o's role of that name. */
static int rule_grew(const struct pol_policy *o, const struct pol_role *r, size_t k)
{
	int oi = pol_role_find(o, r->name);
	if (oi < 0)
		return 1;
	const struct pol_role *or = &o->roles[oi];
	for (size_t i = 0; i < or->nrules; i++)
		if (rule_covers(&or->rules[i], &r->rules[k]))
			return 0;
	return 1;
}

static int role_grew(const struct pol_policy *o, const struct pol_role *r)
{
	for (size_t k = 0; k < r->nrules; k++)
		if (rule_grew(o, r, k))
			return 1;
	return 0;
}

static void roles(struct ctx *c)
{
	const struct pol_policy *o = c->o, *n = c->n;
	size_t first = 0;
	while (first < n->nroles && n->roles[first].builtin)
		first++;
	for (size_t r = first; r < n->nroles; r++) {
		const struct pol_role *role = &n->roles[r];
		for (size_t k = 0; k < role->nrules; k++) {
			if (!rule_grew(o, role, k))
				continue;
			char path[POL_WEAKEN_PATH], acts[160], kinds[160];
			snprintf(path, sizeof path, "$.roles[%zu].rules[%zu]", r - first, k);
			join_text(&role->rules[k].actions, acts, sizeof acts);
			join_text(&role->rules[k].kinds, kinds, sizeof kinds);
			add(c, POL_WEAK_GRANT_ROLE, NULL, NULL, (int)r, (int)k, path,
			    "role '%s' would carry %s on %s, more than it did", role->name, acts, kinds);
		}
	}
}

/* The bindings of p that may have this subject (from its indexes; the
 * caller still compares the subject). */
static const int *subject_bindings(const struct pol_policy *p, enum pol_subject k,
			       const char *subject, size_t *n)
{
	if (k == POL_SUBJ_PRINCIPAL)
		return pol_index_get(p->by_principal, subject, n);
	if (k == POL_SUBJ_GROUP)
		return pol_index_get(p->by_group, subject, n);
	*n = p->nprefix_bindings;
	return p->prefix_bindings;
}

/* Binding nb of n grants nothing that a binding of o did not: same subject
 * and role (not grown), within an old binding's scope, expiring no later,
 * and for a group, the group has no new member. */
static int granted_before(const struct pol_policy *o, const struct pol_policy *n,
			  const struct pol_binding *nb)
{
	if (role_grew(o, nb->role))
		return 0;
	if (nb->skind == POL_SUBJ_GROUP && group_grew(o, n, nb->subject))
		return 0;
	size_t k;
	const int *v = subject_bindings(o, nb->skind, nb->subject, &k);
	for (size_t i = 0; i < k; i++) {
		const struct pol_binding *ob = &o->bindings[v[i]];
		if (ob->skind == nb->skind && strcmp(ob->subject, nb->subject) == 0 &&
		    strcmp(ob->role->name, nb->role->name) == 0 &&
		    scope_holds(ob->app, ob->env, nb->app, nb->env) &&
		    (ob->expires_ms == 0 || (nb->expires_ms != 0 && nb->expires_ms <= ob->expires_ms)))
			return 1;
	}
	return 0;
}

/* A holder of role ob->role through ob still holds it through a binding of
 * n (the role counts for guardrails at any scope, until it expires). */
static int holding_kept(const struct pol_policy *n, const struct pol_binding *ob)
{
	size_t k;
	const int *v = subject_bindings(n, ob->skind, ob->subject, &k);
	for (size_t i = 0; i < k; i++) {
		const struct pol_binding *nb = &n->bindings[v[i]];
		if (nb->skind == ob->skind && strcmp(nb->subject, ob->subject) == 0 &&
		    strcmp(nb->role->name, ob->role->name) == 0 &&
		    (nb->expires_ms == 0 || (ob->expires_ms != 0 && ob->expires_ms <= nb->expires_ms)))
			return 1;
	}
	return 0;
}

static const char *subject_words(enum pol_subject k)
{
	return k == POL_SUBJ_GROUP ? "group" : k == POL_SUBJ_PREFIX ? "principals under" : "principal";
}

static void bindings(struct ctx *c)
{
	const struct pol_policy *o = c->o, *n = c->n;
	for (size_t b = 0; b < n->nbindings; b++) {
		const struct pol_binding *nb = &n->bindings[b];
		if (strncmp(nb->label, "builtin:", 8) == 0 || granted_before(o, n, nb))
			continue;
		char path[POL_WEAKEN_PATH], sc[160];
		snprintf(path, sizeof path, "$.%s", nb->label);
		scope_words(nb->app, nb->env, sc, sizeof sc);
		add(c, POL_WEAK_GRANT_BINDING, nb->app, nb->env, (int)b, -1, path,
		    "binds role '%s' to %s %s%s %s, more than before",
		    nb->role->name, subject_words(nb->skind), nb->subject,
		    nb->skind == POL_SUBJ_PREFIX ? "*" : "", sc);
	}
	/* A role a guardrail names, taken away, lifts the guardrail. */
	for (size_t g = 0; g < o->nguards; g++) {
		const struct pol_guard *gd = &o->guards[g];
		for (size_t b = 0; b < o->nbindings; b++) {
			const struct pol_binding *ob = &o->bindings[b];
			if (strncmp(ob->label, "builtin:", 8) == 0 || !names_has(&gd->roles, ob->role->name) ||
			    holding_kept(n, ob))
				continue;
			add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, "$.bindings",
			    "removing what was %s (role %s to %s %s%s) lifts guardrail '%s'", ob->label,
			    ob->role->name, subject_words(ob->skind), ob->subject,
			    ob->skind == POL_SUBJ_PREFIX ? "*" : "", gd->name);
		}
	}
}

/* ---- guardrails ---- */

static const struct pol_guard *guard_find(const struct pol_policy *p, const char *name)
{
	for (size_t i = 0; i < p->nguards; i++)
		if (strcmp(p->guards[i].name, name) == 0)
			return &p->guards[i];
	return NULL;
}

static int everyone(const struct pol_guard *g)
{
	return g->principals.n == 0 && g->groups.n == 0 && g->roles.n == 0;
}

/* Principal pattern q ("id" or "prefix/ *") names everyone p names. */
static int principal_covers(const char *q, const char *p)
{
	size_t n = strlen(q);
	if (strcmp(q, p) == 0)
		return 1;
	return n >= 2 && q[n - 1] == '*' && strncmp(p, q, n - 1) == 0;
}

static void guard_compare(struct ctx *c, const struct pol_guard *og, const struct pol_guard *ng)
{
	char base[128], path[POL_WEAKEN_PATH], a[160], b[160];
	const struct pol_rule *of = &og->forbid, *nf = &ng->forbid;
	snprintf(base, sizeof base, "$.guardrails[name=%s]", og->name);

	/* What it forbids: every action it forbade (not excepted) still is. */
	const char *freed = NULL;
	if (names_has(&of->actions, "*")) {
		if (!names_has(&nf->actions, "*"))
			freed = "*";
		for (size_t i = 0; i < nf->except_actions.n && freed == NULL; i++)
			if (!names_has(&of->except_actions, nf->except_actions.v[i]))
				freed = nf->except_actions.v[i];
	} else {
		for (size_t i = 0; i < of->actions.n && freed == NULL; i++) {
			const char *x = of->actions.v[i];
			if (names_has(&of->except_actions, x))
				continue;
			if ((!names_has(&nf->actions, "*") && !names_has(&nf->actions, x)) ||
			    names_has(&nf->except_actions, x))
				freed = x;
		}
	}
	if (freed != NULL) {
		snprintf(path, sizeof path, "%s.forbid.actions", base);
		add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, path,
		    "guardrail '%s' no longer forbids %s", og->name,
		    strcmp(freed, "*") == 0 ? "every action it did" : freed);
	}
	static const struct {
		const char *key;
		size_t off;
		int glob;
	} lists[] = {
		{ "kinds", offsetof(struct pol_rule, kinds), 0 },
		{ "apps", offsetof(struct pol_rule, apps), 1 },
		{ "environments", offsetof(struct pol_rule, envs), 1 },
		{ "names", offsetof(struct pol_rule, names), 1 },
	};
	for (size_t i = 0; i < sizeof lists / sizeof lists[0]; i++) {
		const struct pol_list *ol = (const void *)((const char *)of + lists[i].off);
		const struct pol_list *nl = (const void *)((const char *)nf + lists[i].off);
		if (lists[i].glob ? globs_cover(nl, ol) : names_cover(nl, ol))
			continue;
		join_text(ol, a, sizeof a);
		join_text(nl, b, sizeof b);
		snprintf(path, sizeof path, "%s.forbid.%s", base, lists[i].key);
		add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, path,
		    "guardrail '%s' forbids on fewer %s (%s -> %s)", og->name, lists[i].key, a, b);
	}

	/* Whom it forbids: everyone it reached is still named. */
	if (!everyone(ng)) {
		if (everyone(og)) {
			snprintf(path, sizeof path, "%s.principals", base);
			add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, path,
			    "guardrail '%s' no longer applies to everyone", og->name);
		}
		for (size_t i = 0; i < og->principals.n; i++) {
			int kept = 0;
			for (size_t k = 0; k < ng->principals.n && !kept; k++)
				kept = principal_covers(ng->principals.v[k], og->principals.v[i]);
			if (kept)
				continue;
			snprintf(path, sizeof path, "%s.principals", base);
			add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, path,
			    "guardrail '%s' no longer applies to %s", og->name, og->principals.v[i]);
		}
		for (size_t i = 0; i < og->groups.n; i++) {
			if (names_has(&ng->groups, og->groups.v[i]))
				continue;
			snprintf(path, sizeof path, "%s.groups", base);
			add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, path,
			    "guardrail '%s' no longer applies to group %s", og->name, og->groups.v[i]);
		}
		for (size_t i = 0; i < og->roles.n; i++) {
			if (names_has(&ng->roles, og->roles.v[i]))
				continue;
			snprintf(path, sizeof path, "%s.roles", base);
			add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, path,
			    "guardrail '%s' no longer applies to holders of role %s", og->name,
			    og->roles.v[i]);
		}
	}
	/* Where it forbids. */
	if (!scope_holds(ng->app, ng->env, og->app, og->env)) {
		scope_words(og->app, og->env, a, sizeof a);
		scope_words(ng->app, ng->env, b, sizeof b);
		snprintf(path, sizeof path, "%s.scope", base);
		add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, path,
		    "guardrail '%s' applies in a narrower scope (%s -> %s)", og->name, a, b);
	}
}

static void guardrails(struct ctx *c)
{
	const struct pol_policy *o = c->o, *n = c->n;
	for (size_t g = 0; g < o->nguards; g++) {
		const struct pol_guard *og = &o->guards[g];
		if (og->builtin)
			continue; /* the same in every revision */
		const struct pol_guard *ng = guard_find(n, og->name);
		if (ng == NULL) {
			char path[POL_WEAKEN_PATH];
			snprintf(path, sizeof path, "$.guardrails[name=%s]", og->name);
			add(c, POL_WEAK_PROTECTION, NULL, NULL, -1, -1, path, "removes guardrail '%s'",
			    og->name);
			continue;
		}
		guard_compare(c, og, ng);
	}
}

/* ---- approval policies ---- */

/* Where escalate must be held to weaken a: its one app (and environment)
 * when it names exactly one without patterns, else globally. */
static void approval_scope(const struct pol_approval *a, const char **app, const char **env)
{
	*app = *env = NULL;
	if (a->apps.n == 1 && !has_wild(a->apps.v[0])) {
		*app = a->apps.v[0];
		if (a->envs.n == 1 && !has_wild(a->envs.v[0]))
			*env = a->envs.v[0];
	}
}

/* The narrowest scope that contains two scopes. */
static void scope_join(const char *a1, const char *e1, const char *a2, const char *e2,
		       const char **app, const char **env)
{
	*app = *env = NULL;
	if (a1 == NULL || a2 == NULL || strcmp(a1, a2) != 0)
		return;
	*app = a1;
	*env = e1 != NULL && e2 != NULL && strcmp(e1, e2) == 0 ? e1 : NULL;
}

static const struct pol_approval *approval_find(const struct pol_policy *p, const char *name,
						int *index)
{
	for (size_t i = 0; i < p->napprovals; i++)
		if (strcmp(p->approvals[i].name, name) == 0) {
			if (index != NULL)
				*index = (int)i;
			return &p->approvals[i];
		}
	if (index != NULL)
		*index = -1;
	return NULL;
}

static void dur_text(int64_t ms, char *out, size_t len)
{
	if (ms == 0)
		snprintf(out, len, "0s");
	else if (ms % 86400000 == 0)
		snprintf(out, len, "%lldd", (long long)(ms / 86400000));
	else if (ms % 3600000 == 0)
		snprintf(out, len, "%lldh", (long long)(ms / 3600000));
	else if (ms % 60000 == 0)
		snprintf(out, len, "%lldm", (long long)(ms / 60000));
	else if (ms % 1000 == 0)
		snprintf(out, len, "%llds", (long long)(ms / 1000));
	else
		snprintf(out, len, "%lldms", (long long)ms);
}

/* Where a check of an approval policy reports to: emit = 0 only counts. */
struct asink {
	struct ctx *c;
	int emit;
	const char *base;               /* "$.approval_policies[name=prod]" */
	const char *app, *env;
	int count;
};

static void weak(struct asink *s, const char *sub, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void weak(struct asink *s, const char *sub, const char *fmt, ...)
{
	s->count++;
	if (!s->emit)
		return;
	char path[POL_WEAKEN_PATH], what[POL_REASON_LEN];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(what, sizeof what, fmt, ap);
	va_end(ap);
	snprintf(path, sizeof path, "%s%s", s->base, sub);
	add(s->c, POL_WEAK_PROTECTION, s->app, s->env, -1, -1, path, "%s", what);
}

static void quorum_compare(struct asink *s, const char *sub, const char *name,
			   const struct pol_quorum *oq, const struct pol_quorum *nq)
{
	char p[120];
	if (nq->required < oq->required) {
		snprintf(p, sizeof p, "%s.required", sub);
		weak(s, p, "approval policy '%s'%s needs %u distinct approval(s) instead of %u", name,
		     sub[0] ? " (break-glass)" : "", nq->required, oq->required);
	}
	for (size_t i = 0; i < oq->ngroups; i++) {
		uint32_t have = 0;
		for (size_t k = 0; k < nq->ngroups; k++)
			if (strcmp(nq->groups[k], oq->groups[i]) == 0)
				have = nq->counts[k];
		if (have >= oq->counts[i])
			continue;
		snprintf(p, sizeof p, "%s.groups.%s", sub, oq->groups[i]);
		weak(s, p, "approval policy '%s'%s needs %u approval(s) from group %s instead of %u",
		     name, sub[0] ? " (break-glass)" : "", have, oq->groups[i], oq->counts[i]);
	}
}

/* Weekly windows as a bitmap of the minutes of the week. */
#define WEEK_MIN (7 * 1440)
static void week_bits(const struct pol_approval *a, uint64_t *bits)
{
	memset(bits, 0, (WEEK_MIN + 63) / 64 * sizeof *bits);
	for (size_t i = 0; i < a->nweekly; i++) {
		int s = a->weekly[i].start, e = a->weekly[i].end;
		/* A window wraps the week when it ends before it starts. */
		int lo1 = s, hi1 = s < e ? e : WEEK_MIN, hi2 = s < e ? 0 : e;
		for (int m = lo1; m < hi1 && m < WEEK_MIN; m++)
			bits[m / 64] |= 1ULL << (m % 64);
		for (int m = 0; m < hi2 && m < WEEK_MIN; m++)
			bits[m / 64] |= 1ULL << (m % 64);
	}
}

/* [s, e) is covered by the union of a's one-off windows. */
static int dates_cover(const struct pol_approval *a, int64_t s, int64_t e)
{
	int64_t pos = s;
	for (int moved = 1; moved && pos < e;) {
		moved = 0;
		for (size_t i = 0; i < a->ndates; i++)
			if (a->dates[i].start <= pos && pos < a->dates[i].end) {
				pos = a->dates[i].end;
				moved = 1;
			}
	}
	return pos >= e;
}

static void local_text(int64_t local_s, char *out, size_t len)
{
	time_t t = (time_t)local_s;
	struct tm tm;
	gmtime_r(&t, &tm);
	strftime(out, len, "%Y-%m-%dT%H:%M", &tm);
}

/* During a freeze with break-glass, na's break-glass quorum applies and
 * the wait is skipped: 1 when that path is laxer than oa's normal one. */
static int bg_laxer(struct asink *s, const struct pol_approval *oa,
		    const struct pol_approval *na)
{
	if (!na->break_glass)
		return 0;
	struct asink t = { s->c, 0, "", NULL, NULL, 0 };
	quorum_compare(&t, "", oa->name, &oa->quorum, &na->bg);
	return t.count > 0 || oa->wait_ms > 0;
}

static void freeze_compare(struct asink *s, const struct pol_approval *oa,
			   const struct pol_approval *na)
{
	static const char *const wd[] = { "mon", "tue", "wed", "thu", "fri", "sat", "sun" };
	int ow = oa->nweekly + oa->ndates > 0, nw = na->nweekly + na->ndates > 0;
	uint64_t ob[(WEEK_MIN + 63) / 64], nb[(WEEK_MIN + 63) / 64];
	char a[32], b[32];
	week_bits(oa, ob);
	week_bits(na, nb);
	if (ow && !nw) {
		weak(s, ".freeze", "approval policy '%s' no longer has freeze windows", oa->name);
	} else if (ow) {
		/* Less frozen time. */
		if (strcmp(oa->tz_name, na->tz_name) != 0)
			weak(s, ".freeze.timezone",
			     "approval policy '%s' moves its freeze windows from time zone %s to %s",
			     oa->name, oa->tz_name, na->tz_name);
		for (int m = 0; m < WEEK_MIN; m++)
			if ((ob[m / 64] >> (m % 64) & 1) && !(nb[m / 64] >> (m % 64) & 1)) {
				weak(s, ".freeze.weekly",
				     "approval policy '%s' no longer freezes %s %02d:%02d (%s), and "
				     "maybe more of its weekly windows",
				     oa->name, wd[m / 1440], m % 1440 / 60, m % 60, oa->tz_name);
				break;
			}
		for (size_t i = 0; i < oa->ndates; i++) {
			if (dates_cover(na, oa->dates[i].start, oa->dates[i].end))
				continue;
			local_text(oa->dates[i].start, a, sizeof a);
			local_text(oa->dates[i].end, b, sizeof b);
			weak(s, ".freeze.dates",
			     "approval policy '%s' no longer freezes all of %s - %s (%s)", oa->name, a,
			     b, oa->tz_name);
		}
	}
	/* More frozen time is tighter, unless break-glass then opens a path
	 * laxer than the normal one (fewer approvals, no wait). */
	if (!nw || !bg_laxer(s, oa, na))
		return;
	for (int m = 0; m < WEEK_MIN; m++)
		if ((nb[m / 64] >> (m % 64) & 1) && !(ob[m / 64] >> (m % 64) & 1)) {
			weak(s, ".freeze.weekly",
			     "approval policy '%s' freezes %s %02d:%02d (%s) and maybe more, where "
			     "break-glass then needs fewer approvals or no wait than a normal deployment did",
			     oa->name, wd[m / 1440], m % 1440 / 60, m % 60, na->tz_name);
			break;
		}
	for (size_t i = 0; i < na->ndates; i++) {
		if (dates_cover(oa, na->dates[i].start, na->dates[i].end))
			continue;
		local_text(na->dates[i].start, a, sizeof a);
		local_text(na->dates[i].end, b, sizeof b);
		weak(s, ".freeze.dates",
		     "approval policy '%s' freezes %s - %s (%s), where break-glass then needs fewer "
		     "approvals or no wait than a normal deployment did",
		     oa->name, a, b, na->tz_name);
	}
}

/*
 * The rules of na (new) against those of oa (old), scope aside: each way
 * in which a deployment na decides could pass where oa would have stopped
 * it. Used for one policy across the change, and for a policy that takes
 * over deployments another one decided.
 */
static void approval_compare(struct asink *s, const struct pol_approval *oa,
			     const struct pol_approval *na)
{
	char a[300], b[300];
	quorum_compare(s, "", oa->name, &oa->quorum, &na->quorum);
	if (oa->approver_groups.n > 0) {
		if (na->approver_groups.n == 0) {
			join_text(&oa->approver_groups, a, sizeof a);
			weak(s, ".approver_groups",
			     "approval policy '%s' counts approvals from anyone allowed to approve, "
			     "not only groups %s",
			     oa->name, a);
		}
		for (size_t i = 0; i < na->approver_groups.n; i++)
			if (!names_has(&oa->approver_groups, na->approver_groups.v[i]))
				weak(s, ".approver_groups",
				     "approval policy '%s' counts approvals from group %s too", oa->name,
				     na->approver_groups.v[i]);
	}
	if (oa->ttl_ms > 0 && (na->ttl_ms == 0 || na->ttl_ms > oa->ttl_ms)) {
		dur_text(oa->ttl_ms, a, sizeof a);
		if (na->ttl_ms == 0)
			snprintf(b, sizeof b, "never");
		else
			dur_text(na->ttl_ms, b, sizeof b);
		weak(s, ".approval_ttl", "approval policy '%s' keeps approvals longer (%s -> %s)",
		     oa->name, a, b);
	}
	if (na->wait_ms < oa->wait_ms) {
		dur_text(oa->wait_ms, a, sizeof a);
		dur_text(na->wait_ms, b, sizeof b);
		weak(s, ".wait", "approval policy '%s' waits less (%s -> %s)", oa->name, a, b);
	}
	if (oa->refs.n > 0) {
		if (na->refs.n == 0) {
			weak(s, ".allowed_refs",
			     "approval policy '%s' allows releases built from any ref", oa->name);
		} else {
			for (size_t i = 0; i < na->refs.n; i++) {
				int covered = 0;
				for (size_t k = 0; k < oa->refs.n && !covered; k++)
					covered = glob_covers(oa->refs.v[k], na->refs.v[i]);
				if (!covered)
					weak(s, ".allowed_refs",
					     "approval policy '%s' allows releases built from refs "
					     "matching '%s'",
					     oa->name, na->refs.v[i]);
			}
		}
	}
	freeze_compare(s, oa, na);
	/* Break-glass where a freeze used to deny (new freeze time is above). */
	if (!oa->break_glass && na->break_glass && oa->nweekly + oa->ndates > 0)
		weak(s, ".break_glass",
		     "approval policy '%s' allows break-glass deployments during its freezes",
		     oa->name);
	else if (oa->break_glass && na->break_glass)
		quorum_compare(s, ".break_glass", oa->name, &oa->bg, &na->bg);
}

static int may_meet(const struct pol_approval *a, const struct pol_approval *b)
{
	return lists_may_meet(&a->apps, &b->apps) && lists_may_meet(&a->envs, &b->envs);
}

static void approvals(struct ctx *c)
{
	const struct pol_policy *o = c->o, *n = c->n;
	char base[128], a[300], b[300];

	for (size_t i = 0; i < o->napprovals; i++) {
		const struct pol_approval *oa = &o->approvals[i];
		const struct pol_approval *na = approval_find(n, oa->name, NULL);
		const char *app, *env, *app2, *env2;
		snprintf(base, sizeof base, "$.approval_policies[name=%s]", oa->name);
		approval_scope(oa, &app, &env);
		if (na == NULL) {
			add(c, POL_WEAK_PROTECTION, app, env, -1, -1, base,
			    "removes approval policy '%s': the deployments it decided need no approval, "
			    "or another policy's",
			    oa->name);
			continue;
		}
		approval_scope(na, &app2, &env2);
		scope_join(app, env, app2, env2, &app, &env);
		if (!globs_cover(&na->apps, &oa->apps)) {
			char p[POL_WEAKEN_PATH];
			join_text(&oa->apps, a, sizeof a);
			join_text(&na->apps, b, sizeof b);
			snprintf(p, sizeof p, "%s.apps", base);
			add(c, POL_WEAK_PROTECTION, app, env, -1, -1, p,
			    "approval policy '%s' no longer decides every app it did (%s -> %s)",
			    oa->name, a, b);
		}
		if (!globs_cover(&na->envs, &oa->envs)) {
			char p[POL_WEAKEN_PATH];
			join_text(&oa->envs, a, sizeof a);
			join_text(&na->envs, b, sizeof b);
			snprintf(p, sizeof p, "%s.environments", base);
			add(c, POL_WEAK_PROTECTION, app, env, -1, -1, p,
			    "approval policy '%s' no longer decides every environment it did (%s -> %s)",
			    oa->name, a, b);
		}
		struct asink s = { c, 1, base, app, env, 0 };
		approval_compare(&s, oa, na);
	}

	/* The first matching policy decides: a policy that now comes before
	 * another (new, moved, or with wider patterns) and may match the same
	 * deployments takes them over, which weakens unless its rules are at
	 * least as strict as the rules it displaces. */
	for (size_t j = 0; j < n->napprovals; j++) {
		const struct pol_approval *bn = &n->approvals[j];
		int bi;
		const struct pol_approval *bo = approval_find(o, bn->name, &bi);
		int widened = bo != NULL && !(globs_cover(&bo->apps, &bn->apps) &&
					      globs_cover(&bo->envs, &bn->envs));
		for (size_t i = j + 1; i < n->napprovals; i++) {
			int ai;
			const struct pol_approval *ao = approval_find(o, n->approvals[i].name, &ai);
			if (ao == NULL || (bo != NULL && bi < ai && !widened) || !may_meet(bn, ao))
				continue;
			const char *app, *env, *app2, *env2;
			snprintf(base, sizeof base, "$.approval_policies[name=%s]", bn->name);
			struct asink s = { c, 0, base, NULL, NULL, 0 };
			approval_compare(&s, ao, bn);
			if (s.count == 0)
				continue;
			approval_scope(bn, &app, &env);
			approval_scope(ao, &app2, &env2);
			scope_join(app, env, app2, env2, &app, &env);
			add(c, POL_WEAK_PROTECTION, app, env, -1, -1, base,
			    "approval policy '%s' now comes before '%s' and decides deployments both "
			    "match, with %d rule(s) weaker than '%s' had (the first match decides)",
			    bn->name, ao->name, s.count, ao->name);
		}
	}
}

/* ---- entry points ---- */

int pol_weaken(const struct pol_policy *old, const struct pol_policy *next,
	       struct pol_weaken *out, char *err, size_t errlen)
{
	struct ctx c = { old, next, out, 0 };
	memset(out, 0, sizeof *out);
	groups(&c);
	roles(&c);
	bindings(&c);
	guardrails(&c);
	approvals(&c);
	if (c.oom) {
		pol_weaken_free(out);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	return 0;
}

void pol_weaken_free(struct pol_weaken *w)
{
	if (w == NULL)
		return;
	free(w->v);
	memset(w, 0, sizeof *w);
}
