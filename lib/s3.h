/*
 * s3.h - object storage on S3 (MinIO in production, s3rver in tests) with
 * libs3 2.0, with the time bounds libs3 lacks.
 *
 * libs3 2.0 has no connect timeout and a fixed 15 s low-speed timeout. Every
 * request here runs on its own libs3 request context that this module
 * drives itself, so a request is abandoned (SW_EUNAVAIL) as soon as it
 * makes no progress for `stall_ms` (covering connect, a silent server and a
 * stalled body) or runs past its total deadline.
 *
 * Only object-level requests are made (path-style, host:port as hostName);
 * the bucket must exist. Keys are limited to [a-z0-9/._-].
 *
 * Threads: call s3_global_init() once in main before starting threads;
 * after that any thread may use a struct s3 (requests do not share state).
 */
#ifndef SLIPWAY_S3_H
#define SLIPWAY_S3_H

#include <stddef.h>
#include <stdint.h>

struct s3;

struct s3_opts {
	const char *host;        /* "127.0.0.1:9000" */
	const char *bucket;
	const char *access_key;
	const char *secret_key;
	int https;               /* 0 = http (local stack) */
	int stall_ms;            /* abandon a request idle this long; 0 = 5000 */
	int64_t deadline_ms;     /* total bound for small requests; 0 = 30000 */
};

/* Initialises libs3 for the process. Main thread, before other threads. */
int s3_global_init(char *err, size_t errlen);
void s3_global_cleanup(void);

int s3_new(const struct s3_opts *o, struct s3 **out, char *err, size_t errlen);
void s3_free(struct s3 *s);

/* Returns 1 when key is an acceptable object key. */
int s3_key_ok(const char *key);

/* Stores len bytes from memory under key (Content-MD5 set). */
int s3_put(struct s3 *s, const char *key, const void *data, size_t len, char *err,
	   size_t errlen);

/* Stores len bytes read from fd (from its current offset) under key, with
 * the given Content-MD5 (16 raw bytes) so the server can reject damage in
 * transit. Memory use is bounded whatever len is. */
int s3_put_fd(struct s3 *s, const char *key, int fd, uint64_t len, const uint8_t md5[16],
	      char *err, size_t errlen);

/* Receives object data as it arrives; return nonzero to abort (the
 * request then fails with SW_ECANCELLED). */
typedef int (*s3_data_fn)(const uint8_t *p, size_t n, void *arg);

/* Streams bytes [offset, offset+count) of key (count 0 = to the end) to fn.
 * Returns SW_ENOTFOUND for a missing key. The total deadline does not apply
 * (large objects); the stall bound does. */
int s3_get(struct s3 *s, const char *key, uint64_t offset, uint64_t count, s3_data_fn fn,
	   void *arg, char *err, size_t errlen);

/* Reads a whole small object (at most cap bytes) into a new buffer (free
 * with free()). SW_ELIMIT when larger. */
int s3_get_small(struct s3 *s, const char *key, size_t cap, uint8_t **out, size_t *len,
		 char *err, size_t errlen);

/* Size of key (SW_ENOTFOUND when absent). size may be NULL. */
int s3_head(struct s3 *s, const char *key, uint64_t *size, char *err, size_t errlen);

/* What a HEAD (or a PUT's response) says about an object. */
struct s3_object_info {
	uint64_t size;
	char etag[80]; /* the ETag without its quotes ("" when none was sent); for an
			* object stored by a single PUT it is the hex MD5 of its bytes */
};

/* Like s3_head, with the ETag. */
int s3_stat(struct s3 *s, const char *key, struct s3_object_info *info, char *err,
	    size_t errlen);

/* Supplies upload data for s3_put_stream: writes up to cap bytes into buf
 * and returns how many (> 0), or a negative value to abort the upload. It
 * may block while the data is produced; time spent here is not counted as
 * an S3 stall. */
typedef int (*s3_fill_fn)(uint8_t *buf, size_t cap, void *arg);

/*
 * Uploads exactly len bytes produced by fn under key in one PUT, for
 * callers that stream data whose MD5 they only know at the end (so no
 * Content-MD5 is sent). When fn aborts, the request is abandoned before
 * its body is complete, so a conforming server stores nothing, and this
 * returns SW_ECANCELLED. On success, info (may be NULL) receives the ETag
 * the server returned, for the caller to compare with its own MD5.
 */
int s3_put_stream(struct s3 *s, const char *key, uint64_t len, s3_fill_fn fn, void *arg,
		  struct s3_object_info *info, char *err, size_t errlen);

/* Deletes key (absent keys are not an error). */
int s3_delete(struct s3 *s, const char *key, char *err, size_t errlen);

/* Checks that S3 answers and accepts our credentials: 0 or SW_EUNAVAIL. */
int s3_ping(struct s3 *s, char *err, size_t errlen);

#endif
