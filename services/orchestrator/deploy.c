/*
 * deploy.c - deployment requests: validation, release resolution, the
 * target plan, the policy gate, the bounded queue and idempotency; manual
 * rollback; cancel, pause and resume.
 */
#include "clock.h"
#include "digest.h"
#include "err.h"
#include "log.h"
#include "names.h"
#include "orch.h"

#include "slipway/v1/artifact.pb-c.h"
#include "slipway/v1/policy.pb-c.h"
#include "slipway/v1/secrets.pb-c.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

void orch_new_id(char out[ORCH_ID_MAX], const char *prefix)
{
	unsigned char b[6];
	if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
		memset(b, 0, sizeof b);
	/* Sortable by time to the second, unique by 48 random bits. */
	time_t t = time(NULL);
	struct tm tm;
	gmtime_r(&t, &tm);
	snprintf(out, ORCH_ID_MAX, "%.4s%04d%02d%02d-%02d%02d%02d-%02x%02x%02x%02x%02x%02x", prefix,
		 (tm.tm_year + 1900) % 10000, (tm.tm_mon + 1) % 100, tm.tm_mday % 100,
		 tm.tm_hour % 100, tm.tm_min % 100, tm.tm_sec % 100, b[0], b[1], b[2], b[3], b[4],
		 b[5]);
}

static int token_ok(const char *s, size_t max)
{
	size_t n = strlen(s);
	if (n > max)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= 'A' && s[i] <= 'Z') ||
		      (s[i] >= '0' && s[i] <= '9') || strchr("._:-", s[i])))
			return 0;
	return 1;
}

int orch_authorize(struct orch *o, struct rpc_ctx *ctx, const char *action, const char *app,
		   const char *env, char *err, size_t errlen)
{
	struct authz_req q = { rpc_peer(ctx), action, "deployment", app, env, NULL };
	char why[512];
	int rc = authz_check(o->authz, ctx, &q, why, sizeof why);
	if (rc == SW_EPERM)
		return sw_errf(err, errlen, rc, "permission denied: %s may not %s in %s/%s: %s",
			       rpc_peer(ctx), action, app, env, why);
	if (rc != 0)
		return sw_errf(err, errlen, rc, "cannot authorize: %s", why);
	return 0;
}

/* ---- the release ---- */

struct release {
	char version[130];
	char digest[80];
	Slipway__V1__Release *pb; /* for the policy facts (provenance) */
};

static int resolve_release(struct orch *o, struct rpc_ctx *ctx, const char *app,
			   const char *version, const char *digest, struct release *out, char *err,
			   size_t errlen)
{
	ProtobufCMessage *m = NULL;
	struct rpc_call_opts co = { .timeout_ms = 10000, .parent = ctx };
	int rc;
	memset(out, 0, sizeof *out);
	if (version != NULL && version[0]) {
		Slipway__V1__ResolveRequest req = SLIPWAY__V1__RESOLVE_REQUEST__INIT;
		req.app = (char *)app;
		req.version = (char *)version;
		rc = rpc_call(o->artifact, &slipway__v1__artifact__descriptor, "Resolve", &req.base,
			      &m, &co, err, errlen);
		if (rc != 0)
			return rc == SW_ENOTFOUND
				       ? sw_errf(err, errlen, SW_ENOTFOUND, "no release %s@%s", app, version)
				       : rc;
		out->pb = (void *)m;
	} else {
		Slipway__V1__GetProvenanceRequest req = SLIPWAY__V1__GET_PROVENANCE_REQUEST__INIT;
		req.digest = (char *)digest;
		rc = rpc_call(o->artifact, &slipway__v1__artifact__descriptor, "GetProvenance",
			      &req.base, &m, &co, err, errlen);
		if (rc != 0)
			return rc == SW_ENOTFOUND
				       ? sw_errf(err, errlen, SW_ENOTFOUND, "no release with digest %s", digest)
				       : rc;
		Slipway__V1__GetProvenanceResponse *p = (void *)m;
		/* Of the app's releases with this digest, one whose provenance
		 * verified if there is one. */
		size_t pick = p->n_releases;
		for (size_t i = 0; i < p->n_releases; i++)
			if (strcmp(p->releases[i]->app, app) == 0 &&
			    (pick == p->n_releases ||
			     (p->releases[i]->provenance && p->releases[i]->provenance->verified &&
			      !(p->releases[pick]->provenance &&
				p->releases[pick]->provenance->verified))))
				pick = i;
		for (size_t i = pick; i < p->n_releases; i++)
			if (strcmp(p->releases[i]->app, app) == 0) {
				/* Keep that release: unpack a copy of it. */
				size_t len = slipway__v1__release__get_packed_size(p->releases[i]);
				uint8_t *buf = malloc(len ? len : 1);
				if (buf != NULL) {
					slipway__v1__release__pack(p->releases[i], buf);
					out->pb = slipway__v1__release__unpack(NULL, len, buf);
					free(buf);
				}
				break;
			}
		protobuf_c_message_free_unpacked(m, NULL);
		if (out->pb == NULL)
			return sw_errf(err, errlen, SW_ENOTFOUND, "digest %s is not a release of %s", digest,
				       app);
	}
	/* An app whose releases must be signed never deploys one whose
	 * provenance statement did not verify at push (pushed unsigned before
	 * the requirement, or signed over the digest alone). The agent checks
	 * again with its own keys. */
	if (out->pb->signature_required &&
	    (out->pb->provenance == NULL || !out->pb->provenance->verified)) {
		rc = sw_errf(err, errlen, SW_EPRECOND,
			     "release %s@%s is unsigned (no verified provenance statement) and app "
			     "%s requires signatures",
			     app, out->pb->version, app);
		slipway__v1__release__free_unpacked(out->pb, NULL);
		out->pb = NULL;
		return rc;
	}
	snprintf(out->version, sizeof out->version, "%s", out->pb->version);
	snprintf(out->digest, sizeof out->digest, "%s", out->pb->digest);
	return 0;
}

