/*
 * rpc.c - the slipway.v1.Policy handlers, one function per RPC:
 * decode -> validate -> authorize -> domain call -> encode.
 *
 * Authorize runs inline on the completion-queue thread: it decides in
 * memory and, when the decision must be recorded (denials, up to
 * --denials-per-minute per principal; deploy, approve, secret and policy
 * actions), defers the call to the decision writer, which answers once the
 * record is committed. Every other handler runs on the worker pool and
 * checks its caller against the same policy (authorization.md), recording
 * the check when it must. ApplyPolicy adds the escalation guard over the
 * document's weakening changes (weaken.h).
 */
#include "policy.h"
#include "approval.h"
#include "weaken.h"
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
 * current policy (pol_check_caller records the check when it must be).
 * Returns 0, or a code with the call's message set. Worker threads only.
 */
static int require(struct pol_service *s, struct rpc_ctx *ctx, const char *action,
		   const char *kind, const char *app, const char *env, const char *name)
{
	char err[512] = "";
	int rc = pol_check_caller(s, rpc_peer(ctx), rpc_request_id(ctx), action, kind, app, env,
				  name, err, sizeof err);
	return rc == 0 ? 0 : rpc_errorf(ctx, rc, "%s", err);
}

/* The decision writer's answer to a deferred Authorize: the one place its
 * outcome becomes the call's status. Writer thread. */
static void finish_deferred(void *arg, int code, const char *msg)
{
	struct rpc_ctx *ctx = arg;
	if (msg != NULL)
		rpc_errorf(ctx, code, "%s", msg);
	rpc_finish(ctx, code);
}

/* ---- Authorize (inline; deferred when the decision is recorded) ---- */

/*
 * Whether a denial about principal is recorded (1) or only counted (0):
 * at most --denials-per-minute recorded per principal (limit.c). When it
 * is recorded after others were counted, their summary goes with it
 * (d->summary, in call memory). CQ thread.
 */
