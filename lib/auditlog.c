/*
 * auditlog.c - canonical audit entry bytes (see proto/slipway/v1/audit-canonical.md).
 */
#include "auditlog.h"
#include "err.h"
#include "hash.h"
#include "merkle.h"

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
