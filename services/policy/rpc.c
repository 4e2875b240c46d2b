/*
 * rpc.c - the slipway.v1.Policy handlers, one function per RPC:
 * decode -> validate -> authorize -> domain call -> encode.
 *
 * Authorize runs inline on the completion-queue thread: it decides in
 * memory and, when the decision must be recorded (denials; deploy,
 * approve, secret and policy actions), defers the call to the decision
 * writer, which answers once the record is committed. Every other handler
 * runs on the worker pool and checks its caller against the same policy
 * (authorization.md), recording the check when it must.
 */
#include "policy.h"
#include "approval.h"
#include "err.h"
#include "log.h"
#include "rpc.h"
#include "spiffe.h"

#include "slipway/v1/policy.pb-c.h"
#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_FIELD 255
#define MAX_CONTEXT 32
#define MAX_REASONS 16

static int ident_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 32 || !(s[0] >= 'a' && s[0] <= 'z'))
		return 0;
	for (size_t i = 1; i < n; i++)
		if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9') || s[i] == '-' ||
		      s[i] == '_'))
			return 0;
	return 1;
}

static int field_ok(const char *s)
{
	size_t n = strlen(s);
	if (n > MAX_FIELD)
		return 0;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
			return 0;
	return 1;
}

/* Validates a question; normalises "kind.action" to (kind, action). On
 * failure sets the call's message and returns SW_EINVAL. */
static int check_question(struct pol_service *s, struct rpc_ctx *ctx, const char *principal,
			  const char **action, const Slipway__V1__Resource *res,
			  size_t ncontext, const char **kind)
{
	char why[200];
	if (principal == NULL || principal[0] == '\0')
		return rpc_errorf(ctx, SW_EINVAL, "principal is required");
	if (spiffe_parse(principal, s->bopts.trust_domain, NULL, why, sizeof why) != 0)
		return rpc_errorf(ctx, SW_EINVAL, "principal: %s", why);
	if (res == NULL || res->kind[0] == '\0')
		return rpc_errorf(ctx, SW_EINVAL, "resource.kind is required");
	*kind = res->kind;
	const char *dot = strchr(*action, '.');
	if (dot != NULL && (size_t)(dot - *action) == strlen(*kind) &&
	    strncmp(*action, *kind, strlen(*kind)) == 0)
		*action = dot + 1; /* "secret.read" on kind secret */
	if (!ident_ok(*action))
		return rpc_errorf(ctx, SW_EINVAL, "action: '%s' is not an action name", *action);
	if (!ident_ok(*kind))
		return rpc_errorf(ctx, SW_EINVAL, "resource.kind: '%s' is not a kind name", *kind);
	if (!field_ok(res->app) || !field_ok(res->environment) || !field_ok(res->name))
		return rpc_errorf(ctx, SW_EINVAL,
				  "resource app, environment and name must be at most %d printable "
				  "bytes",
				  MAX_FIELD);
	if (res->environment[0] != '\0' && res->app[0] == '\0')
		return rpc_errorf(ctx, SW_EINVAL, "resource.environment needs resource.app");
	if (ncontext > MAX_CONTEXT)
		return rpc_errorf(ctx, SW_EINVAL, "more than %d context entries", MAX_CONTEXT);
	return 0;
}

/* Reasons into call memory. */
static char **reasons_dup(struct rpc_ctx *ctx, char (*r)[POL_REASON_LEN], size_t n)
{
	char **v = rpc_alloc(ctx, (n ? n : 1) * sizeof *v);
	if (v == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++)
		if ((v[i] = rpc_strdup(ctx, r[i])) == NULL)
			return NULL;
	return v;
}

/*
 * Authorizes the caller of one of this service's own RPCs against the
 * current policy, recording the check when it must be (every policy
 * action, and denials). Returns 0, or a code with the call's message set.
 * Worker threads only.
 */
