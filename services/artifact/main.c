/*
 * slipway-artifact - content-addressed, immutable releases on S3 with
 * provenance. This file holds start-up, signals and shutdown only: the
 * handlers are in rpc.c, the domain in names.c, keys.c, store.c, push.c,
 * pull.c and gc.c. README.md describes the flags, RPCs and failure modes.
 */
#include "art.h"
#include "err.h"
#include "log.h"

#include <errno.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int s3_ready; /* s3_global_init succeeded (main thread only) */

/* Health: the service can work only while PostgreSQL and S3 answer. */
static int probe(void *arg, char *why, size_t whylen)
{
	struct art *a = arg;
	int rc = db_ping(a->db, why, whylen);
	if (rc != 0)
		return rc;
	if ((rc = s3_ping(a->s3, why, whylen)) != 0)
		return rc;
	return 0;
}

/* Creates dir (and its parents) with the given mode if it is missing. */
static int make_dir(const char *dir, char *err, size_t errlen)
{
	char path[4096];
	int n = snprintf(path, sizeof path, "%s", dir);
	if (n <= 0 || (size_t)n >= sizeof path)
		return sw_errf(err, errlen, SW_EINVAL, "directory path too long");
	for (char *p = path + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(path, 0700) != 0 && errno != EEXIST)
			return sw_errf(err, errlen, SW_EIO, "mkdir %s: %s", path, strerror(errno));
		*p = '/';
	}
	if (mkdir(path, 0700) != 0 && errno != EEXIST)
		return sw_errf(err, errlen, SW_EIO, "mkdir %s: %s", path, strerror(errno));
	return 0;
}

/* Own start-up after svc_new: database, S3, keys, audit, policy. */
static int start(struct art *a, struct svc *s, char *err, size_t errlen)
{
	int rc;
	const struct art_config *c = &a->c;

	if (c->chunk_size + 1024 > c->svc.max_msg)
		return sw_errf(err, errlen, SW_EINVAL, "--chunk-size must leave 1 KiB under --max-msg");
	if (c->spool_dir[0] != '\0')
		snprintf(a->spool_dir, sizeof a->spool_dir, "%s", c->spool_dir);
	else if (c->state_dir[0] != '\0')
		snprintf(a->spool_dir, sizeof a->spool_dir, "%s/spool", c->state_dir);
	else
		return sw_errf(err, errlen, SW_EINVAL, "set --state-dir or --spool-dir");
	if ((rc = make_dir(a->spool_dir, err, errlen)) != 0)
		return rc;

	if ((rc = art_keys_load(c->trusted_keys, &a->keys, err, errlen)) != 0)
		return rc;

	struct db_opts dbo = { .url = c->pg_url, .sslmode = c->pg_sslmode, .schema = "artifact", .app_name = "slipway-artifact",
			       .pool_size = (int)c->pg_pool };
	if ((rc = db_open(&dbo, &a->db, err, errlen)) != 0 ||
	    (rc = db_migrate(a->db, art_migrations, art_nmigrations, err, errlen)) != 0)
		return rc;

	if ((rc = s3_global_init(err, errlen)) != 0)
		return rc;
	s3_ready = 1;
	struct s3_opts so = { .host = c->s3_host, .bucket = c->s3_bucket,
			      .access_key = c->s3_access_key, .secret_key = c->s3_secret_key,
			      .https = c->s3_https, .stall_ms = (int)c->s3_stall_ms,
			      .deadline_ms = c->s3_deadline_ms };
	if ((rc = s3_new(&so, &a->s3, err, errlen)) != 0)
		return rc;

	if (c->audit_addr[0] != '\0') {
		if ((rc = svc_client(&c->svc, c->audit_addr, "audit", &a->audit_cli, err, errlen)) != 0)
			return rc;
		struct outbox_relay_opts ro = { .db = a->db, .audit = a->audit_cli };
		if ((rc = outbox_relay_start(&ro, &a->relay, err, errlen)) != 0)
			return rc;
	} else {
		log_warn("no --audit-addr: audit events stay in the outbox until one is configured",
			 NULL);
	}
	if ((rc = svc_client(&c->svc, c->policy_addr, "policy", &a->policy_cli, err, errlen)) != 0)
		return rc;
	struct authz_opts ao = { .policy = a->policy_cli };
	if ((rc = authz_new(&ao, &a->authz, err, errlen)) != 0)
		return rc;
	log_info("artifact store ready", "bucket=%s spool=%s max_blob=%lld trusted_keys=%zu",
		 c->s3_bucket, a->spool_dir, c->max_blob, art_keys_count(a->keys));
	return art_rpc_register(a, svc_server(s), err, errlen);
}

static void stop(struct art *a)
{
	authz_free(a->authz);
	outbox_relay_stop(a->relay, 3000);
	rpc_client_free(a->policy_cli);
	rpc_client_free(a->audit_cli);
	s3_free(a->s3);
	db_close(a->db);
	art_keys_free(a->keys);
}

