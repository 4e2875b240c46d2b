/*
 * doc.c - the policy document: parse (jansson), validate whole with the JSON
 * path of the first error, and compile into an immutable, indexed struct
 * pol_policy together with the built-ins of authorization.md.
 *
 * Strings of the compiled policy point into the jansson document, which the
 * policy owns; derived strings (prefixes) live in a small arena freed with
 * it. Nothing here touches the network or the database.
 */
#include "policy.h"
#include "err.h"
#include "spiffe.h"

#include <openssl/sha.h>

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ------------------------------------------------------------------ */
/* string arena                                                        */

struct ablock {
	struct ablock *next;
	size_t used, cap;
	_Alignas(8) char data[];
};

/* Returns n zeroed bytes, 8-aligned, freed with the policy. */
static void *arena_alloc(struct pol_policy *p, size_t n)
{
	struct ablock *b = p->arena;
	n = (n + 7) & ~(size_t)7;
	if (b == NULL || b->cap - b->used < n) {
		size_t cap = n > 8192 ? n : 8192;
		b = malloc(sizeof *b + cap);
		if (b == NULL)
			return NULL;
		b->next = p->arena;
		b->used = 0;
		b->cap = cap;
		p->arena = b;
	}
	char *d = b->data + b->used;
	memset(d, 0, n);
	b->used += n;
	return d;
}

static char *arena_strndup(struct pol_policy *p, const char *s, size_t n)
{
	char *d = arena_alloc(p, n + 1);
	if (d != NULL)
		memcpy(d, s, n);
	return d;
}

static void arena_free(void *a)
{
	struct ablock *b = a;
	while (b != NULL) {
		struct ablock *n = b->next;
		free(b);
		b = n;
	}
}

/* ------------------------------------------------------------------ */
/* string -> int list index (open addressing)                          */

struct ient {
	const char *key;
	uint64_t h;
	int *v;
	size_t n, cap;
};

struct pol_index {
	size_t cap, used;
	struct ient *e;
};

static uint64_t shash(const char *s)
{
	uint64_t h = 1469598103934665603ULL;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ULL;
	}
	return h;
}

static struct pol_index *idx_new(void)
{
	struct pol_index *ix = calloc(1, sizeof *ix);
	if (ix == NULL)
		return NULL;
	ix->cap = 64;
	ix->e = calloc(ix->cap, sizeof *ix->e);
	if (ix->e == NULL) {
		free(ix);
		return NULL;
	}
	return ix;
}

static void idx_free(struct pol_index *ix)
{
	if (ix == NULL)
		return;
	for (size_t i = 0; i < ix->cap; i++)
		free(ix->e[i].v);
	free(ix->e);
	free(ix);
}

static struct ient *idx_slot(struct ient *e, size_t cap, const char *key, uint64_t h)
{
	for (size_t i = 0;; i++) {
		struct ient *s = &e[(h + i) & (cap - 1)];
		if (s->key == NULL || (s->h == h && strcmp(s->key, key) == 0))
			return s;
	}
}

static int idx_add(struct pol_index *ix, const char *key, int v)
{
	if ((ix->used + 1) * 2 > ix->cap) {
		size_t ncap = ix->cap * 2;
		struct ient *ne = calloc(ncap, sizeof *ne);
		if (ne == NULL)
			return SW_ENOMEM;
		for (size_t i = 0; i < ix->cap; i++)
			if (ix->e[i].key != NULL)
				*idx_slot(ne, ncap, ix->e[i].key, ix->e[i].h) = ix->e[i];
		free(ix->e);
		ix->e = ne;
		ix->cap = ncap;
	}
	uint64_t h = shash(key);
	struct ient *s = idx_slot(ix->e, ix->cap, key, h);
	if (s->key == NULL) {
		s->key = key;
		s->h = h;
		ix->used++;
	}
	if (s->n == s->cap) {
		size_t nc = s->cap ? s->cap * 2 : 2;
		int *nv = realloc(s->v, nc * sizeof *nv);
		if (nv == NULL)
			return SW_ENOMEM;
		s->v = nv;
		s->cap = nc;
	}
	s->v[s->n++] = v;
	return 0;
}

const int *pol_index_get(const struct pol_index *ix, const char *key, size_t *n)
{
	*n = 0;
	if (ix == NULL || key == NULL)
		return NULL;
	uint64_t h = shash(key);
	for (size_t i = 0;; i++) {
		const struct ient *s = &ix->e[(h + i) & (ix->cap - 1)];
		if (s->key == NULL)
			return NULL;
		if (s->h == h && strcmp(s->key, key) == 0) {
			*n = s->n;
			return s->v;
		}
	}
}

/* ------------------------------------------------------------------ */
/* vocabulary and small parsers                                        */

struct vocab {
	const char *kind;
	const char *actions[10];
};

/* proto/slipway/v1/authorization.md; `escalate` is valid on every kind. */
static const struct vocab vocab[] = {
	{ "audit", { "read", "checkpoint" } },
	{ "release", { "push", "read" } },
	{ "artifact", { "pin", "gc", "read" } },
	{ "policy", { "authorize", "read", "apply", "explain" } },
	{ "deployment",
	  { "evaluate", "approve", "deploy", "read", "cancel", "pause", "resume", "rollback" } },
	{ "agent", { "read", "run", "enroll", "bind" } },
	{ "secret", { "write", "read", "admin", "rotate", "grant", "fetch" } },
};

static int kind_known(const char *kind)
{
	for (size_t i = 0; i < sizeof vocab / sizeof vocab[0]; i++)
		if (strcmp(vocab[i].kind, kind) == 0)
			return 1;
	return 0;
}

int pol_vocab_ok(const char *kind, const char *action)
{
	if (strcmp(action, "escalate") == 0)
		return strcmp(kind, "*") == 0 || kind_known(kind);
	for (size_t i = 0; i < sizeof vocab / sizeof vocab[0]; i++) {
		if (strcmp(kind, "*") != 0 && strcmp(vocab[i].kind, kind) != 0)
			continue;
		for (size_t j = 0; j < 10 && vocab[i].actions[j] != NULL; j++)
			if (strcmp(vocab[i].actions[j], action) == 0)
				return 1;
	}
	return 0;
}

int pol_action_writes(const char *action)
{
	return strcmp(action, "read") != 0 && strcmp(action, "explain") != 0;
}

int pol_list_glob(const struct pol_list *l, const char *s)
{
	if (l->n == 0)
		return 1;
	for (size_t i = 0; i < l->n; i++)
		if (pol_glob(l->v[i], s))
			return 1;
	return 0;
}

int pol_glob(const char *pat, const char *s)
{
	const char *star = NULL, *retry = NULL;
	while (*s) {
		if (*pat == '*') {
			star = ++pat;
			retry = s;
		} else if (*pat == '?' || *pat == *s) {
			pat++;
			s++;
		} else if (star != NULL) {
			pat = star;
			s = ++retry;
		} else {
			return 0;
		}
	}
	while (*pat == '*')
		pat++;
	return *pat == '\0';
}

