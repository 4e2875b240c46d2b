/*
 * Unit tests for the bundle manifest (services/agent/manifest.c) and the
 * agent's identity inputs (labels, the pinned secrets signing key).
 */
#include "agent.h"
#include "err.h"
#include "sealed.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

static const char *FULL =
	"{\"schema\":1,\"app\":\"web\",\"version\":\"2.0.0\","
	"\"start\":{\"command\":[\"bin/web\",\"--flag\",\"x y\"],\"workdir\":\"srv\","
	"\"env\":{\"MODE\":\"prod\",\"EMPTY\":\"\"}},"
	"\"health\":{\"http\":{\"path\":\"/healthz\",\"port\":0,\"status\":204},"
	"\"interval_ms\":250,\"timeout_ms\":1500,\"retries\":7,\"deadline_ms\":20000,"
	"\"live_interval_ms\":3000},"
	"\"stop\":{\"grace_ms\":2500},"
	"\"secrets\":[{\"name\":\"db-password\",\"env\":\"DB_PASSWORD\"},"
	"{\"name\":\"tls.key\",\"file\":\"server.key\"}]}";

static struct agent_manifest *parse_ok(const char *json)
{
	struct agent_manifest *m = NULL;
	char err[256] = "";
	int rc = agent_manifest_parse(json, strlen(json), &m, err, sizeof err);
	if (rc != 0)
		fail_msg("unexpected failure %d: %s", rc, err);
	return m;
}

static void parse_bad(const char *json, const char *needle)
{
	struct agent_manifest *m = NULL;
	char err[256] = "";
	int rc = agent_manifest_parse(json, strlen(json), &m, err, sizeof err);
	if (rc != SW_EINVAL)
		fail_msg("expected SW_EINVAL for %s, got %d", json, rc);
	assert_null(m);
	if (needle != NULL && strstr(err, needle) == NULL)
		fail_msg("message '%s' lacks '%s'", err, needle);
}

static void test_full_manifest(void **state)
{
	(void)state;
	struct agent_manifest *m = parse_ok(FULL);
	assert_string_equal(m->app, "web");
	assert_string_equal(m->version, "2.0.0");
	assert_int_equal(m->argc, 3);
	assert_string_equal(m->argv[0], "bin/web");
	assert_string_equal(m->argv[2], "x y");
	assert_null(m->argv[3]);
	assert_string_equal(m->workdir, "srv");
	assert_int_equal(m->nenv, 2);
	assert_string_equal(m->env[0], "MODE=prod");
	assert_string_equal(m->env[1], "EMPTY=");
	assert_int_equal(m->health.kind, AGENT_CHECK_HTTP);
	assert_string_equal(m->health.path, "/healthz");
	assert_int_equal(m->health.expect_status, 204);
	assert_int_equal(m->health.interval_ms, 250);
	assert_int_equal(m->health.timeout_ms, 1500);
	assert_int_equal(m->health.retries, 7);
	assert_int_equal(m->health.deadline_ms, 20000);
	assert_int_equal(m->health.live_interval_ms, 3000);
	assert_int_equal(m->stop_grace_ms, 2500);
	assert_int_equal(m->nsecrets, 2);
	assert_string_equal(m->secrets[0].env, "DB_PASSWORD");
	assert_string_equal(m->secrets[1].file, "server.key");
	assert_int_equal(agent_manifest_resolve(m, "/srv/rel"), 0);
	assert_string_equal(m->argv[0], "/srv/rel/bin/web");
	agent_manifest_free(m);
}

