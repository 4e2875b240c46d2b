/*
 * manifest.c - the bundle manifest, slipway.json at the bundle root: how to
 * start the release, how to tell it is healthy, how long it may take to
 * stop, and which secrets it needs and how each is handed over. The schema
 * is documented in README.md. Parsing is strict (jansson, unknown keys are
 * errors) because a typo in a health check should fail the deployment
 * loudly, not deploy a release that is never checked.
 */
#include "agent.h"
#include "err.h"
#include "sealed.h"

#include <jansson.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ARGS 64
#define MAX_ARG_LEN 4096
#define MAX_ENV 256
#define MAX_ENV_VALUE 32768
#define MAX_SECRETS 64
#define MAX_HTTP_PATH 1024

int agent_relpath_ok(const char *p)
{
	if (p == NULL || p[0] == '\0' || p[0] == '/' || strlen(p) > 1024)
		return 0;
	if (strcmp(p, ".") == 0)
		return 1;
	const char *s = p;
	for (;;) {
		const char *slash = strchr(s, '/');
		size_t n = slash ? (size_t)(slash - s) : strlen(s);
		if (n == 0 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
			return 0;
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] > 0x7e)
				return 0;
		if (slash == NULL)
			return 1;
		s = slash + 1;
	}
}

static int env_name_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 128)
		return 0;
	if (!((s[0] >= 'A' && s[0] <= 'Z') || (s[0] >= 'a' && s[0] <= 'z') || s[0] == '_'))
		return 0;
	for (size_t i = 1; i < n; i++) {
		char c = s[i];
		if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
		      c == '_'))
			return 0;
	}
	return 1;
}

/* PORT and SLIPWAY_* belong to the agent: a manifest cannot override them. */
static int env_reserved(const char *s)
{
	return strcmp(s, "PORT") == 0 || strncmp(s, "SLIPWAY_", 8) == 0;
}

/* Every key of o must be in the NULL-terminated list `allowed`. */
static int only_keys(json_t *o, const char *where, const char *const *allowed, char *err,
		     size_t errlen)
{
	const char *k;
	json_t *v;
	json_object_foreach(o, k, v) {
		int ok = 0;
		for (size_t i = 0; allowed[i] != NULL; i++)
			if (strcmp(k, allowed[i]) == 0)
				ok = 1;
		if (!ok)
			return sw_errf(err, errlen, SW_EINVAL, "%s: unknown key '%.64s'", where, k);
	}
	return 0;
}

static int get_str(json_t *o, const char *key, const char *where, int required, size_t max,
		   char **out, char *err, size_t errlen)
{
	json_t *v = json_object_get(o, key);
	*out = NULL;
	if (v == NULL) {
		if (required)
			return sw_errf(err, errlen, SW_EINVAL, "%s.%s is required", where, key);
		*out = strdup("");
		return *out ? 0 : SW_ENOMEM;
	}
	if (!json_is_string(v))
		return sw_errf(err, errlen, SW_EINVAL, "%s.%s must be a string", where, key);
	if (json_string_length(v) > max)
		return sw_errf(err, errlen, SW_EINVAL, "%s.%s is longer than %zu", where, key, max);
	*out = strdup(json_string_value(v));
	return *out ? 0 : SW_ENOMEM;
}

static int get_int(json_t *o, const char *key, const char *where, long long def, long long min,
		   long long max, long long *out, char *err, size_t errlen)
{
	json_t *v = json_object_get(o, key);
	if (v == NULL) {
		*out = def;
		return 0;
	}
	if (!json_is_integer(v))
		return sw_errf(err, errlen, SW_EINVAL, "%s.%s must be an integer", where, key);
	long long x = json_integer_value(v);
	if (x < min || x > max)
		return sw_errf(err, errlen, SW_EINVAL, "%s.%s must be in %lld..%lld", where, key,
			       min, max);
	*out = x;
	return 0;
}

static void free_strv(char **v)
{
	if (v == NULL)
		return;
	for (char **p = v; *p != NULL; p++)
		free(*p);
	free(v);
}

/* A command: a non-empty array of strings; argv[0] is absolute, a safe
 * path relative to the bundle root, or a bare name searched in PATH. */
