/*
 * secrets.h - the secrets service's internal interfaces, shared by its
 * files: keys.c (master keyring, sealing and signing keys), envelope.c
 * (per-version encryption), scratch.c (per-thread secure memory),
 * store.c (secrets and versions in PostgreSQL), grants.c (grants and
 * Fetch), events.c (audit events), rpc.c (one function per RPC) and
 * metrics.c (Fetch outcomes for Prometheus).
 *
 * Threads: everything here may be called from any handler thread unless a
 * comment says otherwise; struct sec is read-only after start-up except
 * through the locks its members carry.
 */
#ifndef SLIPWAY_SECRETS_H
#define SLIPWAY_SECRETS_H

#include "authz.h"
#include "db.h"
#include "outbox.h"
#include "rpc.h"
#include "sealed.h"
#include "spiffe.h"

#include "slipway/v1/secrets.pb-c.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define SEC_SERVICE "secrets"
#define SEC_KEY_BYTES 32
#define SEC_NONCE_BYTES 24
#define SEC_TAG_BYTES 16
/* A wrapped data key: nonce || XChaCha20-Poly1305(master key, data key). */
#define SEC_WRAPPED_BYTES (SEC_NONCE_BYTES + SEC_KEY_BYTES + SEC_TAG_BYTES)
/* Ciphertext of a value: nonce || XChaCha20-Poly1305(data key, value). */
#define SEC_CT_OVERHEAD (SEC_NONCE_BYTES + SEC_TAG_BYTES)
#define SEC_MAX_MASTER 64     /* master key versions held in a keyring */
#define SEC_APP_MAX 63        /* app and environment: SPIFFE-like segments */
#define SEC_ID_MAX 128        /* deployment ids */
#define SEC_MAX_VALUE_CAP (1 << 20)

enum sec_state { SEC_ENABLED = 1, SEC_DISABLED = 2, SEC_DESTROYED = 3 };

/* ---------------------------------------------------------------- keys.c */

struct sec_keys;

struct sec_keys_opts {
	const char *keyring_path;  /* versioned master keys */
	const char *seal_path;     /* X25519 secret key: values arrive sealed to it */
	const char *sign_path;     /* Ed25519 seed: bundles are signed with it */
	int generate;              /* create missing files (0600) */
	int keyring_may_be_new;    /* 0 when the database already holds wrapped keys */
};

/* Loads (or, when allowed, creates) every key file. Refuses files that are
 * readable by group or others. Returns 0 and *out (free with
 * sec_keys_free). Main thread. */
int sec_keys_load(const struct sec_keys_opts *o, struct sec_keys **out, char *err, size_t errlen);
void sec_keys_free(struct sec_keys *k);

/* The current master key version, and every version held (ascending). */
uint32_t sec_keys_current(struct sec_keys *k);
size_t sec_keys_versions(struct sec_keys *k, uint32_t *out, size_t cap);

/* Key check value of master key `version` (a keyed BLAKE2b of a constant,
 * 16 bytes): lets the database tell a wrong keyring from the right one
 * without holding the key. SW_ENOTFOUND when the version is not held. */
int sec_keys_kcv(struct sec_keys *k, uint32_t version, uint8_t out[16]);

/* Wraps dk with master key `version` (0 = current) under aad; *used gets
 * the version used. out: SEC_WRAPPED_BYTES. */
int sec_keys_wrap(struct sec_keys *k, uint32_t version, const uint8_t *aad, size_t aadlen,
		  const uint8_t *dk, uint8_t *out, uint32_t *used, char *err, size_t errlen);

/* Unwraps into dk (SEC_KEY_BYTES of the caller's secure memory). A version
 * the keyring does not hold makes it re-read the keyring file once (another
 * replica may have rotated). SW_EDATALOSS when the wrapped key does not
 * authenticate; SW_EPRECOND when the version is not in the keyring. */
int sec_keys_unwrap(struct sec_keys *k, uint32_t version, const uint8_t *aad, size_t aadlen,
		    const uint8_t *wrapped, uint8_t *dk, char *err, size_t errlen);

/* Changes whenever the keyring in memory changes (a key added, retired or
 * re-read from the file): data keys cached under an older generation are
 * not used. */
uint64_t sec_keys_generation(struct sec_keys *k);

/* Adds a new master key version, writes the keyring file (atomically)
 * and makes it current. *version gets it. */
int sec_keys_add(struct sec_keys *k, uint32_t *version, char *err, size_t errlen);

