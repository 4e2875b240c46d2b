/*
 * store.c - the artifact service's PostgreSQL schema (`artifact`) and the
 * queries behind its read RPCs and SetPins.
 *
 * Tables:
 *   blobs     one row per digest: size, MD5 (the S3 ETag of a good copy),
 *             state pending -> live -> deleting, and last_pushed_at, which
 *             every push touches before it looks at S3 (the GC grace period
 *             counts from it; see gc.c and push.c).
 *   releases  app@version -> digest with provenance, pusher and signature.
 *             Rows are never deleted or re-pointed (a trigger refuses it):
 *             garbage collection only sets collected_at, so a collected
 *             version can never come back with other bytes.
 *   pins      per app and environment, the current and last-known-good
 *             digests (written by the orchestrator through SetPins); GC
 *             never collects a pinned digest.
 *   outbox    audit events, written in the transaction of the change.
 */
#include "art.h"
#include "err.h"
#include "log.h"
#include "provenance.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char mig1[] =
	"CREATE TABLE blobs ("
	" id bigserial NOT NULL UNIQUE,"
	" digest text PRIMARY KEY CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),"
	" size_bytes bigint NOT NULL CHECK (size_bytes >= 0),"
	" md5 text NOT NULL DEFAULT '' CHECK (md5 ~ '^([0-9a-f]{32})?$'),"
	" media_type text NOT NULL,"
	" state text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'live', 'deleting')),"
	" created_at timestamptz NOT NULL DEFAULT now(),"
	" last_pushed_at timestamptz NOT NULL DEFAULT now());"
	"CREATE INDEX blobs_last_pushed ON blobs (last_pushed_at);"
	"CREATE TABLE releases ("
	" id bigserial PRIMARY KEY,"
	" app text NOT NULL CHECK (app ~ '^[a-z0-9][a-z0-9-]{0,62}$'),"
	" version text NOT NULL CHECK (version ~ '^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$'),"
	" digest text NOT NULL CHECK (digest ~ '^sha256:[0-9a-f]{64}$'),"
	" size_bytes bigint NOT NULL CHECK (size_bytes >= 0),"
	" media_type text NOT NULL,"
	" repository text NOT NULL DEFAULT '',"
	" commit_id text NOT NULL DEFAULT '',"
	" ref text NOT NULL DEFAULT '',"
	" build_id text NOT NULL DEFAULT '',"
	" builder text NOT NULL DEFAULT '',"
	" build_time_ms bigint NOT NULL DEFAULT 0,"
	" signature bytea,"
	" signing_key text NOT NULL DEFAULT '',"
	" signature_verified boolean NOT NULL DEFAULT false,"
	" pushed_by text NOT NULL,"
	" created_at timestamptz NOT NULL DEFAULT now(),"
	" collected_at timestamptz,"
	" UNIQUE (app, version));"
	"CREATE INDEX releases_digest ON releases (digest);"
	"CREATE INDEX releases_app_id ON releases (app, id DESC);"
	"CREATE FUNCTION releases_immutable() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
	"  IF TG_OP = 'DELETE' THEN RAISE EXCEPTION 'releases are never deleted'; END IF;"
	"  IF NEW.app <> OLD.app OR NEW.version <> OLD.version OR NEW.digest <> OLD.digest THEN"
	"    RAISE EXCEPTION 'releases are immutable: % @ % is bound to %', OLD.app, OLD.version,"
	"      OLD.digest;"
	"  END IF;"
	"  RETURN NEW; END $$;"
	"CREATE TRIGGER releases_immutable BEFORE UPDATE OR DELETE ON releases"
	" FOR EACH ROW EXECUTE FUNCTION releases_immutable();"
	"CREATE TABLE pins ("
	" app text NOT NULL,"
	" environment text NOT NULL,"
	" current_digest text NOT NULL DEFAULT '',"
	" last_good_digest text NOT NULL DEFAULT '',"
	" updated_by text NOT NULL,"
	" updated_at timestamptz NOT NULL DEFAULT now(),"
	" PRIMARY KEY (app, environment));"
	"CREATE INDEX pins_current ON pins (current_digest);"
	"CREATE INDEX pins_last_good ON pins (last_good_digest)";

/* Signed provenance statements. A release's signature now covers the
 * statement, not the digest alone: rows pushed before have no statement
 * and count as unsigned from here on (ART_RELEASE_COLS reads
 * signature_verified as "verified and has a statement"); their digest
 * signature stays recorded. signer is the identity the verifying key is
 * bound to (--trusted-keys). */
static const char mig3[] =
	"ALTER TABLE releases ADD COLUMN statement bytea"
	" CHECK (statement IS NULL OR length(statement) <= 2048),"
	" ADD COLUMN signer text NOT NULL DEFAULT ''";

