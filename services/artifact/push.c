/*
 * push.c - a push from its first data chunk to the committed release.
 *
 * Three ways to move the bytes, chosen once the header is known:
 *
 *  STREAM  the header names the digest and the size (the CLI always does):
 *          the bytes go to S3 while they arrive, through a bounded ring
 *          buffer and one PUT to blobs/sha256/<hex> on a helper thread. The
 *          last byte is held back until every byte hashed to the announced
 *          digest, so a wrong or cut-off stream aborts the PUT before its
 *          body is complete and nothing is stored. The MD5 of what was sent
 *          is compared with the ETag S3 returns (Content-MD5 cannot be sent:
 *          it is only known at the end).
 *  DEDUP   the header names the digest and S3 already holds a good copy
 *          (HEAD: size and ETag match the MD5 recorded when it was stored):
 *          the bytes are hashed and dropped.
 *  SPOOL   otherwise: the bytes are hashed into a temporary file (O_TMPFILE
 *          in the spool directory, so it vanishes with its descriptor), then
 *          HEAD decides dedup, else one PUT from the file with Content-MD5.
 *
 * Whatever the way, the blob row is claimed before S3 is consulted (which
 * starts the GC grace period, see gc.c), and the blob, the release and the
 * audit events are committed in one transaction at the end. Any failure,
 * including the client going away, leaves no release, no live blob row and
 * no temporary file.
 */
#include "art.h"
#include "err.h"
#include "log.h"
#include "clock.h"
#include "provenance.h"

#include <sodium.h>

#include <errno.h>
#include <fcntl.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

enum mode { MODE_SPOOL, MODE_STREAM, MODE_DEDUP };

/* The hand-off between the receiving thread and the S3 upload thread. */
struct ring {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint8_t *buf;
	size_t cap, rpos, len;
	uint64_t total;   /* bytes the PUT carries */
	uint64_t taken;   /* bytes handed to the PUT so far */
	int verified;     /* every byte arrived and matched: release the last one */
	int abort;        /* stop the PUT before its body is complete */
	int writer_waits; /* the receiver waits for room */
	int reader_waits; /* the upload waits for data */
	int done;         /* the PUT returned */
	int rc;
	char err[256];
	struct s3_object_info info;
	struct digest md5; /* of what the PUT sent; upload thread only */
};

struct push {
	struct art *a;
	struct rpc_ctx *ctx;         /* rpc_recv and rpc_alloc only */
	const char *actor;           /* the caller's SPIFFE ID */
	char *err;                   /* the caller's message buffer */
	size_t errlen;
	const Slipway__V1__PushHeader *h;
	const char *media_type;
	enum mode mode;
	char want[DIGEST_STR_LEN];   /* announced digest ("" when none) */
	char digest[DIGEST_STR_LEN]; /* computed */
	char key[ART_KEY_LEN];
	char md5hex[33];
	uint64_t hint, received;
	struct digest sha, md5;
	int spool_fd;
	/* streaming upload */
	struct ring ring;
	int ring_ready;
	pthread_t put_thread;
	int put_started;
	/* the claim on the blob row */
	int claimed;
	int64_t claim_id;
	char claim_ts[64];
	int claim_was_pending;
	int uploaded;                /* bytes may have reached S3 */
	char claim_state[12];
	char claim_md5[33];
	/* signature: when sig_verified, st holds the verified statement and
	 * signer the identity its key is bound to */
	int sig_checked;
	int sig_verified;
	char sig_key[65];
	char signer[PROV_OWNER_MAX + 1];
	struct prov_statement st;
	/* result */
	int deduplicated;
	int release_existed;
	int restored;
	Slipway__V1__Release *release;
	/* timings for the log line (ms since the push began) */
	int64_t t0, t_received, t_stored;
};

/* ---- the ring between the receiver and the upload ---- */

static int ring_init(struct ring *g, size_t cap, uint64_t total)
{
	memset(g, 0, sizeof *g);
	g->buf = malloc(cap);
	if (g->buf == NULL)
		return SW_ENOMEM;
	if (digest_init(&g->md5, DIGEST_MD5) != 0) {
		free(g->buf);
		return SW_ENOMEM;
	}
	g->cap = cap;
	g->total = total;
	pthread_mutex_init(&g->mu, NULL);
	pthread_cond_init(&g->cv, NULL);
	return 0;
}

static void ring_destroy(struct ring *g)
{
	free(g->buf);
	digest_cleanup(&g->md5);
	pthread_mutex_destroy(&g->mu);
	pthread_cond_destroy(&g->cv);
}

/* libs3's data source for the PUT (upload thread). Blocks until bytes are
 * available; never hands out the last byte before the stream verified. */