static void release_free(struct release *r)
{
	if (r->pb != NULL)
		slipway__v1__release__free_unpacked(r->pb, NULL);
	r->pb = NULL;
}

/* ---- strategy and failure policy ---- */

static int check_plan(const Slipway__V1__CreateDeploymentRequest *req, json_t **strategy,
		      json_t **failure, char *err, size_t errlen)
{
	uint32_t batch = 0, percent = 0, max_unavail = 0, canary = 0, canary_pct = 0;
	int64_t pause = 0, bake = 0;
	int is_canary = 0, manual = 0;
	const Slipway__V1__RollingStrategy *r = NULL;
	const char *k = "strategy.rolling";
	if (req->strategy != NULL) {
		if (req->strategy->kind_case == SLIPWAY__V1__STRATEGY__KIND_ROLLING) {
			r = req->strategy->rolling;
		} else if (req->strategy->kind_case == SLIPWAY__V1__STRATEGY__KIND_CANARY) {
			const Slipway__V1__CanaryStrategy *cs = req->strategy->canary;
			is_canary = 1;
			k = "strategy.canary.rollout";
			r = cs->rollout;
			canary = cs->canary_size;
			canary_pct = cs->canary_percent;
			manual = cs->manual_promotion;
			bake = cs->bake_ms;
			if (canary > 10000)
				return sw_errf(err, errlen, SW_EINVAL,
					       "strategy.canary.canary_size: at most 10000");
			if (canary_pct > 100)
				return sw_errf(err, errlen, SW_EINVAL,
					       "strategy.canary.canary_percent must be 1..100");
			if (canary != 0 && canary_pct != 0)
				return sw_errf(err, errlen, SW_EINVAL,
					       "strategy.canary: give canary_size or canary_percent, not both");
			if (bake < 0 || bake > 86400000)
				return sw_errf(err, errlen, SW_EINVAL,
					       "strategy.canary.bake_ms must be 0..86400000");
			if (canary == 0 && canary_pct == 0)
				canary_pct = 10;
		} else {
			return sw_errf(err, errlen, SW_EINVAL, "strategy: want rolling or canary");
		}
	}
	if (r != NULL) {
		batch = r->batch_size;
		percent = r->batch_percent;
		max_unavail = r->max_unavailable;
		pause = r->pause_ms;
		if (batch > 10000)
			return sw_errf(err, errlen, SW_EINVAL, "%s.batch_size: at most 10000", k);
		if (percent > 100)
			return sw_errf(err, errlen, SW_EINVAL, "%s.batch_percent must be 1..100", k);
		if (batch != 0 && percent != 0)
			return sw_errf(err, errlen, SW_EINVAL,
				       "%s: give batch_size or batch_percent, not both", k);
		if (max_unavail > 10000)
			return sw_errf(err, errlen, SW_EINVAL, "%s.max_unavailable: at most 10000", k);
		if (pause < 0 || pause > 3600000)
			return sw_errf(err, errlen, SW_EINVAL, "%s.pause_ms must be 0..3600000", k);
	}
	if (batch == 0 && percent == 0)
		percent = 25;
	*strategy = json_pack("{s:s,s:i,s:i,s:i,s:I}", "kind", is_canary ? "canary" : "rolling",
			      "batch_size", (int)batch, "batch_percent", (int)percent,
			      "max_unavailable", (int)max_unavail, "pause_ms", (json_int_t)pause);
	if (*strategy != NULL && is_canary) {
		json_t *cj = json_pack("{s:i,s:i,s:I,s:b}", "canary_size", (int)canary,
				       "canary_percent", (int)canary_pct, "bake_ms", (json_int_t)bake,
				       "manual_promotion", manual);
		if (cj == NULL || json_object_update(*strategy, cj) != 0) {
			json_decref(*strategy);
			*strategy = NULL;
		}
		json_decref(cj);
	}
	if (*strategy == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");

	int action = SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_ROLLBACK;
	uint32_t max_failed = 0, max_failed_pct = 0, retries = 0;
	int64_t backoff = 1000, deadline = 300000;
	const Slipway__V1__FailurePolicy *f = req->failure_policy;
	if (f != NULL) {
		action = (int)f->action;
		if (action != SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_ROLLBACK &&
		    action != SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_PAUSE &&
		    action != SLIPWAY__V1__FAILURE_ACTION__FAILURE_ACTION_ABORT) {
			json_decref(*strategy);
			return sw_errf(err, errlen, SW_EINVAL,
				       "failure_policy.action must be rollback, pause or abort");
		}
		max_failed = f->max_failed;
		max_failed_pct = f->max_failed_percent;
		retries = f->retries;
		if (f->retry_backoff_ms)
			backoff = f->retry_backoff_ms;
		if (f->progress_deadline_ms)
			deadline = f->progress_deadline_ms;
		const char *bad = max_failed > 10000				? "max_failed must be 0..10000"
				  : max_failed_pct > 100			? "max_failed_percent must be 0..100"
				  : retries > 10				? "retries must be 0..10"
				  : backoff < 0 || backoff > 600000		? "retry_backoff_ms must be 0..600000"
				  : deadline < 1000 || deadline > 86400000 ? "progress_deadline_ms must be 1000..86400000"
										: NULL;
		if (bad != NULL) {
			json_decref(*strategy);
			return sw_errf(err, errlen, SW_EINVAL, "failure_policy.%s", bad);
		}
	}
	*failure = json_pack("{s:i,s:i,s:i,s:i,s:I,s:I}", "action", action, "max_failed",
			     (int)max_failed, "max_failed_percent", (int)max_failed_pct, "retries",
			     (int)retries, "retry_backoff_ms", (json_int_t)backoff,
			     "progress_deadline_ms", (json_int_t)deadline);
	return 0;
}

/* ---- the policy gate ---- */

int orch_evaluate(struct orch *o, struct rpc_ctx *ctx, const char *id, const char *app,
		  const char *env, const char *version, const char *digest, const char *requester,
		  const Slipway__V1__Provenance *prov, int break_glass, const char *bg_reason,
		  int64_t requested_ms, char *reason, size_t rlen, char *err, size_t errlen)
{
	Slipway__V1__DeploymentFacts f = SLIPWAY__V1__DEPLOYMENT_FACTS__INIT;
	f.deployment_id = (char *)id;
	f.app = (char *)app;
	f.environment = (char *)env;
	f.version = (char *)version;
	f.digest = (char *)digest;
	f.requester = (char *)requester;
	f.provenance = (Slipway__V1__Provenance *)prov;
	f.break_glass = break_glass;
	f.break_glass_reason = (char *)bg_reason;
	f.requested_unix_ms = requested_ms;
	ProtobufCMessage *m = NULL;
	struct rpc_call_opts co = { .timeout_ms = 10000, .parent = ctx };
	int rc = rpc_call(o->policy, &slipway__v1__policy__descriptor, "EvaluateDeployment", &f.base,
			  &m, &co, err, errlen);
	if (rc != 0)
		return rc;
	Slipway__V1__EvaluateDeploymentResponse *r = (void *)m;
	size_t off = 0;
	reason[0] = '\0';
	for (size_t i = 0; i < r->n_reasons && off + 1 < rlen; i++) {
		int n = snprintf(reason + off, rlen - off, "%s%s", i ? "; " : "", r->reasons[i]);
		if (n < 0)
			break;
		off += (size_t)n;
	}
	for (size_t i = 0; i < r->n_missing && off + 1 < rlen; i++) {
		const Slipway__V1__ApprovalRequirement *q = r->missing[i];
		int n = snprintf(reason + off, rlen - off, "%swaiting for %u of %u approvals%s%s",
				 off ? "; " : "", q->required - q->have, q->required,
				 q->group[0] ? " from " : "", q->group);
		if (n < 0)
			break;
		off += (size_t)n;
	}
	int verdict = (int)r->verdict;
	protobuf_c_message_free_unpacked(m, NULL);
	if (verdict != SLIPWAY__V1__VERDICT__VERDICT_ALLOWED &&
	    verdict != SLIPWAY__V1__VERDICT__VERDICT_NEEDS_APPROVAL &&
	    verdict != SLIPWAY__V1__VERDICT__VERDICT_DENIED)
		return sw_errf(err, errlen, SW_EINTERNAL, "the policy service gave no verdict");
	return verdict;
}

/* Whether the app has secrets the agents must fetch: 1 or 0, or a negative
 * code when the secrets service cannot say (the deployment is then refused
 * rather than created without the secrets its release may need). */
static int app_has_secrets(struct orch *o, struct rpc_ctx *ctx, const char *app, const char *env,
			   char *err, size_t errlen)
{
	if (o->secrets == NULL)
		return 0;
	Slipway__V1__SecretScope scope = SLIPWAY__V1__SECRET_SCOPE__INIT;
	Slipway__V1__ListSecretsRequest req = SLIPWAY__V1__LIST_SECRETS_REQUEST__INIT;
	scope.app = (char *)app;
	scope.environment = (char *)env;
	req.scope = &scope;
	req.page_size = 1;
	ProtobufCMessage *m = NULL;
	char e[256];
	struct rpc_call_opts co = { .timeout_ms = 5000, .parent = ctx };
	int rc = rpc_call(o->secrets, &slipway__v1__secrets__descriptor, "ListSecrets", &req.base, &m,
			  &co, e, sizeof e);
	if (rc != 0) {
		log_warn("cannot list secrets", "app=%s env=%s error=%s", app, env, e);
		return sw_errf(err, errlen, rc == SW_EPERM ? SW_EINTERNAL : SW_EUNAVAIL,
			       "cannot tell whether %s/%s has secrets: %s", app, env, e);
	}
	int has = ((Slipway__V1__ListSecretsResponse *)m)->n_secrets > 0;
	protobuf_c_message_free_unpacked(m, NULL);
	return has;
}

/* ---- creation ---- */

/* Batches, region by region, never spanning a region: a canary (canary > 0)
 * is the first batch, of at most `canary` targets of the first region; then
 * batches of at most `size`. Fills batch_of[i] for each agent row (id,
 * region; ordered by region) and returns the number of batches. */
static int plan_batches(const PGresult *agents, int size, int canary, int *batch_of)
{
	int batch = 0, in_batch = 0;
	const char *region = NULL;
	for (int i = 0; i < PQntuples(agents); i++) {
		const char *reg = db_text(agents, i, 1);
		int cap = batch == 1 && canary > 0 ? canary : size;
		if (region == NULL || strcmp(region, reg) != 0 || in_batch == cap) {
			batch++;
			in_batch = 0;
			region = reg;
		}
		in_batch++;
		batch_of[i] = batch;
	}
	return batch;
}

static int create_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	return store_create(c, arg, err, errlen);
}

