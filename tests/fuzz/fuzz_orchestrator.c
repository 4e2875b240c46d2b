/*
 * fuzz_orchestrator.c - request validation of the orchestrator
 * (services/orchestrator/deploy.c: orch_create_check,
 * orch_rollback_check): everything CreateDeployment and Rollback check
 * before they touch the database or another service.
 *
 * The first input byte picks the message; the rest is it, packed.
 *
 *   0  CreateDeploymentRequest. An accepted request names an app and an
 *      environment of [a-z0-9-]{1,63} (not starting with '-'), exactly one
 *      of a valid version or a digest in its one spelling
 *      ("sha256:<64 lower-case hex>", as digest_parse says), a known
 *      priority, an idempotency key of at most 64 [A-Za-z0-9._:-], and a
 *      reason of 1-1000 bytes when it breaks glass. The strategy and
 *      failure policy come back as JSON within the documented ranges
 *      (rolling, or canary exactly when a canary was asked for, with
 *      exactly one of canary_size and canary_percent and a bake of
 *      0..86400000 ms; exactly one of batch_size and batch_percent set,
 *      percents <= 100, at most 10000 failed targets tolerated, retries
 *      <= 10, backoff 0..600000 ms, deadline 1000..86400000 ms, pause
 *      0..3600000 ms; all of them fit the int the engine reads them
 *      into). A refusal says why.
 *   1  RollbackRequest: names as above, to_version empty or valid, reason
 *      at most 1000 bytes.
 *   2  HeartbeatRequest: a runtime orch_runtime_ok lets the registry store
 *      is at most ORCH_RUNTIME_MAX bytes packed and its digest (a text
 *      column shared by a multi-row UPDATE) is empty or "sha256:<hex>".
 */
#include "fuzz.h"

#include "../../services/orchestrator/orch.h"
#include "digest.h"
#include "err.h"

#include <jansson.h>

static int name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 63 || s[0] == '-')
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-'))
			return 0;
	return 1;
}

static int version_ok(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 128 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || strchr("._+-", s[i])))
			return 0;
	return 1;
}

static long long geti(json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);
	FUZZ_CHECK(json_is_integer(v), "JSON field %s missing", k);
	return json_integer_value(v);
}

