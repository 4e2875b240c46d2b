/*
 * approval.h - deployment approval rules (approval.c), used by rpc.c.
 *
 * EvaluateDeployment records or updates the approval request of a
 * deployment and returns ALLOWED, NEEDS_APPROVAL (what is missing) or
 * DENIED (why); Approve and Reject record who, when, which digest and a
 * comment. The rules are in services/policy/README.md.
 */
#ifndef SLIPWAY_POLICY_APPROVAL_H
#define SLIPWAY_POLICY_APPROVAL_H

#include "policy.h"
#include "rpc.h"

#include "slipway/v1/policy.pb-c.h"

/* The handlers' domain calls: each validates its input, sets the call's
 * message on failure and returns 0 or an SW_E* code. Worker threads. The
 * caller of pol_evaluate_deployment has been authorized (evaluate on
 * deployment); pol_approve and pol_list_approvals authorize themselves. */
int pol_evaluate_deployment(struct pol_service *s, struct rpc_ctx *ctx,
			    const Slipway__V1__DeploymentFacts *f,
			    Slipway__V1__EvaluateDeploymentResponse *out);
int pol_approve(struct pol_service *s, struct rpc_ctx *ctx, const char *deployment,
		const char *digest, const char *comment, int approve, Slipway__V1__Approval *out);
int pol_list_approvals(struct pol_service *s, struct rpc_ctx *ctx, const char *deployment,
		       Slipway__V1__ListApprovalsResponse *out);

#endif
