/*
 * fuzz_sealed.c - the sealed secret bundle (lib/sealed.c): the agent opens
 * what Secrets/Fetch returns, and the contents name files it writes.
 *
 * Fixed keys: the agent's X25519 pair and the service's Ed25519 pair come
 * from constant seeds. The agent expects agent
 * spiffe://slipway/agent/eu/host-1, deployment d-1 (or any, by input) and
 * the clock at 1700000000000 ms.
 *
 * The first input byte picks a mode; the rest is its input.
 *
 *   0  The input is the box: sealed_open refuses it with SW_EINVAL (a box
 *      that does not open; nobody but the service's sealing can make one).
 *   1  The input is a packed SecretBundle that the harness signs (with the
 *      service key, another key, or a corrupted signature, by input), packs
 *      into a SignedBundle and seals to the agent. A bad signature must be
 *      refused with SW_EPERM. An opened bundle satisfies every promise of
 *      sealed_open: this agent, this deployment, not expired, not issued in
 *      the future, a 24-byte nonce, at most SEALED_MAX_ITEMS valid and
 *      unique names, each findable; and sealed_bundle_write_files into a
 *      private directory creates exactly one 0400 file per secret, holding
 *      its value, and nothing else anywhere.
 *   2  The input is a SignedBundle with whatever signature it carries,
 *      sealed to the agent: it must be refused (no forged signature
 *      verifies).
 *   3  The input describes items for sealed_build (the service side); what
 *      it builds opens to exactly those items.
 */
#include "fuzz.h"

#include "err.h"
#include "sealed.h"

#include "slipway/v1/secrets.pb-c.h"

#include <dirent.h>
#include <sodium.h>

#define AGENT "spiffe://slipway/agent/eu/host-1"
#define DEP "d-1"
#define NOW 1700000000000LL

static uint8_t agent_pk[32], *agent_sk, sign_pk[32], *sign_sk, other_pk[32], *other_sk;
static char key_id[SEALED_KEY_ID_MAX];

static void init(void)
{
	if (agent_sk != NULL)
		return;
	if (sealed_init() != 0)
		abort();
	uint8_t seed[32];
	agent_sk = sodium_malloc(32);
	sign_sk = sodium_malloc(64);
	other_sk = sodium_malloc(64);
	if (agent_sk == NULL || sign_sk == NULL || other_sk == NULL)
		abort();
	memset(seed, 0x11, sizeof seed);
	crypto_box_seed_keypair(agent_pk, agent_sk, seed);
	memset(seed, 0x22, sizeof seed);
	crypto_sign_seed_keypair(sign_pk, sign_sk, seed);
	memset(seed, 0x33, sizeof seed);
	crypto_sign_seed_keypair(other_pk, other_sk, seed);
	sealed_key_id(sign_pk, key_id);
}

static int open_box(const uint8_t *box, size_t len, int any_dep, struct sealed_bundle **b)
{
	struct sealed_expect x = { AGENT, any_dep ? NULL : DEP, sign_pk, NOW };
	char err[512];
	return sealed_open(box, len, agent_pk, agent_sk, &x, b, err, sizeof err);
}

/* Packs a SignedBundle around bundle[blen] and seals it to the agent.
 * Returns the new box (free()) and its length. */
static uint8_t *seal(const uint8_t *bundle, size_t blen, const uint8_t *sig, size_t siglen,
		     size_t *len)
{
	Slipway__V1__SignedBundle s = SLIPWAY__V1__SIGNED_BUNDLE__INIT;
	s.bundle.data = (uint8_t *)bundle;
	s.bundle.len = blen;
	s.signature.data = (uint8_t *)sig;
	s.signature.len = siglen;
	s.key_id = key_id;
	size_t pl = slipway__v1__signed_bundle__get_packed_size(&s);
	uint8_t *plain = malloc(pl + 1), *box = malloc(pl + SEALED_BOX_OVERHEAD);
	FUZZ_CHECK(plain != NULL && box != NULL, "malloc");
	slipway__v1__signed_bundle__pack(&s, plain);
	FUZZ_CHECK(crypto_box_seal(box, plain, pl, agent_pk) == 0, "seal");
	free(plain);
	*len = pl + SEALED_BOX_OVERHEAD;
	return box;
}

