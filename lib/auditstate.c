/*
 * auditstate.c - the auditor's state file (see auditstate.h).
 */
#include "auditstate.h"
#include "hash.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

void auditstate_default_path(char *out, size_t len)
{
	const char *x = getenv("XDG_CONFIG_HOME"), *h = getenv("HOME");
	if (x && *x)
		snprintf(out, len, "%s/slipway/audit-state.json", x);
	else
		snprintf(out, len, "%s/.config/slipway/audit-state.json", h ? h : ".");
}

int auditstate_load(struct auditstate *st)
{
	json_error_t je;
	json_t *j = json_load_file(st->path, 0, &je);
	if (j == NULL)
		return errno == ENOENT || access(st->path, F_OK) != 0 ? 0 : -1;
	const char *o = json_string_value(json_object_get(j, "origin"));
	const char *v = json_string_value(json_object_get(j, "verifier_key"));
	json_t *cp = json_object_get(j, "checkpoint");
	if (o)
		snprintf(st->origin, sizeof st->origin, "%s", o);
	if (v)
		snprintf(st->verifier, sizeof st->verifier, "%s", v);
	if (json_is_object(cp)) {
		const char *r = json_string_value(json_object_get(cp, "root"));
		const char *n = json_string_value(json_object_get(cp, "note"));
		st->size = (uint64_t)json_integer_value(json_object_get(cp, "size"));
		if (r == NULL || hash_unhex(r, st->root, 32) != 0 || n == NULL) {
			json_decref(j);
			return -1;
		}
		snprintf(st->note, sizeof st->note, "%s", n);
	}
	json_decref(j);
	return 0;
}

static int mkdirs(const char *path)
{
	char tmp[4096];
	snprintf(tmp, sizeof tmp, "%s", path);
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

int auditstate_save(const struct auditstate *st)
{
	char root[65], tmp[4200];
	hash_hex(st->root, 32, root);
	json_t *j = json_pack("{s:s,s:s,s:{s:I,s:s,s:s}}", "origin", st->origin, "verifier_key",
			      st->verifier, "checkpoint", "size", (json_int_t)st->size, "root", root,
			      "note", st->note);
	if (j == NULL || mkdirs(st->path) != 0) {
		json_decref(j);
		return -1;
	}
	snprintf(tmp, sizeof tmp, "%s.tmp", st->path);
	int rc = json_dump_file(j, tmp, JSON_INDENT(2));
	json_decref(j);
	if (rc != 0 || rename(tmp, st->path) != 0)
		return -1;
	return 0;
}
