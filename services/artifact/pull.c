/*
 * pull.c - serving a blob: the stored bytes stream from S3 to the client
 * in chunks of --chunk-size, with one chunk of memory whatever the blob's
 * size.
 *
 * A pull from offset 0 is re-hashed while it is served, and the last chunk
 * is held back until the whole object proved to hash to its digest: a blob
 * whose bytes in S3 were damaged or replaced fails with DATA_LOSS before
 * the client has all of it, so even a client that ignored the status could
 * not take it for the real thing. A resumed pull (offset > 0) checks the
 * length; the client re-hashes its prefix with the rest (the CLI does).
 */
#include "art.h"
#include "err.h"
#include "log.h"
#include "clock.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NBUF 4 /* chunks in flight between the S3 reader and the sender */

/*
 * The S3 GET runs on a helper thread that fills chunk buffers; the
 * handler's thread sends them (rpc_send belongs to the call's worker
 * thread), so reading from S3 and writing to the client overlap. A full
 * buffer is handed over only when more data follows, so the last one waits
 * for the end-of-object checks.
 */
struct pull {
	struct art *a;
	struct rpc_ctx *ctx;
	char key[ART_KEY_LEN];
	uint64_t offset;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	uint8_t *buf[NBUF];
	size_t len[NBUF];
	size_t cap;
	int w, r, count;      /* filling buf[w]; the next to send is buf[r] */
	int done;             /* the reader finished (rc says how) */
	int abort;            /* the sender failed: stop reading */
	int rc;
	char err[512];
	uint64_t expect, got;
	int verify;
	struct digest sha;
	int too_long;
};

/* Reader thread: queues buf[w] for sending and moves to the next one. */
static int hand_over(struct pull *q)
{
	pthread_mutex_lock(&q->mu);
	while (q->count == NBUF - 1 && !q->abort)
		pthread_cond_wait(&q->cv, &q->mu);
	int ok = !q->abort;
	if (ok) {
		q->count++;
		q->w = (q->w + 1) % NBUF;
		q->len[q->w] = 0;
		pthread_cond_broadcast(&q->cv);
	}
	pthread_mutex_unlock(&q->mu);
	return ok;
}

/* Receives object data from libs3 (reader thread). */
static int on_data(const uint8_t *p, size_t n, void *arg)
{
	struct pull *q = arg;
	if (q->got + n > q->expect) {
		q->too_long = 1;
		return 1;
	}
	q->got += n;
	if (q->verify)
		digest_update(&q->sha, p, n);
	while (n > 0) {
		if (q->len[q->w] == q->cap && !hand_over(q))
			return 1;
		size_t room = q->cap - q->len[q->w];
		size_t k = room < n ? room : n;
		memcpy(q->buf[q->w] + q->len[q->w], p, k);
		q->len[q->w] += k;
		p += k;
		n -= k;
	}
	return 0;
}

static void *reader_main(void *arg)
{
	struct pull *q = arg;
	char err[512] = "";
	int rc = s3_get(q->a->s3, q->key, q->offset, 0, on_data, q, err, sizeof err);
	pthread_mutex_lock(&q->mu);
	q->rc = rc;
	snprintf(q->err, sizeof q->err, "%s", err);
	q->done = 1;
	pthread_cond_broadcast(&q->cv);
	pthread_mutex_unlock(&q->mu);
	return NULL;
}

static int send_chunk(struct rpc_ctx *ctx, const uint8_t *p, size_t n)
{
	Slipway__V1__PullResponse m = SLIPWAY__V1__PULL_RESPONSE__INIT;
	m.msg_case = SLIPWAY__V1__PULL_RESPONSE__MSG_CHUNK;
	m.chunk.data = (uint8_t *)p;
	m.chunk.len = n;
	int rc = rpc_send(ctx, &m.base);
	if (rc == 0)
		art_metrics_bytes(1, n);
	return rc;
}

/* Handler thread: sends queued chunks until the reader is done. Returns 0,
 * or SW_ECANCELLED when the client went away. */
static int send_queued(struct pull *q)
{
	int rc = 0;
	pthread_mutex_lock(&q->mu);
	for (;;) {
		while (q->count == 0 && !q->done)
			pthread_cond_wait(&q->cv, &q->mu);
		if (q->count == 0)
			break; /* done, and every handed-over chunk is sent */
		int i = q->r;
		pthread_mutex_unlock(&q->mu);
		rc = send_chunk(q->ctx, q->buf[i], q->len[i]);
		pthread_mutex_lock(&q->mu);
		if (rc != 0) {
			q->abort = 1;
			pthread_cond_broadcast(&q->cv);
			break;
		}
		q->r = (q->r + 1) % NBUF;
		q->count--;
		pthread_cond_broadcast(&q->cv);
	}
	pthread_mutex_unlock(&q->mu);
	return rc;
}

static void audit_corrupt(struct art *a, const char *actor, const char *digest,
			  const char *reason)
{
	char res[96], err[256];
	snprintf(res, sizeof res, "blob/%s", digest);
	struct outbox_event e = { .actor = actor, .action = "artifact.blob.corrupt",
				  .resource = res, .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE };
	outbox_detail(&e, "digest", digest);
	outbox_detail(&e, "reason", reason);
	art_audit_alone(a, &e, err, sizeof err);
}

