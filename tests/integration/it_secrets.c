/*
 * it_secrets.c - the secrets service over the real stack: sealed puts with
 * check-and-set and a size cap, envelope encryption at rest and its AAD
 * binding (rows copied in PostgreSQL do not decrypt), the version
 * lifecycle, grants and Fetch as the orchestrator and as agents (wrong
 * agent, wrong deployment, expired, wrong scope, unknown secret), the agent
 * side of lib/sealed on real bundles (flipped bits, another key, another
 * signer, another agent, expired), master key rotation and retirement
 * (values still decrypt, ciphertexts untouched, restart with a wrong or
 * exposed keyring refused), the audit trail of every change and failure,
 * and finally a search of every log, the audit trail and the database for
 * the test's secret values, which must find none.
 *
 * The test acts as the orchestrator and as two agents by issuing their
 * certificates from the stack's CA; agents' X25519 keys are made here.
 */
#include "err.h"
#include "harness.h"
#include "pki.h"
#include "rpc.h"
#include "sealed.h"

#include "slipway/v1/audit.pb-c.h"
#include "slipway/v1/secrets.pb-c.h"

#include <dirent.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <setjmp.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#define MAX_VALUES 128

static char dir[256], pki[256], ca[600], td[128], addr[64], stack[512], app[32], other_app[32];
static char orch_id[256], agent1_id[256], agent2_id[256];
static struct rpc_client *admin, *orch, *agent1, *agent2, *mallory;
static uint8_t seal_pk[32], sign_pk[32], a1_pk[32], a2_pk[32], *a1_sk, *a2_sk;
static char values[MAX_VALUES][96];
static int nvalues;
static PGconn *pg;
static const char *g_db_v2; /* G_DB version 2, granted as dep-1 */
static const char *g_rot;   /* ROT version 1, granted as dep-rot */

/* ---------------------------------------------------------------- helpers */

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A distinctive value, remembered for the final search of logs. */
static const char *new_value(const char *tag)
{
	assert_true(nvalues < MAX_VALUES);
	char hex[17];
	uint8_t r[8];
	randombytes_buf(r, sizeof r);
	sodium_bin2hex(hex, sizeof hex, r, sizeof r);
	snprintf(values[nvalues], sizeof values[0], "swval-%s-%s", tag, hex);
	return values[nvalues++];
}

static int call(struct rpc_client *c, const char *method, const ProtobufCMessage *req,
		ProtobufCMessage **resp, char *err)
{
	/* wait_for_ready: the service is restarted once during the run */
	struct rpc_call_opts o = { .timeout_ms = 20000, .wait_for_ready = 1 };
	ProtobufCMessage *tmp = NULL;
	int rc;
	/* A call racing the restarted service's GOAWAY fails UNAVAILABLE; a
	 * client retries those (none of these tests expects UNAVAILABLE). */
	for (int attempt = 0; attempt < 5; attempt++) {
		rc = rpc_call(c, &slipway__v1__secrets__descriptor, method, req, resp ? resp : &tmp,
			      &o, err, 512);
		if (rc != SW_EUNAVAIL)
			break;
		h_sleep_ms(200);
	}
	if (resp == NULL && tmp != NULL)
		protobuf_c_message_free_unpacked(tmp, NULL);
	return rc;
}

static int put_sealed(struct rpc_client *c, const char *a, const char *env, const char *name,
		      const uint8_t *sealed, size_t slen, int cas, uint32_t expected, int keep,
		      uint32_t *version, char *err)
{
	Slipway__V1__PutSecretRequest req = SLIPWAY__V1__PUT_SECRET_REQUEST__INIT;
	Slipway__V1__SecretScope sc = SLIPWAY__V1__SECRET_SCOPE__INIT;
	ProtobufCMessage *m = NULL;
	sc.app = (char *)a;
	sc.environment = (char *)env;
	req.name = (char *)name;
	req.scope = &sc;
	req.sealed_value.data = (uint8_t *)sealed;
	req.sealed_value.len = slen;
	req.cas = cas;
	req.expected_version = expected;
	req.keep_current = keep;
	int rc = call(c, "PutSecret", &req.base, &m, err);
	if (rc == 0) {
		Slipway__V1__PutSecretResponse *r = (void *)m;
		assert_non_null(r->version);
		if (version)
			*version = r->version->version;
		protobuf_c_message_free_unpacked(m, NULL);
	}
	return rc;
}

static int put(struct rpc_client *c, const char *a, const char *env, const char *name,
	       const char *value, uint32_t *version, char *err)
{
	size_t n = strlen(value);
	uint8_t *box = malloc(n + crypto_box_SEALBYTES);
	assert_int_equal(crypto_box_seal(box, (const uint8_t *)value, n, seal_pk), 0);
	int rc = put_sealed(c, a, env, name, box, n + crypto_box_SEALBYTES, 0, 0, 0, version, err);
	free(box);
	return rc;
}

static int version_op(struct rpc_client *c, const char *method, const char *a, const char *env,
		      const char *name, uint32_t v, char *err)
{
	Slipway__V1__VersionActionRequest req = SLIPWAY__V1__VERSION_ACTION_REQUEST__INIT;
	Slipway__V1__SecretRef ref = SLIPWAY__V1__SECRET_REF__INIT;
	Slipway__V1__SecretScope sc = SLIPWAY__V1__SECRET_SCOPE__INIT;
	sc.app = (char *)a;
	sc.environment = (char *)env;
	ref.name = (char *)name;
	ref.scope = &sc;
	ref.version = v;
	req.secret = &ref;
	return call(c, method, &req.base, NULL, err);
}

struct ref {
	const char *name, *app, *env; /* app NULL: unscoped (resolved by the grant's scope) */
	uint32_t version;
};

static int enroll_for_grants = 1;

static int grant(struct rpc_client *c, const char *dep, const char *agent, const uint8_t *pk,
		 const char *a, const char *env, const struct ref *refs, size_t n, int64_t expires,
		 char *err)
{
	Slipway__V1__CreateGrantRequest req = SLIPWAY__V1__CREATE_GRANT_REQUEST__INIT;
	Slipway__V1__SecretRef r[32], *rp[32];
	Slipway__V1__SecretScope sc[32];
	assert_true(n <= 32);
	for (size_t i = 0; i < n; i++) {
		slipway__v1__secret_ref__init(&r[i]);
		r[i].name = (char *)refs[i].name;
		r[i].version = refs[i].version;
		if (refs[i].app) {
			slipway__v1__secret_scope__init(&sc[i]);
			sc[i].app = (char *)refs[i].app;
			sc[i].environment = (char *)refs[i].env;
			r[i].scope = &sc[i];
		}
		rp[i] = &r[i];
	}
	/* The secrets service grants only to an agent enrolled for the grant's
	 * scope, sealed to the key its enrollment pins: a well-formed grant's
	 * agent is enrolled so (the checks before it are what is tested). */
	static const uint8_t zero[32];
	char prefix[300];
	snprintf(prefix, sizeof prefix, "spiffe://%s/agent/", td);
	if (pk != NULL && memcmp(pk, zero, 32) != 0 && strncmp(agent, prefix, strlen(prefix)) == 0 &&
	    a != NULL && a[0] && env != NULL && env[0] && enroll_for_grants &&
	    h_enroll(agent, a, env, pk) != 0)
		fail_msg("cannot enroll %s", agent);
	req.deployment_id = (char *)dep;
	req.agent = (char *)agent;
	req.agent_public_key.data = (uint8_t *)pk;
	req.agent_public_key.len = pk ? 32 : 0;
	req.secrets = rp;
	req.n_secrets = n;
	req.expires_unix_ms = expires;
	req.app = (char *)a;
	req.environment = (char *)env;
	return call(c, "CreateGrant", &req.base, NULL, err);
}

static int fetch(struct rpc_client *c, const char *dep, uint8_t **box, size_t *len, char *err)
{
	Slipway__V1__FetchRequest req = SLIPWAY__V1__FETCH_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	req.deployment_id = (char *)dep;
	int rc = call(c, "Fetch", &req.base, &m, err);
	if (box)
		*box = NULL;
	if (rc == 0) {
		Slipway__V1__FetchResponse *r = (void *)m;
		if (box) {
			*box = malloc(r->sealed_bundle.len);
			memcpy(*box, r->sealed_bundle.data, r->sealed_bundle.len);
			*len = r->sealed_bundle.len;
		}
		protobuf_c_message_free_unpacked(m, NULL);
	}
	return rc;
}

static int open_as(const uint8_t *box, size_t len, const uint8_t *pk, const uint8_t *sk,
		   const char *agent, const char *dep, const uint8_t *pin, int64_t now,
		   struct sealed_bundle **b, char *err)
{
	struct sealed_expect x = { .agent = agent, .deployment_id = dep, .sign_pk = pin,
				   .now_unix_ms = now };
	return sealed_open(box, len, pk, sk, &x, b, err, 512);
}

/* Fetches dep as agent 1 and checks that secret `name` has `value`. */
static void expect_fetch(const char *dep, const char *name, uint32_t version, const char *value)
{
	uint8_t *box = NULL;
	size_t len = 0;
	char err[512];
	struct sealed_bundle *b = NULL;
	int rc = fetch(agent1, dep, &box, &len, err);
	if (rc != 0)
		fail_msg("fetch %s: %s", dep, err);
	rc = open_as(box, len, a1_pk, a1_sk, agent1_id, dep, sign_pk, 0, &b, err);
	if (rc != 0)
		fail_msg("open: %s", err);
	struct sealed_item it;
	assert_int_equal(sealed_bundle_find(b, name, &it), 0);
	assert_int_equal(it.version, version);
	assert_int_equal(it.len, strlen(value));
	assert_memory_equal(it.value, value, it.len);
	sealed_bundle_free(b);
	free(box);
}

