/*
 * fuzz_spiffe.c - SPIFFE ID parsing (lib/spiffe.c): every principal the
 * system sees comes through spiffe_parse, from certificates, requests and
 * policy documents.
 *
 * Input: one byte choosing the trust domain to require (none, "slipway" or
 * the first line of the input), then the ID text.
 *
 * Invariants:
 *  - an accepted ID is at most SPIFFE_ID_MAX bytes, starts with
 *    "spiffe://<trust domain>/", its trust domain passes
 *    spiffe_trust_domain_ok and equals the required one;
 *  - every path segment passes spiffe_segment_ok (the strictness that lets
 *    authorization compare IDs byte for byte);
 *  - a service, user or agent ID formats back (spiffe_format) to exactly
 *    the input bytes, and its parsed kind and name survive the round trip;
 *  - parsing with out == NULL and with a struct gives the same answer.
 */
#include "fuzz.h"

#include "err.h"
#include "spiffe.h"

static void check_segments(const char *id, const char *td)
{
	const char *p = id + strlen("spiffe://") + strlen(td) + 1;
	char seg[SPIFFE_ID_MAX + 1];
	for (;;) {
		const char *q = strchr(p, '/');
		size_t n = q ? (size_t)(q - p) : strlen(p);
		FUZZ_CHECK(n < sizeof seg, "segment too long");
		memcpy(seg, p, n);
		seg[n] = '\0';
		FUZZ_CHECK(spiffe_segment_ok(seg), "accepted ID '%s' has bad segment '%s'", id, seg);
		if (q == NULL)
			break;
		p = q + 1;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = { data, size };
	char tdbuf[256];
	const char *td = NULL;
	uint8_t mode = fz_u8(&f);
	if (mode % 3 == 1)
		td = "slipway";
	size_t len;
	char *id = fz_rest(&f, &len);
	if (mode % 3 == 2) {
		/* "td\nid": the required trust domain comes from the input. */
		char *nl = strchr(id, '\n');
		if (nl != NULL && (size_t)(nl - id) < sizeof tdbuf) {
			memcpy(tdbuf, id, (size_t)(nl - id));
			tdbuf[nl - id] = '\0';
			td = tdbuf;
			memmove(id, nl + 1, strlen(nl + 1) + 1);
		}
	}

	struct spiffe_id out;
	char err[256];
	int rc = spiffe_parse(id, td, &out, err, sizeof err);
	int rc2 = spiffe_parse(id, td, NULL, NULL, 0);
	FUZZ_CHECK(rc == rc2, "parse with and without out disagree: %d vs %d", rc, rc2);
	FUZZ_CHECK(rc == 0 || rc == SW_EINVAL, "unexpected code %d", rc);
	if (rc != 0) {
		FUZZ_CHECK(err[0] != '\0', "a refusal without a reason");
		goto out;
	}
	FUZZ_CHECK(strlen(id) <= SPIFFE_ID_MAX, "accepted %zu bytes", strlen(id));
	FUZZ_CHECK(spiffe_trust_domain_ok(out.trust_domain), "bad trust domain accepted");
	FUZZ_CHECK(td == NULL || strcmp(out.trust_domain, td) == 0, "wrong trust domain accepted");
	char prefix[300];
	snprintf(prefix, sizeof prefix, "spiffe://%s/", out.trust_domain);
	FUZZ_CHECK(strncmp(id, prefix, strlen(prefix)) == 0, "'%s' does not start with '%s'", id,
		   prefix);
	check_segments(id, out.trust_domain);

	if (out.kind != SPIFFE_OTHER) {
		char again[SPIFFE_ID_MAX + 1];
		int frc = spiffe_format(again, sizeof again, out.trust_domain, out.kind, out.name);
		FUZZ_CHECK(frc == 0, "parsed ID '%s' does not format back (%d)", id, frc);
		FUZZ_CHECK(strcmp(again, id) == 0, "round trip '%s' -> '%s'", id, again);
		struct spiffe_id back;
		FUZZ_CHECK(spiffe_parse(again, out.trust_domain, &back, NULL, 0) == 0, "reparse");
		FUZZ_CHECK(back.kind == out.kind && strcmp(back.name, out.name) == 0,
			   "kind/name changed in the round trip");
		if (out.kind == SPIFFE_AGENT)
			FUZZ_CHECK(strchr(out.name, '/') != NULL, "agent name without region/host");
		else
			FUZZ_CHECK(spiffe_segment_ok(out.name), "name is not one segment");
	}
out:
	/* spiffe_format never produces something spiffe_parse refuses. */
	if (strlen(id) <= SPIFFE_ID_MAX) {
		char built[SPIFFE_ID_MAX + 1];
		for (int k = SPIFFE_SERVICE; k <= SPIFFE_USER; k++)
			if (spiffe_format(built, sizeof built, "slipway", (enum spiffe_kind)k, id) == 0)
				FUZZ_CHECK(spiffe_parse(built, "slipway", NULL, NULL, 0) == 0,
					   "formatted '%s' does not parse", built);
	}
	free(id);
	return 0;
}
