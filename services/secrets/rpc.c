/*
 * rpc.c - the slipway.v1.Secrets handlers, one function per RPC:
 * decode -> validate -> authorize -> domain call -> encode.
 *
 * Every failure of a state-changing or delivering RPC is audited (outcome
 * FAILURE, or DENIED for permission failures) with names, scopes,
 * versions, deployment and agent, and the reason: the same value-free
 * message the caller gets. No handler returns a plaintext value.
 */
#include "secrets.h"

#include "enroll.h"
#include "err.h"
#include "log.h"
#include "spiffe.h"

#include <sodium.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PAGE_DEFAULT 100
#define PAGE_MAX 1000

/* ---------------------------------------------------------------- validation */

int sec_scope_ok(const char *app, const char *env)
{
	return app != NULL && spiffe_segment_ok(app) && strlen(app) <= SEC_APP_MAX && env != NULL &&
	       (env[0] == '\0' || (spiffe_segment_ok(env) && strlen(env) <= SEC_APP_MAX));
}

int sec_deployment_ok(const char *id)
{
	size_t n = id ? strlen(id) : 0;
	if (n == 0 || n > SEC_ID_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-' || c == ':'))
			return 0;
	}
	return 1;
}

static const char *safe_name(const char *s)
{
	return sealed_name_ok(s) ? s : "(invalid)";
}

static const char *safe_seg(const char *s)
{
	if (s == NULL || s[0] == '\0')
		return "";
	return spiffe_segment_ok(s) && strlen(s) <= SEC_APP_MAX ? s : "(invalid)";
}

/* ---------------------------------------------------------------- failures */

struct what {
	const char *action; /* event action, "secret.put" */
	const char *app, *env, *name;
	uint32_t version;
	const char *deployment, *agent;
};

/* Sets the call's status to code and a message and audits the failure
 * with what it concerned. Returns code. */
static int fail(struct sec *s, struct rpc_ctx *ctx, const struct what *w, int code,
		const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static int fail(struct sec *s, struct rpc_ctx *ctx, const struct what *w, int code,
		const char *fmt, ...)
{
	char msg[512], res[320], vb[24];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof msg, fmt, ap);
	va_end(ap);
	const char *dep = w->deployment && sec_deployment_ok(w->deployment) ? w->deployment
									    : w->deployment ? "(invalid)"
											    : NULL;
	if (dep != NULL)
		snprintf(res, sizeof res, "secret-grant/%s", dep);
	else
		sec_resource(res, sizeof res, safe_seg(w->app), safe_seg(w->env),
			     w->name ? safe_name(w->name) : "");
	struct outbox_event e = { .actor = rpc_peer(ctx), .action = w->action, .resource = res,
				  .outcome = code == SW_EPERM ? SLIPWAY__V1__OUTCOME__OUTCOME_DENIED
							      : SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE };
	if (w->app)
		outbox_detail(&e, "app", safe_seg(w->app));
	if (w->env)
		outbox_detail(&e, "environment", safe_seg(w->env));
	if (w->name)
		outbox_detail(&e, "name", safe_name(w->name));
	if (w->version)
		outbox_detail(&e, "version", db_i64(vb, w->version));
	if (dep)
		outbox_detail(&e, "deployment", dep);
	if (w->agent)
		outbox_detail(&e, "agent", spiffe_parse(w->agent, NULL, NULL, NULL, 0) == 0
						   ? w->agent
						   : "(invalid)");
	outbox_detail(&e, "status", sw_grpc_status_name(sw_err_to_grpc(code)));
	outbox_detail(&e, "reason", msg);
	sec_audit_alone(s, &e); /* the RPC layer logs the call with its status and message */
	return rpc_errorf(ctx, code, "%s", msg);
}

/* sec_authorize for the caller of this call, its outcome as the status. */
static int authorize(struct sec *s, struct rpc_ctx *ctx, const char *action,
		     const char *event_action, const char *app, const char *env, const char *name)
{
	char err[512] = "";
	int rc = sec_authorize(s, ctx, rpc_peer(ctx), action, event_action, app, env, name, err,
			       sizeof err);
	return rc == 0 ? 0 : rpc_errorf(ctx, rc, "%s", err);
}

/* ---------------------------------------------------------------- encoding */