static PGresult *sql(const char *q, int n, const char *const *params)
{
	PGresult *r = PQexecParams(pg, q, n, NULL, params, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(r);
	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
		fail_msg("sql %s: %s", q, PQerrorMessage(pg));
	return r;
}

static int64_t sql_int(const char *q, int n, const char *const *params)
{
	PGresult *r = sql(q, n, params);
	int64_t v = PQntuples(r) ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : -1;
	PQclear(r);
	return v;
}

static char *sql_text(const char *q, int n, const char *const *params)
{
	PGresult *r = sql(q, n, params);
	char *v = strdup(PQntuples(r) ? PQgetvalue(r, 0, 0) : "");
	PQclear(r);
	return v;
}

static int64_t grants_for(const char *dep)
{
	const char *p[1] = { dep };
	return sql_int("SELECT count(*) FROM secrets.grants WHERE deployment_id = $1", 1, p);
}

static int64_t versions_of(const char *a, const char *env, const char *name)
{
	const char *p[3] = { a, env, name };
	return sql_int("SELECT count(*) FROM secrets.versions v JOIN secrets.secrets s ON"
		       " s.id = v.secret_id WHERE s.app = $1 AND s.env = $2 AND s.name = $3",
		       3, p);
}

static int run(const char *cmd)
{
	int rc = system(cmd);
	return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* ---------------------------------------------------------------- set-up */

static void make_client(const char *uri, const char *tag, struct rpc_client **out)
{
	char prefix[600], crt[700], key[700];
	snprintf(prefix, sizeof prefix, "%s/%s", dir, tag);
	h_issue(pki, prefix, uri, NULL, 0);
	snprintf(crt, sizeof crt, "%s.crt", prefix);
	snprintf(key, sizeof key, "%s.key", prefix);
	*out = h_client(addr, ca, crt, key);
}

static int group_setup(void **state)
{
	(void)state;
	char err[512], uri[256];
	if (sodium_init() < 0)
		return -1;
	snprintf(dir, sizeof dir, "%s", h_tmpdir("it_secrets"));
	snprintf(pki, sizeof pki, "%s", h_env("SLIPWAY_PKI_DIR"));
	snprintf(ca, sizeof ca, "%s", h_env("SLIPWAY_CA"));
	snprintf(addr, sizeof addr, "%s", h_env("SLIPWAY_SECRETS_ADDR"));
	snprintf(stack, sizeof stack, "%s", h_env("SLIPWAY_STACK_DIR"));
	if (pki_trust_domain(pki, td, sizeof td, err, sizeof err) != 0)
		return -1;
	uint8_t r[3];
	char hex[7];
	randombytes_buf(r, sizeof r);
	sodium_bin2hex(hex, sizeof hex, r, sizeof r);
	snprintf(app, sizeof app, "web%s", hex);
	snprintf(other_app, sizeof other_app, "billing%s", hex);
	admin = h_client(addr, ca, h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
	snprintf(orch_id, sizeof orch_id, "spiffe://%s/service/orchestrator", td);
	snprintf(agent1_id, sizeof agent1_id, "spiffe://%s/agent/r1/host1", td);
	snprintf(agent2_id, sizeof agent2_id, "spiffe://%s/agent/r1/host2", td);
	make_client(orch_id, "orchestrator", &orch);
	make_client(agent1_id, "agent1", &agent1);
	make_client(agent2_id, "agent2", &agent2);
	snprintf(uri, sizeof uri, "spiffe://%s/user/mallory", td);
	make_client(uri, "mallory", &mallory);
	a1_sk = sodium_malloc(32);
	a2_sk = sodium_malloc(32);
	crypto_box_keypair(a1_pk, a1_sk);
	crypto_box_keypair(a2_pk, a2_sk);
	pg = PQconnectdb(h_env("SLIPWAY_PGURL"));
	if (PQstatus(pg) != CONNECTION_OK)
		return -1;
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	rpc_client_free(admin);
	rpc_client_free(orch);
	rpc_client_free(agent1);
	rpc_client_free(agent2);
	rpc_client_free(mallory);
	sodium_free(a1_sk);
	sodium_free(a2_sk);
	PQfinish(pg);
	return 0;
}

/* ---------------------------------------------------------------- tests */

static void test_service_keys(void **state)
{
	(void)state;
	Slipway__V1__GetServiceKeysRequest req = SLIPWAY__V1__GET_SERVICE_KEYS_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	char err[512], kid[SEALED_KEY_ID_MAX];
	/* Public keys: any authenticated caller, agents included. */
	assert_int_equal(call(agent1, "GetServiceKeys", &req.base, &m, err), 0);
	Slipway__V1__GetServiceKeysResponse *r = (void *)m;
	assert_int_equal(r->seal_public_key.len, 32);
	assert_int_equal(r->sign_public_key.len, 32);
	memcpy(seal_pk, r->seal_public_key.data, 32);
	memcpy(sign_pk, r->sign_public_key.data, 32);
	sealed_key_id(sign_pk, kid);
	assert_string_equal(r->sign_key_id, kid);
	protobuf_c_message_free_unpacked(m, NULL);
	/* The CLI writes the same keys as pin files. */
	char cmd[1200], p[700];
	snprintf(cmd, sizeof cmd, "build/bin/slipway secrets keys --out '%s' >'%s/keys.log' 2>&1", dir,
		 dir);
	assert_int_equal(run(cmd), 0);
	uint8_t pin[32];
	snprintf(p, sizeof p, "%s/secrets-sign.pub", dir);
	assert_int_equal(sealed_public_key_read(p, SEALED_LABEL_ED25519_PUBLIC, pin, 32, err,
						sizeof err),
			 0);
	assert_memory_equal(pin, sign_pk, 32);
}

static void test_put_sealed_cas_and_caps(void **state)
{
	(void)state;
	char err[512];
	uint32_t v = 0;
	const char *v1 = new_value("db1"), *v2 = new_value("db2");
	assert_int_equal(put(admin, app, "prod", "DB_PASSWORD", v1, &v, err), 0);
	assert_int_equal(v, 1);
	/* check-and-set: expected 1 -> 2 works; a stale expectation changes nothing. */
	size_t n = strlen(v2);
	uint8_t *box = malloc(n + 48);
	crypto_box_seal(box, (const uint8_t *)v2, n, seal_pk);
	assert_int_equal(put_sealed(admin, app, "prod", "DB_PASSWORD", box, n + 48, 1, 1, 0, &v, err),
			 0);
	assert_int_equal(v, 2);
	assert_int_equal(put_sealed(admin, app, "prod", "DB_PASSWORD", box, n + 48, 1, 1, 0, &v, err),
			 SW_EPRECOND);
	assert_non_null(strstr(err, "check-and-set"));
	assert_int_equal(versions_of(app, "prod", "DB_PASSWORD"), 2);
	/* expected 0: the secret must not exist yet. */
	assert_int_equal(put_sealed(admin, app, "prod", "DB_PASSWORD", box, n + 48, 1, 0, 0, &v, err),
			 SW_EPRECOND);
	assert_int_equal(put_sealed(admin, app, "prod", "NEW_ONE", box, n + 48, 1, 0, 0, &v, err), 0);
	assert_int_equal(v, 1);
	/* A tampered sealed box, a box for another key, plaintext: refused. */
	box[n / 2 + 40] ^= 1;
	assert_int_equal(put_sealed(admin, app, "prod", "DB_PASSWORD", box, n + 48, 0, 0, 0, &v, err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "does not open"));
	uint8_t opk[32], osk[32];
	crypto_box_keypair(opk, osk);
	crypto_box_seal(box, (const uint8_t *)v2, n, opk);
	assert_int_equal(put_sealed(admin, app, "prod", "DB_PASSWORD", box, n + 48, 0, 0, 0, &v, err),
			 SW_EINVAL);
	const char *plain = new_value("plaintext-not-sealed-at-all-but-long-enough-to-pass");
	assert_int_equal(put_sealed(admin, app, "prod", "DB_PASSWORD", (const uint8_t *)plain,
				    strlen(plain), 0, 0, 0, &v, err),
			 SW_EINVAL);
	free(box);
	/* Over the size cap (64 KiB by default): refused, nothing stored. */
	size_t big = 64 * 1024 + 1;
	uint8_t *val = malloc(big), *bbox = malloc(big + 48);
	memset(val, 'x', big);
	crypto_box_seal(bbox, val, big, seal_pk);
	assert_int_equal(put_sealed(admin, app, "prod", "BIG", bbox, big + 48, 0, 0, 0, &v, err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "limit"));
	assert_int_equal(versions_of(app, "prod", "BIG"), 0);
	crypto_box_seal(bbox, val, big - 1, seal_pk); /* exactly at the cap: fine */
	assert_int_equal(put_sealed(admin, app, "prod", "BIG", bbox, big - 1 + 48, 0, 0, 0, &v, err),
			 0);
	free(val);
	free(bbox);
	/* Bad names and scopes. */
	assert_int_equal(put(admin, app, "prod", "../etc/passwd", "x", &v, err), SW_EINVAL);
	assert_int_equal(put(admin, "", "prod", "X", "x", &v, err), SW_EINVAL);
	assert_int_equal(put(admin, "a/b", "", "X", "x", &v, err), SW_EINVAL);
	/* keep_current stages a version. */
	const char *v3 = new_value("db3");
	n = strlen(v3);
	box = malloc(n + 48);
	crypto_box_seal(box, (const uint8_t *)v3, n, seal_pk);
	assert_int_equal(put_sealed(admin, app, "prod", "DB_PASSWORD", box, n + 48, 0, 0, 1, &v, err),
			 0);
	assert_int_equal(v, 3);
	free(box);
	const char *p[2] = { app, "DB_PASSWORD" };
	assert_int_equal(sql_int("SELECT current_version FROM secrets.secrets WHERE app = $1 AND"
				 " env = 'prod' AND name = $2",
				 2, p),
			 2);
}

static void test_cli_put_reads_stdin_and_file(void **state)
{
	(void)state;
	char path[700], cmd[2000];
	const char *val = new_value("cli");
	snprintf(path, sizeof path, "%s/value.txt", dir);
	FILE *f = fopen(path, "w");
	assert_non_null(f);
	fprintf(f, "%s\n", val);
	fclose(f);
	chmod(path, 0600);
	/* stdin, with the trailing newline stripped on request */
	snprintf(cmd, sizeof cmd,
		 "build/bin/slipway secrets put API_KEY --scope %s --strip-newline < '%s' "
		 ">>'%s/cli.log' 2>&1",
		 app, path, dir);
	assert_int_equal(run(cmd), 0);
	/* --file, kept exactly (newline included), as version 2 with check-and-set */
	snprintf(cmd, sizeof cmd,
		 "build/bin/slipway secrets put API_KEY --scope %s --file '%s' --cas 1 "
		 ">>'%s/cli.log' 2>&1",
		 app, path, dir);
	assert_int_equal(run(cmd), 0);
	/* a stale --cas fails with exit 1 */
	assert_int_equal(run(cmd), 1);
	/* usage errors exit 2; a value on the command line is not an option */
	snprintf(cmd, sizeof cmd,
		 "build/bin/slipway secrets put API_KEY --scope %s --value x >>'%s/cli.log' 2>&1",
		 app, dir);
	assert_int_equal(run(cmd), 2);
	snprintf(cmd, sizeof cmd, "build/bin/slipway -o json secrets versions API_KEY --scope %s "
				  ">'%s/versions.json' 2>>'%s/cli.log'",
		 app, dir, dir);
	assert_int_equal(run(cmd), 0);
	snprintf(path, sizeof path, "%s/versions.json", dir);
	char *j = h_read_file(path);
	assert_non_null(j);
	char expect[64];
	snprintf(expect, sizeof expect, "\"size_bytes\": %zu", strlen(val));
	assert_non_null(strstr(j, expect));
	snprintf(expect, sizeof expect, "\"size_bytes\": %zu", strlen(val) + 1);
	assert_non_null(strstr(j, expect));
	free(j);
	/* The values reach an agent exactly as given. */
	struct ref refs[] = { { "API_KEY", NULL, NULL, 1 } };
	char err[512];
	assert_int_equal(grant(orch, "dep-cli", agent1_id, a1_pk, app, "prod", refs, 1, 0, err), 0);
	expect_fetch("dep-cli", "API_KEY", 1, val);
}

static void test_encrypted_at_rest(void **state)
{
	(void)state;
	const char *p[1] = { app };
	PGresult *r = sql("SELECT v.ciphertext, v.wrapped_key, v.size_bytes, v.master_version"
			  " FROM secrets.versions v JOIN secrets.secrets s ON s.id = v.secret_id"
			  " WHERE s.app = $1 AND v.state <> 3",
			  1, p);
	assert_true(PQntuples(r) >= 4);
	for (int i = 0; i < PQntuples(r); i++) {
		size_t ctlen = 0, wlen = 0;
		unsigned char *ct = PQunescapeBytea((const unsigned char *)PQgetvalue(r, i, 0), &ctlen);
		unsigned char *wk = PQunescapeBytea((const unsigned char *)PQgetvalue(r, i, 1), &wlen);
		assert_int_equal(ctlen, strtoul(PQgetvalue(r, i, 2), NULL, 10) + 40);
		assert_int_equal(wlen, 72);
		for (int k = 0; k < nvalues; k++)
			assert_null(memmem(ct, ctlen, values[k], strlen(values[k])));
		PQfreemem(ct);
		PQfreemem(wk);
	}
	PQclear(r);
}

static void test_lifecycle(void **state)
{
	(void)state;
	char err[512];
	uint32_t v;
	const char *a = new_value("life1"), *b = new_value("life2");
	assert_int_equal(put(admin, app, "prod", "LIFE", a, &v, err), 0);
	assert_int_equal(put(admin, app, "prod", "LIFE", b, &v, err), 0);
	/* The current version can be neither disabled nor destroyed. */
	assert_int_equal(version_op(admin, "DisableVersion", app, "prod", "LIFE", 2, err),
			 SW_EPRECOND);
	assert_int_equal(version_op(admin, "DestroyVersion", app, "prod", "LIFE", 2, err),
			 SW_EPRECOND);
	assert_int_equal(version_op(admin, "DisableVersion", app, "prod", "LIFE", 1, err), 0);
	assert_int_equal(version_op(admin, "DisableVersion", app, "prod", "LIFE", 1, err), 0);
	/* Only an enabled version can become current. */
	assert_int_equal(version_op(admin, "SetCurrentVersion", app, "prod", "LIFE", 1, err),
			 SW_EPRECOND);
	assert_int_equal(version_op(admin, "EnableVersion", app, "prod", "LIFE", 1, err), 0);
	assert_int_equal(version_op(admin, "SetCurrentVersion", app, "prod", "LIFE", 1, err), 0);
	assert_int_equal(version_op(admin, "DestroyVersion", app, "prod", "LIFE", 2, err), 0);
	/* Destroyed: ciphertext and wrapped key are gone, metadata stays. */
	const char *p[1] = { app };
	assert_int_equal(sql_int("SELECT count(*) FROM secrets.versions v JOIN secrets.secrets s"
				 " ON s.id = v.secret_id WHERE s.app = $1 AND s.name = 'LIFE'"
				 " AND v.version = 2 AND v.state = 3 AND v.ciphertext IS NULL AND"
				 " v.wrapped_key IS NULL",
				 1, p),
			 1);
	assert_int_equal(version_op(admin, "EnableVersion", app, "prod", "LIFE", 2, err),
			 SW_EPRECOND);
	/* Unknown secret, unknown version, wrong scope: NOT_FOUND. */
	assert_int_equal(version_op(admin, "DisableVersion", app, "prod", "NOPE", 1, err),
			 SW_ENOTFOUND);
	assert_int_equal(version_op(admin, "DisableVersion", app, "prod", "LIFE", 9, err),
			 SW_ENOTFOUND);
	assert_int_equal(version_op(admin, "DisableVersion", app, "staging", "LIFE", 1, err),
			 SW_ENOTFOUND);
	assert_int_equal(version_op(admin, "DisableVersion", app, "prod", "LIFE", 0, err), SW_EINVAL);
	/* Listing is metadata only: no value in any response. */
	Slipway__V1__ListVersionsSecretRequest lreq = SLIPWAY__V1__LIST_VERSIONS_SECRET_REQUEST__INIT;
	Slipway__V1__SecretRef ref = SLIPWAY__V1__SECRET_REF__INIT;
	Slipway__V1__SecretScope sc = SLIPWAY__V1__SECRET_SCOPE__INIT;
	sc.app = app;
	sc.environment = "prod";
	ref.name = "LIFE";
	ref.scope = &sc;
	lreq.secret = &ref;
	ProtobufCMessage *m = NULL;
	assert_int_equal(call(admin, "ListVersions", &lreq.base, &m, err), 0);
	Slipway__V1__ListVersionsSecretResponse *lr = (void *)m;
	assert_int_equal(lr->n_versions, 2);
	assert_int_equal(lr->versions[0]->state, SLIPWAY__V1__SECRET_STATE__SECRET_STATE_ENABLED);
	assert_true(lr->versions[0]->current);
	assert_int_equal(lr->versions[1]->state, SLIPWAY__V1__SECRET_STATE__SECRET_STATE_DESTROYED);
	uint8_t packed[65536];
	size_t plen = protobuf_c_message_pack(m, packed);
	assert_null(memmem(packed, plen, a, strlen(a)));
	protobuf_c_message_free_unpacked(m, NULL);
	Slipway__V1__ListSecretsRequest sreq = SLIPWAY__V1__LIST_SECRETS_REQUEST__INIT;
	Slipway__V1__SecretScope sc2 = SLIPWAY__V1__SECRET_SCOPE__INIT;
	sc2.app = app;
	sreq.scope = &sc2;
	sreq.page_size = 2;
	/* Pages of two walk every secret of the app exactly once. */
	int seen = 0, pages = 0;
	char token[1024] = "";
	do {
		sreq.page_token = token;
		assert_int_equal(call(admin, "ListSecrets", &sreq.base, &m, err), 0);
		Slipway__V1__ListSecretsResponse *sr = (void *)m;
		seen += (int)sr->n_secrets;
		pages++;
		plen = protobuf_c_message_pack(m, packed);
		for (int k = 0; k < nvalues; k++)
			assert_null(memmem(packed, plen, values[k], strlen(values[k])));
		snprintf(token, sizeof token, "%s", sr->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
	} while (token[0] != '\0' && pages < 20);
	assert_int_equal(seen, (int)sql_int("SELECT count(*) FROM secrets.secrets WHERE app = $1",
					    1, p));
	assert_true(pages >= 2);
}

struct racer {
	pthread_t t;
	int rc;
};

static void *race_one(void *arg)
{
	struct racer *r = arg;
	struct rpc_client *c = h_client(addr, ca, h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
	const char *val = "race-value-not-secret";
	uint8_t box[64 + 48];
	char e[512];
	crypto_box_seal(box, (const uint8_t *)val, strlen(val), seal_pk);
	r->rc = put_sealed(c, app, "prod", "RACE", box, strlen(val) + 48, 1, 1, 0, NULL, e);
	rpc_client_free(c);
	return NULL;
}

static void test_concurrent_check_and_set(void **state)
{
	(void)state;
	/* Eight writers race with the same expectation: exactly one wins. */
	char err[512];
	uint32_t v;
	struct racer r[8];
	assert_int_equal(put(admin, app, "prod", "RACE", new_value("race0"), &v, err), 0);
	for (int i = 0; i < 8; i++)
		assert_int_equal(pthread_create(&r[i].t, NULL, race_one, &r[i]), 0);
	int won = 0, lost = 0;
	for (int i = 0; i < 8; i++) {
		pthread_join(r[i].t, NULL);
		won += r[i].rc == 0;
		lost += r[i].rc == SW_EPRECOND;
	}
	assert_int_equal(won, 1);
	assert_int_equal(lost, 7);
	assert_int_equal(versions_of(app, "prod", "RACE"), 2);
}

static void test_grant_and_fetch(void **state)
{
	(void)state;
	char err[512];
	uint32_t v;
	const char *dbv = new_value("grant-db"), *appwide = new_value("grant-app"),
		   *envspec = new_value("grant-env");
	assert_int_equal(put(admin, app, "prod", "G_DB", dbv, &v, err), 0);
	/* TOKEN exists app-wide and for staging; prod resolves to the app-wide one. */
	assert_int_equal(put(admin, app, "", "TOKEN", appwide, &v, err), 0);
	assert_int_equal(put(admin, app, "staging", "TOKEN", envspec, &v, err), 0);
	struct ref refs[] = { { "G_DB", NULL, NULL, 0 }, { "TOKEN", NULL, NULL, 0 } };
	int64_t exp = now_ms() + 10 * 60 * 1000;
	assert_int_equal(grant(orch, "dep-1", agent1_id, a1_pk, app, "prod", refs, 2, exp, err), 0);
	assert_int_equal(grant(orch, "dep-1s", agent1_id, a1_pk, app, "staging", refs + 1, 1, exp,
			       err),
			 0);

	uint8_t *box = NULL;
	size_t len = 0;
	struct sealed_bundle *b = NULL;
	assert_int_equal(fetch(agent1, "dep-1", &box, &len, err), 0);
	assert_int_equal(open_as(box, len, a1_pk, a1_sk, agent1_id, "dep-1", sign_pk, 0, &b, err), 0);
	assert_int_equal(sealed_bundle_count(b), 2);
	assert_string_equal(sealed_bundle_agent(b), agent1_id);
	assert_string_equal(sealed_bundle_deployment(b), "dep-1");
	assert_true(sealed_bundle_expires(b) <= exp);
	struct sealed_item it;
	assert_int_equal(sealed_bundle_find(b, "G_DB", &it), 0);
	assert_memory_equal(it.value, dbv, strlen(dbv));
	assert_int_equal(sealed_bundle_find(b, "TOKEN", &it), 0);
	assert_int_equal(it.len, strlen(appwide));
	assert_memory_equal(it.value, appwide, it.len);
	int64_t expires = sealed_bundle_expires(b);
	sealed_bundle_free(b);
	expect_fetch("dep-1s", "TOKEN", 1, envspec);
	/* Two fetches, two different sealed boxes (fresh nonce and seal). */
	uint8_t *box2 = NULL;
	size_t len2 = 0;
	assert_int_equal(fetch(agent1, "dep-1", &box2, &len2, err), 0);
	assert_true(len2 != len || memcmp(box, box2, len) != 0);
	free(box2);

	/* ---- the agent side on a real bundle: every tamper is caught ---- */
	for (size_t i = 0; i < len; i += len / 97 + 1) {
		box[i] ^= 0x10;
		assert_int_equal(open_as(box, len, a1_pk, a1_sk, agent1_id, "dep-1", sign_pk, 0, &b,
					 err),
				 SW_EINVAL);
		box[i] ^= 0x10;
	}
	/* another agent's key cannot open it */
	assert_int_equal(open_as(box, len, a2_pk, a2_sk, agent2_id, "dep-1", sign_pk, 0, &b, err),
			 SW_EINVAL);
	/* a pinned key that is not the service's: refused */
	uint8_t rogue_pk[32], rogue_sk[64];
	crypto_sign_keypair(rogue_pk, rogue_sk);
	assert_int_equal(open_as(box, len, a1_pk, a1_sk, agent1_id, "dep-1", rogue_pk, 0, &b, err),
			 SW_EPERM);
	/* meant for another agent or deployment: refused */
	assert_int_equal(open_as(box, len, a1_pk, a1_sk, agent2_id, "dep-1", sign_pk, 0, &b, err),
			 SW_EPERM);
	assert_int_equal(open_as(box, len, a1_pk, a1_sk, agent1_id, "dep-2", sign_pk, 0, &b, err),
			 SW_EPERM);
	/* expired */
	assert_int_equal(open_as(box, len, a1_pk, a1_sk, agent1_id, "dep-1", sign_pk, expires, &b,
				 err),
			 SW_EPRECOND);
	free(box);

	/* ---- the service side: only that agent, only that deployment ---- */
	int64_t before = grants_for("dep-1");
	assert_int_equal(fetch(agent2, "dep-1", NULL, NULL, err), SW_EPERM);
	assert_int_equal(fetch(agent1, "dep-unknown", NULL, NULL, err), SW_EPERM);
	assert_int_equal(fetch(admin, "dep-1", NULL, NULL, err), SW_EPERM);
	assert_non_null(strstr(err, "only agents"));
	assert_int_equal(fetch(orch, "dep-1", NULL, NULL, err), SW_EPERM);
	assert_int_equal(fetch(agent1, "bad id!", NULL, NULL, err), SW_EINVAL);
	/* only the orchestrator grants */
	assert_int_equal(grant(agent1, "dep-1", agent1_id, a1_pk, app, "prod", refs, 2, exp, err),
			 SW_EPERM);
	assert_int_equal(grant(admin, "dep-1", agent1_id, a1_pk, app, "prod", refs, 2, exp, err),
			 SW_EPERM);
	assert_int_equal(grants_for("dep-1"), before);

	/* ---- versions are pinned when the grant is made ---- */
	const char *newer = g_db_v2 = new_value("grant-db-v2");
	assert_int_equal(put(admin, app, "prod", "G_DB", newer, &v, err), 0);
	expect_fetch("dep-1", "G_DB", 1, dbv);
	/* disabling a pinned version stops its delivery at once; enabling restores it */
	assert_int_equal(version_op(admin, "DisableVersion", app, "prod", "G_DB", 1, err), 0);
	assert_int_equal(fetch(agent1, "dep-1", NULL, NULL, err), SW_EPRECOND);
	assert_non_null(strstr(err, "disabled"));
	assert_int_equal(version_op(admin, "EnableVersion", app, "prod", "G_DB", 1, err), 0);
	expect_fetch("dep-1", "G_DB", 1, dbv);
	/* a new grant for the same deployment and agent takes over */
	assert_int_equal(grant(orch, "dep-1", agent1_id, a1_pk, app, "prod", refs, 1, exp, err), 0);
	expect_fetch("dep-1", "G_DB", 2, newer);
}

static void test_fetch_after_database_connections_are_lost(void **state)
{
	(void)state;
	/* Fetch prepares its query once per connection: connections replaced
	 * after a loss prepare it again. */
	PGresult *r = sql("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
			  " WHERE application_name = 'slipway-secrets'",
			  0, NULL);
	assert_true(strtol(PQgetvalue(r, 0, 0), NULL, 10) > 0);
	PQclear(r);
	expect_fetch("dep-1", "G_DB", 2, g_db_v2);
	expect_fetch("dep-1", "G_DB", 2, g_db_v2);
}

/* Fetch events recorded so far (delivered to the audit log, or still in
 * the outbox). */
static int64_t fetch_events_recorded(void)
{
	const char *audit = getenv("SLIPWAY_AUDIT_ADDR");
	int64_t n = sql_int("SELECT count(*) FROM secrets.outbox"
			    " WHERE position('secret.fetch'::bytea in event) > 0",
			    0, NULL);
	if (audit != NULL && audit[0] != '\0')
		n += sql_int("SELECT count(*) FROM audit.entries"
			     " WHERE service = 'secrets' AND action = 'secret.fetch' AND outcome = 1",
			     0, NULL);
	return n;
}

struct bg_fetch {
	pthread_t t;
	int rc, done;
	char err[512];
};

static void *bg_fetch_main(void *arg)
{
	struct bg_fetch *f = arg;
	/* One attempt (call() retries UNAVAILABLE, which is what is tested). */
	Slipway__V1__FetchRequest req = SLIPWAY__V1__FETCH_REQUEST__INIT;
	req.deployment_id = "dep-1";
	ProtobufCMessage *m = NULL;
	struct rpc_call_opts o = { .timeout_ms = 20000 };
	f->rc = rpc_call(agent1, &slipway__v1__secrets__descriptor, "Fetch", &req.base, &m, &o,
			 f->err, sizeof f->err);
	if (f->rc == 0 && ((Slipway__V1__FetchResponse *)m)->sealed_bundle.len == 0)
		f->rc = SW_EINTERNAL;
	if (m != NULL)
		protobuf_c_message_free_unpacked(m, NULL);
	__atomic_store_n(&f->done, 1, __ATOMIC_SEQ_CST);
	return NULL;
}

static int fetches_done(struct bg_fetch *f, int n)
{
	int d = 0;
	for (int i = 0; i < n; i++)
		d += __atomic_load_n(&f[i].done, __ATOMIC_SEQ_CST);
	return d;
}

/* Concurrent fetches' audit events are group-committed: no bundle leaves
 * before the transaction holding its event has committed, a transaction
 * that dies takes only its own fetches down (they get UNAVAILABLE and no
 * bundle), and the others' events commit in the next one. Exactly the
 * fetches answered with a bundle are on record. The test holds the outbox's
 * commit-order lock (taken by every outbox commit of the schema) to stop
 * commits, and kills the one transaction waiting for it. */
static void test_fetch_answered_only_after_its_event_commits(void **state)
{
	(void)state;
	enum { N = 6 };
	struct bg_fetch f[N];
	memset(f, 0, sizeof f);
	expect_fetch("dep-1", "G_DB", 2, g_db_v2); /* warm: prepared, authorized, cached */
	for (int i = 0; i < 300 && sql_int("SELECT count(*) FROM secrets.outbox", 0, NULL) > 0; i++)
		h_sleep_ms(100);
	int64_t before = fetch_events_recorded();
	PQclear(sql("SELECT pg_advisory_lock(hashtext('slipway.outbox.commit.secrets'))", 0, NULL));
	for (int i = 0; i < N; i++)
		assert_int_equal(pthread_create(&f[i].t, NULL, bg_fetch_main, &f[i]), 0);
	/* Wait until one commit is stuck on the lock and the rest queued behind it. */
	int stuck = 0;
	for (int i = 0; i < 100 && !stuck; i++) {
		h_sleep_ms(50);
		stuck = sql_int("SELECT count(*) FROM pg_stat_activity WHERE application_name ="
				" 'slipway-secrets' AND wait_event_type = 'Lock'",
				0, NULL) > 0;
	}
	assert_true(stuck);
	h_sleep_ms(300);
	assert_int_equal(fetches_done(f, N), 0); /* nothing answered before its commit */
	assert_int_equal(sql_int("SELECT count(*) FROM pg_stat_activity WHERE application_name ="
				 " 'slipway-secrets' AND wait_event_type = 'Lock'",
				 0, NULL),
			 1); /* one transaction for every fetch waiting, not one each */
	PQclear(sql("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE"
		    " application_name = 'slipway-secrets' AND wait_event_type = 'Lock'",
		    0, NULL));
	for (int i = 0; i < 100 && fetches_done(f, N) == 0; i++)
		h_sleep_ms(50);
	PQclear(sql("SELECT pg_advisory_unlock(hashtext('slipway.outbox.commit.secrets'))", 0, NULL));
	int ok = 0, unavailable = 0;
	for (int i = 0; i < N; i++) {
		assert_int_equal(pthread_join(f[i].t, NULL), 0);
		if (f[i].rc == 0)
			ok++;
		else if (f[i].rc == SW_EUNAVAIL && strstr(f[i].err, "not delivering") != NULL)
			unavailable++;
		else
			fail_msg("fetch %d: %d %s", i, f[i].rc, f[i].err);
	}
	assert_true(unavailable >= 1);
	assert_true(ok >= 1);
	for (int i = 0; i < 300 && sql_int("SELECT count(*) FROM secrets.outbox", 0, NULL) > 0; i++)
		h_sleep_ms(100);
	assert_int_equal(fetch_events_recorded() - before, ok);
	expect_fetch("dep-1", "G_DB", 2, g_db_v2); /* and the service carries on */
}

static void test_grant_validation(void **state)
{
	(void)state;
	char err[512];
	uint32_t v;
	int64_t exp = now_ms() + 60000;
	assert_int_equal(put(admin, other_app, "prod", "THEIRS", new_value("theirs"), &v, err), 0);
	assert_int_equal(put(admin, app, "prod", "OURS", new_value("ours"), &v, err), 0);
	/* wrong scope: another app's secret, or another environment's */
	struct ref wrong[] = { { "THEIRS", other_app, "prod", 0 } };
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", wrong, 1, exp, err),
			 SW_EPERM);
	assert_non_null(strstr(err, "wrong scope"));
	struct ref wrong_env[] = { { "OURS", app, "staging", 0 } };
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", wrong_env, 1, exp, err),
			 SW_EPERM);
	/* an unknown secret, and one that exists only for another app */
	struct ref unknown[] = { { "OURS", NULL, NULL, 0 }, { "NOPE", NULL, NULL, 0 } };
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", unknown, 2, exp, err),
			 SW_ENOTFOUND);
	struct ref theirs[] = { { "THEIRS", NULL, NULL, 0 } };
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", theirs, 1, exp, err),
			 SW_ENOTFOUND);
	/* an unknown version, a duplicate name */
	struct ref badv[] = { { "OURS", NULL, NULL, 7 } };
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", badv, 1, exp, err),
			 SW_ENOTFOUND);
	struct ref dup[] = { { "OURS", NULL, NULL, 0 }, { "OURS", app, "prod", 0 } };
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", dup, 2, exp, err),
			 SW_EINVAL);
	/* expiry in the past, or too far ahead */
	struct ref ok[] = { { "OURS", NULL, NULL, 0 } };
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", ok, 1, now_ms() - 1,
			       err),
			 SW_EINVAL);
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", ok, 1,
			       now_ms() + 40LL * 24 * 3600 * 1000, err),
			 SW_EINVAL);
	/* not an agent, a user, another trust domain; a bad key */
	assert_int_equal(grant(orch, "dep-v", orch_id, a1_pk, app, "prod", ok, 1, exp, err),
			 SW_EINVAL);
	assert_int_equal(grant(orch, "dep-v", "spiffe://elsewhere/agent/r1/host1", a1_pk, app, "prod",
			       ok, 1, exp, err),
			 SW_EINVAL);
	uint8_t zero[32] = { 0 };
	assert_int_equal(grant(orch, "dep-v", agent1_id, zero, app, "prod", ok, 1, exp, err),
			 SW_EINVAL);
	assert_int_equal(grant(orch, "dep-v", agent1_id, NULL, app, "prod", ok, 1, exp, err),
			 SW_EINVAL);
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", ok, 0, exp, err),
			 SW_EINVAL);
	/* a destroyed or disabled version cannot be granted */
	assert_int_equal(put(admin, app, "prod", "OURS", new_value("ours2"), &v, err), 0);
	assert_int_equal(version_op(admin, "DisableVersion", app, "prod", "OURS", 1, err), 0);
	struct ref v1[] = { { "OURS", NULL, NULL, 1 } };
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", v1, 1, exp, err),
			 SW_EPRECOND);
	/* Nothing of the above left a grant behind. */
	assert_int_equal(grants_for("dep-v"), 0);
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", ok, 1, exp, err), 0);
	assert_int_equal(grants_for("dep-v"), 1);
	/* Only to an agent enrolled for the scope, sealed to its pinned key:
	 * the orchestrator's word is not enough. */
	enroll_for_grants = 0;
	assert_int_equal(h_enroll(agent1_id, app, "staging", a1_pk), 0);
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", ok, 1, exp, err),
			 SW_EPERM);
	assert_non_null(strstr(err, "is enrolled for"));
	assert_int_equal(h_enroll(agent1_id, app, "prod", a2_pk), 0);
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", ok, 1, exp, err),
			 SW_EPERM);
	assert_non_null(strstr(err, "not the sealing key pinned"));
	assert_int_equal(h_run("build/bin/slipway agents unenroll '%s' >/dev/null", agent1_id), 0);
	assert_int_equal(grant(orch, "dep-v", agent1_id, a1_pk, app, "prod", ok, 1, exp, err),
			 SW_EPERM);
	assert_non_null(strstr(err, "is not enrolled"));
	assert_int_equal(grants_for("dep-v"), 1);
	enroll_for_grants = 1;
	assert_int_equal(h_enroll(agent1_id, app, "prod", a1_pk), 0); /* as the next tests expect */
}

