/*
 * gc.c - garbage collection of blobs, from PostgreSQL (never from a bucket
 * listing).
 *
 * A blob is a candidate when nothing protects it:
 *   - no environment pins it (current or last-known-good, see SetPins), and
 *   - no live release uses it ("unreferenced"), or, with a retention, every
 *     live release that uses it is older than the retention ("expired"), and
 *   - no push touched it within --gc-grace.
 * Blobs left half-deleted by an interrupted GC ("unfinished") are finished.
 *
 * Two phases per batch, so that no push or pin can slip in between the
 * decision and the deletion:
 *   1. One transaction locks the candidate rows (FOR UPDATE SKIP LOCKED,
 *      so rows a push or SetPins holds are skipped), re-checks the rules in
 *      a fresh statement, marks the survivors `deleting`, marks their
 *      releases collected, and writes the audit events. A push claims its
 *      blob row (touching last_pushed_at) before it consults S3 and commits
 *      only if the row is still its own and not `deleting`, so a push of
 *      the same digest racing the GC either keeps the blob (its touch is
 *      within the grace period) or fails cleanly with UNAVAILABLE and is
 *      retried after the deletion.
 *   2. The S3 object is deleted, then the row, with an audit event, in a
 *      second transaction. A crash in between leaves a `deleting` row that
 *      the next run finishes.
 */
#include "art.h"
#include "err.h"
#include "log.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GC_MAX_LISTED 1000  /* candidates returned in the response */
#define GC_MAX_BATCHES 1000 /* batches per run */

/* The rules, over blobs b; $1 grace ms, $2 retention ms (<= 0: none). */
#define GC_RULES                                                                             \
	"(b.state = 'deleting' OR (b.last_pushed_at < now() - $1::bigint * interval '1 millisecond'" \
	" AND NOT EXISTS (SELECT 1 FROM pins p WHERE p.current_digest = b.digest"                \
	"   OR p.last_good_digest = b.digest)"                                                   \
	" AND NOT EXISTS (SELECT 1 FROM releases r WHERE r.digest = b.digest"                    \
	"   AND r.collected_at IS NULL AND ($2::bigint <= 0"                                     \
	"   OR r.created_at >= now() - $2::bigint * interval '1 millisecond'))))"

#define GC_COLS                                                                      \
	"b.id, b.digest, b.size_bytes, b.state, EXISTS (SELECT 1 FROM releases r"    \
	" WHERE r.digest = b.digest AND r.collected_at IS NULL)"

struct cand {
	int64_t id;
	char digest[DIGEST_STR_LEN];
	uint64_t size;
	const char *reason;
	char rels[1024];  /* "app@version,..." (truncated past 1 KiB) */
	int was_deleting;
};

struct gc {
	struct art *a;
	struct rpc_ctx *ctx;  /* rpc_alloc and rpc_cancelled only */
	const char *actor;    /* the caller's SPIFFE ID, for audit events */
	int64_t retention_ms;
	char grace[24], retention[24];
	int64_t after;       /* id paging */
	struct cand *batch;  /* gc_batch entries, malloc */
	size_t nbatch;
	Slipway__V1__GarbageCollectResponse *out;
	size_t listed_cap;
};

static const char *reason_of(const PGresult *r, int row)
{
	if (strcmp(db_text(r, row, 3), "deleting") == 0)
		return "unfinished";
	return db_bool(r, row, 4) ? "expired" : "unreferenced";
}

/* Reads (or, when collect, marks collected) the live releases of a
 * candidate into cd->rels, and audits each collected one. */
