/*
 * fuzz_policy.c - the policy document parser and compiler
 * (services/policy/doc.c) and what runs on its output (eval.c, diff.c):
 * ApplyPolicy hands it whatever JSON a caller sends.
 *
 * Input: the document text. Trust domain "slipway", one bootstrap admin.
 *
 * Invariants:
 *  - a refusal names a JSON path ("$..." : what is wrong);
 *  - an accepted document's canonical text compiles again to the same
 *    text and SHA-256 (what `slipway policy get` prints, `apply` accepts
 *    back unchanged), and pol_diff between the two is empty;
 *  - re-applying the same document never trips the escalation guard, for
 *    any actor (nothing is granted that was not granted before);
 *  - pol_eval gives the same decision on its fast path (all = 0) and its
 *    explain path (all = 1), and allows nothing to a principal of another
 *    trust domain (deny by default: the document can only name principals
 *    of its own);
 *  - the reasons and descriptions of every decision can be written.
 */
#include "fuzz.h"

#include "../../services/policy/policy.h"
#include "err.h"

static const char *const admins[] = { "spiffe://slipway/user/root" };
static const struct pol_builtin_opts B = { "slipway", 1, admins };

struct q {
	const char *action, *kind, *app, *env, *name;
};

static const struct q queries[] = {
	{ "deploy", "deployment", "web", "prod", "" },
	{ "approve", "deployment", "web", "prod", "" },
	{ "read", "secret", "web", "prod", "DB_PASSWORD" },
	{ "write", "secret", "api", "", "TOKEN" },
	{ "apply", "policy", "", "", "" },
	{ "escalate", "policy", "", "", "" },
	{ "push", "release", "web", "", "" },
	{ "read", "audit", "", "", "" },
	{ "run", "agent", "", "", "" },
};

/* Principals worth asking about: fixed ones and some the document names. */
static size_t principals(const struct pol_policy *p, const char **out, size_t max)
{
	size_t n = 0;
	static const char *const fixed[] = {
		"spiffe://slipway/user/root",     "spiffe://slipway/user/alice",
		"spiffe://slipway/user/oncall/bob", "spiffe://slipway/service/orchestrator",
		"spiffe://slipway/agent/eu/host-1",
	};
	for (size_t i = 0; i < sizeof fixed / sizeof *fixed && n < max; i++)
		out[n++] = fixed[i];
	for (size_t i = 0; i < p->nbindings && n < max; i++)
		if (p->bindings[i].skind == POL_SUBJ_PRINCIPAL)
			out[n++] = p->bindings[i].subject;
	for (size_t g = 0; g < p->ngroups && n < max; g++)
		for (size_t m = 0; m < p->groups[g].n && n < max; m++)
			if (!p->groups[g].m[m].prefix)
				out[n++] = p->groups[g].m[m].id;
	return n;
}

static void check_eval(const struct pol_policy *p, const char *who)
{
	static char reasons[8][POL_REASON_LEN];
	for (size_t i = 0; i < sizeof queries / sizeof *queries; i++) {
		const struct q *x = &queries[i];
		struct pol_query q = { who, x->action, x->kind, x->app, x->env, x->name,
				       1700000000000LL };
		struct pol_result fast, all;
		pol_eval(p, &q, 0, &fast);
		pol_eval(p, &q, 1, &all);
		FUZZ_CHECK(fast.allowed == all.allowed, "%s %s %s: fast path %d, explain %d", who,
			   x->action, x->kind, fast.allowed, all.allowed);
		pol_reasons(p, &q, &all, reasons, 8);
		char d[512];
		for (size_t g = 0; g < all.ngrants; g++)
			pol_describe_grant(&all.grants[g], d, sizeof d);
		for (size_t g = 0; g < all.nforbids; g++)
			pol_describe_guard(all.forbids[g], d, sizeof d);
		if (strncmp(who, "spiffe://slipway/", 17) != 0)
			FUZZ_CHECK(!fast.allowed, "%s (another trust domain) may %s %s", who,
				   x->action, x->kind);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct pol_policy *p = NULL, *q = NULL;
	char err[1024];
	int rc = pol_compile((const char *)data, size, &B, &p, err, sizeof err);
	if (rc != 0) {
		FUZZ_CHECK(rc == SW_EINVAL || rc == SW_ENOMEM, "code %d", rc);
		FUZZ_CHECK(rc != SW_EINVAL || err[0] == '$', "refusal without a path: %s", err);
		return 0;
	}
	rc = pol_compile(p->text, strlen(p->text), &B, &q, err, sizeof err);
	FUZZ_CHECK(rc == 0, "the canonical text does not compile again: %s\n%s", err, p->text);
	FUZZ_CHECK(strcmp(p->text, q->text) == 0, "canonical text changed on recompiling");
	FUZZ_CHECK(strcmp(p->sha256, q->sha256) == 0, "hash changed on recompiling");
	char *diff = NULL;
	FUZZ_CHECK(pol_diff(p->doc, q->doc, 1 << 20, &diff) == 0, "diff");
	FUZZ_CHECK(diff[0] == '\0', "diff of a document with itself: %s", diff);
	free(diff);

	const char *who[48];
	size_t nwho = principals(p, who, 46);
	who[nwho++] = "spiffe://other/user/root";
	who[nwho++] = "spiffe://slipway.evil/user/alice";
	for (size_t i = 0; i < nwho; i++) {
		rc = pol_escalation_check(p, q, who[i], 1700000000000LL, err, sizeof err);
		FUZZ_CHECK(rc == 0, "re-applying the same document is refused for %s: %s", who[i],
			   err);
		check_eval(p, who[i]);
	}
	pol_unref(q);
	pol_unref(p);
	return 0;
}
