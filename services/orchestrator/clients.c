/*
 * clients.c - the orchestrator's channels to the other services and its
 * audit events (through the outbox).
 */
#include "err.h"
#include "log.h"
#include "orch.h"

#include <stdio.h>
#include <string.h>

int orch_clients_open(struct orch *o, char *err, size_t errlen)
{
	struct orch_config *c = &o->c;
	int rc;
	if ((rc = svc_client(&c->svc, c->audit_addr, "audit", &o->audit, err, errlen)) != 0 ||
	    (rc = svc_client(&c->svc, c->policy_addr, "policy", &o->policy, err, errlen)) != 0 ||
	    (rc = svc_client(&c->svc, c->artifact_addr, "artifact", &o->artifact, err, errlen)) != 0)
		return rc;
	if (c->secrets_addr && c->secrets_addr[0] &&
	    (rc = svc_client(&c->svc, c->secrets_addr, "secrets", &o->secrets, err, errlen)) != 0)
		return rc;
	struct authz_opts ao = { .policy = o->policy };
	if ((rc = authz_new(&ao, &o->authz, err, errlen)) != 0)
		return rc;
	struct outbox_relay_opts ro = { .db = o->db, .audit = o->audit };
	return outbox_relay_start(&ro, &o->relay, err, errlen);
}

void orch_clients_close(struct orch *o)
{
	outbox_relay_stop(o->relay, 5000);
	o->relay = NULL;
	authz_free(o->authz);
	o->authz = NULL;
	rpc_client_free(o->audit);
	rpc_client_free(o->policy);
	rpc_client_free(o->artifact);
	rpc_client_free(o->secrets);
	o->audit = o->policy = o->artifact = o->secrets = NULL;
}

int orch_audit_scoped(struct orch *o, struct db_conn *c, const char *actor, const char *action,
		      const char *resource, int outcome, const char *app, const char *env,
		      const char *k1, const char *v1, const char *k2, const char *v2, char *err,
		      size_t errlen)
{
	struct outbox_event e = {
		.actor = actor,
		.action = action,
		.resource = resource,
		.outcome = (Slipway__V1__Outcome)outcome,
	};
	if (k1 != NULL)
		outbox_detail(&e, k1, v1);
	if (k2 != NULL)
		outbox_detail(&e, k2, v2);
	if (app != NULL && app[0] != '\0')
		outbox_detail(&e, "app", app);
	if (env != NULL && env[0] != '\0')
		outbox_detail(&e, "environment", env);
	int rc = outbox_add(c, "orchestrator", &e, err, errlen);
	if (rc == 0)
		outbox_relay_kick(o->relay);
	return rc;
}

int orch_audit(struct orch *o, struct db_conn *c, const char *actor, const char *action,
	       const char *resource, int outcome, const char *k1, const char *v1, const char *k2,
	       const char *v2, char *err, size_t errlen)
{
	static const char prefix[] = "deployment/";
	PGresult *r = NULL;
	const char *app = NULL, *env = NULL;
	int rc;
	if (resource != NULL && strncmp(resource, prefix, sizeof prefix - 1) == 0) {
		const char *id = resource + sizeof prefix - 1;
		if ((rc = db_q(c, "SELECT app, environment FROM deployments WHERE id = $1", 1, &id,
			       &r, err, errlen)) != 0)
			return rc;
		if (PQntuples(r) == 1) {
			app = PQgetvalue(r, 0, 0);
			env = PQgetvalue(r, 0, 1);
		}
	}
	rc = orch_audit_scoped(o, c, actor, action, resource, outcome, app, env, k1, v1, k2, v2,
			       err, errlen);
	PQclear(r);
	return rc;
}
