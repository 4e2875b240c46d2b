/*
 * it_agent_secrets.c - secrets sealed end to end to the agent, over the real
 * stack: values put sealed to the secrets service, a grant made by the
 * orchestrator's identity for this agent's registered X25519 key, a bundle
 * whose manifest asks for one secret as an environment variable and one as
 * a file, and the agent's executor (linked as a library) fetching, opening
 * and verifying the bundle with the pinned signing key and handing the
 * values to the release on tmpfs.
 *
 * Also: no grant for the deployment, a grant for another agent and a wrong
 * pinned key all fail the task with a reason and change nothing; the values
 * never appear in a log line or a task message; replacing the release
 * removes its secrets from tmpfs.
 */
#include "agent.h"
#include "agent_harness.h"
#include "err.h"
#include "harness.h"
#include "log.h"
#include "pki.h"
#include "rpc.h"
#include "sealed.h"

#include "slipway/v1/secrets.pb-c.h"

#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>
#include <cmocka.h>

static char dir[512], td[128], ag_crt[700], ag_key[700], orch_crt[700], orch_key[700];
static char agent_id[256], sign_hex[65], db_name[64], tls_name[64];
static char db_value[64], tls_value[128];
static char dsec[72], d1[72];
static uint8_t seal_pk[32], sign_pk[32];

/* Log lines, to prove the values never reach them. */
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

static void issue(const char *name, const char *uri, char *crt, char *key)
{
	char prefix[600];
	snprintf(prefix, sizeof prefix, "%s/%s", dir, name);
	h_issue(h_env("SLIPWAY_PKI_DIR"), prefix, uri, NULL, 0);
	snprintf(crt, 700, "%s.crt", prefix);
	snprintf(key, 700, "%s.key", prefix);
}

static struct rpc_client *secrets_as(const char *crt, const char *key)
{
	return h_client(h_env("SLIPWAY_SECRETS_ADDR"), h_env("SLIPWAY_CA"), crt, key);
}