static int get_argv(json_t *v, const char *where, char ***out, size_t *n, char *err,
		    size_t errlen)
{
	*out = NULL;
	*n = 0;
	if (!json_is_array(v) || json_array_size(v) == 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s must be a non-empty array of strings",
			       where);
	size_t cnt = json_array_size(v);
	if (cnt > MAX_ARGS)
		return sw_errf(err, errlen, SW_EINVAL, "%s has more than %d arguments", where,
			       MAX_ARGS);
	char **a = calloc(cnt + 1, sizeof *a);
	if (a == NULL)
		return SW_ENOMEM;
	for (size_t i = 0; i < cnt; i++) {
		json_t *s = json_array_get(v, i);
		if (!json_is_string(s) || json_string_length(s) > MAX_ARG_LEN) {
			free_strv(a);
			return sw_errf(err, errlen, SW_EINVAL, "%s[%zu] must be a string of at most %d bytes",
				       where, i, MAX_ARG_LEN);
		}
		if ((a[i] = strdup(json_string_value(s))) == NULL) {
			free_strv(a);
			return SW_ENOMEM;
		}
	}
	const char *a0 = a[0];
	if (a0[0] == '\0' || (a0[0] != '/' && strchr(a0, '/') != NULL && !agent_relpath_ok(a0))) {
		free_strv(a);
		return sw_errf(err, errlen, SW_EINVAL,
			       "%s[0] must be an absolute path, a path inside the bundle (no '..') "
			       "or a program name", where);
	}
	*out = a;
	*n = cnt;
	return 0;
}

static int parse_start(json_t *s, struct agent_manifest *m, char *err, size_t errlen)
{
	static const char *const keys[] = { "command", "workdir", "env", NULL };
	int rc;
	if (!json_is_object(s))
		return sw_errf(err, errlen, SW_EINVAL, "start must be an object");
	if ((rc = only_keys(s, "start", keys, err, errlen)) != 0)
		return rc;
	json_t *cmd = json_object_get(s, "command");
	if (cmd == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "start.command is required");
	if ((rc = get_argv(cmd, "start.command", &m->argv, &m->argc, err, errlen)) != 0)
		return rc;
	if ((rc = get_str(s, "workdir", "start", 0, 1024, &m->workdir, err, errlen)) != 0)
		return rc;
	if (m->workdir[0] == '\0') {
		free(m->workdir);
		if ((m->workdir = strdup(".")) == NULL)
			return SW_ENOMEM;
	}
	if (!agent_relpath_ok(m->workdir))
		return sw_errf(err, errlen, SW_EINVAL,
			       "start.workdir must be a relative path inside the bundle");
	json_t *env = json_object_get(s, "env");
	size_t cnt = 0;
	if (env != NULL) {
		if (!json_is_object(env))
			return sw_errf(err, errlen, SW_EINVAL, "start.env must be an object of strings");
		cnt = json_object_size(env);
		if (cnt > MAX_ENV)
			return sw_errf(err, errlen, SW_EINVAL, "start.env has more than %d entries",
				       MAX_ENV);
	}
	if ((m->env = calloc(cnt + 1, sizeof *m->env)) == NULL)
		return SW_ENOMEM;
	const char *k;
	json_t *v;
	if (env != NULL) {
		json_object_foreach(env, k, v) {
			if (!env_name_ok(k))
				return sw_errf(err, errlen, SW_EINVAL,
					       "start.env: '%.64s' is not a valid variable name", k);
			if (env_reserved(k))
				return sw_errf(err, errlen, SW_EINVAL,
					       "start.env: %s is set by the agent", k);
			if (!json_is_string(v) || json_string_length(v) > MAX_ENV_VALUE ||
			    strlen(json_string_value(v)) != json_string_length(v))
				return sw_errf(err, errlen, SW_EINVAL,
					       "start.env.%s must be a string without NUL", k);
			size_t len = strlen(k) + 1 + json_string_length(v) + 1;
			char *e = malloc(len);
			if (e == NULL)
				return SW_ENOMEM;
			snprintf(e, len, "%s=%s", k, json_string_value(v));
			m->env[m->nenv++] = e;
		}
	}
	return 0;
}

