/*
 * it_agent_exec.c - the agent's task executor, linked as a library, against
 * the real artifact service of the stack: real bundles (scripts/make-bundles)
 * pushed over mTLS, then pulled by digest, verified, unpacked, started,
 * health-checked and switched. Also: a failing health check leaves the old
 * release serving, malicious bundles and unknown digests fail the task with
 * a reason and change nothing, a broken download resumes, a wrong partial
 * download is caught by the digest check, and the artifact service being
 * down fails the task without touching what runs.
 *
 * The protocol around the executor (register, poll, fencing, reports) is
 * in it_agent_proto.c, with the real agent binary.
 */
#include "agent.h"
#include "agent_harness.h"
#include "err.h"
#include "harness.h"
#include "log.h"
#include "pki.h"
#include "rpc.h"
#include "sealed.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

static char dir[512], root[600], bundles[600], cert[700], key[700], td[128];
static char d1[72], d2[72], d3[72], d4[72], d5[72];
static struct agent_config cfg;
static struct agent *ag;

/* Log lines are kept to check what the agent said (and never said). */
static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static char *logbuf;
static size_t loglen;

static void sink(const char *line, size_t len, void *arg)
{
	(void)arg;
	fwrite(line, 1, len, stderr);
	pthread_mutex_lock(&log_mu);
	char *nb = realloc(logbuf, loglen + len + 1);
	if (nb != NULL) {
		logbuf = nb;
		memcpy(logbuf + loglen, line, len);
		loglen += len;
		logbuf[loglen] = '\0';
	}
	pthread_mutex_unlock(&log_mu);
}

static int logged(const char *needle)
{
	pthread_mutex_lock(&log_mu);
	int r = logbuf != NULL && strstr(logbuf, needle) != NULL;
	pthread_mutex_unlock(&log_mu);
	return r;
}

static void push(const char *file, const char *app, const char *version, char *digest)
{
	char err[256], local[72];
	if (ah_push(file, app, version, digest, err, sizeof err) != 0) {
		fprintf(stderr, "push %s: %s\n", file, err);
		exit(1);
	}
	assert_int_equal(ah_file_digest(file, local), 0);
	assert_string_equal(local, digest);
}

