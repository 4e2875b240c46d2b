/*
 * names.c - strict validation of every name, digest, media type,
 * provenance field and page token the artifact service receives. Nothing
 * reaches SQL, S3 keys or logs without passing through here.
 */
#include "art.h"
#include "cfg.h"
#include "err.h"
#include "names.h"
#include "provenance.h"

#include <stdio.h>
#include <string.h>

static int lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

static int alnum(char c)
{
	return lower_alnum(c) || (c >= 'A' && c <= 'Z');
}

static int token_char(char c)
{
	return alnum(c) || (c != '\0' && strchr("!#$&^_.+-", c) != NULL);
}

int art_media_type_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > 127)
		return 0;
	const char *slash = strchr(s, '/');
	if (slash == NULL || slash == s || slash[1] == '\0')
		return 0;
	for (const char *p = s; *p; p++)
		if (p != slash && !token_char(*p))
			return 0;
	return 1;
}

int art_provenance_ok(const Slipway__V1__Provenance *p, char *why, size_t whylen)
{
	if (p == NULL)
		return 0;
	if (!name_text_ok(p->repository, 512))
		return sw_errf(why, whylen, SW_EINVAL,
			       "provenance.repository: at most 512 printable ASCII characters");
	size_t cn = strlen(p->commit);
	if (cn > 0) {
		int hex = cn >= 7 && cn <= 64;
		for (size_t i = 0; hex && i < cn; i++)
			hex = (p->commit[i] >= '0' && p->commit[i] <= '9') ||
			      (p->commit[i] >= 'a' && p->commit[i] <= 'f');
		if (!hex)
			return sw_errf(why, whylen, SW_EINVAL,
				       "provenance.commit: 7 to 64 lower-case hex digits");
	}
	if (!name_text_ok(p->ref, 256) || strchr(p->ref, ' ') != NULL)
		return sw_errf(why, whylen, SW_EINVAL,
			       "provenance.ref: at most 256 printable characters, no spaces");
	if (!name_text_ok(p->build_id, 256))
		return sw_errf(why, whylen, SW_EINVAL, "provenance.build_id: at most 256 printable "
						       "ASCII characters");
	if (!name_text_ok(p->builder, 256))
		return sw_errf(why, whylen, SW_EINVAL, "provenance.builder: at most 256 printable "
						       "ASCII characters");
	if (p->build_time_unix_ms < 0)
		return sw_errf(why, whylen, SW_EINVAL, "provenance.build_time_unix_ms: negative");
	if (p->signature.len != 0 && p->signature.len != 64)
		return sw_errf(why, whylen, SW_EINVAL,
			       "provenance.signature: an Ed25519 signature is 64 bytes, got %zu",
			       p->signature.len);
	size_t kn = strlen(p->signing_key);
	if (kn > 64)
		return sw_errf(why, whylen, SW_EINVAL, "provenance.signing_key: at most 64 characters");
	for (size_t i = 0; i < kn; i++)
		if (!alnum(p->signing_key[i]) && !strchr("._-", p->signing_key[i]))
			return sw_errf(why, whylen, SW_EINVAL,
				       "provenance.signing_key: letters, digits, '.', '_' and '-' only");
	if (kn > 0 && p->signature.len == 0)
		return sw_errf(why, whylen, SW_EINVAL,
			       "provenance.signing_key is set but there is no signature");
	if (p->statement.len > PROV_STATEMENT_MAX)
		return sw_errf(why, whylen, SW_EINVAL, "provenance.statement: at most %d bytes",
			       PROV_STATEMENT_MAX);
	if (p->statement.len > 0 && p->signature.len == 0)
		return sw_errf(why, whylen, SW_EINVAL,
			       "provenance.statement is set but there is no signature");
	/* What the service authenticates is never taken from the request. */
	if (p->verified || p->signer[0] != '\0' || p->pusher[0] != '\0')
		return sw_errf(why, whylen, SW_EINVAL,
			       "provenance.verified, signer and pusher are set by the artifact "
			       "service, not by the pusher");
	return 0;
}

void art_blob_key(const char *digest, char out[ART_KEY_LEN])
{
	snprintf(out, ART_KEY_LEN, "blobs/sha256/%s", digest + 7);
}

int art_token_id(const char *tok, int64_t *id)
{
	long long v;
	*id = 0;
	if (tok == NULL || tok[0] == '\0')
		return 0;
	if (tok[0] != 'r' || strlen(tok) > 21 || cfg_parse_ll(tok + 1, &v) != 0 || v <= 0)
		return SW_EINVAL;
	*id = v;
	return 0;
}

int art_token_app(const char *tok, char out[ART_APP_MAX + 1])
{
	out[0] = '\0';
	if (tok == NULL || tok[0] == '\0')
		return 0;
	if (tok[0] != 'a' || !name_app_ok(tok + 1))
		return SW_EINVAL;
	snprintf(out, ART_APP_MAX + 1, "%s", tok + 1);
	return 0;
}