int pol_parse_duration(const char *s, int64_t *ms)
{
	const char *p = s;
	int64_t v = 0;
	if (!isdigit((unsigned char)*p))
		return SW_EINVAL;
	while (isdigit((unsigned char)*p)) {
		if (v > INT64_MAX / 10 - 10)
			return SW_EINVAL;
		v = v * 10 + (*p++ - '0');
	}
	int64_t mul;
	if (strcmp(p, "ms") == 0)
		mul = 1;
	else if (strcmp(p, "s") == 0)
		mul = 1000;
	else if (strcmp(p, "m") == 0)
		mul = 60000;
	else if (strcmp(p, "h") == 0)
		mul = 3600000;
	else if (strcmp(p, "d") == 0)
		mul = 86400000;
	else
		return SW_EINVAL;
	if (v > INT64_MAX / mul)
		return SW_EINVAL;
	*ms = v * mul;
	return 0;
}

/* Reads exactly n digits. */
static int digits(const char **p, int n, int *out)
{
	int v = 0;
	for (int i = 0; i < n; i++) {
		if (!isdigit((unsigned char)(*p)[i]))
			return -1;
		v = v * 10 + ((*p)[i] - '0');
	}
	*p += n;
	*out = v;
	return 0;
}

static int days_in_month(int y, int m)
{
	static const int d[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0))
		return 29;
	return d[m - 1];
}

/* Days since 1970-01-01 of a civil date (proleptic Gregorian). */
static int64_t days_from_civil(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/*
 * Parses "YYYY-MM-DD", "YYYY-MM-DDTHH:MM" or "YYYY-MM-DDTHH:MM:SS" with an
 * optional zone ("Z" or "+hh:mm") into seconds (wall clock as if UTC) and
 * reports whether a zone was given (and its offset in seconds).
 */
static int parse_datetime(const char *s, int64_t *secs, int *has_zone, int *zone_off)
{
	const char *p = s;
	int y, mo, d, h = 0, mi = 0, se = 0;
	*has_zone = 0;
	*zone_off = 0;
	if (digits(&p, 4, &y) || *p++ != '-' || digits(&p, 2, &mo) || *p++ != '-' ||
	    digits(&p, 2, &d))
		return SW_EINVAL;
	if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo))
		return SW_EINVAL;
	if (*p == 'T' || *p == 't' || *p == ' ') {
		p++;
		if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &mi))
			return SW_EINVAL;
		if (*p == ':') {
			p++;
			if (digits(&p, 2, &se))
				return SW_EINVAL;
			if (*p == '.') {
				p++;
				if (!isdigit((unsigned char)*p))
					return SW_EINVAL;
				while (isdigit((unsigned char)*p))
					p++;
			}
		}
		if (h > 23 || mi > 59 || se > 60)
			return SW_EINVAL;
	}
	if (*p == 'Z' || *p == 'z') {
		*has_zone = 1;
		p++;
	} else if (*p == '+' || *p == '-') {
		int sign = *p++ == '-' ? -1 : 1, oh, om;
		if (digits(&p, 2, &oh) || *p++ != ':' || digits(&p, 2, &om) || oh > 23 || om > 59)
			return SW_EINVAL;
		*has_zone = 1;
		*zone_off = sign * (oh * 3600 + om * 60);
	}
	if (*p != '\0')
		return SW_EINVAL;
	*secs = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + se;
	return 0;
}

int pol_parse_time(const char *s, int64_t *ms)
{
	int64_t secs;
	int hz, off;
	if (parse_datetime(s, &secs, &hz, &off) != 0 || !hz)
		return SW_EINVAL;
	*ms = (secs - off) * 1000;
	return 0;
}

static int name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > POL_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!(isalnum((unsigned char)c) || c == '-' || c == '_' || c == '.'))
			return 0;
	}
	return 1;
}

static int ident_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 32 || !(s[0] >= 'a' && s[0] <= 'z'))
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-' ||
		      s[i] == '_'))
			return 0;
	return 1;
}

static int glob_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 255)
		return 0;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c == 0x7f)
			return 0;
	}
	return 1;
}

int pol_check_principal(const char *id, const char *td, int allow_prefix, char *err,
			size_t errlen)
{
	size_t n = strlen(id);
	if (allow_prefix && n >= 2 && id[n - 1] == '*' && id[n - 2] == '/') {
		char buf[SPIFFE_ID_MAX + 1];
		if (n - 2 > SPIFFE_ID_MAX)
			return sw_errf(err, errlen, SW_EINVAL, "pattern too long");
		memcpy(buf, id, n - 2);
		buf[n - 2] = '\0';
		char whole[300];
		snprintf(whole, sizeof whole, "spiffe://%s", td);
		if (strcmp(buf, whole) == 0)
			return 0;
		if (spiffe_parse(buf, td, NULL, err, errlen) != 0)
			return SW_EINVAL;
		return 0;
	}
	if (strchr(id, '*') != NULL)
		return sw_errf(err, errlen, SW_EINVAL,
			       "a pattern may only end in '/*' (a prefix at a '/' boundary)");
	return spiffe_parse(id, td, NULL, err, errlen);
}

/* ------------------------------------------------------------------ */
/* built-ins                                                           */

#define L(...) { sizeof((const char *[]){ __VA_ARGS__ }) / sizeof(const char *), \
		 (const char *[]){ __VA_ARGS__ } }

static struct pol_rule r_admin[] = { { .actions = L("*"), .kinds = L("*") } };
static struct pol_rule r_deployer[] = {
	{ .actions = L("deploy", "read", "cancel", "pause", "resume", "rollback"),
	  .kinds = L("deployment") },
	{ .actions = L("read"), .kinds = L("release", "artifact", "agent") },
};
static struct pol_rule r_builder[] = { { .actions = L("push", "read"), .kinds = L("release") } };
static struct pol_rule r_approver[] = {
	{ .actions = L("approve", "read"), .kinds = L("deployment") },
	{ .actions = L("read"), .kinds = L("release") },
};
static struct pol_rule r_auditor[] = { { .actions = L("read"), .kinds = L("*") } };
static struct pol_rule r_service[] = {
	{ .actions = L("authorize", "read"), .kinds = L("policy") },
	{ .actions = L("evaluate"), .kinds = L("deployment") },
	{ .actions = L("read"), .kinds = L("release") },
	{ .actions = L("pin"), .kinds = L("artifact") },
	{ .actions = L("read"), .kinds = L("agent") },
};
/* Only the orchestrator grants secrets, and it must know which secrets a
 * scope has to grant them (names and versions, never values). */
static struct pol_rule r_orchestrator[] = {
	{ .actions = L("grant", "read"), .kinds = L("secret") },
	{ .actions = L("bind"), .kinds = L("agent") },
};
static struct pol_rule r_agent[] = {
	{ .actions = L("run"), .kinds = L("agent") },
	{ .actions = L("read"), .kinds = L("release") },
	{ .actions = L("fetch"), .kinds = L("secret") },
};

#define ROLE(n, d, r) { n, d, 1, sizeof r / sizeof r[0], r }
static const struct pol_role builtin_roles[] = {
	ROLE("admin", "every action on every kind", r_admin),
	ROLE("deployer", "deploy and operate deployments; read releases, artifacts, agents",
	     r_deployer),
	ROLE("builder", "push and read releases", r_builder),
	ROLE("approver", "approve or reject deployments; read releases", r_approver),
	ROLE("auditor", "read every kind, audit included; never writes", r_auditor),
	ROLE("service", "what Slipway services need of each other", r_service),
	ROLE("orchestrator", "what the orchestrator alone needs: grant secrets (and list their names), pin agents' sealing keys",
	     r_orchestrator),
	ROLE("agent", "what deployment agents need", r_agent),
};
#define NBUILTIN_ROLES (sizeof builtin_roles / sizeof builtin_roles[0])

