/*
 * fuzz_artifact.c - what the artifact service validates before anything
 * reaches SQL, S3 keys or logs (services/artifact/names.c) and its trusted
 * builder keys (keys.c).
 *
 * The first input byte picks a mode; the rest is its input.
 *
 *   0  A packed PushRequest. Its header goes through the same checks as
 *      rpc.c's check_header (art_app_ok, art_version_ok,
 *      art_media_type_ok, digest_parse, art_provenance_ok). An accepted
 *      header matches reference patterns written from art.h and the
 *      proto: the app is [a-z0-9][a-z0-9-]{0,62}; the version
 *      [A-Za-z0-9][A-Za-z0-9._+-]{0,127} without ".." (so neither can
 *      climb out of an S3 prefix or a path); the media type is
 *      token/token; the digest's S3 key is exactly "blobs/sha256/<64 hex>";
 *      provenance text is printable ASCII within its caps, the commit hex,
 *      the signature 64 bytes when present, a key name only with one.
 *      Page tokens (art_token_id, art_token_app) read back what they
 *      format.
 *   1  A trusted-keys file (art_keys_parse). When accepted, with a fixed
 *      builder key K: a signature by K over a digest verifies for an app
 *      exactly when the file lists K's public key for that app or "*"
 *      (under the requested key name, if any; checked against a reader of
 *      the file written here), never with one bit flipped, and never as
 *      another key's; art_keys_required(app) holds exactly when a
 *      "require" line names the app or "*".
 */
#include "fuzz.h"

#include "../../services/artifact/art.h"
#include "digest.h"
#include "err.h"

#include <sodium.h>

static int lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int alnum(char c)
{
	return lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

static int ref_app(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 63 || !lower_alnum(s[0]))
		return 0;
	for (size_t i = 1; i < n; i++)
		if (!lower_alnum(s[i]) && s[i] != '-')
			return 0;
	return 1;
}

static int ref_version(const char *s)
{
	size_t n = strlen(s);
	if (n < 1 || n > 128 || !alnum(s[0]) || strstr(s, "..") != NULL)
		return 0;
	for (size_t i = 1; i < n; i++)
		if (!alnum(s[i]) && !strchr("._+-", s[i]))
			return 0;
	return 1;
}

static int printable(const char *s, size_t max)
{
	if (strlen(s) > max)
		return 0;
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7e)
			return 0;
	return 1;
}

static void check_provenance(const Slipway__V1__Provenance *p)
{
	if (p == NULL)
		return;
	FUZZ_CHECK(printable(p->repository, 512), "repository");
	size_t cn = strlen(p->commit);
	FUZZ_CHECK(cn == 0 || (cn >= 7 && cn <= 64), "commit length %zu", cn);
	for (size_t i = 0; i < cn; i++)
		FUZZ_CHECK(strchr("0123456789abcdef", p->commit[i]) != NULL, "commit not hex");
	FUZZ_CHECK(printable(p->ref, 256) && strchr(p->ref, ' ') == NULL, "ref");
	FUZZ_CHECK(printable(p->build_id, 256) && printable(p->builder, 256), "build fields");
	FUZZ_CHECK(p->build_time_unix_ms >= 0, "build time");
	FUZZ_CHECK(p->signature.len == 0 || p->signature.len == 64, "signature length");
	size_t kn = strlen(p->signing_key);
	FUZZ_CHECK(kn <= 64, "signing key name length");
	for (size_t i = 0; i < kn; i++)
		FUZZ_CHECK(alnum(p->signing_key[i]) || strchr("._-", p->signing_key[i]),
			   "signing key name");
	FUZZ_CHECK(kn == 0 || p->signature.len == 64, "a key name without a signature");
}