static int require(struct pol_service *s, struct rpc_ctx *ctx, const char *action,
		   const char *kind, const char *app, const char *env, const char *name)
{
	struct pol_policy *p = pol_current(s);
	struct pol_query q = { rpc_peer(ctx), action, kind, app ? app : "", env ? env : "",
			       name ? name : "", clock_wall_ms() };
	struct pol_result r;
	char reasons[MAX_REASONS][POL_REASON_LEN], err[512];
	const char *rv[MAX_REASONS];
	int rc = 0;

	pol_eval(p, &q, 0, &r);
	size_t n = pol_reasons(p, &q, &r, reasons, MAX_REASONS);
	for (size_t i = 0; i < n; i++)
		rv[i] = reasons[i];
	if (pol_must_audit(kind, action, r.allowed)) {
		struct pol_decision d = { .principal = q.principal, .action = action, .kind = kind,
					  .app = q.app, .env = q.env, .name = q.name,
					  .allowed = r.allowed, .nreasons = n, .reasons = rv,
					  .revision = p->revision, .caller = rpc_peer(ctx),
					  .request_id = rpc_request_id(ctx) };
		rpc_new_request_id(d.id);
		if (pol_record_now(s, &d, err, sizeof err) != 0) {
			log_error("cannot record a decision", "error=%s", err);
			if (r.allowed) {
				rc = rpc_errorf(ctx, SW_EUNAVAIL, "cannot record the decision: %s", err);
				goto out;
			}
		}
	}
	if (!r.allowed)
		rc = rpc_errorf(ctx, SW_EPERM, "permission denied: %s may not %s %s: %s",
				q.principal, action, kind, n ? reasons[0] : "no rule allows it");
out:
	pol_unref(p);
	return rc;
}

/* ---- Authorize (inline; deferred when the decision is recorded) ---- */

static int authorize(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		     void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__AuthorizeRequest *req = (const void *)reqm;
	Slipway__V1__AuthorizeResponse *resp = (void *)respm;
	const char *action = req->action, *kind = NULL;
	int rc = check_question(s, ctx, req->principal, &action, req->resource, req->n_context,
				&kind);
	if (rc != 0)
		return rc;
	const Slipway__V1__Resource *res = req->resource;
	const char *caller = rpc_peer(ctx);
	struct pol_policy *p = pol_current(s);
	int64_t now = clock_wall_ms();
	char reasons[MAX_REASONS][POL_REASON_LEN];
	size_t n;
	struct pol_decision d = { .caller = caller, .request_id = rpc_request_id(ctx),
				  .revision = p->revision };
	rpc_new_request_id(d.id);

	/* Who may ask: any principal about itself; services (authorize on
	 * policy) about anyone. */
	if (strcmp(caller, req->principal) != 0) {
		struct pol_query mq = { caller, "authorize", "policy", "", "", "", now };
		struct pol_result mr;
		pol_eval(p, &mq, 0, &mr);
		if (!mr.allowed) {
			n = pol_reasons(p, &mq, &mr, reasons, MAX_REASONS);
			char **rv = reasons_dup(ctx, reasons, n);
			if (rv == NULL) {
				rc = SW_ENOMEM;
				goto out;
			}
			d.principal = caller;
			d.action = "authorize";
			d.kind = "policy";
			d.app = d.env = d.name = "";
			d.allowed = 0;
			d.nreasons = n;
			d.reasons = (const char *const *)rv;
			d.note = "caller may not ask about other principals";
			d.id[0] = '\0';
			rpc_new_request_id(d.id);
			rc = rpc_errorf(ctx, SW_EPERM,
					"permission denied: %s may not ask about other principals "
					"(needs authorize on policy)",
					caller);
			rpc_defer(ctx);
			if (pol_writer_submit(s, ctx, &d, rc) != 0)
				rpc_finish(ctx, rc);
			rc = RPC_DEFERRED;
			goto out;
		}
	}

	struct pol_query q = { req->principal, action, kind, res->app, res->environment, res->name,
			       now };
	struct pol_result r;
	pol_eval(p, &q, 0, &r);
	n = pol_reasons(p, &q, &r, reasons, MAX_REASONS);
	resp->allowed = r.allowed;
	resp->revision = p->revision;
	resp->decision_id = rpc_strdup(ctx, d.id);
	resp->reasons = reasons_dup(ctx, reasons, n);
	resp->n_reasons = n;
	if (resp->reasons == NULL || resp->decision_id == NULL) {
		rc = SW_ENOMEM;
		goto out;
	}
	if (pol_must_audit(kind, action, r.allowed)) {
		d.principal = req->principal;
		d.action = rpc_strdup(ctx, action);
		d.kind = kind;
		d.app = res->app;
		d.env = res->environment;
		d.name = res->name;
		d.allowed = r.allowed;
		d.nreasons = n;
		d.reasons = (const char *const *)resp->reasons;
		rpc_defer(ctx);
		if (pol_writer_submit(s, ctx, &d, 0) != 0)
			rpc_finish(ctx, rpc_errorf(ctx, SW_ELIMIT,
						   "too many decisions waiting to be recorded"));
		rc = RPC_DEFERRED;
	}
out:
	pol_unref(p);
	return rc;
}

