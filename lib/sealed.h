/*
 * sealed.h - the sealed secret bundle shared by the secrets service (which
 * builds, signs and seals it) and the agent (which opens, verifies, checks
 * and hands the values over), plus the key files both sides keep.
 *
 * Wire format (proto/slipway/v1/secrets.proto):
 *
 *   FetchResponse.sealed_bundle = crypto_box_seal(SignedBundle, agent X25519 key)
 *   SignedBundle = { bundle: packed SecretBundle,
 *                    signature: Ed25519(bundle) by the service's signing key,
 *                    key_id: sealed_key_id(service signing public key) }
 *   SecretBundle = { deployment_id, agent, expires_unix_ms, issued_unix_ms,
 *                    nonce (24 random bytes), secrets: [{name, version, value}] }
 *
 * The sealed box hides the values from everyone but the agent holding the
 * X25519 secret key; the signature inside it proves the service made the
 * bundle (a sealed box alone proves nothing about its sender); the agent,
 * deployment and expiry inside the signed bytes stop a bundle from being
 * used by another agent, for another deployment, or late.
 *
 * Memory: every buffer that holds a value, a packed bundle or a secret key
 * is sodium_malloc memory (guard pages, locked when the system allows,
 * excluded from core dumps) and is wiped with sodium_memzero on every path.
 * Callers keep their own secret keys in sodium_malloc memory too.
 *
 * Agent side, in full:
 *
 *   uint8_t pk[32], *sk = sodium_malloc(32), pin[32];
 *   sealed_x25519_load("agent.key", 1, pk, sk, err, sizeof err);     // register pk
 *   sealed_public_key_read("secrets-sign.pub", SEALED_LABEL_ED25519_PUBLIC, pin, 32, ...);
 *   ... Secrets/Fetch(deployment) -> FetchResponse ...
 *   struct sealed_expect x = { .agent = my_spiffe_id, .deployment_id = dep, .sign_pk = pin };
 *   struct sealed_bundle *b;
 *   if (sealed_open(resp->sealed_bundle.data, resp->sealed_bundle.len, pk, sk, &x, &b,
 *                   err, sizeof err) == 0) {
 *           sealed_bundle_write_files(b, "/run/app/secrets", 1, err, sizeof err);
 *           sealed_bundle_free(b);       // wipes every value
 *   }
 *
 * Return codes: 0, or SW_EINVAL (malformed, or a box that does not open:
 * tampered or sealed to another key), SW_EPERM (bad signature, or meant for
 * another agent or deployment), SW_EPRECOND (expired, or issued in the
 * future), SW_ENOMEM, SW_EIO (files), SW_EINTERNAL. Messages never contain
 * values or key material. Every function may be called from any thread
 * after sealed_init(); nothing here keeps global state.
 */
#ifndef SLIPWAY_SEALED_H
#define SLIPWAY_SEALED_H

#include <stddef.h>
#include <stdint.h>

#define SEALED_X25519_BYTES 32      /* X25519 public and secret keys */
#define SEALED_SIGN_PUBLIC_BYTES 32 /* Ed25519 public key */
#define SEALED_SIGN_SECRET_BYTES 64 /* Ed25519 secret key (seed || public) */
#define SEALED_SIGN_SEED_BYTES 32
#define SEALED_SIGNATURE_BYTES 64
#define SEALED_NONCE_BYTES 24
#define SEALED_BOX_OVERHEAD 48      /* crypto_box_SEALBYTES */
#define SEALED_KEY_ID_MAX 32        /* "ed25519:" + 16 hex + NUL fits */
#define SEALED_NAME_MAX 128         /* secret names: see sealed_name_ok */
#define SEALED_MAX_ITEMS 1024       /* secrets in one bundle */
#define SEALED_MAX_BOX (64u << 20)  /* largest sealed bundle accepted */
#define SEALED_CLOCK_SKEW_MS (5 * 60 * 1000) /* tolerated for issued_unix_ms */
#define SEALED_KEY_FILE_MAX (64 * 1024)

