/*
 * s3.c - libs3 2.0 requests driven on a private request context with a
 * stall bound and a deadline (see s3.h).
 */
#include "s3.h"
#include "err.h"
#include "clock.h"

#include <libs3.h>
#include <openssl/evp.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/select.h>
#include <time.h>
#include <unistd.h>

struct s3 {
	S3BucketContext bc;
	char *host, *bucket, *ak, *sk;
	int stall_ms;
	int64_t deadline_ms;
};

/* State of one request. */
struct req {
	S3Status status;
	int done;
	int64_t last_progress;
	int aborted;          /* by the data callback */
	char errbuf[256];
	/* put */
	const uint8_t *mem;
	size_t mem_len, mem_off;
	int fd;
	uint64_t fd_left;
	int fd_error;
	/* put_stream */
	s3_fill_fn fill;
	uint64_t fill_left;
	/* get */
	s3_data_fn fn;
	void *arg;
	/* head, and the ETag of any response */
	uint64_t size;
	char etag[80];
	/* get_small */
	uint8_t *buf;
	size_t cap, len;
	int too_big;
};

int s3_global_init(char *err, size_t errlen)
{
	S3Status st = S3_initialize("slipway", S3_INIT_ALL, NULL);
	if (st != S3StatusOK)
		return sw_errf(err, errlen, SW_EINTERNAL, "libs3 init: %s", S3_get_status_name(st));
	return 0;
}

void s3_global_cleanup(void)
{
	S3_deinitialize();
}

int s3_key_ok(const char *key)
{
	size_t n = strlen(key);
	if (n == 0 || n > 512 || key[0] == '/')
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = key[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '/' || c == '.' ||
		      c == '_' || c == '-'))
			return 0;
	}
	return strstr(key, "..") == NULL && strstr(key, "//") == NULL;
}