/* Forgets every master key other than `keep` (memory and file). */
int sec_keys_retire_except(struct sec_keys *k, uint32_t keep, char *err, size_t errlen);

/* Opens a value sealed to the service's X25519 key into out[cap] (secure
 * memory). SW_EINVAL when it does not open. */
int sec_keys_open_sealed(struct sec_keys *k, const uint8_t *box, size_t len, uint8_t *out,
			 size_t cap, size_t *outlen, char *err, size_t errlen);

/* Public keys and the signing key id (copied out). */
void sec_keys_public(struct sec_keys *k, uint8_t seal_pk[32], uint8_t sign_pk[32],
		     char key_id[SEALED_KEY_ID_MAX]);

/* The Ed25519 secret key (64 bytes, read-only sodium memory) for
 * sealed_build. Valid until sec_keys_free. */
const uint8_t *sec_keys_sign_sk(struct sec_keys *k);

/* ---------------------------------------------------------------- scratch.c */

/* Per-thread secure scratch memory (sodium_malloc, reused across calls):
 * slot SEC_SCRATCH_KEY for data keys (envelope.c), SEC_SCRATCH_DATA for
 * plaintext values, SEC_SCRATCH_WORK for the packed bundle. Returns at
 * least n bytes, or NULL past SEC_SCRATCH_MAX; a larger request replaces
 * the region, so take each slot once per operation. The caller wipes what
 * it used with sec_scratch_wipe before returning. */
enum { SEC_SCRATCH_KEY = 0, SEC_SCRATCH_DATA = 1, SEC_SCRATCH_WORK = 2 };
#define SEC_SCRATCH_MAX (128u << 20)
uint8_t *sec_scratch(int slot, size_t n);
void sec_scratch_wipe(int slot);

/* ---------------------------------------------------------------- dkcache.c */

/* Unwrapped data keys for a bounded time (see dkcache.c). NULL is a cache
 * that is off: every call does nothing (get misses). */
struct sec_dkcache;

/* entries (rounded up to a power of two) and ttl_ms; either 0: off, *out
 * NULL. Starts the sweeper thread. Free with sec_dkcache_free. */
int sec_dkcache_new(size_t entries, int64_t ttl_ms, struct sec_dkcache **out, char *err,
		    size_t errlen);
void sec_dkcache_free(struct sec_dkcache *c);
/* BLAKE2b-256 of a wrap's associated data: half of an entry's name. */
void sec_dkcache_hash_aad(const uint8_t *aad, size_t aadlen, uint8_t out[32]);
/* 1 and dk (SEC_KEY_BYTES of the caller's secure memory) on a live entry
 * for exactly this wrapped key, master key version and AAD, made under
 * keyring generation keys_gen (sec_keys_generation); else 0. */
int sec_dkcache_get(struct sec_dkcache *c, uint64_t keys_gen, uint32_t mk_version,
		    const uint8_t aad_hash[32], const uint8_t *wrapped, uint8_t *dk);
void sec_dkcache_put(struct sec_dkcache *c, uint64_t keys_gen, uint32_t mk_version,
		     const uint8_t aad_hash[32], const uint8_t *wrapped, const uint8_t *dk);
/* Wipes every entry (master key rotation, a destroyed version). */
void sec_dkcache_clear(struct sec_dkcache *c);
/* Live entries, hits and misses (tests). */
void sec_dkcache_stats(struct sec_dkcache *c, size_t *live, unsigned long long *hits,
		       unsigned long long *misses);

/* ---------------------------------------------------------------- envelope.c */

/* Who a ciphertext belongs to: bound into the associated data. */
struct sec_ident {
	const char *app;
	const char *env;  /* "" = every environment of the app */
	const char *name;
	uint32_t version;
};

/* Encrypts plain[len] under a fresh data key into ct[len + SEC_CT_OVERHEAD]
 * and wraps the data key with the current master key into wrapped;
 * *mk_version gets the master key version. */
int sec_env_seal(struct sec_keys *k, const struct sec_ident *id, const uint8_t *plain,
		 size_t len, uint8_t *ct, uint8_t wrapped[SEC_WRAPPED_BYTES], uint32_t *mk_version,
		 char *err, size_t errlen);

/* Decrypts ct[ctlen] into plain (ctlen - SEC_CT_OVERHEAD bytes of secure
 * memory). The data key comes from dkc when it holds this very wrapped key
 * (dkc may be NULL), else it is unwrapped and put there. SW_EDATALOSS when either layer does not authenticate (the row
 * was altered or copied from another name, scope or version). */