/* A request id makes CreateGrant idempotent: the orchestrator repeats a
 * grant whose answer it did not record (a crash, a lost reply), and must
 * get the same grant back, not a second one. */
static void test_grant_request_id_is_idempotent(void **state)
{
	(void)state;
	char err[512], first[64] = "";
	uint32_t v;
	assert_int_equal(put(admin, app, "prod", "IDEM_DB", new_value("idem"), &v, err), 0);
	Slipway__V1__SecretRef ref = SLIPWAY__V1__SECRET_REF__INIT, *rp = &ref;
	ref.name = "IDEM_DB";
	Slipway__V1__CreateGrantRequest req = SLIPWAY__V1__CREATE_GRANT_REQUEST__INIT;
	req.deployment_id = "dep-idem";
	req.agent = (char *)agent1_id;
	req.agent_public_key.data = (uint8_t *)a1_pk;
	req.agent_public_key.len = 32;
	req.secrets = &rp;
	req.n_secrets = 1;
	req.expires_unix_ms = now_ms() + 600000;
	req.app = (char *)app;
	req.environment = "prod";
	req.request_id = "dep-idem:1700000000000:0a1b2c3d";
	int64_t first_exp = req.expires_unix_ms;
	for (int i = 0; i < 3; i++) {
		ProtobufCMessage *m = NULL;
		req.expires_unix_ms = first_exp + i * 1000; /* a retry computes its own */
		assert_int_equal(call(orch, "CreateGrant", &req.base, &m, err), 0);
		Slipway__V1__CreateGrantResponse *r = (void *)m;
		if (i == 0)
			snprintf(first, sizeof first, "%s", r->grant_id);
		else
			assert_string_equal(r->grant_id, first);
		assert_int_equal(r->expires_unix_ms, first_exp); /* the grant as first made */
		protobuf_c_message_free_unpacked(m, NULL);
	}
	/* Without a request id every call is a new grant. */
	req.request_id = "";
	ProtobufCMessage *m = NULL;
	assert_int_equal(call(orch, "CreateGrant", &req.base, &m, err), 0);
	assert_string_not_equal(((Slipway__V1__CreateGrantResponse *)m)->grant_id, first);
	protobuf_c_message_free_unpacked(m, NULL);
	/* The same request id for another deployment is refused. */
	req.request_id = "dep-idem:1700000000000:0a1b2c3d";
	req.deployment_id = "dep-other";
	assert_int_equal(call(orch, "CreateGrant", &req.base, NULL, err), SW_EEXIST);
	assert_non_null(strstr(err, "request_id"));
	req.request_id = "bad/id";
	assert_int_equal(call(orch, "CreateGrant", &req.base, NULL, err), SW_EINVAL);
}