/* ---- revisions ---- */

static int get_revision(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			ProtobufCMessage *respm, void *data)
{
	(void)ctx;
	(void)reqm;
	struct pol_service *s = data;
	Slipway__V1__GetRevisionResponse *resp = (void *)respm;
	struct pol_policy *p = pol_current(s);
	resp->revision = p->revision;
	pol_unref(p);
	return 0;
}

static int watch_revision(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	(void)reqm;
	(void)respm;
	struct pol_service *s = data;
	int rc = 0;

	pthread_mutex_lock(&s->mu);
	if (s->draining) {
		pthread_mutex_unlock(&s->mu);
		return rpc_errorf(ctx, SW_EUNAVAIL, "shutting down");
	}
	if (s->nwatchers >= s->max_watchers) {
		pthread_mutex_unlock(&s->mu);
		return rpc_errorf(ctx, SW_ELIMIT, "too many revision watchers (%d)", s->max_watchers);
	}
	s->nwatchers++;
	uint64_t last = s->cur->revision;
	pthread_mutex_unlock(&s->mu);

	for (;;) {
		Slipway__V1__GetRevisionResponse m = SLIPWAY__V1__GET_REVISION_RESPONSE__INIT;
		m.revision = last;
		if ((rc = rpc_send(ctx, &m.base)) != 0)
			break;
		pthread_mutex_lock(&s->mu);
		while (s->cur->revision == last && !s->draining && !rpc_cancelled(ctx)) {
			/* Cancellation is only noticed by polling: wake up often. */
			struct timespec dl;
			clock_gettime(CLOCK_REALTIME, &dl);
			dl.tv_nsec += 200 * 1000000L;
			if (dl.tv_nsec >= 1000000000L) {
				dl.tv_sec++;
				dl.tv_nsec -= 1000000000L;
			}
			pthread_cond_timedwait(&s->cv, &s->mu, &dl);
		}
		int draining = s->draining;
		last = s->cur->revision;
		pthread_mutex_unlock(&s->mu);
		if (draining) {
			rc = 0; /* the client reconnects to another replica */
			break;
		}
		if (rpc_cancelled(ctx)) {
			rc = SW_ECANCELLED;
			break;
		}
	}
	pthread_mutex_lock(&s->mu);
	s->nwatchers--;
	pthread_mutex_unlock(&s->mu);
	return rc == 0 ? 0 : rpc_errorf(ctx, rc, "revision stream ended");
}

/* ---- the document ---- */

