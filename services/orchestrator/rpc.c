/*
 * rpc.c - the Orchestrator RPCs (people, CI) and the AgentControl protocol
 * (agents). Decode, validate, authorize, call the domain, encode.
 *
 * Agent calls are bound to the caller's certificate: only an agent
 * principal may speak the protocol, and it always speaks for itself.
 * Heartbeat and PollTasks never block (they run on the completion-queue
 * thread; a poll is parked without holding a thread).
 */
#include "err.h"
#include "log.h"
#include "orch.h"
#include "spiffe.h"
#include "watch.h"

#include <stdio.h>
#include <string.h>

static int fetch_deployment(struct rpc_ctx *ctx, struct orch *o, const char *id,
			    Slipway__V1__Deployment *out)
{
	char err[256];
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	int rc = db_acquire(o->db, &c, 5000, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	rc = store_deployment_row(c, id, &r, err, sizeof err);
	db_release(o->db, c);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	orch_deployment_from_row(ctx, r, 0, out);
	PQclear(r);
	return 0;
}

static int create_deployment(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			     ProtobufCMessage *respm, void *data)
{
	struct orch *o = data;
	char id[ORCH_ID_MAX], err[1024];
	int rc = orch_create(o, ctx, (const void *)reqm, id, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	return fetch_deployment(ctx, o, id, (void *)respm);
}

static int get_deployment(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	const Slipway__V1__GetDeploymentRequest *req = (const void *)reqm;
	char err[512];
	if (req->id[0] == '\0' || strlen(req->id) >= ORCH_ID_MAX)
		return rpc_errorf(ctx, SW_EINVAL, "id: a deployment id is required");
	int rc = orch_get_detail(data, ctx, req->id, (void *)respm, err, sizeof err);
	return rc ? rpc_errorf(ctx, rc, "%s", err) : 0;
}

static int list_deployments(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			    ProtobufCMessage *respm, void *data)
{
	char err[512];
	int rc = orch_list(data, ctx, (const void *)reqm, (void *)respm, err, sizeof err);
	return rc ? rpc_errorf(ctx, rc, "%s", err) : 0;
}

static int action(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		  struct orch *o, const char *what)
{
	const Slipway__V1__DeploymentActionRequest *req = (const void *)reqm;
	char err[512];
	if (req->id[0] == '\0' || strlen(req->id) >= ORCH_ID_MAX)
		return rpc_errorf(ctx, SW_EINVAL, "id: a deployment id is required");
	int rc = orch_action(o, ctx, req->id, what, req->reason, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	return fetch_deployment(ctx, o, req->id, (void *)respm);
}

static int cancel_deployment(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			     ProtobufCMessage *respm, void *data)
{
	return action(ctx, reqm, respm, data, "cancel");
}

static int pause_deployment(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			    ProtobufCMessage *respm, void *data)
{
	return action(ctx, reqm, respm, data, "pause");
}

static int resume_deployment(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			     ProtobufCMessage *respm, void *data)
{
	return action(ctx, reqm, respm, data, "resume");
}

static int rollback(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		    void *data)
{
	struct orch *o = data;
	char id[ORCH_ID_MAX], err[1024];
	int rc = orch_rollback_request(o, ctx, (const void *)reqm, id, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	return fetch_deployment(ctx, o, id, (void *)respm);
}

static int get_status(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		      void *data)
{
	const Slipway__V1__GetStatusRequest *req = (const void *)reqm;
	char err[512];
	int rc = orch_status(data, ctx, req->app, req->environment, (void *)respm, err, sizeof err);
	return rc ? rpc_errorf(ctx, rc, "%s", err) : 0;
}

static int list_agents(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		       void *data)
{
	char err[512];
	int rc = orch_list_agents(data, ctx, (const void *)reqm, (void *)respm, err, sizeof err);
	return rc ? rpc_errorf(ctx, rc, "%s", err) : 0;
}

/* Sends the deployment's detail whenever it changes, until it ends. The
 * stream is deferred and followed by the watcher thread (watch.c): it
 * holds no worker while the deployment runs. */
static int watch_deployment(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			    ProtobufCMessage *respm, void *data)
{
	(void)respm;
	const Slipway__V1__WatchDeploymentRequest *req = (const void *)reqm;
	if (req->id[0] == '\0' || strlen(req->id) >= ORCH_ID_MAX)
		return rpc_errorf(ctx, SW_EINVAL, "id: a deployment id is required");
	return orch_watch_deployment(data, ctx, req->id);
}

/* ---- AgentControl ---- */

static int agent_caller(struct rpc_ctx *ctx)
{
	struct spiffe_id id;
	if (spiffe_parse(rpc_peer(ctx), NULL, &id, NULL, 0) != 0 || id.kind != SPIFFE_AGENT)
		return rpc_errorf(ctx, SW_EPERM, "only agent principals speak the agent protocol");
	return 0;
}

static int register_agent(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	struct orch *o = data;
	Slipway__V1__RegisterResponse *resp = (void *)respm;
	char err[512];
	int rc = agent_caller(ctx);
	if (rc != 0)
		return rc;
	if ((rc = authz_require(o->authz, ctx, "run", "agent", NULL, NULL, NULL)) != 0)
		return rc;
	struct enrollment en;
	if ((rc = orch_enrollment_check(o, ctx, rpc_peer(ctx), (const void *)reqm, &en, err,
					sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if ((rc = orch_register(o, ctx, rpc_peer(ctx), (const void *)reqm, &en, err,
				sizeof err)) != 0) {
		if (rc == SW_EPERM)
			orch_register_denied(o, rpc_peer(ctx), err);
		return rpc_errorf(ctx, rc, "%s", err);
	}
	resp->agent_id = (char *)rpc_peer(ctx);
	resp->heartbeat_interval_ms = o->c.heartbeat_ms;
	return 0;
}

static int heartbeat(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		     void *data)
{
	struct orch *o = data;
	const Slipway__V1__HeartbeatRequest *req = (const void *)reqm;
	Slipway__V1__HeartbeatResponse *resp = (void *)respm;
	int rc = agent_caller(ctx);
	if (rc != 0)
		return rc;
	rc = orch_heartbeat(o, rpc_peer(ctx), req->runtime, req->highest_generation);
	if (rc == SW_EINVAL)
		return rpc_errorf(ctx, rc, "runtime larger than %d bytes, or its digest is not "
				  "sha256:<64 lower-case hex>", ORCH_RUNTIME_MAX);
	resp->heartbeat_interval_ms = o->c.heartbeat_ms;
	resp->reregister = rc == SW_ENOTFOUND;
	return 0;
}

static int poll_tasks(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		      void *data)
{
	(void)respm;
	struct orch *o = data;
	const Slipway__V1__PollTasksRequest *req = (const void *)reqm;
	int rc = agent_caller(ctx);
	if (rc != 0)
		return rc;
	if (!orch_agent_online(o, rpc_peer(ctx)))
		return rpc_errorf(ctx, SW_EPRECOND, "register first (RegisterAgent)");
	if (req->wait_ms < 0)
		return rpc_errorf(ctx, SW_EINVAL, "wait_ms must not be negative");
	rpc_defer(ctx);
	orch_waiters_park(o, ctx, rpc_peer(ctx), req->highest_generation, req->wait_ms);
	return RPC_DEFERRED;
}

static int report_task(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		       void *data)
{
	char err[512];
	int rc = agent_caller(ctx);
	if (rc != 0)
		return rc;
	rc = orch_report(data, ctx, rpc_peer(ctx), (const void *)reqm, (void *)respm, err, sizeof err);
	return rc ? rpc_errorf(ctx, rc, "%s", err) : 0;
}

static const struct rpc_method orchestrator_methods[] = {
	{ "CreateDeployment", RPC_UNARY, 0, create_deployment, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "GetDeployment", RPC_UNARY, 0, get_deployment, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ListDeployments", RPC_UNARY, 0, list_deployments, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "CancelDeployment", RPC_UNARY, 0, cancel_deployment, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "PauseDeployment", RPC_UNARY, 0, pause_deployment, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ResumeDeployment", RPC_UNARY, 0, resume_deployment, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "Rollback", RPC_UNARY, 0, rollback, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "GetStatus", RPC_UNARY, 0, get_status, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "WatchDeployment", RPC_SERVER_STREAM, RPC_DEFERS, watch_deployment,
	  RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ListAgents", RPC_UNARY, 0, list_agents, RPC_PEER_USER | RPC_PEER_SERVICE },
};

static const struct rpc_method agent_methods[] = {
	{ "RegisterAgent", RPC_UNARY, 0, register_agent, RPC_PEER_AGENT },
	{ "Heartbeat", RPC_UNARY, RPC_INLINE, heartbeat, RPC_PEER_AGENT },
	{ "PollTasks", RPC_UNARY, RPC_INLINE, poll_tasks, RPC_PEER_AGENT },
	{ "ReportTask", RPC_UNARY, 0, report_task, RPC_PEER_AGENT },
};

int orch_rpc_register(struct orch *o, struct rpc_server *srv, char *err, size_t errlen)
{
	int rc = rpc_server_add_service(srv, &slipway__v1__orchestrator__descriptor,
					orchestrator_methods,
					sizeof orchestrator_methods / sizeof orchestrator_methods[0], o,
					err, errlen);
	if (rc == 0)
		rc = rpc_server_add_service(srv, &slipway__v1__agent_control__descriptor, agent_methods,
					    sizeof agent_methods / sizeof agent_methods[0], o, err,
					    errlen);
	return rc;
}
