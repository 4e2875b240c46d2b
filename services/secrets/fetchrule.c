/*
 * fetchrule.c - the pure decisions of Fetch (grants.c does the I/O).
 *
 * Given what the database says about the caller's grants for a
 * deployment and the state of each pinned version, these functions say
 * whether the fetch may go on and, when not, with which code, which words
 * for the agent and which reason for the audit event. No I/O, no clock:
 * table-driven unit tests cover them (tests/unit/test_secrets_fetch.c).
 */
#include "secrets.h"

#include "err.h"

#include <stdio.h>

int sec_fetch_no_grant(const struct sec_grant_seen *g, const char *deployment,
		       const char *agent, int64_t now_ms, const char **reason, char *err,
		       size_t errlen)
{
	if (!g->found) {
		*reason = "no grant for the deployment";
		return sw_errf(err, errlen, SW_EPERM, "no grant for deployment %s to %s", deployment,
			       agent);
	}
	if (g->mine) {
		*reason = "grant expired";
		return sw_errf(err, errlen, SW_EPRECOND,
			       "the grant for deployment %s to %s expired %lld ms ago", deployment,
			       agent, (long long)(now_ms - g->expires_ms));
	}
	*reason = "grant belongs to another agent";
	/* Same words as "no grant": an agent learns nothing about others. */
	return sw_errf(err, errlen, SW_EPERM, "no grant for deployment %s to %s", deployment, agent);
}

int sec_fetch_version_ok(int has_state, int state, const char *name, uint32_t version,
			 const char **reason, char *err, size_t errlen)
{
	if (has_state && state == SEC_ENABLED)
		return 0;
	int disabled = has_state && state == SEC_DISABLED;
	*reason = disabled ? "version disabled" : "version destroyed";
	return sw_errf(err, errlen, SW_EPRECOND, "version %u of secret %s is %s", version, name,
		       disabled ? "disabled" : "destroyed");
}

int64_t sec_bundle_expiry(int64_t now_ms, int64_t bundle_ttl_ms, int64_t grant_expires_ms)
{
	return now_ms + bundle_ttl_ms < grant_expires_ms ? now_ms + bundle_ttl_ms
							 : grant_expires_ms;
}
