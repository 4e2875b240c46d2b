/*
 * auditlog.h - the canonical bytes of an audit entry and its two hashes,
 * shared by the audit service (which appends) and `slipway audit verify`
 * (which recomputes). The encoding is specified for other implementations
 * in proto/slipway/v1/audit-canonical.md.
 */
#ifndef SLIPWAY_AUDITLOG_H
#define SLIPWAY_AUDITLOG_H

#include "slipway/v1/audit.pb-c.h"

#include <stddef.h>
#include <stdint.h>

#define AUDITLOG_MAGIC "SWAUDIT1"
#define AUDITLOG_HASH 32
/* Caps enforced at append; the canonical form of a valid entry fits in
 * AUDITLOG_CANON_MAX bytes. */
#define AUDITLOG_MAX_DETAILS 32
#define AUDITLOG_MAX_DETAILS_BYTES 8192
#define AUDITLOG_MAX_VALUE 1024
#define AUDITLOG_MAX_RESOURCE 512
#define AUDITLOG_CANON_MAX 16384

/* Borrowed view of one entry. Details must be in ascending bytewise key
 * order with unique keys (the service stores them so). */
struct auditlog_entry {
	uint64_t seq;
	const char *event_id, *actor, *service, *action, *resource, *request_id;
	int outcome;
	int64_t time_unix_ms, logged_unix_ms;
	size_t ndetails;
	const char *const *keys;
	const char *const *values;
};

/* Writes the canonical bytes into buf[cap]. Returns 0 and *len, or
 * SW_ELIMIT when cap is too small. */
int auditlog_canonical(const struct auditlog_entry *e, uint8_t *buf, size_t cap, size_t *len);

/* entry_hash = SHA-256(prev_hash || canon); leaf_hash = SHA-256(0x00 || canon). */
void auditlog_hashes(const uint8_t prev_hash[AUDITLOG_HASH], const uint8_t *canon, size_t len,
		     uint8_t entry_hash[AUDITLOG_HASH], uint8_t leaf_hash[AUDITLOG_HASH]);

/* Fills a view from a received entry. keys/values must hold
 * AUDITLOG_MAX_DETAILS pointers. Returns SW_EINVAL when the entry has no
 * event or too many details. */
int auditlog_from_proto(const Slipway__V1__AuditEntry *in, struct auditlog_entry *out,
			const char **keys, const char **values);

/* Checks every field of an event against the caps of audit-canonical.md
 * (not who may append it: that is the audit service's business). Returns
 * 0 or SW_EINVAL naming the field. */
int auditlog_check_event(const Slipway__V1__AuditEvent *ev, char *err, size_t errlen);

/* Printable UTF-8 of min..max bytes; tokens of [a-z0-9] plus extra. */
int auditlog_text_ok(const char *s, size_t min, size_t max);
int auditlog_token_ok(const char *s, size_t min, size_t max, const char *extra);

#endif
