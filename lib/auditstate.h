/*
 * auditstate.h - an auditor's verifier state: the audit log's pinned
 * public key and every signed checkpoint the auditor has seen, kept in a
 * file outside the operator's reach (docs/operations.md, "Auditor trust
 * across time", specifies the format). A checkpoint seen once binds the
 * log for ever: a later log that does not extend it (rolled back,
 * truncated, rewritten and re-signed) fails `slipway audit verify`.
 *
 * Two auditors' files merge (auditstate_merge) when they pin the same key
 * and origin; two different signed checkpoints of the same size are a
 * split view and refuse to merge, naming both roots.
 *
 * File format "slipway-audit-state/2" (JSON); the v1 form (origin,
 * verifier_key, one "checkpoint") still loads, and v2 keeps writing the
 * newest checkpoint as "checkpoint" so that v1 readers still work.
 *
 * Not thread-safe: one state per thread.
 */
#ifndef SLIPWAY_AUDITSTATE_H
#define SLIPWAY_AUDITSTATE_H

#include "note.h"

#include <stddef.h>
#include <stdint.h>

#define AUDITSTATE_FORMAT "slipway-audit-state/2"
/* At most this many checkpoints in one file (one is added per audit). */
#define AUDITSTATE_MAX_CHECKPOINTS 100000

struct auditstate_cp {
	uint64_t size;
	uint8_t root[32];
	char *note;                 /* the signed note, owned */
};

struct auditstate {
	char origin[256];           /* "" until known */
	char verifier[256];         /* the pinned verifier key, "" until pinned */
	struct auditstate_cp *cps;  /* ascending size, unique sizes, owned */
	size_t n, cap;
};

/* SHA-256 of the verifier key's text (the line in <key>.pub, without
 * newline) as 64 lowercase hex digits: what an operator publishes apart
 * from the key and an auditor compares. out must hold 65 bytes. */
void auditstate_fingerprint(const char *verifier_key, char out[65]);

/* Loads path into *st (zeroed first). A missing file is an empty state
 * (0). SW_EINVAL with err on a malformed file, a fingerprint that does
 * not match the key, or checkpoints out of order; SW_EIO when unreadable.
 * Free with auditstate_free even on failure. */
int auditstate_load(const char *path, struct auditstate *st, char *err, size_t errlen);

/* Writes st to path atomically (a temporary file renamed over it, mode
 * 0600, parent directories created 0700). 0 or SW_EIO with err. */
int auditstate_save(const char *path, const struct auditstate *st, char *err, size_t errlen);

/* Adds a checkpoint (note copied). Same size and root: nothing changes.
 * Same size, another root: SW_EINVAL, err names both roots (the log
 * signed two histories). SW_ELIMIT past AUDITSTATE_MAX_CHECKPOINTS,
 * SW_ENOMEM. */
int auditstate_add(struct auditstate *st, uint64_t size, const uint8_t root[32], const char *note,
		   char *err, size_t errlen);

/* Checks every checkpoint of st against v: each note must verify, name
 * st's origin, and carry the size and root recorded beside it. 0, or
 * SW_EINVAL with err naming the first bad one (an edited state file). */
int auditstate_check(const struct auditstate *st, const struct note_verifier *v, char *err,
		     size_t errlen);

/* Merges other into into: both must pin the same key and origin (an
 * unset one takes the other's), and other's checkpoints must verify with
 * v (auditstate_check); then each is added (auditstate_add). On failure
 * into may hold some of other's checkpoints: do not save it. */
int auditstate_merge(struct auditstate *into, const struct auditstate *other,
		     const struct note_verifier *v, char *err, size_t errlen);

/* The newest checkpoint, or NULL. Borrowed from st. */
const struct auditstate_cp *auditstate_latest(const struct auditstate *st);

void auditstate_free(struct auditstate *st);

#endif
