/*
 * event.c - what an appended event must look like (the caps are listed in
 * proto/slipway/v1/audit-canonical.md) and its details as JSON.
 */
#include "audit.h"
#include "auditlog.h"
#include "err.h"
#include "spiffe.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

int aud_validate_event(const struct aud *a, const char *caller, const Slipway__V1__AuditEvent *ev,
		       char *err, size_t errlen)
{
	struct spiffe_id who;
	if (spiffe_parse(caller, a->trust_domain, &who, NULL, 0) != 0 || who.kind != SPIFFE_SERVICE)
		return sw_errf(err, errlen, SW_EPERM,
			       "only service principals may append to the audit log");
	if (ev == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "event is required");
	if (!token_ok(ev->event_id, 1, 64, ID_CHARS))
		return sw_errf(err, errlen, SW_EINVAL,
			       "event.event_id: 1-64 characters of [A-Za-z0-9._:-] required");
	if (ev->service[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL, "event.service is required");
	if (strcmp(ev->service, who.name) != 0)
		return sw_errf(err, errlen, SW_EPERM,
			       "event.service '%.64s' is not the calling service '%s'", ev->service,
			       who.name);
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

static int by_key(const void *x, const void *y)
{
	const Slipway__V1__KeyValue *const *a = x, *const *b = y;
	return strcmp((*a)->key, (*b)->key);
}

char *aud_details_json(const Slipway__V1__AuditEvent *ev, const char **keys, const char **values)
{
	Slipway__V1__KeyValue *sorted[AUDITLOG_MAX_DETAILS];
	size_t n = ev->n_details;
	if (n > 0) {
		memcpy(sorted, ev->details, n * sizeof *sorted);
		qsort(sorted, n, sizeof *sorted, by_key);
	}
	json_t *arr = json_array();
	for (size_t i = 0; i < n; i++) {
		keys[i] = sorted[i]->key;
		values[i] = sorted[i]->value;
		json_array_append_new(arr, json_pack("[ss]", sorted[i]->key, sorted[i]->value));
	}
	char *s = json_dumps(arr, JSON_COMPACT);
	json_decref(arr);
	return s;
}
