/*
 * fuzz_auditlog.c - the audit log's event rules and canonical bytes
 * (lib/auditlog.c, services/audit/event.c): what every appended event and
 * every exported entry goes through.
 *
 * The first input byte picks a mode; the rest is a packed protobuf message.
 *
 *   0  AuditEvent, as a service appends it: aud_validate_event (caller
 *      spiffe://slipway/service/<event.service>) and auditlog_check_event
 *      agree; an accepted event
 *        - holds only well-formed UTF-8 (RFC 3629: no overlong forms, no
 *          surrogates, nothing past U+10FFFF) in every field, because the
 *          log stores it in PostgreSQL text columns and JSON, which refuse
 *          anything else;
 *        - has details that aud_details_json writes completely and in
 *          ascending key order;
 *        - encodes (auditlog_canonical) into AUDITLOG_CANON_MAX bytes, as
 *          auditlog.h promises, and the canonical bytes decode (by the
 *          independent reader below, written from audit-canonical.md) to
 *          exactly the event's fields.
 *   1  AuditEntry, as `slipway audit verify` reads one: auditlog_from_proto
 *      then auditlog_canonical; whatever encodes decodes back to the same
 *      fields (the encoding is injective), and the hashes are
 *      SHA-256(prev || canon) and SHA-256(0x00 || canon).
 */
#include "fuzz.h"

#include "../../services/audit/audit.h"
#include "auditlog.h"
#include "err.h"
#include "hash.h"
#include "merkle.h"
#include "spiffe.h"

#include <jansson.h>

/* Strict UTF-8 (RFC 3629). */
static int utf8_strict(const char *s)
{
	const unsigned char *p = (const unsigned char *)s;
	while (*p) {
		unsigned c = *p;
		size_t len;
		unsigned cp;
		if (c < 0x80) {
			p++;
			continue;
		} else if (c >= 0xc2 && c <= 0xdf) {
			len = 2;
			cp = c & 0x1f;
		} else if (c >= 0xe0 && c <= 0xef) {
			len = 3;
			cp = c & 0x0f;
		} else if (c >= 0xf0 && c <= 0xf4) {
			len = 4;
			cp = c & 0x07;
		} else {
			return 0;
		}
		for (size_t k = 1; k < len; k++) {
			if ((p[k] & 0xc0) != 0x80)
				return 0;
			cp = cp << 6 | (p[k] & 0x3f);
		}
		if ((len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) || cp > 0x10ffff ||
		    (cp >= 0xd800 && cp <= 0xdfff))
			return 0;
		p += len;
	}
	return 1;
}

/* ---- an independent reader of the canonical bytes ---- */

struct rd {
	const uint8_t *p;
	size_t n;
	int bad;
};

static uint64_t rd_u(struct rd *r, int bytes)
{
	uint64_t v = 0;
	if (r->n < (size_t)bytes) {
		r->bad = 1;
		return 0;
	}
	for (int i = 0; i < bytes; i++)
		v = v << 8 | r->p[i];
	r->p += bytes;
	r->n -= (size_t)bytes;
	return v;
}

/* Checks that the next string equals s. */
static void rd_str(struct rd *r, const char *s, const char *what)
{
	uint64_t n = rd_u(r, 4);
	size_t want = s ? strlen(s) : 0;
	FUZZ_CHECK(!r->bad && n == want && n <= r->n, "canonical %s: length %llu, want %zu", what,
		   (unsigned long long)n, want);
	FUZZ_CHECK(want == 0 || memcmp(r->p, s, want) == 0, "canonical %s: other bytes", what);
	r->p += n;
	r->n -= n;
}

static void check_canonical(const struct auditlog_entry *e, const uint8_t *c, size_t len)
{
	struct rd r = { c, len, 0 };
	FUZZ_CHECK(len >= 8 && memcmp(c, AUDITLOG_MAGIC, 8) == 0, "magic");
	r.p += 8;
	r.n -= 8;
	FUZZ_CHECK(rd_u(&r, 8) == e->seq, "seq");
	rd_str(&r, e->event_id, "event_id");
	rd_str(&r, e->actor, "actor");
	rd_str(&r, e->service, "service");
	rd_str(&r, e->action, "action");
	rd_str(&r, e->resource, "resource");
	FUZZ_CHECK(rd_u(&r, 1) == (uint8_t)e->outcome, "outcome");
	rd_str(&r, e->request_id, "request_id");
	FUZZ_CHECK((int64_t)rd_u(&r, 8) == e->time_unix_ms, "time");
	FUZZ_CHECK((int64_t)rd_u(&r, 8) == e->logged_unix_ms, "logged");
	FUZZ_CHECK(rd_u(&r, 4) == e->ndetails, "ndetails");
	for (size_t i = 0; i < e->ndetails; i++) {
		rd_str(&r, e->keys[i], "key");
		rd_str(&r, e->values[i], "value");
	}
	FUZZ_CHECK(!r.bad && r.n == 0, "%zu bytes left over", r.n);
}

static void check_hashes(const uint8_t *canon, size_t len)
{
	uint8_t prev[32], eh[32], lh[32], want[32];
	memset(prev, 0xab, sizeof prev);
	auditlog_hashes(prev, canon, len, eh, lh);
	hash_sha256(prev, 32, canon, len, NULL, 0, want);
	FUZZ_CHECK(memcmp(eh, want, 32) == 0, "entry hash");
	uint8_t z = 0;
	hash_sha256(&z, 1, canon, len, NULL, 0, want);
	FUZZ_CHECK(memcmp(lh, want, 32) == 0, "leaf hash");
}

static struct aud aud; /* only trust_domain is read */