static void check_files(const struct sealed_bundle *b)
{
	char dir[512];
	static unsigned n;
	snprintf(dir, sizeof dir, "%s/s%u", fuzz_tmpdir(), n++);
	FUZZ_CHECK(mkdir(dir, 0700) == 0, "mkdir %s", dir);
	char err[512];
	int rc = sealed_bundle_write_files(b, dir, 0, err, sizeof err);
	size_t count = sealed_bundle_count(b);
	DIR *d = opendir(dir);
	FUZZ_CHECK(d != NULL, "opendir");
	size_t found = 0;
	struct dirent *e;
	while ((e = readdir(d)) != NULL) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		FUZZ_CHECK(rc == 0, "files left behind after a failure: %s", e->d_name);
		struct sealed_item it;
		FUZZ_CHECK(sealed_bundle_find(b, e->d_name, &it) == 0, "stray file '%s'", e->d_name);
		char path[1024];
		snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
		struct stat st;
		FUZZ_CHECK(lstat(path, &st) == 0 && S_ISREG(st.st_mode) && (st.st_mode & 07777) == 0400 &&
				   (size_t)st.st_size == it.len,
			   "file %s: mode 0%o size %lld", path, (unsigned)st.st_mode,
			   (long long)st.st_size);
		if (it.len > 0) {
			uint8_t *buf = malloc(it.len);
			FILE *f = fopen(path, "rb");
			FUZZ_CHECK(buf != NULL && f != NULL && fread(buf, 1, it.len, f) == it.len &&
					   memcmp(buf, it.value, it.len) == 0,
				   "file %s does not hold the value", path);
			fclose(f);
			free(buf);
		}
		found++;
	}
	closedir(d);
	FUZZ_CHECK(rc != 0 || found == count, "%zu files for %zu secrets", found, count);
	fuzz_rmtree(dir);
	/* Nothing appeared next to the directory. */
	d = opendir(fuzz_tmpdir());
	while ((e = readdir(d)) != NULL)
		FUZZ_CHECK(e->d_name[0] == '.', "'%s' written outside the secrets directory",
			   e->d_name);
	closedir(d);
}

static void check_open(const struct sealed_bundle *b, int any_dep)
{
	FUZZ_CHECK(strcmp(sealed_bundle_agent(b), AGENT) == 0, "opened a bundle for agent %s",
		   sealed_bundle_agent(b));
	FUZZ_CHECK(any_dep || strcmp(sealed_bundle_deployment(b), DEP) == 0,
		   "opened a bundle for deployment %s", sealed_bundle_deployment(b));
	FUZZ_CHECK(sealed_bundle_expires(b) > NOW, "opened an expired bundle");
	FUZZ_CHECK(sealed_bundle_issued(b) <= NOW + SEALED_CLOCK_SKEW_MS,
		   "opened a bundle issued in the future");
	FUZZ_CHECK(sealed_bundle_nonce(b) != NULL, "no nonce");
	size_t n = sealed_bundle_count(b);
	FUZZ_CHECK(n <= SEALED_MAX_ITEMS, "%zu secrets", n);
	for (size_t i = 0; i < n; i++) {
		struct sealed_item it, again;
		FUZZ_CHECK(sealed_bundle_item(b, i, &it) == 0, "item %zu", i);
		FUZZ_CHECK(sealed_name_ok(it.name), "secret name '%s'", it.name);
		FUZZ_CHECK(sealed_bundle_find(b, it.name, &again) == 0 && again.value == it.value,
			   "find '%s' gives another secret", it.name);
	}
	struct sealed_item past;
	FUZZ_CHECK(sealed_bundle_item(b, n, &past) == SW_ERANGE, "item past the end");
	check_files(b);
}