static void test_grant_of_many_secrets(void **state)
{
	(void)state;
	/* 30 secrets with long names: the bundle holds them all; the audit
	 * events (whose details the audit service caps) still get through. */
	char err[512], names[30][80];
	struct ref refs[30];
	uint32_t v;
	for (int i = 0; i < 30; i++) {
		snprintf(names[i], sizeof names[i], "MANY_%02d_%s", i,
			 "a_rather_long_secret_name_to_fill_the_audit_detail");
		assert_int_equal(put(admin, app, "prod", names[i], new_value("many"), &v, err), 0);
		refs[i] = (struct ref){ names[i], NULL, NULL, 0 };
	}
	assert_int_equal(grant(orch, "dep-many", agent1_id, a1_pk, app, "prod", refs, 30,
			       now_ms() + 600000, err),
			 0);
	uint8_t *box = NULL;
	size_t len = 0;
	struct sealed_bundle *b = NULL;
	assert_int_equal(fetch(agent1, "dep-many", &box, &len, err), 0);
	assert_int_equal(open_as(box, len, a1_pk, a1_sk, agent1_id, "dep-many", sign_pk, 0, &b, err),
			 0);
	assert_int_equal(sealed_bundle_count(b), 30);
	for (int i = 0; i < 30; i++) {
		struct sealed_item it;
		assert_int_equal(sealed_bundle_item(b, (size_t)i, &it), 0);
		assert_string_equal(it.name, names[i]);
		assert_int_equal(it.len, strlen(values[nvalues - 30 + i]));
		assert_memory_equal(it.value, values[nvalues - 30 + i], it.len);
	}
	sealed_bundle_free(b);
	free(box);
}

