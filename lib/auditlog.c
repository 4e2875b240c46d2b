/*
 * auditlog.c - canonical audit entry bytes (see proto/slipway/v1/audit-canonical.md).
 */
#include "auditlog.h"
#include "err.h"
#include "hash.h"
#include "merkle.h"
#include "spiffe.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include <string.h>

struct w {
	uint8_t *p;
	size_t cap, len;
	int full;
};

static void put(struct w *w, const void *d, size_t n)
{
	if (w->len + n > w->cap) {
		w->full = 1;
		return;
	}
	memcpy(w->p + w->len, d, n);
	w->len += n;
}

static void u32(struct w *w, uint32_t v)
{
	uint8_t b[4] = { (uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v };
	put(w, b, 4);
}

static void u64(struct w *w, uint64_t v)
{
	uint8_t b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(v >> (56 - 8 * i));
	put(w, b, 8);
}

static void str(struct w *w, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	u32(w, (uint32_t)n);
	put(w, s ? s : "", n);
}

int auditlog_canonical(const struct auditlog_entry *e, uint8_t *buf, size_t cap, size_t *len)
{
	struct w w = { buf, cap, 0, 0 };
	put(&w, AUDITLOG_MAGIC, 8);
	u64(&w, e->seq);
	str(&w, e->event_id);
	str(&w, e->actor);
	str(&w, e->service);
	str(&w, e->action);
	str(&w, e->resource);
	uint8_t oc = (uint8_t)e->outcome;
	put(&w, &oc, 1);
	str(&w, e->request_id);
	u64(&w, (uint64_t)e->time_unix_ms);
	u64(&w, (uint64_t)e->logged_unix_ms);
	u32(&w, (uint32_t)e->ndetails);
	for (size_t i = 0; i < e->ndetails; i++) {
		str(&w, e->keys[i]);
		str(&w, e->values[i]);
	}
	if (w.full)
		return SW_ELIMIT;
	*len = w.len;
	return 0;
}

void auditlog_hashes(const uint8_t prev_hash[AUDITLOG_HASH], const uint8_t *canon, size_t len,
		     uint8_t entry_hash[AUDITLOG_HASH], uint8_t leaf_hash[AUDITLOG_HASH])
{
	hash_sha256(prev_hash, AUDITLOG_HASH, canon, len, NULL, 0, entry_hash);
	merkle_leaf_hash(canon, len, leaf_hash);
}

int auditlog_from_proto(const Slipway__V1__AuditEntry *in, struct auditlog_entry *out,
			const char **keys, const char **values)
{
	const Slipway__V1__AuditEvent *ev = in->event;
	if (ev == NULL || ev->n_details > AUDITLOG_MAX_DETAILS)
		return SW_EINVAL;
	memset(out, 0, sizeof *out);
	out->seq = in->seq;
	out->event_id = ev->event_id;
	out->actor = ev->actor;
	out->service = ev->service;
	out->action = ev->action;
	out->resource = ev->resource;
	out->request_id = ev->request_id;
	out->outcome = (int)ev->outcome;
	out->time_unix_ms = ev->time_unix_ms;
	out->logged_unix_ms = in->logged_unix_ms;
	for (size_t i = 0; i < ev->n_details; i++) {
		keys[i] = ev->details[i]->key;
		values[i] = ev->details[i]->value;
	}
	out->ndetails = ev->n_details;
	out->keys = keys;
	out->values = values;
	return 0;
}

/* ---- what an event may hold ---- */

static int token_ok(const char *s, size_t min, size_t max, const char *extra)
{
	size_t n = strlen(s);
	if (n < min || n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || strchr(extra, c)))
			return 0;
	}
	return 1;
}

