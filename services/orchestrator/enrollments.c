/*
 * enrollments.c - agents register only inside their enrollment.
 *
 * An agent's scope (app, environment, region, group) and sealing key are
 * what an admin enrolled in the policy service (proto/slipway/v1/
 * enrollment.proto), never what the agent says: a registration outside
 * its enrollment is refused and audited. The first registration pins the
 * sealing key the agent presents; another key later needs a new
 * enrollment. The side thread follows enrollment changes and drops the
 * registrations they no longer allow (unenrolled, moved, re-keyed), so a
 * lost host an admin unenrolls stops being a target at once.
 */
#include "err.h"
#include "log.h"
#include "orch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK_TIMEOUT_MS 3000
#define FOLLOW_PAGE 500

/* Refuses a registration (recorded): why is in err. */
static int refuse(struct orch *o, const char *agent, char *err)
{
	orch_register_denied(o, agent, err);
	return SW_EPERM;
}

int orch_enrollment_check(struct orch *o, struct rpc_ctx *ctx, const char *agent,
			  const Slipway__V1__RegisterRequest *req, struct enrollment *en, char *err,
			  size_t errlen)
{
	char why[512];
	int rc = enrollment_get(o->policy, ctx, agent, CHECK_TIMEOUT_MS, en, why, sizeof why);
	if (rc == SW_ENOTFOUND) {
		snprintf(err, errlen,
			 "%s is not enrolled: an admin enrolls it first (slipway agents enroll %s "
			 "--app APP --env ENV)",
			 agent, agent);
		return refuse(o, agent, err);
	}
	if (rc != 0)
		return sw_errf(err, errlen, SW_EUNAVAIL,
			       "cannot check the agent's enrollment with the policy service: %s", why);
	if (strcmp(en->agent_id, agent) != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "the policy service answered for another agent");
	if (req->seal_public_key.len != 32)
		return sw_errf(err, errlen, SW_EINVAL, "seal_public_key must be a 32-byte X25519 key");
	if (en->has_key) {
		if (memcmp(en->seal_key, req->seal_public_key.data, 32) == 0)
			return 0;
		snprintf(err, errlen,
			 "%s presents another sealing key than the one pinned in its enrollment: "
			 "an admin must enroll it again (slipway agents enroll %s ...)",
			 agent, agent);
		return refuse(o, agent, err);
	}
	/* The first registration since the enrollment pins the key. */
	Slipway__V1__PinSealingKeyRequest pin = SLIPWAY__V1__PIN_SEALING_KEY_REQUEST__INIT;
	pin.agent_id = (char *)agent;
	pin.seal_public_key = req->seal_public_key;
	ProtobufCMessage *m = NULL;
	struct rpc_call_opts co = { .timeout_ms = CHECK_TIMEOUT_MS, .parent = ctx };
	rc = rpc_call(o->policy, &slipway__v1__enrollments__descriptor, "PinSealingKey", &pin.base,
		      &m, &co, why, sizeof why);
	if (rc == SW_EPRECOND || rc == SW_ENOTFOUND) {
		snprintf(err, errlen, "%s", why);
		return refuse(o, agent, err);
	}
	if (rc != 0)
		return sw_errf(err, errlen, SW_EUNAVAIL, "cannot pin the agent's sealing key: %s", why);
	rc = enrollment_from_proto((const void *)m, en);
	protobuf_c_message_free_unpacked(m, NULL);
	if (rc != 0 || !en->has_key || memcmp(en->seal_key, req->seal_public_key.data, 32) != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "the policy service pinned another key");
	log_info("agent sealing key pinned", "agent=%s", agent);
	return 0;
}

/* ---- following changes ---- */

/* Appends "id" to a text[] literal (ids are SPIFFE IDs: no quotes or
 * backslashes, spiffe_parse checked them in the policy service; anything
 * else is skipped, which drops that agent: fail closed). */
static int ids_add(char **buf, size_t *len, size_t *cap, const char *id)
{
	if (strpbrk(id, "\"\\{},") != NULL)
		return 0;
	size_t n = strlen(id);
	if (*len + n + 6 > *cap) {
		size_t nc = (*cap + n + 6) * 2;
		char *nb = realloc(*buf, nc);
		if (nb == NULL)
			return -1;
		*buf = nb;
		*cap = nc;
	}
	*len += (size_t)sprintf(*buf + *len, "%s\"%s\"", *len > 1 ? "," : "", id);
	return 0;
}

void orch_enrollments_follow(struct orch *o)
{
	char err[512];
	int full = !o->enroll_synced;
	size_t ilen = 1, icap = 4096;
	char *ids = full ? malloc(icap) : NULL;
	if (full && ids == NULL)
		return;
	if (full)
		strcpy(ids, "{");
	uint64_t after = full ? 0 : o->enroll_rev, last = after;
	for (int page = 0; page < 100 && !atomic_load(&o->stopping); page++) {
		Slipway__V1__ListEnrollmentsRequest req = SLIPWAY__V1__LIST_ENROLLMENTS_REQUEST__INIT;
		req.after_revision = after;
		req.limit = FOLLOW_PAGE;
		req.include_removed = 1;
		ProtobufCMessage *m = NULL;
		struct rpc_call_opts co = { .timeout_ms = CHECK_TIMEOUT_MS };
		if (rpc_call(o->policy, &slipway__v1__enrollments__descriptor, "ListEnrollments",
			     &req.base, &m, &co, err, sizeof err) != 0) {
			log_warn("enrollments not followed; will retry", "error=%s", err);
			goto out;
		}
		Slipway__V1__ListEnrollmentsResponse *r = (void *)m;
		int bad = 0;
		for (size_t i = 0; i < r->n_enrollments && !bad; i++) {
			struct enrollment en;
			if (enrollment_from_proto(r->enrollments[i], &en) != 0)
				continue;
			if (orch_agent_reconcile(o, &en, err, sizeof err) != 0) {
				log_warn("enrollment change not applied; will retry", "agent=%s error=%s",
					 en.agent_id, err);
				bad = 1;
				break;
			}
			if (full && !en.removed && ids_add(&ids, &ilen, &icap, en.agent_id) != 0)
				bad = 1;
			after = en.revision;
		}
		int more = r->more;
		protobuf_c_message_free_unpacked(m, NULL);
		if (bad)
			goto out;
		last = after;
		if (!more)
			break;
		if (page == 99)
			goto out; /* not the whole listing: no full reconciliation this time */
	}
	if (full) {
		ids[ilen++] = '}';
		ids[ilen] = '\0';
		if (orch_agents_drop_unenrolled(o, ids, err, sizeof err) != 0) {
			log_warn("unenrolled agents not dropped; will retry", "error=%s", err);
			goto out;
		}
		o->enroll_synced = 1;
	}
	o->enroll_rev = last;
out:
	free(ids);
}