static Slipway__V1__SecretVersion *encode_meta(struct rpc_ctx *ctx,
					       const struct sec_version_meta *m)
{
	Slipway__V1__SecretVersion *v = rpc_alloc(ctx, sizeof *v);
	Slipway__V1__SecretScope *sc = rpc_alloc(ctx, sizeof *sc);
	if (v == NULL || sc == NULL)
		return NULL;
	slipway__v1__secret_version__init(v);
	slipway__v1__secret_scope__init(sc);
	sc->app = rpc_strdup(ctx, m->app);
	sc->environment = rpc_strdup(ctx, m->env);
	v->name = rpc_strdup(ctx, m->name);
	v->created_by = rpc_strdup(ctx, m->created_by);
	if (sc->app == NULL || sc->environment == NULL || v->name == NULL || v->created_by == NULL)
		return NULL;
	v->scope = sc;
	v->version = m->version;
	v->state = m->state == SEC_ENABLED    ? SLIPWAY__V1__SECRET_STATE__SECRET_STATE_ENABLED
		   : m->state == SEC_DISABLED ? SLIPWAY__V1__SECRET_STATE__SECRET_STATE_DISABLED
					      : SLIPWAY__V1__SECRET_STATE__SECRET_STATE_DESTROYED;
	v->current = m->current;
	v->master_key_version = m->master_version;
	v->created_unix_ms = m->created_ms;
	v->size_bytes = m->size_bytes;
	return v;
}

/* ---------------------------------------------------------------- GetServiceKeys */

static int get_service_keys(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			    ProtobufCMessage *respm, void *data)
{
	struct sec *s = data;
	(void)reqm;
	Slipway__V1__GetServiceKeysResponse *resp = (void *)respm;
	uint8_t *seal = rpc_alloc(ctx, 32), *sign = rpc_alloc(ctx, 32);
	char *kid = rpc_alloc(ctx, SEALED_KEY_ID_MAX);
	if (seal == NULL || sign == NULL || kid == NULL)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	sec_keys_public(s->keys, seal, sign, kid);
	resp->seal_public_key.data = seal;
	resp->seal_public_key.len = 32;
	resp->sign_public_key.data = sign;
	resp->sign_public_key.len = 32;
	resp->sign_key_id = kid;
	return 0;
}

/* ---------------------------------------------------------------- PutSecret */

static int put_secret(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		      void *data)
{
	struct sec *s = data;
	const Slipway__V1__PutSecretRequest *req = (const void *)reqm;
	Slipway__V1__PutSecretResponse *resp = (void *)respm;
	const char *app = req->scope ? req->scope->app : "", *env = req->scope ? req->scope->environment : "";
	struct what w = { "secret.put", app, env, req->name, 0, NULL, NULL };
	char err[512];
	uint8_t *plain = NULL;
	size_t plen = 0;
	int rc;

	if (!sealed_name_ok(req->name))
		return fail(s, ctx, &w, SW_EINVAL,
			    "name: 1-%d of [A-Za-z0-9_.-], not starting with '.' or '-'",
			    SEALED_NAME_MAX);
	if (!sec_scope_ok(app, env))
		return fail(s, ctx, &w, SW_EINVAL,
			    "scope: app (required) and environment must be 1-%d of [A-Za-z0-9._-]",
			    SEC_APP_MAX);
	if (req->sealed_value.len < SEALED_BOX_OVERHEAD)
		return fail(s, ctx, &w, SW_EINVAL,
			    "sealed_value is missing or shorter than a sealed box (%d bytes)",
			    SEALED_BOX_OVERHEAD);
	if (req->sealed_value.len - SEALED_BOX_OVERHEAD > s->max_value)
		return fail(s, ctx, &w, SW_EINVAL, "the value is %zu bytes; the limit is %zu",
			    req->sealed_value.len - SEALED_BOX_OVERHEAD, s->max_value);
	rc = authorize(s, ctx, "write", "secret.put", app, env, req->name);
	if (rc != 0)
		return rc;
	plain = sec_scratch(SEC_SCRATCH_DATA, req->sealed_value.len);
	if (plain == NULL)
		return fail(s, ctx, &w, SW_ENOMEM, "out of secure memory");
	rc = sec_keys_open_sealed(s->keys, req->sealed_value.data, req->sealed_value.len, plain,
				  req->sealed_value.len, &plen, err, sizeof err);
	if (rc == 0) {
		struct sec_put p = { .app = app, .env = env, .name = req->name,
				     .actor = rpc_peer(ctx), .value = plain, .len = plen,
				     .cas = req->cas, .keep_current = req->keep_current,
				     .expected_version = req->expected_version };
		rc = sec_store_put(s, &p, err, sizeof err);
		if (rc == 0) {
			resp->version = encode_meta(ctx, &p.out);
			log_info("secret stored", "app=%s environment=%s name=%s version=%u size=%zu",
				 app, env, req->name, p.out.version, plen);
		}
	}
	sec_scratch_wipe(SEC_SCRATCH_DATA);
	if (rc != 0)
		return fail(s, ctx, &w, rc, "%s", err);
	if (resp->version == NULL)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	return 0;
}