static void mode_create(const uint8_t *p, size_t n)
{
	Slipway__V1__CreateDeploymentRequest *req =
		slipway__v1__create_deployment_request__unpack(NULL, n, p);
	if (req == NULL)
		return;
	json_t *st = NULL, *fp = NULL;
	char err[512] = "";
	int rc = orch_create_check(req, (struct json_t **)&st, (struct json_t **)&fp, err,
				   sizeof err);
	if (rc != 0) {
		FUZZ_CHECK(rc == SW_EINVAL && err[0] != '\0', "refusal %d without a reason", rc);
		FUZZ_CHECK(st == NULL && fp == NULL, "JSON left behind on a refusal");
		goto out;
	}
	FUZZ_CHECK(name_ok(req->app) && name_ok(req->environment), "app/env '%s'/'%s'", req->app,
		   req->environment);
	if (req->release_case == SLIPWAY__V1__CREATE_DEPLOYMENT_REQUEST__RELEASE_VERSION)
		FUZZ_CHECK(version_ok(req->version), "version '%s'", req->version);
	else if (req->release_case == SLIPWAY__V1__CREATE_DEPLOYMENT_REQUEST__RELEASE_DIGEST)
		FUZZ_CHECK(digest_parse(req->digest, NULL) == 0, "digest '%s' accepted", req->digest);
	else
		FUZZ_CHECK(0, "accepted without a version or digest");
	FUZZ_CHECK(req->priority == SLIPWAY__V1__PRIORITY__PRIORITY_NORMAL ||
			   req->priority == SLIPWAY__V1__PRIORITY__PRIORITY_HOTFIX,
		   "priority %d", (int)req->priority);
	size_t kl = strlen(req->idempotency_key);
	FUZZ_CHECK(kl <= 64 && strspn(req->idempotency_key,
				      "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
				      "0123456789._:-") == kl,
		   "idempotency key");
	if (req->break_glass)
		FUZZ_CHECK(req->break_glass_reason[0] != '\0' &&
				   strlen(req->break_glass_reason) <= 1000,
			   "break glass reason");

	FUZZ_CHECK(json_is_object(st) && json_is_object(fp), "strategy/failure JSON");
	const char *kind = json_string_value(json_object_get(st, "kind"));
	FUZZ_CHECK(kind != NULL && (strcmp(kind, "rolling") == 0 || strcmp(kind, "canary") == 0),
		   "strategy kind");
	FUZZ_CHECK((strcmp(kind, "canary") == 0) ==
			   (req->strategy != NULL &&
			    req->strategy->kind_case == SLIPWAY__V1__STRATEGY__KIND_CANARY),
		   "a canary exactly when asked for");
	if (strcmp(kind, "canary") == 0) {
		long long cs = geti(st, "canary_size"), cp = geti(st, "canary_percent");
		long long bake = geti(st, "bake_ms");
		FUZZ_CHECK(cs >= 0 && cs <= 10000 && cp >= 0 && cp <= 100 && ((cs != 0) != (cp != 0)),
			   "canary_size %lld canary_percent %lld", cs, cp);
		FUZZ_CHECK(bake >= 0 && bake <= 86400000, "bake_ms %lld", bake);
	}
	long long bs = geti(st, "batch_size"), bp = geti(st, "batch_percent");
	FUZZ_CHECK(bs >= 0 && bs <= 10000 && bp >= 0 && bp <= 100 && ((bs != 0) != (bp != 0)),
		   "batch_size %lld batch_percent %lld", bs, bp);
	long long mu = geti(st, "max_unavailable"), pause = geti(st, "pause_ms");
	FUZZ_CHECK(mu >= 0 && mu <= 10000 && pause >= 0 && pause <= 3600000, "strategy ranges");
	long long act = geti(fp, "action");
	FUZZ_CHECK(act >= 0 && act <= 2, "failure action %lld", act);
	long long mf = geti(fp, "max_failed"), mfp = geti(fp, "max_failed_percent");
	long long retries = geti(fp, "retries"), backoff = geti(fp, "retry_backoff_ms");
	long long deadline = geti(fp, "progress_deadline_ms");
	FUZZ_CHECK(mf >= 0 && mf <= 10000 && mfp >= 0 && mfp <= 100 && retries >= 0 && retries <= 10 &&
			   backoff >= 0 && backoff <= 600000 && deadline >= 1000 &&
			   deadline <= 86400000,
		   "failure policy ranges");
	json_decref(st);
	json_decref(fp);
out:
	slipway__v1__create_deployment_request__free_unpacked(req, NULL);
}

static void mode_rollback(const uint8_t *p, size_t n)
{
	Slipway__V1__RollbackRequest *req = slipway__v1__rollback_request__unpack(NULL, n, p);
	if (req == NULL)
		return;
	char err[512] = "";
	int rc = orch_rollback_check(req, err, sizeof err);
	if (rc != 0) {
		FUZZ_CHECK(rc == SW_EINVAL && err[0] != '\0', "refusal %d without a reason", rc);
	} else {
		FUZZ_CHECK(name_ok(req->app) && name_ok(req->environment), "names");
		FUZZ_CHECK(req->to_version[0] == '\0' || version_ok(req->to_version), "to_version");
		FUZZ_CHECK(strlen(req->reason) <= 1000, "reason");
	}
	slipway__v1__rollback_request__free_unpacked(req, NULL);
}

static void mode_heartbeat(const uint8_t *p, size_t n)
{
	Slipway__V1__HeartbeatRequest *req = slipway__v1__heartbeat_request__unpack(NULL, n, p);
	if (req == NULL)
		return;
	const Slipway__V1__AgentRuntime *rt = req->runtime;
	if (orch_runtime_ok(rt) && rt != NULL) {
		FUZZ_CHECK(slipway__v1__agent_runtime__get_packed_size(rt) <= ORCH_RUNTIME_MAX,
			   "runtime size");
		FUZZ_CHECK(rt->digest[0] == '\0' || digest_parse(rt->digest, NULL) == 0,
			   "runtime digest '%s' would be stored", rt->digest);
	}
	slipway__v1__heartbeat_request__free_unpacked(req, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = { data, size };
	switch (fz_u8(&f) % 3) {
	case 0: mode_create(f.p, f.n); break;
	case 1: mode_rollback(f.p, f.n); break;
	default: mode_heartbeat(f.p, f.n); break;
	}
	return 0;
}