static void test_minimal_defaults(void **state)
{
	(void)state;
	struct agent_manifest *m = parse_ok(
		"{\"schema\":1,\"start\":{\"command\":[\"python3\",\"app.py\"]},"
		"\"health\":{\"tcp\":{}}}");
	assert_string_equal(m->app, "");
	assert_string_equal(m->workdir, ".");
	assert_int_equal(m->nenv, 0);
	assert_int_equal(m->health.kind, AGENT_CHECK_TCP);
	assert_int_equal(m->health.port, 0);
	assert_int_equal(m->health.interval_ms, 500);
	assert_int_equal(m->health.timeout_ms, 2000);
	assert_int_equal(m->health.retries, 20);
	assert_int_equal(m->health.deadline_ms, 60000);
	assert_int_equal(m->stop_grace_ms, 10000);
	assert_int_equal(m->nsecrets, 0);
	/* A bare program name stays a PATH lookup. */
	assert_int_equal(agent_manifest_resolve(m, "/srv/rel"), 0);
	assert_string_equal(m->argv[0], "python3");
	agent_manifest_free(m);
	m = parse_ok("{\"schema\":1,\"start\":{\"command\":[\"/usr/bin/env\"]},"
		     "\"health\":{\"command\":[\"bin/check\",\"--quick\"]}}");
	assert_int_equal(m->health.kind, AGENT_CHECK_COMMAND);
	assert_int_equal(agent_manifest_resolve(m, "/r"), 0);
	assert_string_equal(m->argv[0], "/usr/bin/env");
	assert_string_equal(m->health.argv[0], "/r/bin/check");
	agent_manifest_free(m);
}

static void test_invalid_manifests(void **state)
{
	(void)state;
	parse_bad("not json", "not valid JSON");
	parse_bad("[1,2]", "JSON object");
	parse_bad("{\"start\":{\"command\":[\"a\"]},\"health\":{\"tcp\":{}}}", "schema");
	parse_bad("{\"schema\":2,\"start\":{\"command\":[\"a\"]},\"health\":{\"tcp\":{}}}", "schema");
	parse_bad("{\"schema\":1,\"health\":{\"tcp\":{}}}", "start and health");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]}}", "start and health");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]},\"health\":{\"tcp\":{}},"
		  "\"helth\":1}", "unknown key 'helth'");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[]},\"health\":{\"tcp\":{}}}",
		  "non-empty array");
	parse_bad("{\"schema\":1,\"start\":{\"command\":\"a\"},\"health\":{\"tcp\":{}}}",
		  "non-empty array");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"../../bin/sh\"]},\"health\":{\"tcp\":{}}}",
		  "inside the bundle");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\",3]},\"health\":{\"tcp\":{}}}",
		  "must be a string");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"],\"workdir\":\"../x\"},"
		  "\"health\":{\"tcp\":{}}}", "workdir");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"],\"workdir\":\"/etc\"},"
		  "\"health\":{\"tcp\":{}}}", "workdir");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"],\"env\":{\"PORT\":\"1\"}},"
		  "\"health\":{\"tcp\":{}}}", "set by the agent");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"],\"env\":{\"SLIPWAY_APP\":\"x\"}},"
		  "\"health\":{\"tcp\":{}}}", "set by the agent");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"],\"env\":{\"A-B\":\"x\"}},"
		  "\"health\":{\"tcp\":{}}}", "valid variable name");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"],\"env\":{\"A\":1}},"
		  "\"health\":{\"tcp\":{}}}", "string");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"],\"env\":{\"A\":\"x\\u0000y\"}},"
		  "\"health\":{\"tcp\":{}}}", NULL);
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]},\"health\":{}}", "exactly one");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]},"
		  "\"health\":{\"tcp\":{},\"http\":{\"path\":\"/\"}}}", "exactly one");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]},\"health\":{\"http\":{}}}",
		  "path is required");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]},"
		  "\"health\":{\"http\":{\"path\":\"healthz\"}}}", "start with '/'");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]},"
		  "\"health\":{\"http\":{\"path\":\"/a b\"}}}", "printable");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]},"
		  "\"health\":{\"tcp\":{\"port\":70000}}}", "0..65535");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]},"
		  "\"health\":{\"tcp\":{},\"interval_ms\":1}}", "interval_ms");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]},"
		  "\"health\":{\"tcp\":{},\"retries\":-1}}", "retries");
	parse_bad("{\"schema\":1,\"start\":{\"command\":[\"a\"]},"
		  "\"health\":{\"tcp\":{},\"timeout_ms\":\"2s\"}}", "integer");
	/* Duplicate keys are refused, not silently merged. */
	parse_bad("{\"schema\":1,\"schema\":1,\"start\":{\"command\":[\"a\"]},\"health\":{\"tcp\":{}}}",
		  "not valid JSON");
}