int sec_env_open(struct sec_keys *k, struct sec_dkcache *dkc, const struct sec_ident *id,
		 const uint8_t *ct, size_t ctlen, const uint8_t wrapped[SEC_WRAPPED_BYTES],
		 uint32_t mk_version, uint8_t *plain, char *err, size_t errlen);

/* Rewraps a data key from master key old_version to new_version without
 * touching the value. */
int sec_env_rewrap(struct sec_keys *k, const struct sec_ident *id,
		   const uint8_t old[SEC_WRAPPED_BYTES], uint32_t old_version,
		   uint8_t out[SEC_WRAPPED_BYTES], uint32_t new_version, char *err, size_t errlen);

/* ---------------------------------------------------------------- the service */

struct sec {
	struct db *db;
	struct sec_keys *keys;
	struct authz *authz;          /* NULL: no policy service, deny everything */
	struct rpc_client *policy;    /* enrollments (NULL: no grant is made) */
	struct outbox_relay *relay;   /* NULL: events stay in the outbox */
	struct outbox_group *fetch_log; /* group commit of fetch events */
	struct sec_dkcache *dkcache;  /* NULL: off */
	const char *trust_domain;
	char *grantors;               /* comma-separated SPIFFE IDs */
	size_t max_value;
	int64_t grant_ttl_ms, grant_max_ttl_ms, bundle_ttl_ms;
	size_t max_grant_secrets;
	size_t max_bundle;            /* largest sealed bundle we send */
	pthread_mutex_t rotate_mu;
};

/* ---------------------------------------------------------------- events.c */

/* Commits one audit event on its own (failures, denials) and kicks the
 * relay. Logs when even that fails. */
void sec_audit_alone(struct sec *s, const struct outbox_event *e);

/* Adds e on connection c (inside the caller's transaction). */
int sec_audit_add(struct db_conn *c, const struct outbox_event *e, char *err, size_t errlen);

void sec_audit_kick(struct sec *s);

/* "secret/<app>/<env>/<name>" ("*" for an app-wide secret) into out. */
const char *sec_resource(char *out, size_t cap, const char *app, const char *env,
			 const char *name);

/* Authorizes peer (the caller's SPIFFE ID) for action on kind "secret"
 * (app, env, name) with the policy service. A denial is audited (outcome
 * DENIED, with `event_action` and resource). Returns 0, SW_EPERM
 * ("permission denied: ...") or SW_EUNAVAIL ("cannot authorize: ..."),
 * the message in err. parent (may be NULL) is used only as the parent of
 * the Policy/Authorize call, so that its deadline and request id carry
 * over; nothing else of the call is touched. Worker threads. */
int sec_authorize(struct sec *s, struct rpc_ctx *parent, const char *peer, const char *action,
		  const char *event_action, const char *app, const char *env, const char *name,
		  char *err, size_t errlen);

/* ---------------------------------------------------------------- store.c */

extern const struct db_migration sec_migrations[];
extern const size_t sec_nmigrations;

/* Start-up: records the keyring's master keys (version, check value) and
 * refuses a keyring that does not match the database or lacks a version
 * that still wraps data keys. Main thread. */
int sec_store_check_keys(struct sec *s, char *err, size_t errlen);

/* Number of master keys the database knows (0 on a fresh database). */
int sec_store_master_count(struct db *db, int64_t *n, char *err, size_t errlen);

/* Metadata of one version, as returned by the list RPCs. Strings point
 * into the result or rpc memory owned by the caller. */
struct sec_version_meta {
	char app[SEC_APP_MAX + 1], env[SEC_APP_MAX + 1], name[SEALED_NAME_MAX + 1];
	uint32_t version, master_version, size_bytes;
	int state, current;
	char created_by[SPIFFE_ID_MAX + 1];
	int64_t created_ms;
};

struct sec_put {
	const char *app, *env, *name, *actor;
	const uint8_t *value; /* secure memory */
	size_t len;
	int cas, keep_current;
	uint32_t expected_version;
	struct sec_version_meta out;
};

/* Stores a new version (CAS, encryption, audit) in one transaction. */
int sec_store_put(struct sec *s, struct sec_put *p, char *err, size_t errlen);

enum sec_action { SEC_ACT_DISABLE, SEC_ACT_ENABLE, SEC_ACT_DESTROY, SEC_ACT_SET_CURRENT };