static int setup(void **state)
{
	(void)state;
	char err[256], cmd[2048], prefix[600], uri[256];
	snprintf(dir, sizeof dir, "%s", h_tmpdir("it_agent_exec"));
	if (pki_trust_domain(h_env("SLIPWAY_PKI_DIR"), td, sizeof td, err, sizeof err) != 0)
		return -1;
	snprintf(prefix, sizeof prefix, "%s/agent", dir);
	snprintf(uri, sizeof uri, "spiffe://%s/agent/it/exec-1", td);
	h_issue(h_env("SLIPWAY_PKI_DIR"), prefix, uri, NULL, 0);
	snprintf(cert, sizeof cert, "%s.crt", prefix);
	snprintf(key, sizeof key, "%s.key", prefix);
	snprintf(root, sizeof root, "%s/root", dir);
	snprintf(bundles, sizeof bundles, "%s/bundles", dir);
	/* Two more healthy versions, for downloads that must really happen. */
	snprintf(cmd, sizeof cmd, "scripts/make-bundles --out '%s' --versions '4.0.0 5.0.0' >/dev/null",
		 bundles);
	if (system(cmd) != 0)
		return -1;
	push("build/demo/web-1.0.0.tar.gz", "itexec-web", "1.0.0", d1);
	push("build/demo/web-2.0.0.tar.gz", "itexec-web", "2.0.0", d2);
	push("build/demo/web-3.0.0.tar.gz", "itexec-web", "3.0.0", d3);
	snprintf(cmd, sizeof cmd, "%s/web-4.0.0.tar.gz", bundles);
	push(cmd, "itexec-web", "4.0.0", d4);
	snprintf(cmd, sizeof cmd, "%s/web-5.0.0.tar.gz", bundles);
	push(cmd, "itexec-web", "5.0.0", d5);

	memset(&cfg, 0, sizeof cfg);
	cfg.root = root;
	cfg.ca = h_env("SLIPWAY_CA");
	cfg.cert = cert;
	cfg.key = key;
	cfg.orchestrator_addr = "";
	cfg.artifact_addr = h_env("SLIPWAY_ARTIFACT_ADDR");
	cfg.secrets_addr = "";
	cfg.seal_key = "";
	cfg.secrets_sign_key = "";
	cfg.hostname = "exec-1";
	cfg.shm_dir = "/dev/shm";
	agent_labels_add_list(&cfg.labels, "app=web,environment=prod,region=it", err, sizeof err);
	cfg.poll_wait_ms = 25000;
	cfg.heartbeat_ms = 5000;
	cfg.keep_releases = 3;
	cfg.max_blob_bytes = 64 << 20;
	cfg.max_unpacked_bytes = 256 << 20;
	cfg.max_entries = 1000;
	cfg.restart_backoff_ms = 100;
	cfg.restart_backoff_max_ms = 1000;
	cfg.crashloop_restarts = 5;
	cfg.crashloop_window_ms = 60000;
	cfg.shutdown_grace_ms = 10000;
	cfg.task_timeout_ms = 120000;
	cfg.pull_retry_ms = 8000;
	if (agent_new(&cfg, &ag, err, sizeof err) != 0 || agent_adopt(ag, err, sizeof err) != 0 ||
	    agent_sup_start(ag, err, sizeof err) != 0) {
		fprintf(stderr, "agent: %s\n", err);
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	if (ag != NULL) {
		agent_stop_app(ag);
		agent_free(ag);
	}
	return 0;
}

static struct agent_task task(const char *digest, const char *version, uint64_t gen)
{
	struct agent_task t;
	memset(&t, 0, sizeof t);
	snprintf(t.task_id, sizeof t.task_id, "dep-%llu/it/exec-1/deploy", (unsigned long long)gen);
	t.generation = gen;
	t.kind = AGENT_TASK_DEPLOY;
	snprintf(t.deployment_id, sizeof t.deployment_id, "dep-%llu", (unsigned long long)gen);
	snprintf(t.app, sizeof t.app, "web");
	snprintf(t.environment, sizeof t.environment, "prod");
	snprintf(t.version, sizeof t.version, "%s", version);
	snprintf(t.digest, sizeof t.digest, "%s", digest);
	return t;
}

static uint64_t gen;

static struct agent_result deploy(const char *digest, const char *version)
{
	struct agent_result res;
	struct agent_task t = task(digest, version, ++gen);
	assert_int_equal(agent_exec(ag, &t, NULL, NULL, &res), 0);
	return res;
}

/* GET / of the live release: its version must be `version`. */
static void serving(const char *version)
{
	struct agent_runtime rt;
	agent_runtime(ag, &rt);
	assert_int_equal(rt.process, AGENT_PROC_RUNNING);
	assert_string_equal(rt.version, version);
	int status = 0;
	char *body = ah_http_get(rt.port, "/", &status);
	assert_non_null(body);
	assert_int_equal(status, 200);
	char want[64];
	snprintf(want, sizeof want, "\"version\":\"%s\"", version);
	if (strstr(body, want) == NULL)
		fail_msg("serving %s, want %s", body, version);
	free(body);
}

/* Does root/<a><b><c> exist? */
static int exists(const char *a, const char *b, const char *c)
{
	char p[2048];
	struct stat st;
	snprintf(p, sizeof p, "%s/%s%s%s", root, a, b, c);
	return lstat(p, &st) == 0;
}

static void test_deploy_pulls_verifies_unpacks_and_switches(void **state)
{
	(void)state;
	struct agent_result r = deploy(d1, "1.0.0");
	if (r.result != AGENT_RESULT_SUCCEEDED)
		fail_msg("v1: %s", r.message);
	serving("1.0.0");
	assert_true(exists("releases/", d1 + 7, "/slipway.json"));
	assert_true(exists("releases/", d1 + 7, "/bin/demo-app"));
	assert_false(exists("blobs/", d1 + 7, ".tar.gz")); /* unpacked: the blob is gone */
	char hex[AGENT_HEX_LEN + 1];
	assert_int_equal(agent_store_link(&ag->store, "current", hex), 0);
	assert_string_equal(hex, d1 + 7);
	assert_true(logged("bundle downloaded and verified"));

	r = deploy(d2, "2.0.0");
	if (r.result != AGENT_RESULT_SUCCEEDED)
		fail_msg("v2: %s", r.message);
	serving("2.0.0");
	assert_int_equal(agent_store_link(&ag->store, "previous", hex), 0);
	assert_string_equal(hex, d1 + 7);
}

static void test_failing_health_keeps_the_old_release(void **state)
{
	(void)state;
	pid_t before = ag->live.proc.pid;
	struct agent_result r = deploy(d3, "3.0.0");
	assert_int_equal(r.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(r.message, "health check"));
	assert_non_null(strstr(r.message, "HTTP 500"));
	serving("2.0.0");
	assert_int_equal(ag->live.proc.pid, before);
	char hex[AGENT_HEX_LEN + 1];
	assert_int_equal(agent_store_link(&ag->store, "current", hex), 0);
	assert_string_equal(hex, d2 + 7);
}

static void test_same_deploy_again_is_harmless(void **state)
{
	(void)state;
	pid_t before = ag->live.proc.pid;
	struct agent_result r = deploy(d2, "2.0.0");
	assert_int_equal(r.result, AGENT_RESULT_SUCCEEDED);
	assert_non_null(strstr(r.message, "already running"));
	assert_int_equal(ag->live.proc.pid, before);
}

static void evil(const char *name, const char *evil_name, const char *target, const char *needle)
{
	char path[700], digest[72], version[64];
	snprintf(path, sizeof path, "%s/%s.tar.gz", dir, name);
	snprintf(version, sizeof version, "%s-%d", name, (int)getpid());
	ah_evil_bundle(path, evil_name, target);
	push(path, "itexec-evil", version, digest);
	struct agent_result r = deploy(digest, "6.6.6");
	assert_int_equal(r.result, AGENT_RESULT_FAILED);
	if (strstr(r.message, needle) == NULL)
		fail_msg("message '%s' lacks '%s'", r.message, needle);
	assert_false(exists("releases/", digest + 7, ""));
	assert_false(exists("blobs/", digest + 7, ".tar.gz"));
}

static void test_malicious_bundles_fail_and_change_nothing(void **state)
{
	(void)state;
	evil("dotdot", "../../escaped.txt", NULL, "unsafe path");
	evil("symlink", "bin", "/usr/bin", "points outside");
	evil("symlink-up", "lib", "../../..", "points outside");
	/* Nothing escaped, nothing half-unpacked remains, v2 still serves. */
	assert_false(exists("escaped.txt", "", ""));
	assert_false(exists("releases/escaped.txt", "", ""));
	char p[700];
	struct stat st;
	snprintf(p, sizeof p, "%s/escaped.txt", dir);
	assert_int_not_equal(lstat(p, &st), 0);
	serving("2.0.0");
}

static void test_unknown_digest_fails(void **state)
{
	(void)state;
	struct agent_result r =
		deploy("sha256:0000000000000000000000000000000000000000000000000000000000000000",
		       "9.9.9");
	assert_int_equal(r.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(r.message, "pull"));
	serving("2.0.0");
	r = deploy("sha256:NOTHEX", "9.9.9");
	assert_int_equal(r.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(r.message, "digest"));
}

static void copy_prefix(const char *from, const char *to, long n, int garble)
{
	FILE *in = fopen(from, "rb"), *out = fopen(to, "wb");
	assert_non_null(in);
	assert_non_null(out);
	for (long i = 0; i < n; i++) {
		int c = fgetc(in);
		assert_true(c != EOF);
		fputc(garble ? (c ^ 0x5a) : c, out);
	}
	fclose(in);
	fclose(out);
}

static void test_resume_and_digest_mismatch(void **state)
{
	(void)state;
	char src[700], final[1200], partial[1300], err[256];
	struct stat st;
	snprintf(src, sizeof src, "%s/web-4.0.0.tar.gz", bundles);
	assert_int_equal(stat(src, &st), 0);
	long half = (long)st.st_size / 2;
	agent_store_path(&ag->store, final, sizeof final, "blobs/%s.tar.gz", d4 + 7);
	snprintf(partial, sizeof partial, "%s.partial", final);

	/* A correct first half: the pull resumes from there. */
	copy_prefix(src, partial, half, 0);
	assert_int_equal(agent_fetch_blob(ag->artifact, d4, final, 64 << 20, agent_now_ms() + 60000,
					  15000, NULL, NULL, err, sizeof err), 0);
	char want[80];
	snprintf(want, sizeof want, "offset=%ld", half);
	assert_true(logged("resuming bundle download"));
	assert_true(logged(want));
	char got[72];
	assert_int_equal(ah_file_digest(final, got), 0);
	assert_string_equal(got, d4);
	assert_int_not_equal(lstat(partial, &st), 0);
	unlink(final);

	/* A wrong first half: the digest check catches it, the bytes go. */
	copy_prefix(src, partial, half, 1);
	assert_int_equal(agent_fetch_blob(ag->artifact, d4, final, 64 << 20, agent_now_ms() + 60000,
					  15000, NULL, NULL, err, sizeof err), SW_EDATALOSS);
	assert_non_null(strstr(err, "digest mismatch"));
	assert_int_not_equal(lstat(partial, &st), 0);
	assert_int_not_equal(lstat(final, &st), 0);

	/* Through a task: the mismatch fails it loudly; the next try works. */
	copy_prefix(src, partial, half, 1);
	struct agent_result r = deploy(d4, "4.0.0");
	assert_int_equal(r.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(r.message, "digest mismatch"));
	serving("2.0.0");
	r = deploy(d4, "4.0.0");
	if (r.result != AGENT_RESULT_SUCCEEDED)
		fail_msg("v4: %s", r.message);
	serving("4.0.0");

	/* Over the agent's size limit. */
	assert_int_equal(agent_fetch_blob(ag->artifact, d5, final, 1024, agent_now_ms() + 60000,
					  15000, NULL, NULL, err, sizeof err), SW_ELIMIT);
}

static void test_artifact_down(void **state)
{
	(void)state;
	char cmd[1024];
	snprintf(cmd, sizeof cmd, "scripts/stack stop '%s' artifact", h_env("SLIPWAY_STACK_DIR"));
	assert_int_equal(system(cmd), 0);
	struct agent_result r = deploy(d5, "5.0.0");
	snprintf(cmd, sizeof cmd, "scripts/stack start '%s' artifact >/dev/null",
		 h_env("SLIPWAY_STACK_DIR"));
	assert_int_equal(system(cmd), 0);
	assert_int_equal(r.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(r.message, "pull"));
	serving("4.0.0");
	/* Back up: the same task works. */
	r = deploy(d5, "5.0.0");
	if (r.result != AGENT_RESULT_SUCCEEDED)
		fail_msg("v5: %s", r.message);
	serving("5.0.0");
	/* keep-releases 3: current, previous and one more stay. */
	assert_true(exists("releases/", d5 + 7, ""));
	assert_true(exists("releases/", d4 + 7, ""));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_deploy_pulls_verifies_unpacks_and_switches),
		cmocka_unit_test(test_failing_health_keeps_the_old_release),
		cmocka_unit_test(test_same_deploy_again_is_harmless),
		cmocka_unit_test(test_malicious_bundles_fail_and_change_nothing),
		cmocka_unit_test(test_unknown_digest_fails),
		cmocka_unit_test(test_resume_and_digest_mismatch),
		cmocka_unit_test(test_artifact_down),
	};
	if (getenv("SLIPWAY_ARTIFACT_ADDR") == NULL) {
		fprintf(stderr, "it_agent_exec: the stack must run the artifact and secrets services\n");
		return 1;
	}
	signal(SIGPIPE, SIG_IGN);
	log_init("it_agent_exec", LOG_INFO);
	log_set_sink(sink, NULL);
	rpc_init();
	int rc = cmocka_run_group_tests(tests, setup, teardown);
	ah_wait_outbox_drained(30000);
	rpc_shutdown();
	free(logbuf);
	return rc;
}