static void test_invalid_secrets(void **state)
{
	(void)state;
	const char *pre = "{\"schema\":1,\"start\":{\"command\":[\"a\"],\"env\":{\"X\":\"1\"}},"
			  "\"health\":{\"tcp\":{}},\"secrets\":";
	char buf[512];
#define BAD(s, needle)                                                 \
	do {                                                           \
		snprintf(buf, sizeof buf, "%s%s}", pre, s);            \
		parse_bad(buf, needle);                                \
	} while (0)
	BAD("{}", "array");
	BAD("[{\"name\":\"a\"}]", "exactly one of env or file");
	BAD("[{\"name\":\"a\",\"env\":\"A\",\"file\":\"a\"}]", "exactly one of env or file");
	BAD("[{\"name\":\"../a\",\"file\":\"a\"}]", "valid secret name");
	BAD("[{\"name\":\"a\",\"file\":\"../etc/passwd\"}]", "plain file name");
	BAD("[{\"name\":\"a\",\"file\":\".hidden\"}]", "plain file name");
	BAD("[{\"name\":\"a\",\"env\":\"PORT\"}]", "usable variable name");
	BAD("[{\"name\":\"a\",\"env\":\"X\"}]", "also set in start.env");
	BAD("[{\"name\":\"a\",\"env\":\"A\"},{\"name\":\"b\",\"env\":\"A\"}]", "same place");
	BAD("[{\"name\":\"a\",\"file\":\"f\"},{\"name\":\"b\",\"file\":\"f\"}]", "same place");
	BAD("[{\"name\":\"a\",\"env\":\"A\",\"mode\":1}]", "unknown key");
#undef BAD
}

static void test_load_refuses_symlink(void **state)
{
	(void)state;
	char dir[] = "/tmp/test_agent_manifest.XXXXXX";
	char p[256], q[256], err[256];
	struct agent_manifest *m = NULL;
	assert_non_null(mkdtemp(dir));
	snprintf(p, sizeof p, "%s/real.json", dir);
	FILE *f = fopen(p, "w");
	assert_non_null(f);
	fputs("{\"schema\":1,\"start\":{\"command\":[\"a\"]},\"health\":{\"tcp\":{}}}", f);
	fclose(f);
	snprintf(q, sizeof q, "%s/slipway.json", dir);
	assert_int_equal(symlink("real.json", q), 0);
	assert_int_not_equal(agent_manifest_load(dir, &m, err, sizeof err), 0);
	assert_null(m);
	unlink(q);
	assert_int_equal(rename(p, q), 0);
	assert_int_equal(agent_manifest_load(dir, &m, err, sizeof err), 0);
	agent_manifest_free(m);
	unlink(q);
	/* Missing manifest. */
	assert_int_equal(agent_manifest_load(dir, &m, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "slipway.json"));
	rmdir(dir);
}

static void test_relpath(void **state)
{
	(void)state;
	assert_true(agent_relpath_ok("."));
	assert_true(agent_relpath_ok("a/b.c/d"));
	assert_false(agent_relpath_ok(""));
	assert_false(agent_relpath_ok("/a"));
	assert_false(agent_relpath_ok("a//b"));
	assert_false(agent_relpath_ok("a/"));
	assert_false(agent_relpath_ok("a/../b"));
	assert_false(agent_relpath_ok("./a"));
	assert_false(agent_relpath_ok("a/\n"));
}