int art_pull(struct art *a, struct rpc_ctx *ctx, const char *actor, const struct art_blob *b,
	     uint64_t offset, char *err, size_t errlen)
{
	struct pull q;
	char why[256];
	int rc = 0, started = 0;
	pthread_t reader;

	memset(&q, 0, sizeof q);
	if (offset > b->size)
		return sw_errf(err, errlen, SW_ERANGE,
			       "offset %llu is past the end of %s (%llu bytes)",
				  (unsigned long long)offset, b->digest, (unsigned long long)b->size);
	Slipway__V1__BlobInfo info = SLIPWAY__V1__BLOB_INFO__INIT;
	info.digest = (char *)b->digest;
	info.size_bytes = b->size;
	info.media_type = (char *)b->media_type;
	info.created_unix_ms = b->created_ms;
	Slipway__V1__PullResponse first = SLIPWAY__V1__PULL_RESPONSE__INIT;
	first.msg_case = SLIPWAY__V1__PULL_RESPONSE__MSG_INFO;
	first.info = &info;
	if ((rc = rpc_send(ctx, &first.base)) != 0)
		return sw_errf(err, errlen, rc, "the client went away");
	if (offset == b->size)
		return 0; /* a resumed pull that already has every byte */

	int64_t t0 = clock_mono_ms();
	q.a = a;
	q.ctx = ctx;
	q.offset = offset;
	q.cap = (size_t)a->c.chunk_size;
	q.expect = b->size - offset;
	q.verify = offset == 0;
	art_blob_key(b->digest, q.key);
	pthread_mutex_init(&q.mu, NULL);
	pthread_cond_init(&q.cv, NULL);
	for (int i = 0; i < NBUF; i++)
		if ((q.buf[i] = malloc(q.cap)) == NULL) {
			rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
			goto out;
		}
	if (q.verify && digest_init(&q.sha, DIGEST_SHA256) != 0) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	if (pthread_create(&reader, NULL, reader_main, &q) != 0) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "cannot start the S3 reader");
		goto out;
	}
	started = 1;
	int send_rc = send_queued(&q);
	pthread_join(reader, NULL);
	started = 0;
	if (send_rc != 0) {
		rc = sw_errf(err, errlen, SW_ECANCELLED, "the client went away");
		goto out;
	}
	rc = q.rc;
	if (rc == SW_ENOTFOUND || q.too_long || (rc == 0 && q.got != q.expect)) {
		snprintf(why, sizeof why, "%s",
			 rc == SW_ENOTFOUND ? "the object is missing from storage"
			 : q.too_long	    ? "the stored object is longer than recorded"
					    : "the stored object is shorter than recorded");
		log_error("stored blob is damaged", "digest=%s reason=%s", b->digest, why);
		audit_corrupt(a, actor, b->digest, why);
		rc = sw_errf(err, errlen, SW_EDATALOSS, "blob %s: %s", b->digest, why);
		goto out;
	}
	if (rc != 0) {
		rc = sw_errf(err, errlen, SW_EUNAVAIL, "object storage: %s", q.err);
		goto out;
	}
	if (q.verify) {
		uint8_t sha[DIGEST_SHA256_LEN];
		char actual[DIGEST_STR_LEN];
		if (digest_final(&q.sha, sha) != DIGEST_SHA256_LEN) {
			rc = sw_errf(err, errlen, SW_EINTERNAL, "SHA-256 failed");
			goto out;
		}
		digest_format(sha, actual);
		if (strcmp(actual, b->digest) != 0) {
			snprintf(why, sizeof why, "the stored bytes hash to %s", actual);
			log_error("stored blob does not match its digest", "digest=%s actual=%s",
				  b->digest, actual);
			audit_corrupt(a, actor, b->digest, why);
			rc = sw_errf(err, errlen, SW_EDATALOSS, "blob %s: %s; refusing to serve it",
					b->digest, why);
			goto out;
		}
	}
	/* Every byte checked out: the held-back last chunk may go. */
	if (q.len[q.w] > 0 && send_chunk(ctx, q.buf[q.w], q.len[q.w]) != 0)
		rc = sw_errf(err, errlen, SW_ECANCELLED, "the client went away");
	else
		log_info("pulled", "digest=%s offset=%llu bytes=%llu verified=%d ms=%lld", b->digest,
			 (unsigned long long)offset, (unsigned long long)q.got, q.verify,
			 (long long)(clock_mono_ms() - t0));
out:
	if (started) {
		pthread_mutex_lock(&q.mu);
		q.abort = 1;
		pthread_cond_broadcast(&q.cv);
		pthread_mutex_unlock(&q.mu);
		pthread_join(reader, NULL);
	}
	digest_cleanup(&q.sha);
	for (int i = 0; i < NBUF; i++)
		free(q.buf[i]);
	pthread_mutex_destroy(&q.mu);
	pthread_cond_destroy(&q.cv);
	return rc;
}
