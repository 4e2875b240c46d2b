/*
 * fuzz_manifest.c - the bundle manifest parser (services/agent/manifest.c):
 * slipway.json comes from whoever built the bundle.
 *
 * Input: the manifest text.
 *
 * Invariants of an accepted manifest:
 *  - argv and the health command are non-empty, NULL-terminated, of the
 *    counted length, and argv[0] is absolute, a safe relative path or a
 *    bare name; after agent_manifest_resolve a relative program is under
 *    the release directory and nothing else moved;
 *  - workdir is a safe relative path (agent_relpath_ok);
 *  - every env entry is NAME=VALUE with a valid, unreserved, unique name
 *    (PORT and SLIPWAY_* belong to the agent);
 *  - every secret has a valid name and exactly one of env (a valid,
 *    unreserved variable set nowhere else) or file (a plain name); no two
 *    secrets go to the same place;
 *  - numbers are within the documented ranges; the HTTP path starts with
 *    '/' and is printable ASCII.
 * Any refusal is SW_EINVAL with a message, or SW_ENOMEM.
 */
#include "fuzz.h"

#include "../../services/agent/agent.h"
#include "err.h"
#include "sealed.h"

static int name_ok(const char *s, size_t n)
{
	if (n == 0 || n > 128)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		int ok = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' ||
			 (i > 0 && c >= '0' && c <= '9');
		if (!ok)
			return 0;
	}
	return 1;
}

static int reserved(const char *s, size_t n)
{
	return (n == 4 && strncmp(s, "PORT", 4) == 0) || (n >= 8 && strncmp(s, "SLIPWAY_", 8) == 0);
}

static void check_argv(char **argv, size_t argc, const char *what)
{
	FUZZ_CHECK(argv != NULL && argc >= 1 && argc <= 64, "%s: %zu arguments", what, argc);
	for (size_t i = 0; i < argc; i++)
		FUZZ_CHECK(argv[i] != NULL, "%s[%zu] is NULL", what, i);
	FUZZ_CHECK(argv[argc] == NULL, "%s is not NULL-terminated", what);
	const char *a0 = argv[0];
	FUZZ_CHECK(a0[0] == '/' || strchr(a0, '/') == NULL || agent_relpath_ok(a0),
		   "%s[0] '%s' is an unsafe path", what, a0);
	FUZZ_CHECK(a0[0] != '\0', "%s[0] is empty", what);
}

static void check_resolved(char **before0, char **argv, const char *dir)
{
	if (argv == NULL)
		return;
	const char *b = *before0;
	if (b[0] == '/' || strchr(b, '/') == NULL) {
		FUZZ_CHECK(strcmp(argv[0], b) == 0, "resolve changed '%s'", b);
		return;
	}
	size_t dl = strlen(dir);
	FUZZ_CHECK(strncmp(argv[0], dir, dl) == 0 && argv[0][dl] == '/' &&
			   strcmp(argv[0] + dl + 1, b) == 0,
		   "'%s' resolved to '%s'", b, argv[0]);
}

