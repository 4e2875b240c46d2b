/*
 * rpc.c - the slipway.v1.Artifact handlers: one function per RPC, each
 * decode -> validate -> authorize -> domain call -> encode. Validation is
 * strict (names.c); authorization asks the policy service through
 * lib/authz with the vocabulary of proto/slipway/v1/authorization.md.
 */
#include "art.h"
#include "err.h"
#include "log.h"

#include <stdio.h>
#include <string.h>

#define PAGE_DEFAULT 50
#define PAGE_MAX 500

/* Asks the policy service (lib/authz): deny by default, and UNAVAILABLE
 * when it cannot answer. */
static int authorize(struct art *a, struct rpc_ctx *ctx, const char *action, const char *kind,
		     const char *app)
{
	return authz_require(a->authz, ctx, action, kind, app, NULL, NULL);
}

int art_transfer_begin(struct art *a)
{
	int ok;
	pthread_mutex_lock(&a->mu);
	ok = a->transfers < a->c.max_transfers;
	if (ok)
		a->transfers++;
	pthread_mutex_unlock(&a->mu);
	return ok ? 0 : SW_ELIMIT;
}

void art_transfer_end(struct art *a)
{
	pthread_mutex_lock(&a->mu);
	a->transfers--;
	pthread_mutex_unlock(&a->mu);
}

static size_t page_size(uint32_t want)
{
	return want == 0 ? PAGE_DEFAULT : want > PAGE_MAX ? PAGE_MAX : want;
}

/* ---- Push ---- */

static int check_header(struct rpc_ctx *ctx, struct art *a, const Slipway__V1__PushHeader *h)
{
	char why[256];
	if (!name_app_ok(h->app))
		return rpc_errorf(ctx, SW_EINVAL,
				  "app: want 1-63 of [a-z0-9-], starting with a letter or digit");
	if (!name_version_ok(h->version))
		return rpc_errorf(ctx, SW_EINVAL,
				  "version: want 1-128 of [A-Za-z0-9._+-], starting with a letter "
				  "or digit, without '..'");
	if (h->media_type[0] != '\0' && !art_media_type_ok(h->media_type))
		return rpc_errorf(ctx, SW_EINVAL, "media_type: want type/subtype, at most 127 "
						  "characters");
	if (h->expected_digest[0] != '\0' && digest_parse(h->expected_digest, NULL) != 0)
		return rpc_errorf(ctx, SW_EINVAL, "expected_digest: want sha256:<64 lower-case hex>");
	if (art_provenance_ok(h->provenance, why, sizeof why) != 0)
		return rpc_errorf(ctx, SW_EINVAL, "%s", why);
	if (h->size_hint > (uint64_t)a->c.max_blob)
		return rpc_errorf(ctx, SW_ELIMIT,
				  "size_hint %llu is larger than the maximum artifact size %llu",
				  (unsigned long long)h->size_hint, (unsigned long long)a->c.max_blob);
	return 0;
}

static int h_push(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		  void *data)
{
	(void)reqm;
	struct art *a = data;
	Slipway__V1__PushResponse *resp = (void *)respm;
	ProtobufCMessage *m = NULL;
	int rc = rpc_recv(ctx, &m);
	if (rc == 0)
		return rpc_errorf(ctx, SW_EINVAL, "empty push: the first message must be the header");
	if (rc < 0)
		return rpc_errorf(ctx, rc, "the push header did not arrive");
	Slipway__V1__PushRequest *req = (void *)m;
	if (req->msg_case != SLIPWAY__V1__PUSH_REQUEST__MSG_HEADER) {
		rc = rpc_errorf(ctx, SW_EINVAL, "the first message of a push must be the header");
		goto out;
	}
	const Slipway__V1__PushHeader *h = req->header;
	if ((rc = check_header(ctx, a, h)) != 0 ||
	    (rc = authorize(a, ctx, "push", "release", h->app)) != 0)
		goto out;
	if ((rc = art_transfer_begin(a)) != 0) {
		rc = rpc_errorf(ctx, rc, "too many transfers in progress (%lld); retry later",
				a->c.max_transfers);
		goto out;
	}
	struct art_push_result res = { 0 };
	char err[512] = "";
	rc = art_push(a, ctx, rpc_peer(ctx), h, &res, err, sizeof err);
	art_transfer_end(a);
	if (rc != 0)
		rc = rpc_errorf(ctx, rc, "%s", err);
	else {
		resp->release = res.release;
		res.release->signature_required = art_keys_required(a->keys, h->app);
		resp->deduplicated = res.deduplicated;
		resp->release_existed = res.release_existed;
	}
out:
	protobuf_c_message_free_unpacked(m, NULL);
	return rc;
}

/* ---- Pull ---- */