const struct db_migration art_migrations[] = {
	{ 1, "blobs, releases, pins", mig1 },
	{ 2, "outbox", OUTBOX_MIGRATION_SQL },
	{ 3, "signed provenance statements", mig3 },
	{ 4, "outbox trace (outbox.h)", OUTBOX_TRACE_SQL },
};
const size_t art_nmigrations = sizeof art_migrations / sizeof art_migrations[0];

/* ---- helpers ---- */

static char *dup_text(struct rpc_ctx *ctx, const PGresult *r, int row, int col)
{
	return rpc_strdup(ctx, db_text(r, row, col));
}

int art_release_from_row(struct rpc_ctx *ctx, const PGresult *res, int row,
			 Slipway__V1__Release *r)
{
	Slipway__V1__Provenance *p = rpc_alloc(ctx, sizeof *p);
	if (p == NULL)
		return SW_ENOMEM;
	slipway__v1__provenance__init(p);
	slipway__v1__release__init(r);
	r->app = dup_text(ctx, res, row, 0);
	r->version = dup_text(ctx, res, row, 1);
	r->digest = dup_text(ctx, res, row, 2);
	r->size_bytes = (uint64_t)db_int64(res, row, 3);
	r->media_type = dup_text(ctx, res, row, 4);
	p->repository = dup_text(ctx, res, row, 5);
	p->commit = dup_text(ctx, res, row, 6);
	p->ref = dup_text(ctx, res, row, 7);
	p->build_id = dup_text(ctx, res, row, 8);
	p->builder = dup_text(ctx, res, row, 9);
	p->build_time_unix_ms = db_int64(res, row, 10);
	if (!db_isnull(res, row, 11)) {
		uint8_t *sig = rpc_alloc(ctx, 64);
		int n = sig ? db_bytea(res, row, 11, sig, 64) : -1;
		if (n > 0) {
			p->signature.data = sig;
			p->signature.len = (size_t)n;
		}
	}
	p->signing_key = dup_text(ctx, res, row, 12);
	r->pushed_by = dup_text(ctx, res, row, 13);
	r->created_unix_ms = db_int64(res, row, 14);
	r->signature_verified = db_bool(res, row, 15);
	if (!db_isnull(res, row, 16)) {
		uint8_t *st = rpc_alloc(ctx, PROV_STATEMENT_MAX);
		int n = st ? db_bytea(res, row, 16, st, PROV_STATEMENT_MAX) : -1;
		if (n > 0) {
			p->statement.data = st;
			p->statement.len = (size_t)n;
		}
	}
	p->signer = dup_text(ctx, res, row, 17);
	p->verified = r->signature_verified;
	p->pusher = r->pushed_by;
	r->provenance = p;
	if (!r->app || !r->version || !r->digest || !r->media_type || !p->repository ||
	    !p->commit || !p->ref || !p->build_id || !p->builder || !p->signing_key ||
	    !r->pushed_by || !p->signer)
		return SW_ENOMEM;
	return 0;
}

/* Runs one read-only statement on a pooled connection. A pooled session
 * the server has closed (a restart, a failover) is only noticed when it is
 * used: such a read is retried once on a fresh connection. */
static int query(struct art *a, const char *sql, int n, const char *const *vals, PGresult **res,
		 char *err, size_t errlen)
{
	int rc = 0;
	for (int attempt = 0; attempt < 2; attempt++) {
		struct db_conn *c = NULL;
		rc = db_acquire(a->db, &c, 5000, err, errlen);
		if (rc != 0)
			return rc;
		rc = db_q(c, sql, n, vals, res, err, errlen);
		db_release(a->db, c);
		if (rc != SW_EUNAVAIL)
			break;
	}
	return rc;
}

struct tx_call {
	db_tx_fn fn;
	void *arg;
	int entered;
	int fn_rc;
};

static int tx_trampoline(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct tx_call *t = arg;
	t->entered = 1;
	t->fn_rc = t->fn(c, t->arg, err, errlen);
	return t->fn_rc;
}

int art_tx(struct art *a, db_tx_fn fn, void *arg, char *err, size_t errlen)
{
	int rc = 0;
	for (int attempt = 0; attempt < 2; attempt++) {
		struct tx_call t = { fn, arg, 0, 0 };
		rc = db_tx(a->db, NULL, tx_trampoline, &t, err, errlen);
		/* Retry only when the transaction cannot have committed: it never
		 * started (BEGIN failed) or one of its statements failed. A lost
		 * COMMIT has an unknown outcome and is reported as it is. */
		if (rc != SW_EUNAVAIL || (t.entered && t.fn_rc == 0))
			break;
	}
	return rc;
}