static void mode_signed(struct fz *f)
{
	uint8_t how = fz_u8(f);
	int any_dep = how & 1;
	int signer = (how >> 1) % 3; /* 0 service key, 1 other key, 2 corrupted */
	uint8_t sig[64];
	crypto_sign_detached(sig, NULL, f->p, f->n, signer == 1 ? other_sk : sign_sk);
	if (signer == 2)
		sig[fz_u8(f) % 64] ^= (uint8_t)(1u << (how >> 5));
	size_t len;
	uint8_t *box = seal(f->p, f->n, sig, sizeof sig, &len);
	struct sealed_bundle *b = NULL;
	int rc = open_box(box, len, any_dep, &b);
	free(box);
	if (signer != 0) {
		FUZZ_CHECK(rc == SW_EPERM, "a bundle with a bad signature gave %d", rc);
		FUZZ_CHECK(b == NULL, "bundle returned on failure");
		return;
	}
	if (rc != 0) {
		FUZZ_CHECK(b == NULL, "bundle returned on failure");
		return;
	}
	check_open(b, any_dep);
	sealed_bundle_free(b);
}

static void mode_build(struct fz *f)
{
	struct sealed_item items[8];
	char names[8][SEALED_NAME_MAX + 1];
	uint8_t values[8][64];
	size_t n = fz_u8(f) % 9;
	for (size_t i = 0; i < n; i++) {
		fz_str(f, names[i], 40);
		items[i].name = names[i];
		items[i].version = fz_u32(f);
		items[i].len = fz_u8(f) % 65;
		for (size_t k = 0; k < items[i].len; k++)
			values[i][k] = fz_u8(f);
		items[i].value = values[i];
	}
	struct sealed_build_req r = {
		.deployment_id = DEP, .agent = AGENT, .expires_unix_ms = NOW + 60000,
		.issued_unix_ms = NOW - 1000, .items = items, .nitems = n, .sign_sk = sign_sk,
		.key_id = key_id, .agent_pk = agent_pk,
	};
	size_t wl = 0, ol = 0, len = 0;
	char err[512];
	if (sealed_build_size(&r, &wl, &ol, err, sizeof err) != 0)
		return;
	uint8_t *work = sodium_malloc(wl ? wl : 1), *out = malloc(ol);
	FUZZ_CHECK(work != NULL && out != NULL, "alloc");
	FUZZ_CHECK(sealed_build(&r, work, wl, out, ol, &len, err, sizeof err) == 0, "build: %s",
		   err);
	sodium_free(work);
	struct sealed_bundle *b = NULL;
	int rc = open_box(out, len, 0, &b);
	FUZZ_CHECK(rc == 0, "a built bundle does not open: %d", rc);
	FUZZ_CHECK(sealed_bundle_count(b) == n, "%zu of %zu secrets", sealed_bundle_count(b), n);
	for (size_t i = 0; i < n; i++) {
		struct sealed_item it;
		FUZZ_CHECK(sealed_bundle_item(b, i, &it) == 0 && strcmp(it.name, names[i]) == 0 &&
				   it.version == items[i].version && it.len == items[i].len &&
				   (it.len == 0 || memcmp(it.value, values[i], it.len) == 0),
			   "secret %zu changed on the way", i);
	}
	check_open(b, 0);
	sealed_bundle_free(b);
	/* One flipped byte anywhere and it does not open. */
	size_t at = fz_u32(f) % len;
	out[at] ^= (uint8_t)(1u << (fz_u8(f) % 8));
	FUZZ_CHECK(open_box(out, len, 0, &b) == SW_EINVAL && b == NULL,
		   "a box with byte %zu changed opened", at);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	init();
	struct fz f = { data, size };
	uint8_t mode = fz_u8(&f) % 4;
	struct sealed_bundle *b = NULL;
	if (mode == 0) {
		int rc = open_box(f.p, f.n, 1, &b);
		FUZZ_CHECK(rc == SW_EINVAL && b == NULL, "an arbitrary box gave %d", rc);
	} else if (mode == 1) {
		mode_signed(&f);
	} else if (mode == 2) {
		size_t len;
		uint8_t *box = NULL;
		uint8_t *plain = malloc(f.n + SEALED_BOX_OVERHEAD + 1);
		box = plain;
		FUZZ_CHECK(box != NULL, "malloc");
		FUZZ_CHECK(crypto_box_seal(box, f.p, f.n, agent_pk) == 0, "seal");
		len = f.n + SEALED_BOX_OVERHEAD;
		int rc = open_box(box, len, 1, &b);
		free(box);
		FUZZ_CHECK(rc != 0 && b == NULL, "a SignedBundle made by the input opened");
	} else {
		mode_build(&f);
	}
	return 0;
}