static int ring_fill(uint8_t *out, size_t cap, void *arg)
{
	struct ring *g = arg;
	size_t n;
	pthread_mutex_lock(&g->mu);
	for (;;) {
		if (g->abort) {
			pthread_mutex_unlock(&g->mu);
			return -1;
		}
		size_t allow = g->len;
		if (!g->verified) {
			uint64_t before_last = g->total - 1;
			uint64_t can = before_last > g->taken ? before_last - g->taken : 0;
			if (allow > can)
				allow = (size_t)can;
		}
		/* Hand data over in bursts of at least a quarter of the ring (or
		 * what is left): an S3 server fed a trickle spends far more CPU
		 * per byte than one fed full socket buffers. */
		uint64_t left = g->total - g->taken;
		size_t low = g->cap / 4;
		if (allow > 0 && (allow >= low || (uint64_t)allow + 1 >= left || g->verified)) {
			n = allow < cap ? allow : cap;
			break;
		}
		g->reader_waits = 1;
		pthread_cond_wait(&g->cv, &g->mu);
		g->reader_waits = 0;
	}
	size_t first = g->cap - g->rpos;
	if (first > n)
		first = n;
	memcpy(out, g->buf + g->rpos, first);
	if (n > first)
		memcpy(out + first, g->buf, n - first);
	g->rpos = (g->rpos + n) % g->cap;
	g->len -= n;
	g->taken += n;
	/* Wake the receiver only once there is room for a good burst: a wake-up
	 * per libcurl buffer costs more than the copy. */
	if (g->writer_waits && g->cap - g->len >= g->cap / 2)
		pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
	digest_update(&g->md5, out, n);
	return (int)n;
}

/* Appends bytes for the upload (receiving thread). Returns 0, or the
 * upload's error when it ended early. */
static int ring_write(struct ring *g, const uint8_t *p, size_t n, char *err, size_t errlen)
{
	int rc = 0;
	pthread_mutex_lock(&g->mu);
	while (n > 0) {
		if (g->done || g->abort) {
			rc = g->rc != 0 ? g->rc : SW_EUNAVAIL;
			sw_errf(err, errlen, rc, "%s", g->err[0] ? g->err : "the S3 upload ended early");
			break;
		}
		size_t space = g->cap - g->len;
		if (space == 0) {
			g->writer_waits = 1;
			pthread_cond_wait(&g->cv, &g->mu);
			g->writer_waits = 0;
			continue;
		}
		size_t k = space < n ? space : n;
		size_t wpos = (g->rpos + g->len) % g->cap;
		size_t first = g->cap - wpos;
		if (first > k)
			first = k;
		memcpy(g->buf + wpos, p, first);
		if (k > first)
			memcpy(g->buf, p + first, k - first);
		g->len += k;
		p += k;
		n -= k;
		if (g->reader_waits && g->len >= g->cap / 4)
			pthread_cond_broadcast(&g->cv);
	}
	/* A short tail (or a small blob) below the burst size: let the
	 * upload decide whether it may take it. */
	if (g->reader_waits)
		pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
	return rc;
}

static void *put_main(void *arg)
{
	struct push *p = arg;
	struct ring *g = &p->ring;
	struct s3_object_info info;
	char err[256] = "";
	memset(&info, 0, sizeof info);
	int rc = s3_put_stream(p->a->s3, p->key, g->total, ring_fill, g, &info, err, sizeof err);
	pthread_mutex_lock(&g->mu);
	g->done = 1;
	g->rc = rc;
	g->info = info;
	snprintf(g->err, sizeof g->err, "%s", err);
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
	return NULL;
}

/* Stops the upload thread: aborting it unless `release` (every byte
 * verified). Returns the upload's result. */
static int stop_upload(struct push *p, int release, char *err, size_t errlen)
{
	struct ring *g = &p->ring;
	if (!p->put_started)
		return 0;
	pthread_mutex_lock(&g->mu);
	if (release)
		g->verified = 1;
	else
		g->abort = 1;
	pthread_cond_broadcast(&g->cv);
	pthread_mutex_unlock(&g->mu);
	pthread_join(p->put_thread, NULL);
	p->put_started = 0;
	if (g->rc != 0)
		return sw_errf(err, errlen, g->rc == SW_ECANCELLED ? SW_EUNAVAIL : g->rc, "%s",
			       g->err);
	return 0;
}

/* ---- the spool file ---- */