int art_blob_get(struct art *a, const char *digest, struct art_blob *b, char *err,
		 size_t errlen)
{
	PGresult *r = NULL;
	int rc = query(a,
		       "SELECT id, digest, size_bytes, md5, media_type, state,"
		       " (extract(epoch from created_at) * 1000)::bigint"
		       " FROM blobs WHERE digest = $1 AND state = 'live'",
		       1, (const char *[]){ digest }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) == 0) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOTFOUND, "no blob %s", digest);
	}
	memset(b, 0, sizeof *b);
	b->id = db_int64(r, 0, 0);
	snprintf(b->digest, sizeof b->digest, "%s", db_text(r, 0, 1));
	b->size = (uint64_t)db_int64(r, 0, 2);
	snprintf(b->md5, sizeof b->md5, "%s", db_text(r, 0, 3));
	snprintf(b->media_type, sizeof b->media_type, "%s", db_text(r, 0, 4));
	snprintf(b->state, sizeof b->state, "%s", db_text(r, 0, 5));
	b->created_ms = db_int64(r, 0, 6);
	PQclear(r);
	return 0;
}

int art_release_get(struct art *a, struct rpc_ctx *ctx, const char *app, const char *version,
		    Slipway__V1__Release *out, char *err, size_t errlen)
{
	PGresult *r = NULL;
	int rc = query(a,
		       "SELECT " ART_RELEASE_COLS ", r.collected_at IS NOT NULL"
		       " FROM releases r WHERE r.app = $1 AND r.version = $2",
		       2, (const char *[]){ app, version }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) == 0)
		rc = sw_errf(err, errlen, SW_ENOTFOUND, "no release %s@%s", app, version);
	else if (db_bool(r, 0, ART_RELEASE_NCOLS))
		rc = sw_errf(err, errlen, SW_ENOTFOUND,
			     "release %s@%s was garbage-collected (push the same bytes to restore it)",
			     app, version);
	else if (art_release_from_row(ctx, r, 0, out) != 0)
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	PQclear(r);
	return rc;
}

int art_release_list(struct art *a, struct rpc_ctx *ctx, const char *app, int64_t before,
		     size_t limit, Slipway__V1__ListVersionsResponse *out, int64_t *next_id,
		     char *err, size_t errlen)
{
	PGresult *r = NULL;
	char b[24], l[24];
	*next_id = 0;
	int rc = query(a,
		       "SELECT " ART_RELEASE_COLS ", r.id FROM releases r"
		       " WHERE r.app = $1 AND r.collected_at IS NULL AND ($2::bigint = 0 OR r.id < $2)"
		       " ORDER BY r.id DESC LIMIT $3",
		       3, (const char *[]){ app, db_i64(b, before), db_i64(l, (int64_t)limit + 1) },
		       &r, err, errlen);
	if (rc != 0)
		return rc;
	size_t rows = (size_t)PQntuples(r);
	size_t n = rows > limit ? limit : rows;
	out->releases = rpc_alloc(ctx, (n ? n : 1) * sizeof *out->releases);
	if (out->releases == NULL)
		goto oom;
	for (size_t i = 0; i < n; i++) {
		Slipway__V1__Release *rel = rpc_alloc(ctx, sizeof *rel);
		if (rel == NULL || art_release_from_row(ctx, r, (int)i, rel) != 0)
			goto oom;
		out->releases[i] = rel;
	}
	out->n_releases = n;
	if (rows > limit)
		*next_id = db_int64(r, (int)limit - 1, ART_RELEASE_NCOLS);
	PQclear(r);
	return 0;
oom:
	PQclear(r);
	return sw_errf(err, errlen, SW_ENOMEM, "response too large");
}

int art_app_list(struct art *a, struct rpc_ctx *ctx, const char *after, size_t limit,
		 Slipway__V1__ListAppsResponse *out, int *more, char *err, size_t errlen)
{
	PGresult *r = NULL;
	char l[24];
	*more = 0;
	int rc = query(a,
		       "SELECT DISTINCT app FROM releases WHERE collected_at IS NULL AND app > $1"
		       " ORDER BY app LIMIT $2",
		       2, (const char *[]){ after, db_i64(l, (int64_t)limit + 1) }, &r, err, errlen);
	if (rc != 0)
		return rc;
	size_t rows = (size_t)PQntuples(r);
	size_t n = rows > limit ? limit : rows;
	out->apps = rpc_alloc(ctx, (n ? n : 1) * sizeof *out->apps);
	for (size_t i = 0; out->apps != NULL && i < n; i++)
		if ((out->apps[i] = dup_text(ctx, r, (int)i, 0)) == NULL)
			out->apps = NULL;
	PQclear(r);
	if (out->apps == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "response too large");
	out->n_apps = n;
	*more = rows > limit;
	return 0;
}