static int port_of(json_t *o, const char *where, int *port, char *err, size_t errlen)
{
	long long p;
	int rc = get_int(o, "port", where, 0, 0, 65535, &p, err, errlen);
	*port = (int)p;
	return rc;
}

static int parse_health(json_t *h, struct agent_manifest *m, char *err, size_t errlen)
{
	static const char *const keys[] = { "http", "tcp", "command", "interval_ms", "timeout_ms",
					    "retries", "deadline_ms", "live_interval_ms", NULL };
	struct agent_health *c = &m->health;
	int rc;
	if (!json_is_object(h))
		return sw_errf(err, errlen, SW_EINVAL, "health must be an object");
	if ((rc = only_keys(h, "health", keys, err, errlen)) != 0)
		return rc;
	json_t *http = json_object_get(h, "http"), *tcp = json_object_get(h, "tcp"),
	       *cmd = json_object_get(h, "command");
	if ((http != NULL) + (tcp != NULL) + (cmd != NULL) != 1)
		return sw_errf(err, errlen, SW_EINVAL,
			       "health needs exactly one of http, tcp or command");
	if (http != NULL) {
		static const char *const hk[] = { "path", "port", "status", NULL };
		if (!json_is_object(http))
			return sw_errf(err, errlen, SW_EINVAL, "health.http must be an object");
		if ((rc = only_keys(http, "health.http", hk, err, errlen)) != 0)
			return rc;
		c->kind = AGENT_CHECK_HTTP;
		if ((rc = get_str(http, "path", "health.http", 1, MAX_HTTP_PATH, &c->path, err,
				  errlen)) != 0)
			return rc;
		if (c->path[0] != '/')
			return sw_errf(err, errlen, SW_EINVAL, "health.http.path must start with '/'");
		for (const char *p = c->path; *p; p++)
			if ((unsigned char)*p <= 0x20 || (unsigned char)*p > 0x7e)
				return sw_errf(err, errlen, SW_EINVAL,
					       "health.http.path must be printable ASCII without spaces");
		if ((rc = port_of(http, "health.http", &c->port, err, errlen)) != 0)
			return rc;
		long long st;
		if ((rc = get_int(http, "status", "health.http", 0, 100, 599, &st, err, errlen)) != 0)
			return rc;
		c->expect_status = (int)st;
	} else if (tcp != NULL) {
		static const char *const tk[] = { "port", NULL };
		if (!json_is_object(tcp))
			return sw_errf(err, errlen, SW_EINVAL, "health.tcp must be an object");
		if ((rc = only_keys(tcp, "health.tcp", tk, err, errlen)) != 0)
			return rc;
		c->kind = AGENT_CHECK_TCP;
		if ((rc = port_of(tcp, "health.tcp", &c->port, err, errlen)) != 0)
			return rc;
	} else {
		c->kind = AGENT_CHECK_COMMAND;
		if ((rc = get_argv(cmd, "health.command", &c->argv, &c->argc, err, errlen)) != 0)
			return rc;
	}
	long long retries;
	if ((rc = get_int(h, "interval_ms", "health", 500, 10, 600000, &c->interval_ms, err,
			  errlen)) != 0 ||
	    (rc = get_int(h, "timeout_ms", "health", 2000, 10, 600000, &c->timeout_ms, err,
			  errlen)) != 0 ||
	    (rc = get_int(h, "retries", "health", 20, 0, 100000, &retries, err, errlen)) != 0 ||
	    (rc = get_int(h, "deadline_ms", "health", 60000, 100, 3600000, &c->deadline_ms, err,
			  errlen)) != 0 ||
	    (rc = get_int(h, "live_interval_ms", "health", 10000, 100, 3600000,
			  &c->live_interval_ms, err, errlen)) != 0)
		return rc;
	c->retries = (int)retries;
	return 0;
}

