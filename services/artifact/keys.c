/*
 * keys.c - the trusted builder keys: which Ed25519 public keys may sign
 * artifacts of which apps, and which apps require a signature. Loaded once
 * at start-up from --trusted-keys (restart to change it).
 *
 *   # comment
 *   key     web   ci-2026    <base64 of the 32-byte Ed25519 public key>
 *   key     *     release    <base64 ...>     (trusted for every app)
 *   require web                                (web pushes must be signed)
 *   require *                                  (every push must be signed)
 *
 * A signature is over the ASCII digest string "sha256:<hex>".
 */
#include "art.h"
#include "err.h"

#include <sodium.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEYS_MAX 1024
#define KEYS_FILE_MAX (1 << 20)

struct key {
	char app[ART_APP_MAX + 1]; /* "*" = any app */
	char name[65];
	uint8_t pk[crypto_sign_PUBLICKEYBYTES];
};

struct art_keys {
	struct key *keys;
	size_t n;
	char (*required)[ART_APP_MAX + 1];
	size_t nreq;
};

void art_keys_free(struct art_keys *k)
{
	if (k == NULL)
		return;
	free(k->keys);
	free(k->required);
	free(k);
}

size_t art_keys_count(const struct art_keys *k)
{
	return k ? k->n : 0;
}

static int name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '.' || c == '_' || c == '-'))
			return 0;
	}
	return 1;
}

/* Splits line into at most max whitespace-separated words (in place). */
static int split(char *line, char **w, int max)
{
	int n = 0;
	char *p = line;
	for (;;) {
		while (*p == ' ' || *p == '\t' || *p == '\r')
			p++;
		if (*p == '\0' || *p == '#')
			break;
		if (n == max)
			return max + 1;
		w[n++] = p;
		while (*p && *p != ' ' && *p != '\t' && *p != '\r' && *p != '#')
			p++;
		if (*p == '#') {
			*p = '\0';
			break;
		}
		if (*p)
			*p++ = '\0';
	}
	return n;
}

