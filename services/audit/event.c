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

int aud_validate_event(const struct aud *a, const char *caller, const Slipway__V1__AuditEvent *ev,
		       char *err, size_t errlen)
{
	struct spiffe_id who;
	if (spiffe_parse(caller, a->trust_domain, &who, NULL, 0) != 0 || who.kind != SPIFFE_SERVICE)
		return sw_errf(err, errlen, SW_EPERM,
			       "only service principals may append to the audit log");
	if (ev == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "event is required");
	if (ev->service[0] != '\0' && strcmp(ev->service, who.name) != 0)
		return sw_errf(err, errlen, SW_EPERM,
			       "event.service '%.64s' is not the calling service '%s'", ev->service,
			       who.name);
	char why[256];
	int rc = auditlog_check_event(ev, why, sizeof why);
	if (rc != 0)
		return sw_errf(err, errlen, rc, "%s", why);
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
