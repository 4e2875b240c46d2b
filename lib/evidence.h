/*
 * evidence.h - the evidence bundle of one deployment: its format (JSON,
 * "slipway-evidence/v1", specified in docs/evidence-format.md), how it is
 * assembled from audit entries and their proofs (`slipway evidence
 * export`, the benchmark), and how it is verified offline with nothing but
 * the bundle and the audit log's public key (`slipway evidence verify`,
 * the tests).
 *
 * The bundle's readable parts (deployment, release, timeline, approvals,
 * decisions, policy) are *views*: evidence_views() derives them from the
 * audit entries the bundle carries, and the verifier derives them again
 * and requires them to be equal, field by field, so that the views say
 * exactly what the signed log says. Every entry carries its RFC 6962
 * inclusion proof against one signed checkpoint; proof hashes are stored
 * once in a shared table ("nodes") and referenced by index.
 */
#ifndef SLIPWAY_EVIDENCE_H
#define SLIPWAY_EVIDENCE_H

#include "auditstate.h"
#include "note.h"
#include "provenance.h"

#include "slipway/v1/audit.pb-c.h"

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#define EVIDENCE_FORMAT "slipway-evidence/v1"
/* A bundle larger than this is refused unread (a deployment of 10,000
 * targets fits). */
#define EVIDENCE_MAX_BYTES (64u << 20)
#define EVIDENCE_MAX_ENTRIES 200000

/* ---- building (export) ---- */

struct evidence_builder;

/* Returns a new builder for deployment_id (borrowed for the call) in *out;
 * free with evidence_builder_free. */
int evidence_builder_new(const char *deployment_id, struct evidence_builder **out, char *err,
			 size_t errlen);
void evidence_builder_free(struct evidence_builder *b);

/* Adds one entry and its inclusion proof (n hashes, leaf to root) against
 * the checkpoint that evidence_builder_finish is given. Entries may come
 * in any order; a repeated seq is ignored. Copies what it needs. Returns
 * 0, SW_EINVAL for a malformed entry, SW_ELIMIT past EVIDENCE_MAX_ENTRIES. */
int evidence_builder_add(struct evidence_builder *b, const Slipway__V1__AuditEntry *e,
			 const uint8_t (*proof)[32], size_t n, char *err, size_t errlen);

/* What the builder cannot take from the log. Every pointer is borrowed;
 * NULL or "" means absent. */
struct evidence_extra {
	const char *checkpoint;      /* signed note covering every entry */
	const char *newest;          /* signed note of the newest checkpoint */
	const uint8_t (*consistency)[32]; /* checkpoint -> newest */
	size_t nconsistency;
	uint64_t state_size;         /* when > 0: a proof from this size -> newest */
	const uint8_t (*state_proof)[32];
	size_t nstate_proof;
	const char *statement;       /* provenance statement (text) */
	const uint8_t *signature;    /* 64 bytes, or NULL */
	const char *signing_key;
	const char *policy_document; /* the policy revision in force */
};

/* Sorts the entries, derives the views and returns the whole bundle in
 * *out (a new reference). The builder can be freed afterwards. Returns 0
 * or SW_EINVAL when the entries cannot make a bundle (err says why). */
int evidence_builder_finish(struct evidence_builder *b, const struct evidence_extra *x,
			    json_t **out, char *err, size_t errlen);

/* The bundle entry of a received audit entry, without its proof (a new
 * reference), or NULL on a malformed entry. */
json_t *evidence_entry_json(const Slipway__V1__AuditEntry *e);

/* Derives the views from a sorted array of bundle entries for
 * deployment_id: returns a new object with the keys "deployment",
 * "release", "timeline", "approvals", "decisions" and "policy", or NULL
 * with err (an entry that is about something else, or not well-formed).
 * policy_document (may be NULL) is checked against the logged hash. */
json_t *evidence_views(const json_t *entries, const char *deployment_id,
		       const char *policy_document, char *err, size_t errlen);

/* ---- verifying ---- */

struct evidence_verify_opts {
	const struct note_verifier *key;      /* the audit log's verifier key */
	const struct prov_keys *builder_keys; /* NULL: the provenance signature is
					       * taken as attested by the log */
	const struct auditstate *state;       /* NULL: no earlier checkpoint */
};

struct evidence_report {
	char deployment_id[64];
	char origin[256];
	size_t entries;
	uint64_t checkpoint_size, newest_size;
	uint8_t newest_root[32];
	char newest_note[NOTE_MAX];
	int provenance; /* 0 none, 1 statement bound, 2 signature verified */
	int state_checked;
	size_t timeline, approvals, decisions;
};

/*
 * Verifies the bundle in buf[len] offline. Returns 0 and fills *r, or
 * SW_EINVAL with the first mismatch named in err ("log.entries[12]
 * (seq 4711): inclusion proof does not lead to the checkpoint's root").
 * With o->state, a newest checkpoint that does not extend the state's is
 * a failure (rolled back or forked log). Any thread.
 */
int evidence_verify(const char *buf, size_t len, const struct evidence_verify_opts *o,
		    struct evidence_report *r, char *err, size_t errlen);

#endif