int main(int argc, char **argv)
{
	static struct art a;
	struct art_config *c = &a.c;
	struct cfg_opt opts[] = {
		SVC_COMMON_OPTS(&c->svc),
		{ "pg-url", CFG_STR, NULL, 0, 0, CFG_REQUIRED | CFG_NO_PASSWORD,
		  "PostgreSQL connection string (libpq URL)", &c->pg_url },
		{ "pg-sslmode", CFG_STR, "prefer", 0, 0, 0,
		  "TLS to PostgreSQL (libpq sslmode): prefer yields to the URL; require, "
		  "verify-ca, verify-full (or disable, allow) override it", &c->pg_sslmode },
		{ "pg-pool", CFG_INT, "8", 1, 256, 0, "database connections", &c->pg_pool },
		{ "s3-host", CFG_STR, NULL, 0, 0, CFG_REQUIRED, "S3 endpoint host:port",
		  &c->s3_host },
		{ "s3-bucket", CFG_STR, NULL, 0, 0, CFG_REQUIRED, "S3 bucket (must exist)",
		  &c->s3_bucket },
		{ "s3-access-key", CFG_STR, NULL, 0, 0, CFG_REQUIRED, "S3 access key id",
		  &c->s3_access_key },
		{ "s3-secret-key", CFG_STR, NULL, 0, 0, CFG_REQUIRED | CFG_SECRET,
		  "S3 secret access key", &c->s3_secret_key },
		{ "s3-https", CFG_BOOL, "false", 0, 0, 0, "talk to S3 over HTTPS", &c->s3_https },
		{ "s3-stall", CFG_MS, "5s", 100, 600000, 0,
		  "abandon an S3 request that makes no progress this long (UNAVAILABLE)",
		  &c->s3_stall_ms },
		{ "s3-deadline", CFG_MS, "30s", 100, 600000, 0,
		  "total bound for small S3 requests (HEAD, DELETE)", &c->s3_deadline_ms },
		{ "audit-addr", CFG_STR, NULL, 0, 0, 0, "audit service host:port (outbox relay)",
		  &c->audit_addr },
		{ "policy-addr", CFG_STR, NULL, 0, 0, CFG_REQUIRED,
		  "policy service host:port (every RPC is authorized there)", &c->policy_addr },
		{ "state-dir", CFG_PATH, NULL, 0, 0, 0, "private directory (holds the spool)",
		  &c->state_dir },
		{ "spool-dir", CFG_PATH, NULL, 0, 0, 0,
		  "where pushes without a digest are spooled (default <state-dir>/spool)",
		  &c->spool_dir },
		{ "trusted-keys", CFG_PATH, NULL, 0, 0, 0,
		  "trusted builder keys and apps that require signatures (see README)",
		  &c->trusted_keys },
		{ "max-blob", CFG_SIZE, "2GiB", 1, 5LL << 30, 0,
		  "largest artifact accepted (RESOURCE_EXHAUSTED past it)", &c->max_blob },
		{ "max-transfers", CFG_INT, "8", 1, 1024, 0,
		  "pushes and pulls in progress at once (RESOURCE_EXHAUSTED past it)",
		  &c->max_transfers },
		{ "stream-buffer", CFG_SIZE, "4MiB", 64LL << 10, 256LL << 20, 0,
		  "memory between a streamed push and its S3 upload", &c->stream_buffer },
		{ "stream-window", CFG_SIZE, "4MiB", 0, 64LL << 20, 0,
		  "HTTP/2 window per call (0: gRPC's adaptive one); bounds the memory a fast "
		  "pusher can fill",
		  &c->svc.stream_window },
		{ "chunk-size", CFG_SIZE, "1MiB", 16LL << 10, 16LL << 20, 0,
		  "bytes per Pull message", &c->chunk_size },
		{ "gc-grace", CFG_MS, "1h", 0, 30LL * 24 * 3600 * 1000, 0,
		  "a blob touched by a push this recently is never collected", &c->gc_grace_ms },
		{ "gc-batch", CFG_INT, "100", 1, 10000, 0, "blobs per GC transaction",
		  &c->gc_batch },
	};
	size_t nopts = sizeof opts / sizeof opts[0];
	char err[512];
	int code = 2, exit_code;
	struct svc *s = NULL;

	/* Transfers allocate and free 1 MiB buffers on many threads (gRPC's,
	 * the handlers', the S3 helpers'). With one malloc arena per thread,
	 * freed buffers pile up in every arena a transfer ever touched: two
	 * arenas keep peak memory tied to the transfers in progress. A fixed
	 * mmap threshold above the buffer size and a trim threshold of a few
	 * buffers let them be reused instead of faulting fresh pages in for
	 * every message. */
	mallopt(M_ARENA_MAX, 2);
	mallopt(M_MMAP_THRESHOLD, 4 << 20);
	mallopt(M_TRIM_THRESHOLD, 8 << 20);
	pthread_mutex_init(&a.mu, NULL);
	if (svc_configure(ART_SERVICE, "ARTIFACT", opts, nopts, argc, argv, &exit_code, err,
			  sizeof err) != 0) {
		fprintf(stderr, "slipway-artifact: %s\n", err);
		goto out;
	}
	if (exit_code >= 0) {
		code = exit_code;
		goto out;
	}
	code = 1;
	art_metrics_init();
	if (svc_new(ART_SERVICE, &c->svc, probe, &a, &s, err, sizeof err) != 0 ||
	    start(&a, s, err, sizeof err) != 0 || svc_start(s, err, sizeof err) != 0) {
		log_error("start-up failed", "error=%s", err);
		fprintf(stderr, "slipway-artifact: %s\n", err);
		goto out;
	}
	svc_wait(s);
	svc_stop(s);
	code = 0;
out:
	svc_free(s);
	stop(&a);
	if (s3_ready)
		s3_global_cleanup();
	cfg_free(opts, nopts);
	rpc_shutdown();
	pthread_mutex_destroy(&a.mu);
	return code;
}