/* ---------------------------------------------------------------- listing */

struct list_acc {
	struct sec *s;
	struct rpc_ctx *ctx;
	int filter;                 /* check read per scope (no scope given) */
	Slipway__V1__SecretVersion **out;
	size_t n, cap, scanned;
	char last[3][SEALED_NAME_MAX + 1];
	char denied_app[SEC_APP_MAX + 1], denied_env[SEC_APP_MAX + 1];
	int oom;
};

static int list_one(const struct sec_version_meta *m, void *arg)
{
	struct list_acc *a = arg;
	a->scanned++;
	snprintf(a->last[0], sizeof a->last[0], "%s", m->app);
	snprintf(a->last[1], sizeof a->last[1], "%s", m->env);
	snprintf(a->last[2], sizeof a->last[2], "%s", m->name);
	if (a->filter) {
		/* Rows come sorted by scope: remember the last denied one. */
		if (strcmp(a->denied_app, m->app) == 0 && strcmp(a->denied_env, m->env) == 0)
			return 0;
		char why[256];
		struct authz_req q = { rpc_peer(a->ctx), "read", "secret", m->app, m->env, "" };
		if (authz_check(a->s->authz, a->ctx, &q, why, sizeof why) != 0) {
			snprintf(a->denied_app, sizeof a->denied_app, "%s", m->app);
			snprintf(a->denied_env, sizeof a->denied_env, "%s", m->env);
			return 0;
		}
	}
	if (a->n == a->cap)
		return 1;
	a->out[a->n] = encode_meta(a->ctx, m);
	if (a->out[a->n] == NULL) {
		a->oom = 1;
		return 1;
	}
	a->n++;
	return 0;
}

/* Page tokens: hex of "app \x1f env \x1f name", the last row scanned. */
static int token_decode(const char *tok, char out[3][SEALED_NAME_MAX + 1])
{
	uint8_t raw[3 * (SEALED_NAME_MAX + 1)];
	size_t n = 0;
	out[0][0] = out[1][0] = out[2][0] = '\0';
	if (tok == NULL || tok[0] == '\0')
		return 0;
	if (strlen(tok) > sizeof raw * 2 ||
	    sodium_hex2bin(raw, sizeof raw - 1, tok, strlen(tok), NULL, &n, NULL) != 0)
		return -1;
	raw[n] = 0;
	char *p = (char *)raw;
	for (int i = 0; i < 3; i++) {
		char *sep = i < 2 ? strchr(p, '\x1f') : p + strlen(p);
		if (sep == NULL || (size_t)(sep - p) > SEALED_NAME_MAX)
			return -1;
		memcpy(out[i], p, (size_t)(sep - p));
		out[i][sep - p] = '\0';
		p = sep + 1;
	}
	return 0;
}

static char *token_encode(struct rpc_ctx *ctx, char last[3][SEALED_NAME_MAX + 1])
{
	char raw[3 * (SEALED_NAME_MAX + 1)];
	int n = snprintf(raw, sizeof raw, "%s\x1f%s\x1f%s", last[0], last[1], last[2]);
	char *hex = rpc_alloc(ctx, (size_t)n * 2 + 1);
	if (hex != NULL)
		sodium_bin2hex(hex, (size_t)n * 2 + 1, (const uint8_t *)raw, (size_t)n);
	return hex;
}

