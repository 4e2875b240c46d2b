/*
 * provenance.c - the agent's own check of a release's signed provenance.
 *
 * The agent does not take the artifact service's word that a release was
 * signed: for an app that --trusted-builder-keys requires signatures of,
 * before it runs a task's release it asks the artifact service for the
 * release's provenance statement and signature (GetProvenance), and
 * verifies them itself with its own copy of the trusted builder keys
 * (lib/provenance, the same file format as the artifact service's
 * --trusted-keys): the statement must be canonical, be about this app,
 * version and digest, and verify with a key trusted for the app. A
 * release that is unsigned, whose statement was altered where it is
 * stored, or that is signed by a key the agent does not trust, fails the
 * task with the reason; nothing of it runs. Apps the file does not
 * require signatures of are not checked (the artifact service and the
 * policy still refuse a signature that does not verify at push).
 */
#include "agent.h"
#include "err.h"
#include "log.h"
#include "provenance.h"

#include "slipway/v1/artifact.pb-c.h"

#include <stdio.h>
#include <string.h>

#define CALL_TIMEOUT_MS 10000

int agent_provenance_init(struct agent *a, char *err, size_t errlen)
{
	const char *path = a->cfg->trusted_builder_keys;
	char why[512];
	a->builder_keys = NULL;
	if (path == NULL || path[0] == '\0')
		return 0;
	int rc = prov_keys_load(path, &a->builder_keys, why, sizeof why);
	if (rc != 0)
		return sw_errf(err, errlen, rc, "--trusted-builder-keys %s", why);
	log_info("trusted builder keys loaded", "file=%s keys=%zu", path,
		 prov_keys_count(a->builder_keys));
	return 0;
}

void agent_provenance_free(struct agent *a)
{
	prov_keys_free(a->builder_keys);
	a->builder_keys = NULL;
}

/* Checks one release's statement and signature for the task. */
static int check(const struct prov_keys *k, const char *app, const struct agent_task *t,
		 const Slipway__V1__Release *rel, char *msg, size_t len)
{
	const Slipway__V1__Provenance *pv = rel->provenance;
	struct prov_statement st;
	char why[256], used[PROV_KEY_NAME_MAX + 1];
	if (pv == NULL || pv->signature.len == 0 || pv->statement.len == 0)
		return sw_errf(msg, len, SW_EPERM,
			       "release %s@%s is unsigned: app %s requires a signed provenance "
			       "statement (this agent's --trusted-builder-keys)",
			       app, rel->version, app);
	if (prov_parse(pv->statement.data, pv->statement.len, &st, why, sizeof why) != 0)
		return sw_errf(msg, len, SW_EPERM, "release %s@%s: bad provenance signature: %s", app,
			       rel->version, why);
	if (strcmp(st.app, app) != 0 || strcmp(st.version, rel->version) != 0 ||
	    strcmp(st.digest, t->digest) != 0)
		return sw_errf(msg, len, SW_EPERM,
			       "release %s@%s: bad provenance signature: the signed statement is "
			       "about %s@%s %.19s...",
			       app, rel->version, st.app, st.version, st.digest);
	if (prov_keys_verify(k, app, pv->statement.data, pv->statement.len, pv->signature.data,
			     pv->signature.len, pv->signing_key, used, sizeof used, NULL, 0, why,
			     sizeof why) != 0)
		return sw_errf(msg, len, SW_EPERM,
			       "release %s@%s: provenance signature refused: %s", app, rel->version,
			       why);
	log_info("release provenance verified", "app=%s version=%s digest=%s key=%s ref=%s", app,
		 rel->version, t->digest, used, st.ref);
	return 0;
}

int agent_verify_provenance(struct agent *a, const struct agent_task *t, int64_t deadline_ms,
			    char *msg, size_t len)
{
	const char *app = t->app[0] != '\0' ? t->app : agent_labels_get(&a->cfg->labels, "app");
	if (a->builder_keys == NULL || app == NULL || !prov_keys_required(a->builder_keys, app))
		return 0;
	int64_t left = deadline_ms - agent_now_ms();
	if (left <= 0)
		return sw_errf(msg, len, SW_ETIMEDOUT, "deadline passed before the provenance check");
	struct rpc_call_opts o = { .timeout_ms = left < CALL_TIMEOUT_MS ? left : CALL_TIMEOUT_MS };
	Slipway__V1__GetProvenanceRequest req = SLIPWAY__V1__GET_PROVENANCE_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	char err[256];
	req.digest = (char *)t->digest;
	int rc = rpc_call(a->artifact, &slipway__v1__artifact__descriptor, "GetProvenance",
			  &req.base, &m, &o, err, sizeof err);
	if (rc != 0)
		return sw_errf(msg, len, rc, "cannot read the release's provenance: %s", err);
	const Slipway__V1__GetProvenanceResponse *r = (const void *)m;
	const Slipway__V1__Release *rel = NULL;
	for (size_t i = 0; i < r->n_releases && rel == NULL; i++)
		if (strcmp(r->releases[i]->app, app) == 0 &&
		    (t->version[0] == '\0' || strcmp(r->releases[i]->version, t->version) == 0))
			rel = r->releases[i];
	if (rel == NULL)
		rc = sw_errf(msg, len, SW_EPERM,
			     "no release %s@%s with digest %.19s...: its provenance signature cannot "
			     "be checked",
			     app, t->version, t->digest);
	else
		rc = check(a->builder_keys, app, t, rel, msg, len);
	if (rc != 0)
		log_warn("release refused: provenance", "app=%s version=%s digest=%s reason=%s", app,
			 t->version, t->digest, msg);
	protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}
