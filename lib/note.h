/*
 * note.h - C2SP signed notes with Ed25519, and tlog checkpoints in them.
 *
 * A note is a body (UTF-8 text lines, each ending in '\n'), a blank line,
 * and signature lines "— <key name> <base64(4-byte key id || signature)>"
 * (the dash is U+2014). The Ed25519 key id is the first 4 bytes of
 * SHA-256(key name || 0x0A || 0x01 || 32-byte public key). A checkpoint
 * body is "<origin>\n<decimal size>\n<base64 root hash>\n".
 *
 * Keys are written in the formats of Go's golang.org/x/mod/sumdb/note:
 *   verifier: <name>+<8 hex key id>+<base64(0x01 || public key)>
 *   signer:   PRIVATE+KEY+<name>+<8 hex key id>+<base64(0x01 || 32-byte seed)>
 * The signer key lives in sodium_malloc memory and is wiped when freed.
 */
#ifndef SLIPWAY_NOTE_H
#define SLIPWAY_NOTE_H

#include <stddef.h>
#include <stdint.h>

#define NOTE_NAME_MAX 64
#define NOTE_MAX 4096

struct note_verifier {
	char name[NOTE_NAME_MAX];
	uint8_t key_id[4];
	uint8_t pub[32];
};

struct note_signer; /* opaque, key material in guarded memory */

/* Returns 1 when name is a valid key name (printable ASCII, no spaces or
 * '+', 1..63 bytes). */
int note_name_ok(const char *name);

/* Generates a new key pair named name. Returns a new signer (free with
 * note_signer_free). */
int note_signer_generate(const char *name, struct note_signer **out, char *err, size_t errlen);
/* Parses a signer key string (PRIVATE+KEY+...). */
int note_signer_parse(const char *text, struct note_signer **out, char *err, size_t errlen);
/* Writes the signer key string into out (sodium_malloc'd by the caller or
 * a buffer it wipes). */
int note_signer_format(const struct note_signer *s, char *out, size_t outlen);
void note_signer_free(struct note_signer *s);
/* The verifier (public half) of a signer. */
void note_signer_verifier(const struct note_signer *s, struct note_verifier *v);

/* Verifier key strings. */
int note_verifier_format(const struct note_verifier *v, char *out, size_t outlen);
int note_verifier_parse(const char *text, struct note_verifier *v, char *err, size_t errlen);

/* Signs body (which must end in '\n' and hold no blank line) into out:
 * body, blank line, one signature line. */
int note_sign(const struct note_signer *s, const char *body, char *out, size_t outlen);

/* Checks that note carries a valid signature by v. On success copies the
 * body (up to and including its last '\n') into body_out. Signatures by
 * other keys are ignored. Returns 0 or SW_EINVAL with the reason. */
int note_verify(const struct note_verifier *v, const char *note, char *body_out, size_t bodylen,
		char *err, size_t errlen);

/* Checkpoint bodies. */
int note_checkpoint_body(const char *origin, uint64_t size, const uint8_t root[32], char *out,
			 size_t outlen);
int note_checkpoint_parse(const char *body, char *origin, size_t originlen, uint64_t *size,
			  uint8_t root[32], char *err, size_t errlen);

#endif