static int list_secrets(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			ProtobufCMessage *respm, void *data)
{
	struct sec *s = data;
	const Slipway__V1__ListSecretsRequest *req = (const void *)reqm;
	Slipway__V1__ListSecretsResponse *resp = (void *)respm;
	const char *app = req->scope ? req->scope->app : "", *env = req->scope ? req->scope->environment : "";
	char after[3][SEALED_NAME_MAX + 1], err[512];
	int given = app[0] != '\0', rc;
	size_t limit = req->page_size == 0 ? PAGE_DEFAULT
		       : req->page_size > PAGE_MAX ? PAGE_MAX
						   : req->page_size;

	if ((given && !sec_scope_ok(app, env)) || (!given && env[0] != '\0'))
		return rpc_errorf(ctx, SW_EINVAL, "scope: an app (and optionally an environment) "
						  "of [A-Za-z0-9._-], or nothing for every scope");
	if (token_decode(req->page_token, after) != 0)
		return rpc_errorf(ctx, SW_EINVAL, "page_token is malformed");
	if (given) {
		rc = authorize(s, ctx, "read", "secret.list", app, env, "");
		if (rc != 0)
			return rc;
	} else if (s->authz == NULL) {
		return rpc_errorf(ctx, SW_EUNAVAIL, "cannot authorize: no policy service is configured");
	}
	struct list_acc a = { .s = s, .ctx = ctx, .filter = !given, .cap = limit };
	a.out = rpc_alloc(ctx, limit * sizeof *a.out);
	if (a.out == NULL)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	rc = sec_store_list(s, app, env, given, after[0], after[1], after[2], (int)limit, list_one,
			    &a, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if (a.oom)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	resp->secrets = a.out;
	resp->n_secrets = a.n;
	resp->next_page_token = a.scanned == limit ? token_encode(ctx, a.last) : "";
	return resp->next_page_token ? 0 : rpc_errorf(ctx, SW_ENOMEM, "out of memory");
}

struct versions_acc {
	struct rpc_ctx *ctx;
	Slipway__V1__SecretVersion **out;
	size_t n, cap;
	int oom;
};

static int version_one(const struct sec_version_meta *m, void *arg)
{
	struct versions_acc *a = arg;
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 16;
		Slipway__V1__SecretVersion **p = rpc_alloc(a->ctx, cap * sizeof *p);
		if (p == NULL) {
			a->oom = 1;
			return 1;
		}
		if (a->n)
			memcpy(p, a->out, a->n * sizeof *p);
		a->out = p;
		a->cap = cap;
	}
	a->out[a->n] = encode_meta(a->ctx, m);
	if (a->out[a->n] == NULL) {
		a->oom = 1;
		return 1;
	}
	a->n++;
	return 0;
}

static int ref_scope(const Slipway__V1__SecretRef *ref, const char **app, const char **env)
{
	*app = ref && ref->scope ? ref->scope->app : "";
	*env = ref && ref->scope ? ref->scope->environment : "";
	return ref != NULL && sealed_name_ok(ref->name) && sec_scope_ok(*app, *env);
}

