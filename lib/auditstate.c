/*
 * auditstate.c - the auditor's verifier state file: load (v1 and v2),
 * save (atomic), add, check and merge checkpoints. See auditstate.h and
 * docs/operations.md ("Auditor trust across time") for the format.
 */
#include "auditstate.h"
#include "err.h"
#include "hash.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void auditstate_fingerprint(const char *verifier_key, char out[65])
{
	uint8_t h[32];
	hash_sha256(verifier_key, strlen(verifier_key), NULL, 0, NULL, 0, h);
	hash_hex(h, 32, out);
}

void auditstate_free(struct auditstate *st)
{
	if (st == NULL)
		return;
	for (size_t i = 0; i < st->n; i++)
		free(st->cps[i].note);
	free(st->cps);
	st->cps = NULL;
	st->n = st->cap = 0;
}

const struct auditstate_cp *auditstate_latest(const struct auditstate *st)
{
	return st->n ? &st->cps[st->n - 1] : NULL;
}

int auditstate_add(struct auditstate *st, uint64_t size, const uint8_t root[32], const char *note,
		   char *err, size_t errlen)
{
	size_t i = 0;
	while (i < st->n && st->cps[i].size < size)
		i++;
	if (i < st->n && st->cps[i].size == size) {
		if (memcmp(st->cps[i].root, root, 32) == 0)
			return 0;
		char a[65], b[65];
		hash_hex(st->cps[i].root, 32, a);
		hash_hex(root, 32, b);
		return sw_errf(err, errlen, SW_EINVAL,
			       "two different signed checkpoints of size %llu (roots %s and %s): the "
			       "log showed two histories (a split view, or a rollback re-signed); "
			       "keep both as evidence",
			       (unsigned long long)size, a, b);
	}
	if (st->n >= AUDITSTATE_MAX_CHECKPOINTS)
		return sw_errf(err, errlen, SW_ELIMIT, "more than %d checkpoints in one state file",
			       AUDITSTATE_MAX_CHECKPOINTS);
	if (st->n == st->cap) {
		size_t cap = st->cap ? st->cap * 2 : 16;
		struct auditstate_cp *n = realloc(st->cps, cap * sizeof *n);
		if (n == NULL)
			return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		st->cps = n;
		st->cap = cap;
	}
	char *copy = strdup(note ? note : "");
	if (copy == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	memmove(&st->cps[i + 1], &st->cps[i], (st->n - i) * sizeof *st->cps);
	st->cps[i].size = size;
	memcpy(st->cps[i].root, root, 32);
	st->cps[i].note = copy;
	st->n++;
	return 0;
}

/* One {size, root, note} object into st. */
static int load_cp(struct auditstate *st, json_t *cp, const char *where, char *err, size_t errlen)
{
	json_t *sz = json_object_get(cp, "size");
	const char *r = json_string_value(json_object_get(cp, "root"));
	const char *n = json_string_value(json_object_get(cp, "note"));
	uint8_t root[32];
	if (!json_is_object(cp) || !json_is_integer(sz) || json_integer_value(sz) < 0 || r == NULL ||
	    n == NULL || strlen(n) >= NOTE_MAX || hash_unhex(r, root, 32) != 0)
		return sw_errf(err, errlen, SW_EINVAL,
			       "%s: wants {\"size\": N, \"root\": 64 hex digits, \"note\": the signed "
			       "note}",
			       where);
	return auditstate_add(st, (uint64_t)json_integer_value(sz), root, n, err, errlen);
}

int auditstate_load(const char *path, struct auditstate *st, char *err, size_t errlen)
{
	json_error_t je;
	int rc = 0;
	memset(st, 0, sizeof *st);
	if (access(path, F_OK) != 0 && errno == ENOENT)
		return 0;
	json_t *j = json_load_file(path, JSON_REJECT_DUPLICATES, &je);
	if (j == NULL)
		return sw_errf(err, errlen, access(path, R_OK) != 0 ? SW_EIO : SW_EINVAL,
			       "%s: %s (line %d)", path, je.text, je.line);
	const char *fmt = json_string_value(json_object_get(j, "format"));
	const char *o = json_string_value(json_object_get(j, "origin"));
	const char *v = json_string_value(json_object_get(j, "verifier_key"));
	const char *fp = json_string_value(json_object_get(j, "verifier_fingerprint"));
	json_t *cps = json_object_get(j, "checkpoints"), *one = json_object_get(j, "checkpoint");
	if (!json_is_object(j) ||
	    (fmt != NULL && strcmp(fmt, AUDITSTATE_FORMAT) != 0 &&
	     strcmp(fmt, "slipway-audit-state/1") != 0)) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: not a state file of a known format (%s)",
			     path, fmt ? fmt : "no format");
		goto out;
	}
	if ((o && strlen(o) >= sizeof st->origin) || (v && strlen(v) >= sizeof st->verifier)) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: origin or verifier_key too long", path);
		goto out;
	}
	snprintf(st->origin, sizeof st->origin, "%s", o ? o : "");
	snprintf(st->verifier, sizeof st->verifier, "%s", v ? v : "");
	if (fp != NULL) {
		char want[65];
		auditstate_fingerprint(st->verifier, want);
		if (strcmp(fp, want) != 0) {
			rc = sw_errf(err, errlen, SW_EINVAL,
				     "%s: verifier_fingerprint does not match verifier_key (the file "
				     "was edited)",
				     path);
			goto out;
		}
	}
	if (cps != NULL && !json_is_array(cps)) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: checkpoints must be an array", path);
		goto out;
	}
	if (json_array_size(cps) > AUDITSTATE_MAX_CHECKPOINTS) {
		rc = sw_errf(err, errlen, SW_ELIMIT, "%s: more than %d checkpoints", path,
			     AUDITSTATE_MAX_CHECKPOINTS);
		goto out;
	}
	size_t i;
	json_t *cp;
	json_array_foreach(cps, i, cp) {
		char where[4200];
		snprintf(where, sizeof where, "%s: checkpoints[%zu]", path, i);
		if ((rc = load_cp(st, cp, where, err, errlen)) != 0)
			goto out;
	}
	/* v1 (and v1 readers): the newest as "checkpoint". */
	if (one != NULL && !json_is_null(one)) {
		char where[4200];
		snprintf(where, sizeof where, "%s: checkpoint", path);
		if ((rc = load_cp(st, one, where, err, errlen)) != 0)
			goto out;
	}