static int parse_secrets(json_t *s, struct agent_manifest *m, char *err, size_t errlen)
{
	static const char *const keys[] = { "name", "env", "file", NULL };
	if (!json_is_array(s))
		return sw_errf(err, errlen, SW_EINVAL, "secrets must be an array");
	size_t cnt = json_array_size(s);
	if (cnt > MAX_SECRETS)
		return sw_errf(err, errlen, SW_EINVAL, "more than %d secrets", MAX_SECRETS);
	if (cnt == 0)
		return 0;
	if ((m->secrets = calloc(cnt, sizeof *m->secrets)) == NULL)
		return SW_ENOMEM;
	for (size_t i = 0; i < cnt; i++) {
		json_t *o = json_array_get(s, i);
		struct agent_secret_spec *sp = &m->secrets[i];
		char where[32];
		int rc;
		snprintf(where, sizeof where, "secrets[%zu]", i);
		m->nsecrets = i + 1;
		if (!json_is_object(o))
			return sw_errf(err, errlen, SW_EINVAL, "%s must be an object", where);
		if ((rc = only_keys(o, where, keys, err, errlen)) != 0 ||
		    (rc = get_str(o, "name", where, 1, SEALED_NAME_MAX, &sp->name, err, errlen)) != 0 ||
		    (rc = get_str(o, "env", where, 0, 128, &sp->env, err, errlen)) != 0 ||
		    (rc = get_str(o, "file", where, 0, SEALED_NAME_MAX, &sp->file, err, errlen)) != 0)
			return rc;
		if (!sealed_name_ok(sp->name))
			return sw_errf(err, errlen, SW_EINVAL, "%s.name '%.64s' is not a valid secret name",
				       where, sp->name);
		if ((sp->env[0] != '\0') == (sp->file[0] != '\0'))
			return sw_errf(err, errlen, SW_EINVAL, "%s needs exactly one of env or file",
				       where);
		if (sp->env[0] != '\0') {
			if (!env_name_ok(sp->env) || env_reserved(sp->env))
				return sw_errf(err, errlen, SW_EINVAL,
					       "%s.env '%.64s' is not a usable variable name", where,
					       sp->env);
			size_t kl = strlen(sp->env);
			for (size_t j = 0; j < m->nenv; j++)
				if (strncmp(m->env[j], sp->env, kl) == 0 && m->env[j][kl] == '=')
					return sw_errf(err, errlen, SW_EINVAL,
						       "%s.env %s is also set in start.env", where,
						       sp->env);
		}
		/* File names follow the secret name rules: a plain, safe name. */
		if (sp->file[0] != '\0' && !sealed_name_ok(sp->file))
			return sw_errf(err, errlen, SW_EINVAL, "%s.file '%.64s' is not a plain file name",
				       where, sp->file);
		for (size_t j = 0; j < i; j++) {
			const struct agent_secret_spec *q = &m->secrets[j];
			if ((sp->env[0] && strcmp(sp->env, q->env) == 0) ||
			    (sp->file[0] && strcmp(sp->file, q->file) == 0))
				return sw_errf(err, errlen, SW_EINVAL,
					       "%s: two secrets go to the same place", where);
		}
	}
	return 0;
}

