/*
 * approval.c - deployment approval rules (see approval.h).
 */
#include "approval.h"
#include "err.h"

int pol_evaluate_deployment(struct pol_service *s, struct rpc_ctx *ctx,
			    const Slipway__V1__DeploymentFacts *f,
			    Slipway__V1__EvaluateDeploymentResponse *out)
{
	(void)s;
	(void)f;
	(void)out;
	return rpc_errorf(ctx, SW_EUNIMPL, "EvaluateDeployment is not implemented yet");
}

int pol_approve(struct pol_service *s, struct rpc_ctx *ctx, const char *deployment,
		const char *digest, const char *comment, int approve, Slipway__V1__Approval *out)
{
	(void)s;
	(void)deployment;
	(void)digest;
	(void)comment;
	(void)approve;
	(void)out;
	return rpc_errorf(ctx, SW_EUNIMPL, "Approve/Reject are not implemented yet");
}

int pol_list_approvals(struct pol_service *s, struct rpc_ctx *ctx, const char *deployment,
		       Slipway__V1__ListApprovalsResponse *out)
{
	(void)s;
	(void)deployment;
	(void)out;
	return rpc_errorf(ctx, SW_EUNIMPL, "ListApprovals is not implemented yet");
}
