/*
 * fuzz_evidence.c - the evidence bundle verifier (lib/evidence.c): what
 * `slipway evidence verify` reads from a file an auditor was handed, so
 * anything at all. The input is the bundle; the verifier key is fixed
 * (named "fuzz", seed 32 bytes of 0x42: the key fuzz_note.c signs with),
 * so a seed may carry notes that verify and reach the entry, proof and
 * view checks. Invariants: no crash, no leak (under the sanitizers), and a
 * failure always names its reason.
 */
#include "fuzz.h"

#include "auditstate.h"
#include "err.h"
#include "evidence.h"
#include "hash.h"
#include "note.h"

#include <sodium.h>

static struct note_verifier verifier;
static int ready;

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[1024];
	if (!ready) {
		if (sodium_init() < 0)
			abort();
		uint8_t seed[32], sk[64], h[32], mid[2] = { 0x0a, 0x01 };
		memset(seed, 0x42, sizeof seed);
		crypto_sign_seed_keypair(verifier.pub, sk, seed);
		hash_sha256("fuzz", 4, mid, 2, verifier.pub, 32, h);
		memcpy(verifier.key_id, h, 4);
		snprintf(verifier.name, sizeof verifier.name, "fuzz");
		ready = 1;
	}
	struct auditstate st;
	struct auditstate_cp cp;
	memset(&st, 0, sizeof st);
	memset(&cp, 0, sizeof cp);
	cp.size = 3;
	st.cps = &cp;
	st.n = st.cap = 1;
	struct evidence_verify_opts o = { .key = &verifier, .state = size % 2 ? &st : NULL };
	struct evidence_report r;
	err[0] = '\0';
	int rc = evidence_verify((const char *)data, size, &o, &r, err, sizeof err);
	FUZZ_CHECK(rc == 0 || rc == SW_EINVAL || rc == SW_ENOMEM, "unexpected code %d", rc);
	FUZZ_CHECK(rc == 0 || err[0] != '\0', "a failure without a reason");
	return 0;
}