int s3_new(const struct s3_opts *o, struct s3 **out, char *err, size_t errlen)
{
	*out = NULL;
	if (!o->host || !*o->host || !o->bucket || !*o->bucket || !o->access_key || !o->secret_key)
		return sw_errf(err, errlen, SW_EINVAL, "S3 host, bucket and keys are required");
	struct s3 *s = calloc(1, sizeof *s);
	if (s == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	s->host = strdup(o->host);
	s->bucket = strdup(o->bucket);
	s->ak = strdup(o->access_key);
	s->sk = strdup(o->secret_key);
	if (!s->host || !s->bucket || !s->ak || !s->sk) {
		s3_free(s);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	s->stall_ms = o->stall_ms > 0 ? o->stall_ms : 5000;
	s->deadline_ms = o->deadline_ms > 0 ? o->deadline_ms : 30000;
	s->bc.hostName = s->host;
	s->bc.bucketName = s->bucket;
	s->bc.protocol = o->https ? S3ProtocolHTTPS : S3ProtocolHTTP;
	s->bc.uriStyle = S3UriStylePath;
	s->bc.accessKeyId = s->ak;
	s->bc.secretAccessKey = s->sk;
	*out = s;
	return 0;
}

void s3_free(struct s3 *s)
{
	if (s == NULL)
		return;
	free(s->host);
	free(s->bucket);
	free(s->ak);
	if (s->sk) {
		memset(s->sk, 0, strlen(s->sk));
		free(s->sk);
	}
	free(s);
}

/* ---- callbacks ---- */

static S3Status on_props(const S3ResponseProperties *p, void *cb)
{
	struct req *r = cb;
	r->last_progress = clock_mono_ms();
	r->size = p->contentLength;
	if (p->eTag != NULL) {
		const char *e = p->eTag;
		size_t n = strlen(e);
		if (n >= 2 && e[0] == '"' && e[n - 1] == '"') {
			e++;
			n -= 2;
		}
		if (n < sizeof r->etag)
			snprintf(r->etag, sizeof r->etag, "%.*s", (int)n, e);
	}
	return S3StatusOK;
}

static void on_complete(S3Status st, const S3ErrorDetails *d, void *cb)
{
	struct req *r = cb;
	r->status = st;
	r->done = 1;
	if (d != NULL && d->message != NULL)
		snprintf(r->errbuf, sizeof r->errbuf, "%s", d->message);
}

static int on_put_data(int size, char *buf, void *cb)
{
	struct req *r = cb;
	r->last_progress = clock_mono_ms();
	if (r->mem != NULL) {
		size_t n = r->mem_len - r->mem_off;
		if (n > (size_t)size)
			n = (size_t)size;
		memcpy(buf, r->mem + r->mem_off, n);
		r->mem_off += n;
		return (int)n;
	}
	if (r->fill != NULL) {
		if (r->fill_left == 0)
			return 0;
		size_t cap = r->fill_left < (uint64_t)size ? (size_t)r->fill_left : (size_t)size;
		int got = r->fill((uint8_t *)buf, cap, r->arg);
		/* Time the producer took is not S3's: restart the stall clock. */
		r->last_progress = clock_mono_ms();
		if (got <= 0 || (size_t)got > cap) {
			r->aborted = 1;
			return -1; /* aborts the request before the body is complete */
		}
		r->fill_left -= (uint64_t)got;
		return got;
	}
	if (r->fd_left == 0)
		return 0;
	size_t want = r->fd_left < (uint64_t)size ? (size_t)r->fd_left : (size_t)size;
	ssize_t got;
	do
		got = read(r->fd, buf, want);
	while (got < 0 && errno == EINTR);
	if (got <= 0) {
		r->fd_error = 1;
		return -1; /* aborts the request */
	}
	r->fd_left -= (uint64_t)got;
	return (int)got;
}

static S3Status on_get_data(int size, const char *buf, void *cb)
{
	struct req *r = cb;
	r->last_progress = clock_mono_ms();
	if (r->fn != NULL) {
		int stop = r->fn((const uint8_t *)buf, (size_t)size, r->arg);
		/* A slow consumer is not a stalled S3: restart the stall clock. */
		r->last_progress = clock_mono_ms();
		if (stop != 0) {
			r->aborted = 1;
			return S3StatusAbortedByCallback;
		}
		return S3StatusOK;
	}
	if (r->len + (size_t)size > r->cap) {
		r->too_big = 1;
		return S3StatusAbortedByCallback;
	}
	memcpy(r->buf + r->len, buf, (size_t)size);
	r->len += (size_t)size;
	return S3StatusOK;
}

/* ---- driving a request ---- */

/* Runs the request context until the request completes, stalls for
 * stall_ms, or passes deadline (0 = none). Returns 0 or SW_EUNAVAIL. */
static int drive(struct s3 *s, S3RequestContext *ctx, struct req *r, int64_t deadline,
		 char *err, size_t errlen)
{
	int running = 1;
	r->last_progress = clock_mono_ms();
	while (!r->done) {
		S3Status st = S3_runonce_request_context(ctx, &running);
		if (st != S3StatusOK && st != S3StatusInterrupted)
			return sw_errf(err, errlen, SW_EUNAVAIL, "S3 request failed: %s",
				       S3_get_status_name(st));
		if (r->done || !running)
			break;
		int64_t now = clock_mono_ms();
		if (now - r->last_progress > s->stall_ms)
			return sw_errf(err, errlen, SW_EUNAVAIL,
				       "S3 at %s made no progress for %d ms", s->host, s->stall_ms);
		if (deadline > 0 && now > deadline)
			return sw_errf(err, errlen, SW_EUNAVAIL, "S3 at %s did not answer in time",
				       s->host);
		fd_set rd, wr, ex;
		int maxfd = -1;
		FD_ZERO(&rd);
		FD_ZERO(&wr);
		FD_ZERO(&ex);
		S3_get_request_context_fdsets(ctx, &rd, &wr, &ex, &maxfd);
		int64_t t = S3_get_request_context_timeout(ctx);
		if (t < 0 || t > 50)
			t = 50;
		struct timeval tv = { 0, (suseconds_t)(t * 1000) };
		if (maxfd >= 0 && maxfd < FD_SETSIZE)
			select(maxfd + 1, &rd, &wr, &ex, &tv);
		else {
			struct timespec ts = { 0, 1000000L };
			nanosleep(&ts, NULL);
		}
	}
	if (!r->done) {
		r->status = S3StatusConnectionFailed;
		r->done = 1;
	}
	return 0;
}

/* Maps a completed request's status to SW_E*. */
static int status_err(struct s3 *s, const char *what, const char *key, struct req *r, char *err,
		      size_t errlen)
{
	if (r->fd_error)
		return sw_errf(err, errlen, SW_EIO, "%s %s: reading the local file failed", what, key);
	switch (r->status) {
	case S3StatusOK:
		return 0;
	case S3StatusErrorNoSuchKey:
	case S3StatusHttpErrorNotFound:
		return sw_errf(err, errlen, SW_ENOTFOUND, "%s %s: no such object", what, key);
	case S3StatusAbortedByCallback:
		if (r->too_big)
			return sw_errf(err, errlen, SW_ELIMIT, "%s %s: object too large", what, key);
		return sw_errf(err, errlen, SW_ECANCELLED, "%s %s: aborted", what, key);
	case S3StatusErrorSignatureDoesNotMatch:
	case S3StatusErrorInvalidAccessKeyId:
	case S3StatusHttpErrorForbidden:
	case S3StatusErrorAccessDenied:
		return sw_errf(err, errlen, SW_EUNAVAIL, "%s %s: S3 refused our credentials (%s)",
			       what, key, S3_get_status_name(r->status));
	case S3StatusErrorBadDigest:
	case S3StatusErrorInvalidDigest:
		return sw_errf(err, errlen, SW_EDATALOSS, "%s %s: S3 saw damaged bytes", what, key);
	default:
		return sw_errf(err, errlen, SW_EUNAVAIL, "%s %s at %s: %s%s%s", what, key, s->host,
			       S3_get_status_name(r->status), r->errbuf[0] ? ": " : "", r->errbuf);
	}
}

static int begin(S3RequestContext **ctx, char *err, size_t errlen)
{
	if (S3_create_request_context(ctx) != S3StatusOK)
		return sw_errf(err, errlen, SW_ENOMEM, "cannot create an S3 request context");
	return 0;
}

static void md5_base64(const uint8_t md5[16], char out[32])
{
	EVP_EncodeBlock((unsigned char *)out, md5, 16);
}

static int do_put(struct s3 *s, const char *key, struct req *r, uint64_t len,
		  const uint8_t md5[16], char *err, size_t errlen)
{
	S3RequestContext *ctx = NULL;
	char b64[32];
	int rc;
	if (!s3_key_ok(key))
		return sw_errf(err, errlen, SW_EINVAL, "invalid object key");
	if ((rc = begin(&ctx, err, errlen)) != 0)
		return rc;
	S3PutProperties props;
	memset(&props, 0, sizeof props);
	props.contentType = "application/octet-stream";
	if (md5 != NULL) {
		md5_base64(md5, b64);
		props.md5 = b64;
	}
	props.expires = -1;
	S3PutObjectHandler h = { { on_props, on_complete }, on_put_data };
	S3_put_object(&s->bc, key, len, &props, ctx, &h, r);
	/* Large uploads are bounded by progress, not by a total time. */
	int64_t dl = len > (1u << 20) ? 0 : clock_mono_ms() + s->deadline_ms;
	rc = drive(s, ctx, r, dl, err, errlen);
	S3_destroy_request_context(ctx);
	if (rc != 0)
		return rc;
	return status_err(s, "put", key, r, err, errlen);
}

int s3_put(struct s3 *s, const char *key, const void *data, size_t len, char *err, size_t errlen)
{
	struct req r;
	uint8_t md5[16];
	unsigned int ml = 0;
	memset(&r, 0, sizeof r);
	r.mem = data;
	r.mem_len = len;
	r.fd = -1;
	EVP_Digest(data, len, md5, &ml, EVP_md5(), NULL);
	return do_put(s, key, &r, len, md5, err, errlen);
}

int s3_put_stream(struct s3 *s, const char *key, uint64_t len, s3_fill_fn fn, void *arg,
		  struct s3_object_info *info, char *err, size_t errlen)
{
	struct req r;
	memset(&r, 0, sizeof r);
	r.fd = -1;
	r.fill = fn;
	r.fill_left = len;
	r.arg = arg;
	int rc = do_put(s, key, &r, len, NULL, err, errlen);
	if (rc == 0 && info != NULL) {
		info->size = len;
		snprintf(info->etag, sizeof info->etag, "%s", r.etag);
	}
	return rc;
}

int s3_put_fd(struct s3 *s, const char *key, int fd, uint64_t len, const uint8_t md5[16],
	      char *err, size_t errlen)
{
	struct req r;
	memset(&r, 0, sizeof r);
	r.fd = fd;
	r.fd_left = len;
	return do_put(s, key, &r, len, md5, err, errlen);
}

static int do_get(struct s3 *s, const char *key, uint64_t off, uint64_t count, struct req *r,
		  int64_t deadline, char *err, size_t errlen)
{
	S3RequestContext *ctx = NULL;
	int rc;
	if (!s3_key_ok(key))
		return sw_errf(err, errlen, SW_EINVAL, "invalid object key");
	if ((rc = begin(&ctx, err, errlen)) != 0)
		return rc;
	S3GetObjectHandler h = { { on_props, on_complete }, on_get_data };
	S3_get_object(&s->bc, key, NULL, off, count, ctx, &h, r);
	rc = drive(s, ctx, r, deadline, err, errlen);
	S3_destroy_request_context(ctx);
	if (rc != 0)
		return rc;
	return status_err(s, "get", key, r, err, errlen);
}

int s3_get(struct s3 *s, const char *key, uint64_t offset, uint64_t count, s3_data_fn fn,
	   void *arg, char *err, size_t errlen)
{
	struct req r;
	memset(&r, 0, sizeof r);
	r.fn = fn;
	r.arg = arg;
	return do_get(s, key, offset, count, &r, 0, err, errlen);
}

int s3_get_small(struct s3 *s, const char *key, size_t cap, uint8_t **out, size_t *len,
		 char *err, size_t errlen)
{
	struct req r;
	memset(&r, 0, sizeof r);
	*out = NULL;
	*len = 0;
	r.buf = malloc(cap ? cap : 1);
	if (r.buf == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	r.cap = cap;
	int rc = do_get(s, key, 0, 0, &r, clock_mono_ms() + s->deadline_ms, err, errlen);
	if (rc != 0) {
		free(r.buf);
		return rc;
	}
	*out = r.buf;
	*len = r.len;
	return 0;
}

int s3_head(struct s3 *s, const char *key, uint64_t *size, char *err, size_t errlen)
{
	struct s3_object_info info;
	int rc = s3_stat(s, key, &info, err, errlen);
	if (rc == 0 && size != NULL)
		*size = info.size;
	return rc;
}

int s3_stat(struct s3 *s, const char *key, struct s3_object_info *info, char *err,
	    size_t errlen)
{
	S3RequestContext *ctx = NULL;
	struct req r;
	int rc;
	memset(&r, 0, sizeof r);
	if (!s3_key_ok(key))
		return sw_errf(err, errlen, SW_EINVAL, "invalid object key");
	if ((rc = begin(&ctx, err, errlen)) != 0)
		return rc;
	S3ResponseHandler h = { on_props, on_complete };
	S3_head_object(&s->bc, key, ctx, &h, &r);
	rc = drive(s, ctx, &r, clock_mono_ms() + s->deadline_ms, err, errlen);
	S3_destroy_request_context(ctx);
	if (rc != 0)
		return rc;
	rc = status_err(s, "head", key, &r, err, errlen);
	if (rc == 0) {
		info->size = r.size;
		snprintf(info->etag, sizeof info->etag, "%s", r.etag);
	}
	return rc;
}

int s3_delete(struct s3 *s, const char *key, char *err, size_t errlen)
{
	S3RequestContext *ctx = NULL;
	struct req r;
	int rc;
	memset(&r, 0, sizeof r);
	if (!s3_key_ok(key))
		return sw_errf(err, errlen, SW_EINVAL, "invalid object key");
	if ((rc = begin(&ctx, err, errlen)) != 0)
		return rc;
	S3ResponseHandler h = { on_props, on_complete };
	S3_delete_object(&s->bc, key, ctx, &h, &r);
	rc = drive(s, ctx, &r, clock_mono_ms() + s->deadline_ms, err, errlen);
	S3_destroy_request_context(ctx);
	if (rc != 0)
		return rc;
	rc = status_err(s, "delete", key, &r, err, errlen);
	return rc == SW_ENOTFOUND ? 0 : rc;
}

int s3_ping(struct s3 *s, char *err, size_t errlen)
{
	int rc = s3_head(s, "health/probe", NULL, err, errlen);
	if (rc == 0 || rc == SW_ENOTFOUND)
		return 0;
	return SW_EUNAVAIL;
}
