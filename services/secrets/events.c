/*
 * events.c - the secrets service's audit events and authorization.
 *
 * State changes add their event inside their own transaction (outbox);
 * failures and denials, which change nothing, commit their event alone.
 * Events carry names, scopes, versions, deployments and agents: never a
 * value, never key material.
 */
#include "secrets.h"

#include "err.h"
#include "log.h"
#include "clock.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

int64_t sec_now_ms(void)
{
	return clock_wall_ms();
}

const char *sec_resource(char *out, size_t cap, const char *app, const char *env,
			 const char *name)
{
	snprintf(out, cap, "secret/%s/%s/%s", app && *app ? app : "-", env && *env ? env : "*",
		 name && *name ? name : "*");
	return out;
}

int sec_audit_add(struct db_conn *c, const struct outbox_event *e, char *err, size_t errlen)
{
	return outbox_add(c, SEC_SERVICE, e, err, errlen);
}

void sec_audit_kick(struct sec *s)
{
	if (s->relay != NULL)
		outbox_relay_kick(s->relay);
}

static int alone_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	return sec_audit_add(c, arg, err, errlen);
}

void sec_audit_alone(struct sec *s, const struct outbox_event *e)
{
	char err[256];
	if (db_tx(s->db, NULL, alone_tx, (void *)e, err, sizeof err) != 0) {
		log_error("could not record an audit event", "action=%s resource=%s error=%s",
			  e->action, e->resource, err);
		return;
	}
	sec_audit_kick(s);
}

int sec_authorize(struct sec *s, struct rpc_ctx *parent, const char *peer, const char *action,
		  const char *event_action, const char *app, const char *env, const char *name,
		  char *err, size_t errlen)
{
	char why[512], res[320];
	int rc;
	if (s->authz == NULL) {
		sw_errf(why, sizeof why, 0, "no policy service is configured (--policy-addr)");
		rc = SW_EUNAVAIL;
	} else {
		struct authz_req q = { peer, action, "secret", app, env, name };
		rc = authz_check(s->authz, parent, &q, why, sizeof why);
	}
	if (rc == 0)
		return 0;
	struct outbox_event e = { .actor = peer, .action = event_action,
				  .resource = sec_resource(res, sizeof res, app, env, name),
				  .outcome = rc == SW_EPERM ? SLIPWAY__V1__OUTCOME__OUTCOME_DENIED
							    : SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE };
	outbox_detail(&e, "permission", action);
	if (app != NULL && app[0] != '\0')
		outbox_detail(&e, "app", app);
	if (env != NULL && env[0] != '\0')
		outbox_detail(&e, "environment", env);
	outbox_detail(&e, "reason", rc == SW_EPERM ? "denied by policy" : "policy unavailable");
	sec_audit_alone(s, &e);
	if (rc == SW_EPERM)
		return sw_errf(err, errlen, rc, "permission denied: %s may not %s secret %s: %s",
			       peer, action, res + 7, why);
	return sw_errf(err, errlen, rc, "cannot authorize: %s", why);
}