/* Key file labels (the first line of a key file says what it holds). */
#define SEALED_LABEL_X25519_SECRET "x25519-secret"
#define SEALED_LABEL_X25519_PUBLIC "x25519-public"
#define SEALED_LABEL_ED25519_SEED "ed25519-seed"
#define SEALED_LABEL_ED25519_PUBLIC "ed25519-public"

/* Initialises libsodium (idempotent). Returns 0 or SW_EINTERNAL. Call once
 * from main before starting threads. */
int sealed_init(void);

/* Returns 1 when s is a valid secret name: 1-128 of [A-Za-z0-9_.-], not
 * starting with '.' or '-' (so a name is always a safe file name and an
 * environment-friendly key). */
int sealed_name_ok(const char *s);

/* Writes the signing key's id, "ed25519:" + the first 8 bytes of
 * BLAKE2b-256(public key) in hex, into out[SEALED_KEY_ID_MAX]. */
void sealed_key_id(const uint8_t sign_pk[SEALED_SIGN_PUBLIC_BYTES], char out[SEALED_KEY_ID_MAX]);

/* ---------------------------------------------------------------- key files
 *
 * A key file is two lines: "slipway-key <label>" and the key in lower-case
 * hex. Secret key files are regular files (never symlinks) of mode 0600
 * owned by the current user; a file readable or writable by group or
 * others is refused (SW_EPERM). Writes are atomic (temporary file, fsync,
 * rename, fsync of the directory).
 */

/* Reads a whole secret file (at most max bytes, <= SEALED_KEY_FILE_MAX)
 * into new sodium_malloc memory, NUL-terminated; *len excludes the NUL.
 * The caller wipes and frees it with sodium_free. SW_ENOTFOUND when the
 * file does not exist. */
int sealed_secret_file_read(const char *path, size_t max, uint8_t **out, size_t *len, char *err,
			    size_t errlen);

/* Writes buf[len] to path, mode 0600, atomically. When replace is 0 an
 * existing file is an error (SW_EEXIST). Borrows buf. */
int sealed_secret_file_write(const char *path, const uint8_t *buf, size_t len, int replace,
			     char *err, size_t errlen);

/* Reads the secret key file at path, which must carry `label` and hold
 * exactly keylen bytes, into key[keylen] (caller's sodium memory). */
int sealed_key_read(const char *path, const char *label, uint8_t *key, size_t keylen, char *err,
		    size_t errlen);

/* Creates the secret key file at path (0600; never replaces one). */
int sealed_key_write(const char *path, const char *label, const uint8_t *key, size_t keylen,
		     char *err, size_t errlen);

/* Public key files: same format, no mode restriction, written 0644
 * (replacing). */
int sealed_public_key_read(const char *path, const char *label, uint8_t *key, size_t keylen,
			   char *err, size_t errlen);
int sealed_public_key_write(const char *path, const char *label, const uint8_t *key,
			    size_t keylen, char *err, size_t errlen);

/* Loads an X25519 key pair from the secret key file at path into pk and
 * sk[32] (caller's sodium memory). When the file is missing and create is
 * 1, generates a key pair and writes the file first. */
int sealed_x25519_load(const char *path, int create, uint8_t pk[SEALED_X25519_BYTES], uint8_t *sk,
		       char *err, size_t errlen);

/* ---------------------------------------------------------------- service side */

/* One secret in a bundle. Pointers are borrowed. */
struct sealed_item {
	const char *name;
	uint32_t version;
	const uint8_t *value;
	size_t len;
};

struct sealed_build_req {
	const char *deployment_id;
	const char *agent;              /* the agent's SPIFFE ID */
	int64_t expires_unix_ms;
	int64_t issued_unix_ms;         /* 0 = now */
	const struct sealed_item *items;
	size_t nitems;                  /* <= SEALED_MAX_ITEMS */
	const uint8_t *sign_sk;         /* Ed25519 secret key, 64 bytes, sodium memory */
	const char *key_id;             /* sealed_key_id of the matching public key */
	const uint8_t *agent_pk;        /* the agent's registered X25519 public key */
};