int art_keys_parse(const char *text, const char *fname, struct art_keys **out, char *err,
		   size_t errlen)
{
	struct art_keys *k = NULL;
	char *copy = NULL;
	int rc = 0, lineno = 0;

	*out = NULL;
	if (sodium_init() < 0)
		return sw_errf(err, errlen, SW_EINTERNAL, "libsodium failed to initialise");
	k = calloc(1, sizeof *k);
	copy = strdup(text);
	if (k == NULL || copy == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	char *save = NULL;
	for (char *line = copy; line != NULL; line = save) {
		save = strchr(line, '\n');
		if (save != NULL)
			*save++ = '\0';
		lineno++;
		char *w[5];
		int n = split(line, w, 4);
		if (n == 0)
			continue;
		if (strcmp(w[0], "key") == 0) {
			if (n != 4) {
				rc = sw_errf(err, errlen, SW_EINVAL,
					     "%s:%d: want 'key APP|* NAME BASE64-PUBLIC-KEY'", fname,
					     lineno);
				goto out;
			}
			if (strcmp(w[1], "*") != 0 && !name_app_ok(w[1])) {
				rc = sw_errf(err, errlen, SW_EINVAL, "%s:%d: invalid app name", fname,
					     lineno);
				goto out;
			}
			if (!name_ok(w[2])) {
				rc = sw_errf(err, errlen, SW_EINVAL,
					     "%s:%d: key names are 1-64 of [A-Za-z0-9._-]", fname,
					     lineno);
				goto out;
			}
			if (k->n == KEYS_MAX) {
				rc = sw_errf(err, errlen, SW_EINVAL, "%s:%d: more than %d keys", fname,
					     lineno, KEYS_MAX);
				goto out;
			}
			for (size_t i = 0; i < k->n; i++)
				if (strcmp(k->keys[i].name, w[2]) == 0 &&
				    strcmp(k->keys[i].app, w[1]) == 0) {
					rc = sw_errf(err, errlen, SW_EINVAL,
						     "%s:%d: key %s is listed twice for %s", fname,
						     lineno, w[2], w[1]);
					goto out;
				}
			struct key *nk = realloc(k->keys, (k->n + 1) * sizeof *nk);
			if (nk == NULL) {
				rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
				goto out;
			}
			k->keys = nk;
			struct key *e = &k->keys[k->n];
			memset(e, 0, sizeof *e);
			size_t pklen = 0;
			if (sodium_base642bin(e->pk, sizeof e->pk, w[3], strlen(w[3]), NULL, &pklen,
					      NULL, sodium_base64_VARIANT_ORIGINAL) != 0 ||
			    pklen != sizeof e->pk) {
				rc = sw_errf(err, errlen, SW_EINVAL,
					     "%s:%d: the public key must be the base64 of 32 bytes",
					     fname, lineno);
				goto out;
			}
			snprintf(e->app, sizeof e->app, "%s", w[1]);
			snprintf(e->name, sizeof e->name, "%s", w[2]);
			k->n++;
		} else if (strcmp(w[0], "require") == 0) {
			if (n != 2 || (strcmp(w[1], "*") != 0 && !name_app_ok(w[1]))) {
				rc = sw_errf(err, errlen, SW_EINVAL, "%s:%d: want 'require APP|*'",
					     fname, lineno);
				goto out;
			}
			if (k->nreq == KEYS_MAX) {
				rc = sw_errf(err, errlen, SW_EINVAL, "%s:%d: too many require lines",
					     fname, lineno);
				goto out;
			}
			char(*nr)[ART_APP_MAX + 1] = realloc(k->required, (k->nreq + 1) * sizeof *nr);
			if (nr == NULL) {
				rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
				goto out;
			}
			k->required = nr;
			snprintf(k->required[k->nreq++], ART_APP_MAX + 1, "%s", w[1]);
		} else {
			rc = sw_errf(err, errlen, SW_EINVAL,
				     "%s:%d: unknown directive (want 'key' or 'require')", fname,
				     lineno);
			goto out;
		}
	}
	/* An app that requires signatures with no key that could sign them is
	 * a configuration mistake that would refuse every push: say so now. */
	for (size_t i = 0; i < k->nreq; i++) {
		int any = 0;
		for (size_t j = 0; j < k->n && !any; j++)
			any = strcmp(k->keys[j].app, "*") == 0 ||
			      strcmp(k->required[i], "*") == 0 ||
			      strcmp(k->keys[j].app, k->required[i]) == 0;
		if (!any) {
			rc = sw_errf(err, errlen, SW_EINVAL,
				     "%s: 'require %s' but no key is trusted for it", fname,
				     k->required[i]);
			goto out;
		}
	}
	*out = k;
	k = NULL;
out:
	if (copy != NULL) {
		sodium_memzero(copy, strlen(text));
		free(copy);
	}
	art_keys_free(k);
	return rc;
}

int art_keys_load(const char *path, struct art_keys **out, char *err, size_t errlen)
{
	*out = NULL;
	if (path == NULL || path[0] == '\0')
		return art_keys_parse("", "(none)", out, err, errlen);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "--trusted-keys %s: %s", path,
			       strerror(errno));
	char *buf = malloc(KEYS_FILE_MAX + 1);
	if (buf == NULL) {
		fclose(f);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	size_t n = fread(buf, 1, KEYS_FILE_MAX + 1, f);
	int bad = ferror(f);
	fclose(f);
	int rc;
	if (bad)
		rc = sw_errf(err, errlen, SW_EINVAL, "--trusted-keys %s: read error", path);
	else if (n > KEYS_FILE_MAX)
		rc = sw_errf(err, errlen, SW_EINVAL, "--trusted-keys %s: larger than 1 MiB", path);
	else if (memchr(buf, '\0', n) != NULL)
		rc = sw_errf(err, errlen, SW_EINVAL, "--trusted-keys %s: not a text file", path);
	else {
		buf[n] = '\0';
		rc = art_keys_parse(buf, path, out, err, errlen);
	}
	free(buf);
	return rc;
}

int art_keys_required(const struct art_keys *k, const char *app)
{
	for (size_t i = 0; k != NULL && i < k->nreq; i++)
		if (strcmp(k->required[i], "*") == 0 || strcmp(k->required[i], app) == 0)
			return 1;
	return 0;
}

int art_keys_verify(const struct art_keys *k, const char *app, const char *digest,
		    const uint8_t *sig, size_t siglen, const char *key_name, char *used,
		    size_t usedlen, char *why, size_t whylen)
{
	if (used != NULL && usedlen > 0)
		used[0] = '\0';
	if (sig == NULL || siglen == 0)
		return sw_errf(why, whylen, SW_EPERM, "the push carries no signature");
	if (siglen != crypto_sign_BYTES)
		return sw_errf(why, whylen, SW_EPERM, "a signature is %d bytes", crypto_sign_BYTES);
	int candidates = 0;
	for (size_t i = 0; k != NULL && i < k->n; i++) {
		const struct key *e = &k->keys[i];
		if (strcmp(e->app, "*") != 0 && strcmp(e->app, app) != 0)
			continue;
		if (key_name != NULL && key_name[0] != '\0' && strcmp(e->name, key_name) != 0)
			continue;
		candidates++;
		if (crypto_sign_verify_detached(sig, (const unsigned char *)digest, strlen(digest),
						e->pk) == 0) {
			if (used != NULL)
				snprintf(used, usedlen, "%s", e->name);
			return 0;
		}
	}
	if (candidates == 0) {
		if (key_name != NULL && key_name[0] != '\0')
			return sw_errf(why, whylen, SW_EPERM, "key '%s' is not trusted for app %s",
				       key_name, app);
		return sw_errf(why, whylen, SW_EPERM, "no key is trusted for app %s", app);
	}
	return sw_errf(why, whylen, SW_EPERM,
		       "the signature does not verify over %s with the trusted key%s", digest,
		       candidates > 1 ? "s" : "");
}