/* Printable UTF-8: well-formed sequences, no control characters. */
static int text_ok(const char *s, size_t min, size_t max)
{
	size_t n = strlen(s);
	if (n < min || n > max)
		return 0;
	const unsigned char *p = (const unsigned char *)s;
	for (size_t i = 0; i < n;) {
		unsigned char c = p[i];
		size_t len;
		if (c < 0x20 || c == 0x7f)
			return 0;
		if (c < 0x80)
			len = 1;
		else if ((c & 0xe0) == 0xc0 && c >= 0xc2)
			len = 2;
		else if ((c & 0xf0) == 0xe0)
			len = 3;
		else if ((c & 0xf8) == 0xf0 && c <= 0xf4)
			len = 4;
		else
			return 0;
		if (i + len > n)
			return 0;
		for (size_t k = 1; k < len; k++)
			if ((p[i + k] & 0xc0) != 0x80)
				return 0;
		i += len;
	}
	return 1;
}

static const char ID_CHARS[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZ._:-";

int auditlog_check_event(const Slipway__V1__AuditEvent *ev, char *err, size_t errlen)
{
	if (ev == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "event is required");
	if (!token_ok(ev->event_id, 1, 64, ID_CHARS))
		return sw_errf(err, errlen, SW_EINVAL,
			       "event.event_id: 1-64 characters of [A-Za-z0-9._:-] required");
	if (ev->service[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL, "event.service is required");
	if (ev->actor[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL, "event.actor is required");
	if (spiffe_parse(ev->actor, NULL, NULL, NULL, 0) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "event.actor must be a SPIFFE ID");
	if (!token_ok(ev->action, 1, 128, "._-"))
		return sw_errf(err, errlen, SW_EINVAL,
			       "event.action: 1-128 characters of [a-z0-9._-] required");
	if (!text_ok(ev->resource, 1, 512))
		return sw_errf(err, errlen, SW_EINVAL,
			       "event.resource: 1-512 bytes of printable UTF-8 required");
	if (ev->outcome != SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS &&
	    ev->outcome != SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE &&
	    ev->outcome != SLIPWAY__V1__OUTCOME__OUTCOME_DENIED)
		return sw_errf(err, errlen, SW_EINVAL,
			       "event.outcome must be SUCCESS, FAILURE or DENIED (got %d)",
			       (int)ev->outcome);
	if (!token_ok(ev->request_id, 0, 64, ID_CHARS))
		return sw_errf(err, errlen, SW_EINVAL,
			       "event.request_id: at most 64 characters of [A-Za-z0-9._:-]");
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	int64_t now = (int64_t)ts.tv_sec * 1000;
	if (ev->time_unix_ms <= 0 || ev->time_unix_ms > now + 86400000LL)
		return sw_errf(err, errlen, SW_EINVAL,
			       "event.time_unix_ms must be set and not in the future");
	if (ev->n_details > AUDITLOG_MAX_DETAILS)
		return sw_errf(err, errlen, SW_EINVAL, "event.details: at most %d entries",
			       AUDITLOG_MAX_DETAILS);
	size_t total = 0;
	for (size_t i = 0; i < ev->n_details; i++) {
		const Slipway__V1__KeyValue *kv = ev->details[i];
		if (!token_ok(kv->key, 1, 64, "._-"))
			return sw_errf(err, errlen, SW_EINVAL,
				       "event.details[%zu].key: 1-64 characters of [a-z0-9._-]", i);
		if (!text_ok(kv->value, 0, 1024))
			return sw_errf(err, errlen, SW_EINVAL,
				       "event.details[%zu].value: at most 1024 bytes of printable UTF-8",
				       i);
		for (size_t j = 0; j < i; j++)
			if (strcmp(ev->details[j]->key, kv->key) == 0)
				return sw_errf(err, errlen, SW_EINVAL, "event.details: duplicate key '%s'",
					       kv->key);
		total += strlen(kv->key) + strlen(kv->value);
	}
	if (total > AUDITLOG_MAX_DETAILS_BYTES)
		return sw_errf(err, errlen, SW_EINVAL, "event.details: %zu bytes, more than %d", total,
			       AUDITLOG_MAX_DETAILS_BYTES);
	return 0;
}

int auditlog_text_ok(const char *s, size_t min, size_t max)
{
	return text_ok(s, min, max);
}

int auditlog_token_ok(const char *s, size_t min, size_t max, const char *extra)
{
	return token_ok(s, min, max, extra);
}
