/*
 * identity.c - who this agent is: its labels (which app instance it runs,
 * where), its SPIFFE ID (read from its own certificate, the same identity
 * the orchestrator sees over mTLS) and the pinned public key of the secrets
 * service that every sealed bundle must be signed with.
 */
#include "agent.h"
#include "err.h"
#include "sealed.h"

#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <sodium.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int key_ok(const char *s, size_t n)
{
	if (n == 0 || n > AGENT_LABEL_KEY_MAX)
		return 0;
	if (!((s[0] >= 'a' && s[0] <= 'z') || (s[0] >= '0' && s[0] <= '9')))
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
		      c == '/' || c == '-'))
			return 0;
	}
	return 1;
}

static int value_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > AGENT_LABEL_VALUE_MAX)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == ':' || c == '-'))
			return 0;
	}
	return 1;
}

int agent_labels_add(struct agent_labels *l, const char *kv, char *err, size_t errlen)
{
	const char *eq = strchr(kv, '=');
	if (eq == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "label '%.64s': want key=value", kv);
	size_t klen = (size_t)(eq - kv);
	if (!key_ok(kv, klen))
		return sw_errf(err, errlen, SW_EINVAL,
			       "label key '%.*s': want [a-z0-9][a-z0-9._/-]{0,62}",
			       (int)(klen > 64 ? 64 : klen), kv);
	if (!value_ok(eq + 1))
		return sw_errf(err, errlen, SW_EINVAL,
			       "label %.*s: value must be 1-127 of [A-Za-z0-9._:-]", (int)klen, kv);
	size_t i;
	for (i = 0; i < l->n; i++)
		if (strlen(l->v[i].key) == klen && memcmp(l->v[i].key, kv, klen) == 0)
			break;
	if (i == l->n) {
		if (l->n == AGENT_MAX_LABELS)
			return sw_errf(err, errlen, SW_ELIMIT, "more than %d labels",
				       AGENT_MAX_LABELS);
		l->n++;
	}
	memcpy(l->v[i].key, kv, klen);
	l->v[i].key[klen] = '\0';
	snprintf(l->v[i].value, sizeof l->v[i].value, "%s", eq + 1);
	return 0;
}

int agent_labels_add_list(struct agent_labels *l, const char *list, char *err, size_t errlen)
{
	char item[AGENT_LABEL_KEY_MAX + AGENT_LABEL_VALUE_MAX + 2];
	const char *p = list;
	while (p != NULL && *p != '\0') {
		const char *comma = strchr(p, ',');
		size_t n = comma ? (size_t)(comma - p) : strlen(p);
		if (n >= sizeof item)
			return sw_errf(err, errlen, SW_EINVAL, "label '%.32s...' is too long", p);
		memcpy(item, p, n);
		item[n] = '\0';
		if (n > 0) {
			int rc = agent_labels_add(l, item, err, errlen);
			if (rc != 0)
				return rc;
		}
		p = comma ? comma + 1 : NULL;
	}
	return 0;
}

const char *agent_labels_get(const struct agent_labels *l, const char *key)
{
	for (size_t i = 0; i < l->n; i++)
		if (strcmp(l->v[i].key, key) == 0)
			return l->v[i].value;
	return NULL;
}

int agent_labels_take_flags(int *argc, char **argv, struct agent_labels *l, char *err,
			    size_t errlen)
{
	int out = 1;
	for (int i = 1; i < *argc; i++) {
		const char *a = argv[i];
		const char *val = NULL;
		if (strcmp(a, "--label") == 0) {
			if (i + 1 >= *argc)
				return sw_errf(err, errlen, SW_EINVAL, "--label needs key=value");
			val = argv[++i];
		} else if (strncmp(a, "--label=", 8) == 0) {
			val = a + 8;
		}
		if (val != NULL) {
			int rc = agent_labels_add(l, val, err, errlen);
			if (rc != 0)
				return rc;
			continue;
		}
		argv[out++] = argv[i];
	}
	argv[out] = NULL;
	*argc = out;
	return 0;
}