static void check_tokens(const char *s)
{
	int64_t id;
	if (art_token_id(s, &id) == 0 && s[0] != '\0') {
		FUZZ_CHECK(id > 0, "token id %lld", (long long)id);
		char again[32];
		int64_t id2;
		snprintf(again, sizeof again, "r%lld", (long long)id);
		FUZZ_CHECK(art_token_id(again, &id2) == 0 && id2 == id, "token id round trip");
	}
	char app[ART_APP_MAX + 1];
	if (art_token_app(s, app) == 0 && s[0] != '\0') {
		FUZZ_CHECK(ref_app(app) && strcmp(app, s + 1) == 0, "token app '%s'", app);
	}
}

static void mode_push(const uint8_t *p, size_t n)
{
	Slipway__V1__PushRequest *req = slipway__v1__push_request__unpack(NULL, n, p);
	if (req == NULL)
		return;
	if (req->msg_case != SLIPWAY__V1__PUSH_REQUEST__MSG_HEADER || req->header == NULL)
		goto out;
	const Slipway__V1__PushHeader *h = req->header;
	char why[256];
	check_tokens(h->app);
	check_tokens(h->version);
	/* rpc.c check_header, in order. */
	if (!name_app_ok(h->app) || !name_version_ok(h->version) ||
	    (h->media_type[0] != '\0' && !art_media_type_ok(h->media_type)) ||
	    (h->expected_digest[0] != '\0' && digest_parse(h->expected_digest, NULL) != 0) ||
	    art_provenance_ok(h->provenance, why, sizeof why) != 0) {
		FUZZ_CHECK(!(ref_app(h->app) && ref_version(h->version) &&
			     h->media_type[0] == '\0' && h->expected_digest[0] == '\0' &&
			     h->provenance == NULL),
			   "a plain header was refused");
		goto out;
	}
	FUZZ_CHECK(ref_app(h->app), "app '%s'", h->app);
	FUZZ_CHECK(ref_version(h->version), "version '%s'", h->version);
	FUZZ_CHECK(name_app_ok(h->app), "an app name is not a valid environment name");
	if (h->media_type[0] != '\0') {
		const char *mt = h->media_type;
		FUZZ_CHECK(strlen(mt) <= 127, "media type length");
		const char *slash = strchr(mt, '/');
		FUZZ_CHECK(slash != NULL && slash != mt && slash[1] != '\0' &&
				   strchr(slash + 1, '/') == NULL,
			   "media type '%s'", mt);
		for (const char *q = mt; *q; q++)
			FUZZ_CHECK(q == slash || alnum(*q) || strchr("!#$&^_.+-", *q),
				   "media type byte 0x%02x", (unsigned char)*q);
	}
	if (h->expected_digest[0] != '\0') {
		char key[ART_KEY_LEN];
		art_blob_key(h->expected_digest, key);
		FUZZ_CHECK(strlen(key) == 13 + 64 && strncmp(key, "blobs/sha256/", 13) == 0 &&
				   strspn(key + 13, "0123456789abcdef") == 64,
			   "blob key '%s'", key);
	}
	check_provenance(h->provenance);
out:
	slipway__v1__push_request__free_unpacked(req, NULL);
}

/* ---- trusted keys ---- */

static uint8_t k_pk[32], k_sk[64], l_pk[32], l_sk[64];

/* Splits s in place into at most max words separated by blanks. */
static int words(char *s, char **w, int max)
{
	int n = 0;
	while (n < max) {
		s += strspn(s, " \t\r");
		if (*s == '\0')
			break;
		w[n++] = s;
		s += strcspn(s, " \t\r");
		if (*s != '\0')
			*s++ = '\0';
	}
	return n;
}

/* Whether the file lists pk under (app or "*") and name (any when ""):
 * read here independently of keys.c. */
