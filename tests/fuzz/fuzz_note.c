/*
 * fuzz_note.c - C2SP signed notes, checkpoints and note keys (lib/note.c):
 * what `slipway audit verify` and the audit service's integrity check read
 * back from S3 and from the network.
 *
 * The first input byte picks a mode; the rest is its input.
 *
 *   0  note_verify on arbitrary text with a fixed verifier. When it
 *      accepts, the returned body is a prefix of the note that ends in
 *      '\n', and the note holds exactly the signature line note_sign makes
 *      for that body (Ed25519 is deterministic: no other encoding of a
 *      signature, no other signature, may verify).
 *   1  sign a body made from the input, verify it (must pass and give the
 *      body back), then flip one byte anywhere in the note (must fail), and
 *      append a line signed by another key (must still pass).
 *   2  note_checkpoint_parse: an accepted body formats back
 *      (note_checkpoint_body) to exactly its first three lines.
 *   3  verifier and signer key strings: an accepted key formats back to
 *      the same text.
 */
#include "fuzz.h"

#include "err.h"
#include "hash.h"
#include "note.h"

#include <ctype.h>
#include <sodium.h>

static struct note_signer *signer;
static struct note_verifier verifier;

/* A fixed signer named "fuzz" whose seed is 32 bytes of 0x42, so saved
 * corpus notes stay valid from run to run. */
