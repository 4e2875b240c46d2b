/*
 * enroll.c - the Enrollments service (proto/slipway/v1/enrollment.proto):
 * which app, environment, region and group each agent serves, and its
 * pinned sealing key. An administrative fact kept here, beside the
 * authorization policy, and never only in the orchestrator's database:
 * the orchestrator registers agents only inside their enrollment and the
 * secrets service checks it again before every grant, so neither an agent
 * nor a tampered orchestrator can move an agent (or the secrets sealed to
 * it) into another environment.
 *
 * Every change takes one advisory lock and a new value of one sequence,
 * so revisions commit in order and a follower reading after_revision never
 * skips one. Unenrolled agents stay as tombstones (removed) so followers
 * learn of removals. Every change is an audit event in the same
 * transaction (the outbox).
 */
#include "clock.h"
#include "err.h"
#include "log.h"
#include "names.h"
#include "outbox.h"
#include "policy.h"
#include "rpc.h"
#include "spiffe.h"
#include "slipway/v1/enrollment.pb-c.h"

#include <sodium.h>
#include <stdio.h>
#include <string.h>

#define COLS                                                                                     \
	"agent_id, app, environment, region, grp, seal_key, enrolled_by, enrolled_ms,"           \
	" key_pinned_by, key_pinned_ms, revision, removed"
#define LIST_DEFAULT 500
#define LIST_MAX 1000

/* One row of COLS into a response message (arena strings). */
static int fill(struct rpc_ctx *ctx, const PGresult *r, int row, Slipway__V1__Enrollment *e)
{
	slipway__v1__enrollment__init(e);
	e->agent_id = rpc_strdup(ctx, db_text(r, row, 0));
	e->app = rpc_strdup(ctx, db_text(r, row, 1));
	e->environment = rpc_strdup(ctx, db_text(r, row, 2));
	e->region = rpc_strdup(ctx, db_text(r, row, 3));
	e->group = rpc_strdup(ctx, db_text(r, row, 4));
	e->enrolled_by = rpc_strdup(ctx, db_text(r, row, 6));
	e->enrolled_unix_ms = db_int64(r, row, 7);
	e->key_pinned_by = rpc_strdup(ctx, db_text(r, row, 8));
	e->key_pinned_unix_ms = db_int64(r, row, 9);
	e->revision = (uint64_t)db_int64(r, row, 10);
	e->removed = db_bool(r, row, 11);
	const char *hex = db_text(r, row, 5);
	if (hex[0] != '\0') {
		uint8_t *k = rpc_alloc(ctx, 32);
		size_t n = 0;
		if (k == NULL || sodium_hex2bin(k, 32, hex, strlen(hex), NULL, &n, NULL) != 0 ||
		    n != 32)
			return SW_EINTERNAL;
		e->seal_public_key.data = k;
		e->seal_public_key.len = 32;
	}
	if (!e->agent_id || !e->app || !e->environment || !e->region || !e->group ||
	    !e->enrolled_by || !e->key_pinned_by)
		return SW_ELIMIT;
	return 0;
}

struct change {
	const char *actor, *action, *agent, *reason;
	const char *app, *env, *region, *grp, *key_hex;
};

static int audit_change(struct db_conn *c, const struct change *ch, char *err, size_t errlen)
{
	struct outbox_event e = { .actor = ch->actor,
				  .action = ch->action,
				  .resource = ch->agent,
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "app", ch->app);
	outbox_detail(&e, "environment", ch->env);
	outbox_detail(&e, "region", ch->region);
	outbox_detail(&e, "group", ch->grp);
	outbox_detail(&e, "seal_key",
		      ch->key_hex[0] ? ch->key_hex : "(none: pinned at the first registration)");
	if (ch->reason != NULL && ch->reason[0] != '\0')
		outbox_detail(&e, "reason", ch->reason);
	return outbox_add(c, "policy", &e, err, errlen);
}