static void test_grant_expires(void **state)
{
	(void)state;
	char err[512];
	uint32_t v;
	const char *val = new_value("short");
	assert_int_equal(put(admin, app, "prod", "SHORT", val, &v, err), 0);
	struct ref refs[] = { { "SHORT", NULL, NULL, 0 } };
	assert_int_equal(grant(orch, "dep-exp", agent1_id, a1_pk, app, "prod", refs, 1,
			       now_ms() + 1500, err),
			 0);
	uint8_t *box = NULL;
	size_t len = 0;
	struct sealed_bundle *b = NULL;
	assert_int_equal(fetch(agent1, "dep-exp", &box, &len, err), 0);
	assert_int_equal(open_as(box, len, a1_pk, a1_sk, agent1_id, "dep-exp", sign_pk, 0, &b, err),
			 0);
	sealed_bundle_free(b);
	h_sleep_ms(1700);
	/* The grant is over: the service refuses, and the bundle fetched before
	 * has expired with it on the agent side. */
	assert_int_equal(fetch(agent1, "dep-exp", NULL, NULL, err), SW_EPRECOND);
	assert_non_null(strstr(err, "expired"));
	assert_int_equal(open_as(box, len, a1_pk, a1_sk, agent1_id, "dep-exp", sign_pk, 0, &b, err),
			 SW_EPRECOND);
	/* Another agent still learns only that it has no grant. */
	assert_int_equal(fetch(agent2, "dep-exp", NULL, NULL, err), SW_EPERM);
	free(box);
}

/* Copies (ciphertext, wrapped key, master version) of one version row onto
 * another, as someone with write access to the database might. */
static void copy_row(const char *from_env, const char *from_name, const char *from_ver,
		     const char *to_env, const char *to_name, const char *to_ver, int value_only)
{
	const char *p[7] = { app, from_env, from_name, from_ver, to_env, to_name, to_ver };
	PGresult *r = sql(value_only
				  ? "UPDATE secrets.versions t SET ciphertext = f.ciphertext,"
				    " size_bytes = f.size_bytes"
				    " FROM secrets.versions f, secrets.secrets fs, secrets.secrets ts"
				    " WHERE fs.id = f.secret_id AND fs.app = $1 AND fs.env = $2 AND"
				    " fs.name = $3 AND f.version = $4::int AND ts.id = t.secret_id AND"
				    " ts.app = $1 AND ts.env = $5 AND ts.name = $6 AND t.version = $7::int"
				  : "UPDATE secrets.versions t SET ciphertext = f.ciphertext,"
				    " wrapped_key = f.wrapped_key, master_version = f.master_version,"
				    " size_bytes = f.size_bytes"
				    " FROM secrets.versions f, secrets.secrets fs, secrets.secrets ts"
				    " WHERE fs.id = f.secret_id AND fs.app = $1 AND fs.env = $2 AND"
				    " fs.name = $3 AND f.version = $4::int AND ts.id = t.secret_id AND"
				    " ts.app = $1 AND ts.env = $5 AND ts.name = $6 AND t.version = $7::int",
			  7, p);
	assert_string_equal(PQcmdTuples(r), "1");
	PQclear(r);
}

static char *row_backup(const char *env, const char *name, const char *ver)
{
	const char *p[4] = { app, env, name, ver };
	return sql_text("SELECT encode(ciphertext, 'hex') || ':' || encode(wrapped_key, 'hex') ||"
			" ':' || master_version || ':' || size_bytes FROM secrets.versions v"
			" JOIN secrets.secrets s ON s.id = v.secret_id WHERE s.app = $1 AND"
			" s.env = $2 AND s.name = $3 AND v.version = $4::int",
			4, p);
}

static void row_restore(const char *env, const char *name, const char *ver, const char *backup)
{
	const char *p[5] = { app, env, name, ver, backup };
	PGresult *r = sql("UPDATE secrets.versions v SET"
			  " ciphertext = decode(split_part($5, ':', 1), 'hex'),"
			  " wrapped_key = decode(split_part($5, ':', 2), 'hex'),"
			  " master_version = split_part($5, ':', 3)::int,"
			  " size_bytes = split_part($5, ':', 4)::int"
			  " FROM secrets.secrets s WHERE s.id = v.secret_id AND s.app = $1 AND"
			  " s.env = $2 AND s.name = $3 AND v.version = $4::int",
			  5, p);
	assert_string_equal(PQcmdTuples(r), "1");
	PQclear(r);
}