static int admit_denial(struct pol_service *s, struct rpc_ctx *ctx, const char *principal,
			int64_t now, struct pol_decision *d)
{
	struct pol_denial_summary sum;
	int has = 0;
	if (!pol_limiter_admit(s->limiter, principal, now, &sum, &has))
		return 0;
	if (has) {
		struct pol_denial_summary *keep = rpc_alloc(ctx, sizeof *keep);
		if (keep != NULL) {
			*keep = sum;
			d->summary = keep;
		} else {
			log_error("cannot keep a summary of suppressed denials", "principal=%s count=%llu",
				  principal, (unsigned long long)sum.suppressed);
		}
	}
	return 1;
}

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
			if (!admit_denial(s, ctx, caller, now, &d))
				goto out; /* counted, not recorded: answered at once */
			rpc_defer(ctx);
			if (pol_writer_submit(s, &d, rc, finish_deferred, ctx) != 0)
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
	if (pol_must_audit(kind, action, r.allowed) &&
	    (r.allowed || admit_denial(s, ctx, req->principal, now, &d))) {
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
		if (pol_writer_submit(s, &d, 0, finish_deferred, ctx) != 0)
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

/* WatchRevision: a deferred stream (watch.c), so an open watch holds no
 * thread; counted against --max-watchers and the caller's stream limits. */
static int watch_revision(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	(void)reqm;
	(void)respm;
	char err[256];
	int rc = pol_watch_revision(ctx, data, err, sizeof err);
	return rc == RPC_DEFERRED ? rc : rpc_errorf(ctx, rc, "%s", err);
}

/* ---- the document ---- */

/* The weakening changes w into call memory for a response. */
static int weakening_out(struct rpc_ctx *ctx, const struct pol_weaken *w,
			 Slipway__V1__PolicyWeakening ***out, size_t *n)
{
	Slipway__V1__PolicyWeakening **v = rpc_alloc(ctx, (w->n + 1) * sizeof *v);
	if (v == NULL)
		return SW_ENOMEM;
	for (size_t i = 0; i < w->n; i++) {
		const struct pol_weak *c = &w->v[i];
		Slipway__V1__PolicyWeakening *m = rpc_alloc(ctx, sizeof *m);
		if (m == NULL)
			return SW_ENOMEM;
		slipway__v1__policy_weakening__init(m);
		m->path = rpc_strdup(ctx, c->path);
		m->what = rpc_strdup(ctx, c->what);
		m->app = rpc_strdup(ctx, c->app);
		m->environment = rpc_strdup(ctx, c->env);
		m->grant = c->cls != POL_WEAK_PROTECTION;
		if (m->path == NULL || m->what == NULL || m->app == NULL || m->environment == NULL)
			return SW_ENOMEM;
		v[i] = m;
	}
	*out = v;
	*n = w->n;
	return 0;
}

/*
 * Records the escalation guard's refusal of an apply by the RPC peer as a
 * denied `escalate` decision (decisions table and audit log), one reason
 * per refused change. Worker threads.
 */
static void record_refusal(struct pol_service *s, struct rpc_ctx *ctx,
			   const struct pol_policy *cur, const struct pol_weaken *w,
			   const char *msg)
{
	enum { MAXR = 16 };
	char rerr[512], count[24], more[64];
	const char *rv[MAXR + 1];
	size_t n = 0, denied = 0;
	for (size_t i = 0; i < w->n; i++) {
		if (!w->v[i].denied)
			continue;
		denied++;
		if (n < MAXR) {
			char line[POL_WEAKEN_PATH + POL_REASON_LEN + 4];
			snprintf(line, sizeof line, "%s: %s", w->v[i].path, w->v[i].what);
			rv[n] = rpc_strdup(ctx, line);
			if (rv[n] != NULL)
				n++;
		}
	}
	if (denied > n) {
		snprintf(more, sizeof more, "... and %zu more", denied - n);
		rv[n++] = more;
	}
	if (n == 0)
		rv[n++] = msg;
	snprintf(count, sizeof count, "%zu", denied);
	struct pol_decision d = { .principal = rpc_peer(ctx), .action = "escalate", .kind = "policy",
				  .app = "", .env = "", .name = "", .allowed = 0, .nreasons = n,
				  .reasons = rv, .revision = cur->revision, .caller = rpc_peer(ctx),
				  .request_id = rpc_request_id(ctx),
				  .note = "ApplyPolicy escalation guard: the document was not applied",
				  .nextra = 1, .ekeys = { "weakening_refused" }, .evals = { count } };
	rpc_new_request_id(d.id);
	if (pol_record_now(s, &d, rerr, sizeof rerr) != 0)
		log_error("cannot record a decision", "error=%s", rerr);
}

static int apply_policy(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			ProtobufCMessage *respm, void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__ApplyPolicyRequest *req = (const void *)reqm;
	Slipway__V1__ApplyPolicyResponse *resp = (void *)respm;
	struct pol_policy *next = NULL, *cur = NULL;
	struct pol_weaken w = { 0 };
	char err[4096];
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
	/* What the document weakens, and whether the applier may. */
	if ((rc = pol_weaken(cur, next, &w, err, sizeof err)) != 0) {
		rc = rpc_errorf(ctx, rc, "%s", err);
		goto out;
	}
	rc = pol_escalation_judge(cur, next, rpc_peer(ctx), clock_wall_ms(), &w, err, sizeof err);
	if (rc == SW_EPERM) {
		record_refusal(s, ctx, cur, &w, err);
		rc = rpc_errorf(ctx, rc, "permission denied: %s", err);
		goto out;
	}
	if (rc != 0) {
		rc = rpc_errorf(ctx, rc, "%s", err);
		goto out;
	}
	if ((rc = weakening_out(ctx, &w, &resp->weakening, &resp->n_weakening)) != 0) {
		rc = rpc_errorf(ctx, rc, "out of memory");
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
	log_info("policy applied", "revision=%llu changed=%d by=%s weakening=%zu",
		 (unsigned long long)rev, changed, rpc_peer(ctx), w.n);
out:
	pol_weaken_free(&w);
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
	struct pol_weaken w = { 0 };
	char err[1024], *text = NULL;
	int rc;

	if ((rc = require(s, ctx, "read", "policy", NULL, NULL, NULL)) != 0)
		return rc;
	size_t dlen = req->document != NULL ? strlen(req->document) : 0;
	if (dlen > 0 && (req->from_revision != 0 || req->to_revision != 0))
		return rpc_errorf(ctx, SW_EINVAL,
				  "a proposed document is compared with the current revision: "
				  "from_revision and to_revision must be 0");
	if (dlen > POL_MAX_DOC_BYTES)
		return rpc_errorf(ctx, SW_EINVAL, "$: document larger than %u bytes",
				  POL_MAX_DOC_BYTES);
	if (pol_refresh(s, err, sizeof err) != 0)
		log_warn("cannot check for a newer revision", "error=%s", err);
	if (dlen > 0) {
		/* The current revision -> the proposed document. */
		a = pol_current(s);
		if ((rc = pol_compile(req->document, dlen, &s->bopts, &b, err, sizeof err)) != 0) {
			rc = rpc_errorf(ctx, rc, "invalid policy document: %s", err);
			goto out;
		}
	} else {
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
	}
	if ((rc = pol_diff(a->doc, b->doc, 2u << 20, &text)) != 0) {
		rc = rpc_errorf(ctx, rc, "the diff is larger than 2 MiB");
		goto out;
	}
	if ((rc = pol_weaken(a, b, &w, err, sizeof err)) != 0 ||
	    (rc = weakening_out(ctx, &w, &resp->weakening, &resp->n_weakening)) != 0) {
		rc = rpc_errorf(ctx, rc, "cannot list the weakening changes: out of memory");
		goto out;
	}
	resp->diff = rpc_strdup(ctx, text);
	if (resp->diff == NULL)
		rc = rpc_errorf(ctx, SW_ELIMIT, "the diff does not fit in a response");
out:
	pol_weaken_free(&w);
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
	Slipway__V1__EvaluateDeploymentResponse *resp = (void *)respm;
	char err[512] = "";
	int rc = require(s, ctx, "evaluate", "deployment", req->app, req->environment, NULL);
	if (rc != 0)
		return rc;
	struct pol_eval_out *o = rpc_alloc(ctx, sizeof *o);
	if (o == NULL)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	if ((rc = pol_evaluate_deployment(s, rpc_peer(ctx), req, o, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	resp->verdict = (Slipway__V1__Verdict)o->verdict;
	resp->revision = o->revision;
	resp->not_before_unix_ms = o->not_before_ms;
	resp->decision_id = o->decision_id;
	resp->reasons = rpc_alloc(ctx, (o->nreasons + 1) * sizeof(char *));
	resp->missing = rpc_alloc(ctx, (o->nmissing + 1) * sizeof(void *));
	if (resp->reasons == NULL || resp->missing == NULL)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	for (size_t i = 0; i < o->nreasons; i++)
		resp->reasons[resp->n_reasons++] = o->reasons[i];
	for (size_t i = 0; i < o->nmissing; i++) {
		Slipway__V1__ApprovalRequirement *m = rpc_alloc(ctx, sizeof *m);
		if (m == NULL)
			return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
		slipway__v1__approval_requirement__init(m);
		m->group = o->missing[i].group;
		m->required = o->missing[i].required;
		m->have = o->missing[i].have;
		resp->missing[resp->n_missing++] = m;
	}
	return 0;
}

/* Approve and Reject: one domain call, one encoding. */
static int decide_approval(struct rpc_ctx *ctx, struct pol_service *s, const char *dep,
			   const char *digest, const char *comment, int approve,
			   Slipway__V1__Approval *resp)
{
	char err[512] = "";
	struct pol_approve_out *o = rpc_alloc(ctx, sizeof *o);
	if (o == NULL)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	int rc = pol_approve(s, rpc_peer(ctx), rpc_request_id(ctx), dep, digest, comment, approve,
			     o, err, sizeof err);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	resp->deployment_id = (char *)dep;
	resp->approver = (char *)rpc_peer(ctx);
	resp->digest = o->digest;
	resp->revision = o->revision;
	resp->comment = (char *)comment;
	resp->approve = approve;
	resp->created_unix_ms = o->created_ms;
	resp->expires_unix_ms = o->expires_ms;
	resp->break_glass = o->break_glass;
	resp->groups = rpc_alloc(ctx, (o->ngroups + 1) * sizeof(char *));
	if (resp->groups == NULL)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	for (size_t i = 0; i < o->ngroups; i++)
		resp->groups[resp->n_groups++] = o->groups[i];
	return 0;
}

static int approve(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		   void *data)
{
	const Slipway__V1__ApproveRequest *req = (const void *)reqm;
	return decide_approval(ctx, data, req->deployment_id, req->digest, req->comment, 1,
			       (void *)respm);
}

static int reject(struct rpc_ctx *ctx, const ProtobufCMessage *reqm, ProtobufCMessage *respm,
		  void *data)
{
	const Slipway__V1__RejectRequest *req = (const void *)reqm;
	return decide_approval(ctx, data, req->deployment_id, req->digest, req->comment, 0,
			       (void *)respm);
}

struct list_enc {
	struct rpc_ctx *ctx;
	Slipway__V1__ListApprovalsResponse *out;
	size_t cap;
	int full;      /* the arena ran out */
};

/* Copies one approval into call memory. SW_ELIMIT when the arena is full. */
static int list_row(struct list_enc *l, const struct pol_approval_row *w)
{
	struct rpc_ctx *ctx = l->ctx;
	if (l->out->n_approvals == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		Slipway__V1__Approval **v = rpc_alloc(ctx, (cap + 1) * sizeof *v);
		if (v == NULL)
			return SW_ELIMIT;
		if (l->out->n_approvals > 0)
			memcpy(v, l->out->approvals, l->out->n_approvals * sizeof *v);
		l->out->approvals = v;
		l->cap = cap;
	}
	Slipway__V1__Approval *a = rpc_alloc(ctx, sizeof *a);
	char **groups = rpc_alloc(ctx, (w->ngroups + 1) * sizeof *groups);
	if (a == NULL || groups == NULL)
		return SW_ELIMIT;
	slipway__v1__approval__init(a);
	a->deployment_id = rpc_strdup(ctx, w->deployment_id);
	a->approver = rpc_strdup(ctx, w->approver);
	a->digest = rpc_strdup(ctx, w->digest);
	a->revision = w->revision;
	a->comment = rpc_strdup(ctx, w->comment);
	a->approve = w->approve;
	a->created_unix_ms = w->created_ms;
	a->expires_unix_ms = w->expires_ms;
	a->break_glass = w->break_glass;
	for (size_t i = 0; i < w->ngroups; i++)
		if ((groups[i] = rpc_strdup(ctx, w->groups[i])) == NULL)
			return SW_ELIMIT;
	a->groups = groups;
	a->n_groups = w->ngroups;
	if (a->deployment_id == NULL || a->approver == NULL || a->digest == NULL ||
	    a->comment == NULL)
		return SW_ELIMIT;
	l->out->approvals[l->out->n_approvals++] = a;
	return 0;
}

static int list_one(const struct pol_approval_row *w, void *arg)
{
	struct list_enc *l = arg;
	int rc = list_row(l, w);
	l->full = rc != 0;
	return rc;
}

static int list_approvals(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	const Slipway__V1__ListApprovalsRequest *req = (const void *)reqm;
	struct list_enc l = { ctx, (void *)respm, 0, 0 };
	char err[512] = "";
	int rc = pol_list_approvals(data, rpc_peer(ctx), rpc_request_id(ctx), req->deployment_id,
				    list_one, &l, err, sizeof err);
	if (l.full)
		return rpc_errorf(ctx, rc, "too many approvals for one response");
	return rc == 0 ? 0 : rpc_errorf(ctx, rc, "%s", err);
}

static const struct rpc_method methods[] = {
	{ "Authorize", RPC_UNARY, RPC_INLINE, authorize, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "EvaluateDeployment", RPC_UNARY, 0, evaluate_deployment, RPC_PEER_SERVICE },
	{ "Approve", RPC_UNARY, 0, approve, RPC_PEER_USER },
	{ "Reject", RPC_UNARY, 0, reject, RPC_PEER_USER },
	{ "ListApprovals", RPC_UNARY, 0, list_approvals, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ApplyPolicy", RPC_UNARY, 0, apply_policy, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "GetPolicy", RPC_UNARY, 0, get_policy, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "DiffPolicy", RPC_UNARY, 0, diff_policy, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "Explain", RPC_UNARY, 0, explain, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "GetRevision", RPC_UNARY, RPC_INLINE, get_revision, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "WatchRevision", RPC_SERVER_STREAM, RPC_INLINE, watch_revision, RPC_PEER_USER | RPC_PEER_SERVICE },
};

int pol_rpc_register(struct pol_service *s, struct rpc_server *srv, char *err, size_t errlen)
{
	return rpc_server_add_service(srv, &slipway__v1__policy__descriptor, methods,
				      sizeof methods / sizeof methods[0], s, err, errlen);
}