int art_release_by_digest(struct art *a, struct rpc_ctx *ctx, const char *digest,
			  Slipway__V1__GetProvenanceResponse *out, char *err, size_t errlen)
{
	PGresult *r = NULL;
	int rc = query(a,
		       "SELECT " ART_RELEASE_COLS " FROM releases r"
		       " WHERE r.digest = $1 AND r.collected_at IS NULL ORDER BY r.id LIMIT 1000",
		       1, (const char *[]){ digest }, &r, err, errlen);
	if (rc != 0)
		return rc;
	size_t n = (size_t)PQntuples(r);
	out->releases = rpc_alloc(ctx, (n ? n : 1) * sizeof *out->releases);
	if (out->releases == NULL)
		goto oom;
	for (size_t i = 0; i < n; i++) {
		Slipway__V1__Release *rel = rpc_alloc(ctx, sizeof *rel);
		if (rel == NULL || art_release_from_row(ctx, r, (int)i, rel) != 0)
			goto oom;
		out->releases[i] = rel;
	}
	out->n_releases = n;
	PQclear(r);
	return 0;
oom:
	PQclear(r);
	return sw_errf(err, errlen, SW_ENOMEM, "response too large");
}

/* ---- pins ---- */

struct pins_tx {
	const char *actor;
	const Slipway__V1__SetPinsRequest *req;
};

/* Checks that digest is a live blob used by a live release of app, and
 * share-locks its blob row so a concurrent GC cannot take it meanwhile. */
static int pin_ok(struct db_conn *c, const char *app, const char *digest, const char *what,
		  char *err, size_t errlen)
{
	PGresult *r = NULL;
	int rc = db_q(c,
		      "SELECT b.state, EXISTS (SELECT 1 FROM releases r WHERE r.app = $1"
		      " AND r.digest = $2 AND r.collected_at IS NULL)"
		      " FROM blobs b WHERE b.digest = $2 FOR SHARE OF b",
		      2, (const char *[]){ app, digest }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) == 0 || strcmp(db_text(r, 0, 0), "live") != 0 || !db_bool(r, 0, 1))
		rc = sw_errf(err, errlen, SW_EPRECOND, "%s %s is not a stored release of %s", what,
			     digest, app);
	PQclear(r);
	return rc;
}

static int pins_fn(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct pins_tx *t = arg;
	const Slipway__V1__SetPinsRequest *q = t->req;
	int rc;
	if (q->current_digest[0] &&
	    (rc = pin_ok(c, q->app, q->current_digest, "current_digest", err, errlen)) != 0)
		return rc;
	if (q->last_good_digest[0] &&
	    (rc = pin_ok(c, q->app, q->last_good_digest, "last_good_digest", err, errlen)) != 0)
		return rc;
	if (q->current_digest[0] == '\0' && q->last_good_digest[0] == '\0')
		rc = db_q(c, "DELETE FROM pins WHERE app = $1 AND environment = $2", 2,
			  (const char *[]){ q->app, q->environment }, NULL, err, errlen);
	else
		rc = db_q(c,
			  "INSERT INTO pins (app, environment, current_digest, last_good_digest,"
			  " updated_by) VALUES ($1, $2, $3, $4, $5)"
			  " ON CONFLICT (app, environment) DO UPDATE SET"
			  " current_digest = EXCLUDED.current_digest,"
			  " last_good_digest = EXCLUDED.last_good_digest,"
			  " updated_by = EXCLUDED.updated_by, updated_at = now()",
			  5,
			  (const char *[]){ q->app, q->environment, q->current_digest,
					    q->last_good_digest, t->actor },
			  NULL, err, errlen);
	if (rc != 0)
		return rc;
	char res[160];
	snprintf(res, sizeof res, "pins/%s/%s", q->app, q->environment);
	struct outbox_event e = { .actor = t->actor, .action = "artifact.pins.set",
				  .resource = res, .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "app", q->app);
	outbox_detail(&e, "environment", q->environment);
	outbox_detail(&e, "current_digest", q->current_digest);
	outbox_detail(&e, "last_good_digest", q->last_good_digest);
	return outbox_add(c, ART_SERVICE, &e, err, errlen);
}

int art_pins_set(struct art *a, const char *actor, const Slipway__V1__SetPinsRequest *req,
		 char *err, size_t errlen)
{
	struct pins_tx t = { actor, req };
	int rc = art_tx(a, pins_fn, &t, err, errlen);
	if (rc == 0)
		art_kick(a);
	return rc;
}

/* ---- audit ---- */

static int audit_fn(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	return outbox_add(c, ART_SERVICE, arg, err, errlen);
}

int art_audit_alone(struct art *a, const struct outbox_event *e, char *err, size_t errlen)
{
	int rc = art_tx(a, audit_fn, (void *)e, err, errlen);
	if (rc == 0)
		art_kick(a);
	else
		log_error("cannot record an audit event", "action=%s error=%s", e->action, err);
	return rc;
}

void art_kick(struct art *a)
{
	if (a->relay != NULL)
		outbox_relay_kick(a->relay);
}