static int h_pull(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		  void *data)
{
	(void)respm;
	struct art *a = data;
	const Slipway__V1__PullRequest *req = (const void *)reqm;
	struct art_blob b;
	char err[512];
	int rc;
	const char *digest = NULL;
	Slipway__V1__Release rel;

	if (req->target_case == SLIPWAY__V1__PULL_REQUEST__TARGET_DIGEST) {
		if (digest_parse(req->digest, NULL) != 0)
			return rpc_errorf(ctx, SW_EINVAL, "digest: want sha256:<64 lower-case hex>");
		if ((rc = authorize(a, ctx, "read", "release", "")) != 0)
			return rc;
		digest = req->digest;
	} else if (req->target_case == SLIPWAY__V1__PULL_REQUEST__TARGET_RELEASE &&
		   req->release != NULL) {
		if (!name_app_ok(req->release->app) || !name_version_ok(req->release->version))
			return rpc_errorf(ctx, SW_EINVAL, "release: invalid app or version");
		if ((rc = authorize(a, ctx, "read", "release", req->release->app)) != 0)
			return rc;
		rc = art_release_get(a, ctx, req->release->app, req->release->version, &rel, err,
				     sizeof err);
		if (rc != 0)
			return rpc_errorf(ctx, rc, "%s", err);
		digest = rel.digest;
	} else {
		return rpc_errorf(ctx, SW_EINVAL, "name a digest or a release to pull");
	}
	if ((rc = art_blob_get(a, digest, &b, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if ((rc = art_transfer_begin(a)) != 0)
		return rpc_errorf(ctx, rc, "too many transfers in progress (%lld); retry later",
				  a->c.max_transfers);
	err[0] = '\0';
	rc = art_pull(a, ctx, rpc_peer(ctx), &b, req->offset, err, sizeof err);
	art_transfer_end(a);
	return rc == 0 ? 0 : rpc_errorf(ctx, rc, "%s", err);
}

/* ---- queries ---- */

static int h_stat(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		  void *data)
{
	struct art *a = data;
	const Slipway__V1__StatRequest *req = (const void *)reqm;
	Slipway__V1__BlobInfo *resp = (void *)respm;
	struct art_blob b;
	char err[512];
	int rc;
	if (digest_parse(req->digest, NULL) != 0)
		return rpc_errorf(ctx, SW_EINVAL, "digest: want sha256:<64 lower-case hex>");
	if ((rc = authorize(a, ctx, "read", "release", "")) != 0)
		return rc;
	if ((rc = art_blob_get(a, req->digest, &b, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	resp->digest = rpc_strdup(ctx, b.digest);
	resp->size_bytes = b.size;
	resp->media_type = rpc_strdup(ctx, b.media_type);
	resp->created_unix_ms = b.created_ms;
	if (resp->digest == NULL || resp->media_type == NULL)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	return 0;
}

static int h_list_versions(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			   ProtobufCMessage *respm, void *data)
{
	struct art *a = data;
	const Slipway__V1__ListVersionsRequest *req = (const void *)reqm;
	Slipway__V1__ListVersionsResponse *resp = (void *)respm;
	char err[512], tok[32];
	int64_t before = 0, next = 0;
	int rc;
	if (!name_app_ok(req->app))
		return rpc_errorf(ctx, SW_EINVAL, "app: invalid name");
	if (art_token_id(req->page_token, &before) != 0)
		return rpc_errorf(ctx, SW_EINVAL, "page_token: not a token this service issued");
	if ((rc = authorize(a, ctx, "read", "release", req->app)) != 0)
		return rc;
	rc = art_release_list(a, ctx, req->app, before, page_size(req->page_size), resp, &next,
			      err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if (next > 0) {
		snprintf(tok, sizeof tok, "r%lld", (long long)next);
		resp->next_page_token = rpc_strdup(ctx, tok);
	}
	return 0;
}

static int h_list_apps(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		       void *data)
{
	struct art *a = data;
	const Slipway__V1__ListAppsRequest *req = (const void *)reqm;
	Slipway__V1__ListAppsResponse *resp = (void *)respm;
	char err[512], after[ART_APP_MAX + 1], tok[ART_APP_MAX + 2];
	int more = 0, rc;
	if (art_token_app(req->page_token, after) != 0)
		return rpc_errorf(ctx, SW_EINVAL, "page_token: not a token this service issued");
	if ((rc = authorize(a, ctx, "read", "release", "")) != 0)
		return rc;
	rc = art_app_list(a, ctx, after, page_size(req->page_size), resp, &more, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if (more && resp->n_apps > 0) {
		snprintf(tok, sizeof tok, "a%s", resp->apps[resp->n_apps - 1]);
		resp->next_page_token = rpc_strdup(ctx, tok);
	}
	return 0;
}

static int h_resolve(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		     void *data)
{
	struct art *a = data;
	const Slipway__V1__ResolveRequest *req = (const void *)reqm;
	Slipway__V1__Release *resp = (void *)respm;
	char err[512];
	int rc;
	if (!name_app_ok(req->app) || !name_version_ok(req->version))
		return rpc_errorf(ctx, SW_EINVAL, "invalid app or version");
	if ((rc = authorize(a, ctx, "read", "release", req->app)) != 0)
		return rc;
	rc = art_release_get(a, ctx, req->app, req->version, resp, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	resp->signature_required = art_keys_required(a->keys, resp->app);
	return 0;
}

static int h_get_provenance(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			    ProtobufCMessage *respm, void *data)
{
	struct art *a = data;
	const Slipway__V1__GetProvenanceRequest *req = (const void *)reqm;
	Slipway__V1__GetProvenanceResponse *resp = (void *)respm;
	struct art_blob b;
	char err[512];
	int rc;
	if (digest_parse(req->digest, NULL) != 0)
		return rpc_errorf(ctx, SW_EINVAL, "digest: want sha256:<64 lower-case hex>");
	if ((rc = authorize(a, ctx, "read", "release", "")) != 0)
		return rc;
	rc = art_release_by_digest(a, ctx, req->digest, resp, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if (resp->n_releases == 0 && (rc = art_blob_get(a, req->digest, &b, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	for (size_t i = 0; i < resp->n_releases; i++)
		resp->releases[i]->signature_required =
			art_keys_required(a->keys, resp->releases[i]->app);
	resp->digest = rpc_strdup(ctx, req->digest);
	return resp->digest ? 0 : rpc_errorf(ctx, SW_ENOMEM, "out of memory");
}

/* ---- pins and GC ---- */

static int h_set_pins(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		      void *data)
{
	(void)respm;
	struct art *a = data;
	const Slipway__V1__SetPinsRequest *req = (const void *)reqm;
	char err[512];
	int rc;
	if (!name_app_ok(req->app))
		return rpc_errorf(ctx, SW_EINVAL, "app: invalid name");
	if (!name_app_ok(req->environment))
		return rpc_errorf(ctx, SW_EINVAL, "environment: want 1-63 of [a-z0-9-]");
	if ((req->current_digest[0] && digest_parse(req->current_digest, NULL) != 0) ||
	    (req->last_good_digest[0] && digest_parse(req->last_good_digest, NULL) != 0))
		return rpc_errorf(ctx, SW_EINVAL, "digests: want sha256:<64 lower-case hex> or empty");
	if ((rc = authorize(a, ctx, "pin", "artifact", req->app)) != 0)
		return rc;
	if ((rc = art_pins_set(a, rpc_peer(ctx), req, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	return 0;
}

static int h_gc(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		void *data)
{
	struct art *a = data;
	const Slipway__V1__GarbageCollectRequest *req = (const void *)reqm;
	int rc;
	if (req->retention_ms < 0)
		return rpc_errorf(ctx, SW_EINVAL, "retention_ms: negative");
	if ((rc = authorize(a, ctx, "gc", "artifact", "")) != 0)
		return rc;
	char err[512] = "";
	rc = art_gc(a, ctx, rpc_peer(ctx), req->dry_run, req->retention_ms, (void *)respm, err,
		    sizeof err);
	return rc == 0 ? 0 : rpc_errorf(ctx, rc, "%s", err);
}

static const struct rpc_method methods[] = {
	{ "Push", RPC_CLIENT_STREAM, 0, h_push, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "Pull", RPC_SERVER_STREAM, 0, h_pull, RPC_PEER_ANY },
	{ "Stat", RPC_UNARY, 0, h_stat, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ListVersions", RPC_UNARY, 0, h_list_versions, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ListApps", RPC_UNARY, 0, h_list_apps, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "Resolve", RPC_UNARY, 0, h_resolve, RPC_PEER_USER | RPC_PEER_SERVICE },
	/* agents too: one verifies a release's signed statement before it
	 * runs a release of an app that requires signatures */
	{ "GetProvenance", RPC_UNARY, 0, h_get_provenance, RPC_PEER_ANY },
	{ "SetPins", RPC_UNARY, 0, h_set_pins, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "GarbageCollect", RPC_UNARY, 0, h_gc, RPC_PEER_USER | RPC_PEER_SERVICE },
};

int art_rpc_register(struct art *a, struct rpc_server *srv, char *err, size_t errlen)
{
	return rpc_server_add_service(srv, &slipway__v1__artifact__descriptor, methods,
				      sizeof methods / sizeof methods[0], a, err, errlen);
}
