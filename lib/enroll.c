/*
 * enroll.c - reading agent enrollments from the policy service.
 */
#include "enroll.h"

#include "err.h"

#include <string.h>

static int copy(char *dst, size_t n, const char *src)
{
	size_t len = src ? strlen(src) : 0;
	if (len >= n)
		return -1;
	memcpy(dst, src ? src : "", len + 1);
	return 0;
}

int enrollment_from_proto(const Slipway__V1__Enrollment *m, struct enrollment *out)
{
	memset(out, 0, sizeof *out);
	if (copy(out->agent_id, sizeof out->agent_id, m->agent_id) != 0 ||
	    copy(out->app, sizeof out->app, m->app) != 0 ||
	    copy(out->env, sizeof out->env, m->environment) != 0 ||
	    copy(out->region, sizeof out->region, m->region) != 0 ||
	    copy(out->group, sizeof out->group, m->group) != 0)
		return SW_EINVAL;
	if (m->seal_public_key.len == sizeof out->seal_key) {
		memcpy(out->seal_key, m->seal_public_key.data, sizeof out->seal_key);
		out->has_key = 1;
	} else if (m->seal_public_key.len != 0) {
		return SW_EINVAL;
	}
	out->revision = m->revision;
	out->removed = m->removed;
	return 0;
}

int enrollment_get(struct rpc_client *policy, struct rpc_ctx *parent, const char *agent,
		   int timeout_ms, struct enrollment *out, char *err, size_t errlen)
{
	if (policy == NULL)
		return sw_errf(err, errlen, SW_EUNAVAIL,
			       "no policy service configured: enrollments cannot be checked");
	Slipway__V1__GetEnrollmentRequest req = SLIPWAY__V1__GET_ENROLLMENT_REQUEST__INIT;
	req.agent_id = (char *)agent;
	ProtobufCMessage *m = NULL;
	struct rpc_call_opts co = { .timeout_ms = timeout_ms, .parent = parent };
	int rc = rpc_call(policy, &slipway__v1__enrollments__descriptor, "GetEnrollment", &req.base,
			  &m, &co, err, errlen);
	if (rc != 0)
		return rc;
	rc = enrollment_from_proto((const void *)m, out);
	protobuf_c_message_free_unpacked(m, NULL);
	if (rc != 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "the policy service sent a malformed enrollment");
	if (out->removed)
		return sw_errf(err, errlen, SW_ENOTFOUND, "%s is not enrolled (unenrolled)", agent);
	return 0;
}