static void test_labels(void **state)
{
	(void)state;
	struct agent_labels l = { 0 };
	char err[256];
	char a0[] = "agent", a1[] = "--label", a2[] = "app=web", a3[] = "--root", a4[] = "/x",
	     a5[] = "--label=region=eu-1", a6[] = "--label", a7[] = "app=api";
	char *argv[] = { a0, a1, a2, a3, a4, a5, a6, a7, NULL };
	int argc = 8;
	assert_int_equal(agent_labels_take_flags(&argc, argv, &l, err, sizeof err), 0);
	assert_int_equal(argc, 3);
	assert_string_equal(argv[1], "--root");
	assert_string_equal(argv[2], "/x");
	assert_null(argv[3]);
	assert_string_equal(agent_labels_get(&l, "app"), "api"); /* the last one wins */
	assert_string_equal(agent_labels_get(&l, "region"), "eu-1");
	assert_int_equal(agent_labels_add_list(&l, "environment=prod,,group=a", err, sizeof err), 0);
	assert_string_equal(agent_labels_get(&l, "group"), "a");
	assert_int_equal(l.n, 4);
	assert_null(agent_labels_get(&l, "nope"));
	assert_int_equal(agent_labels_add(&l, "novalue", err, sizeof err), SW_EINVAL);
	assert_int_equal(agent_labels_add(&l, "Bad=x", err, sizeof err), SW_EINVAL);
	assert_int_equal(agent_labels_add(&l, "k=", err, sizeof err), SW_EINVAL);
	assert_int_equal(agent_labels_add(&l, "k=a b", err, sizeof err), SW_EINVAL);
	assert_int_equal(agent_labels_add(&l, "k=a,b", err, sizeof err), SW_EINVAL);
	char b0[] = "agent", b1[] = "--label";
	char *argv2[] = { b0, b1, NULL };
	argc = 2;
	assert_int_equal(agent_labels_take_flags(&argc, argv2, &l, err, sizeof err), SW_EINVAL);
}

static void test_sign_key(void **state)
{
	(void)state;
	uint8_t pk[32], want[32], got[32];
	char err[256], dir[] = "/tmp/test_agent_key.XXXXXX", path[256];
	for (int i = 0; i < 32; i++)
		want[i] = (uint8_t)(i * 7 + 1);
	/* hex */
	char hex[65];
	for (int i = 0; i < 32; i++)
		snprintf(hex + 2 * i, 3, "%02x", want[i]);
	assert_int_equal(agent_sign_key_parse(hex, got, err, sizeof err), 0);
	assert_memory_equal(got, want, 32);
	/* base64, padded */
	const char *b64 = "AQgPFh0kKzI5QEdOVVxjanF4f4aNlJuiqbC3vsXM09o=";
	assert_int_equal(agent_sign_key_parse(b64, got, err, sizeof err), 0);
	assert_memory_equal(got, want, 32);
	/* not a key */
	assert_int_equal(agent_sign_key_parse("c2hvcnQ=", pk, err, sizeof err), SW_EINVAL);
	assert_int_equal(agent_sign_key_parse("", pk, err, sizeof err), SW_EINVAL);
	/* a Slipway public key file, and a file holding base64 */
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof path, "%s/secrets-sign.pub", dir);
	assert_int_equal(sealed_public_key_write(path, SEALED_LABEL_ED25519_PUBLIC, want, 32, err,
						 sizeof err), 0);
	memset(got, 0, sizeof got);
	assert_int_equal(agent_sign_key_parse(path, got, err, sizeof err), 0);
	assert_memory_equal(got, want, 32);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "%s\n", b64);
	fclose(f);
	memset(got, 0, sizeof got);
	assert_int_equal(agent_sign_key_parse(path, got, err, sizeof err), 0);
	assert_memory_equal(got, want, 32);
	/* An X25519 public key file is not an Ed25519 one. */
	assert_int_equal(sealed_public_key_write(path, SEALED_LABEL_X25519_PUBLIC, want, 32, err,
						 sizeof err), 0);
	assert_int_equal(agent_sign_key_parse(path, got, err, sizeof err), SW_EINVAL);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full_manifest),
		cmocka_unit_test(test_minimal_defaults),
		cmocka_unit_test(test_invalid_manifests),
		cmocka_unit_test(test_invalid_secrets),
		cmocka_unit_test(test_load_refuses_symlink),
		cmocka_unit_test(test_relpath),
		cmocka_unit_test(test_labels),
		cmocka_unit_test(test_sign_key),
	};
	sealed_init();
	return cmocka_run_group_tests(tests, NULL, NULL);
}
