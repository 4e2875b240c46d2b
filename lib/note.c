/*
 * note.c - signed notes and checkpoints (see note.h), with libsodium.
 */
#include "note.h"
#include "err.h"
#include "hash.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EM_DASH "\xe2\x80\x94"

struct note_signer {
	struct note_verifier v;
	unsigned char *seed; /* 32 bytes, sodium_malloc */
	unsigned char *sk;   /* 64 bytes, sodium_malloc */
};

int note_name_ok(const char *name)
{
	size_t n = strlen(name);
	if (n == 0 || n >= NOTE_NAME_MAX)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (name[i] <= ' ' || name[i] >= 0x7f || name[i] == '+')
			return 0;
	return 1;
}

static void key_id(const char *name, const uint8_t pub[32], uint8_t out[4])
{
	uint8_t h[32];
	uint8_t mid[2] = { 0x0a, 0x01 };
	hash_sha256(name, strlen(name), mid, 2, pub, 32, h);
	memcpy(out, h, 4);
}

static struct note_signer *signer_alloc(void)
{
	if (sodium_init() < 0)
		return NULL;
	struct note_signer *s = calloc(1, sizeof *s);
	if (s == NULL)
		return NULL;
	s->seed = sodium_malloc(32);
	s->sk = sodium_malloc(crypto_sign_SECRETKEYBYTES);
	if (s->seed == NULL || s->sk == NULL) {
		note_signer_free(s);
		return NULL;
	}
	return s;
}

void note_signer_free(struct note_signer *s)
{
	if (s == NULL)
		return;
	if (s->seed)
		sodium_free(s->seed); /* wipes */
	if (s->sk)
		sodium_free(s->sk);
	free(s);
}

static int finish_signer(struct note_signer *s, const char *name)
{
	snprintf(s->v.name, sizeof s->v.name, "%s", name);
	crypto_sign_seed_keypair(s->v.pub, s->sk, s->seed);
	key_id(name, s->v.pub, s->v.key_id);
	return 0;
}

int note_signer_generate(const char *name, struct note_signer **out, char *err, size_t errlen)
{
	*out = NULL;
	if (!note_name_ok(name))
		return sw_errf(err, errlen, SW_EINVAL, "invalid key name");
	struct note_signer *s = signer_alloc();
	if (s == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "cannot allocate key memory");
	randombytes_buf(s->seed, 32);
	finish_signer(s, name);
	*out = s;
	return 0;
}

/* Splits "a+b+c" keys at the first max-1 "+" (the last field, base64,
 * may itself hold "+"); returns the number of fields. */
static int split_plus(char *s, char **f, int max)
{
	int n = 0;
	f[n++] = s;
	for (char *p = s; *p && n < max; p++)
		if (*p == '+') {
			*p = '\0';
			f[n++] = p + 1;
		}
	return n;
}

static int b64dec(const char *in, uint8_t *out, size_t cap, size_t *len)
{
	/* libsodium (1.0.18) reads the text as signed chars and decodes every
	 * byte >= 0x80 as '/': refuse anything outside the alphabet first, so
	 * that keys, roots and signatures have exactly one spelling. */
	static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
				       "0123456789+/=";
	if (in[strspn(in, alphabet)] != '\0')
		return -1;
	return sodium_base642bin(out, cap, in, strlen(in), NULL, len, NULL,
				 sodium_base64_VARIANT_ORIGINAL) == 0
		       ? 0
		       : -1;
}

int note_signer_parse(const char *text, struct note_signer **out, char *err, size_t errlen)
{
	char buf[256];
	char *f[6];
	uint8_t raw[33];
	size_t rl = 0;
	int rc = 0;
	*out = NULL;
	size_t tl = strcspn(text, "\r\n");
	if (tl >= sizeof buf)
		return sw_errf(err, errlen, SW_EINVAL, "signer key too long");
	memcpy(buf, text, tl);
	buf[tl] = '\0';
	struct note_signer *s = NULL;
	if (split_plus(buf, f, 5) != 5 || strcmp(f[0], "PRIVATE") || strcmp(f[1], "KEY") ||
	    !note_name_ok(f[2]) || strlen(f[3]) != 8 ||
	    b64dec(f[4], raw, sizeof raw, &rl) != 0 || rl != 33 || raw[0] != 0x01) {
		rc = sw_errf(err, errlen, SW_EINVAL, "not a PRIVATE+KEY+<name>+<id>+<key> Ed25519 key");
		goto out;
	}
	s = signer_alloc();
	if (s == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "cannot allocate key memory");
		goto out;
	}
	memcpy(s->seed, raw + 1, 32);
	finish_signer(s, f[2]);
	uint8_t id[4];
	if (hash_unhex(f[3], id, 4) != 0 || memcmp(id, s->v.key_id, 4) != 0) {
		rc = sw_errf(err, errlen, SW_EINVAL, "signer key id does not match its key");
		goto out;
	}
	*out = s;
	s = NULL;
