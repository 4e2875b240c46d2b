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

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pull {
	struct art *a;
	struct rpc_ctx *ctx;
	uint8_t *buf;
	size_t cap, len;
	uint64_t expect, got;
	int verify;
	struct digest sha;
	int send_rc;
	int too_long;
};

static int flush(struct pull *q)
{
	Slipway__V1__PullResponse m = SLIPWAY__V1__PULL_RESPONSE__INIT;
	m.msg_case = SLIPWAY__V1__PULL_RESPONSE__MSG_CHUNK;
	m.chunk.data = q->buf;
	m.chunk.len = q->len;
	int rc = rpc_send(q->ctx, &m.base);
	q->len = 0;
	return rc;
}

/* Receives object data from libs3 (the handler's thread). A full chunk is
 * sent only when more data follows, so the last one waits for the check. */
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
		if (q->len == q->cap && (q->send_rc = flush(q)) != 0)
			return 1;
		size_t k = q->cap - q->len < n ? q->cap - q->len : n;
		memcpy(q->buf + q->len, p, k);
		q->len += k;
		p += k;
		n -= k;
	}
	return 0;
}

static void audit_corrupt(struct art *a, struct rpc_ctx *ctx, const char *digest,
			  const char *reason)
{
	char res[96], err[256];
	snprintf(res, sizeof res, "blob/%s", digest);
	struct outbox_event e = { .actor = rpc_peer(ctx), .action = "artifact.blob.corrupt",
				  .resource = res, .outcome = SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE };
	outbox_detail(&e, "digest", digest);
	outbox_detail(&e, "reason", reason);
	art_audit_alone(a, &e, err, sizeof err);
}

int art_pull(struct art *a, struct rpc_ctx *ctx, const struct art_blob *b, uint64_t offset)
{
	struct pull q;
	char key[ART_KEY_LEN], err[512], why[256];
	int rc = 0;

	memset(&q, 0, sizeof q);
	if (offset > b->size)
		return rpc_errorf(ctx, SW_ERANGE, "offset %llu is past the end of %s (%llu bytes)",
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
		return rpc_errorf(ctx, rc, "the client went away");
	if (offset == b->size)
		return 0; /* a resumed pull that already has every byte */

	q.a = a;
	q.ctx = ctx;
	q.cap = (size_t)a->c.chunk_size;
	q.expect = b->size - offset;
	q.verify = offset == 0;
	q.buf = malloc(q.cap);
	if (q.buf == NULL)
		return rpc_errorf(ctx, SW_ENOMEM, "out of memory");
	if (q.verify && digest_init(&q.sha, DIGEST_SHA256) != 0) {
		rc = rpc_errorf(ctx, SW_ENOMEM, "out of memory");
		goto out;
	}
	art_blob_key(b->digest, key);
	rc = s3_get(a->s3, key, offset, 0, on_data, &q, err, sizeof err);
	if (q.send_rc != 0) {
		rc = rpc_errorf(ctx, SW_ECANCELLED, "the client went away");
		goto out;
	}
	if (rc == SW_ENOTFOUND || q.too_long || (rc == 0 && q.got != q.expect)) {
		snprintf(why, sizeof why, "%s",
			 rc == SW_ENOTFOUND ? "the object is missing from storage"
			 : q.too_long	    ? "the stored object is longer than recorded"
					    : "the stored object is shorter than recorded");
		log_error("stored blob is damaged", "digest=%s reason=%s", b->digest, why);
		audit_corrupt(a, ctx, b->digest, why);
		rc = rpc_errorf(ctx, SW_EDATALOSS, "blob %s: %s", b->digest, why);
		goto out;
	}
	if (rc != 0) {
		rc = rpc_errorf(ctx, SW_EUNAVAIL, "object storage: %s", err);
		goto out;
	}
	if (q.verify) {
		uint8_t sha[DIGEST_SHA256_LEN];
		char actual[DIGEST_STR_LEN];
		if (digest_final(&q.sha, sha) != DIGEST_SHA256_LEN) {
			rc = rpc_errorf(ctx, SW_EINTERNAL, "SHA-256 failed");
			goto out;
		}
		digest_format(sha, actual);
		if (strcmp(actual, b->digest) != 0) {
			snprintf(why, sizeof why, "the stored bytes hash to %s", actual);
			log_error("stored blob does not match its digest", "digest=%s actual=%s",
				  b->digest, actual);
			audit_corrupt(a, ctx, b->digest, why);
			rc = rpc_errorf(ctx, SW_EDATALOSS,
					"blob %s: %s; refusing to serve it", b->digest, why);
			goto out;
		}
	}
	if (q.len > 0 && (rc = flush(&q)) != 0)
		rc = rpc_errorf(ctx, SW_ECANCELLED, "the client went away");
out:
	digest_cleanup(&q.sha);
	free(q.buf);
	return rc;
}
