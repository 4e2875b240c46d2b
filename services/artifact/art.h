/*
 * art.h - what the artifact service's files share: its configuration, the
 * service state every handler borrows, and the domain functions that
 * rpc.c calls (names.c, keys.c, store.c, push.c, pull.c, gc.c), and the
 * Prometheus families (metrics.c).
 *
 * The service owns content-addressed blobs in S3 under blobs/sha256/<hex>,
 * and in its PostgreSQL schema `artifact` the blob rows, the immutable
 * releases app@version -> digest with their provenance, and the pins the
 * orchestrator writes (which digests environments run). See README.md.
 */
#ifndef SLIPWAY_ART_H
#define SLIPWAY_ART_H

#include "authz.h"
#include "db.h"
#include "digest.h"
#include "outbox.h"
#include "rpc.h"
#include "s3.h"
#include "names.h"
#include "svc.h"

#include "slipway/v1/artifact.pb-c.h"
#include "slipway/v1/common.pb-c.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define ART_SERVICE "artifact"
#define ART_APP_MAX NAME_APP_MAX
#define ART_VERSION_MAX NAME_VERSION_MAX
#define ART_ENV_MAX NAME_APP_MAX
#define ART_KEY_LEN 96              /* "blobs/sha256/" + 64 hex + NUL fits */
#define ART_MAX_CHUNK (1u << 20)   /* a push chunk is at most 1 MiB (the proto says so) */
#define ART_DEFAULT_MEDIA_TYPE "application/vnd.slipway.bundle.v1+tar+gzip"

/* The configuration table's destinations (see main.c). */
struct art_config {
	struct svc_config svc;
	char *pg_url;
	char *pg_sslmode;
	long long pg_pool;
	char *s3_host, *s3_bucket, *s3_access_key, *s3_secret_key;
	int s3_https;
	long long s3_stall_ms, s3_deadline_ms;
	char *audit_addr, *policy_addr;
	char *state_dir, *spool_dir;
	char *trusted_keys;
	long long max_blob;       /* bytes */
	long long max_transfers;  /* concurrent pushes + pulls */
	long long stream_buffer;  /* bytes buffered between a push and its S3 upload */
	long long chunk_size;     /* bytes per pull message */
	long long gc_grace_ms;    /* a blob touched by a push this recently is never collected */
	long long gc_batch;       /* blobs per GC transaction */
};

struct art_keys;

/* The service state: created in main.c, borrowed by every handler. */
struct art {
	struct art_config c;
	struct db *db;
	struct s3 *s3;
	struct rpc_client *audit_cli;
	struct rpc_client *policy_cli;
	struct authz *authz;          /* the policy service's answers (lib/authz) */
	struct outbox_relay *relay;   /* NULL: no audit service configured */
	struct art_keys *keys;        /* trusted builder keys (never NULL once started) */
	char spool_dir[4096];
	pthread_mutex_t mu;
	int transfers;                /* pushes and pulls in progress */
};

/* ---- names.c: validation of everything that comes from the network ---- */

/* App, environment and version names: lib/names.h. */
/* type/subtype[+suffix][;params]-ish: [A-Za-z0-9!#$&^_.+-]+/[A-Za-z0-9!#$&^_.+-]+, <= 127 */
int art_media_type_ok(const char *s);
/* Checks the provenance fields' lengths and characters; why gets the first
 * problem. Returns 0 or SW_EINVAL. */
int art_provenance_ok(const Slipway__V1__Provenance *p, char *why, size_t whylen);
/* The S3 key of a digest ("blobs/sha256/<hex>"); digest must be valid. */
void art_blob_key(const char *digest, char out[ART_KEY_LEN]);
/* Page tokens: "r<id>" for versions, "a<app>" for apps. Return 0 or SW_EINVAL. */
int art_token_id(const char *tok, int64_t *id);
int art_token_app(const char *tok, char out[ART_APP_MAX + 1]);

/* ---- keys.c: trusted builder keys and signature checks ---- */