static const struct pol_guard builtin_guard = {
	.name = "auditors-read-only",
	.description = "principals holding the auditor role never get a write action",
	.builtin = 1,
	.forbid = { .actions = L("*"), .except_actions = L("read"), .kinds = L("*") },
	.roles = L("auditor"),
};

/* ------------------------------------------------------------------ */
/* validation context                                                  */

struct vctx {
	struct pol_policy *p;
	const struct pol_builtin_opts *b;
	char *err;
	size_t errlen;
};

static int verr(struct vctx *v, const char *path, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int verr(struct vctx *v, const char *path, const char *fmt, ...)
{
	char msg[400];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	return sw_errf(v->err, v->errlen, SW_EINVAL, "%s: %s", path, msg);
}

static int check_keys(struct vctx *v, json_t *obj, const char *path, const char *const *allowed)
{
	const char *k;
	json_t *val;
	json_object_foreach(obj, k, val) {
		int ok = 0;
		for (size_t i = 0; allowed[i] != NULL && !ok; i++)
			ok = strcmp(allowed[i], k) == 0;
		if (!ok) {
			char p[300];
			snprintf(p, sizeof p, "%s.%s", path, k);
			return verr(v, p, "unknown field");
		}
	}
	return 0;
}

static int get_string(struct vctx *v, json_t *obj, const char *key, const char *path,
		      int required, const char **out)
{
	json_t *j = json_object_get(obj, key);
	char p[300];
	snprintf(p, sizeof p, "%s.%s", path, key);
	*out = NULL;
	if (j == NULL) {
		if (required)
			return verr(v, p, "required");
		return 0;
	}
	if (!json_is_string(j))
		return verr(v, p, "must be a string");
	if (strlen(json_string_value(j)) != json_string_length(j))
		return verr(v, p, "must not contain NUL");
	if (json_string_length(j) > 1024)
		return verr(v, p, "longer than 1024 bytes");
	*out = json_string_value(j);
	return 0;
}

enum list_kind { LK_ACTION, LK_KIND, LK_GLOB, LK_NAME, LK_PRINCIPAL };

/* Reads an array of strings into l (pointing into the document). */
static int get_list(struct vctx *v, json_t *obj, const char *key, const char *path, int required,
		    enum list_kind lk, struct pol_list *l)
{
	json_t *j = json_object_get(obj, key);
	char p[300];
	snprintf(p, sizeof p, "%s.%s", path, key);
	l->n = 0;
	l->v = NULL;
	if (j == NULL) {
		if (required)
			return verr(v, p, "required");
		return 0;
	}
	if (!json_is_array(j))
		return verr(v, p, "must be an array of strings");
	size_t n = json_array_size(j);
	if (required && n == 0)
		return verr(v, p, "must not be empty");
	if (n > POL_MAX_LIST)
		return verr(v, p, "more than %d entries", POL_MAX_LIST);
	l->v = arena_alloc(v->p, (n ? n : 1) * sizeof(char *));
	if (l->v == NULL)
		return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		json_t *e = json_array_get(j, i);
		char ep[320];
		snprintf(ep, sizeof ep, "%s[%zu]", p, i);
		if (!json_is_string(e) || strlen(json_string_value(e)) != json_string_length(e))
			return verr(v, ep, "must be a string");
		const char *s = json_string_value(e);
		char why[200];
		switch (lk) {
		case LK_ACTION:
			if (strcmp(s, "*") != 0 && !ident_ok(s))
				return verr(v, ep, "'%s' is not an action name", s);
			break;
		case LK_KIND:
			if (strcmp(s, "*") != 0 && !kind_known(s))
				return verr(v, ep, "unknown resource kind '%s'", s);
			break;
		case LK_GLOB:
			if (!glob_ok(s))
				return verr(v, ep, "not a valid pattern");
			break;
		case LK_NAME:
			if (!name_ok(s))
				return verr(v, ep, "'%s' is not a valid name", s);
			break;
		case LK_PRINCIPAL:
			if (pol_check_principal(s, v->b->trust_domain, 1, why, sizeof why) != 0)
				return verr(v, ep, "'%s': %s", s, why);
			break;
		}
		l->v[i] = s;
	}
	l->n = n;
	return 0;
}

/* Every action must exist for at least one of the kinds. */
static int check_vocab(struct vctx *v, const struct pol_rule *r, const char *path)
{
	for (size_t i = 0; i < r->actions.n; i++) {
		const char *a = r->actions.v[i];
		if (strcmp(a, "*") == 0)
			continue;
		int ok = 0;
		for (size_t k = 0; k < r->kinds.n && !ok; k++)
			ok = pol_vocab_ok(r->kinds.v[k], a);
		if (!ok) {
			char p[320];
			snprintf(p, sizeof p, "%s.actions[%zu]", path, i);
			return verr(v, p, "action '%s' does not exist for the rule's kinds", a);
		}
	}
	return 0;
}

static const char *const rule_keys[] = { "actions", "kinds", "apps", "environments", "names",
					 NULL };

static int parse_rule(struct vctx *v, json_t *j, const char *path, struct pol_rule *r, int guard)
{
	static const char *const guard_keys[] = { "actions", "except_actions", "kinds", "apps",
						  "environments", "names", NULL };
	int rc;
	if (!json_is_object(j))
		return verr(v, path, "must be an object");
	if ((rc = check_keys(v, j, path, guard ? guard_keys : rule_keys)) != 0 ||
	    (rc = get_list(v, j, "actions", path, 1, LK_ACTION, &r->actions)) != 0 ||
	    (rc = get_list(v, j, "kinds", path, 1, LK_KIND, &r->kinds)) != 0 ||
	    (rc = get_list(v, j, "apps", path, 0, LK_GLOB, &r->apps)) != 0 ||
	    (rc = get_list(v, j, "environments", path, 0, LK_GLOB, &r->envs)) != 0 ||
	    (rc = get_list(v, j, "names", path, 0, LK_GLOB, &r->names)) != 0)
		return rc;
	if (guard &&
	    (rc = get_list(v, j, "except_actions", path, 0, LK_ACTION, &r->except_actions)) != 0)
		return rc;
	return check_vocab(v, r, path);
}

