/*
 * fuzz_digest.c - the one spelling of a digest and the hashing around it
 * (lib/digest.c, lib/hash.c, the agent's agent_digest_ok): digests arrive
 * in push headers, deployment requests, tasks and pull requests.
 *
 * The first input byte picks a mode; the rest is the input.
 *
 *   0  digest_parse accepts exactly "sha256:" + 64 lower-case hex digits
 *      (checked against a reference), agrees with agent_digest_ok, and
 *      digest_format gives the accepted text back; digest_unhex and
 *      hash_unhex agree, and hex round trips are lossless.
 *   1  streaming SHA-256 and MD5 over input-chosen pieces equal the
 *      one-shot hash; digest_sha256_fd over a memfd with an input-chosen
 *      limit gives the same hash and size, or SW_ELIMIT exactly when the
 *      data is longer than a non-zero limit.
 */
#include "fuzz.h"

#include "../../services/agent/agent.h"
#include "digest.h"
#include "err.h"
#include "hash.h"

#include <ctype.h>
#include <openssl/evp.h>
#include <sys/mman.h>

static int ref_ok(const char *s)
{
	if (strncmp(s, "sha256:", 7) != 0 || strlen(s) != 71)
		return 0;
	for (int i = 7; i < 71; i++)
		if (!isdigit((unsigned char)s[i]) && !(s[i] >= 'a' && s[i] <= 'f'))
			return 0;
	return 1;
}

static void mode_text(const char *s, size_t len)
{
	uint8_t sha[DIGEST_SHA256_LEN];
	char again[DIGEST_STR_LEN], hex[AGENT_HEX_LEN + 1];
	int ok = digest_parse(s, sha) == 0;
	FUZZ_CHECK(ok == (digest_parse(s, NULL) == 0), "validate-only disagrees");
	FUZZ_CHECK(ok == ref_ok(s), "digest_parse('%.80s') = %d, reference %d", s, ok, ref_ok(s));
	FUZZ_CHECK(ok == agent_digest_ok(s, hex), "agent_digest_ok disagrees on '%.80s'", s);
	if (ok) {
		digest_format(sha, again);
		FUZZ_CHECK(strcmp(again, s) == 0, "'%s' formats back as '%s'", s, again);
		FUZZ_CHECK(strcmp(hex, s + 7) == 0, "agent hex");
	}

	/* Hex of any even length up to 64 bytes. */
	size_t n = strlen(s) / 2;
	if (n > 64)
		return;
	uint8_t a[64], b[64];
	int ra = digest_unhex(s, a, n), rb = hash_unhex(s, b, n);
	FUZZ_CHECK((ra == 0) == (rb == 0), "digest_unhex %d, hash_unhex %d", ra, rb);
	if (ra == 0) {
		FUZZ_CHECK(memcmp(a, b, n) == 0, "unhex values differ");
		char h1[129], h2[129];
		digest_hex(a, n, h1);
		hash_hex(a, n, h2);
		FUZZ_CHECK(strcmp(h1, h2) == 0, "hex spellings differ");
		FUZZ_CHECK(strlen(s) == 2 * n, "odd length accepted");
		for (size_t i = 0; i < 2 * n; i++)
			FUZZ_CHECK(h1[i] == tolower((unsigned char)s[i]), "hex round trip");
	}
	(void)len;
}

static void one_shot(const EVP_MD *md, const uint8_t *p, size_t n, uint8_t *out)
{
	unsigned int len = 0;
	FUZZ_CHECK(EVP_Digest(p, n, out, &len, md, NULL) == 1, "EVP_Digest");
}

static void mode_stream(struct fz *f)
{
	uint64_t limit = fz_u8(f) % 4 == 0 ? 0 : fz_u32(f) % 4096;
	uint8_t cuts[8];
	for (int i = 0; i < 8; i++)
		cuts[i] = fz_u8(f);
	const uint8_t *p = f->p;
	size_t n = f->n;

	for (int alg = 0; alg < 2; alg++) {
		struct digest d = { 0 };
		uint8_t got[32], want[32];
		FUZZ_CHECK(digest_init(&d, alg ? DIGEST_MD5 : DIGEST_SHA256) == 0, "init");
		size_t off = 0;
		for (int i = 0; i < 8 && off < n; i++) {
			size_t piece = cuts[i] % (n - off + 1);
			digest_update(&d, p + off, piece);
			off += piece;
		}
		digest_update(&d, p + off, n - off);
		int len = digest_final(&d, got);
		digest_cleanup(&d);
		digest_cleanup(&d); /* twice is fine */
		one_shot(alg ? EVP_md5() : EVP_sha256(), p, n, want);
		FUZZ_CHECK(len == (alg ? DIGEST_MD5_LEN : DIGEST_SHA256_LEN), "length %d", len);
		FUZZ_CHECK(memcmp(got, want, (size_t)len) == 0, "streamed hash differs");
		if (!alg) {
			uint8_t h[32];
			hash_sha256(p, n / 2, p + n / 2, n - n / 2, NULL, 0, h);
			FUZZ_CHECK(memcmp(h, want, 32) == 0, "hash_sha256 differs");
		}
	}

	int fd = memfd_create("fuzz-digest", MFD_CLOEXEC);
	FUZZ_CHECK(fd >= 0, "memfd_create");
	FUZZ_CHECK(n == 0 || write(fd, p, n) == (ssize_t)n, "write");
	FUZZ_CHECK(lseek(fd, 0, SEEK_SET) == 0, "lseek");
	uint8_t sha[32], want[32];
	uint64_t got_size = 0;
	char err[128];
	int rc = digest_sha256_fd(fd, limit, sha, &got_size, err, sizeof err);
	close(fd);
	if (limit > 0 && n > limit) {
		FUZZ_CHECK(rc == SW_ELIMIT, "%zu bytes with limit %llu: %d", n,
			   (unsigned long long)limit, rc);
	} else {
		FUZZ_CHECK(rc == 0, "digest_sha256_fd: %d %s", rc, err);
		one_shot(EVP_sha256(), p, n, want);
		FUZZ_CHECK(got_size == n && memcmp(sha, want, 32) == 0, "fd hash differs");
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = { data, size };
	if (fz_u8(&f) & 1) {
		mode_stream(&f);
	} else {
		size_t len;
		char *s = fz_rest(&f, &len);
		mode_text(s, len);
		free(s);
	}
	return 0;
}