/*
 * Loads the trusted-keys file (path may be NULL or "": no keys, nothing
 * required). Lines: "key APP|* NAME BASE64-ED25519-PUBLIC-KEY [OWNER]" and
 * "require APP|*"; '#' starts a comment (lib/provenance.h). Returns 0 and
 * *out (free with art_keys_free), or SW_EINVAL with "file:line: why".
 */
int art_keys_load(const char *path, struct art_keys **out, char *err, size_t errlen);
/* Parses the same format from memory (tests). */
int art_keys_parse(const char *text, const char *name, struct art_keys **out, char *err,
		   size_t errlen);
void art_keys_free(struct art_keys *k);
/* 1 when releases of app must carry a valid signed provenance statement. */
int art_keys_required(const struct art_keys *k, const char *app);
/* Number of keys loaded. */
size_t art_keys_count(const struct art_keys *k);
/*
 * Verifies sig (64 bytes) over the NUL-terminated msg with the trusted key
 * `key_name` for app (a per-app key or a global one); an empty key_name
 * tries every key trusted for app. used (may be NULL, >= 65 bytes)
 * receives the name of the key that verified. Returns 0 when valid,
 * SW_EPERM with why otherwise.
 */
int art_keys_verify(const struct art_keys *k, const char *app, const char *msg,
		    const uint8_t *sig, size_t siglen, const char *key_name, char *used,
		    size_t usedlen, char *why, size_t whylen);
/* The same over msglen bytes; owner (may be NULL) also receives the
 * identity the key is bound to ("" when none). */
int art_keys_verify_owner(const struct art_keys *k, const char *app, const uint8_t *msg,
			  size_t msglen, const uint8_t *sig, size_t siglen, const char *key_name,
			  char *used, size_t usedlen, char *owner, size_t ownerlen, char *why,
			  size_t whylen);

/* ---- store.c: the schema and the queries ---- */

extern const struct db_migration art_migrations[];
extern const size_t art_nmigrations;

/* The blob row of a digest as pushes, pulls and GC see it. */
struct art_blob {
	int64_t id;
	char digest[DIGEST_STR_LEN];
	uint64_t size;
	char md5[33];          /* hex; "" while pending */
	char media_type[128];
	char state[12];        /* pending | live | deleting */
	int64_t created_ms;
};

/* Reads the live blob of digest: 0, SW_ENOTFOUND (absent, pending or being
 * deleted) or a database error. */
int art_blob_get(struct art *a, const char *digest, struct art_blob *b, char *err,
		 size_t errlen);

/* Fills r (fields in rpc_alloc memory of ctx) from row `row` of a result
 * selected with ART_RELEASE_COLS. Returns 0 or SW_ENOMEM. */
int art_release_from_row(struct rpc_ctx *ctx, const PGresult *res, int row,
			 Slipway__V1__Release *r);
#define ART_RELEASE_COLS                                                                     \
	"r.app, r.version, r.digest, r.size_bytes, r.media_type, r.repository, r.commit_id, " \
	"r.ref, r.build_id, r.builder, r.build_time_ms, r.signature, r.signing_key, "        \
	"r.pushed_by, (extract(epoch from r.created_at) * 1000)::bigint, "                   \
	"(r.signature_verified AND r.statement IS NOT NULL), r.statement, r.signer"
/* Columns in ART_RELEASE_COLS: a query's own columns come after them. */
#define ART_RELEASE_NCOLS 18

/* The live release app@version (0, SW_ENOTFOUND, or a database error). */
int art_release_get(struct art *a, struct rpc_ctx *ctx, const char *app, const char *version,
		    Slipway__V1__Release *out, char *err, size_t errlen);
/* Live releases of app, newest first, after release id `before` (0 = from
 * the newest); *next_id is the id to continue from (0 = no more). */
int art_release_list(struct art *a, struct rpc_ctx *ctx, const char *app, int64_t before,
		     size_t limit, Slipway__V1__ListVersionsResponse *out, int64_t *next_id,
		     char *err, size_t errlen);