/* Validates r and computes the sizes sealed_build needs: *work_len bytes of
 * scratch (secure memory: it will hold the plaintext bundle) and *out_len
 * bytes of output. Returns 0 or SW_EINVAL / SW_ELIMIT (bundle too large). */
int sealed_build_size(const struct sealed_build_req *r, size_t *work_len, size_t *out_len,
		      char *err, size_t errlen);

/*
 * Builds the SecretBundle (with a fresh random nonce), signs it, packs the
 * SignedBundle and seals it to r->agent_pk into out[out_cap]; *out_len gets
 * the sealed length. `work` (work_len bytes from sealed_build_size, caller's
 * sodium memory) is wiped before returning, on every path. Returns 0,
 * SW_EINVAL (bad request, or an unusable agent key) or SW_ELIMIT.
 */
int sealed_build(const struct sealed_build_req *r, uint8_t *work, size_t work_len, uint8_t *out,
		 size_t out_cap, size_t *out_len, char *err, size_t errlen);

/* ---------------------------------------------------------------- agent side */

/* What the agent expects of a bundle. */
struct sealed_expect {
	const char *agent;          /* this agent's SPIFFE ID: must match exactly */
	const char *deployment_id;  /* must match when not NULL */
	const uint8_t *sign_pk;     /* the pinned service signing key (32 bytes) */
	int64_t now_unix_ms;        /* 0 = the system clock */
};

struct sealed_bundle;

/*
 * Opens box[len] with the agent's key pair (pk, sk: sk in sodium memory),
 * verifies the signature with x->sign_pk, and checks agent, deployment,
 * expiry, issue time, nonce and names (valid, unique). On success returns 0
 * and *out (free with sealed_bundle_free), whose values live in wiped-on-
 * free sodium memory. On failure nothing is kept and every intermediate
 * buffer is wiped.
 */
int sealed_open(const uint8_t *box, size_t len, const uint8_t pk[SEALED_X25519_BYTES],
		const uint8_t *sk, const struct sealed_expect *x, struct sealed_bundle **out,
		char *err, size_t errlen);

/* Number of secrets in b. */
size_t sealed_bundle_count(const struct sealed_bundle *b);

/* Fills *it with secret i (< count). The pointers stay valid until
 * sealed_bundle_free. Returns 0 or SW_ERANGE. */
int sealed_bundle_item(const struct sealed_bundle *b, size_t i, struct sealed_item *it);

/* Finds the secret called name. Returns 0 or SW_ENOTFOUND. */
int sealed_bundle_find(const struct sealed_bundle *b, const char *name, struct sealed_item *it);

/* The signed fields (valid until sealed_bundle_free). */
const char *sealed_bundle_deployment(const struct sealed_bundle *b);
const char *sealed_bundle_agent(const struct sealed_bundle *b);
int64_t sealed_bundle_expires(const struct sealed_bundle *b);
int64_t sealed_bundle_issued(const struct sealed_bundle *b);
/* 24 bytes; an agent may remember nonces to refuse a replayed bundle. */
const uint8_t *sealed_bundle_nonce(const struct sealed_bundle *b);

/*
 * Hands the values to a release as files: writes each secret to dir/<name>
 * with mode 0400 (created exclusively, never following links). dir must
 * exist, be a directory owned by the caller and not accessible by others
 * (mode & 077 == 0); when require_tmpfs is 1 it must also be on tmpfs or
 * ramfs, so values never reach a disk. On failure the files written so far
 * are removed.
 */
int sealed_bundle_write_files(const struct sealed_bundle *b, const char *dir, int require_tmpfs,
			      char *err, size_t errlen);

/* Wipes and frees b. NULL is a no-op. */
void sealed_bundle_free(struct sealed_bundle *b);

#endif
