/*
 * auditstate.h - the auditor's local state of the audit log: the verifier
 * key it pinned and the newest signed checkpoint it has verified. Kept in
 * a JSON file (by default $XDG_CONFIG_HOME/slipway/audit-state.json) that
 * `slipway audit verify --state` and `slipway evidence verify --state`
 * both read and update, so that a log rolled back or forked since the last
 * checkpoint either command saw is detected by the next one.
 *
 *   { "origin": "...", "verifier_key": "name+id+key",
 *     "checkpoint": { "size": N, "root": "<hex>", "note": "<signed note>" } }
 *
 * Moved unchanged out of cli/audit.c; the file format is the same.
 */
#ifndef SLIPWAY_AUDITSTATE_H
#define SLIPWAY_AUDITSTATE_H

#include "note.h"

#include <stddef.h>
#include <stdint.h>

struct auditstate {
	char path[4096];
	char origin[256];
	char verifier[256];
	uint64_t size; /* newest checkpoint verified before (0 = none) */
	uint8_t root[32];
	char note[NOTE_MAX];
};

/* The default path of the state file into out[len]. Any thread. */
void auditstate_default_path(char *out, size_t len);

/* Loads st->path into *st (a missing file leaves it empty). Returns 0, or
 * -1 when the file exists but cannot be read or is malformed. */
int auditstate_load(struct auditstate *st);

/* Writes *st to st->path atomically (temporary file, rename), creating
 * its directories. Returns 0 or -1. */
int auditstate_save(const struct auditstate *st);

#endif
