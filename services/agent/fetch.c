/*
 * fetch.c - pulling a release blob by digest from the artifact service.
 *
 * The agent trusts the digest in its task, not the artifact service: bytes
 * stream into <blob>.partial, the SHA-256 of the whole file is compared
 * with the digest, and only a matching file is renamed into place. A broken
 * stream (or an agent restart) resumes from the partial file's size with
 * Pull's offset; the prefix already on disk is hashed again first, so a
 * resumed blob is verified as a whole.
 */
#include "agent.h"
#include "digest.h"
#include "err.h"
#include "log.h"

#include "slipway/v1/artifact.pb-c.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BACKOFF_MAX_MS 2000

int agent_digest_ok(const char *s, char hex[AGENT_HEX_LEN + 1])
{
	if (s == NULL || digest_parse(s, NULL) != 0)
		return 0;
	if (hex != NULL)
		memcpy(hex, s + 7, AGENT_HEX_LEN + 1);
	return 1;
}

/* Feeds the first `upto` bytes of fd (from offset 0) into md. */
static int hash_prefix(struct digest *md, int fd, uint64_t upto)
{
	char buf[65536];
	uint64_t done = 0;
	while (done < upto) {
		size_t want = upto - done < sizeof buf ? (size_t)(upto - done) : sizeof buf;
		ssize_t r = pread(fd, buf, want, (off_t)done);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return SW_EIO;
		digest_update(md, buf, (size_t)r);
		done += (uint64_t)r;
	}
	return 0;
}

int agent_sha256_file(const char *path, char hex[AGENT_HEX_LEN + 1], char *err, size_t errlen)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return sw_errf(err, errlen, errno == ENOENT ? SW_ENOTFOUND : SW_EIO, "open %s: %s",
			       path, strerror(errno));
	struct stat st;
	struct digest md = { 0 };
	uint8_t d[DIGEST_SHA256_LEN];
	int rc = 0;
	if (digest_init(&md, DIGEST_SHA256) != 0) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "sha256 unavailable");
		goto out;
	}
	if (fstat(fd, &st) != 0 || hash_prefix(&md, fd, (uint64_t)st.st_size) != 0) {
		rc = sw_errf(err, errlen, SW_EIO, "read %s failed", path);
		goto out;
	}
	if (digest_final(&md, d) != DIGEST_SHA256_LEN) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "sha256 failed");
		goto out;
	}
	digest_hex(d, DIGEST_SHA256_LEN, hex);
out:
	digest_cleanup(&md);
	close(fd);
	return rc;
}

static int transient(int rc)
{
	return rc == SW_EUNAVAIL || rc == SW_ETIMEDOUT || rc == SW_ECANCELLED ||
	       rc == SW_EABORTED || rc == SW_EINTERNAL || rc == SW_ELIMIT;
}

static void sleep_ms(long ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
		;
}

struct pull {
	int fd;
	uint64_t have;       /* bytes in the partial file (and hashed) */
	uint64_t total;      /* from BlobInfo; 0 until known */
	uint64_t max;
	struct digest md;
	int fatal;           /* the failure was ours: retrying changes nothing */
};

/* One Pull from p->have, for at most timeout_ms. A retry waits for the
 * channel to be ready (the service may just have come back) instead of
 * failing fast. */