static int list_versions(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			 ProtobufCMessage *respm, void *data)
{
	struct sec *s = data;
	const Slipway__V1__ListVersionsSecretRequest *req = (const void *)reqm;
	Slipway__V1__ListVersionsSecretResponse *resp = (void *)respm;
	const char *app, *env;
	char err[512];
	if (!ref_scope(req->secret, &app, &env))
		return rpc_errorf(ctx, SW_EINVAL, "secret: a valid name and scope are required");
	int rc = authorize(s, ctx, "read", "secret.list", app, env, req->secret->name);
	if (rc != 0)
		return rc;
	struct versions_acc a = { .ctx = ctx };
	rc = sec_store_versions(s, app, env, req->secret->name, version_one, &a, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if (a.oom)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	resp->versions = a.out;
	resp->n_versions = a.n;
	return 0;
}

/* ---------------------------------------------------------------- lifecycle */

static int version_action(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, struct sec *s, enum sec_action act,
			  const char *event)
{
	const Slipway__V1__VersionActionRequest *req = (const void *)reqm;
	Slipway__V1__VersionActionResponse *resp = (void *)respm;
	const char *app, *env;
	char err[512];
	int ok = ref_scope(req->secret, &app, &env);
	struct what w = { event, app, env, req->secret ? req->secret->name : "",
			  req->secret ? req->secret->version : 0, NULL, NULL };
	if (!ok)
		return fail(s, ctx, &w, SW_EINVAL, "secret: a valid name and scope are required");
	if (req->secret->version == 0)
		return fail(s, ctx, &w, SW_EINVAL, "secret.version: which version (1 or more)");
	int rc = authorize(s, ctx, "admin", event, app, env, req->secret->name);
	if (rc != 0)
		return rc;
	struct sec_version_op op = { .app = app, .env = env, .name = req->secret->name,
				     .actor = rpc_peer(ctx), .version = req->secret->version,
				     .act = act };
	rc = sec_store_version_op(s, &op, err, sizeof err);
	if (rc != 0)
		return fail(s, ctx, &w, rc, "%s", err);
	if (op.changed)
		log_info("secret version changed", "action=%s app=%s environment=%s name=%s version=%u",
			 event, app, env, op.name, op.version);
	resp->version = encode_meta(ctx, &op.out);
	return resp->version ? 0 : rpc_errorf(ctx, SW_ENOMEM, "out of memory");
}

static int set_current(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
		       ProtobufCMessage *respm, void *data)
{
	return version_action(ctx, reqm, respm, data, SEC_ACT_SET_CURRENT, "secret.set_current");
}

static int disable_version(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			   ProtobufCMessage *respm, void *data)
{
	return version_action(ctx, reqm, respm, data, SEC_ACT_DISABLE, "secret.disable");
}

static int enable_version(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	return version_action(ctx, reqm, respm, data, SEC_ACT_ENABLE, "secret.enable");
}

static int destroy_version(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			   ProtobufCMessage *respm, void *data)
{
	return version_action(ctx, reqm, respm, data, SEC_ACT_DESTROY, "secret.destroy");
}

/* ---------------------------------------------------------------- RotateMaster */

static int rotate_master(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			 ProtobufCMessage *respm, void *data)
{
	struct sec *s = data;
	const Slipway__V1__RotateMasterRequest *req = (const void *)reqm;
	Slipway__V1__RotateMasterResponse *resp = (void *)respm;
	struct what w = { "secret.rotate_master", NULL, NULL, NULL, 0, NULL, NULL };
	char err[512];
	int rc = authorize(s, ctx, "rotate", "secret.rotate_master", "", "", "");
	if (rc != 0)
		return rc;
	struct sec_rotation r = { .actor = rpc_peer(ctx), .retire = req->retire_old };
	rc = sec_store_rotate(s, &r, err, sizeof err);
	if (rc != 0)
		return fail(s, ctx, &w, rc, "%s", err);
	log_info("master key rotated", "version=%u rewrapped=%llu retired=%d", r.new_version,
		 (unsigned long long)r.rewrapped, r.retired);
	resp->new_master_version = r.new_version;
	resp->rewrapped = r.rewrapped;
	return 0;
}

/* ---------------------------------------------------------------- CreateGrant */

static int is_grantor(const struct sec *s, const char *peer)
{
	size_t n = strlen(peer);
	for (const char *p = s->grantors; *p;) {
		size_t len = strcspn(p, ",");
		if (len == n && memcmp(p, peer, n) == 0)
			return 1;
		p += len;
		if (*p == ',')
			p++;
	}
	return 0;
}

static int create_grant(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			ProtobufCMessage *respm, void *data)
{
	struct sec *s = data;
	const Slipway__V1__CreateGrantRequest *req = (const void *)reqm;
	Slipway__V1__CreateGrantResponse *resp = (void *)respm;
	struct what w = { "secret.grant", req->app, req->environment, NULL, 0, req->deployment_id,
			  req->agent };
	struct spiffe_id agent;
	char err[512];
	int64_t now = sec_now_ms();
	int rc;

	if (!sec_deployment_ok(req->deployment_id))
		return fail(s, ctx, &w, SW_EINVAL, "deployment_id: 1-%d of [A-Za-z0-9_.:-]",
			    SEC_ID_MAX);
	if (spiffe_parse(req->agent, s->trust_domain, &agent, err, sizeof err) != 0 ||
	    agent.kind != SPIFFE_AGENT)
		return fail(s, ctx, &w, SW_EINVAL,
			    "agent: the SPIFFE ID of an agent of trust domain %s is required",
			    s->trust_domain);
	if (!sec_scope_ok(req->app, req->environment) || req->environment[0] == '\0')
		return fail(s, ctx, &w, SW_EINVAL,
			    "app and environment of the deployment are required ([A-Za-z0-9._-])");
	if (req->agent_public_key.len != SEALED_X25519_BYTES)
		return fail(s, ctx, &w, SW_EINVAL, "agent_public_key must be a %d-byte X25519 key",
			    SEALED_X25519_BYTES);
	{
		/* A key that cannot be sealed to (all zero, low order) fails now, not at
		 * Fetch time. */
		uint8_t probe[1 + SEALED_BOX_OVERHEAD];
		if (crypto_box_seal(probe, (const uint8_t *)"x", 1, req->agent_public_key.data) != 0)
			return fail(s, ctx, &w, SW_EINVAL,
				    "agent_public_key is not a usable X25519 public key");
	}
	if (req->n_secrets == 0 || req->n_secrets > s->max_grant_secrets)
		return fail(s, ctx, &w, SW_EINVAL, "secrets: 1 to %zu references", s->max_grant_secrets);
	for (size_t i = 0; i < req->n_secrets; i++) {
		const Slipway__V1__SecretRef *ref = req->secrets[i];
		if (!sealed_name_ok(ref->name))
			return fail(s, ctx, &w, SW_EINVAL, "secrets[%zu]: bad name", i);
		for (size_t j = 0; j < i; j++)
			if (strcmp(req->secrets[j]->name, ref->name) == 0)
				return fail(s, ctx, &w, SW_EINVAL,
					    "secrets[%zu]: %s is named twice (names must be unique "
					    "in a bundle)",
					    i, ref->name);
		if (ref->scope != NULL && ref->scope->app[0] != '\0') {
			const char *sa = ref->scope->app, *se = ref->scope->environment;
			if (strcmp(sa, req->app) != 0 ||
			    (se[0] != '\0' && strcmp(se, req->environment) != 0)) {
				struct what ws = w;
				ws.name = ref->name;
				return fail(s, ctx, &ws, SW_EPERM,
					    "wrong scope: secret %s of %.64s%s%.64s cannot be granted to "
					    "a deployment of %s/%s",
					    ref->name, safe_seg(sa), se[0] ? "/" : "", safe_seg(se),
					    req->app, req->environment);
			}
		}
	}
	if (!sec_deployment_ok(req->request_id) && req->request_id[0] != '\0')
		return fail(s, ctx, &w, SW_EINVAL, "request_id: 1-%d of [A-Za-z0-9_.:-]", SEC_ID_MAX);
	int64_t exp = req->expires_unix_ms ? req->expires_unix_ms : now + s->grant_ttl_ms;
	if (exp <= now)
		return fail(s, ctx, &w, SW_EINVAL, "expires_unix_ms is in the past");
	if (exp > now + s->grant_max_ttl_ms)
		return fail(s, ctx, &w, SW_EINVAL,
			    "expires_unix_ms is more than %lld s ahead (the grant-max-ttl)",
			    (long long)(s->grant_max_ttl_ms / 1000));

	/* Identity first: only the orchestrator hands out grants... */
	if (!is_grantor(s, rpc_peer(ctx)))
		return fail(s, ctx, &w, SW_EPERM, "only %s may create grants", s->grantors);
	/* A grantor is a service: a user or agent named in --grantors by
	 * mistake still may not hand out secrets. */
	struct spiffe_id gid;
	if (spiffe_parse(rpc_peer(ctx), s->trust_domain, &gid, NULL, 0) != 0 ||
	    gid.kind != SPIFFE_SERVICE)
		return fail(s, ctx, &w, SW_EPERM, "only service principals may create grants");
	/* ...and only what policy lets it grant. */
	for (size_t i = 0; i < req->n_secrets; i++) {
		rc = authorize(s, ctx, "grant", "secret.grant", req->app, req->environment,
				   req->secrets[i]->name);
		if (rc != 0)
			return rc;
	}
	/* ...and only to an agent enrolled in the deployment's scope, sealed to
	 * the key pinned in its enrollment: neither the orchestrator's word nor
	 * its database can send a secret elsewhere. */
	struct enrollment en;
	rc = enrollment_get(s->policy, ctx, req->agent, 3000, &en, err, sizeof err);
	if (rc == SW_ENOTFOUND)
		return fail(s, ctx, &w, SW_EPERM, "%.255s is not enrolled: no secret is granted to it",
			    req->agent);
	if (rc != 0)
		return fail(s, ctx, &w, SW_EUNAVAIL, "cannot check the agent's enrollment: %s", err);
	if (strcmp(en.app, req->app) != 0 || strcmp(en.env, req->environment) != 0)
		return fail(s, ctx, &w, SW_EPERM,
			    "%.255s is enrolled for %s/%s, not %s/%s: no secret of %s/%s is granted "
			    "to it",
			    req->agent, en.app, en.env, req->app, req->environment, req->app,
			    req->environment);
	if (!en.has_key || sodium_memcmp(en.seal_key, req->agent_public_key.data, 32) != 0)
		return fail(s, ctx, &w, SW_EPERM,
			    "agent_public_key is not the sealing key pinned in the enrollment of "
			    "%.255s",
			    req->agent);
	struct sec_grant_req g = { .in = req, .actor = rpc_peer(ctx), .expires_ms = exp };
	rc = sec_grant_create(s, &g, err, sizeof err);
	if (rc != 0)
		return fail(s, ctx, &w, rc, "%s", err);
	resp->grant_id = rpc_strdup(ctx, g.grant_id);
	/* A repeated request_id answers with the grant as first made. */
	resp->expires_unix_ms = g.expires_ms;
	return resp->grant_id ? 0 : rpc_errorf(ctx, SW_ENOMEM, "out of memory");
}

/* ---------------------------------------------------------------- Fetch */

static int fetch_bundle(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			ProtobufCMessage *respm, void *data)
{
	struct sec *s = data;
	const Slipway__V1__FetchRequest *req = (const void *)reqm;
	Slipway__V1__FetchResponse *resp = (void *)respm;
	struct what w = { "secret.fetch", NULL, NULL, NULL, 0, req->deployment_id, rpc_peer(ctx) };
	struct spiffe_id id;
	uint8_t *box = NULL;
	size_t len = 0;
	char err[512] = "";

	if (!sec_deployment_ok(req->deployment_id))
		return fail(s, ctx, &w, SW_EINVAL, "deployment_id: 1-%d of [A-Za-z0-9_.:-]",
			    SEC_ID_MAX);
	if (spiffe_parse(rpc_peer(ctx), s->trust_domain, &id, NULL, 0) != 0 ||
	    id.kind != SPIFFE_AGENT)
		return fail(s, ctx, &w, SW_EPERM, "only agents fetch secret bundles");
	int rc = sec_grant_fetch(s, ctx, rpc_peer(ctx), req->deployment_id, &box, &len, err,
				 sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err); /* audited by sec_grant_fetch */
	resp->sealed_bundle.data = box;
	resp->sealed_bundle.len = len;
	return 0;
}

/* Fetch, counted by outcome (metrics.c). */
static int fetch(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		 void *data)
{
	int rc = fetch_bundle(ctx, reqm, respm, data);
	sec_metrics_fetch(rc);
	return rc;
}

const struct rpc_method sec_methods[] = {
	{ "GetServiceKeys", RPC_UNARY, RPC_INLINE, get_service_keys, RPC_PEER_ANY },
	{ "PutSecret", RPC_UNARY, 0, put_secret, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ListSecrets", RPC_UNARY, 0, list_secrets, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ListVersions", RPC_UNARY, 0, list_versions, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "SetCurrentVersion", RPC_UNARY, 0, set_current, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "DisableVersion", RPC_UNARY, 0, disable_version, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "EnableVersion", RPC_UNARY, 0, enable_version, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "DestroyVersion", RPC_UNARY, 0, destroy_version, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "RotateMaster", RPC_UNARY, 0, rotate_master, RPC_PEER_USER | RPC_PEER_SERVICE },
	/* These two refuse other kinds of caller in the handler, not here, so
	 * that the refusal is audited (secret.grant / secret.fetch DENY). */
	{ "CreateGrant", RPC_UNARY, 0, create_grant, RPC_PEER_ANY },
	{ "Fetch", RPC_UNARY, 0, fetch, RPC_PEER_ANY },
};
const size_t sec_nmethods = sizeof sec_methods / sizeof sec_methods[0];
