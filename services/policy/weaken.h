/*
 * weaken.h - what a policy change weakens (weaken.c), a pure function of the
 * current and the proposed compiled documents. The escalation guard of
 * ApplyPolicy (eval.c) requires `escalate` on `policy` for each weakening
 * change at that change's scope; `policy diff` and dry runs show them.
 *
 * The definition, field by field, is in services/policy/README.md
 * ("Weakening"); in short a change weakens when, for some principal or
 * some deployment, the new document allows what the old one did not:
 * fewer or lower approval requirements, more people who may approve, more
 * refs, less freeze, break-glass where there was none, a guardrail that
 * forbids less or to fewer people (or is gone, or no longer reaches
 * someone because they left the group or role it names), and any binding
 * or role that hands out more. A field change not proven to be neutral or
 * tightening counts as weakening (deny by default).
 */
#ifndef SLIPWAY_POLICY_WEAKEN_H
#define SLIPWAY_POLICY_WEAKEN_H

#include "policy.h"

#define POL_WEAKEN_MAX 512        /* changes listed; past it `overflow` is set */
#define POL_WEAKEN_PATH 200

enum pol_weak_class {
	/* Loosens a guardrail or an approval policy (approvals, allowed refs,
	 * freeze, break-glass, who may approve), or lifts a guardrail without
	 * touching it: needs escalate at the change's scope. */
	POL_WEAK_PROTECTION = 0,
	/* Hands out permissions (a binding or a role that grants more): needs
	 * escalate at the scope, or that the applier holds what it grants
	 * there (delegation, as in Kubernetes RBAC). */
	POL_WEAK_GRANT_BINDING,
	POL_WEAK_GRANT_ROLE,
};

struct pol_weak {
	enum pol_weak_class cls;
	char path[POL_WEAKEN_PATH];     /* JSON path, as in the diff: $.approval_policies[name=prod].wait */
	char what[POL_REASON_LEN];      /* what it weakens, in words */
	char app[POL_NAME_MAX + 1];     /* where escalate is needed: "" = globally */
	char env[POL_NAME_MAX + 1];     /* "" = the whole app (or globally) */
	int index;                      /* grants: the binding or role index in the new policy */
	int rule;                       /* POL_WEAK_GRANT_ROLE: the rule that grants more */
	int denied;                     /* set by pol_escalation_judge: the applier may not make it */
};

struct pol_weaken {
	size_t n, cap;
	struct pol_weak *v;             /* owned: release with pol_weaken_free */
	int overflow;                   /* more than POL_WEAKEN_MAX changes: not all are listed */
};

/*
 * Lists in *out (zeroed by the caller, or reused after pol_weaken_free)
 * every change from old to next that weakens (README, "Weakening"), in
 * document order: groups, roles, bindings, guardrails, approval policies.
 * Pure: reads both policies, allocates only out->v. Returns 0, or
 * SW_ENOMEM (out is then freed). Any thread.
 */
int pol_weaken(const struct pol_policy *old, const struct pol_policy *next,
	       struct pol_weaken *out, char *err, size_t errlen);

/* Frees out->v and zeroes *out. NULL ok. */
void pol_weaken_free(struct pol_weaken *w);

/* "globally", "at app web", "at app web environment prod" for a change. */
void pol_weak_scope_text(const struct pol_weak *c, char *out, size_t len);

/*
 * The escalation guard of ApplyPolicy over the changes of pol_weaken(cur,
 * next): marks each change the actor may not make (`denied`) under cur and
 * returns 0 when there is none; else SW_EPERM with every denied change in
 * err ("$.path: what (needs escalate ...)"; truncated to errlen). An actor
 * holding escalate on policy globally may make every change; otherwise a
 * protection change needs escalate at its scope, a binding that grants
 * more needs escalate at its scope or that the actor holds each of its
 * role's rules there (no guardrail forbidding any of it to the actor), a
 * role rule that grants more needs the actor to hold it at some scope.
 * With w->overflow only a holder of global escalate passes. Any thread.
 */
int pol_escalation_judge(const struct pol_policy *cur, const struct pol_policy *next,
			 const char *actor, int64_t now_ms, struct pol_weaken *w, char *err,
			 size_t errlen);

#endif