static void test_copied_rows_do_not_decrypt(void **state)
{
	(void)state;
	char err[512];
	uint32_t v;
	const char *va = new_value("aad-a"), *vb = new_value("aad-b"), *va2 = new_value("aad-a2"),
		   *vs = new_value("aad-staging");
	assert_int_equal(put(admin, app, "prod", "AAD_A", va, &v, err), 0);
	assert_int_equal(put(admin, app, "prod", "AAD_A", va2, &v, err), 0);
	assert_int_equal(put(admin, app, "prod", "AAD_B", vb, &v, err), 0);
	assert_int_equal(put(admin, app, "staging", "AAD_A", vs, &v, err), 0);
	int64_t exp = now_ms() + 600000;
	struct ref rb[] = { { "AAD_B", NULL, NULL, 1 } };
	struct ref ra2[] = { { "AAD_A", NULL, NULL, 2 } };
	struct ref rs[] = { { "AAD_A", app, "staging", 1 } };
	assert_int_equal(grant(orch, "dep-aad-b", agent1_id, a1_pk, app, "prod", rb, 1, exp, err), 0);
	assert_int_equal(grant(orch, "dep-aad-a2", agent1_id, a1_pk, app, "prod", ra2, 1, exp, err),
			 0);
	assert_int_equal(grant(orch, "dep-aad-s", agent1_id, a1_pk, app, "staging", rs, 1, exp, err),
			 0);
	expect_fetch("dep-aad-b", "AAD_B", 1, vb);
	char *bk_b = row_backup("prod", "AAD_B", "1"), *bk_a2 = row_backup("prod", "AAD_A", "2"),
	     *bk_s = row_backup("staging", "AAD_A", "1");

	/* Another name: A's row copied under B. */
	copy_row("prod", "AAD_A", "1", "prod", "AAD_B", "1", 0);
	assert_int_equal(fetch(agent1, "dep-aad-b", NULL, NULL, err), SW_EDATALOSS);
	/* Only the value ciphertext moved (B keeps its own wrapped key). */
	row_restore("prod", "AAD_B", "1", bk_b);
	copy_row("prod", "AAD_A", "1", "prod", "AAD_B", "1", 1);
	assert_int_equal(fetch(agent1, "dep-aad-b", NULL, NULL, err), SW_EDATALOSS);
	/* Another version of the same secret. */
	copy_row("prod", "AAD_A", "1", "prod", "AAD_A", "2", 0);
	assert_int_equal(fetch(agent1, "dep-aad-a2", NULL, NULL, err), SW_EDATALOSS);
	/* Another scope (same name, same version). */
	copy_row("prod", "AAD_A", "1", "staging", "AAD_A", "1", 0);
	assert_int_equal(fetch(agent1, "dep-aad-s", NULL, NULL, err), SW_EDATALOSS);
	/* Restored, every one of them decrypts again: the failures were the
	 * binding, not a broken setup. */
	row_restore("prod", "AAD_B", "1", bk_b);
	row_restore("prod", "AAD_A", "2", bk_a2);
	row_restore("staging", "AAD_A", "1", bk_s);
	expect_fetch("dep-aad-b", "AAD_B", 1, vb);
	expect_fetch("dep-aad-a2", "AAD_A", 2, va2);
	expect_fetch("dep-aad-s", "AAD_A", 1, vs);

	/* Relabelled with another master key version: that key is not held. */
	PGresult *r = sql("INSERT INTO secrets.master_keys (version, kcv) VALUES (999, '\\x00')"
			  " ON CONFLICT DO NOTHING",
			  0, NULL);
	PQclear(r);
	const char *p[1] = { app };
	r = sql("UPDATE secrets.versions v SET master_version = 999 FROM secrets.secrets s"
		" WHERE s.id = v.secret_id AND s.app = $1 AND s.env = 'staging' AND s.name = 'AAD_A'",
		1, p);
	PQclear(r);
	assert_int_equal(fetch(agent1, "dep-aad-s", NULL, NULL, err), SW_EPRECOND);
	/* A row that does not unwrap stops a master key rotation before it
	 * changes anything. */
	int64_t mk_before = sql_int("SELECT max(version) FROM secrets.master_keys WHERE version < 999",
				    0, NULL);
	Slipway__V1__RotateMasterRequest rreq = SLIPWAY__V1__ROTATE_MASTER_REQUEST__INIT;
	assert_int_equal(call(admin, "RotateMaster", &rreq.base, NULL, err), SW_EPRECOND);
	row_restore("staging", "AAD_A", "1", bk_s);
	r = sql("DELETE FROM secrets.master_keys WHERE version = 999", 0, NULL);
	PQclear(r);
	copy_row("prod", "AAD_A", "1", "prod", "AAD_A", "2", 0);
	assert_int_equal(call(admin, "RotateMaster", &rreq.base, NULL, err), SW_EDATALOSS);
	assert_non_null(strstr(err, "nothing was changed"));
	assert_int_equal(sql_int("SELECT max(version) FROM secrets.master_keys", 0, NULL), mk_before);
	row_restore("prod", "AAD_A", "2", bk_a2);
	expect_fetch("dep-aad-a2", "AAD_A", 2, va2);
	expect_fetch("dep-aad-s", "AAD_A", 1, vs);
	free(bk_b);
	free(bk_a2);
	free(bk_s);
}

static int keyring_keys(void)
{
	char path[700];
	snprintf(path, sizeof path, "%s/state/secrets/master.keyring", stack);
	return h_grep_count(path, "key ");
}

static void test_master_rotation_and_retirement(void **state)
{
	(void)state;
	char err[512];
	uint32_t v;
	const char *val = g_rot = new_value("rot");
	assert_int_equal(put(admin, app, "prod", "ROT", val, &v, err), 0);
	struct ref refs[] = { { "ROT", NULL, NULL, 0 } };
	assert_int_equal(grant(orch, "dep-rot", agent1_id, a1_pk, app, "prod", refs, 1,
			       now_ms() + 600000, err),
			 0);
	int64_t live = sql_int("SELECT count(*) FROM secrets.versions WHERE state <> 3", 0, NULL);
	char *ct_before = sql_text("SELECT md5(string_agg(encode(ciphertext, 'hex'), ',' ORDER BY"
				   " secret_id, version)) FROM secrets.versions WHERE state <> 3",
				   0, NULL);
	char *wk_before = sql_text("SELECT md5(string_agg(encode(wrapped_key, 'hex'), ',' ORDER BY"
				   " secret_id, version)) FROM secrets.versions WHERE state <> 3",
				   0, NULL);
	int keys_before = keyring_keys();

	/* Rotate: a new version, every live data key rewrapped, values untouched. */
	Slipway__V1__RotateMasterRequest req = SLIPWAY__V1__ROTATE_MASTER_REQUEST__INIT;
	ProtobufCMessage *m = NULL;
	assert_int_equal(call(admin, "RotateMaster", &req.base, &m, err), 0);
	Slipway__V1__RotateMasterResponse *r = (void *)m;
	uint32_t newv = r->new_master_version;
	assert_int_equal(r->rewrapped, (uint64_t)live);
	protobuf_c_message_free_unpacked(m, NULL);
	char nb[24];
	snprintf(nb, sizeof nb, "%u", newv);
	const char *p[1] = { nb };
	assert_int_equal(sql_int("SELECT count(*) FROM secrets.versions WHERE state <> 3 AND"
				 " master_version <> $1::int",
				 1, p),
			 0);
	char *ct_after = sql_text("SELECT md5(string_agg(encode(ciphertext, 'hex'), ',' ORDER BY"
				  " secret_id, version)) FROM secrets.versions WHERE state <> 3",
				  0, NULL);
	char *wk_after = sql_text("SELECT md5(string_agg(encode(wrapped_key, 'hex'), ',' ORDER BY"
				  " secret_id, version)) FROM secrets.versions WHERE state <> 3",
				  0, NULL);
	assert_string_equal(ct_before, ct_after);
	assert_string_not_equal(wk_before, wk_after);
	assert_int_equal(keyring_keys(), keys_before + 1);
	expect_fetch("dep-rot", "ROT", 1, val);

	/* One rotation at a time across replicas (an advisory lock). */
	PGresult *lr = sql("SELECT pg_advisory_lock(7305729742)", 0, NULL);
	PQclear(lr);
	assert_int_equal(call(admin, "RotateMaster", &req.base, NULL, err), SW_EABORTED);
	assert_non_null(strstr(err, "another master key rotation"));
	lr = sql("SELECT pg_advisory_unlock(7305729742)", 0, NULL);
	PQclear(lr);
	/* Another replica sharing the keyring file rotated meanwhile (its key
	 * is in the file and the database, not in this process): the next
	 * rotation keeps that key and takes the version after it. */
	char ring[700], line[200], hex[65];
	uint8_t other[32], kcv[16];
	snprintf(ring, sizeof ring, "%s/state/secrets/master.keyring", stack);
	randombytes_buf(other, sizeof other);
	sodium_bin2hex(hex, sizeof hex, other, sizeof other);
	crypto_generichash(kcv, sizeof kcv, (const uint8_t *)"slipway master key check v1", 27, other,
			   sizeof other);
	FILE *f = fopen(ring, "a");
	assert_non_null(f);
	snprintf(line, sizeof line, "key %u %s\n", newv + 1, hex);
	fputs(line, f);
	fclose(f);
	char vb[24], kh[40];
	sodium_bin2hex(kh, sizeof kh, kcv, sizeof kcv);
	snprintf(vb, sizeof vb, "%u", newv + 1);
	const char *kp[2] = { vb, kh };
	lr = sql("INSERT INTO secrets.master_keys (version, kcv) VALUES ($1::int, decode($2, 'hex'))",
		 2, kp);
	PQclear(lr);
	req.retire_old = 0;
	assert_int_equal(call(admin, "RotateMaster", &req.base, &m, err), 0);
	r = (void *)m;
	assert_int_equal(r->new_master_version, newv + 2);
	protobuf_c_message_free_unpacked(m, NULL);
	assert_int_equal(h_grep_count(ring, line), 1);
	assert_int_equal(keyring_keys(), keys_before + 3);
	expect_fetch("dep-rot", "ROT", 1, val);

	/* Rotate again and retire every older key: values still decrypt. */
	req.retire_old = 1;
	assert_int_equal(call(admin, "RotateMaster", &req.base, &m, err), 0);
	r = (void *)m;
	assert_int_equal(r->new_master_version, newv + 3);
	protobuf_c_message_free_unpacked(m, NULL);
	assert_int_equal(keyring_keys(), 1);
	expect_fetch("dep-rot", "ROT", 1, val);
	expect_fetch("dep-1", "G_DB", 2, g_db_v2);
	free(ct_before);
	free(ct_after);
	free(wk_before);
	free(wk_after);
}

