/*
 * provenance.c - the canonical provenance statement and the trusted
 * builder keys (see provenance.h). The key-file parser moved here from the
 * artifact service so that the agent reads the same format.
 */
#include "provenance.h"
#include "digest.h"
#include "err.h"
#include "names.h"
#include "spiffe.h"

#include <sodium.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define KEYS_MAX 1024
#define KEYS_FILE_MAX (1 << 20)

/* ---- the statement ---- */

static int commit_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0)
		return 1;
	if (n < 7 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return 0;
	return 1;
}

static int check(const struct prov_statement *s, char *err, size_t errlen)
{
	if (!name_app_ok(s->app))
		return sw_errf(err, errlen, SW_EINVAL, "statement app: not a valid app name");
	if (!name_version_ok(s->version))
		return sw_errf(err, errlen, SW_EINVAL, "statement version: not a valid version");
	if (digest_parse(s->digest, NULL) != 0)
		return sw_errf(err, errlen, SW_EINVAL,
			       "statement digest: want sha256:<64 lower-case hex>");
	if (!name_text_ok(s->repository, 512))
		return sw_errf(err, errlen, SW_EINVAL,
			       "statement repository: at most 512 printable ASCII characters");
	if (!commit_ok(s->commit))
		return sw_errf(err, errlen, SW_EINVAL,
			       "statement commit: empty or 7 to 64 lower-case hex digits");
	if (!name_text_ok(s->ref, 256) || strchr(s->ref, ' ') != NULL)
		return sw_errf(err, errlen, SW_EINVAL,
			       "statement ref: at most 256 printable characters, no spaces");
	if (!name_text_ok(s->builder, 256))
		return sw_errf(err, errlen, SW_EINVAL,
			       "statement builder: at most 256 printable ASCII characters");
	if (!name_text_ok(s->build_id, 256))
		return sw_errf(err, errlen, SW_EINVAL,
			       "statement build-id: at most 256 printable ASCII characters");
	if (s->build_time_ms < 0)
		return sw_errf(err, errlen, SW_EINVAL, "statement build-time-ms: negative");
	return 0;
}

int prov_encode(const struct prov_statement *s, char *out, size_t outlen, size_t *len,
		char *err, size_t errlen)
{
	int rc = check(s, err, errlen);
	if (rc != 0)
		return rc;
	int n = snprintf(out, outlen,
			 PROV_VERSION_LINE "\n"
			 "app %s\nversion %s\ndigest %s\nrepository %s\ncommit %s\nref %s\n"
			 "builder %s\nbuild-id %s\nbuild-time-ms %" PRId64 "\n",
			 s->app, s->version, s->digest, s->repository, s->commit, s->ref,
			 s->builder, s->build_id, s->build_time_ms);
	if (n < 0 || (size_t)n >= outlen)
		return sw_errf(err, errlen, SW_EINVAL, "statement: longer than %zu bytes", outlen);
	if (len != NULL)
		*len = (size_t)n;
	return 0;
}

/* Takes the next line of [*p, end) that starts with "name ": copies its
 * value (bounded by cap) into dst. */
static int field(const char **p, const char *end, const char *name, char *dst, size_t cap)
{
	size_t nl = strlen(name);
	const char *eol = memchr(*p, '\n', (size_t)(end - *p));
	if (eol == NULL || (size_t)(eol - *p) < nl + 1 || memcmp(*p, name, nl) != 0 ||
	    (*p)[nl] != ' ')
		return SW_EINVAL;
	const char *v = *p + nl + 1;
	size_t vn = (size_t)(eol - v);
	if (vn >= cap || memchr(v, '\0', vn) != NULL)
		return SW_EINVAL;
	memcpy(dst, v, vn);
	dst[vn] = '\0';
	*p = eol + 1;
	return 0;
}