static int file_trusts(const char *text, const char *app, const char *name, const uint8_t *pk)
{
	const char *line = text;
	while (line != NULL && *line) {
		const char *nl = strchr(line, '\n');
		size_t len = nl ? (size_t)(nl - line) : strlen(line);
		char buf[512];
		if (len < sizeof buf) {
			memcpy(buf, line, len);
			buf[len] = '\0';
			char *hash = strchr(buf, '#');
			if (hash)
				*hash = '\0';
			char *w[5] = { 0 };
			int n = words(buf, w, 5);
			uint8_t got[32];
			size_t gl = 0;
			if (n == 4 && strcmp(w[0], "key") == 0 &&
			    (strcmp(w[1], "*") == 0 || strcmp(w[1], app) == 0) &&
			    (name[0] == '\0' || strcmp(w[2], name) == 0) &&
			    sodium_base642bin(got, 32, w[3], strlen(w[3]), NULL, &gl, NULL,
					      sodium_base64_VARIANT_ORIGINAL) == 0 &&
			    gl == 32 && memcmp(got, pk, 32) == 0)
				return 1;
		}
		line = nl ? nl + 1 : NULL;
	}
	return 0;
}

static int file_requires(const char *text, const char *app)
{
	const char *p = text;
	while (p != NULL && *p) {
		const char *nl = strchr(p, '\n');
		size_t len = nl ? (size_t)(nl - p) : strlen(p);
		char buf[512];
		if (len < sizeof buf) {
			memcpy(buf, p, len);
			buf[len] = '\0';
			char *hash = strchr(buf, '#'), *w[3];
			if (hash)
				*hash = '\0';
			if (words(buf, w, 3) == 2 && strcmp(w[0], "require") == 0 &&
			    (strcmp(w[1], "*") == 0 || strcmp(w[1], app) == 0))
				return 1;
		}
		p = nl ? nl + 1 : NULL;
	}
	return 0;
}

static void mode_keys(struct fz *f)
{
	static int init;
	if (!init) {
		uint8_t seed[32];
		if (sodium_init() < 0)
			abort();
		memset(seed, 0x44, 32);
		crypto_sign_seed_keypair(k_pk, k_sk, seed);
		memset(seed, 0x55, 32);
		crypto_sign_seed_keypair(l_pk, l_sk, seed);
		init = 1;
	}
	char name[80];
	fz_str(f, name, 70);
	uint8_t bit = fz_u8(f);
	char *text = fz_rest(f, NULL);
	struct art_keys *k = NULL;
	char err[512];
	if (art_keys_parse(text, "fuzz", &k, err, sizeof err) != 0)
		goto out;
	static const char *const apps[] = { "web", "api", "x" };
	const char *digest = "sha256:5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03";
	uint8_t sig[64], lsig[64];
	crypto_sign_detached(sig, NULL, (const uint8_t *)digest, strlen(digest), k_sk);
	crypto_sign_detached(lsig, NULL, (const uint8_t *)digest, strlen(digest), l_sk);
	for (size_t i = 0; i < sizeof apps / sizeof *apps; i++) {
		char used[80], why[256];
		int ok = art_keys_verify(k, apps[i], digest, sig, 64, name, used, sizeof used, why,
					 sizeof why) == 0;
		int want = file_trusts(text, apps[i], name, k_pk);
		FUZZ_CHECK(ok == want, "K's signature for %s (key '%s'): verify %d, file says %d",
			   apps[i], name, ok, want);
		if (ok)
			FUZZ_CHECK(file_trusts(text, apps[i], used, k_pk),
				   "verified with key '%s', which is not K", used);
		uint8_t bad[64];
		memcpy(bad, sig, 64);
		bad[bit % 64] ^= (uint8_t)(1u << (bit % 8));
		FUZZ_CHECK(art_keys_verify(k, apps[i], digest, bad, 64, name, used, sizeof used, why,
					   sizeof why) != 0,
			   "a corrupted signature verified");
		if (art_keys_verify(k, apps[i], digest, lsig, 64, name, used, sizeof used, why,
				    sizeof why) == 0)
			FUZZ_CHECK(file_trusts(text, apps[i], used, l_pk),
				   "L's signature verified as key '%s'", used);
		FUZZ_CHECK(art_keys_required(k, apps[i]) == file_requires(text, apps[i]),
			   "required(%s)", apps[i]);
	}
	art_keys_free(k);
out:
	free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = { data, size };
	if (fz_u8(&f) & 1)
		mode_keys(&f);
	else
		mode_push(f.p, f.n);
	return 0;
}