int agent_cert_spiffe_id(const char *path, char *out, size_t outlen, char *err, size_t errlen)
{
	int rc = 0;
	FILE *f = NULL;
	X509 *x = NULL;
	GENERAL_NAMES *sans = NULL;
	int found = 0;

	if ((f = fopen(path, "r")) == NULL) {
		rc = sw_errf(err, errlen, SW_EIO, "%s: %s", path, strerror(errno));
		goto out;
	}
	if ((x = PEM_read_X509(f, NULL, NULL, NULL)) == NULL) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: not a PEM certificate", path);
		goto out;
	}
	sans = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	for (int i = 0; sans != NULL && i < sk_GENERAL_NAME_num(sans); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(sans, i);
		if (g->type != GEN_URI)
			continue;
		const unsigned char *d = ASN1_STRING_get0_data(g->d.uniformResourceIdentifier);
		int n = ASN1_STRING_length(g->d.uniformResourceIdentifier);
		found++;
		if (n <= 0 || (size_t)n >= outlen || memchr(d, '\0', (size_t)n) != NULL) {
			rc = sw_errf(err, errlen, SW_EINVAL, "%s: unusable URI SAN", path);
			goto out;
		}
		memcpy(out, d, (size_t)n);
		out[n] = '\0';
	}
	if (found != 1)
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: want exactly one URI SAN, found %d", path,
			     found);
	else if (strncmp(out, "spiffe://", 9) != 0)
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: the URI SAN is not a SPIFFE ID", path);
out:
	GENERAL_NAMES_free(sans);
	X509_free(x);
	if (f != NULL)
		fclose(f);
	if (rc != 0 && outlen > 0)
		out[0] = '\0';
	return rc;
}

/* Decodes text (trimmed) as 64 hex digits or base64 of 32 bytes. */
static int decode_key(const char *text, size_t n, uint8_t pk[32])
{
	while (n > 0 && (text[n - 1] == '\n' || text[n - 1] == '\r' || text[n - 1] == ' '))
		n--;
	while (n > 0 && (*text == ' ' || *text == '\n')) {
		text++;
		n--;
	}
	size_t bin_len = 0;
	if (n == 64 && sodium_hex2bin(pk, 32, text, n, NULL, &bin_len, NULL) == 0 &&
	    bin_len == 32)
		return 0;
	static const int variants[] = {
		sodium_base64_VARIANT_ORIGINAL, sodium_base64_VARIANT_ORIGINAL_NO_PADDING,
		sodium_base64_VARIANT_URLSAFE, sodium_base64_VARIANT_URLSAFE_NO_PADDING
	};
	for (size_t i = 0; i < sizeof variants / sizeof variants[0]; i++) {
		if (sodium_base642bin(pk, 32, text, n, NULL, &bin_len, NULL, variants[i]) == 0 &&
		    bin_len == 32)
			return 0;
	}
	return SW_EINVAL;
}

int agent_sign_key_parse(const char *spec, uint8_t pk[32], char *err, size_t errlen)
{
	if (spec == NULL || spec[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL, "no secrets signing key");
	struct stat st;
	if (strchr(spec, '/') == NULL || stat(spec, &st) != 0) {
		if (decode_key(spec, strlen(spec), pk) == 0)
			return 0;
		return sw_errf(err, errlen, SW_EINVAL,
			       "secrets signing key: neither a readable file nor a base64/hex "
			       "Ed25519 public key");
	}
	/* A Slipway public key file first, then a file holding base64 or hex. */
	char e2[256];
	if (sealed_public_key_read(spec, SEALED_LABEL_ED25519_PUBLIC, pk, 32, e2, sizeof e2) == 0)
		return 0;
	FILE *f = fopen(spec, "r");
	if (f == NULL)
		return sw_errf(err, errlen, SW_EIO, "%s: %s", spec, strerror(errno));
	char buf[512];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	int big = !feof(f);
	fclose(f);
	if (!big && decode_key(buf, n, pk) == 0)
		return 0;
	return sw_errf(err, errlen, SW_EINVAL, "%s: not an Ed25519 public key (%s)", spec, e2);
}