static int apply_policy(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			ProtobufCMessage *respm, void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__ApplyPolicyRequest *req = (const void *)reqm;
	Slipway__V1__ApplyPolicyResponse *resp = (void *)respm;
	struct pol_policy *next = NULL, *cur = NULL;
	char err[1024];
	int rc;

	if ((rc = require(s, ctx, "apply", "policy", NULL, NULL, NULL)) != 0)
		return rc;
	size_t len = strlen(req->document);
	if (len > POL_MAX_DOC_BYTES)
		return rpc_errorf(ctx, SW_EINVAL, "$: document larger than %u bytes",
				  POL_MAX_DOC_BYTES);
	if ((rc = pol_refresh(s, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "cannot read the current policy: %s", err);
	if ((rc = pol_compile(req->document, len, &s->bopts, &next, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "invalid policy document: %s", err);
	cur = pol_current(s);
	rc = pol_escalation_check(cur, next, rpc_peer(ctx), clock_wall_ms(), err, sizeof err);
	if (rc != 0) {
		char rerr[512];
		const char *rv[1] = { err };
		struct pol_decision d = { .principal = rpc_peer(ctx), .action = "escalate",
					  .kind = "policy", .app = "", .env = "", .name = "",
					  .allowed = 0, .nreasons = 1, .reasons = rv,
					  .revision = cur->revision, .caller = rpc_peer(ctx),
					  .request_id = rpc_request_id(ctx),
					  .note = "ApplyPolicy escalation guard" };
		rpc_new_request_id(d.id);
		if (pol_record_now(s, &d, rerr, sizeof rerr) != 0)
			log_error("cannot record a decision", "error=%s", rerr);
		rc = rpc_errorf(ctx, rc, "permission denied: %s", err);
		goto out;
	}
	if (req->dry_run) {
		resp->revision = cur->revision;
		resp->changed = strcmp(cur->sha256, next->sha256) != 0;
		goto out;
	}
	uint64_t rev = 0;
	int changed = 0;
	rc = pol_store_apply(s, next, cur->revision, req->expected_revision, rpc_peer(ctx), &rev,
			     &changed, err, sizeof err);
	if (rc != 0) {
		rc = rpc_errorf(ctx, rc, "%s", err);
		goto out;
	}
	resp->revision = rev;
	resp->changed = changed;
	log_info("policy applied", "revision=%llu changed=%d by=%s", (unsigned long long)rev,
		 changed, rpc_peer(ctx));
out:
	pol_unref(next);
	pol_unref(cur);
	return rc;
}

static int get_policy(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		      void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__GetPolicyRequest *req = (const void *)reqm;
	Slipway__V1__GetPolicyResponse *resp = (void *)respm;
	struct pol_policy *p = NULL;
	char err[512];
	int rc;

	if ((rc = require(s, ctx, "read", "policy", NULL, NULL, NULL)) != 0)
		return rc;
	if (req->revision == 0) {
		p = pol_current(s);
	} else {
		struct pol_policy *cur = pol_current(s);
		uint64_t have = cur->revision;
		pol_unref(cur);
		if (req->revision > have && pol_refresh(s, err, sizeof err) == 0) {
			cur = pol_current(s); /* another replica may be ahead */
			have = cur->revision;
			pol_unref(cur);
		}
		if (req->revision > have)
			return rpc_errorf(ctx, SW_ENOTFOUND, "no policy revision %llu (current is %llu)",
					  (unsigned long long)req->revision,
					  (unsigned long long)have);
		if ((rc = pol_store_load(s, req->revision, &p, err, sizeof err)) != 0)
			return rpc_errorf(ctx, rc, "%s", err);
	}
	resp->revision = p->revision;
	resp->document = rpc_strdup(ctx, p->text);
	resp->applied_by = rpc_strdup(ctx, p->applied_by ? p->applied_by : "");
	resp->applied_unix_ms = p->applied_ms;
	pol_unref(p);
	if (resp->document == NULL || resp->applied_by == NULL)
		return rpc_errorf(ctx, SW_ELIMIT, "the document does not fit in a response");
	return 0;
}

static int diff_policy(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
		       ProtobufCMessage *respm, void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__DiffPolicyRequest *req = (const void *)reqm;
	Slipway__V1__DiffPolicyResponse *resp = (void *)respm;
	struct pol_policy *a = NULL, *b = NULL;
	char err[512], *text = NULL;
	int rc;

	if ((rc = require(s, ctx, "read", "policy", NULL, NULL, NULL)) != 0)
		return rc;
	if (pol_refresh(s, err, sizeof err) != 0)
		log_warn("cannot check for a newer revision", "error=%s", err);
	struct pol_policy *cur = pol_current(s);
	uint64_t have = cur->revision;
	pol_unref(cur);
	uint64_t to = req->to_revision ? req->to_revision : have;
	if (req->from_revision > have || to > have)
		return rpc_errorf(ctx, SW_ENOTFOUND, "no such revision (current is %llu)",
				  (unsigned long long)have);
	if ((rc = pol_store_load(s, req->from_revision, &a, err, sizeof err)) != 0 &&
	    req->from_revision != 0) {
		rc = rpc_errorf(ctx, rc, "%s", err);
		goto out;
	}
	if (req->from_revision == 0) {
		/* Revision 0 is the empty document (built-ins only). */
		pol_unref(a);
		a = NULL;
		if ((rc = pol_compile(NULL, 0, &s->bopts, &a, err, sizeof err)) != 0) {
			rc = rpc_errorf(ctx, rc, "%s", err);
			goto out;
		}
	}
	if ((rc = pol_store_load(s, to, &b, err, sizeof err)) != 0) {
		rc = rpc_errorf(ctx, rc, "%s", err);
		goto out;
	}
	if ((rc = pol_diff(a->doc, b->doc, 2u << 20, &text)) != 0) {
		rc = rpc_errorf(ctx, rc, "the diff is larger than 2 MiB");
		goto out;
	}
	resp->diff = rpc_strdup(ctx, text);
	if (resp->diff == NULL)
		rc = rpc_errorf(ctx, SW_ELIMIT, "the diff does not fit in a response");
out:
	free(text);
	pol_unref(a);
	pol_unref(b);
	return rc;
}

static int explain(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		   void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__ExplainRequest *req = (const void *)reqm;
	Slipway__V1__ExplainResponse *resp = (void *)respm;
	const char *action = req->action, *kind = NULL;
	int rc = check_question(s, ctx, req->principal, &action, req->resource, req->n_context,
				&kind);
	if (rc != 0)
		return rc;
	if ((rc = require(s, ctx, "explain", "policy", NULL, NULL, NULL)) != 0)
		return rc;
	struct pol_policy *p = pol_current(s);
	struct pol_query q = { req->principal, action, kind, req->resource->app,
			       req->resource->environment, req->resource->name, clock_wall_ms() };
	struct pol_result r;
	char reasons[MAX_REASONS][POL_REASON_LEN];
	pol_eval(p, &q, 1, &r);
	size_t n = pol_reasons(p, &q, &r, reasons, MAX_REASONS);
	resp->allowed = r.allowed;
	resp->revision = p->revision;
	resp->reasons = reasons_dup(ctx, reasons, n);
	resp->n_reasons = n;
	resp->matched_grants = rpc_alloc(ctx, (r.ngrants + 1) * sizeof(char *));
	resp->matched_forbids = rpc_alloc(ctx, (r.nforbids + 1) * sizeof(char *));
	resp->groups = rpc_alloc(ctx, (r.ngroups + 1) * sizeof(char *));
	if (resp->reasons == NULL || resp->matched_grants == NULL ||
	    resp->matched_forbids == NULL || resp->groups == NULL) {
		rc = SW_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < r.ngrants; i++) {
		char d[256];
		pol_describe_grant(&r.grants[i], d, sizeof d);
		resp->matched_grants[resp->n_matched_grants++] = rpc_strdup(ctx, d);
	}
	for (size_t i = 0; i < r.nforbids; i++) {
		char d[256];
		pol_describe_guard(r.forbids[i], d, sizeof d);
		resp->matched_forbids[resp->n_matched_forbids++] = rpc_strdup(ctx, d);
	}
	for (size_t i = 0; i < r.ngroups; i++)
		resp->groups[resp->n_groups++] = (char *)p->groups[r.groups[i]].name;
	/* Group names point into p: copy them before releasing it. */
	for (size_t i = 0; i < resp->n_groups; i++)
		resp->groups[i] = rpc_strdup(ctx, resp->groups[i]);
out:
	pol_unref(p);
	return rc;
}

/* ---- approvals (approval.c) ---- */

static int evaluate_deployment(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			       ProtobufCMessage *respm, void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__DeploymentFacts *req = (const void *)reqm;
	int rc = require(s, ctx, "evaluate", "deployment", req->app, req->environment, NULL);
	if (rc != 0)
		return rc;
	return pol_evaluate_deployment(s, ctx, req, (void *)respm);
}

static int approve(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		   void *data)
{
	const Slipway__V1__ApproveRequest *req = (const void *)reqm;
	return pol_approve(data, ctx, req->deployment_id, req->digest, req->comment, 1,
			   (void *)respm);
}

static int reject(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		  void *data)
{
	const Slipway__V1__RejectRequest *req = (const void *)reqm;
	return pol_approve(data, ctx, req->deployment_id, req->digest, req->comment, 0,
			   (void *)respm);
}

static int list_approvals(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	const Slipway__V1__ListApprovalsRequest *req = (const void *)reqm;
	return pol_list_approvals(data, ctx, req->deployment_id, (void *)respm);
}

static const struct rpc_method methods[] = {
	{ "Authorize", RPC_UNARY, RPC_INLINE, authorize },
	{ "EvaluateDeployment", RPC_UNARY, 0, evaluate_deployment },
	{ "Approve", RPC_UNARY, 0, approve },
	{ "Reject", RPC_UNARY, 0, reject },
	{ "ListApprovals", RPC_UNARY, 0, list_approvals },
	{ "ApplyPolicy", RPC_UNARY, 0, apply_policy },
	{ "GetPolicy", RPC_UNARY, 0, get_policy },
	{ "DiffPolicy", RPC_UNARY, 0, diff_policy },
	{ "Explain", RPC_UNARY, 0, explain },
	{ "GetRevision", RPC_UNARY, RPC_INLINE, get_revision },
	{ "WatchRevision", RPC_SERVER_STREAM, 0, watch_revision },
};

int pol_rpc_register(struct pol_service *s, struct rpc_server *srv, char *err, size_t errlen)
{
	return rpc_server_add_service(srv, &slipway__v1__policy__descriptor, methods,
				      sizeof methods / sizeof methods[0], s, err, errlen);
}

int pol_require(struct pol_service *s, struct rpc_ctx *ctx, const char *action,
		const char *kind, const char *app, const char *env, const char *name)
{
	return require(s, ctx, action, kind, app, env, name);
}