static void put_secret(const char *name, const char *value)
{
	struct rpc_client *c = secrets_as(h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
	char err[512];
	size_t n = strlen(value);
	uint8_t *box = malloc(n + crypto_box_SEALBYTES);
	assert_non_null(box);
	assert_int_equal(crypto_box_seal(box, (const uint8_t *)value, n, seal_pk), 0);
	Slipway__V1__SecretScope sc = SLIPWAY__V1__SECRET_SCOPE__INIT;
	sc.app = "web";
	sc.environment = "itsec";
	Slipway__V1__PutSecretRequest req = SLIPWAY__V1__PUT_SECRET_REQUEST__INIT;
	req.name = (char *)name;
	req.scope = &sc;
	req.sealed_value.data = box;
	req.sealed_value.len = n + crypto_box_SEALBYTES;
	ProtobufCMessage *m = NULL;
	int rc = rpc_call(c, &slipway__v1__secrets__descriptor, "PutSecret", &req.base, &m, NULL, err,
			  sizeof err);
	if (rc != 0)
		fail_msg("PutSecret %s: %s", name, err);
	protobuf_c_message_free_unpacked(m, NULL);
	free(box);
	rpc_client_free(c);
}

/* The orchestrator's part: a grant of both secrets for deployment dep to
 * the agent `agent` with X25519 key pk. */
static void grant(const char *dep, const char *agent, const uint8_t pk[32])
{
	struct rpc_client *c = secrets_as(orch_crt, orch_key);
	char err[512];
	/* The secrets service grants only to an agent enrolled for the scope,
	 * sealed to the key its enrollment pins. */
	if (h_enroll(agent, "web", "itsec", pk) != 0)
		fail_msg("cannot enroll %s", agent);
	Slipway__V1__SecretScope sc = SLIPWAY__V1__SECRET_SCOPE__INIT;
	sc.app = "web";
	sc.environment = "itsec";
	Slipway__V1__SecretRef r1 = SLIPWAY__V1__SECRET_REF__INIT, r2 = SLIPWAY__V1__SECRET_REF__INIT;
	r1.name = db_name;
	r1.scope = &sc;
	r2.name = tls_name;
	r2.scope = &sc;
	Slipway__V1__SecretRef *refs[2] = { &r1, &r2 };
	Slipway__V1__CreateGrantRequest req = SLIPWAY__V1__CREATE_GRANT_REQUEST__INIT;
	req.deployment_id = (char *)dep;
	req.agent = (char *)agent;
	req.agent_public_key.data = (uint8_t *)pk;
	req.agent_public_key.len = 32;
	req.secrets = refs;
	req.n_secrets = 2;
	req.app = "web";
	req.environment = "itsec";
	ProtobufCMessage *m = NULL;
	int rc = rpc_call(c, &slipway__v1__secrets__descriptor, "CreateGrant", &req.base, &m, NULL,
			  err, sizeof err);
	if (rc != 0)
		fail_msg("CreateGrant %s: %s", dep, err);
	protobuf_c_message_free_unpacked(m, NULL);
	rpc_client_free(c);
}

static void config(struct agent_config *cfg, const char *root, const char *sign_key)
{
	char err[128];
	memset(cfg, 0, sizeof *cfg);
	cfg->root = root;
	cfg->ca = h_env("SLIPWAY_CA");
	cfg->cert = ag_crt;
	cfg->key = ag_key;
	cfg->orchestrator_addr = "";
	cfg->artifact_addr = h_env("SLIPWAY_ARTIFACT_ADDR");
	cfg->secrets_addr = h_env("SLIPWAY_SECRETS_ADDR");
	cfg->seal_key = "";
	cfg->secrets_sign_key = sign_key;
	cfg->hostname = "sec-1";
	cfg->shm_dir = "/dev/shm";
	agent_labels_add_list(&cfg->labels, "app=web,environment=itsec,region=it", err, sizeof err);
	cfg->poll_wait_ms = 25000;
	cfg->heartbeat_ms = 5000;
	cfg->keep_releases = 3;
	cfg->max_blob_bytes = 64 << 20;
	cfg->max_unpacked_bytes = 256 << 20;
	cfg->max_entries = 1000;
	cfg->restart_backoff_ms = 100;
	cfg->restart_backoff_max_ms = 1000;
	cfg->crashloop_restarts = 5;
	cfg->crashloop_window_ms = 60000;
	cfg->shutdown_grace_ms = 10000;
	cfg->task_timeout_ms = 120000;
	cfg->pull_retry_ms = 8000;
}

static struct agent_config cfg, cfg2;
static struct agent *ag, *ag2;
static char root[600], root2[600];

static int setup(void **state)
{
	(void)state;
	char err[512], uri[256], path[700], manifest[2048];
	snprintf(dir, sizeof dir, "%s", h_tmpdir("it_agent_secrets"));
	if (pki_trust_domain(h_env("SLIPWAY_PKI_DIR"), td, sizeof td, err, sizeof err) != 0)
		return -1;
	snprintf(agent_id, sizeof agent_id, "spiffe://%s/agent/it/sec-1", td);
	issue("agent", agent_id, ag_crt, ag_key);
	snprintf(uri, sizeof uri, "spiffe://%s/service/orchestrator", td);
	issue("orchestrator", uri, orch_crt, orch_key);

	/* The service's keys: seal values to one, pin the other. */
	struct rpc_client *c = secrets_as(h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
	Slipway__V1__GetServiceKeysRequest kr = SLIPWAY__V1__GET_SERVICE_KEYS_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	if (rpc_call(c, &slipway__v1__secrets__descriptor, "GetServiceKeys", &kr.base, &m, NULL, err,
		     sizeof err) != 0) {
		fprintf(stderr, "GetServiceKeys: %s\n", err);
		return -1;
	}
	Slipway__V1__GetServiceKeysResponse *k = (void *)m;
	if (k->seal_public_key.len != 32 || k->sign_public_key.len != 32)
		return -1;
	memcpy(seal_pk, k->seal_public_key.data, 32);
	memcpy(sign_pk, k->sign_public_key.data, 32);
	protobuf_c_message_free_unpacked(m, NULL);
	rpc_client_free(c);
	sodium_bin2hex(sign_hex, sizeof sign_hex, sign_pk, 32);

	/* Two secrets with recognisable values, unique to this run. */
	snprintf(db_name, sizeof db_name, "itsec-db-%d", (int)getpid());
	snprintf(tls_name, sizeof tls_name, "itsec-tls-%d", (int)getpid());
	snprintf(db_value, sizeof db_value, "DBVALUE-%d-correct-horse", (int)getpid());
	snprintf(tls_value, sizeof tls_value, "TLSVALUE-%d-----BEGIN KEY-----\nabc\n", (int)getpid());
	put_secret(db_name, db_value);
	put_secret(tls_name, tls_value);

	/* A release that needs both; and one that needs none. */
	snprintf(manifest, sizeof manifest,
		 "{\"schema\":1,\"app\":\"web\",\"version\":\"7.0.0\","
		 "\"start\":{\"command\":[\"bin/demo-app\"],\"env\":{\"DEMO_VERSION\":\"7.0.0\","
		 "\"DEMO_SECRET_ENV\":\"DB_PASSWORD\",\"DEMO_SECRET_FILE\":\"tls.key\"}},"
		 "\"health\":{\"http\":{\"path\":\"/healthz\"},\"interval_ms\":100,\"retries\":50},"
		 "\"secrets\":[{\"name\":\"%s\",\"env\":\"DB_PASSWORD\"},"
		 "{\"name\":\"%s\",\"file\":\"tls.key\"}]}",
		 db_name, tls_name);
	snprintf(path, sizeof path, "%s/web-7.tar.gz", dir);
	ah_bundle(path, manifest, "build/demo/demo-app");
	char version[64];
	snprintf(version, sizeof version, "7.0.0-%d", (int)getpid());
	if (ah_push(path, "itsec-web", version, dsec, err, sizeof err) != 0 ||
	    ah_push("build/demo/web-1.0.0.tar.gz", "itsec-web", "1.0.0", d1, err, sizeof err) != 0) {
		fprintf(stderr, "push: %s\n", err);
		return -1;
	}

	snprintf(root, sizeof root, "%s/root", dir);
	config(&cfg, root, sign_hex);
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
	if (ag2 != NULL) {
		agent_stop_app(ag2);
		agent_free(ag2);
	}
	return 0;
}

static struct agent_result deploy(struct agent *a, const char *dep, const char *digest,
				  const char *version, uint64_t gen, int has_secrets)
{
	struct agent_task t;
	struct agent_result res;
	memset(&t, 0, sizeof t);
	snprintf(t.task_id, sizeof t.task_id, "%s/it/sec-1/deploy", dep);
	t.generation = gen;
	t.kind = AGENT_TASK_DEPLOY;
	snprintf(t.deployment_id, sizeof t.deployment_id, "%s", dep);
	snprintf(t.app, sizeof t.app, "web");
	snprintf(t.environment, sizeof t.environment, "itsec");
	snprintf(t.version, sizeof t.version, "%s", version);
	snprintf(t.digest, sizeof t.digest, "%s", digest);
	t.has_secrets = has_secrets;
	assert_int_equal(agent_exec(a, &t, NULL, NULL, &res), 0);
	/* Never a value in what is reported. */
	assert_null(strstr(res.message, db_value));
	assert_null(strstr(res.message, "TLSVALUE"));
	return res;
}

static void serving(struct agent *a, const char *version, const char *secret)
{
	struct agent_runtime rt;
	agent_runtime(a, &rt);
	int status = 0;
	char *body = ah_http_get(rt.port, "/", &status);
	assert_non_null(body);
	char want[64];
	snprintf(want, sizeof want, "\"version\":\"%s\"", version);
	if (strstr(body, want) == NULL || strstr(body, secret) == NULL)
		fail_msg("serving %s, want %s and %s", body, version, secret);
	free(body);
}

static char secrets_dir[AGENT_PATH_MAX];

static void test_secrets_reach_the_release(void **state)
{
	(void)state;
	grant("dep-sec-1", agent_id, ag->keys.seal_pk);
	struct agent_result r = deploy(ag, "dep-sec-1", dsec, "7.0.0", 1, 1);
	if (r.result != AGENT_RESULT_SUCCEEDED)
		fail_msg("v7: %s", r.message);
	/* The env secret and the file secret are both there. */
	serving(ag, "7.0.0", "\"secret\":\"present\"");
	pthread_mutex_lock(&ag->mu);
	snprintf(secrets_dir, sizeof secrets_dir, "%s", ag->live.secrets_dir);
	pthread_mutex_unlock(&ag->mu);
	assert_int_equal(strncmp(secrets_dir, "/dev/shm/", 9), 0);
	struct stat st;
	struct statfs fs;
	assert_int_equal(stat(secrets_dir, &st), 0);
	/* The application user's group may enter it; nobody lists it, nobody
	 * else enters (0700 when the agent cannot switch user). */
	if (ag->user.mode == AGENT_USER_SWITCH) {
		assert_int_equal(st.st_mode & 0777, 0710);
		assert_int_equal(st.st_uid, geteuid());
		assert_int_equal(st.st_gid, ag->user.gid);
	} else {
		assert_int_equal(st.st_mode & 0777, 0700);
	}
	assert_int_equal(statfs(secrets_dir, &fs), 0);
	assert_int_equal((unsigned long)fs.f_type, 0x01021994UL); /* tmpfs */
	char p[AGENT_PATH_MAX + 32];
	snprintf(p, sizeof p, "%s/tls.key", secrets_dir);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0400);
	assert_int_equal(st.st_uid, ag->user.uid); /* the application's own */
	char *v = h_read_file(p);
	assert_non_null(v);
	assert_string_equal(v, tls_value);
	free(v);
	snprintf(p, sizeof p, "%s/.env", secrets_dir);
	assert_int_equal(stat(p, &st), 0);
	assert_int_equal(st.st_mode & 0777, 0400);
	assert_int_equal(st.st_uid, geteuid()); /* the agent's: the app cannot swap it */
	/* The release's process has the value in its environment. */
	char envp[64];
	snprintf(envp, sizeof envp, "/proc/%d/environ", (int)ag->live.proc.pid);
	FILE *f = fopen(envp, "rb");
	assert_non_null(f);
	char buf[16384];
	size_t n = fread(buf, 1, sizeof buf - 1, f);
	fclose(f);
	buf[n] = '\0';
	int found = 0;
	char want[128];
	snprintf(want, sizeof want, "DB_PASSWORD=%s", db_value);
	for (size_t i = 0; i < n; i += strlen(buf + i) + 1) {
		if (strcmp(buf + i, want) == 0)
			found = 1;
	}
	assert_true(found);
	assert_true(logged("secrets handed to the release"));
}

static void test_no_grant_or_foreign_grant_fails(void **state)
{
	(void)state;
	pid_t pid = ag->live.proc.pid;
	/* No grant at all for this deployment. */
	struct agent_result r = deploy(ag, "dep-sec-none", dsec, "7.0.0", 2, 1);
	/* Already running that digest: secrets are not fetched again. */
	assert_int_equal(r.result, AGENT_RESULT_SUCCEEDED);
	/* A release not yet running, with no grant: first move to v1 ... */
	r = deploy(ag, "dep-plain", d1, "1.0.0", 3, 0);
	if (r.result != AGENT_RESULT_SUCCEEDED)
		fail_msg("v1: %s", r.message);
	serving(ag, "1.0.0", "\"secret\":\"absent\"");
	/* ... which removed v7's secrets from tmpfs. */
	struct stat st;
	assert_int_not_equal(stat(secrets_dir, &st), 0);
	(void)pid;
	r = deploy(ag, "dep-sec-none", dsec, "7.0.0", 4, 1);
	assert_int_equal(r.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(r.message, "fetch secrets"));
	serving(ag, "1.0.0", "\"secret\":\"absent\"");
	/* A grant for another agent (with another key) is not ours. */
	uint8_t other_pk[32], other_sk[32];
	crypto_box_keypair(other_pk, other_sk);
	char other[256];
	snprintf(other, sizeof other, "spiffe://%s/agent/it/sec-other", td);
	grant("dep-sec-other", other, other_pk);
	r = deploy(ag, "dep-sec-other", dsec, "7.0.0", 5, 1);
	assert_int_equal(r.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(r.message, "fetch secrets"));
	/* The release needs secrets but the task says it has none. */
	r = deploy(ag, "dep-sec-1", dsec, "7.0.0", 6, 0);
	assert_int_equal(r.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(r.message, "needs 2 secret"));
	serving(ag, "1.0.0", "\"secret\":\"absent\"");
}

static void test_wrong_pinned_key_refuses_the_bundle(void **state)
{
	(void)state;
	char err[512], wrong[65];
	uint8_t pk[32], sk[64];
	crypto_sign_keypair(pk, sk);
	sodium_bin2hex(wrong, sizeof wrong, pk, 32);
	/* Another agent root (another seal key), pinning a key that did not
	 * sign anything: a genuine bundle is refused. */
	snprintf(root2, sizeof root2, "%s/root2", dir);
	config(&cfg2, root2, wrong);
	assert_int_equal(agent_new(&cfg2, &ag2, err, sizeof err), 0);
	grant("dep-sec-pin", agent_id, ag2->keys.seal_pk);
	struct agent_result r = deploy(ag2, "dep-sec-pin", dsec, "7.0.0", 1, 1);
	assert_int_equal(r.result, AGENT_RESULT_FAILED);
	assert_non_null(strstr(r.message, "refused"));
	struct agent_runtime rt;
	agent_runtime(ag2, &rt);
	assert_int_equal(rt.process, AGENT_PROC_NONE);
	/* Nothing left on tmpfs by the failed attempts of either agent. */
	char cmd[256];
	snprintf(cmd, sizeof cmd, "grep -rl -- '%s' /dev/shm 2>/dev/null | grep -q .", db_value);
	assert_int_not_equal(system(cmd), 0);
}

static void test_values_never_logged(void **state)
{
	(void)state;
	assert_false(logged(db_value));
	assert_false(logged("TLSVALUE"));
	assert_true(logged("task failed"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_secrets_reach_the_release),
		cmocka_unit_test(test_no_grant_or_foreign_grant_fails),
		cmocka_unit_test(test_wrong_pinned_key_refuses_the_bundle),
		cmocka_unit_test(test_values_never_logged),
	};
	/* Until the artifact and secrets services are merged into this
	 * branch's stack. */
	if (getenv("SLIPWAY_ARTIFACT_ADDR") == NULL || getenv("SLIPWAY_SECRETS_ADDR") == NULL) {
		printf("SKIP it_agent_secrets: the stack has no artifact or secrets service\n");
		return 0;
	}
	signal(SIGPIPE, SIG_IGN);
	if (sodium_init() < 0)
		return 1;
	log_init("it_agent_secrets", LOG_INFO);
	log_set_sink(sink, NULL);
	rpc_init();
	int rc = cmocka_run_group_tests(tests, setup, teardown);
	ah_wait_outbox_drained(30000);
	rpc_shutdown();
	free(logbuf);
	return rc;
}
