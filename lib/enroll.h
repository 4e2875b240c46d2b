/*
 * enroll.h - agent enrollments as the policy service keeps them
 * (proto/slipway/v1/enrollment.proto): the administrative binding of an
 * agent's SPIFFE ID to an app, environment, region and group, and its
 * pinned sealing key. The orchestrator reads them to register agents and
 * the secrets service to check a grant's recipient; neither trusts what
 * an agent or another service's database says instead.
 */
#ifndef SLIPWAY_ENROLL_H
#define SLIPWAY_ENROLL_H

#include <stddef.h>
#include <stdint.h>

#include "rpc.h"
#include "spiffe.h"
#include "slipway/v1/enrollment.pb-c.h"

struct enrollment {
	char agent_id[SPIFFE_ID_MAX + 1];
	char app[64], env[64], region[64], group[64];
	uint8_t seal_key[32];
	int has_key;                /* 0: not pinned yet */
	uint64_t revision;
	int removed;
};

/* Copies a message into out. 0, or SW_EINVAL when a field does not fit. */
int enrollment_from_proto(const Slipway__V1__Enrollment *m, struct enrollment *out);

/* Asks the policy service for agent's enrollment (deadline timeout_ms;
 * parent, when not NULL, is the call being served). 0; SW_ENOTFOUND when
 * the agent is not enrolled (or was unenrolled); another code when the
 * policy service cannot say (callers fail closed). */
int enrollment_get(struct rpc_client *policy, struct rpc_ctx *parent, const char *agent,
		   int timeout_ms, struct enrollment *out, char *err, size_t errlen);

#endif