int agent_manifest_parse(const char *json, size_t len, struct agent_manifest **out, char *err,
			 size_t errlen)
{
	static const char *const keys[] = { "schema", "app", "version", "start",
					    "health", "stop", "secrets", NULL };
	int rc = 0;
	json_t *root = NULL;
	json_error_t je;
	struct agent_manifest *m = NULL;

	*out = NULL;
	if (len > AGENT_MANIFEST_MAX) {
		rc = sw_errf(err, errlen, SW_EINVAL, "manifest larger than %d bytes",
			     AGENT_MANIFEST_MAX);
		goto out;
	}
	root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &je);
	if (root == NULL) {
		rc = sw_errf(err, errlen, SW_EINVAL, "manifest is not valid JSON (line %d: %.80s)",
			     je.line, je.text);
		goto out;
	}
	if (!json_is_object(root)) {
		rc = sw_errf(err, errlen, SW_EINVAL, "manifest must be a JSON object");
		goto out;
	}
	if ((rc = only_keys(root, "manifest", keys, err, errlen)) != 0)
		goto out;
	if ((m = calloc(1, sizeof *m)) == NULL) {
		rc = SW_ENOMEM;
		goto out;
	}
	long long schema;
	json_t *sv = json_object_get(root, "schema");
	if (sv == NULL) {
		rc = sw_errf(err, errlen, SW_EINVAL, "manifest.schema is required (1)");
		goto out;
	}
	if ((rc = get_int(root, "schema", "manifest", 1, 1, 1, &schema, err, errlen)) != 0 ||
	    (rc = get_str(root, "app", "manifest", 0, AGENT_APP_MAX, &m->app, err, errlen)) != 0 ||
	    (rc = get_str(root, "version", "manifest", 0, AGENT_VERSION_MAX, &m->version, err,
			  errlen)) != 0)
		goto out;
	json_t *start = json_object_get(root, "start"), *health = json_object_get(root, "health");
	if (start == NULL || health == NULL) {
		rc = sw_errf(err, errlen, SW_EINVAL, "manifest needs start and health");
		goto out;
	}
	if ((rc = parse_start(start, m, err, errlen)) != 0 ||
	    (rc = parse_health(health, m, err, errlen)) != 0)
		goto out;
	m->stop_grace_ms = 10000;
	json_t *stop = json_object_get(root, "stop");
	if (stop != NULL) {
		static const char *const sk[] = { "grace_ms", NULL };
		if (!json_is_object(stop)) {
			rc = sw_errf(err, errlen, SW_EINVAL, "stop must be an object");
			goto out;
		}
		if ((rc = only_keys(stop, "stop", sk, err, errlen)) != 0 ||
		    (rc = get_int(stop, "grace_ms", "stop", 10000, 0, 600000, &m->stop_grace_ms, err,
				  errlen)) != 0)
			goto out;
	}
	json_t *secrets = json_object_get(root, "secrets");
	if (secrets != NULL && (rc = parse_secrets(secrets, m, err, errlen)) != 0)
		goto out;
	*out = m;
	m = NULL;
out:
	if (rc == SW_ENOMEM)
		sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	agent_manifest_free(m);
	json_decref(root);
	return rc;
}

int agent_manifest_load(const char *dir, struct agent_manifest **out, char *err, size_t errlen)
{
	char path[AGENT_PATH_MAX], *buf = NULL;
	int fd = -1, rc = 0;
	struct stat st;

	*out = NULL;
	if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, AGENT_MANIFEST_NAME) >= sizeof path)
		return sw_errf(err, errlen, SW_EINVAL, "path too long");
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		rc = sw_errf(err, errlen, errno == ENOENT ? SW_EINVAL : SW_EIO,
			     "the bundle has no readable %s at its root (%s)", AGENT_MANIFEST_NAME,
			     strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_size > AGENT_MANIFEST_MAX) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s must be a regular file of at most %d bytes",
			     AGENT_MANIFEST_NAME, AGENT_MANIFEST_MAX);
		goto out;
	}
	if ((buf = malloc((size_t)st.st_size + 1)) == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
		if (r <= 0) {
			rc = sw_errf(err, errlen, SW_EIO, "read %s failed", AGENT_MANIFEST_NAME);
			goto out;
		}
		got += (size_t)r;
	}
	rc = agent_manifest_parse(buf, got, out, err, errlen);
out:
	free(buf);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Makes a relative program path (one with a '/') absolute under dir. */
static int resolve_prog(char **argv, const char *dir)
{
	if (argv == NULL || argv[0] == NULL || argv[0][0] == '/' || strchr(argv[0], '/') == NULL)
		return 0;
	size_t len = strlen(dir) + 1 + strlen(argv[0]) + 1;
	char *p = malloc(len);
	if (p == NULL)
		return SW_ENOMEM;
	snprintf(p, len, "%s/%s", dir, argv[0]);
	free(argv[0]);
	argv[0] = p;
	return 0;
}

int agent_manifest_resolve(struct agent_manifest *m, const char *release_dir)
{
	int rc = resolve_prog(m->argv, release_dir);
	if (rc == 0)
		rc = resolve_prog(m->health.argv, release_dir);
	return rc;
}

void agent_manifest_free(struct agent_manifest *m)
{
	if (m == NULL)
		return;
	free(m->app);
	free(m->version);
	free_strv(m->argv);
	free(m->workdir);
	free_strv(m->env);
	free(m->health.path);
	free_strv(m->health.argv);
	for (size_t i = 0; i < m->nsecrets; i++) {
		free(m->secrets[i].name);
		free(m->secrets[i].env);
		free(m->secrets[i].file);
	}
	free(m->secrets);
	free(m);
}