/* Reads a whole file (binary safe) into new memory; NULL when missing. */
static uint8_t *slurp(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return NULL;
	size_t cap = 65536, n = 0, r;
	uint8_t *b = malloc(cap);
	while (b != NULL && (r = fread(b + n, 1, cap - n, f)) > 0) {
		n += r;
		if (n == cap) {
			uint8_t *nb = realloc(b, cap *= 2);
			if (nb == NULL)
				free(b);
			b = nb;
		}
	}
	fclose(f);
	*len = n;
	return b;
}

static void test_restart_refuses_wrong_or_exposed_keyring(void **state)
{
	(void)state;
	char ring[700], launcher[700], portfile[700], log[700], cmd[1600], err[512];
	snprintf(ring, sizeof ring, "%s/state/secrets/master.keyring", stack);
	snprintf(launcher, sizeof launcher, "%s/run/secrets.sh", stack);
	snprintf(portfile, sizeof portfile, "%s/run/secrets.port", stack);
	snprintf(log, sizeof log, "%s/restart.log", dir);
	size_t len = 0;
	uint8_t *saved = slurp(ring, &len);
	assert_non_null(saved);
	snprintf(cmd, sizeof cmd, "scripts/stack stop '%s' secrets", stack);
	assert_int_equal(run(cmd), 0);
	char *argv[] = { launcher, NULL };
	struct h_proc p;

	/* Readable by others: refused. */
	chmod(ring, 0640);
	assert_int_equal(h_start(&p, argv, portfile, log), -1);
	assert_true(h_grep_count(log, "chmod 600") > 0);
	chmod(ring, 0600);
	/* Another key under the same version number: refused. */
	char *text = (char *)saved, wrong[512];
	const char *cur = strstr(text, "current ");
	assert_non_null(cur);
	unsigned curv = (unsigned)strtoul(cur + 8, NULL, 10);
	uint8_t k[32];
	char hex[65];
	randombytes_buf(k, sizeof k);
	sodium_bin2hex(hex, sizeof hex, k, sizeof k);
	snprintf(wrong, sizeof wrong, "slipway-keyring v1\ncurrent %u\nkey %u %s\n", curv, curv, hex);
	FILE *f = fopen(ring, "w");
	fputs(wrong, f);
	fclose(f);
	chmod(ring, 0600);
	assert_int_equal(h_start(&p, argv, portfile, log), -1);
	assert_true(h_grep_count(log, "wrong keyring") > 0);
	/* Missing, even with --generate-keys: refused, not silently replaced. */
	unlink(ring);
	assert_int_equal(h_start(&p, argv, portfile, log), -1);
	assert_true(h_grep_count(log, "restore the keyring") > 0);
	assert_int_equal(access(ring, F_OK), -1);

	/* The right keyring: back in service, every value still there. */
	int fd = open(ring, O_WRONLY | O_CREAT | O_EXCL, 0600);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, saved, len), (ssize_t)len);
	close(fd);
	free(saved);
	snprintf(cmd, sizeof cmd, "scripts/stack start '%s' secrets >>'%s' 2>&1", stack, log);
	assert_int_equal(run(cmd), 0);
	expect_fetch("dep-rot", "ROT", 1, g_rot);
	(void)err;
}

static void test_policy_denials(void **state)
{
	(void)state;
	/* mallory is an authenticated user with no role: denied, and audited. */
	char err[512];
	uint32_t v;
	assert_int_equal(put(mallory, app, "prod", "MALLORY", new_value("mallory"), &v, err),
			 SW_EPERM);
	assert_int_equal(versions_of(app, "prod", "MALLORY"), 0);
	assert_int_equal(version_op(mallory, "DisableVersion", app, "prod", "DB_PASSWORD", 1, err),
			 SW_EPERM);
	Slipway__V1__RotateMasterRequest rreq = SLIPWAY__V1__ROTATE_MASTER_REQUEST__INIT;
	assert_int_equal(call(mallory, "RotateMaster", &rreq.base, NULL, err), SW_EPERM);
	Slipway__V1__ListSecretsRequest lreq = SLIPWAY__V1__LIST_SECRETS_REQUEST__INIT;
	Slipway__V1__SecretScope sc = SLIPWAY__V1__SECRET_SCOPE__INIT;
	sc.app = app;
	lreq.scope = &sc;
	assert_int_equal(call(mallory, "ListSecrets", &lreq.base, NULL, err), SW_EPERM);
	/* Without a scope the list is filtered to what the caller may read. */
	ProtobufCMessage *m = NULL;
	lreq.scope = NULL;
	assert_int_equal(call(mallory, "ListSecrets", &lreq.base, &m, err), 0);
	assert_int_equal(((Slipway__V1__ListSecretsResponse *)m)->n_secrets, 0);
	protobuf_c_message_free_unpacked(m, NULL);
	assert_int_equal(call(admin, "ListSecrets", &lreq.base, &m, err), 0);
	assert_true(((Slipway__V1__ListSecretsResponse *)m)->n_secrets > 0);
	protobuf_c_message_free_unpacked(m, NULL);
}

/* ---------------------------------------------------------------- the audit trail */

struct ev {
	char action[64], resource[320], actor[256];
	int outcome;
	char *details; /* "k=v\n"... */
};

static struct ev *evs;
static size_t nevs;
static char *all_events; /* every field of every event, for the value search */
static size_t all_len;

static void add_event(const Slipway__V1__AuditEvent *e)
{
	if (strcmp(e->service, "secrets") != 0)
		return;
	evs = realloc(evs, (nevs + 1) * sizeof *evs);
	struct ev *x = &evs[nevs++];
	snprintf(x->action, sizeof x->action, "%s", e->action);
	snprintf(x->resource, sizeof x->resource, "%s", e->resource);
	snprintf(x->actor, sizeof x->actor, "%s", e->actor);
	x->outcome = e->outcome;
	size_t cap = 64;
	for (size_t i = 0; i < e->n_details; i++)
		cap += strlen(e->details[i]->key) + strlen(e->details[i]->value) + 2;
	x->details = malloc(cap);
	size_t off = 1;
	x->details[0] = '\n'; /* every "k=v" sits between newlines */
	x->details[1] = '\0';
	for (size_t i = 0; i < e->n_details; i++)
		off += (size_t)snprintf(x->details + off, cap - off, "%s=%s\n", e->details[i]->key,
					e->details[i]->value);
	size_t need = off + strlen(e->action) + strlen(e->resource) + strlen(e->actor) + 8;
	all_events = realloc(all_events, all_len + need + 1);
	all_len += (size_t)snprintf(all_events + all_len, need + 1, "%s %s %s\n%s", e->actor,
				    e->action, e->resource, x->details);
}

/* Every event the service produced: from the audit log when the stack has
 * an audit service (after the relay emptied the outbox), else from the
 * outbox itself. */
static void collect_events(void)
{
	if (evs != NULL)
		return;
	const char *audit = getenv("SLIPWAY_AUDIT_ADDR");
	if (audit != NULL && audit[0] != '\0') {
		for (int i = 0; i < 300 && sql_int("SELECT count(*) FROM secrets.outbox", 0, NULL) > 0;
		     i++)
			h_sleep_ms(100);
		assert_int_equal(sql_int("SELECT count(*) FROM secrets.outbox", 0, NULL), 0);
		struct rpc_client *c = h_client(audit, ca, h_env("SLIPWAY_CERT"), h_env("SLIPWAY_KEY"));
		struct rpc_stream *s = NULL;
		struct rpc_call_opts o = { .timeout_ms = 60000 };
		char err[512];
		Slipway__V1__ExportEntriesRequest req = SLIPWAY__V1__EXPORT_ENTRIES_REQUEST__INIT;
		Slipway__V1__EntryFilter f = SLIPWAY__V1__ENTRY_FILTER__INIT;
		f.service = "secrets";
		req.filter = &f;
		assert_int_equal(rpc_stream_open(c, &slipway__v1__audit__descriptor, "ExportEntries", &o,
						 &s, err, sizeof err),
				 0);
		assert_int_equal(rpc_stream_send(s, &req.base), 0);
		assert_int_equal(rpc_stream_close_send(s), 0);
		ProtobufCMessage *m = NULL;
		int got;
		while ((got = rpc_stream_recv(s, &m)) == 1) {
			const Slipway__V1__ExportEntriesResponse *page = (void *)m;
			for (size_t i = 0; i < page->n_entries; i++)
				if (page->entries[i]->event != NULL)
					add_event(page->entries[i]->event);
			protobuf_c_message_free_unpacked(m, NULL);
		}
		assert_int_equal(got, 0);
		int rc = rpc_stream_finish(s, err, sizeof err);
		if (rc != 0)
			fail_msg("audit export: %s", err);
		rpc_client_free(c);
	} else {
		PGresult *r = PQexecParams(pg, "SELECT event FROM secrets.outbox ORDER BY id", 0, NULL,
					   NULL, NULL, NULL, 1);
		assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
		for (int i = 0; i < PQntuples(r); i++) {
			Slipway__V1__AuditEvent *e = slipway__v1__audit_event__unpack(
				NULL, (size_t)PQgetlength(r, i, 0), (const uint8_t *)PQgetvalue(r, i, 0));
			assert_non_null(e);
			add_event(e);
			slipway__v1__audit_event__free_unpacked(e, NULL);
		}
		PQclear(r);
	}
	assert_true(nevs > 0);
}

/* Counts events with this action and outcome whose resource contains res
 * and whose details contain every "k=v" given (NULL-terminated). */
static int count_events(const char *action, int outcome, const char *actor, const char *res, ...)
{
	int n = 0;
	for (size_t i = 0; i < nevs; i++) {
		const struct ev *x = &evs[i];
		if (strcmp(x->action, action) != 0 || x->outcome != outcome ||
		    (actor && strcmp(x->actor, actor) != 0) || (res && !strstr(x->resource, res)))
			continue;
		va_list ap;
		va_start(ap, res);
		const char *kv;
		int ok = 1;
		while ((kv = va_arg(ap, const char *)) != NULL) {
			/* "k=v\n" matches a whole detail; other text matches anywhere */
			char needle[512];
			size_t kl = strlen(kv);
			if (kl > 0 && kv[kl - 1] == '\n')
				snprintf(needle, sizeof needle, "\n%s", kv);
			else
				snprintf(needle, sizeof needle, "%s", kv);
			if (strstr(x->details, needle) == NULL)
				ok = 0;
		}
		va_end(ap);
		n += ok;
	}
	return n;
}

#define OK_ SLIPWAY__V1__OUTCOME__OUTCOME_SUCCESS
#define FAIL_ SLIPWAY__V1__OUTCOME__OUTCOME_FAILURE
#define DENY_ SLIPWAY__V1__OUTCOME__OUTCOME_DENIED