int prov_parse(const uint8_t *buf, size_t len, struct prov_statement *s, char *err,
	       size_t errlen)
{
	char bt[24], again[PROV_STATEMENT_MAX];
	const char *p = (const char *)buf, *end = p + len;
	size_t vl = strlen(PROV_VERSION_LINE);
	memset(s, 0, sizeof *s);
	if (buf == NULL || len == 0)
		return sw_errf(err, errlen, SW_EINVAL, "empty provenance statement");
	if (len > PROV_STATEMENT_MAX)
		return sw_errf(err, errlen, SW_EINVAL, "provenance statement: longer than %d bytes",
			       PROV_STATEMENT_MAX);
	if (len <= vl || memcmp(p, PROV_VERSION_LINE "\n", vl + 1) != 0)
		return sw_errf(err, errlen, SW_EINVAL,
			       "provenance statement: the first line must be '" PROV_VERSION_LINE
			       "'");
	p += vl + 1;
	static const struct {
		const char *name;
		size_t off, cap;
	} f[] = {
		{ "app", offsetof(struct prov_statement, app), sizeof s->app },
		{ "version", offsetof(struct prov_statement, version), sizeof s->version },
		{ "digest", offsetof(struct prov_statement, digest), sizeof s->digest },
		{ "repository", offsetof(struct prov_statement, repository), sizeof s->repository },
		{ "commit", offsetof(struct prov_statement, commit), sizeof s->commit },
		{ "ref", offsetof(struct prov_statement, ref), sizeof s->ref },
		{ "builder", offsetof(struct prov_statement, builder), sizeof s->builder },
		{ "build-id", offsetof(struct prov_statement, build_id), sizeof s->build_id },
	};
	for (size_t i = 0; i < sizeof f / sizeof f[0]; i++)
		if (field(&p, end, f[i].name, (char *)s + f[i].off, f[i].cap) != 0)
			return sw_errf(err, errlen, SW_EINVAL,
				       "provenance statement: want the line '%s <value>' next",
				       f[i].name);
	if (field(&p, end, "build-time-ms", bt, sizeof bt) != 0 || p != end)
		return sw_errf(err, errlen, SW_EINVAL,
			       "provenance statement: want 'build-time-ms <n>' as the last line");
	/* Decimal without sign or leading zeros; the re-encoding below rejects
	 * any other spelling. */
	char *e = NULL;
	errno = 0;
	long long v = bt[0] >= '0' && bt[0] <= '9' ? strtoll(bt, &e, 10) : -1;
	if (v < 0 || errno != 0 || e == NULL || *e != '\0')
		return sw_errf(err, errlen, SW_EINVAL,
			       "provenance statement: build-time-ms is not a number");
	s->build_time_ms = v;
	size_t n = 0;
	int rc = prov_encode(s, again, sizeof again, &n, err, errlen);
	if (rc != 0)
		return rc;
	if (n != len || memcmp(again, buf, len) != 0)
		return sw_errf(err, errlen, SW_EINVAL,
			       "provenance statement: not in canonical form");
	return 0;
}

/* ---- trusted builder keys ---- */

struct key {
	char app[NAME_APP_MAX + 1]; /* "*" = any app */
	char name[PROV_KEY_NAME_MAX + 1];
	char owner[PROV_OWNER_MAX + 1]; /* "" = not bound to an identity */
	uint8_t pk[crypto_sign_PUBLICKEYBYTES];
};

struct prov_keys {
	struct key *keys;
	size_t n;
	char (*required)[NAME_APP_MAX + 1];
	size_t nreq;
};

void prov_keys_free(struct prov_keys *k)
{
	if (k == NULL)
		return;
	free(k->keys);
	free(k->required);
	free(k);
}

size_t prov_keys_count(const struct prov_keys *k)
{
	return k ? k->n : 0;
}

static int key_name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > PROV_KEY_NAME_MAX)
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