static int lock(struct db_conn *c, char *err, size_t errlen)
{
	return db_q(c, "SELECT pg_advisory_xact_lock(hashtext('slipway.policy.enrollments'))", 0,
		    NULL, NULL, err, errlen);
}

/* Reads one agent's row outside a transaction (its scope, for checks
 * before a change). 0, or SW_ENOTFOUND; *r is the row either way. */
static int read_row(struct pol_service *s, const char *agent, PGresult **r, char *err,
		    size_t errlen)
{
	struct db_conn *c = NULL;
	int rc = db_acquire(s->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	rc = db_q(c, "SELECT " COLS " FROM enrollments WHERE agent_id = $1", 1,
		  (const char *[]){ agent }, r, err, errlen);
	db_release(s->db, c);
	if (rc == 0 && PQntuples(*r) == 0)
		rc = sw_errf(err, errlen, SW_ENOTFOUND, "%s is not enrolled", agent);
	return rc;
}

static int check_agent_id(struct pol_service *s, struct rpc_ctx *ctx, const char *id,
			  struct spiffe_id *out)
{
	char err[300];
	if (spiffe_parse(id, s->bopts.trust_domain, out, err, sizeof err) != 0 ||
	    out->kind != SPIFFE_AGENT)
		return rpc_errorf(ctx, SW_EINVAL,
				  "agent_id: the SPIFFE ID of an agent of trust domain %s "
				  "(spiffe://%s/agent/REGION/HOST) is required",
				  s->bopts.trust_domain, s->bopts.trust_domain);
	return 0;
}

static int require_scope(struct pol_service *s, struct rpc_ctx *ctx, const char *action,
			 const char *app, const char *env, const char *agent)
{
	char err[512] = "";
	int rc = pol_check_caller(s, rpc_peer(ctx), rpc_request_id(ctx), action, "agent", app, env,
				  agent, err, sizeof err);
	return rc == 0 ? 0 : rpc_errorf(ctx, rc, "%s", err);
}

/* Runs a change's transaction and answers with the row it returned (it
 * frees *row). 0, or the code with the call's message set. */
static int change_and_answer(struct pol_service *s, struct rpc_ctx *ctx, db_tx_fn fn, void *arg,
			     PGresult **row, ProtobufCMessage *respm)
{
	char err[512];
	int rc = db_tx(s->db, NULL, fn, arg, err, sizeof err);
	if (rc != 0)
		rpc_errorf(ctx, rc, "%s", err);
	else if ((rc = fill(ctx, *row, 0, (void *)respm)) != 0)
		rpc_errorf(ctx, rc, "cannot encode the enrollment");
	PQclear(*row);
	*row = NULL;
	return rc;
}

/* ---- EnrollAgent ---- */

struct enroll_tx {
	struct change ch;
	const char *old_app, *old_env; /* NULL: was not enrolled (or removed) */
	PGresult *row;
};

static int enroll_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct enroll_tx *t = arg;
	char now[24];
	PGresult *r = NULL;
	int rc;
	PQclear(t->row);
	t->row = NULL;
	if ((rc = lock(c, err, errlen)) != 0)
		return rc;
	/* The scope checked before the transaction must still be the scope. */
	if ((rc = db_q(c, "SELECT app, environment, removed FROM enrollments WHERE agent_id = $1",
		       1, (const char *[]){ t->ch.agent }, &r, err, errlen)) != 0)
		return rc;
	int live = PQntuples(r) == 1 && !db_bool(r, 0, 2);
	int same = live ? t->old_app && strcmp(db_text(r, 0, 0), t->old_app) == 0 &&
				  strcmp(db_text(r, 0, 1), t->old_env) == 0
			: t->old_app == NULL;
	PQclear(r);
	if (!same)
		return sw_errf(err, errlen, SW_EABORTED,
			       "the enrollment of %s changed meanwhile; enroll again", t->ch.agent);
	const char *v[8] = { t->ch.agent, t->ch.app, t->ch.env, t->ch.region, t->ch.grp,
			     t->ch.key_hex, t->ch.actor, db_i64(now, clock_wall_ms()) };
	if ((rc = db_q(c,
		       "INSERT INTO enrollments (agent_id, app, environment, region, grp, seal_key,"
		       " enrolled_by, enrolled_ms, revision)"
		       " VALUES ($1, $2, $3, $4, $5, $6, $7, $8::bigint, nextval('enrollment_revision'))"
		       " ON CONFLICT (agent_id) DO UPDATE SET app = $2, environment = $3,"
		       " region = $4, grp = $5, seal_key = $6, enrolled_by = $7,"
		       " enrolled_ms = $8::bigint, key_pinned_by = '', key_pinned_ms = 0,"
		       " removed = false, revision = nextval('enrollment_revision')"
		       " RETURNING " COLS,
		       8, v, &t->row, err, errlen)) != 0)
		return rc;
	return audit_change(c, &t->ch, err, errlen);
}

