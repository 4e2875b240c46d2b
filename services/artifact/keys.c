/*
 * keys.c - the artifact service's trusted builder keys: which Ed25519
 * public keys may sign provenance statements of which apps, who owns each
 * key, and which apps require a signature. Loaded once at start-up from
 * --trusted-keys (restart to change it). The file format and the checks
 * live in lib/provenance (the agent reads the same file); this is the
 * service's handle on them.
 */
#include "art.h"
#include "err.h"
#include "provenance.h"

#include <stdlib.h>
#include <string.h>

struct art_keys {
	struct prov_keys *p;
};

static int wrap(struct prov_keys *p, struct art_keys **out, char *err, size_t errlen)
{
	*out = calloc(1, sizeof **out);
	if (*out == NULL) {
		prov_keys_free(p);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	(*out)->p = p;
	return 0;
}

int art_keys_parse(const char *text, const char *fname, struct art_keys **out, char *err,
		   size_t errlen)
{
	struct prov_keys *p = NULL;
	*out = NULL;
	int rc = prov_keys_parse(text, fname, &p, err, errlen);
	return rc != 0 ? rc : wrap(p, out, err, errlen);
}

int art_keys_load(const char *path, struct art_keys **out, char *err, size_t errlen)
{
	struct prov_keys *p = NULL;
	char why[512];
	*out = NULL;
	int rc = prov_keys_load(path, &p, why, sizeof why);
	if (rc != 0)
		return sw_errf(err, errlen, rc, "--trusted-keys %s", why);
	return wrap(p, out, err, errlen);
}

void art_keys_free(struct art_keys *k)
{
	if (k == NULL)
		return;
	prov_keys_free(k->p);
	free(k);
}

size_t art_keys_count(const struct art_keys *k)
{
	return k ? prov_keys_count(k->p) : 0;
}

int art_keys_required(const struct art_keys *k, const char *app)
{
	return k ? prov_keys_required(k->p, app) : 0;
}

int art_keys_verify(const struct art_keys *k, const char *app, const char *msg,
		    const uint8_t *sig, size_t siglen, const char *key_name, char *used,
		    size_t usedlen, char *why, size_t whylen)
{
	return art_keys_verify_owner(k, app, (const uint8_t *)msg, strlen(msg), sig, siglen,
				     key_name, used, usedlen, NULL, 0, why, whylen);
}

int art_keys_verify_owner(const struct art_keys *k, const char *app, const uint8_t *msg,
			  size_t msglen, const uint8_t *sig, size_t siglen, const char *key_name,
			  char *used, size_t usedlen, char *owner, size_t ownerlen, char *why,
			  size_t whylen)
{
	return prov_keys_verify(k ? k->p : NULL, app, msg, msglen, sig, siglen, key_name, used,
				usedlen, owner, ownerlen, why, whylen);
}