static void mode_event(const uint8_t *p, size_t n, uint64_t seq, int64_t logged)
{
	static uint8_t canon[AUDITLOG_CANON_MAX];
	Slipway__V1__AuditEvent *ev = slipway__v1__audit_event__unpack(NULL, n, p);
	if (ev == NULL)
		return;
	char err[512], caller[SPIFFE_ID_MAX + 1];
	snprintf(caller, sizeof caller, "spiffe://slipway/service/%s",
		 spiffe_segment_ok(ev->service) ? ev->service : "fuzz");
	int rc = auditlog_check_event(ev, err, sizeof err);
	int arc = aud_validate_event(&aud, caller, ev, err, sizeof err);
	if (spiffe_segment_ok(ev->service))
		FUZZ_CHECK(rc == arc, "auditlog_check_event %d, aud_validate_event %d", rc, arc);
	if (rc == 0) {
		/* What the shared rules accept (outboxes rely on them) fits. */
		const char *k0[AUDITLOG_MAX_DETAILS], *v0[AUDITLOG_MAX_DETAILS];
		struct auditlog_entry e0;
		Slipway__V1__AuditEntry ent = SLIPWAY__V1__AUDIT_ENTRY__INIT;
		ent.event = ev;
		ent.seq = seq;
		ent.logged_unix_ms = logged;
		size_t len0 = 0;
		FUZZ_CHECK(auditlog_from_proto(&ent, &e0, k0, v0) == 0, "from_proto");
		FUZZ_CHECK(auditlog_canonical(&e0, canon, sizeof canon, &len0) == 0,
			   "an event auditlog_check_event accepts does not fit in "
			   "AUDITLOG_CANON_MAX bytes");
	}
	if (arc != 0)
		goto out;
	FUZZ_CHECK(rc == 0, "the audit service accepts what the shared rules refuse");

	const char *fields[] = { ev->event_id, ev->actor, ev->service, ev->action, ev->resource,
				 ev->request_id };
	for (size_t i = 0; i < sizeof fields / sizeof *fields; i++)
		FUZZ_CHECK(utf8_strict(fields[i]), "accepted field %zu is not well-formed UTF-8", i);
	for (size_t i = 0; i < ev->n_details; i++)
		FUZZ_CHECK(utf8_strict(ev->details[i]->key) && utf8_strict(ev->details[i]->value),
			   "accepted detail %zu is not well-formed UTF-8", i);

	const char *keys[AUDITLOG_MAX_DETAILS], *values[AUDITLOG_MAX_DETAILS];
	char *dj = aud_details_json(ev, keys, values);
	FUZZ_CHECK(dj != NULL, "details JSON");
	json_error_t je;
	json_t *arr = json_loads(dj, 0, &je);
	FUZZ_CHECK(json_is_array(arr) && json_array_size(arr) == ev->n_details,
		   "details JSON holds %zu of %zu details", json_array_size(arr), ev->n_details);
	for (size_t i = 0; i < ev->n_details; i++) {
		json_t *kv = json_array_get(arr, i);
		FUZZ_CHECK(strcmp(json_string_value(json_array_get(kv, 0)), keys[i]) == 0 &&
				   strcmp(json_string_value(json_array_get(kv, 1)), values[i]) == 0,
			   "details JSON entry %zu differs", i);
		FUZZ_CHECK(i == 0 || strcmp(keys[i - 1], keys[i]) < 0, "details not in key order");
	}
	json_decref(arr);
	free(dj);

	struct auditlog_entry e = {
		.seq = seq, .event_id = ev->event_id, .actor = ev->actor, .service = ev->service,
		.action = ev->action, .resource = ev->resource, .request_id = ev->request_id,
		.outcome = (int)ev->outcome, .time_unix_ms = ev->time_unix_ms,
		.logged_unix_ms = logged, .ndetails = ev->n_details, .keys = keys, .values = values,
	};
	size_t len = 0;
	FUZZ_CHECK(auditlog_canonical(&e, canon, sizeof canon, &len) == 0,
		   "a valid event does not fit in AUDITLOG_CANON_MAX bytes");
	check_canonical(&e, canon, len);
	check_hashes(canon, len);
out:
	slipway__v1__audit_event__free_unpacked(ev, NULL);
}

static void mode_entry(const uint8_t *p, size_t n)
{
	static uint8_t canon[4 * AUDITLOG_CANON_MAX];
	Slipway__V1__AuditEntry *in = slipway__v1__audit_entry__unpack(NULL, n, p);
	if (in == NULL)
		return;
	struct auditlog_entry e;
	const char *keys[AUDITLOG_MAX_DETAILS], *values[AUDITLOG_MAX_DETAILS];
	if (auditlog_from_proto(in, &e, keys, values) == 0) {
		FUZZ_CHECK(e.ndetails <= AUDITLOG_MAX_DETAILS, "too many details");
		size_t len = 0;
		int rc = auditlog_canonical(&e, canon, sizeof canon, &len);
		FUZZ_CHECK(rc == 0 || rc == SW_ELIMIT, "canonical: %d", rc);
		if (rc == 0) {
			check_canonical(&e, canon, len);
			check_hashes(canon, len);
			/* One byte less of room must be refused, never overrun. */
			size_t short_len = 0;
			FUZZ_CHECK(auditlog_canonical(&e, canon, len - 1, &short_len) == SW_ELIMIT,
				   "a too small buffer was accepted");
		}
	}
	slipway__v1__audit_entry__free_unpacked(in, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = { data, size };
	snprintf(aud.trust_domain, sizeof aud.trust_domain, "slipway");
	uint8_t mode = fz_u8(&f);
	if (mode % 2 == 0) {
		uint64_t seq = fz_u64(&f);
		int64_t logged = (int64_t)fz_u64(&f);
		mode_event(f.p, f.n, seq, logged);
	} else {
		mode_entry(f.p, f.n);
	}
	return 0;
}