static int load_releases(struct gc *g, struct db_conn *c, struct cand *cd, int collect,
			 char *err, size_t errlen)
{
	PGresult *r = NULL;
	int rc = db_q(c,
		      collect ? "UPDATE releases SET collected_at = now() WHERE digest = $1"
				" AND collected_at IS NULL RETURNING app, version"
			      : "SELECT app, version FROM releases WHERE digest = $1"
				" AND collected_at IS NULL ORDER BY id",
		      1, (const char *[]){ cd->digest }, &r, err, errlen);
	if (rc != 0)
		return rc;
	size_t off = 0;
	cd->rels[0] = '\0';
	for (int i = 0; i < PQntuples(r); i++) {
		const char *app = db_text(r, i, 0), *ver = db_text(r, i, 1);
		int n = snprintf(cd->rels + off, sizeof cd->rels - off, "%s%s@%s", i ? "," : "",
				 app, ver);
		if (n > 0 && off + (size_t)n < sizeof cd->rels)
			off += (size_t)n;
		else
			cd->rels[off] = '\0'; /* keep whole names only */
		if (!collect)
			continue;
		char res[256];
		snprintf(res, sizeof res, "release/%s@%s", app, ver);
		struct outbox_event e = { .actor = g->actor, .action = "release.collect",
					  .resource = res,
					  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
		outbox_detail(&e, "app", app);
		outbox_detail(&e, "version", ver);
		outbox_detail(&e, "digest", cd->digest);
		outbox_detail(&e, "reason", cd->reason);
		if ((rc = outbox_add(c, ART_SERVICE, &e, err, errlen)) != 0)
			break;
	}
	PQclear(r);
	return rc;
}

static void add_listed(struct gc *g, const struct cand *cd)
{
	Slipway__V1__GarbageCollectResponse *o = g->out;
	o->bytes_freed += cd->size;
	if (o->n_candidates >= g->listed_cap)
		return;
	Slipway__V1__GcCandidate *m = rpc_alloc(g->ctx, sizeof *m);
	if (m == NULL)
		return;
	slipway__v1__gc_candidate__init(m);
	m->digest = rpc_strdup(g->ctx, cd->digest);
	m->size_bytes = cd->size;
	m->reason = (char *)cd->reason;
	size_t n = cd->rels[0] ? 1 : 0;
	for (const char *p = cd->rels; *p; p++)
		n += *p == ',';
	char *copy = rpc_strdup(g->ctx, cd->rels);
	m->releases = rpc_alloc(g->ctx, (n ? n : 1) * sizeof *m->releases);
	if (m->digest == NULL || copy == NULL || m->releases == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		m->releases[i] = copy;
		char *comma = strchr(copy, ',');
		if (comma != NULL) {
			*comma = '\0';
			copy = comma + 1;
		}
	}
	m->n_releases = n;
	o->candidates[o->n_candidates++] = m;
}

/* Reads one batch of candidates (with row locks and a re-check when lock). */
static int select_batch(struct gc *g, struct db_conn *c, int lock, char *err, size_t errlen)
{
	PGresult *r = NULL;
	char after[24], lim[24];
	int rc = db_q(c,
		      lock ? "SELECT " GC_COLS " FROM blobs b WHERE " GC_RULES
			     " AND b.id > $3 ORDER BY b.id LIMIT $4 FOR UPDATE OF b SKIP LOCKED"
			   : "SELECT " GC_COLS " FROM blobs b WHERE " GC_RULES
			     " AND b.id > $3 ORDER BY b.id LIMIT $4",
		      4,
		      (const char *[]){ g->grace, g->retention, db_i64(after, g->after),
					db_i64(lim, g->a->c.gc_batch) },
		      &r, err, errlen);
	if (rc != 0)
		return rc;
	int rows = PQntuples(r);
	if (rows > 0)
		g->after = db_int64(r, rows - 1, 0);
	if (lock && rows > 0) {
		/* The locks are held now: re-evaluate the rules in a new statement,
		 * whose snapshot sees every push and pin that committed before. */
		size_t cap = (size_t)rows * 22 + 3, off = 0;
		char *ids = malloc(cap);
		if (ids == NULL) {
			PQclear(r);
			return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		}
		ids[off++] = '{';
		for (int i = 0; i < rows; i++)
			off += (size_t)snprintf(ids + off, cap - off, "%s%s", i ? "," : "",
						db_text(r, i, 0));
		snprintf(ids + off, cap - off, "}");
		PQclear(r);
		r = NULL;
		rc = db_q(c,
			  "SELECT " GC_COLS " FROM blobs b WHERE " GC_RULES
			  " AND b.id = ANY($3::bigint[]) ORDER BY b.id",
			  3, (const char *[]){ g->grace, g->retention, ids }, &r, err, errlen);
		free(ids);
		if (rc != 0)
			return rc;
		rows = PQntuples(r);
	}
	g->nbatch = (size_t)rows; /* rows <= gc_batch, the size of g->batch */
	for (int i = 0; i < rows; i++) {
		struct cand *cd = &g->batch[i];
		cd->id = db_int64(r, i, 0);
		snprintf(cd->digest, sizeof cd->digest, "%s", db_text(r, i, 1));
		cd->size = (uint64_t)db_int64(r, i, 2);
		cd->reason = reason_of(r, i);
		cd->was_deleting = strcmp(db_text(r, i, 3), "deleting") == 0;
	}
	PQclear(r);
	return 0;
}

/* Phase 1: decide and mark, in one transaction. */
static int mark_fn(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct gc *g = arg;
	int64_t saved_after = g->after;
	int rc = select_batch(g, c, 1, err, errlen);
	if (rc != 0) {
		g->after = saved_after; /* a retried transaction reads the same batch */
		return rc;
	}
	for (size_t i = 0; i < g->nbatch; i++) {
		struct cand *cd = &g->batch[i];
		char id[24];
		cd->rels[0] = '\0';
		/* An unfinished deletion's releases were collected with its mark;
		 * collecting again is a no-op then, and keeps a hand-edited row
		 * from leaving a release pointing at deleted bytes. */
		if ((!cd->was_deleting &&
		     (rc = db_q(c, "UPDATE blobs SET state = 'deleting' WHERE id = $1", 1,
				(const char *[]){ db_i64(id, cd->id) }, NULL, err, errlen)) != 0) ||
		    (rc = load_releases(g, c, cd, 1, err, errlen)) != 0) {
			g->after = saved_after;
			return rc;
		}
	}
	return 0;
}

struct del_tx {
	struct gc *g;
	struct cand *cd;
	int deleted;
};

/* Phase 2 (after the S3 delete): drop the row and audit the deletion. */
static int delete_fn(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct del_tx *t = arg;
	struct cand *cd = t->cd;
	PGresult *r = NULL;
	char id[24], size[24], res[96];
	int rc = db_q(c, "DELETE FROM blobs WHERE id = $1 AND state = 'deleting' RETURNING id", 1,
		      (const char *[]){ db_i64(id, cd->id) }, &r, err, errlen);
	if (rc != 0)
		return rc;
	t->deleted = PQntuples(r) == 1;
	PQclear(r);
	if (!t->deleted)
		return 0;
	snprintf(res, sizeof res, "blob/%s", cd->digest);
	struct outbox_event e = { .actor = t->g->actor, .action = "artifact.blob.delete",
				  .resource = res, .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "digest", cd->digest);
	outbox_detail(&e, "size_bytes", db_i64(size, (int64_t)cd->size));
	outbox_detail(&e, "reason", cd->reason);
	outbox_detail(&e, "releases", cd->rels);
	return outbox_add(c, ART_SERVICE, &e, err, errlen);
}

static int dry_run(struct gc *g, char *err, size_t errlen)
{
	struct db_conn *c = NULL;
	int rc = db_acquire(g->a->db, &c, 5000, err, errlen);
	if (rc != 0)
		return rc;
	for (int b = 0; b < GC_MAX_BATCHES; b++) {
		if ((rc = select_batch(g, c, 0, err, errlen)) != 0 || g->nbatch == 0)
			break;
		for (size_t i = 0; i < g->nbatch; i++) {
			if ((rc = load_releases(g, c, &g->batch[i], 0, err, errlen)) != 0)
				break;
			add_listed(g, &g->batch[i]);
		}
		if (rc != 0)
			break;
	}
	db_release(g->a->db, c);
	return rc;
}

static int collect(struct gc *g, char *err, size_t errlen)
{
	int rc = 0;
	for (int b = 0; b < GC_MAX_BATCHES && !rpc_cancelled(g->ctx); b++) {
		if ((rc = art_tx(g->a, mark_fn, g, err, errlen)) != 0)
			return rc;
		art_kick(g->a);
		if (g->nbatch == 0)
			return 0;
		for (size_t i = 0; i < g->nbatch; i++) {
			struct cand *cd = &g->batch[i];
			char key[ART_KEY_LEN];
			art_blob_key(cd->digest, key);
			if ((rc = s3_delete(g->a->s3, key, err, errlen)) != 0) {
				/* The row stays `deleting`: the next run finishes it. */
				log_warn("gc: S3 delete failed; will finish on the next run",
					 "digest=%s error=%s", cd->digest, err);
				return SW_EUNAVAIL;
			}
			struct del_tx t = { g, cd, 0 };
			if ((rc = art_tx(g->a, delete_fn, &t, err, errlen)) != 0)
				return rc;
			if (t.deleted) {
				log_info("gc: deleted blob", "digest=%s size=%llu reason=%s",
					 cd->digest, (unsigned long long)cd->size, cd->reason);
				add_listed(g, cd);
			}
		}
		art_kick(g->a);
	}
	return rc;
}

int art_gc(struct art *a, struct rpc_ctx *ctx, const char *actor, int dry,
	   int64_t retention_ms, Slipway__V1__GarbageCollectResponse *out, char *err,
	   size_t errlen)
{
	struct gc g;
	char why[512];
	memset(&g, 0, sizeof g);
	g.a = a;
	g.ctx = ctx;
	g.actor = actor;
	g.out = out;
	g.retention_ms = retention_ms;
	db_i64(g.grace, a->c.gc_grace_ms);
	db_i64(g.retention, retention_ms);
	g.listed_cap = GC_MAX_LISTED;
	out->candidates = rpc_alloc(ctx, GC_MAX_LISTED * sizeof *out->candidates);
	g.batch = calloc((size_t)a->c.gc_batch, sizeof *g.batch);
	if (out->candidates == NULL || g.batch == NULL) {
		free(g.batch);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	out->dry_run = dry;
	int rc = dry ? dry_run(&g, why, sizeof why) : collect(&g, why, sizeof why);
	free(g.batch);
	if (rc != 0)
		return sw_errf(err, errlen, rc, "garbage collection stopped: %s", why);
	log_info("gc done", "dry_run=%d blobs=%zu bytes=%llu", dry, out->n_candidates,
		 (unsigned long long)out->bytes_freed);
	return 0;
}