struct sec_version_op {
	const char *app, *env, *name, *actor;
	uint32_t version;
	enum sec_action act;
	struct sec_version_meta out;
	int changed;
};

int sec_store_version_op(struct sec *s, struct sec_version_op *op, char *err, size_t errlen);

/* Lists current versions (ListSecrets) or every version of one secret.
 * Calls fn for each row; fn returns 0 to go on, 1 to stop. */
typedef int (*sec_meta_fn)(const struct sec_version_meta *m, void *arg);
int sec_store_list(struct sec *s, const char *app, const char *env, int app_given,
		   const char *after_app, const char *after_env, const char *after_name,
		   int limit, sec_meta_fn fn, void *arg, char *err, size_t errlen);
int sec_store_versions(struct sec *s, const char *app, const char *env, const char *name,
		       sec_meta_fn fn, void *arg, char *err, size_t errlen);

/* Master key rotation: add a key, rewrap every data key, optionally retire
 * the older keys. */
struct sec_rotation {
	const char *actor;
	int retire;
	uint32_t new_version;
	uint64_t rewrapped;
	int retired;
};
int sec_store_rotate(struct sec *s, struct sec_rotation *r, char *err, size_t errlen);

/* ---------------------------------------------------------------- grants.c */

struct sec_grant_req {
	const Slipway__V1__CreateGrantRequest *in;
	const char *actor;
	char grant_id[33];
	int64_t expires_ms;  /* in: asked; out: of the grant (an existing one's) */
	int existed;         /* out: the request_id named a grant already made */
};

/* Resolves the references, pins their versions and records the grant (and
 * its event) in one transaction. The request is validated and authorized
 * by the caller. */
int sec_grant_create(struct sec *s, struct sec_grant_req *g, char *err, size_t errlen);

/* Fetch for agent (the caller's SPIFFE ID, an agent principal, checked by
 * the caller): finds its newest unexpired grant for the deployment,
 * authorizes, builds the bundle and records the fetch. Fills *box and *len.
 * Returns 0 or an SW_E* code with the message in err (never a value or
 * key material); audits failures itself. ctx is used only to allocate the
 * bundle (rpc_alloc: it lives until the call ends) and as the parent of
 * the policy check (sec_authorize); it never gets a status from here.
 * Worker threads. */
int sec_grant_fetch(struct sec *s, struct rpc_ctx *ctx, const char *agent,
		    const char *deployment, uint8_t **box, size_t *len, char *err, size_t errlen);

/* ---------------------------------------------------------------- fetchrule.c */

/* What the database holds about grants of a deployment when the caller has
 * no usable one: the row closest to the caller's (its own first, newest
 * first). */
struct sec_grant_seen {
	int found;            /* any grant for the deployment */
	int mine;             /* the row is the caller's (so: expired) */
	int64_t expires_ms;   /* that row's expiry */
};

/* Why agent may not fetch: SW_EPERM with the same words whether there is
 * no grant or only another agent's, SW_EPRECOND when its own expired (how
 * long ago, from now_ms). *reason gets the audit reason (static). Pure. */
int sec_fetch_no_grant(const struct sec_grant_seen *g, const char *deployment,
		       const char *agent, int64_t now_ms, const char **reason, char *err,
		       size_t errlen);

/* 0 when a pinned version may be delivered (it exists and is enabled),
 * else SW_EPRECOND ("version V of secret N is disabled|destroyed") and the
 * audit *reason. has_state 0: the version row is gone. Pure. */
int sec_fetch_version_ok(int has_state, int state, const char *name, uint32_t version,
			 const char **reason, char *err, size_t errlen);

/* A bundle lives bundle_ttl_ms, and never past its grant. Pure. */
int64_t sec_bundle_expiry(int64_t now_ms, int64_t bundle_ttl_ms, int64_t grant_expires_ms);

/* ---------------------------------------------------------------- rpc.c */

extern const struct rpc_method sec_methods[];
extern const size_t sec_nmethods;

/* Validation shared by rpc.c and grants.c. */
int sec_scope_ok(const char *app, const char *env);
int sec_deployment_ok(const char *id);

int64_t sec_now_ms(void);

/* ---- metrics.c: Fetch outcomes for Prometheus; any thread ---- */
/* Creates the series (0), so a scrape shows them before the first Fetch. */
void sec_metrics_init(void);
/* One Fetch answered with rc (0 or an SW_E* code). */
void sec_metrics_fetch(int rc);

#endif