static int enroll_agent(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			ProtobufCMessage *respm, void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__EnrollAgentRequest *req = (const void *)reqm;
	struct spiffe_id id;
	char err[512], region[64] = "", key_hex[65] = "", old_app[64] = "", old_env[64] = "";
	int rc;

	if ((rc = check_agent_id(s, ctx, req->agent_id, &id)) != 0)
		return rc;
	if (!name_app_ok(req->app) || !name_app_ok(req->environment))
		return rpc_errorf(ctx, SW_EINVAL,
				  "app and environment are required ([a-z0-9][a-z0-9-], 1-63)");
	if (req->region[0] != '\0') {
		if (!spiffe_segment_ok(req->region))
			return rpc_errorf(ctx, SW_EINVAL, "region: [A-Za-z0-9._-], 1-63");
		snprintf(region, sizeof region, "%s", req->region);
	} else {
		/* The region in the ID: spiffe://TD/agent/REGION/HOST. */
		size_t n = strcspn(id.name, "/");
		if (n == 0 || n >= sizeof region || id.name[n] != '/')
			return rpc_errorf(ctx, SW_EINVAL,
					  "region: required (the agent ID names no region)");
		memcpy(region, id.name, n);
		region[n] = '\0';
	}
	if (req->group[0] != '\0' && !spiffe_segment_ok(req->group))
		return rpc_errorf(ctx, SW_EINVAL, "group: [A-Za-z0-9._-], 1-63");
	if (req->seal_public_key.len != 0 && req->seal_public_key.len != 32)
		return rpc_errorf(ctx, SW_EINVAL,
				  "seal_public_key: a 32-byte X25519 key, or empty to pin it at "
				  "the agent's first registration");
	if (strlen(req->reason) > 1000)
		return rpc_errorf(ctx, SW_EINVAL, "reason: at most 1000 bytes");
	if (req->seal_public_key.len == 32)
		sodium_bin2hex(key_hex, sizeof key_hex, req->seal_public_key.data, 32);

	if ((rc = require_scope(s, ctx, "enroll", req->app, req->environment, req->agent_id)) != 0)
		return rc;
	/* Moving an agent out of a scope needs the right there too. */
	PGresult *r = NULL;
	rc = read_row(s, req->agent_id, &r, err, sizeof err);
	if (rc == 0 && !db_bool(r, 0, 11)) {
		snprintf(old_app, sizeof old_app, "%s", db_text(r, 0, 1));
		snprintf(old_env, sizeof old_env, "%s", db_text(r, 0, 2));
	}
	PQclear(r);
	if (rc != 0 && rc != SW_ENOTFOUND)
		return rpc_errorf(ctx, rc, "%s", err);
	if (old_app[0] && (strcmp(old_app, req->app) != 0 || strcmp(old_env, req->environment) != 0) &&
	    (rc = require_scope(s, ctx, "enroll", old_app, old_env, req->agent_id)) != 0)
		return rc;

	struct enroll_tx t = { .ch = { .actor = rpc_peer(ctx), .action = "agent.enroll",
				       .agent = req->agent_id, .reason = req->reason,
				       .app = req->app, .env = req->environment, .region = region,
				       .grp = req->group, .key_hex = key_hex },
			       .old_app = old_app[0] ? old_app : NULL,
			       .old_env = old_app[0] ? old_env : NULL };
	rc = change_and_answer(s, ctx, enroll_tx, &t, &t.row, respm);
	if (rc == 0) {
		outbox_relay_kick(s->relay);
		log_info("agent enrolled", "agent=%s app=%s environment=%s region=%s by=%s",
			 req->agent_id, req->app, req->environment, region, rpc_peer(ctx));
	}
	return rc;
}