static int pull_once(struct rpc_client *c, const char *digest, struct pull *p, int64_t timeout_ms,
		     int retry, agent_cancel_fn cancel, void *cancel_arg, char *err, size_t errlen)
{
	struct rpc_stream *s = NULL;
	if (timeout_ms <= 0)
		return sw_errf(err, errlen, SW_ETIMEDOUT, "deadline passed while pulling the bundle");
	struct rpc_call_opts o = { .timeout_ms = timeout_ms, .wait_for_ready = retry };
	int rc = rpc_stream_open(c, &slipway__v1__artifact__descriptor, "Pull", &o, &s, err,
				 errlen);
	if (rc != 0)
		return rc;
	Slipway__V1__PullRequest req = SLIPWAY__V1__PULL_REQUEST__INIT;
	req.target_case = SLIPWAY__V1__PULL_REQUEST__TARGET_DIGEST;
	req.digest = (char *)digest;
	req.offset = p->have;
	int local = 0;
	if (rpc_stream_send(s, &req.base) == 0)
		rpc_stream_close_send(s);
	for (;;) {
		ProtobufCMessage *m = NULL;
		int r = rpc_stream_recv(s, &m);
		if (r <= 0)
			break;
		Slipway__V1__PullResponse *pr = (void *)m;
		if (pr->msg_case == SLIPWAY__V1__PULL_RESPONSE__MSG_INFO && pr->info != NULL) {
			if (pr->info->digest != NULL && pr->info->digest[0] != '\0' &&
			    strcmp(pr->info->digest, digest) != 0)
				local = sw_errf(err, errlen, SW_EDATALOSS,
						"artifact service answered with another blob (%.80s)",
						pr->info->digest);
			else if (pr->info->size_bytes > p->max)
				local = sw_errf(err, errlen, SW_ELIMIT,
						"bundle is %llu bytes, over the agent's limit of %llu",
						(unsigned long long)pr->info->size_bytes,
						(unsigned long long)p->max);
			else if (pr->info->size_bytes < p->have)
				local = sw_errf(err, errlen, SW_EDATALOSS,
						"bundle is %llu bytes but %llu are already here",
						(unsigned long long)pr->info->size_bytes,
						(unsigned long long)p->have);
			else
				p->total = pr->info->size_bytes;
		} else if (pr->msg_case == SLIPWAY__V1__PULL_RESPONSE__MSG_CHUNK) {
			size_t n = pr->chunk.len;
			if (p->total == 0 && n > 0 && p->have + n > p->max)
				local = sw_errf(err, errlen, SW_ELIMIT, "bundle exceeds %llu bytes",
						(unsigned long long)p->max);
			else if (p->total != 0 && p->have + n > p->total)
				local = sw_errf(err, errlen, SW_EDATALOSS,
						"artifact service sent more bytes than announced");
			for (size_t off = 0; local == 0 && off < n;) {
				ssize_t w = pwrite(p->fd, pr->chunk.data + off, n - off,
						   (off_t)(p->have + off));
				if (w < 0 && errno == EINTR)
					continue;
				if (w <= 0)
					local = sw_errf(err, errlen, SW_EIO, "write blob: %s",
							strerror(errno));
				else
					off += (size_t)w;
			}
			if (local == 0) {
				digest_update(&p->md, pr->chunk.data, n);
				p->have += n;
			}
		}
		protobuf_c_message_free_unpacked(m, NULL);
		if (local == 0 && cancel != NULL && cancel(cancel_arg))
			local = sw_errf(err, errlen, SW_ECANCELLED, "cancelled");
		if (local != 0) {
			rpc_stream_cancel(s);
			break;
		}
	}
	char ferr[256];
	rc = rpc_stream_finish(s, ferr, sizeof ferr);
	if (local != 0) {
		p->fatal = local != SW_ECANCELLED;
		return local;
	}
	if (rc != 0)
		return sw_errf(err, errlen, rc, "pull %.80s: %s", digest, ferr);
	if (p->total == 0 && p->have == 0)
		return sw_errf(err, errlen, SW_EDATALOSS, "artifact service sent no blob info");
	if (p->have != p->total)
		return sw_errf(err, errlen, SW_EUNAVAIL, "stream ended at %llu of %llu bytes",
			       (unsigned long long)p->have, (unsigned long long)p->total);
	return 0;
}