static int add_key(struct prov_keys *k, char **w, int n, const char *fname, int lineno,
		   char *err, size_t errlen)
{
	char why[160];
	if (n != 4 && n != 5)
		return sw_errf(err, errlen, SW_EINVAL,
			       "%s:%d: want 'key APP|* NAME BASE64-PUBLIC-KEY [OWNER-SPIFFE-ID]'",
			       fname, lineno);
	if (strcmp(w[1], "*") != 0 && !name_app_ok(w[1]))
		return sw_errf(err, errlen, SW_EINVAL, "%s:%d: invalid app name", fname, lineno);
	if (!key_name_ok(w[2]))
		return sw_errf(err, errlen, SW_EINVAL, "%s:%d: key names are 1-64 of [A-Za-z0-9._-]",
			       fname, lineno);
	if (n == 5 && spiffe_parse(w[4], NULL, NULL, why, sizeof why) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s:%d: the owner must be a SPIFFE ID: %s",
			       fname, lineno, why);
	if (k->n == KEYS_MAX)
		return sw_errf(err, errlen, SW_EINVAL, "%s:%d: more than %d keys", fname, lineno,
			       KEYS_MAX);
	for (size_t i = 0; i < k->n; i++)
		if (strcmp(k->keys[i].name, w[2]) == 0 && strcmp(k->keys[i].app, w[1]) == 0)
			return sw_errf(err, errlen, SW_EINVAL, "%s:%d: key %s is listed twice for %s",
				       fname, lineno, w[2], w[1]);
	struct key *nk = realloc(k->keys, (k->n + 1) * sizeof *nk);
	if (nk == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	k->keys = nk;
	struct key *e = &k->keys[k->n];
	memset(e, 0, sizeof *e);
	size_t pklen = 0;
	if (sodium_base642bin(e->pk, sizeof e->pk, w[3], strlen(w[3]), NULL, &pklen, NULL,
			      sodium_base64_VARIANT_ORIGINAL) != 0 ||
	    pklen != sizeof e->pk)
		return sw_errf(err, errlen, SW_EINVAL,
			       "%s:%d: the public key must be the base64 of 32 bytes", fname, lineno);
	snprintf(e->app, sizeof e->app, "%s", w[1]);
	snprintf(e->name, sizeof e->name, "%s", w[2]);
	if (n == 5)
		snprintf(e->owner, sizeof e->owner, "%s", w[4]);
	k->n++;
	return 0;
}

int prov_keys_parse(const char *text, const char *fname, struct prov_keys **out, char *err,
		    size_t errlen)
{
	struct prov_keys *k = NULL;
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
		char *w[6];
		int n = split(line, w, 5);
		if (n == 0)
			continue;
		if (strcmp(w[0], "key") == 0) {
			if ((rc = add_key(k, w, n, fname, lineno, err, errlen)) != 0)
				goto out;
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
			char(*nr)[NAME_APP_MAX + 1] = realloc(k->required, (k->nreq + 1) * sizeof *nr);
			if (nr == NULL) {
				rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
				goto out;
			}
			k->required = nr;
			snprintf(k->required[k->nreq++], NAME_APP_MAX + 1, "%s", w[1]);
		} else {
			rc = sw_errf(err, errlen, SW_EINVAL,
				     "%s:%d: unknown directive (want 'key' or 'require')", fname,
				     lineno);
			goto out;
		}
	}
	/* An app that requires signatures with no key that could sign them is
	 * a configuration mistake that would refuse every release: say so now. */
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
	prov_keys_free(k);
	return rc;
}

int prov_keys_load(const char *path, struct prov_keys **out, char *err, size_t errlen)
{
	*out = NULL;
	if (path == NULL || path[0] == '\0')
		return prov_keys_parse("", "(none)", out, err, errlen);
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "%s: %s", path, strerror(errno));
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
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: read error", path);
	else if (n > KEYS_FILE_MAX)
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: larger than 1 MiB", path);
	else if (memchr(buf, '\0', n) != NULL)
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: not a text file", path);
	else {
		buf[n] = '\0';
		rc = prov_keys_parse(buf, path, out, err, errlen);
	}
	free(buf);
	return rc;
}

int prov_keys_required(const struct prov_keys *k, const char *app)
{
	for (size_t i = 0; k != NULL && i < k->nreq; i++)
		if (strcmp(k->required[i], "*") == 0 || strcmp(k->required[i], app) == 0)
			return 1;
	return 0;
}

int prov_keys_verify(const struct prov_keys *k, const char *app, const uint8_t *msg,
		     size_t msglen, const uint8_t *sig, size_t siglen, const char *key_name,
		     char *used, size_t usedlen, char *owner, size_t ownerlen, char *why,
		     size_t whylen)
{
	if (used != NULL && usedlen > 0)
		used[0] = '\0';
	if (owner != NULL && ownerlen > 0)
		owner[0] = '\0';
	if (sig == NULL || siglen == 0)
		return sw_errf(why, whylen, SW_EPERM, "there is no signature");
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
		if (crypto_sign_verify_detached(sig, msg, msglen, e->pk) == 0) {
			if (used != NULL)
				snprintf(used, usedlen, "%s", e->name);
			if (owner != NULL)
				snprintf(owner, ownerlen, "%s", e->owner);
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
		       "the signature does not verify with the trusted key%s",
		       candidates > 1 ? "s" : "");
}