/* ---- UnenrollAgent ---- */

struct unenroll_tx {
	struct change ch;
	PGresult *row;
};

static int unenroll_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct unenroll_tx *t = arg;
	int rc;
	PQclear(t->row);
	t->row = NULL;
	if ((rc = lock(c, err, errlen)) != 0)
		return rc;
	if ((rc = db_q(c,
		       "UPDATE enrollments SET removed = true,"
		       " revision = nextval('enrollment_revision')"
		       " WHERE agent_id = $1 AND NOT removed AND app = $2 AND environment = $3"
		       " RETURNING " COLS,
		       3, (const char *[]){ t->ch.agent, t->ch.app, t->ch.env }, &t->row, err,
		       errlen)) != 0)
		return rc;
	if (PQntuples(t->row) != 1)
		return sw_errf(err, errlen, SW_EABORTED,
			       "the enrollment of %s changed meanwhile; try again", t->ch.agent);
	t->ch.region = db_text(t->row, 0, 3);
	t->ch.grp = db_text(t->row, 0, 4);
	t->ch.key_hex = db_text(t->row, 0, 5);
	return audit_change(c, &t->ch, err, errlen);
}

static int unenroll_agent(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__UnenrollAgentRequest *req = (const void *)reqm;
	struct spiffe_id id;
	char err[512], app[64], env[64];
	PGresult *r = NULL;
	int rc;
	if ((rc = check_agent_id(s, ctx, req->agent_id, &id)) != 0)
		return rc;
	if (strlen(req->reason) > 1000)
		return rpc_errorf(ctx, SW_EINVAL, "reason: at most 1000 bytes");
	rc = read_row(s, req->agent_id, &r, err, sizeof err);
	if (rc == 0 && db_bool(r, 0, 11))
		rc = sw_errf(err, sizeof err, SW_ENOTFOUND, "%s is not enrolled", req->agent_id);
	if (rc == 0) {
		snprintf(app, sizeof app, "%s", db_text(r, 0, 1));
		snprintf(env, sizeof env, "%s", db_text(r, 0, 2));
	}
	PQclear(r);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	if ((rc = require_scope(s, ctx, "enroll", app, env, req->agent_id)) != 0)
		return rc;
	struct unenroll_tx t = { .ch = { .actor = rpc_peer(ctx), .action = "agent.unenroll",
					 .agent = req->agent_id, .reason = req->reason, .app = app,
					 .env = env } };
	rc = change_and_answer(s, ctx, unenroll_tx, &t, &t.row, respm);
	if (rc == 0) {
		outbox_relay_kick(s->relay);
		log_info("agent unenrolled", "agent=%s app=%s environment=%s by=%s", req->agent_id,
			 app, env, rpc_peer(ctx));
	}
	return rc;
}

/* ---- GetEnrollment, ListEnrollments ---- */

