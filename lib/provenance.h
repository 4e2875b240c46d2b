/*
 * provenance.h - the signed provenance statement of a release and the
 * trusted builder keys that may sign it. Shared by the CLI (which builds
 * and signs a statement), the artifact service (which verifies it at push
 * and records what it proves) and the agent (which verifies it again
 * before it runs a release of an app that requires signatures).
 *
 * A statement is canonical, versioned text: the first line names the
 * version, then one "name value" line per field, in a fixed order, each
 * ending in "\n" (an empty value leaves "name \n"):
 *
 *   slipway-provenance-v1
 *   app web
 *   version 1.4.2
 *   digest sha256:<64 hex>
 *   repository https://git.example.com/shop/web
 *   commit 0123456789abcdef0123456789abcdef01234567
 *   ref refs/heads/main
 *   builder ci-bot
 *   build-id 4711
 *   build-time-ms 1796681782303
 *
 * Exactly one byte string encodes a given statement: prov_parse accepts
 * only what prov_encode produces. The builder signs these bytes with
 * Ed25519 (detached, 64 bytes).
 */
#ifndef SLIPWAY_PROVENANCE_H
#define SLIPWAY_PROVENANCE_H

#include <stddef.h>
#include <stdint.h>

#define PROV_VERSION_LINE "slipway-provenance-v1"
#define PROV_STATEMENT_MAX 2048   /* bytes; every field at its bound fits */
#define PROV_SIG_LEN 64
#define PROV_KEY_NAME_MAX 64
#define PROV_OWNER_MAX 255        /* SPIFFE_ID_MAX */

/* The fields of a statement (NUL-terminated copies). */
struct prov_statement {
	char app[64];
	char version[129];
	char digest[72];          /* sha256:<64 lower-case hex> */
	char repository[513];     /* <= 512 printable ASCII */
	char commit[65];          /* "" or 7-64 lower-case hex */
	char ref[257];            /* <= 256 printable ASCII, no spaces */
	char builder[257];        /* <= 256 printable ASCII */
	char build_id[257];       /* <= 256 printable ASCII */
	int64_t build_time_ms;    /* >= 0 */
};

/*
 * Checks every field of s and writes its canonical encoding into out
 * (outlen bytes, PROV_STATEMENT_MAX is enough; NUL-terminated, *len gets
 * the length without the NUL). Returns 0 or SW_EINVAL with the first
 * problem in err. Any thread.
 */
int prov_encode(const struct prov_statement *s, char *out, size_t outlen, size_t *len,
		char *err, size_t errlen);

/*
 * Parses buf (len bytes, not NUL-terminated) into *s. Only the canonical
 * encoding of a valid statement is accepted. Returns 0 or SW_EINVAL with
 * why in err. Any thread.
 */
int prov_parse(const uint8_t *buf, size_t len, struct prov_statement *s, char *err,
	       size_t errlen);

/* ---- trusted builder keys ---- */

/*
 * The trusted-keys file (the artifact service's --trusted-keys, the
 * agent's --trusted-builder-keys):
 *
 *   # comment
 *   key     APP|*  NAME  BASE64-ED25519-PUBLIC-KEY  [OWNER-SPIFFE-ID]
 *   require APP|*
 *
 * A key is trusted to sign statements of APP (or of every app); OWNER,
 * when given, is the identity the key belongs to (the person or CI
 * workload holding it): builder-separation rules treat it as the builder
 * of whatever the key signs. `require` lists the apps whose releases must
 * carry a valid signed statement.
 */
struct prov_keys;

/* Parses the file's text (fname names it in errors). Returns 0 and *out
 * (free with prov_keys_free), or SW_EINVAL with "fname:line: why". */
int prov_keys_parse(const char *text, const char *fname, struct prov_keys **out, char *err,
		    size_t errlen);
/* Reads and parses path; NULL or "" gives an empty set (no keys, nothing
 * required). Returns 0 and *out, or SW_EINVAL with why. */
int prov_keys_load(const char *path, struct prov_keys **out, char *err, size_t errlen);
void prov_keys_free(struct prov_keys *k);
size_t prov_keys_count(const struct prov_keys *k);
/* 1 when releases of app must carry a valid signed statement. */
int prov_keys_required(const struct prov_keys *k, const char *app);
/*
 * Verifies the Ed25519 signature sig (siglen bytes) over msg (msglen
 * bytes) with a key trusted for app: the key named key_name, or, when
 * key_name is NULL or "", every key trusted for app. On success used
 * (may be NULL) gets the key's name and owner (may be NULL) its owner
 * ("" when the key has none). Returns 0, or SW_EPERM with why.
 */
int prov_keys_verify(const struct prov_keys *k, const char *app, const uint8_t *msg,
		     size_t msglen, const uint8_t *sig, size_t siglen, const char *key_name,
		     char *used, size_t usedlen, char *owner, size_t ownerlen, char *why,
		     size_t whylen);

#endif