static void test_audit_trail(void **state)
{
	(void)state;
	collect_events();
	char admin_id[256], res[320], dep[64];
	snprintf(admin_id, sizeof admin_id, "spiffe://%s/user/admin", td);
	snprintf(res, sizeof res, "secret/%s/prod/DB_PASSWORD", app);
	/* Changes, with actor, names and versions. */
	assert_int_equal(count_events("secret.put", OK_, admin_id, res, "version=1\n",
				      "name=DB_PASSWORD\n", "environment=prod\n", NULL),
			 1);
	assert_int_equal(count_events("secret.put", OK_, admin_id, res, "version=3\n",
				      "current=false\n", NULL),
			 1);
	snprintf(res, sizeof res, "secret/%s/prod/LIFE", app);
	assert_int_equal(count_events("secret.disable", OK_, admin_id, res, "version=1\n", NULL), 1);
	assert_int_equal(count_events("secret.enable", OK_, admin_id, res, "version=1\n", NULL), 1);
	assert_int_equal(count_events("secret.set_current", OK_, admin_id, res, "version=1\n",
				      "previous_current=2\n", NULL),
			 1);
	assert_int_equal(count_events("secret.destroy", OK_, admin_id, res, "version=2\n", NULL), 1);
	assert_int_equal(count_events("secret.rotate_master", OK_, admin_id, NULL, NULL), 3);
	assert_true(count_events("secret.rotate_master", FAIL_, admin_id, NULL,
				 "another master key rotation", NULL) >= 1);
	assert_true(count_events("secret.rotate_master", OK_, admin_id, NULL, "retired_versions=",
				 NULL) >= 1);
	/* Grants and fetches, with deployment, agent and the pinned versions. */
	char agent_kv[300], orch_kv[300];
	snprintf(agent_kv, sizeof agent_kv, "agent=%s\n", agent1_id);
	snprintf(orch_kv, sizeof orch_kv, "agent=%s\n", agent2_id);
	assert_int_equal(count_events("secret.grant", OK_, orch_id, "secret-grant/dep-1",
				      "deployment=dep-1\n", agent_kv, "secrets=G_DB@1 TOKEN@1\n", NULL),
			 1);
	assert_true(count_events("secret.fetch", OK_, agent1_id, "secret-grant/dep-1",
				 "deployment=dep-1\n", agent_kv, "secrets=G_DB@1 TOKEN@1\n", NULL) >= 3);
	/* Failures and denials, each with its reason. */
	assert_true(count_events("secret.put", FAIL_, admin_id, NULL, "check-and-set", NULL) >= 2);
	assert_true(count_events("secret.put", FAIL_, admin_id, NULL, "does not open", NULL) >= 2);
	assert_true(count_events("secret.put", FAIL_, admin_id, NULL, "limit", "name=BIG\n", NULL) >=
		    1);
	assert_int_equal(count_events("secret.fetch", DENY_, agent2_id, "secret-grant/dep-1", orch_kv,
				      "reason=grant belongs to another agent\n", NULL),
			 1);
	assert_true(count_events("secret.fetch", DENY_, agent1_id, "secret-grant/dep-unknown",
				 "reason=no grant for the deployment\n", NULL) >= 1);
	assert_true(count_events("secret.fetch", FAIL_, agent1_id, "secret-grant/dep-exp",
				 "reason=grant expired\n", NULL) >= 1);
	assert_true(count_events("secret.fetch", FAIL_, agent1_id, "secret-grant/dep-1",
				 "reason=version disabled\n", "secret=G_DB@1\n", NULL) >= 1);
	assert_true(count_events("secret.fetch", FAIL_, agent1_id, "secret-grant/dep-aad-b",
				 "reason=stored value does not authenticate\n", "secret=AAD_B@1\n",
				 NULL) >= 2);
	assert_int_equal(count_events("secret.grant", OK_, orch_id, "secret-grant/dep-many",
				      "count=30\n", "more)", NULL),
			 1);
	assert_int_equal(count_events("secret.fetch", OK_, agent1_id, "secret-grant/dep-many",
				      "count=30\n", "more)", NULL),
			 1);
	assert_true(count_events("secret.fetch", DENY_, admin_id, "secret-grant/dep-1",
				 "only agents", NULL) >= 1);
	assert_true(count_events("secret.grant", DENY_, agent1_id, "secret-grant/dep-1",
				 "only spiffe://", NULL) >= 1);
	assert_true(count_events("secret.grant", DENY_, orch_id, "secret-grant/dep-v",
				 "wrong scope", "name=THEIRS\n", NULL) >= 1);
	assert_true(count_events("secret.grant", FAIL_, orch_id, "secret-grant/dep-v",
				 "status=NOT_FOUND\n", "no secret NOPE", NULL) >= 1);
	assert_true(count_events("secret.rotate_master", FAIL_, admin_id, NULL, "nothing was changed",
				 NULL) >= 1);
	snprintf(res, sizeof res, "spiffe://%s/user/mallory", td);
	assert_true(count_events("secret.put", DENY_, res, NULL, "permission=write\n", NULL) >= 1);
	assert_true(count_events("secret.rotate_master", DENY_, res, NULL, NULL) >= 1);
	snprintf(dep, sizeof dep, "dep-1");
	(void)dep;
}

/* ---------------------------------------------------------------- never in logs */

static int b64(const char *in, char *out, size_t cap)
{
	return sodium_bin2base64(out, cap, (const uint8_t *)in, strlen(in),
				 sodium_base64_VARIANT_ORIGINAL) != NULL;
}

/* Returns the first form of a test value found in buf[len], or NULL. */
static const char *find_value(const uint8_t *buf, size_t len)
{
	static char form[256];
	for (int k = 0; k < nvalues; k++) {
		const char *v = values[k];
		if (memmem(buf, len, v, strlen(v)) != NULL)
			return v;
		sodium_bin2hex(form, sizeof form, (const uint8_t *)v, strlen(v));
		if (memmem(buf, len, form, strlen(form)) != NULL)
			return form;
		if (b64(v, form, sizeof form) && memmem(buf, len, form, strlen(form) - 2) != NULL)
			return form;
	}
	return NULL;
}

static int search_dir(const char *d, int only_logs, int quiet, int *files)
{
	DIR *dp = opendir(d);
	int bad = 0;
	if (dp == NULL)
		return 0;
	struct dirent *de;
	while ((de = readdir(dp)) != NULL) {
		char p[1200];
		struct stat st;
		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof p, "%s/%s", d, de->d_name);
		if (lstat(p, &st) != 0 || !S_ISREG(st.st_mode))
			continue;
		size_t nl = strlen(de->d_name);
		if (only_logs && (nl < 4 || strcmp(de->d_name + nl - 4, ".log") != 0))
			continue;
		size_t len = 0;
		uint8_t *b = slurp(p, &len);
		const char *hit = b ? find_value(b, len) : NULL;
		if (hit != NULL) {
			if (!quiet)
				print_error("a secret value (%s) appears in %s\n", hit, p);
			bad++;
		}
		(*files)++;
		free(b);
	}
	closedir(dp);
	return bad;
}

static void test_values_never_in_logs_audit_or_database(void **state)
{
	(void)state;
	char p[1200], cmd[2400];
	int files = 0, bad = 0;
	assert_true(nvalues >= 20);
	/* The search can fail: a planted value is found. */
	snprintf(p, sizeof p, "%s/control", dir);
	mkdir(p, 0700);
	snprintf(p, sizeof p, "%s/control/planted.log", dir);
	FILE *f = fopen(p, "w");
	char hex[256];
	sodium_bin2hex(hex, sizeof hex, (const uint8_t *)values[3], strlen(values[3]));
	fprintf(f, "ts=... msg=oops value=%s\n", hex);
	fclose(f);
	snprintf(p, sizeof p, "%s/control", dir);
	int cfiles = 0;
	assert_int_equal(search_dir(p, 1, 1, &cfiles), 1);
	snprintf(p, sizeof p, "%s/control/planted.log", dir);
	unlink(p);
	snprintf(p, sizeof p, "%s/control", dir);
	rmdir(p);

	/* Every log of the stack, PostgreSQL's own, and this test's. */
	snprintf(p, sizeof p, "%s/logs", stack);
	bad += search_dir(p, 0, 0, &files);
	snprintf(p, sizeof p, "%s/pg", stack);
	bad += search_dir(p, 1, 0, &files);
	bad += search_dir(dir, 1, 0, &files);
	assert_true(files >= 4);
	/* The whole audit trail of the service (every field of every event). */
	collect_events();
	const char *hit = find_value((const uint8_t *)all_events, all_len);
	if (hit != NULL) {
		print_error("a secret value (%s) appears in the audit trail\n", hit);
		bad++;
	}
	/* The database: a dump of the service's schema holds ciphertexts only. */
	snprintf(p, sizeof p, "%s/secrets-schema.dump", dir);
	snprintf(cmd, sizeof cmd,
		 "/usr/lib/postgresql/15/bin/pg_dump --data-only --schema=secrets '%s' > '%s'",
		 h_env("SLIPWAY_PGURL"), p);
	assert_int_equal(run(cmd), 0);
	size_t len = 0;
	uint8_t *dump = slurp(p, &len);
	assert_non_null(dump);
	assert_true(len > 1000);
	hit = find_value(dump, len);
	if (hit != NULL) {
		print_error("a secret value (%s) appears in the database\n", hit);
		bad++;
	}
	free(dump);
	unlink(p);
	assert_int_equal(bad, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_service_keys),
		cmocka_unit_test(test_put_sealed_cas_and_caps),
		cmocka_unit_test(test_cli_put_reads_stdin_and_file),
		cmocka_unit_test(test_encrypted_at_rest),
		cmocka_unit_test(test_lifecycle),
		cmocka_unit_test(test_concurrent_check_and_set),
		cmocka_unit_test(test_grant_and_fetch),
		cmocka_unit_test(test_fetch_after_database_connections_are_lost),
		cmocka_unit_test(test_fetch_answered_only_after_its_event_commits),
		cmocka_unit_test(test_grant_validation),
		cmocka_unit_test(test_grant_request_id_is_idempotent),
		cmocka_unit_test(test_grant_of_many_secrets),
		cmocka_unit_test(test_grant_expires),
		cmocka_unit_test(test_copied_rows_do_not_decrypt),
		cmocka_unit_test(test_master_rotation_and_retirement),
		cmocka_unit_test(test_restart_refuses_wrong_or_exposed_keyring),
		cmocka_unit_test(test_policy_denials),
		cmocka_unit_test(test_audit_trail),
		cmocka_unit_test(test_values_never_in_logs_audit_or_database),
	};
	const char *filter = getenv("IT_FILTER");
	if (filter != NULL)
		cmocka_set_test_filter(filter);
	rpc_init();
	int rc = cmocka_run_group_tests_name("it_secrets", tests, group_setup, group_teardown);
	rpc_shutdown();
	return rc;
}