/* scope: absent or {} = global; {"app"}; {"app", "environment"}. */
static int parse_scope(struct vctx *v, json_t *obj, const char *path, const char **app,
		       const char **env)
{
	static const char *const keys[] = { "app", "environment", NULL };
	json_t *j = json_object_get(obj, "scope");
	char p[300];
	int rc;
	*app = *env = NULL;
	if (j == NULL)
		return 0;
	snprintf(p, sizeof p, "%s.scope", path);
	if (!json_is_object(j))
		return verr(v, p, "must be an object ({}, {\"app\"} or {\"app\", \"environment\"})");
	if ((rc = check_keys(v, j, p, keys)) != 0 || (rc = get_string(v, j, "app", p, 0, app)) != 0 ||
	    (rc = get_string(v, j, "environment", p, 0, env)) != 0)
		return rc;
	char q[320];
	if (*app != NULL && !name_ok(*app)) {
		snprintf(q, sizeof q, "%s.app", p);
		return verr(v, q, "'%s' is not a valid app name", *app);
	}
	if (*env != NULL && !name_ok(*env)) {
		snprintf(q, sizeof q, "%s.environment", p);
		return verr(v, q, "'%s' is not a valid environment name", *env);
	}
	if (*env != NULL && *app == NULL) {
		snprintf(q, sizeof q, "%s.environment", p);
		return verr(v, q, "an environment scope needs an app");
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* sections                                                            */

static int parse_groups(struct vctx *v, json_t *doc)
{
	struct pol_policy *p = v->p;
	json_t *j = json_object_get(doc, "groups");
	if (j == NULL)
		return 0;
	if (!json_is_object(j))
		return verr(v, "$.groups", "must be an object of group name -> array of principals");
	size_t n = json_object_size(j);
	if (n > POL_MAX_GROUPS)
		return verr(v, "$.groups", "more than %d groups", POL_MAX_GROUPS);
	p->groups = calloc(n ? n : 1, sizeof *p->groups);
	if (p->groups == NULL)
		return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
	const char *k;
	json_t *members;
	json_object_foreach(j, k, members) {
		char path[300];
		snprintf(path, sizeof path, "$.groups.%s", k);
		if (!name_ok(k))
			return verr(v, path, "'%s' is not a valid group name", k);
		if (!json_is_array(members))
			return verr(v, path, "must be an array of principals");
		size_t m = json_array_size(members);
		if (m > POL_MAX_MEMBERS)
			return verr(v, path, "more than %d members", POL_MAX_MEMBERS);
		struct pol_group *g = &p->groups[p->ngroups];
		g->name = k;
		g->m = calloc(m ? m : 1, sizeof *g->m);
		if (g->m == NULL)
			return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
		p->ngroups++;
		for (size_t i = 0; i < m; i++) {
			json_t *e = json_array_get(members, i);
			char ep[320], why[200];
			snprintf(ep, sizeof ep, "%s[%zu]", path, i);
			if (!json_is_string(e))
				return verr(v, ep, "must be a string");
			const char *s = json_string_value(e);
			if (pol_check_principal(s, v->b->trust_domain, 1, why, sizeof why) != 0)
				return verr(v, ep, "'%s': %s", s, why);
			size_t sl = strlen(s);
			struct pol_member *mm = &g->m[g->n++];
			mm->prefix = s[sl - 1] == '*';
			mm->id = mm->prefix ? arena_strndup(p, s, sl - 1) : s;
			if (mm->id == NULL)
				return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
		}
	}
	return 0;
}

int pol_role_find(const struct pol_policy *p, const char *name)
{
	size_t n;
	const int *v = pol_index_get(p->role_by_name, name, &n);
	return n ? v[0] : -1;
}

int pol_group_find(const struct pol_policy *p, const char *name)
{
	size_t n;
	const int *v = pol_index_get(p->group_by_name, name, &n);
	return n ? v[0] : -1;
}

int pol_in_group(const struct pol_policy *p, int g, const char *principal)
{
	const struct pol_group *gr = &p->groups[g];
	for (size_t i = 0; i < gr->n; i++) {
		const struct pol_member *m = &gr->m[i];
		if (m->prefix ? strncmp(principal, m->id, strlen(m->id)) == 0
			      : strcmp(principal, m->id) == 0)
			return 1;
	}
	return 0;
}

static int parse_roles(struct vctx *v, json_t *doc)
{
	static const char *const keys[] = { "name", "description", "rules", NULL };
	struct pol_policy *p = v->p;
	json_t *j = json_object_get(doc, "roles");
	size_t n = 0;
	int rc;
	if (j != NULL && !json_is_array(j))
		return verr(v, "$.roles", "must be an array");
	n = j ? json_array_size(j) : 0;
	if (n > POL_MAX_ROLES)
		return verr(v, "$.roles", "more than %d roles", POL_MAX_ROLES);
	p->roles = calloc(NBUILTIN_ROLES + n, sizeof *p->roles);
	if (p->roles == NULL)
		return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
	for (size_t i = 0; i < NBUILTIN_ROLES; i++) {
		p->roles[p->nroles] = builtin_roles[i];
		if (idx_add(p->role_by_name, builtin_roles[i].name, (int)p->nroles) != 0)
			return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
		p->nroles++;
	}
	for (size_t i = 0; i < n; i++) {
		json_t *r = json_array_get(j, i);
		char path[64];
		snprintf(path, sizeof path, "$.roles[%zu]", i);
		if (!json_is_object(r))
			return verr(v, path, "must be an object");
		struct pol_role *role = &p->roles[p->nroles];
		if ((rc = check_keys(v, r, path, keys)) != 0 ||
		    (rc = get_string(v, r, "name", path, 1, &role->name)) != 0 ||
		    (rc = get_string(v, r, "description", path, 0, &role->description)) != 0)
			return rc;
		char np[80];
		snprintf(np, sizeof np, "%s.name", path);
		if (!name_ok(role->name))
			return verr(v, np, "'%s' is not a valid role name", role->name);
		if (pol_role_find(p, role->name) >= 0)
			return verr(v, np, "role '%s' is %s", role->name,
				    pol_role_find(p, role->name) < (int)NBUILTIN_ROLES
					    ? "built in (reserved)"
					    : "defined twice");
		json_t *rules = json_object_get(r, "rules");
		char rp[80];
		snprintf(rp, sizeof rp, "%s.rules", path);
		if (!json_is_array(rules) || json_array_size(rules) == 0)
			return verr(v, rp, "required: a non-empty array of rules");
		if (json_array_size(rules) > POL_MAX_RULES)
			return verr(v, rp, "more than %d rules", POL_MAX_RULES);
		role->rules = calloc(json_array_size(rules), sizeof *role->rules);
		if (role->rules == NULL)
			return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
		p->nroles++;
		for (size_t k = 0; k < json_array_size(rules); k++) {
			char kp[128];
			snprintf(kp, sizeof kp, "%s[%zu]", rp, k);
			if ((rc = parse_rule(v, json_array_get(rules, k), kp, &role->rules[k], 0)) != 0)
				return rc;
			role->nrules++;
		}
		if (idx_add(p->role_by_name, role->name, (int)(p->nroles - 1)) != 0)
			return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
	}
	return 0;
}

static int add_binding(struct vctx *v, const char *label, int role, enum pol_subject sk,
		       const char *subject, const char *app, const char *env, int64_t exp)
{
	struct pol_policy *p = v->p;
	struct pol_binding *b = &p->bindings[p->nbindings];
	snprintf(b->label, sizeof b->label, "%s", label);
	b->role = &p->roles[role];
	b->role_index = role;
	b->skind = sk;
	b->subject = subject;
	b->app = app;
	b->env = env;
	b->expires_ms = exp;
	p->nbindings++;
	return 0;
}

static int parse_bindings(struct vctx *v, json_t *doc)
{
	static const char *const keys[] = { "role", "principal", "group", "scope", "expires",
					    "description", NULL };
	struct pol_policy *p = v->p;
	json_t *j = json_object_get(doc, "bindings");
	int rc;
	if (j != NULL && !json_is_array(j))
		return verr(v, "$.bindings", "must be an array");
	size_t n = j ? json_array_size(j) : 0;
	if (n > POL_MAX_BINDINGS)
		return verr(v, "$.bindings", "more than %d bindings", POL_MAX_BINDINGS);
	p->bindings = calloc(3 + v->b->nadmins + n, sizeof *p->bindings);
	if (p->bindings == NULL)
		return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");

	/* Built-in bindings: service and agent by prefix, the orchestrator,
	 * bootstrap admins. */
	char buf[300];
	snprintf(buf, sizeof buf, "spiffe://%s/service/", v->b->trust_domain);
	p->prefix_service = strdup(buf);
	snprintf(buf, sizeof buf, "spiffe://%s/agent/", v->b->trust_domain);
	p->prefix_agent = strdup(buf);
	snprintf(buf, sizeof buf, "spiffe://%s/service/orchestrator", v->b->trust_domain);
	p->orchestrator = strdup(buf);
	if (p->prefix_service == NULL || p->prefix_agent == NULL || p->orchestrator == NULL)
		return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
	add_binding(v, "builtin:service", pol_role_find(p, "service"), POL_SUBJ_PREFIX,
		    p->prefix_service, NULL, NULL, 0);
	add_binding(v, "builtin:orchestrator", pol_role_find(p, "orchestrator"),
		    POL_SUBJ_PRINCIPAL, p->orchestrator, NULL, NULL, 0);
	add_binding(v, "builtin:agent", pol_role_find(p, "agent"), POL_SUBJ_PREFIX,
		    p->prefix_agent, NULL, NULL, 0);
	for (size_t i = 0; i < p->nadmins; i++)
		add_binding(v, "builtin:bootstrap-admin", pol_role_find(p, "admin"),
			    POL_SUBJ_PRINCIPAL, p->admins[i], NULL, NULL, 0);

	for (size_t i = 0; i < n; i++) {
		json_t *b = json_array_get(j, i);
		char path[64], q[100];
		const char *role, *principal, *group, *app, *env, *exp, *desc;
		int64_t exp_ms = 0;
		snprintf(path, sizeof path, "$.bindings[%zu]", i);
		if (!json_is_object(b))
			return verr(v, path, "must be an object");
		if ((rc = check_keys(v, b, path, keys)) != 0 ||
		    (rc = get_string(v, b, "role", path, 1, &role)) != 0 ||
		    (rc = get_string(v, b, "principal", path, 0, &principal)) != 0 ||
		    (rc = get_string(v, b, "group", path, 0, &group)) != 0 ||
		    (rc = get_string(v, b, "expires", path, 0, &exp)) != 0 ||
		    (rc = get_string(v, b, "description", path, 0, &desc)) != 0 ||
		    (rc = parse_scope(v, b, path, &app, &env)) != 0)
			return rc;
		int ri = pol_role_find(p, role);
		if (ri < 0) {
			snprintf(q, sizeof q, "%s.role", path);
			return verr(v, q, "no role named '%s'", role);
		}
		if ((principal == NULL) == (group == NULL))
			return verr(v, path, "needs exactly one of \"principal\" or \"group\"");
		enum pol_subject sk = POL_SUBJ_GROUP;
		const char *subject = group;
		if (principal != NULL) {
			char why[200];
			snprintf(q, sizeof q, "%s.principal", path);
			if (pol_check_principal(principal, v->b->trust_domain, 1, why, sizeof why) != 0)
				return verr(v, q, "'%s': %s", principal, why);
			size_t sl = strlen(principal);
			if (principal[sl - 1] == '*') {
				sk = POL_SUBJ_PREFIX;
				subject = arena_strndup(p, principal, sl - 1);
				if (subject == NULL)
					return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
			} else {
				sk = POL_SUBJ_PRINCIPAL;
				subject = principal;
			}
		} else if (pol_group_find(p, group) < 0) {
			snprintf(q, sizeof q, "%s.group", path);
			return verr(v, q, "no group named '%s'", group);
		}
		if (exp != NULL && pol_parse_time(exp, &exp_ms) != 0) {
			snprintf(q, sizeof q, "%s.expires", path);
			return verr(v, q, "'%s' is not an RFC 3339 time (2026-12-31T00:00:00Z)", exp);
		}
		char label[40];
		snprintf(label, sizeof label, "bindings[%zu]", i);
		add_binding(v, label, ri, sk, subject, app, env, exp_ms);
	}
	return 0;
}

static int parse_guards(struct vctx *v, json_t *doc)
{
	static const char *const keys[] = { "name", "description", "forbid", "principals",
					    "groups", "roles", "scope", NULL };
	struct pol_policy *p = v->p;
	json_t *j = json_object_get(doc, "guardrails");
	int rc;
	if (j != NULL && !json_is_array(j))
		return verr(v, "$.guardrails", "must be an array");
	size_t n = j ? json_array_size(j) : 0;
	if (n > POL_MAX_GUARDS)
		return verr(v, "$.guardrails", "more than %d guardrails", POL_MAX_GUARDS);
	p->guards = calloc(1 + n, sizeof *p->guards);
	if (p->guards == NULL)
		return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
	p->guards[p->nguards++] = builtin_guard;
	for (size_t i = 0; i < n; i++) {
		json_t *g = json_array_get(j, i);
		char path[64], q[100];
		snprintf(path, sizeof path, "$.guardrails[%zu]", i);
		if (!json_is_object(g))
			return verr(v, path, "must be an object");
		struct pol_guard *gd = &p->guards[p->nguards];
		if ((rc = check_keys(v, g, path, keys)) != 0 ||
		    (rc = get_string(v, g, "name", path, 1, &gd->name)) != 0 ||
		    (rc = get_string(v, g, "description", path, 0, &gd->description)) != 0 ||
		    (rc = get_list(v, g, "principals", path, 0, LK_PRINCIPAL, &gd->principals)) != 0 ||
		    (rc = get_list(v, g, "groups", path, 0, LK_NAME, &gd->groups)) != 0 ||
		    (rc = get_list(v, g, "roles", path, 0, LK_NAME, &gd->roles)) != 0 ||
		    (rc = parse_scope(v, g, path, &gd->app, &gd->env)) != 0)
			return rc;
		snprintf(q, sizeof q, "%s.name", path);
		if (!name_ok(gd->name))
			return verr(v, q, "'%s' is not a valid guardrail name", gd->name);
		for (size_t k = 0; k < p->nguards; k++)
			if (strcmp(p->guards[k].name, gd->name) == 0)
				return verr(v, q, "guardrail '%s' is %s", gd->name,
					    k == 0 ? "built in (reserved)" : "defined twice");
		for (size_t k = 0; k < gd->groups.n; k++)
			if (pol_group_find(p, gd->groups.v[k]) < 0) {
				snprintf(q, sizeof q, "%s.groups[%zu]", path, k);
				return verr(v, q, "no group named '%s'", gd->groups.v[k]);
			}
		for (size_t k = 0; k < gd->roles.n; k++)
			if (pol_role_find(p, gd->roles.v[k]) < 0) {
				snprintf(q, sizeof q, "%s.roles[%zu]", path, k);
				return verr(v, q, "no role named '%s'", gd->roles.v[k]);
			}
		json_t *f = json_object_get(g, "forbid");
		snprintf(q, sizeof q, "%s.forbid", path);
		if (f == NULL)
			return verr(v, q, "required");
		if ((rc = parse_rule(v, f, q, &gd->forbid, 1)) != 0)
			return rc;
		p->nguards++;
	}
	return 0;
}

/* ---- approval policies ---- */

static int parse_quorum(struct vctx *v, json_t *obj, const char *path, struct pol_quorum *q,
			uint32_t def_required)
{
	json_t *r = json_object_get(obj, "required");
	json_t *g = json_object_get(obj, "groups");
	char p[300];
	q->required = def_required;
	if (r != NULL) {
		snprintf(p, sizeof p, "%s.required", path);
		if (!json_is_integer(r) || json_integer_value(r) < 0 || json_integer_value(r) > 100)
			return verr(v, p, "must be an integer from 0 to 100");
		q->required = (uint32_t)json_integer_value(r);
	}
	if (g != NULL) {
		snprintf(p, sizeof p, "%s.groups", path);
		if (!json_is_object(g))
			return verr(v, p, "must be an object of group name -> count");
		size_t n = json_object_size(g);
		if (n > 32)
			return verr(v, p, "more than 32 groups");
		q->groups = (const char **)calloc(n ? n : 1, sizeof *q->groups);
		q->counts = calloc(n ? n : 1, sizeof *q->counts);
		if (q->groups == NULL || q->counts == NULL)
			return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
		const char *k;
		json_t *c;
		uint32_t sum = 0;
		json_object_foreach(g, k, c) {
			char gp[340];
			snprintf(gp, sizeof gp, "%s.%s", p, k);
			if (pol_group_find(v->p, k) < 0)
				return verr(v, gp, "no group named '%s'", k);
			if (!json_is_integer(c) || json_integer_value(c) < 1 ||
			    json_integer_value(c) > 100)
				return verr(v, gp, "must be an integer from 1 to 100");
			q->groups[q->ngroups] = k;
			q->counts[q->ngroups++] = (uint32_t)json_integer_value(c);
			sum += (uint32_t)json_integer_value(c);
		}
		/* Each approver counts for one group at most, so the total is at
		 * least the sum of the group counts. */
		if (q->required < sum)
			q->required = sum;
	}
	return 0;
}

static const char *const wdays[] = { "mon", "tue", "wed", "thu", "fri", "sat", "sun" };

/* "fri 18:00" -> minute of the week. */
static int parse_weekly_point(const char *s, int *out)
{
	int d = -1, h, m;
	for (int i = 0; i < 7; i++)
		if (strncasecmp(s, wdays[i], 3) == 0)
			d = i;
	if (d < 0 || s[3] != ' ')
		return SW_EINVAL;
	const char *p = s + 4;
	if (digits(&p, 2, &h) || *p++ != ':' || digits(&p, 2, &m) || *p != '\0' || h > 24 ||
	    m > 59 || (h == 24 && m != 0))
		return SW_EINVAL;
	*out = d * 1440 + h * 60 + m;
	return 0;
}

static int parse_freeze(struct vctx *v, json_t *f, const char *path, struct pol_approval *a)
{
	static const char *const keys[] = { "timezone", "weekly", "dates", NULL };
	static const char *const wkeys[] = { "start", "end", "description", NULL };
	char p[300], q[340];
	int rc;
	if (!json_is_object(f))
		return verr(v, path, "must be an object");
	if ((rc = check_keys(v, f, path, keys)) != 0 ||
	    (rc = get_string(v, f, "timezone", path, 0, &a->tz_name)) != 0)
		return rc;
	if (a->tz_name == NULL)
		a->tz_name = "UTC";
	char why[200];
	if (pol_tz_load(a->tz_name, NULL, &a->tz, why, sizeof why) != 0) {
		snprintf(p, sizeof p, "%s.timezone", path);
		return verr(v, p, "%s", why);
	}
	json_t *w = json_object_get(f, "weekly");
	if (w != NULL) {
		snprintf(p, sizeof p, "%s.weekly", path);
		if (!json_is_array(w) || json_array_size(w) > POL_MAX_WINDOWS)
			return verr(v, p, "must be an array of at most %d windows", POL_MAX_WINDOWS);
		a->weekly = calloc(json_array_size(w) + 1, sizeof *a->weekly);
		if (a->weekly == NULL)
			return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
		for (size_t i = 0; i < json_array_size(w); i++) {
			json_t *e = json_array_get(w, i);
			const char *s, *en, *d;
			snprintf(q, sizeof q, "%s[%zu]", p, i);
			if (!json_is_object(e))
				return verr(v, q, "must be an object {\"start\": \"fri 18:00\", \"end\": \"mon 06:00\"}");
			if ((rc = check_keys(v, e, q, wkeys)) != 0 ||
			    (rc = get_string(v, e, "start", q, 1, &s)) != 0 ||
			    (rc = get_string(v, e, "end", q, 1, &en)) != 0 ||
			    (rc = get_string(v, e, "description", q, 0, &d)) != 0)
				return rc;
			struct pol_weekly *wk = &a->weekly[a->nweekly];
			char r[360];
			snprintf(r, sizeof r, "%s.start", q);
			if (parse_weekly_point(s, &wk->start) != 0)
				return verr(v, r, "'%s' is not a weekday and time (\"fri 18:00\")", s);
			snprintf(r, sizeof r, "%s.end", q);
			if (parse_weekly_point(en, &wk->end) != 0)
				return verr(v, r, "'%s' is not a weekday and time (\"mon 06:00\")", en);
			if (wk->start == wk->end)
				return verr(v, r, "a window must not be empty");
			a->nweekly++;
		}
	}
	json_t *dd = json_object_get(f, "dates");
	if (dd != NULL) {
		snprintf(p, sizeof p, "%s.dates", path);
		if (!json_is_array(dd) || json_array_size(dd) > POL_MAX_WINDOWS)
			return verr(v, p, "must be an array of at most %d windows", POL_MAX_WINDOWS);
		a->dates = calloc(json_array_size(dd) + 1, sizeof *a->dates);
		if (a->dates == NULL)
			return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
		for (size_t i = 0; i < json_array_size(dd); i++) {
			json_t *e = json_array_get(dd, i);
			const char *s, *en, *d;
			snprintf(q, sizeof q, "%s[%zu]", p, i);
			if (!json_is_object(e))
				return verr(v, q, "must be an object {\"start\": \"2026-12-24T00:00\", \"end\": ...}");
			if ((rc = check_keys(v, e, q, wkeys)) != 0 ||
			    (rc = get_string(v, e, "start", q, 1, &s)) != 0 ||
			    (rc = get_string(v, e, "end", q, 1, &en)) != 0 ||
			    (rc = get_string(v, e, "description", q, 0, &d)) != 0)
				return rc;
			struct pol_dates *dt = &a->dates[a->ndates];
			int hz, off;
			char r[360];
			snprintf(r, sizeof r, "%s.start", q);
			if (parse_datetime(s, &dt->start, &hz, &off) != 0 || hz)
				return verr(v, r, "'%s' is not a local date-time (2026-12-24T18:00) in the window's time zone", s);
			snprintf(r, sizeof r, "%s.end", q);
			if (parse_datetime(en, &dt->end, &hz, &off) != 0 || hz)
				return verr(v, r, "'%s' is not a local date-time (2026-12-27T06:00) in the window's time zone", en);
			if (dt->end <= dt->start)
				return verr(v, r, "ends before it starts");
			a->ndates++;
		}
	}
	return 0;
}

static int parse_approvals(struct vctx *v, json_t *doc)
{
	static const char *const keys[] = { "name", "description", "apps", "environments",
					    "required", "groups", "approver_groups",
					    "approval_ttl", "wait", "allowed_refs", "freeze",
					    "break_glass", NULL };
	static const char *const bgkeys[] = { "required", "groups", NULL };
	struct pol_policy *p = v->p;
	json_t *j = json_object_get(doc, "approval_policies");
	int rc;
	if (j != NULL && !json_is_array(j))
		return verr(v, "$.approval_policies", "must be an array");
	size_t n = j ? json_array_size(j) : 0;
	if (n > POL_MAX_APPROVALS)
		return verr(v, "$.approval_policies", "more than %d policies", POL_MAX_APPROVALS);
	p->approvals = calloc(n ? n : 1, sizeof *p->approvals);
	if (p->approvals == NULL)
		return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
	for (size_t i = 0; i < n; i++) {
		json_t *o = json_array_get(j, i);
		char path[64], q[120];
		const char *desc, *ttl, *wait;
		snprintf(path, sizeof path, "$.approval_policies[%zu]", i);
		if (!json_is_object(o))
			return verr(v, path, "must be an object");
		struct pol_approval *a = &p->approvals[p->napprovals++];
		a->index = (int)i;
		if ((rc = check_keys(v, o, path, keys)) != 0 ||
		    (rc = get_string(v, o, "name", path, 1, &a->name)) != 0 ||
		    (rc = get_string(v, o, "description", path, 0, &desc)) != 0 ||
		    (rc = get_list(v, o, "environments", path, 1, LK_GLOB, &a->envs)) != 0 ||
		    (rc = get_list(v, o, "apps", path, 0, LK_GLOB, &a->apps)) != 0 ||
		    (rc = get_list(v, o, "approver_groups", path, 0, LK_NAME, &a->approver_groups)) != 0 ||
		    (rc = get_list(v, o, "allowed_refs", path, 0, LK_GLOB, &a->refs)) != 0 ||
		    (rc = get_string(v, o, "approval_ttl", path, 0, &ttl)) != 0 ||
		    (rc = get_string(v, o, "wait", path, 0, &wait)) != 0 ||
		    (rc = parse_quorum(v, o, path, &a->quorum, 1)) != 0)
			return rc;
		snprintf(q, sizeof q, "%s.name", path);
		if (!name_ok(a->name))
			return verr(v, q, "'%s' is not a valid name", a->name);
		for (size_t k = 0; k + 1 < p->napprovals; k++)
			if (strcmp(p->approvals[k].name, a->name) == 0)
				return verr(v, q, "approval policy '%s' is defined twice", a->name);
		for (size_t k = 0; k < a->approver_groups.n; k++)
			if (pol_group_find(p, a->approver_groups.v[k]) < 0) {
				snprintf(q, sizeof q, "%s.approver_groups[%zu]", path, k);
				return verr(v, q, "no group named '%s'", a->approver_groups.v[k]);
			}
		snprintf(q, sizeof q, "%s.approval_ttl", path);
		if (ttl != NULL && (pol_parse_duration(ttl, &a->ttl_ms) != 0 || a->ttl_ms <= 0))
			return verr(v, q, "'%s' is not a duration (30m, 24h, 7d)", ttl);
		snprintf(q, sizeof q, "%s.wait", path);
		if (wait != NULL && pol_parse_duration(wait, &a->wait_ms) != 0)
			return verr(v, q, "'%s' is not a duration (0s, 10m, 1h)", wait);
		if (a->wait_ms > 30LL * 86400000)
			return verr(v, q, "longer than 30 days");
		json_t *f = json_object_get(o, "freeze");
		snprintf(q, sizeof q, "%s.freeze", path);
		if (f != NULL && (rc = parse_freeze(v, f, q, a)) != 0)
			return rc;
		json_t *bg = json_object_get(o, "break_glass");
		snprintf(q, sizeof q, "%s.break_glass", path);
		if (bg != NULL && !json_is_false(bg)) {
			if (!json_is_object(bg))
				return verr(v, q, "must be false or an object {\"required\": N, \"groups\": {...}}");
			if ((rc = check_keys(v, bg, q, bgkeys)) != 0 ||
			    (rc = parse_quorum(v, bg, q, &a->bg, 1)) != 0)
				return rc;
			a->break_glass = 1;
		}
		/* The hash binds approvals to this policy's exact rules. */
		char *c = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
		if (c == NULL)
			return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
		unsigned char md[SHA256_DIGEST_LENGTH];
		SHA256((const unsigned char *)c, strlen(c), md);
		free(c);
		for (int k = 0; k < SHA256_DIGEST_LENGTH; k++)
			snprintf(a->hash + 2 * k, 3, "%02x", md[k]);
	}
	return 0;
}

/* ---- cross checks ---- */

/* 1 when role r can grant a write action. */
static int role_writes(const struct pol_role *r)
{
	for (size_t i = 0; i < r->nrules; i++)
		for (size_t k = 0; k < r->rules[i].actions.n; k++)
			if (pol_action_writes(r->rules[i].actions.v[k]))
				return 1;
	return 0;
}

/* 1 when the subjects of bindings a and b may be the same principal. */
static int same_subject(const struct pol_policy *p, const struct pol_binding *a,
			const struct pol_binding *b)
{
	if (a->skind == POL_SUBJ_PREFIX || b->skind == POL_SUBJ_PREFIX)
		return 0; /* patterns: left to the runtime guardrail */
	if (a->skind == b->skind)
		return strcmp(a->subject, b->subject) == 0;
	const struct pol_binding *pb = a->skind == POL_SUBJ_PRINCIPAL ? a : b;
	const struct pol_binding *gb = a->skind == POL_SUBJ_GROUP ? a : b;
	int g = pol_group_find(p, gb->subject);
	return g >= 0 && pol_in_group(p, g, pb->subject);
}

/*
 * Auditors can never be granted write actions: a document binding a role
 * that writes to a principal or group that is also bound to auditor is
 * rejected. (The built-in guardrail also denies it at decision time, for
 * overlaps only patterns reveal.)
 */
static int check_auditors(struct vctx *v)
{
	struct pol_policy *p = v->p;
	int aud = pol_role_find(p, "auditor");
	size_t first_doc = 2 + p->nadmins;
	for (size_t i = first_doc; i < p->nbindings; i++) {
		const struct pol_binding *b = &p->bindings[i];
		if (b->role_index != aud)
			continue;
		for (size_t k = 0; k < p->nbindings; k++) {
			const struct pol_binding *w = &p->bindings[k];
			if (k == i || !role_writes(w->role) || !same_subject(p, b, w))
				continue;
			const struct pol_binding *later = k > i ? w : b;
			char path[64];
			snprintf(path, sizeof path, "$.%s", later->label);
			return verr(v, path,
				    "auditors can never be granted write actions: %s '%s' holds "
				    "auditor (%s) and role '%s' (%s) writes",
				    b->skind == POL_SUBJ_GROUP ? "group" : "principal", b->subject,
				    b->label, w->role->name, w->label);
		}
	}
	return 0;
}

static int build_indexes(struct vctx *v)
{
	struct pol_policy *p = v->p;
	size_t npre = 0;
	for (size_t i = 0; i < p->nbindings; i++)
		npre += p->bindings[i].skind == POL_SUBJ_PREFIX;
	p->prefix_bindings = calloc(npre + 1, sizeof *p->prefix_bindings);
	if (p->prefix_bindings == NULL)
		return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
	for (size_t i = 0; i < p->nbindings; i++) {
		const struct pol_binding *b = &p->bindings[i];
		int rc = 0;
		if (b->skind == POL_SUBJ_PRINCIPAL)
			rc = idx_add(p->by_principal, b->subject, (int)i);
		else if (b->skind == POL_SUBJ_GROUP)
			rc = idx_add(p->by_group, b->subject, (int)i);
		else
			p->prefix_bindings[p->nprefix_bindings++] = (int)i;
		if (rc != 0)
			return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
	}
	size_t nmem = 0;
	for (size_t g = 0; g < p->ngroups; g++)
		for (size_t i = 0; i < p->groups[g].n; i++)
			nmem += p->groups[g].m[i].prefix;
	p->prefix_member = (const char **)calloc(nmem + 1, sizeof *p->prefix_member);
	p->prefix_member_group = calloc(nmem + 1, sizeof *p->prefix_member_group);
	if (p->prefix_member == NULL || p->prefix_member_group == NULL)
		return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
	for (size_t g = 0; g < p->ngroups; g++) {
		for (size_t i = 0; i < p->groups[g].n; i++) {
			const struct pol_member *m = &p->groups[g].m[i];
			if (m->prefix) {
				p->prefix_member[p->nprefix_members] = m->id;
				p->prefix_member_group[p->nprefix_members++] = (int)g;
			} else {
				/* A member listed twice is indexed once. */
				size_t k;
				const int *have = pol_index_get(p->member_of, m->id, &k);
				if (k > 0 && have[k - 1] == (int)g)
					continue;
				if (idx_add(p->member_of, m->id, (int)g) != 0)
					return sw_errf(v->err, v->errlen, SW_ENOMEM, "out of memory");
			}
		}
	}
	return 0;
}

/* ------------------------------------------------------------------ */

void pol_ref(struct pol_policy *p)
{
	atomic_fetch_add(&p->refs, 1);
}

static void free_quorum(struct pol_quorum *q)
{
	free((void *)q->groups);
	free(q->counts);
}

void pol_unref(struct pol_policy *p)
{
	if (p == NULL || atomic_fetch_sub(&p->refs, 1) != 1)
		return;
	for (size_t i = 0; i < p->nroles; i++)
		if (!p->roles[i].builtin)
			free(p->roles[i].rules);
	free(p->roles);
	for (size_t i = 0; i < p->ngroups; i++)
		free(p->groups[i].m);
	free(p->groups);
	free(p->bindings);
	free(p->guards);
	for (size_t i = 0; i < p->napprovals; i++) {
		struct pol_approval *a = &p->approvals[i];
		free_quorum(&a->quorum);
		free_quorum(&a->bg);
		pol_tz_free(a->tz);
		free(a->weekly);
		free(a->dates);
	}
	free(p->approvals);
	idx_free(p->by_principal);
	idx_free(p->by_group);
	idx_free(p->member_of);
	idx_free(p->role_by_name);
	idx_free(p->group_by_name);
	free(p->prefix_bindings);
	free((void *)p->prefix_member);
	free(p->prefix_member_group);
	for (size_t i = 0; i < p->nadmins; i++)
		free(p->admins[i]);
	free(p->admins);
	free(p->prefix_service);
	free(p->prefix_agent);
	free(p->orchestrator);
	free(p->trust_domain);
	free(p->applied_by);
	free(p->text);
	json_decref(p->doc);
	arena_free(p->arena);
	free(p);
}

int pol_compile(const char *text, size_t len, const struct pol_builtin_opts *b,
		struct pol_policy **out, char *err, size_t errlen)
{
	static const char *const top_keys[] = { "version", "description", "groups", "roles",
						"bindings", "guardrails", "approval_policies",
						NULL };
	struct pol_policy *p = NULL;
	json_error_t je;
	int rc;

	*out = NULL;
	if (len > POL_MAX_DOC_BYTES)
		return sw_errf(err, errlen, SW_EINVAL, "$: document larger than %u bytes",
			       POL_MAX_DOC_BYTES);
	if (b->nadmins > POL_MAX_ADMINS)
		return sw_errf(err, errlen, SW_EINVAL, "more than %d bootstrap admins",
			       POL_MAX_ADMINS);
	p = calloc(1, sizeof *p);
	if (p == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	atomic_init(&p->refs, 1);
	struct vctx v = { .p = p, .b = b, .err = err, .errlen = errlen };

	if (text == NULL || len == 0) {
		p->doc = json_object();
	} else {
		p->doc = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
		if (p->doc == NULL) {
			rc = sw_errf(err, errlen, SW_EINVAL, "$: not valid JSON: %s (line %d, column %d)",
				     je.text, je.line, je.column);
			goto out;
		}
	}
	if (!json_is_object(p->doc)) {
		rc = verr(&v, "$", "the document must be a JSON object");
		goto out;
	}
	p->trust_domain = strdup(b->trust_domain);
	p->by_principal = idx_new();
	p->by_group = idx_new();
	p->member_of = idx_new();
	p->role_by_name = idx_new();
	p->group_by_name = idx_new();
	p->admins = calloc(b->nadmins + 1, sizeof *p->admins);
	if (p->trust_domain == NULL || p->by_principal == NULL || p->by_group == NULL ||
	    p->member_of == NULL || p->role_by_name == NULL || p->group_by_name == NULL ||
	    p->admins == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < b->nadmins; i++) {
		char why[200];
		if (pol_check_principal(b->admins[i], b->trust_domain, 0, why, sizeof why) != 0) {
			rc = sw_errf(err, errlen, SW_EINVAL, "bootstrap admin '%s': %s", b->admins[i],
				     why);
			goto out;
		}
		if ((p->admins[i] = strdup(b->admins[i])) == NULL) {
			rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
			goto out;
		}
		p->nadmins++;
	}
	if ((rc = check_keys(&v, p->doc, "$", top_keys)) != 0)
		goto out;
	json_t *ver = json_object_get(p->doc, "version");
	if (ver != NULL && !(json_is_integer(ver) && json_integer_value(ver) == 1)) {
		rc = verr(&v, "$.version", "must be 1 (the only schema version)");
		goto out;
	}
	json_t *desc = json_object_get(p->doc, "description");
	if (desc != NULL && !json_is_string(desc)) {
		rc = verr(&v, "$.description", "must be a string");
		goto out;
	}
	if ((rc = parse_groups(&v, p->doc)) != 0)
		goto out;
	for (size_t g = 0; g < p->ngroups; g++)
		if (idx_add(p->group_by_name, p->groups[g].name, (int)g) != 0) {
			rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
			goto out;
		}
	if ((rc = parse_roles(&v, p->doc)) != 0 || (rc = parse_bindings(&v, p->doc)) != 0 ||
	    (rc = parse_guards(&v, p->doc)) != 0 || (rc = parse_approvals(&v, p->doc)) != 0 ||
	    (rc = check_auditors(&v)) != 0 || (rc = build_indexes(&v)) != 0)
		goto out;

	p->text = json_dumps(p->doc, JSON_INDENT(2) | JSON_SORT_KEYS);
	if (p->text == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	unsigned char md[SHA256_DIGEST_LENGTH];
	SHA256((const unsigned char *)p->text, strlen(p->text), md);
	for (int k = 0; k < SHA256_DIGEST_LENGTH; k++)
		snprintf(p->sha256 + 2 * k, 3, "%02x", md[k]);
	*out = p;
	p = NULL;
	rc = 0;
out:
	pol_unref(p);
	return rc;
}
