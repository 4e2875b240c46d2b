/*
 * approval.h - deployment approval rules (approval.c), used by rpc.c.
 *
 * EvaluateDeployment records or updates the approval request of a
 * deployment and returns ALLOWED, NEEDS_APPROVAL (what is missing) or
 * DENIED (why); Approve and Reject record who, when, which digest and a
 * comment. The rules are in services/policy/README.md.
 *
 * The shape: a transaction loads the request row and its approvals
 * (eval_tx), a pure function decides (decide), and the transaction records
 * the decision. These functions return plain C results; rpc.c encodes them
 * and maps the SW_E* codes to gRPC statuses.
 */
#ifndef SLIPWAY_POLICY_APPROVAL_H
#define SLIPWAY_POLICY_APPROVAL_H

#include "policy.h"

#include "slipway/v1/policy.pb-c.h"

#define POL_EVAL_MAX_REASONS 16
#define POL_EVAL_MAX_MISSING 33

/* One unmet quota: group "" is the total of distinct approvers. */
struct pol_requirement {
	char group[POL_NAME_MAX + 1];
	uint32_t required, have;
};

/* What EvaluateDeployment answers. */
struct pol_eval_out {
	int verdict;                      /* a Slipway__V1__Verdict */
	uint64_t revision;
	int64_t not_before_ms;
	char decision_id[33];
	size_t nreasons;
	char reasons[POL_EVAL_MAX_REASONS][POL_REASON_LEN];
	size_t nmissing;
	struct pol_requirement missing[POL_EVAL_MAX_MISSING];
};

/* What Approve and Reject recorded. */
struct pol_approve_out {
	char digest[80];                  /* the digest approved (the request's) */
	uint64_t revision;
	int64_t created_ms, expires_ms;   /* expires 0: never */
	int break_glass;
	size_t ngroups;                   /* the approver's groups then */
	char groups[POL_MAX_MATCH][POL_NAME_MAX + 1];
};

/* One approval or rejection as ListApprovals shows it. Strings are
 * borrowed for the callback only. */
struct pol_approval_row {
	const char *deployment_id, *approver, *digest, *comment;
	uint64_t revision;
	int approve, break_glass;
	int64_t created_ms, expires_ms;
	size_t ngroups;
	const char *groups[POL_MAX_MATCH];
};
/* Returns 0 to go on, or an SW_E* code to stop (ListApprovals then fails
 * with that code). */
typedef int (*pol_approval_fn)(const struct pol_approval_row *row, void *arg);

/*
 * Records or updates the approval request of f and decides it. caller is
 * the RPC peer (recorded with the decision); it has been authorized by the
 * caller of this function (evaluate on deployment). Fills *out. Returns 0,
 * SW_EINVAL for a bad request, or a database code; the message goes into
 * err. Worker threads.
 */
int pol_evaluate_deployment(struct pol_service *s, const char *caller,
			    const Slipway__V1__DeploymentFacts *f, struct pol_eval_out *out,
			    char *err, size_t errlen);

/*
 * Approves (approve = 1) or rejects deployment dep as approver (the RPC
 * peer), after checking that approver may approve it (the check is
 * recorded with request_id). digest "" means the request's current one.
 * Fills *out. Returns 0, SW_EINVAL, SW_ENOTFOUND (no request), SW_EPERM
 * (not allowed, or self-approval: recorded as a denial), SW_EPRECOND
 * (rejected, or another digest), or a database code; message in err.
 * Worker threads.
 */
int pol_approve(struct pol_service *s, const char *approver, const char *request_id,
		const char *dep, const char *digest, const char *comment, int approve,
		struct pol_approve_out *out, char *err, size_t errlen);

/*
 * Calls fn for each approval and rejection of deployment dep, oldest
 * first (at most 1000), after checking that caller may read it. Returns
 * 0, SW_EINVAL, SW_ENOTFOUND, SW_EPERM, fn's code, or a database code;
 * message in err. Worker threads.
 */
int pol_list_approvals(struct pol_service *s, const char *caller, const char *request_id,
		       const char *dep, pol_approval_fn fn, void *arg, char *err, size_t errlen);

#endif