/* Apps with live releases, by name, after `after` ("" = from the start). */
int art_app_list(struct art *a, struct rpc_ctx *ctx, const char *after, size_t limit,
		 Slipway__V1__ListAppsResponse *out, int *more, char *err, size_t errlen);
/* Live releases that use digest (may be none). */
int art_release_by_digest(struct art *a, struct rpc_ctx *ctx, const char *digest,
			  Slipway__V1__GetProvenanceResponse *out, char *err, size_t errlen);
/* Records the pins of app/env (empty digests clear a pin; both empty
 * deletes the row) and audits the change. SW_EPRECOND when a digest is not
 * a live release of app. */
int art_pins_set(struct art *a, const char *actor, const Slipway__V1__SetPinsRequest *req,
		 char *err, size_t errlen);
/* db_tx on the service's database, retried once when it failed on a
 * connection the server had closed before anything could commit. */
int art_tx(struct art *a, db_tx_fn fn, void *arg, char *err, size_t errlen);
/* Writes one audit event in its own transaction (denials, failures). */
int art_audit_alone(struct art *a, const struct outbox_event *e, char *err, size_t errlen);
/* Wakes the outbox relay after a commit (no-op without an audit service). */
void art_kick(struct art *a);

/* ---- push.c ---- */

struct art_push_result {
	Slipway__V1__Release *release;   /* rpc_alloc memory */
	int deduplicated;
	int release_existed;
};

/*
 * Runs a push whose header (validated and authorized by rpc.c) was the
 * stream's first message: receives the chunks, hashes, stores the blob and
 * records the release as actor (the caller's SPIFFE ID). ctx is the
 * client stream: used only to rpc_recv the chunks and to rpc_alloc the
 * release in *out; no status is set here. Returns 0, or an SW_E* code with
 * the message in err (rpc.c makes it the call's status). Worker thread of
 * the call.
 */
int art_push(struct art *a, struct rpc_ctx *ctx, const char *actor,
	     const Slipway__V1__PushHeader *h, struct art_push_result *out, char *err,
	     size_t errlen);

/* ---- pull.c ---- */

/* Streams the live blob `digest` from offset: info first, then chunks. The
 * blob is re-hashed while served when offset is 0, and its last chunk is
 * held back until the bytes proved to match (else SW_EDATALOSS, audited
 * with actor, the caller's SPIFFE ID). ctx is the server stream: used only
 * to rpc_send. Returns 0, or an SW_E* code with the message in err (rpc.c
 * makes it the call's status). Worker thread of the call. */
int art_pull(struct art *a, struct rpc_ctx *ctx, const char *actor, const struct art_blob *b,
	     uint64_t offset, char *err, size_t errlen);

/* ---- gc.c ---- */

/* Lists (dry_run) or deletes unreferenced blobs older than retention_ms,
 * auditing each deletion as actor (the caller's SPIFFE ID). ctx is used
 * only to rpc_alloc the candidates in *out and to stop between batches
 * once the caller cancelled. Returns 0, or an SW_E* code with the message
 * in err. Worker threads. */
int art_gc(struct art *a, struct rpc_ctx *ctx, const char *actor, int dry_run,
	   int64_t retention_ms, Slipway__V1__GarbageCollectResponse *out, char *err,
	   size_t errlen);

/* ---- rpc.c ---- */

/* Registers the Artifact handlers with svc_data a. Main thread. */
int art_rpc_register(struct art *a, struct rpc_server *srv, char *err, size_t errlen);


/* Counts a push or pull; SW_ELIMIT past --max-transfers. */
int art_transfer_begin(struct art *a);
void art_transfer_end(struct art *a);

/* ---- metrics.c: bytes in and out for Prometheus; any thread ---- */
/* Creates the series (0), so a scrape shows them before the first push. */
void art_metrics_init(void);
/* n bundle bytes received (out = 0, Push) or sent (out = 1, Pull). */
void art_metrics_bytes(int out, size_t n);

#endif