out:
	sodium_memzero(buf, sizeof buf);
	sodium_memzero(raw, sizeof raw);
	note_signer_free(s);
	return rc;
}

int note_signer_format(const struct note_signer *s, char *out, size_t outlen)
{
	uint8_t raw[33];
	char b64[64], hex[9];
	raw[0] = 0x01;
	memcpy(raw + 1, s->seed, 32);
	sodium_bin2base64(b64, sizeof b64, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
	hash_hex(s->v.key_id, 4, hex);
	int n = snprintf(out, outlen, "PRIVATE+KEY+%s+%s+%s\n", s->v.name, hex, b64);
	sodium_memzero(raw, sizeof raw);
	sodium_memzero(b64, sizeof b64);
	return (n < 0 || (size_t)n >= outlen) ? SW_EINVAL : 0;
}

void note_signer_verifier(const struct note_signer *s, struct note_verifier *v)
{
	*v = s->v;
}

int note_verifier_format(const struct note_verifier *v, char *out, size_t outlen)
{
	uint8_t raw[33];
	char b64[64], hex[9];
	raw[0] = 0x01;
	memcpy(raw + 1, v->pub, 32);
	sodium_bin2base64(b64, sizeof b64, raw, sizeof raw, sodium_base64_VARIANT_ORIGINAL);
	hash_hex(v->key_id, 4, hex);
	int n = snprintf(out, outlen, "%s+%s+%s", v->name, hex, b64);
	return (n < 0 || (size_t)n >= outlen) ? SW_EINVAL : 0;
}

int note_verifier_parse(const char *text, struct note_verifier *v, char *err, size_t errlen)
{
	char buf[256];
	char *f[4];
	uint8_t raw[33], id[4];
	size_t rl = 0;
	size_t tl = strcspn(text, "\r\n");
	if (tl >= sizeof buf)
		return sw_errf(err, errlen, SW_EINVAL, "verifier key too long");
	memcpy(buf, text, tl);
	buf[tl] = '\0';
	if (split_plus(buf, f, 3) != 3 || !note_name_ok(f[0]) || hash_unhex(f[1], id, 4) != 0 ||
	    b64dec(f[2], raw, sizeof raw, &rl) != 0 || rl != 33 || raw[0] != 0x01)
		return sw_errf(err, errlen, SW_EINVAL,
			       "not a <name>+<id>+<key> Ed25519 verifier key");
	memset(v, 0, sizeof *v);
	snprintf(v->name, sizeof v->name, "%s", f[0]);
	memcpy(v->pub, raw + 1, 32);
	key_id(v->name, v->pub, v->key_id);
	if (memcmp(id, v->key_id, 4) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "verifier key id does not match its key");
	return 0;
}

int note_sign(const struct note_signer *s, const char *body, char *out, size_t outlen)
{
	size_t bl = strlen(body);
	/* A blank line would end the body early for note_verify. */
	if (bl == 0 || body[bl - 1] != '\n' || body[0] == '\n' || strstr(body, "\n\n") != NULL)
		return SW_EINVAL;
	uint8_t sig[4 + crypto_sign_BYTES];
	memcpy(sig, s->v.key_id, 4);
	crypto_sign_detached(sig + 4, NULL, (const unsigned char *)body, bl, s->sk);
	char b64[sodium_base64_ENCODED_LEN(sizeof sig, sodium_base64_VARIANT_ORIGINAL)];
	sodium_bin2base64(b64, sizeof b64, sig, sizeof sig, sodium_base64_VARIANT_ORIGINAL);
	int n = snprintf(out, outlen, "%s\n" EM_DASH " %s %s\n", body, s->v.name, b64);
	return (n < 0 || (size_t)n >= outlen) ? SW_ELIMIT : 0;
}

int note_verify(const struct note_verifier *v, const char *note, char *body_out, size_t bodylen,
		char *err, size_t errlen)
{
	/* The body ends at the first blank line. */
	const char *sep = strstr(note, "\n\n");
	if (sep == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "malformed note: no signature block");
	size_t bl = (size_t)(sep - note) + 1;
	if (bl >= bodylen || bl > NOTE_MAX)
		return sw_errf(err, errlen, SW_EINVAL, "note body too long");
	const char *p = sep + 2;
	int found_key = 0;
	while (*p) {
		const char *eol = strchr(p, '\n');
		if (eol == NULL)
			return sw_errf(err, errlen, SW_EINVAL, "malformed note: unterminated line");
		size_t ll = (size_t)(eol - p);
		char line[512];
		if (ll >= sizeof line || strncmp(p, EM_DASH " ", 4) != 0)
			return sw_errf(err, errlen, SW_EINVAL, "malformed note signature line");
		memcpy(line, p + 4, ll - 4);
		line[ll - 4] = '\0';
		char *space = strchr(line, ' ');
		p = eol + 1;
		if (space == NULL)
			return sw_errf(err, errlen, SW_EINVAL, "malformed note signature line");
		*space = '\0';
		if (strcmp(line, v->name) != 0)
			continue; /* another signer: ignored */
		uint8_t sig[4 + crypto_sign_BYTES + 4];
		size_t sl = 0;
		if (b64dec(space + 1, sig, sizeof sig, &sl) != 0 || sl != 4 + crypto_sign_BYTES)
			continue;
		if (memcmp(sig, v->key_id, 4) != 0)
			continue;
		found_key = 1;
		if (crypto_sign_verify_detached(sig + 4, (const unsigned char *)note, bl, v->pub) == 0) {
			memcpy(body_out, note, bl);
			body_out[bl] = '\0';
			return 0;
		}
	}
	return sw_errf(err, errlen, SW_EINVAL,
		       found_key ? "note signature does not verify" : "note is not signed by %s",
		       v->name);
}

int note_checkpoint_body(const char *origin, uint64_t size, const uint8_t root[32], char *out,
			 size_t outlen)
{
	char b64[64];
	sodium_bin2base64(b64, sizeof b64, root, 32, sodium_base64_VARIANT_ORIGINAL);
	int n = snprintf(out, outlen, "%s\n%llu\n%s\n", origin, (unsigned long long)size, b64);
	return (n < 0 || (size_t)n >= outlen) ? SW_EINVAL : 0;
}

int note_checkpoint_parse(const char *body, char *origin, size_t originlen, uint64_t *size,
			  uint8_t root[32], char *err, size_t errlen)
{
	const char *l1 = body, *e1 = strchr(l1, '\n');
	const char *l2 = e1 ? e1 + 1 : NULL, *e2 = l2 ? strchr(l2, '\n') : NULL;
	const char *l3 = e2 ? e2 + 1 : NULL, *e3 = l3 ? strchr(l3, '\n') : NULL;
	if (e3 == NULL || e1 == l1 || (size_t)(e1 - l1) >= originlen)
		return sw_errf(err, errlen, SW_EINVAL, "checkpoint body needs origin, size and root lines");
	memcpy(origin, l1, (size_t)(e1 - l1));
	origin[e1 - l1] = '\0';
	uint64_t v = 0;
	if (e2 == l2 || (e2 - l2) > 20 || (l2[0] == '0' && e2 - l2 > 1))
		return sw_errf(err, errlen, SW_EINVAL, "checkpoint size is not a decimal number");
	for (const char *p = l2; p < e2; p++) {
		if (*p < '0' || *p > '9' || v > (UINT64_MAX - 9) / 10)
			return sw_errf(err, errlen, SW_EINVAL, "checkpoint size is not a decimal number");
		v = v * 10 + (uint64_t)(*p - '0');
	}
	char b64[64];
	size_t rl = 0;
	if ((size_t)(e3 - l3) >= sizeof b64)
		return sw_errf(err, errlen, SW_EINVAL, "checkpoint root too long");
	memcpy(b64, l3, (size_t)(e3 - l3));
	b64[e3 - l3] = '\0';
	if (b64dec(b64, root, 32, &rl) != 0 || rl != 32)
		return sw_errf(err, errlen, SW_EINVAL, "checkpoint root is not a base64 SHA-256 hash");
	*size = v;
	return 0;
}