static void init(void)
{
	if (signer != NULL)
		return;
	if (sodium_init() < 0)
		abort();
	uint8_t seed[32], pk[32], sk[64], raw[33], id[4], h[32];
	memset(seed, 0x42, sizeof seed);
	crypto_sign_seed_keypair(pk, sk, seed);
	uint8_t mid[2] = { 0x0a, 0x01 };
	hash_sha256("fuzz", 4, mid, 2, pk, 32, h);
	memcpy(id, h, 4);
	char hex[9], b64[64], text[160];
	hash_hex(id, 4, hex);
	raw[0] = 0x01;
	memcpy(raw + 1, seed, 32);
	sodium_bin2base64(b64, sizeof b64, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
	snprintf(text, sizeof text, "PRIVATE+KEY+fuzz+%s+%s", hex, b64);
	char err[128];
	if (note_signer_parse(text, &signer, err, sizeof err) != 0) {
		fprintf(stderr, "fuzz signer: %s\n", err);
		abort();
	}
	note_signer_verifier(signer, &verifier);
}

/* 1 when the note holds the line note_sign would write for body. */
static int has_own_signature(const char *note, const char *body)
{
	static char signed_note[NOTE_MAX + 512];
	if (note_sign(signer, body, signed_note, sizeof signed_note) != 0)
		return 0;
	const char *line = signed_note + strlen(body) + 1; /* after the blank line */
	const char *p = strstr(note, "\n\n");
	if (p == NULL)
		return 0;
	for (p += 2; *p;) {
		const char *eol = strchr(p, '\n');
		size_t n = eol ? (size_t)(eol - p) + 1 : strlen(p);
		if (n == strlen(line) && memcmp(p, line, n) == 0)
			return 1;
		p += n;
	}
	return 0;
}

static void mode_verify(const char *note)
{
	static char body[NOTE_MAX + 2];
	char err[256];
	if (note_verify(&verifier, note, body, sizeof body, err, sizeof err) != 0)
		return;
	size_t bl = strlen(body);
	FUZZ_CHECK(bl > 0 && body[bl - 1] == '\n', "body does not end in a newline");
	FUZZ_CHECK(strncmp(note, body, bl) == 0, "body is not the note's prefix");
	FUZZ_CHECK(has_own_signature(note, body),
		   "a note verified without the one valid signature line for its body");
}

static void mode_roundtrip(struct fz *f)
{
	static char body[NOTE_MAX + 1], note[NOTE_MAX + 1024], out[NOTE_MAX + 2];
	uint32_t where = fz_u32(f);
	uint8_t flip = fz_u8(f);
	size_t len;
	char *in = fz_rest(f, &len);
	size_t bl = strlen(in);
	if (bl + 1 >= NOTE_MAX)
		bl = NOTE_MAX - 2;
	memcpy(body, in, bl);
	free(in);
	if (bl == 0 || body[bl - 1] != '\n')
		body[bl++] = '\n';
	body[bl] = '\0';
	char err[256];
	int plain = body[0] != '\n' && strstr(body, "\n\n") == NULL;
	int src = note_sign(signer, body, note, sizeof note);
	/* A body with a blank line would verify as its first part: refused. */
	FUZZ_CHECK((src == 0) == plain, "note_sign %d on a body %s a blank line", src,
		   plain ? "without" : "with");
	if (src != 0)
		return;
	int rc = note_verify(&verifier, note, out, sizeof out, err, sizeof err);
	FUZZ_CHECK(rc == 0, "a freshly signed note does not verify: %s", err);
	FUZZ_CHECK(strcmp(out, body) == 0, "verify returned another body");

	/* Any one changed byte breaks it. */
	size_t nl = strlen(note);
	char saved = note[where % nl];
	note[where % nl] = (char)(saved ^ (flip ? flip : 1));
	if (note[where % nl] != '\0')
		FUZZ_CHECK(note_verify(&verifier, note, out, sizeof out, err, sizeof err) != 0,
			   "verify accepted a note with byte %zu changed", (size_t)(where % nl));
	note[where % nl] = saved;

	/* Another signer's line is ignored. */
	char extra[256];
	snprintf(extra, sizeof extra, "\xe2\x80\x94 other AAAAAAAA%s\n", "BBBB");
	if (nl + strlen(extra) < sizeof note) {
		memcpy(note + nl, extra, strlen(extra) + 1);
		FUZZ_CHECK(note_verify(&verifier, note, out, sizeof out, err, sizeof err) == 0,
			   "another signer's line broke verification: %s", err);
		FUZZ_CHECK(strcmp(out, body) == 0, "another body");
	}
}

static void mode_checkpoint(const char *body)
{
	char origin[256], again[512], err[256];
	uint64_t size;
	uint8_t root[32];
	if (note_checkpoint_parse(body, origin, sizeof origin, &size, root, err, sizeof err) != 0)
		return;
	FUZZ_CHECK(note_checkpoint_body(origin, size, root, again, sizeof again) == 0, "format");
	FUZZ_CHECK(strncmp(body, again, strlen(again)) == 0,
		   "checkpoint '%.100s' formats back as '%.100s'", body, again);
	FUZZ_CHECK(strchr(origin, '\n') == NULL, "origin holds a newline");
}

/* a and b[0..n) are the same key text; the 8-digit key id (the field
 * after the first '+') may differ in case. */
static int same_key_text(const char *a, const char *b, size_t n)
{
	if (strlen(a) != n)
		return 0;
	const char *plus = memchr(b, '+', n);
	size_t hex_at = plus ? (size_t)(plus - b) + 1 : n;
	for (size_t i = 0; i < n; i++) {
		int in_hex = i >= hex_at && i < hex_at + 8;
		if (in_hex ? tolower((unsigned char)a[i]) != tolower((unsigned char)b[i])
			   : a[i] != b[i])
			return 0;
	}
	return 1;
}

static void mode_keys(const char *text)
{
	struct note_verifier v;
	char err[256], again[512];
	size_t tl = strcspn(text, "\r\n");
	if (note_verifier_parse(text, &v, err, sizeof err) == 0) {
		FUZZ_CHECK(note_name_ok(v.name), "bad name accepted");
		FUZZ_CHECK(note_verifier_format(&v, again, sizeof again) == 0, "format");
		FUZZ_CHECK(same_key_text(again, text, tl), "verifier '%.*s' formats back as '%s'",
			   (int)tl, text, again);
	}
	struct note_signer *s = NULL;
	if (note_signer_parse(text, &s, err, sizeof err) == 0) {
		FUZZ_CHECK(note_signer_format(s, again, sizeof again) == 0, "format");
		/* "PRIVATE+KEY+name+id+key\n": compare from the name on. */
		FUZZ_CHECK(again[strlen(again) - 1] == '\n', "no newline");
		again[strlen(again) - 1] = '\0';
		FUZZ_CHECK(tl > 12 && same_key_text(again + 12, text + 12, tl - 12) &&
				   strncmp(again, text, 12) == 0,
			   "signer key '%.*s' formats back as '%s'", (int)tl, text, again);
		struct note_verifier sv;
		note_signer_verifier(s, &sv);
		char note[256], out[256];
		FUZZ_CHECK(note_sign(s, "x\n", note, sizeof note) == 0, "sign");
		FUZZ_CHECK(note_verify(&sv, note, out, sizeof out, err, sizeof err) == 0,
			   "a parsed signer's note does not verify: %s", err);
		note_signer_free(s);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	init();
	struct fz f = { data, size };
	uint8_t mode = fz_u8(&f) % 4;
	if (mode == 1) {
		mode_roundtrip(&f);
		return 0;
	}
	char *text = fz_rest(&f, NULL);
	if (mode == 0)
		mode_verify(text);
	else if (mode == 2)
		mode_checkpoint(text);
	else
		mode_keys(text);
	free(text);
	return 0;
}