static int get_enrollment(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			  ProtobufCMessage *respm, void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__GetEnrollmentRequest *req = (const void *)reqm;
	struct spiffe_id id;
	char err[512];
	PGresult *r = NULL;
	int rc;
	if ((rc = check_agent_id(s, ctx, req->agent_id, &id)) != 0)
		return rc;
	/* Reading needs `read` on `agent` everywhere (services have it), so an
	 * answer never tells a scoped reader about another scope. */
	if ((rc = require_scope(s, ctx, "read", NULL, NULL, req->agent_id)) != 0)
		return rc;
	rc = read_row(s, req->agent_id, &r, err, sizeof err);
	if (rc == 0)
		rc = fill(ctx, r, 0, (void *)respm);
	PQclear(r);
	return rc == 0 ? 0 : rpc_errorf(ctx, rc, "%s", rc == SW_ENOTFOUND ? err : "cannot read it");
}

static int list_enrollments(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			    ProtobufCMessage *respm, void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__ListEnrollmentsRequest *req = (const void *)reqm;
	Slipway__V1__ListEnrollmentsResponse *resp = (void *)respm;
	char err[512], after[24], lim[24];
	struct db_conn *c = NULL;
	PGresult *r = NULL;
	int rc;
	if ((req->app[0] && !name_app_ok(req->app)) ||
	    (req->environment[0] && !name_app_ok(req->environment)))
		return rpc_errorf(ctx, SW_EINVAL, "app, environment: [a-z0-9][a-z0-9-], 1-63");
	if (req->limit > LIST_MAX)
		return rpc_errorf(ctx, SW_EINVAL, "limit: at most %d", LIST_MAX);
	if (req->after_revision > INT64_MAX)
		return rpc_errorf(ctx, SW_EINVAL, "after_revision: out of range");
	uint32_t limit = req->limit ? req->limit : LIST_DEFAULT;
	if ((rc = require_scope(s, ctx, "read", req->app, req->environment, NULL)) != 0)
		return rc;
	if ((rc = db_acquire(s->db, &c, 5000, err, sizeof err)) != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	const char *v[5] = { db_i64(after, (int64_t)req->after_revision),
			     req->include_removed ? "t" : "f", req->app, req->environment,
			     db_i64(lim, (int64_t)limit + 1) };
	rc = db_q(c,
		  "SELECT " COLS " FROM enrollments WHERE revision > $1::bigint"
		  " AND ($2::boolean OR NOT removed) AND ($3 = '' OR app = $3)"
		  " AND ($4 = '' OR environment = $4) ORDER BY revision LIMIT $5::bigint",
		  5, v, &r, err, sizeof err);
	db_release(s->db, c);
	if (rc != 0)
		return rpc_errorf(ctx, rc, "%s", err);
	int n = PQntuples(r);
	if ((uint32_t)n > limit) {
		resp->more = 1;
		n = (int)limit;
	}
	resp->enrollments = rpc_alloc(ctx, (size_t)(n ? n : 1) * sizeof *resp->enrollments);
	if (resp->enrollments == NULL)
		rc = SW_ELIMIT;
	for (int i = 0; rc == 0 && i < n; i++) {
		Slipway__V1__Enrollment *e = rpc_alloc(ctx, sizeof *e);
		if (e == NULL || (rc = fill(ctx, r, i, e)) != 0) {
			rc = rc ? rc : SW_ELIMIT;
			break;
		}
		resp->enrollments[resp->n_enrollments++] = e;
	}
	PQclear(r);
	return rc == 0 ? 0 : rpc_errorf(ctx, rc, "the enrollments do not fit in a response");
}

/* ---- PinSealingKey ---- */

struct pin_tx {
	struct change ch;
	int pinned; /* 1: pinned now; 0: the same key was pinned already */
	PGresult *row;
};

static int pin_tx(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct pin_tx *t = arg;
	char now[24];
	int rc;
	PQclear(t->row);
	t->row = NULL;
	t->pinned = 0;
	if ((rc = lock(c, err, errlen)) != 0)
		return rc;
	if ((rc = db_q(c, "SELECT " COLS " FROM enrollments WHERE agent_id = $1 FOR UPDATE", 1,
		       (const char *[]){ t->ch.agent }, &t->row, err, errlen)) != 0)
		return rc;
	if (PQntuples(t->row) != 1 || db_bool(t->row, 0, 11))
		return sw_errf(err, errlen, SW_ENOTFOUND, "%s is not enrolled", t->ch.agent);
	const char *have = db_text(t->row, 0, 5);
	if (have[0] != '\0')
		return strcmp(have, t->ch.key_hex) == 0
			       ? 0
			       : sw_errf(err, errlen, SW_EPRECOND,
					 "%s presents another sealing key than the one pinned in "
					 "its enrollment: an admin must enroll it again "
					 "(slipway agents enroll)",
					 t->ch.agent);
	PQclear(t->row);
	t->row = NULL;
	const char *v[4] = { t->ch.agent, t->ch.key_hex, t->ch.actor, db_i64(now, clock_wall_ms()) };
	if ((rc = db_q(c,
		       "UPDATE enrollments SET seal_key = $2, key_pinned_by = $3,"
		       " key_pinned_ms = $4::bigint, revision = nextval('enrollment_revision')"
		       " WHERE agent_id = $1 RETURNING " COLS,
		       4, v, &t->row, err, errlen)) != 0)
		return rc;
	t->ch.app = db_text(t->row, 0, 1);
	t->ch.env = db_text(t->row, 0, 2);
	t->ch.region = db_text(t->row, 0, 3);
	t->ch.grp = db_text(t->row, 0, 4);
	t->pinned = 1;
	return audit_change(c, &t->ch, err, errlen);
}

static int pin_sealing_key(struct rpc_ctx *ctx, const ProtobufCMessage *reqm,
			   ProtobufCMessage *respm, void *data)
{
	struct pol_service *s = data;
	const Slipway__V1__PinSealingKeyRequest *req = (const void *)reqm;
	struct spiffe_id id;
	char key_hex[65];
	int rc;
	if ((rc = check_agent_id(s, ctx, req->agent_id, &id)) != 0)
		return rc;
	if (req->seal_public_key.len != 32)
		return rpc_errorf(ctx, SW_EINVAL, "seal_public_key: a 32-byte X25519 key");
	if ((rc = require_scope(s, ctx, "bind", NULL, NULL, req->agent_id)) != 0)
		return rc;
	sodium_bin2hex(key_hex, sizeof key_hex, req->seal_public_key.data, 32);
	struct pin_tx t = { .ch = { .actor = rpc_peer(ctx), .action = "agent.seal_key.pin",
				    .agent = req->agent_id, .key_hex = key_hex,
				    .reason = "first registration" } };
	rc = change_and_answer(s, ctx, pin_tx, &t, &t.row, respm);
	if (rc == 0 && t.pinned) {
		outbox_relay_kick(s->relay);
		log_info("sealing key pinned", "agent=%s by=%s", req->agent_id, rpc_peer(ctx));
	}
	return rc;
}

static const struct rpc_method methods[] = {
	{ "EnrollAgent", RPC_UNARY, 0, enroll_agent, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "UnenrollAgent", RPC_UNARY, 0, unenroll_agent, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "GetEnrollment", RPC_UNARY, 0, get_enrollment, RPC_PEER_USER | RPC_PEER_SERVICE },
	{ "ListEnrollments", RPC_UNARY, 0, list_enrollments, RPC_PEER_USER | RPC_PEER_SERVICE },
	/* the orchestrator, at an agent's first registration */
	{ "PinSealingKey", RPC_UNARY, 0, pin_sealing_key, RPC_PEER_SERVICE },
};

int pol_enroll_register(struct pol_service *s, struct rpc_server *srv, char *err, size_t errlen)
{
	return rpc_server_add_service(srv, &slipway__v1__enrollments__descriptor, methods,
				      sizeof methods / sizeof methods[0], s, err, errlen);
}
