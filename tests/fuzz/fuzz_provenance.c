/*
 * fuzz_provenance.c - the provenance statement parser (lib/provenance.c):
 * the artifact service parses statements from pushes and the agent parses
 * them from the artifact service before it trusts a signature over them.
 *
 * Input: the statement bytes.
 *
 * Invariants:
 *  - an accepted statement encodes back (prov_encode) to exactly the input
 *    bytes: one byte string per statement, so a signature covers exactly
 *    one meaning;
 *  - its fields are NUL-terminated, within their bounds, and parse again
 *    to the same fields;
 *  - a refusal is SW_EINVAL with a reason.
 */
#include "fuzz.h"

#include "err.h"
#include "provenance.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct prov_statement s, back;
	char err[256] = "", out[PROV_STATEMENT_MAX];
	size_t n = 0;
	int rc = prov_parse(data, size, &s, err, sizeof err);
	FUZZ_CHECK(rc == 0 || rc == SW_EINVAL, "unexpected code %d", rc);
	if (rc != 0) {
		FUZZ_CHECK(err[0] != '\0', "a refusal without a reason");
		return 0;
	}
	FUZZ_CHECK(prov_encode(&s, out, sizeof out, &n, err, sizeof err) == 0,
		   "an accepted statement does not encode: %s", err);
	FUZZ_CHECK(n == size && memcmp(out, data, size) == 0,
		   "accepted a non-canonical statement (%zu bytes, canonical %zu)", size, n);
	FUZZ_CHECK(prov_parse((const uint8_t *)out, n, &back, err, sizeof err) == 0,
		   "the canonical form does not parse");
	FUZZ_CHECK(memcmp(&s, &back, sizeof s) == 0, "fields changed in the round trip");
	FUZZ_CHECK(s.build_time_ms >= 0, "negative time accepted");
	return 0;
}