static int spool_open(struct push *p, char *err, size_t errlen)
{
	int fd = open(p->a->spool_dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (fd < 0 && (errno == EOPNOTSUPP || errno == EISDIR || errno == EINVAL)) {
		/* No O_TMPFILE on this file system: create, then unlink at once,
		 * so the file still disappears with its descriptor. */
		char path[4200];
		snprintf(path, sizeof path, "%s/push.XXXXXX", p->a->spool_dir);
		fd = mkostemp(path, O_CLOEXEC);
		if (fd >= 0)
			unlink(path);
	}
	if (fd < 0)
		return sw_errf(err, errlen, SW_EIO, "cannot create a spool file in %s: %s",
			       p->a->spool_dir, strerror(errno));
	p->spool_fd = fd;
	return 0;
}

static int spool_write(struct push *p, const uint8_t *b, size_t n, char *err, size_t errlen)
{
	while (n > 0) {
		ssize_t w = write(p->spool_fd, b, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return sw_errf(err, errlen, errno == ENOSPC ? SW_ELIMIT : SW_EIO,
				       "spool file: %s", strerror(errno));
		b += w;
		n -= (size_t)w;
	}
	return 0;
}

/* ---- audit helpers ---- */

static void release_res(const struct push *p, char *out, size_t len)
{
	snprintf(out, len, "release/%s@%s", p->h->app, p->h->version);
}

static void audit_failure(struct push *p, const char *action, Slipway__V1__Outcome outcome,
			  const char *digest, const char *reason)
{
	char res[256], err[256];
	release_res(p, res, sizeof res);
	struct outbox_event e = { .actor = p->actor, .action = action, .resource = res,
				  .outcome = outcome };
	outbox_detail(&e, "app", p->h->app);
	outbox_detail(&e, "version", p->h->version);
	outbox_detail(&e, "digest", digest);
	if (p->want[0] != '\0' && strcmp(p->want, digest) != 0)
		outbox_detail(&e, "expected_digest", p->want);
	outbox_detail(&e, "reason", reason);
	if (p->h->provenance && p->h->provenance->signing_key[0])
		outbox_detail(&e, "signing_key", p->h->provenance->signing_key);
	art_audit_alone(p->a, &e, err, sizeof err);
}

/* ---- signature ---- */

static int deny(struct push *p, const char *action, const char *digest, const char *why)
{
	log_warn("push refused: signature", "app=%s version=%s digest=%s peer=%s reason=%s",
		 p->h->app, p->h->version, digest, p->actor, why);
	audit_failure(p, action, SLIPWAY__V1__OUTCOME__OUTCOME_DENIED, digest, why);
	return sw_errf(p->err, p->errlen, SW_EPERM, "signature refused for %s@%s: %s", p->h->app,
		       p->h->version, why);
}

/* A free-text header field must be empty or say what the statement says. */
static int conflict(const char *field, const char *claimed, const char *signed_value, char *why,
		    size_t whylen)
{
	if (claimed[0] == '\0' || strcmp(claimed, signed_value) == 0)
		return 0;
	snprintf(why, whylen, "provenance.%s '%.80s' contradicts the signed statement's '%.80s'",
		 field, claimed, signed_value);
	return 1;
}

/*
 * Checks the signed provenance statement when the app requires one or the
 * push carries a signature: it must be canonical, be about this app,
 * version and digest, verify with a key trusted for the app, and the
 * header's free-text fields may not contradict it. A failure is audited
 * and answered PERMISSION_DENIED (INVALID_ARGUMENT for a contradiction).
 * On success p->st is what the release records as its provenance.
 */
static int check_signature(struct push *p, const char *digest)
{
	const Slipway__V1__Provenance *pv = p->h->provenance;
	int has = pv != NULL && pv->signature.len > 0;
	int required = art_keys_required(p->a->keys, p->h->app);
	char why[512];
	p->sig_checked = 1;
	if (!has && !required)
		return 0;
	if (!has)
		return deny(p, "artifact.signature.missing", digest,
			    "the release is unsigned: the app requires a signed provenance statement "
			    "(slipway artifact push --sign KEY)");
	if (pv->statement.len == 0)
		return deny(p, "artifact.signature.invalid", digest,
			    "the signature must cover a provenance statement (" PROV_VERSION_LINE
			    "); a signature over the digest alone is not accepted");
	if (prov_parse(pv->statement.data, pv->statement.len, &p->st, why, sizeof why) != 0)
		return deny(p, "artifact.signature.invalid", digest, why);
	if (strcmp(p->st.app, p->h->app) != 0 || strcmp(p->st.version, p->h->version) != 0 ||
	    strcmp(p->st.digest, digest) != 0) {
		snprintf(why, sizeof why, "the signed statement is about %s@%s %s", p->st.app,
			 p->st.version, p->st.digest);
		return deny(p, "artifact.signature.invalid", digest, why);
	}
	if (art_keys_verify_owner(p->a->keys, p->h->app, pv->statement.data, pv->statement.len,
				  pv->signature.data, pv->signature.len, pv->signing_key, p->sig_key,
				  sizeof p->sig_key, p->signer, sizeof p->signer, why,
				  sizeof why) != 0)
		return deny(p, "artifact.signature.invalid", digest, why);
	char bt[24];
	snprintf(bt, sizeof bt, "%lld", (long long)pv->build_time_unix_ms);
	char sbt[24];
	snprintf(sbt, sizeof sbt, "%lld", (long long)p->st.build_time_ms);
	if (conflict("repository", pv->repository, p->st.repository, why, sizeof why) ||
	    conflict("commit", pv->commit, p->st.commit, why, sizeof why) ||
	    conflict("ref", pv->ref, p->st.ref, why, sizeof why) ||
	    conflict("builder", pv->builder, p->st.builder, why, sizeof why) ||
	    conflict("build_id", pv->build_id, p->st.build_id, why, sizeof why) ||
	    conflict("build_time_unix_ms", pv->build_time_unix_ms ? bt : "", sbt, why,
		     sizeof why)) {
		audit_failure(p, "artifact.signature.invalid", SLIPWAY__V1__OUTCOME__OUTCOME_DENIED,
			      digest, why);
		return sw_errf(p->err, p->errlen, SW_EINVAL, "%s", why);
	}
	p->sig_verified = 1;
	return 0;
}

/* ---- the claim (transaction 1) ---- */

static int claim_fn(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct push *p = arg;
	PGresult *r = NULL;
	char size[24];
	int rc = db_q(c, "SELECT digest FROM releases WHERE app = $1 AND version = $2", 2,
		      (const char *[]){ p->h->app, p->h->version }, &r, err, errlen);
	if (rc != 0)
		return rc;
	if (PQntuples(r) > 0 && strcmp(db_text(r, 0, 0), p->digest) != 0) {
		rc = sw_errf(err, errlen, SW_EEXIST,
			     "release %s@%s already exists with digest %s; releases are immutable",
			     p->h->app, p->h->version, db_text(r, 0, 0));
		PQclear(r);
		return rc;
	}
	PQclear(r);
	r = NULL;
	/* Touching last_pushed_at here, before S3 is consulted, is what keeps a
	 * concurrent GC away from this digest (see gc.c). The row lock also
	 * waits for a GC that holds it. */
	rc = db_q(c,
		  "INSERT INTO blobs (digest, size_bytes, media_type, state) VALUES ($1, $2, $3,"
		  " 'pending') ON CONFLICT (digest) DO UPDATE SET last_pushed_at = now(),"
		  " size_bytes = CASE WHEN blobs.state = 'pending' THEN EXCLUDED.size_bytes"
		  " ELSE blobs.size_bytes END"
		  " RETURNING id, state, md5, size_bytes, last_pushed_at::text",
		  3, (const char *[]){ p->digest, db_i64(size, (int64_t)p->hint), p->media_type },
		  &r, err, errlen);
	if (rc != 0)
		return rc;
	p->claim_id = db_int64(r, 0, 0);
	snprintf(p->claim_state, sizeof p->claim_state, "%s", db_text(r, 0, 1));
	snprintf(p->claim_md5, sizeof p->claim_md5, "%s", db_text(r, 0, 2));
	uint64_t have = (uint64_t)db_int64(r, 0, 3);
	snprintf(p->claim_ts, sizeof p->claim_ts, "%s", db_text(r, 0, 4));
	PQclear(r);
	if (strcmp(p->claim_state, "deleting") == 0)
		return sw_errf(err, errlen, SW_EUNAVAIL,
			       "blob %s is being garbage-collected right now; push again in a moment",
			       p->digest);
	if (strcmp(p->claim_state, "live") == 0 && p->hint > 0 && have != p->hint)
		return sw_errf(err, errlen, SW_EINVAL,
			       "%s is stored with %llu bytes, not %llu: the size or digest is wrong",
			       p->digest, (unsigned long long)have, (unsigned long long)p->hint);
	p->claim_was_pending = strcmp(p->claim_state, "pending") == 0;
	return 0;
}

static int claim(struct push *p)
{
	char err[512];
	int rc = art_tx(p->a, claim_fn, p, err, sizeof err);
	if (rc != 0)
		return sw_errf(p->err, p->errlen, rc, "%s", err);
	p->claimed = 1;
	return 0;
}

/* Gives up an unfinished claim that never reached S3: removes the pending
 * row unless another push touched it after us (then it is theirs). Once
 * bytes may have reached S3 the pending row stays: it is how GC (which
 * works from the database, never from a bucket listing) finds and removes
 * a partial or orphaned object after the grace period. */
static void unclaim(struct push *p)
{
	char err[256], id[24];
	if (!p->claimed || !p->claim_was_pending || p->uploaded)
		return;
	struct db_conn *c = NULL;
	if (db_acquire(p->a->db, &c, 2000, err, sizeof err) != 0)
		return;
	db_q(c,
	     "DELETE FROM blobs WHERE id = $1 AND state = 'pending'"
	     " AND last_pushed_at = $2::timestamptz",
	     2, (const char *[]){ db_i64(id, p->claim_id), p->claim_ts }, NULL, err, sizeof err);
	db_release(p->a->db, c);
}

/* ---- the commit (transaction 2) ---- */

static int commit_fn(struct db_conn *c, void *arg, char *err, size_t errlen)
{
	struct push *p = arg;
	const Slipway__V1__Provenance *pv = p->h->provenance;
	static const Slipway__V1__Provenance none = SLIPWAY__V1__PROVENANCE__INIT;
	PGresult *r = NULL;
	char size[24], id[24], bt[24];
	int rc;

	if (pv == NULL)
		pv = &none;
	p->release_existed = 0;
	p->restored = 0;
	rc = db_q(c,
		  "UPDATE blobs SET state = 'live', size_bytes = $2, md5 = $3, last_pushed_at = now(),"
		  " media_type = CASE WHEN state = 'live' THEN media_type ELSE $4 END"
		  " WHERE digest = $1 AND id = $5 AND state <> 'deleting' RETURNING id",
		  5,
		  (const char *[]){ p->digest, db_i64(size, (int64_t)p->received), p->md5hex,
				    p->media_type, db_i64(id, p->claim_id) },
		  &r, err, errlen);
	if (rc != 0)
		return rc;
	int n = PQntuples(r);
	PQclear(r);
	r = NULL;
	if (n == 0)
		return sw_errf(err, errlen, SW_EUNAVAIL,
			       "blob %s was garbage-collected while it was pushed; push again",
			       p->digest);

	/* A verified statement is the provenance; otherwise the header's
	 * fields are kept as what the pusher claimed (signature_verified false,
	 * no statement: nothing decides on them). */
	char sighex[2 + 2 * 64 + 1]; /* "\\x" + hex + NUL */
	char sthex[2 + 2 * PROV_STATEMENT_MAX + 1];
	const char *sig = NULL, *stmt = NULL;
	const char *repo = pv->repository, *commit = pv->commit, *ref = pv->ref,
		   *build_id = pv->build_id, *builder = pv->builder;
	int64_t btime = pv->build_time_unix_ms;
	if (p->sig_verified) {
		sighex[0] = sthex[0] = '\\';
		sighex[1] = sthex[1] = 'x';
		digest_hex(pv->signature.data, 64, sighex + 2);
		digest_hex(pv->statement.data, pv->statement.len, sthex + 2);
		sig = sighex;
		stmt = sthex;
		repo = p->st.repository;
		commit = p->st.commit;
		ref = p->st.ref;
		build_id = p->st.build_id;
		builder = p->st.builder;
		btime = p->st.build_time_ms;
	}
	const char *vals[17] = {
		p->h->app, p->h->version, p->digest, size, p->media_type, repo, commit, ref,
		build_id, builder, db_i64(bt, btime), sig, p->sig_verified ? p->sig_key : "",
		p->sig_verified ? "true" : "false", p->actor, stmt, p->sig_verified ? p->signer : "",
	};
	rc = db_q(c,
		  "INSERT INTO releases (app, version, digest, size_bytes, media_type, repository,"
		  " commit_id, ref, build_id, builder, build_time_ms, signature, signing_key,"
		  " signature_verified, pushed_by, statement, signer) VALUES ($1, $2, $3, $4, $5, $6,"
		  " $7, $8, $9, $10, $11, $12::bytea, $13, $14, $15, $16::bytea, $17)"
		  " ON CONFLICT (app, version) DO NOTHING RETURNING id",
		  17, vals, &r, err, errlen);
	if (rc != 0)
		return rc;
	n = PQntuples(r);
	PQclear(r);
	r = NULL;
	if (n == 0) {
		rc = db_q(c,
			  "SELECT digest, collected_at IS NOT NULL FROM releases"
			  " WHERE app = $1 AND version = $2 FOR UPDATE",
			  2, (const char *[]){ p->h->app, p->h->version }, &r, err, errlen);
		if (rc != 0)
			return rc;
		if (PQntuples(r) == 0 || strcmp(db_text(r, 0, 0), p->digest) != 0) {
			rc = sw_errf(err, errlen, SW_EEXIST,
				     "release %s@%s already exists with digest %s; releases are immutable",
				     p->h->app, p->h->version, db_text(r, 0, 0));
			PQclear(r);
			return rc;
		}
		p->release_existed = 1;
		p->restored = db_bool(r, 0, 1);
		PQclear(r);
		r = NULL;
		if (p->restored &&
		    (rc = db_q(c,
			       "UPDATE releases SET collected_at = NULL WHERE app = $1 AND version = $2",
			       2, (const char *[]){ p->h->app, p->h->version }, NULL, err,
			       errlen)) != 0)
			return rc;
	}
	rc = db_q(c, "SELECT " ART_RELEASE_COLS " FROM releases r WHERE r.app = $1 AND r.version = $2",
		  2, (const char *[]){ p->h->app, p->h->version }, &r, err, errlen);
	if (rc != 0)
		return rc;
	Slipway__V1__Release *rel = rpc_alloc(p->ctx, sizeof *rel);
	if (rel == NULL || PQntuples(r) != 1 || art_release_from_row(p->ctx, r, 0, rel) != 0) {
		PQclear(r);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	PQclear(r);
	p->release = rel;

	/* The audit events, in this same transaction. */
	char res[256], blobres[96];
	release_res(p, res, sizeof res);
	snprintf(blobres, sizeof blobres, "blob/%s", p->digest);
	const char *actor = p->actor;
	struct outbox_event e = { .actor = actor, .action = "artifact.push", .resource = blobres,
				  .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
	outbox_detail(&e, "app", p->h->app);
	outbox_detail(&e, "version", p->h->version);
	outbox_detail(&e, "digest", p->digest);
	outbox_detail(&e, "size_bytes", size);
	outbox_detail(&e, "deduplicated", p->deduplicated ? "true" : "false");
	outbox_detail(&e, "release_existed", p->release_existed ? "true" : "false");
	if ((rc = outbox_add(c, ART_SERVICE, &e, err, errlen)) != 0)
		return rc;
	if (!p->release_existed || p->restored) {
		struct outbox_event ev = { .actor = actor,
					   .action = p->restored ? "release.restore" : "release.create",
					   .resource = res,
					   .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS };
		outbox_detail(&ev, "app", p->h->app);
		outbox_detail(&ev, "version", p->h->version);
		outbox_detail(&ev, "digest", p->digest);
		outbox_detail(&ev, "size_bytes", size);
		outbox_detail(&ev, "media_type", p->media_type);
		outbox_detail(&ev, "repository", repo);
		outbox_detail(&ev, "commit", commit);
		outbox_detail(&ev, "ref", ref);
		outbox_detail(&ev, "build_id", build_id);
		outbox_detail(&ev, "builder", builder);
		outbox_detail(&ev, "signature_verified", p->sig_verified ? "true" : "false");
		if (p->sig_verified) {
			outbox_detail(&ev, "signing_key", p->sig_key);
			outbox_detail(&ev, "signer", p->signer);
		}
		if ((rc = outbox_add(c, ART_SERVICE, &ev, err, errlen)) != 0)
			return rc;
	}
	return 0;
}

/* ---- choosing the way, receiving, storing ---- */

/* With a known digest: is a good copy already in S3? */
static int good_copy(struct push *p, uint64_t size, const char *md5, int *yes)
{
	struct s3_object_info info;
	char err[512];
	*yes = 0;
	int rc = s3_stat(p->a->s3, p->key, &info, err, sizeof err);
	if (rc == SW_ENOTFOUND)
		return 0;
	if (rc != 0)
		return sw_errf(p->err, p->errlen, SW_EUNAVAIL, "object storage: %s", err);
	*yes = md5[0] != '\0' && info.size == size && strcmp(info.etag, md5) == 0;
	if (!*yes && md5[0] != '\0')
		log_warn("stored object does not match its blob row: uploading again",
			 "digest=%s size=%llu want_size=%llu", p->digest,
			 (unsigned long long)info.size, (unsigned long long)size);
	return 0;
}

static int start_stream(struct push *p)
{
	char err[256];
	size_t cap = (size_t)p->a->c.stream_buffer;
	if (ring_init(&p->ring, cap, p->hint) != 0)
		return sw_errf(p->err, p->errlen, SW_ENOMEM, "out of memory");
	p->ring_ready = 1;
	p->uploaded = 1;
	if (pthread_create(&p->put_thread, NULL, put_main, p) != 0) {
		sw_errf(err, sizeof err, SW_EINTERNAL, "cannot start the upload thread");
		return sw_errf(p->err, p->errlen, SW_EINTERNAL, "%s", err);
	}
	p->put_started = 1;
	return 0;
}

/* Receives the data chunks until the end of the stream. */
static int receive(struct push *p)
{
	char err[512];
	uint64_t max = (uint64_t)p->a->c.max_blob;
	for (;;) {
		ProtobufCMessage *m = NULL;
		int rc = rpc_recv(p->ctx, &m);
		if (rc == 0)
			return 0;
		if (rc < 0)
			return sw_errf(p->err, p->errlen, rc,
					  rc == SW_ECANCELLED ? "the push was cancelled"
							      : "a message does not decode");
		Slipway__V1__PushRequest *req = (void *)m;
		if (req->msg_case != SLIPWAY__V1__PUSH_REQUEST__MSG_CHUNK) {
			protobuf_c_message_free_unpacked(m, NULL);
			return sw_errf(p->err, p->errlen, SW_EINVAL,
					  "only the first message is a header; later ones are chunks");
		}
		const uint8_t *d = req->chunk.data;
		size_t n = req->chunk.len;
		rc = 0;
		if (n > ART_MAX_CHUNK)
			rc = sw_errf(p->err, p->errlen, SW_EINVAL,
				     "a chunk is at most %u bytes, got %zu",
					ART_MAX_CHUNK, n);
		else if (p->received + n > max)
			rc = sw_errf(p->err, p->errlen, SW_ELIMIT,
				     "the artifact is larger than %llu bytes",
					(unsigned long long)max);
		else if (p->hint > 0 && p->received + n > p->hint)
			rc = sw_errf(p->err, p->errlen, SW_EINVAL,
					"more bytes than the %llu announced in size_hint",
					(unsigned long long)p->hint);
		if (rc == 0 && n > 0) {
			p->received += n;
			art_metrics_bytes(0, n);
			digest_update(&p->sha, d, n);
			if (p->mode == MODE_SPOOL) {
				digest_update(&p->md5, d, n);
				rc = spool_write(p, d, n, err, sizeof err);
			} else if (p->mode == MODE_STREAM) {
				rc = ring_write(&p->ring, d, n, err, sizeof err);
				if (rc != 0)
					rc = sw_errf(p->err, p->errlen, SW_EUNAVAIL,
						     "object storage: %s", err);
			}
			if (rc != 0 && p->mode == MODE_SPOOL)
				rc = sw_errf(p->err, p->errlen, rc, "%s", err);
		}
		protobuf_c_message_free_unpacked(m, NULL);
		if (rc != 0)
			return rc;
	}
}

/* After the stream: store the spooled bytes unless S3 has them. */
static int store_spooled(struct push *p)
{
	char err[512];
	int yes = 0;
	int rc = good_copy(p, p->received, p->md5hex, &yes);
	if (rc != 0)
		return rc;
	if (yes) {
		p->deduplicated = 1;
		return 0;
	}
	if (lseek(p->spool_fd, 0, SEEK_SET) != 0)
		return sw_errf(p->err, p->errlen, SW_EIO, "spool file: %s", strerror(errno));
	uint8_t md5[DIGEST_MD5_LEN];
	if (digest_unhex(p->md5hex, md5, sizeof md5) != 0)
		return sw_errf(p->err, p->errlen, SW_EINTERNAL, "MD5 lost");
	p->uploaded = 1;
	rc = s3_put_fd(p->a->s3, p->key, p->spool_fd, p->received, md5, err, sizeof err);
	if (rc != 0)
		return sw_errf(p->err, p->errlen, rc == SW_EIO ? SW_EIO : SW_EUNAVAIL,
			       "object storage: %s",
				  err);
	return 0;
}

/* After the stream: let the upload finish and check what S3 stored. */
static int finish_stream(struct push *p)
{
	char err[512];
	int rc = stop_upload(p, 1, err, sizeof err);
	if (rc != 0)
		return sw_errf(p->err, p->errlen, SW_EUNAVAIL, "object storage: %s", err);
	uint8_t md5[DIGEST_MD5_LEN];
	if (digest_final(&p->ring.md5, md5) != DIGEST_MD5_LEN)
		return sw_errf(p->err, p->errlen, SW_EINTERNAL, "MD5 failed");
	digest_hex(md5, sizeof md5, p->md5hex);
	const char *etag = p->ring.info.etag;
	/* A single PUT's ETag is the MD5 of what the server stored. */
	if (strlen(etag) == 32 && strcmp(etag, p->md5hex) != 0) {
		/* Not deleted here: a concurrent push of the same digest may own
		 * the object by now. The row stays pending, so the next push of
		 * these bytes uploads them again, and GC removes them otherwise. */
		log_error("S3 stored other bytes than were sent",
			  "digest=%s etag=%s md5=%s", p->digest, etag, p->md5hex);
		return sw_errf(p->err, p->errlen, SW_EUNAVAIL,
				  "object storage stored damaged bytes (ETag mismatch); push again");
	}
	return 0;
}

static int run(struct push *p)
{
	const Slipway__V1__PushHeader *h = p->h;
	int rc;

	if (h->size_hint > (uint64_t)p->a->c.max_blob)
		return sw_errf(p->err, p->errlen, SW_ELIMIT,
				  "size_hint %llu is larger than the maximum artifact size %llu",
				  (unsigned long long)h->size_hint,
				  (unsigned long long)p->a->c.max_blob);
	if (digest_init(&p->sha, DIGEST_SHA256) != 0 || digest_init(&p->md5, DIGEST_MD5) != 0)
		return sw_errf(p->err, p->errlen, SW_ENOMEM, "out of memory");

	p->mode = MODE_SPOOL;
	if (p->want[0] != '\0') {
		/* The digest is announced: refuse early what will be refused
		 * anyway, and claim the blob before looking at S3. */
		if ((rc = check_signature(p, p->want)) != 0)
			return rc;
		snprintf(p->digest, sizeof p->digest, "%s", p->want);
		art_blob_key(p->want, p->key);
		if ((rc = claim(p)) != 0)
			return rc;
		if (p->hint > 0) {
			int yes = 0;
			if (strcmp(p->claim_state, "live") == 0 &&
			    (rc = good_copy(p, p->hint, p->claim_md5, &yes)) != 0)
				return rc;
			if (yes) {
				p->mode = MODE_DEDUP;
				snprintf(p->md5hex, sizeof p->md5hex, "%s", p->claim_md5);
			} else {
				p->mode = MODE_STREAM;
			}
		}
	}
	if (p->mode == MODE_STREAM)
		rc = start_stream(p);
	else if (p->mode == MODE_SPOOL) {
		char err[512];
		rc = spool_open(p, err, sizeof err);
		if (rc != 0)
			rc = sw_errf(p->err, p->errlen, rc, "%s", err);
	}
	if (rc != 0)
		return rc;

	if ((rc = receive(p)) != 0)
		return rc;
	p->t_received = clock_mono_ms();

	uint8_t sha[DIGEST_SHA256_LEN];
	char actual[DIGEST_STR_LEN];
	if (digest_final(&p->sha, sha) != DIGEST_SHA256_LEN)
		return sw_errf(p->err, p->errlen, SW_EINTERNAL, "SHA-256 failed");
	digest_format(sha, actual);
	if (p->hint > 0 && p->received != p->hint)
		return sw_errf(p->err, p->errlen, SW_EINVAL,
			       "the stream ended after %llu of %llu bytes",
				  (unsigned long long)p->received, (unsigned long long)p->hint);
	if (p->want[0] != '\0' && strcmp(actual, p->want) != 0) {
		audit_failure(p, "artifact.push", SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE, actual,
			      "the bytes do not match expected_digest");
		return sw_errf(p->err, p->errlen, SW_EINVAL,
				  "digest mismatch: the bytes hash to %s, the header said %s; nothing "
				  "was stored",
				  actual, p->want);
	}
	if (p->mode == MODE_SPOOL) {
		uint8_t md5[DIGEST_MD5_LEN];
		if (digest_final(&p->md5, md5) != DIGEST_MD5_LEN)
			return sw_errf(p->err, p->errlen, SW_EINTERNAL, "MD5 failed");
		digest_hex(md5, sizeof md5, p->md5hex);
		if (p->want[0] == '\0') {
			snprintf(p->digest, sizeof p->digest, "%s", actual);
			art_blob_key(actual, p->key);
			if ((rc = check_signature(p, actual)) != 0)
				return rc;
			p->hint = p->received;
			if ((rc = claim(p)) != 0)
				return rc;
		}
		if ((rc = store_spooled(p)) != 0)
			return rc;
	} else if (p->mode == MODE_STREAM) {
		if ((rc = finish_stream(p)) != 0)
			return rc;
	} else {
		p->deduplicated = 1;
	}

	p->t_stored = clock_mono_ms();
	char err[512];
	rc = art_tx(p->a, commit_fn, p, err, sizeof err);
	if (rc != 0)
		return sw_errf(p->err, p->errlen, rc, "%s", err);
	p->claimed = 0; /* committed: nothing to give back */
	art_kick(p->a);
	log_info("pushed",
		 "app=%s version=%s digest=%s size=%llu mode=%s existed=%d received_ms=%lld "
		 "stored_ms=%lld total_ms=%lld",
		 h->app, h->version, p->digest, (unsigned long long)p->received,
		 p->mode == MODE_STREAM ? "stream" : p->mode == MODE_DEDUP ? "dedup" : "spool",
		 p->release_existed, (long long)(p->t_received - p->t0),
		 (long long)(p->t_stored - p->t0), (long long)(clock_mono_ms() - p->t0));
	return 0;
}

int art_push(struct art *a, struct rpc_ctx *ctx, const char *actor,
	     const Slipway__V1__PushHeader *h, struct art_push_result *out, char *err,
	     size_t errlen)
{
	struct push *p = calloc(1, sizeof *p);
	if (p == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	p->a = a;
	p->ctx = ctx;
	p->actor = actor;
	p->err = err;
	p->errlen = errlen;
	p->h = h;
	p->spool_fd = -1;
	p->media_type = h->media_type[0] ? h->media_type : ART_DEFAULT_MEDIA_TYPE;
	snprintf(p->want, sizeof p->want, "%s", h->expected_digest);
	p->hint = h->size_hint;
	p->t0 = clock_mono_ms();

	int rc = run(p);

	if (p->put_started) {
		char ignored[256];
		stop_upload(p, 0, ignored, sizeof ignored);
	}
	if (rc != 0)
		unclaim(p);
	if (p->ring_ready)
		ring_destroy(&p->ring);
	if (p->spool_fd >= 0)
		close(p->spool_fd);
	digest_cleanup(&p->sha);
	digest_cleanup(&p->md5);
	if (rc == 0) {
		out->release = p->release;
		out->deduplicated = p->deduplicated;
		out->release_existed = p->release_existed;
	}
	free(p);
	return rc;
}