/* Plans and records a deployment of `rel` to app/env. */
static int create_common(struct orch *o, struct rpc_ctx *ctx, struct orch_new_deployment *t,
			 struct release *rel, int evaluate, int64_t batch_size, int batch_percent,
			 int canary_size, int canary_percent, char *id_out, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	int rc = db_acquire(o->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = db_q(c,
		  "SELECT id, region FROM agents WHERE app = $1 AND environment = $2"
		  " ORDER BY region, grp, id",
		  2, (const char *[]){ t->app, t->env }, &t->agents, err, errlen);
	db_release(o->db, c);
	if (rc != 0)
		return rc;
	int n = PQntuples(t->agents);
	if (n == 0)
		return sw_errf(err, errlen, SW_EPRECOND, "no agents serve %s/%s", t->app, t->env);
	t->batch_size = batch_size > 0 ? (int)batch_size : (n * batch_percent + 99) / 100;
	if (t->batch_size < 1)
		t->batch_size = 1;
	if (canary_percent > 0)
		t->canary_size = (n * canary_percent + 99) / 100;
	else
		t->canary_size = canary_size;
	t->batch_of = malloc((size_t)n * sizeof *t->batch_of);
	if (t->batch_of == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	t->total_batches = plan_batches(t->agents, t->batch_size, t->canary_size, t->batch_of);
	t->version = rel->version;
	t->digest = rel->digest;
	if (rel->pb != NULL && rel->pb->provenance != NULL) {
		t->prov_len = slipway__v1__provenance__get_packed_size(rel->pb->provenance);
		t->prov = malloc(t->prov_len ? t->prov_len : 1);
		if (t->prov == NULL)
			return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		slipway__v1__provenance__pack(rel->pb->provenance, t->prov);
	}
	if ((rc = app_has_secrets(o, ctx, t->app, t->env, err, errlen)) < 0)
		return rc;
	t->has_secrets = rc;
	char reason[1024] = "";
	t->reason = reason;
	if (evaluate) {
		int v = orch_evaluate(o, ctx, t->id, t->app, t->env, rel->version, rel->digest,
				      t->requester, rel->pb ? rel->pb->provenance : NULL, t->break_glass,
				      t->bg_reason, clock_wall_ms(), reason, sizeof reason, err, errlen);
		if (v < 0) {
			char why[512];
			snprintf(why, sizeof why, "%s", err);
			return sw_errf(err, errlen, v == SW_EPERM ? SW_EUNAVAIL : v,
				       "policy evaluation failed: %s", why);
		}
		if (v == SLIPWAY__V1__VERDICT__VERDICT_DENIED) {
			/* Nothing is created; the denial is recorded by the policy
			 * service's decision log and here. */
			struct db_conn *ac = NULL;
			char res[200], ignored[128];
			snprintf(res, sizeof res, "deployment/%s", t->id);
			if (db_acquire(o->db, &ac, 5000, ignored, sizeof ignored) == 0) {
				db_q(ac, "BEGIN", 0, NULL, NULL, ignored, sizeof ignored);
				if (orch_audit_scoped(o, ac, t->requester, "deploy.request", res,
						      SLIPWAY__V1__OUTCOME__OUTCOME_DENIED, t->app,
						      t->env, "reason", reason, "release",
						      rel->digest, ignored, sizeof ignored) == 0)
					db_q(ac, "COMMIT", 0, NULL, NULL, ignored, sizeof ignored);
				else
					db_q(ac, "ROLLBACK", 0, NULL, NULL, ignored, sizeof ignored);
				db_release(o->db, ac);
			}
			return sw_errf(err, errlen, SW_EPERM, "denied by policy: %s", reason);
		}
		t->state = v == SLIPWAY__V1__VERDICT__VERDICT_ALLOWED ? OS_QUEUED : OS_PENDING_APPROVAL;
	} else {
		t->state = OS_QUEUED;
	}
	rc = db_tx(o->db, NULL, create_tx, t, err, errlen);
	if (rc != 0)
		return rc == SW_EEXIST ? sw_errf(err, errlen, SW_EABORTED,
						 "a concurrent request conflicted; retry")
				       : rc;
	snprintf(id_out, ORCH_ID_MAX, "%s", t->existing[0] ? t->existing : t->id);
	if (!t->existing[0])
		orch_metrics_created(t->is_rollback);
	orch_engine_kick(o);
	return 0;
}

/* The SHA-256 (hex) of a request as packed without its idempotency key,
 * prefixed by its kind: what an idempotency key is bound to. Returns 0 or
 * SW_ENOMEM. */
static int request_hash(const char *kind, const ProtobufCMessage *m, char out[65])
{
	size_t n = protobuf_c_message_get_packed_size(m);
	uint8_t *buf = malloc(n ? n : 1), sha[DIGEST_SHA256_LEN];
	struct digest d = { 0 };
	int rc = SW_ENOMEM;
	if (buf == NULL || digest_init(&d, DIGEST_SHA256) != 0)
		goto out;
	protobuf_c_message_pack(m, buf);
	digest_update(&d, kind, strlen(kind) + 1);
	digest_update(&d, buf, n);
	if (digest_final(&d, sha) != DIGEST_SHA256_LEN)
		goto out;
	digest_hex(sha, sizeof sha, out);
	rc = 0;
out:
	digest_cleanup(&d);
	free(buf);
	return rc;
}

/* Looks the caller's idempotency key up before anything else: 1 with
 * id_out when the same request was made, 0 when the key is new, or a
 * negative code (SW_EEXIST: used for another request). */
static int idempotent(struct orch *o, const char *requester, const char *key, const char *hash,
		      char *id_out, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	if (key[0] == '\0')
		return 0;
	int rc = db_acquire(o->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = store_idempotent(c, requester, key, hash, id_out, err, errlen);
	db_release(o->db, c);
	return rc;
}

/* The release a CreateDeployment names: a version or a digest (the other is NULL). */
static const char *req_version(const Slipway__V1__CreateDeploymentRequest *req)
{
	if (req->release_case == SLIPWAY__V1__CREATE_DEPLOYMENT_REQUEST__RELEASE_VERSION)
		return req->version;
	return NULL;
}

static const char *req_digest(const Slipway__V1__CreateDeploymentRequest *req)
{
	if (req->release_case == SLIPWAY__V1__CREATE_DEPLOYMENT_REQUEST__RELEASE_DIGEST)
		return req->digest;
	return NULL;
}

int orch_create_check(const Slipway__V1__CreateDeploymentRequest *req, json_t **strategy,
		      json_t **failure, char *err, size_t errlen)
{
	*strategy = *failure = NULL;
	if (!name_app_ok(req->app))
		return sw_errf(err, errlen, SW_EINVAL, "app: 1-63 characters of [a-z0-9-]");
	if (!name_app_ok(req->environment))
		return sw_errf(err, errlen, SW_EINVAL, "environment: 1-63 characters of [a-z0-9-]");
	const char *version = req_version(req), *digest = req_digest(req);
	if (version != NULL && !name_version_ok(version))
		return sw_errf(err, errlen, SW_EINVAL, "version: not a valid version name");
	if (digest != NULL && digest_parse(digest, NULL) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "digest: want sha256:<64 lower-case hex>");
	if (version == NULL && digest == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "give a version or a digest");
	if (req->priority != SLIPWAY__V1__PRIORITY__PRIORITY_NORMAL &&
	    req->priority != SLIPWAY__V1__PRIORITY__PRIORITY_HOTFIX)
		return sw_errf(err, errlen, SW_EINVAL, "priority must be normal or hotfix");
	if (!token_ok(req->idempotency_key, 64))
		return sw_errf(err, errlen, SW_EINVAL,
			       "idempotency_key: at most 64 characters of [A-Za-z0-9._:-]");
	if (req->break_glass && (req->break_glass_reason[0] == '\0' ||
				 strlen(req->break_glass_reason) > 1000))
		return sw_errf(err, errlen, SW_EINVAL, "break_glass needs a reason (at most 1000 bytes)");
	int rc = check_plan(req, strategy, failure, err, errlen);
	if (rc != 0)
		*strategy = *failure = NULL; /* check_plan released what it made */
	return rc;
}

int orch_create(struct orch *o, struct rpc_ctx *ctx, const Slipway__V1__CreateDeploymentRequest *req,
		char *id_out, char *err, size_t errlen)
{
	json_t *strategy = NULL, *failure = NULL;
	struct release rel = { 0 };
	char id[ORCH_ID_MAX];
	int rc;

	if ((rc = orch_create_check(req, &strategy, &failure, err, errlen)) != 0)
		return rc;
	const char *version = req_version(req), *digest = req_digest(req);
	Slipway__V1__CreateDeploymentRequest keyless = *req;
	char hash[65];
	keyless.idempotency_key = "";
	if ((rc = request_hash("create", &keyless.base, hash)) == 0)
		rc = idempotent(o, rpc_peer(ctx), req->idempotency_key, hash, id_out, err, errlen);
	if (rc != 0) {
		json_decref(strategy);
		json_decref(failure);
		return rc < 0 ? rc : 0; /* 1: a retry of a request already made */
	}
	rc = orch_authorize(o, ctx, "deploy", req->app, req->environment, err, errlen);
	if (rc != 0) {
		json_decref(strategy);
		json_decref(failure);
		return rc;
	}
	if ((rc = resolve_release(o, ctx, req->app, version, digest, &rel, err, errlen)) != 0)
		goto out;
	orch_new_id(id, "d");
	struct orch_new_deployment t = {
		.o = o, .id = id, .app = req->app, .env = req->environment,
		.requester = rpc_peer(ctx), .idem = req->idempotency_key, .hash = hash,
		.priority = (int)req->priority, .break_glass = req->break_glass,
		.bg_reason = req->break_glass_reason, .rollback_of = "",
		.note = req->break_glass ? req->break_glass_reason : NULL,
		.strategy = json_dumps(strategy, JSON_COMPACT), .failure = json_dumps(failure, JSON_COMPACT),
	};
	json_t *rs = json_object_get(strategy, "batch_size");
	json_t *rp = json_object_get(strategy, "batch_percent");
	rc = create_common(o, ctx, &t, &rel, 1, json_integer_value(rs), (int)json_integer_value(rp),
			   (int)json_integer_value(json_object_get(strategy, "canary_size")),
			   (int)json_integer_value(json_object_get(strategy, "canary_percent")), id_out,
			   err, errlen);
	free(t.prov);
	free(t.batch_of);
	PQclear(t.agents);
	free(t.strategy);
	free(t.failure);
out:
	release_free(&rel);
	json_decref(strategy);
	json_decref(failure);
	return rc;
}

int orch_rollback_check(const Slipway__V1__RollbackRequest *req, char *err, size_t errlen)
{
	if (!name_app_ok(req->app) || !name_app_ok(req->environment))
		return sw_errf(err, errlen, SW_EINVAL, "app and environment: 1-63 characters of [a-z0-9-]");
	if (req->to_version[0] && !name_version_ok(req->to_version))
		return sw_errf(err, errlen, SW_EINVAL, "to_version: not a valid version name");
	if (strlen(req->reason) > 1000)
		return sw_errf(err, errlen, SW_EINVAL, "reason: at most 1000 bytes");
	if (!token_ok(req->idempotency_key, 64))
		return sw_errf(err, errlen, SW_EINVAL,
			       "idempotency_key: at most 64 characters of [A-Za-z0-9._:-]");
	return 0;
}

/* 0 when rel's digest is in app/env's known-good history; otherwise the
 * refusal is audited (as rollback.request, DENIED, on deployment/id) and
 * SW_EPRECOND returned with what to do instead. */
static int ran_good(struct orch *o, const char *app, const char *env, const struct release *rel,
		    const char *id, const char *requester, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	char why[700], rel_s[300], res[200], ignored[256];
	int rc = db_acquire(o->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = store_ran_good(c, app, env, rel->digest, err, errlen);
	if (rc == 0) {
		snprintf(why, sizeof why,
			 "rollback not allowed: %s@%s (%s) never ran successfully in %s/%s, so it is"
			 " not a known-good release there; deploy it with `slipway deploy` (policy and"
			 " approvals apply)",
			 app, rel->version, rel->digest, app, env);
		snprintf(rel_s, sizeof rel_s, "%s@%s (%s)", app, rel->version, rel->digest);
		snprintf(res, sizeof res, "deployment/%s", id);
		/* Best effort, like a denied deploy: the refusal stands unrecorded. */
		if (db_q(c, "BEGIN", 0, NULL, NULL, ignored, sizeof ignored) == 0) {
			if (store_audit_refusal(c, o, requester, "rollback.request", res, rel_s, why,
						ignored, sizeof ignored) == 0)
				db_q(c, "COMMIT", 0, NULL, NULL, ignored, sizeof ignored);
			else
				db_q(c, "ROLLBACK", 0, NULL, NULL, ignored, sizeof ignored);
		}
		rc = sw_errf(err, errlen, SW_EPRECOND, "%s", why);
	} else if (rc == 1) {
		rc = 0;
	}
	db_release(o->db, c);
	return rc;
}

int orch_rollback_request(struct orch *o, struct rpc_ctx *ctx, const Slipway__V1__RollbackRequest *req,
			  char *id_out, char *err, size_t errlen)
{
	struct release rel = { 0 };
	char id[ORCH_ID_MAX], good[80] = "";
	int rc;
	if ((rc = orch_rollback_check(req, err, errlen)) != 0)
		return rc;
	Slipway__V1__RollbackRequest keyless = *req;
	char hash[65];
	keyless.idempotency_key = "";
	if ((rc = request_hash("rollback", &keyless.base, hash)) == 0)
		rc = idempotent(o, rpc_peer(ctx), req->idempotency_key, hash, id_out, err, errlen);
	if (rc != 0)
		return rc < 0 ? rc : 0;
	rc = orch_authorize(o, ctx, "rollback", req->app, req->environment, err, errlen);
	if (rc != 0)
		return rc;
	if (req->to_version[0] == '\0') {
		struct db_conn *c = NULL;
		if ((rc = db_acquire(o->db, &c, 5000, err, errlen)) != 0)
			return rc;
		rc = store_known_good(c, req->app, req->environment, good, sizeof good, err, errlen);
		db_release(o->db, c);
		if (rc != 0)
			return rc;
		if (good[0] == '\0')
			return sw_errf(err, errlen, SW_EPRECOND,
				       "%s/%s has no known-good release to roll back to", req->app,
				       req->environment);
	}
	rc = resolve_release(o, ctx, req->app, req->to_version[0] ? req->to_version : NULL,
			     good[0] ? good : NULL, &rel, err, errlen);
	if (rc != 0)
		return rc;
	orch_new_id(id, "d");
	/* Without new approvals, and during a freeze, a rollback may only
	 * return to a digest that ran successfully here before (the known-good
	 * history); anything else is a deployment, gated by policy. */
	if ((rc = ran_good(o, req->app, req->environment, &rel, id, rpc_peer(ctx), err, errlen)) != 0) {
		release_free(&rel);
		return rc;
	}
	char reason[1100];
	snprintf(reason, sizeof reason, "manual rollback%s%s", req->reason[0] ? ": " : "",
		 req->reason);
	/* A rollback skips analysis: every target at once, abort on failure,
	 * ahead of the queue; the `rollback` permission and the known-good
	 * history are its gates (no approvals, no freeze, not asked again at
	 * its start). */
	struct orch_new_deployment t = {
		.o = o, .id = id, .app = req->app, .env = req->environment,
		.requester = rpc_peer(ctx), .idem = req->idempotency_key, .hash = hash,
		.priority = SLIPWAY__V1__PRIORITY__PRIORITY_HOTFIX,
		.is_rollback = 1, .rollback_of = "", .bg_reason = "", .note = reason,
		.strategy = strdup("{\"kind\":\"rolling\",\"batch_size\":0,\"batch_percent\":100,"
				   "\"max_unavailable\":0,\"pause_ms\":0}"),
		.failure = strdup("{\"action\":2,\"max_failed\":0,\"max_failed_percent\":0,\"retries\":1,"
				  "\"retry_backoff_ms\":1000,\"progress_deadline_ms\":300000}"),
	};
	if (t.strategy == NULL || t.failure == NULL)
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	else
		rc = create_common(o, ctx, &t, &rel, 0, 0, 100, 0, 0, id_out, err, errlen);
	free(t.prov);
	free(t.batch_of);
	PQclear(t.agents);
	free(t.strategy);
	free(t.failure);
	release_free(&rel);
	return rc;
}

int orch_deployment_scope(struct orch *o, const char *id, char *app, char *env, char *err,
			  size_t errlen)
{
	struct db_conn *c = NULL;
	int rc = db_acquire(o->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = store_scope(c, id, app, env, err, errlen);
	db_release(o->db, c);
	return rc;
}

struct action_tx {
	struct orch *o;
	const char *id, *action, *reason, *actor;
};

static int action_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct action_tx *t = arg;
	return store_action(c, t->o, t->id, t->action, t->reason, t->actor, err, errlen);
}

struct refused_tx {
	struct orch *o;
	const char *id, *actor, *why;
};

static int refused_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct refused_tx *t = arg;
	return store_refused(c, t->o, t->id, "resume", t->actor, t->why, err, errlen);
}

/* A paused deployment goes on only if the policy still allows it (a freeze
 * may have begun, an approval expired or been withdrawn, the requester's
 * binding removed since it started): EvaluateDeployment again, here on the
 * caller's thread (no transaction is open). Rollbacks are not asked. 0 to
 * go on; SW_EPRECOND (recorded: timeline "resume refused", audit DENIED;
 * the deployment stays paused) or SW_EUNAVAIL otherwise. */
static int resume_allowed(struct orch *o, struct rpc_ctx *ctx, const char *id, char *err,
			  size_t errlen)
{
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	int rc = db_acquire(o->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = store_eval_facts(c, id, &r, err, errlen);
	db_release(o->db, c);
	if (rc != 0)
		return rc;
	if (db_bool(r, 0, 11) || (int)db_int64(r, 0, 12) != OS_PAUSED) { /* after EVAL_COLS */
		PQclear(r); /* a rollback; or not paused: store_action says so */
		return 0;
	}
	uint8_t pbuf[4096];
	int plen = db_bytea(r, 0, 9, pbuf, sizeof pbuf);
	Slipway__V1__Provenance *prov =
		plen > 0 ? slipway__v1__provenance__unpack(NULL, (size_t)plen, pbuf) : NULL;
	char reason[1024] = "", e[512];
	int v = orch_evaluate(o, ctx, id, db_text(r, 0, 1), db_text(r, 0, 2), db_text(r, 0, 3),
			      db_text(r, 0, 4), db_text(r, 0, 5), prov, db_bool(r, 0, 6),
			      db_text(r, 0, 7), db_int64(r, 0, 8), reason, sizeof reason, e, sizeof e);
	if (prov)
		slipway__v1__provenance__free_unpacked(prov, NULL);
	PQclear(r);
	if (v < 0)
		return sw_errf(err, errlen, SW_EUNAVAIL, "cannot ask the policy service before resuming: %s",
			       e);
	if (v == SLIPWAY__V1__VERDICT__VERDICT_ALLOWED)
		return 0;
	char why[1200];
	snprintf(why, sizeof why, "by %s: the policy no longer allows deployment %s to go on (%s): %s",
		 rpc_peer(ctx), id,
		 v == SLIPWAY__V1__VERDICT__VERDICT_DENIED ? "denied" : "approvals missing", reason);
	struct refused_tx t = { o, id, rpc_peer(ctx), why };
	if (db_tx(o->db, NULL, refused_tx, &t, e, sizeof e) != 0)
		log_warn("refused resume not recorded", "deployment=%s error=%s", id, e);
	return sw_errf(err, errlen, SW_EPRECOND,
		       "resume refused: the policy no longer allows deployment %s to go on: %s; it stays"
		       " paused (cancel it, or resume it when the policy allows)",
		       id, reason);
}

int orch_action(struct orch *o, struct rpc_ctx *ctx, const char *id, const char *action,
		const char *reason, char *err, size_t errlen)
{
	char app[64], env[64];
	if (strlen(reason) > 1000)
		return sw_errf(err, errlen, SW_EINVAL, "reason: at most 1000 bytes");
	int rc = orch_deployment_scope(o, id, app, env, err, errlen);
	if (rc != 0)
		return rc;
	if ((rc = orch_authorize(o, ctx, action, app, env, err, errlen)) != 0)
		return rc;
	if (strcmp(action, "resume") == 0 && (rc = resume_allowed(o, ctx, id, err, errlen)) != 0)
		return rc;
	struct action_tx t = { o, id, action, reason, rpc_peer(ctx) };
	rc = db_tx(o->db, NULL, action_tx, &t, err, errlen);
	if (rc == 0)
		orch_engine_kick(o);
	return rc;
}