static void check(const struct agent_manifest *m)
{
	FUZZ_CHECK(strlen(m->app) <= AGENT_APP_MAX && strlen(m->version) <= AGENT_VERSION_MAX,
		   "app/version too long");
	check_argv(m->argv, m->argc, "start.command");
	FUZZ_CHECK(m->workdir != NULL && agent_relpath_ok(m->workdir), "workdir '%s'", m->workdir);
	FUZZ_CHECK(m->nenv <= 256 && m->env != NULL && m->env[m->nenv] == NULL, "env list");
	for (size_t i = 0; i < m->nenv; i++) {
		const char *eq = strchr(m->env[i], '=');
		FUZZ_CHECK(eq != NULL, "env entry '%s' without '='", m->env[i]);
		size_t nl = (size_t)(eq - m->env[i]);
		FUZZ_CHECK(name_ok(m->env[i], nl) && !reserved(m->env[i], nl),
			   "env entry '%s'", m->env[i]);
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(strncmp(m->env[j], m->env[i], nl + 1) != 0, "env '%.*s' twice",
				   (int)nl, m->env[i]);
	}
	const struct agent_health *h = &m->health;
	switch (h->kind) {
	case AGENT_CHECK_HTTP:
		FUZZ_CHECK(h->path != NULL && h->path[0] == '/', "http path");
		for (const char *p = h->path; *p; p++)
			FUZZ_CHECK((unsigned char)*p > 0x20 && (unsigned char)*p < 0x7f,
				   "http path byte 0x%02x", (unsigned char)*p);
		FUZZ_CHECK(h->expect_status == 0 || (h->expect_status >= 100 && h->expect_status <= 599),
			   "status %d", h->expect_status);
		FUZZ_CHECK(h->port >= 0 && h->port <= 65535, "port %d", h->port);
		break;
	case AGENT_CHECK_TCP:
		FUZZ_CHECK(h->port >= 0 && h->port <= 65535, "port %d", h->port);
		break;
	case AGENT_CHECK_COMMAND:
		check_argv(h->argv, h->argc, "health.command");
		break;
	default:
		FUZZ_CHECK(0, "health kind %d", (int)h->kind);
	}
	FUZZ_CHECK(h->interval_ms >= 10 && h->interval_ms <= 600000, "interval");
	FUZZ_CHECK(h->timeout_ms >= 10 && h->timeout_ms <= 600000, "timeout");
	FUZZ_CHECK(h->retries >= 0 && h->retries <= 100000, "retries");
	FUZZ_CHECK(h->deadline_ms >= 100 && h->deadline_ms <= 3600000, "deadline");
	FUZZ_CHECK(h->live_interval_ms >= 100 && h->live_interval_ms <= 3600000, "live interval");
	FUZZ_CHECK(m->stop_grace_ms >= 0 && m->stop_grace_ms <= 600000, "grace");
	FUZZ_CHECK(m->nsecrets <= 64, "secrets");
	for (size_t i = 0; i < m->nsecrets; i++) {
		const struct agent_secret_spec *s = &m->secrets[i];
		FUZZ_CHECK(sealed_name_ok(s->name), "secret name '%s'", s->name);
		FUZZ_CHECK((s->env[0] != '\0') != (s->file[0] != '\0'), "secret %zu: env xor file", i);
		if (s->env[0]) {
			FUZZ_CHECK(name_ok(s->env, strlen(s->env)) && !reserved(s->env, strlen(s->env)),
				   "secret env '%s'", s->env);
			for (size_t j = 0; j < m->nenv; j++)
				FUZZ_CHECK(!(strncmp(m->env[j], s->env, strlen(s->env)) == 0 &&
					     m->env[j][strlen(s->env)] == '='),
					   "secret env %s also in start.env", s->env);
		} else {
			FUZZ_CHECK(sealed_name_ok(s->file) && strchr(s->file, '/') == NULL,
				   "secret file '%s'", s->file);
		}
		for (size_t j = 0; j < i; j++) {
			const struct agent_secret_spec *q = &m->secrets[j];
			FUZZ_CHECK(!(s->env[0] && strcmp(s->env, q->env) == 0) &&
					   !(s->file[0] && strcmp(s->file, q->file) == 0),
				   "two secrets go to the same place");
		}
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct agent_manifest *m = NULL;
	char err[256] = "";
	int rc = agent_manifest_parse((const char *)data, size, &m, err, sizeof err);
	if (rc != 0) {
		FUZZ_CHECK(m == NULL, "a refused manifest was returned");
		FUZZ_CHECK(rc == SW_ENOMEM || (rc == SW_EINVAL && err[0] != '\0'),
			   "refusal %d without a reason", rc);
		return 0;
	}
	check(m);
	char *a0 = strdup(m->argv[0]);
	char *h0 = m->health.argv ? strdup(m->health.argv[0]) : NULL;
	FUZZ_CHECK(a0 != NULL, "strdup");
	FUZZ_CHECK(agent_manifest_resolve(m, "/srv/slipway/releases/abc") == 0, "resolve");
	check_resolved(&a0, m->argv, "/srv/slipway/releases/abc");
	if (h0 != NULL)
		check_resolved(&h0, m->health.argv, "/srv/slipway/releases/abc");
	free(a0);
	free(h0);
	agent_manifest_free(m);
	return 0;
}