int agent_fetch_blob(struct rpc_client *artifact, const char *digest, const char *final_path,
		     uint64_t max_bytes, int64_t deadline_ms, int64_t retry_ms, agent_cancel_fn cancel,
		     void *cancel_arg, char *err, size_t errlen)
{
	char want[AGENT_HEX_LEN + 1], got[AGENT_HEX_LEN + 1], partial[AGENT_PATH_MAX];
	struct pull p = { .fd = -1, .max = max_bytes };
	int rc = 0;

	if (!agent_digest_ok(digest, want))
		return sw_errf(err, errlen, SW_EINVAL, "digest '%.80s' is not sha256:<64 hex>",
			       digest);
	/* A blob already here is used only if it still matches. */
	if (agent_sha256_file(final_path, got, NULL, 0) == 0) {
		if (strcmp(got, want) == 0)
			return 0;
		unlink(final_path);
	}
	if ((size_t)snprintf(partial, sizeof partial, "%s.partial", final_path) >= sizeof partial)
		return sw_errf(err, errlen, SW_EINVAL, "path too long");
	p.fd = open(partial, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (p.fd < 0)
		return sw_errf(err, errlen, SW_EIO, "open %s: %s", partial, strerror(errno));
	if (digest_init(&p.md, DIGEST_SHA256) != 0) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "sha256 unavailable");
		goto out;
	}
	struct stat st;
	if (fstat(p.fd, &st) != 0) {
		rc = sw_errf(err, errlen, SW_EIO, "stat %s failed", partial);
		goto out;
	}
	p.have = (uint64_t)st.st_size;
	if (p.have > max_bytes) {
		p.have = 0;
		if (ftruncate(p.fd, 0) != 0) {
			rc = sw_errf(err, errlen, SW_EIO, "truncate %s failed", partial);
			goto out;
		}
	}
	if (p.have > 0) {
		log_info("resuming bundle download", "digest=%s offset=%llu", digest,
			 (unsigned long long)p.have);
		if (hash_prefix(&p.md, p.fd, p.have) != 0) {
			rc = sw_errf(err, errlen, SW_EIO, "read %s failed", partial);
			goto out;
		}
	}
	/* Transient failures are retried, resuming from the offset, until no
	 * byte has arrived for retry_ms (or the task's deadline). */
	long backoff = 200;
	int64_t progress_at = agent_now_ms();
	char first[256] = "";
	int gave_up = 0;
	for (int attempt = 1;; attempt++) {
		uint64_t before = p.have;
		int64_t now = agent_now_ms();
		int64_t timeout = deadline_ms - now;
		if (attempt > 1 && progress_at + retry_ms - now < timeout)
			timeout = progress_at + retry_ms - now;
		rc = pull_once(artifact, digest, &p, timeout, attempt > 1, cancel, cancel_arg, err,
			       errlen);
		if (p.have > before)
			progress_at = agent_now_ms();
		if (rc == 0 || p.fatal || !transient(rc) || rc == SW_ECANCELLED)
			break;
		if (first[0] == '\0')
			snprintf(first, sizeof first, "%s", err);
		now = agent_now_ms();
		if (now + backoff >= deadline_ms || now + backoff >= progress_at + retry_ms) {
			gave_up = 1;
			break;
		}
		/* Keep exactly the bytes that were hashed. */
		if (ftruncate(p.fd, (off_t)p.have) != 0) {
			rc = sw_errf(err, errlen, SW_EIO, "truncate %s failed", partial);
			break;
		}
		if (attempt == 1 || attempt % 10 == 0)
			log_warn("bundle download interrupted; retrying from the offset",
				 "digest=%s offset=%llu attempt=%d error=%s", digest,
				 (unsigned long long)p.have, attempt, err);
		sleep_ms(backoff);
		backoff = backoff * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : backoff * 2;
		if (cancel != NULL && cancel(cancel_arg)) {
			rc = sw_errf(err, errlen, SW_ECANCELLED, "cancelled");
			break;
		}
	}
	if (rc != 0 && gave_up)
		rc = sw_errf(err, errlen, SW_EUNAVAIL, "no progress for %lld s at byte %llu (%s)",
			     (long long)((agent_now_ms() - progress_at) / 1000),
			     (unsigned long long)p.have, first);
	if (rc != 0) {
		/* Bytes that can never become the right blob are dropped; an
		 * interrupted download stays for the next attempt. */
		if (rc == SW_EDATALOSS || rc == SW_ENOTFOUND || rc == SW_EINVAL || rc == SW_ELIMIT)
			unlink(partial);
		goto out;
	}
	uint8_t d[DIGEST_SHA256_LEN];
	if (digest_final(&p.md, d) != DIGEST_SHA256_LEN) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "sha256 failed");
		goto out;
	}
	digest_hex(d, DIGEST_SHA256_LEN, got);
	if (strcmp(got, want) != 0) {
		unlink(partial);
		rc = sw_errf(err, errlen, SW_EDATALOSS,
			     "digest mismatch: the bytes pulled hash to sha256:%.16s..., the task "
			     "wants sha256:%.16s...", got, want);
		log_error("bundle digest mismatch: refusing it", "want=sha256:%s got=sha256:%s",
			  want, got);
		goto out;
	}
	if (fsync(p.fd) != 0 || rename(partial, final_path) != 0) {
		rc = sw_errf(err, errlen, SW_EIO, "store blob: %s", strerror(errno));
		goto out;
	}
	log_info("bundle downloaded and verified", "digest=%s bytes=%llu", digest,
		 (unsigned long long)p.have);
out:
	digest_cleanup(&p.md);
	if (p.fd >= 0)
		close(p.fd);
	return rc;
}
