/*
 * audit.h - the audit service's shared state and its domain functions.
 *
 *   event.c       validation of appended events, details as JSON
 *   store.c       the group-commit append pipeline (hash chain + Merkle
 *                 nodes in one transaction per batch), reads and proofs
 *   checkpoint.c  the signing key, signed checkpoints (timer and on
 *                 demand), their copies on S3 and the integrity check
 *   rpc.c         one function per RPC
 *   metrics.c     log size and checkpoint age for Prometheus
 *   main.c        start-up and shutdown
 */
#ifndef SLIPWAY_AUDIT_H
#define SLIPWAY_AUDIT_H

#include "authz.h"
#include "db.h"
#include "merkle.h"
#include "note.h"
#include "rpc.h"
#include "s3.h"
#include "svc.h"

#include "slipway/v1/audit.pb-c.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#define AUD_MAX_BATCH_EVENTS 1000 /* per AppendBatch call */

struct aud_config {
	struct svc_config svc;
	char *pg_url;
	char *pg_sslmode;
	char *s3_host, *s3_bucket, *s3_access_key, *s3_secret_key;
	int s3_https;
	char *policy_addr;
	char *state_dir;
	int generate_keys;
	char *signing_key;   /* path of the PRIVATE+KEY file */
	char *origin;        /* checkpoint origin line */
	char *key_name;      /* signer name (new keys only) */
	char *cp_prefix;     /* S3 key prefix of the checkpoints, ends in '/' */
	char *cp_dir;        /* also publish checkpoints here ("" or NULL = not) */
	long long checkpoint_ms;
	long long max_pending;
	long long batch_max;
	long long db_pool;
};

/* Called from the batcher thread once a job's batch committed (rc 0) or
 * failed (rc < 0, message in err). */
typedef void (*aud_done_fn)(void *arg, int rc, const char *err);

/* One append request waiting for its group commit (owned by the caller,
 * e.g. in the call's arena, until done runs). */
struct aud_job {
	struct aud_job *next;
	Slipway__V1__AuditEvent **events;
	size_t n;
	Slipway__V1__AppendResponse *results;
	uint8_t (*hashes)[32];
	aud_done_fn done;
	void *arg;
};

struct aud {
	struct aud_config c;
	struct db *db;
	struct s3 *s3;
	struct rpc_client *policy;
	struct authz *authz;
	struct note_signer *signer;
	struct note_verifier verifier;
	char verifier_text[256];
	char trust_domain[128];

	/* append pipeline */
	pthread_mutex_t mu;
	pthread_cond_t cv;        /* jobs queued / stop */
	struct aud_job *head, *tail;
	long long pending;        /* events queued */
	int stopping;
	pthread_t batcher;
	struct merkle_range range; /* frontier after the last commit we made */
	int range_valid;

	/* checkpoints */
	pthread_mutex_t cp_mu;    /* one signer at a time in this process */
	pthread_t cp_thread;
	pthread_cond_t cp_cv;
	atomic_int integrity_failed; /* the log disagrees with a signed checkpoint */
	/* the latest checkpoint's size, cached for proofs (at most 1 s old) */
	pthread_mutex_t cache_mu;
	uint64_t latest_cp_size;
	int64_t latest_cp_at_ms;
	char integrity_why[256];
};

/* ---- rpc.c ---- */

/* Registers the slipway.v1.Audit handlers on srv. */
int aud_rpc_register(struct aud *a, struct rpc_server *srv, char *err, size_t errlen);

/* ---- event.c ---- */

/* Validates one event for append by `caller` (SPIFFE ID). Returns 0 or
 * SW_EINVAL / SW_EPERM with a message naming the field. */
int aud_validate_event(const struct aud *a, const char *caller, const Slipway__V1__AuditEvent *ev,
		       char *err, size_t errlen);

/* Sorts details by key (validated unique) and writes them as a JSON array of
 * [key, value] pairs into a new string (free()). */
char *aud_details_json(const Slipway__V1__AuditEvent *ev, const char **keys, const char **values);

/* ---- store.c ---- */

int aud_store_start(struct aud *a, char *err, size_t errlen);
void aud_store_stop(struct aud *a);

/* Queues events (already validated) for the group commit without waiting.
 * When the batch commits, results[i] is filled for each event (entry_hash
 * pointing into hashes[i]) and done(arg, 0, "") runs on the batcher thread;
 * if it fails (database down: nothing appended; SW_EPRECOND: integrity
 * check failed) done gets the code. Returns 0 when queued, else SW_ELIMIT
 * (too many waiting) or SW_EUNAVAIL (shutting down) and done never runs.
 * Any thread; never blocks. */
int aud_append(struct aud *a, struct aud_job *j, Slipway__V1__AuditEvent **events, size_t n,
	       Slipway__V1__AppendResponse *results, uint8_t (*hashes)[32], aud_done_fn done,
	       void *arg, char *err, size_t errlen);

/* Current number of entries. */
int aud_size(struct aud *a, uint64_t *size, char *err, size_t errlen);

/* A page of entries read from the database, allocated in one arena. */
struct aud_block;
struct aud_page {
	Slipway__V1__AuditEntry **entries;
	size_t n;
	uint64_t next;            /* seq to continue from */
	struct aud_block *blocks; /* the arena */
};

/* Reads up to limit entries with seq in [from, to) (to 0 = no bound)
 * matching filter (may be NULL), in seq order. Free with aud_page_free. */
int aud_read_page(struct aud *a, uint64_t from, uint64_t to, const Slipway__V1__EntryFilter *f,
		  int limit, struct aud_page *out, char *err, size_t errlen);
void aud_page_free(struct aud_page *p);

/* Fills a plan's node hashes from the database. */
int aud_fill_plan(struct aud *a, struct merkle_plan *p, char *err, size_t errlen);

/* Merkle root at size (0 = empty). */
int aud_root(struct aud *a, uint64_t size, uint8_t root[MERKLE_HASH], char *err, size_t errlen);

/* ---- checkpoint.c ---- */

int aud_keys_load(struct aud *a, char *err, size_t errlen);
int aud_checkpoint_start(struct aud *a, char *err, size_t errlen);
void aud_checkpoint_stop(struct aud *a);

/* Signs a checkpoint of the current log now (no-op when the latest already
 * covers it) and returns the newest checkpoint. */
int aud_checkpoint_sign(struct aud *a, Slipway__V1__Checkpoint **out, char *err, size_t errlen);

/* The latest checkpoint (size 0 = latest) or the one at exactly `size`.
 * SW_ENOTFOUND when none. Free with slipway__v1__checkpoint__free_unpacked
 * -compatible aud_checkpoint_free. */
int aud_checkpoint_get(struct aud *a, uint64_t size, Slipway__V1__Checkpoint **out, char *err,
		       size_t errlen);
void aud_checkpoint_free(Slipway__V1__Checkpoint *c);

/* The latest checkpoint's size (0 when none), from a cache at most 1 s
 * old. Any thread. */
int aud_latest_size(struct aud *a, uint64_t *size, char *err, size_t errlen);

/* Checks the database against the newest checkpoint on S3 and in the
 * database; sets integrity_failed when they disagree. */
int aud_integrity_check(struct aud *a, char *err, size_t errlen);

/* ---- metrics.c: log size and checkpoint age for Prometheus ---- */
/* Creates the families and registers the scrape-time collector (reads
 * a->db). Returns 0 or SW_ELIMIT. Main thread; stop before db_close. */
int aud_metrics_start(struct aud *a);
void aud_metrics_stop(struct aud *a);

#endif