out:
	json_decref(j);
	return rc;
}

static int mkparents(const char *path)
{
	char tmp[4096];
	if (snprintf(tmp, sizeof tmp, "%s", path) >= (int)sizeof tmp)
		return -1;
	for (char *p = tmp + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		if (mkdir(tmp, 0700) != 0 && errno != EEXIST)
			return -1;
		*p = '/';
	}
	return 0;
}

static json_t *cp_json(const struct auditstate_cp *c)
{
	char root[65];
	hash_hex(c->root, 32, root);
	return json_pack("{s:I,s:s,s:s}", "size", (json_int_t)c->size, "root", root, "note",
			 c->note);
}

int auditstate_save(const char *path, const struct auditstate *st, char *err, size_t errlen)
{
	char tmp[4200], fp[65];
	int rc = 0;
	auditstate_fingerprint(st->verifier, fp);
	json_t *arr = json_array();
	for (size_t i = 0; i < st->n; i++)
		json_array_append_new(arr, cp_json(&st->cps[i]));
	const struct auditstate_cp *l = auditstate_latest(st);
	json_t *j = json_pack("{s:s,s:s,s:s,s:s,s:o,s:o}", "format", AUDITSTATE_FORMAT, "origin",
			      st->origin, "verifier_key", st->verifier, "verifier_fingerprint",
			      st->verifier[0] ? fp : "", "checkpoint", l ? cp_json(l) : json_null(),
			      "checkpoints", arr);
	if (st->verifier[0] == '\0')
		json_object_del(j, "verifier_fingerprint");
	if (j == NULL || mkparents(path) != 0 ||
	    snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp) {
		rc = sw_errf(err, errlen, SW_EIO, "cannot write %s", path);
		goto out;
	}
	mode_t old = umask(077);
	int d = json_dump_file(j, tmp, JSON_INDENT(2));
	umask(old);
	if (d != 0 || rename(tmp, path) != 0) {
		unlink(tmp);
		rc = sw_errf(err, errlen, SW_EIO, "cannot write %s: %s", path, strerror(errno));
	}
out:
	json_decref(j);
	return rc;
}

int auditstate_check(const struct auditstate *st, const struct note_verifier *v, char *err,
		     size_t errlen)
{
	for (size_t i = 0; i < st->n; i++) {
		const struct auditstate_cp *c = &st->cps[i];
		char body[NOTE_MAX], origin[256], why[512];
		uint64_t size;
		uint8_t root[32];
		if (note_verify(v, c->note, body, sizeof body, why, sizeof why) != 0 ||
		    note_checkpoint_parse(body, origin, sizeof origin, &size, root, why,
					  sizeof why) != 0)
			return sw_errf(err, errlen, SW_EINVAL, "checkpoint of size %llu: %s",
				       (unsigned long long)c->size, why);
		if (size != c->size || memcmp(root, c->root, 32) != 0)
			return sw_errf(err, errlen, SW_EINVAL,
				       "checkpoint of size %llu: size or root disagree with its signed "
				       "note (the file was edited)",
				       (unsigned long long)c->size);
		if (st->origin[0] && strcmp(origin, st->origin) != 0)
			return sw_errf(err, errlen, SW_EINVAL,
				       "checkpoint of size %llu is for log '%s', not '%s'",
				       (unsigned long long)c->size, origin, st->origin);
	}
	return 0;
}

int auditstate_merge(struct auditstate *into, const struct auditstate *other,
		     const struct note_verifier *v, char *err, size_t errlen)
{
	int rc;
	if (into->verifier[0] && other->verifier[0] && strcmp(into->verifier, other->verifier) != 0)
		return sw_errf(err, errlen, SW_EINVAL,
			       "the files pin different keys (%s and %s): compare both with the "
			       "fingerprint published out of band before trusting either",
			       into->verifier, other->verifier);
	if (into->origin[0] && other->origin[0] && strcmp(into->origin, other->origin) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "the files are for different logs ('%s', '%s')",
			       into->origin, other->origin);
	if (into->origin[0] == '\0')
		snprintf(into->origin, sizeof into->origin, "%s", other->origin);
	if (into->verifier[0] == '\0')
		snprintf(into->verifier, sizeof into->verifier, "%s", other->verifier);
	if ((rc = auditstate_check(other, v, err, errlen)) != 0)
		return rc;
	for (size_t i = 0; i < other->n; i++)
		if ((rc = auditstate_add(into, other->cps[i].size, other->cps[i].root,
					 other->cps[i].note, err, errlen)) != 0)
			return rc;
	return 0;
}
