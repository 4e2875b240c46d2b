/*
 * it_artifact.c - integration tests of the artifact service over the real
 * stack: real PostgreSQL, real s3rver, real mTLS, the real binary.
 *
 * Most tests talk to the stack's artifact service. Those that need other
 * flags (a small --max-blob, trusted builder keys, a short S3 stall bound,
 * a PostgreSQL socket the test can take away) start a second instance of
 * the same binary on the same database and bucket, as a replica would run.
 * The test inspects and tampers with state directly: PostgreSQL through
 * SLIPWAY_PGURL (superuser), S3 through lib/s3 with the stack's keys.
 */
#include "digest.h"
#include "provenance.h"
#include "err.h"
#include "harness.h"
#include "pki.h"
#include "rpc.h"
#include "s3.h"

#include "grpc/health/v1/health.pb-c.h"
#include "slipway/v1/artifact.pb-c.h"
#include "slipway/v1/audit.pb-c.h"

#include <dirent.h>
#include <errno.h>
#include <libpq-fe.h>
#include <setjmp.h>
#include <signal.h>
#include <sodium.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

static char dir[512], pki[512], td[128], ca[1024], admin_crt[1024], admin_key[1024],
	svc_crt[1024], svc_key[1024], nobody_crt[1024], nobody_key[1024], keys_file[1024],
	pgsock[1024], spool2[1024], art2_log[1024];
static struct h_proc art2;
static char art2_addr[64];
static struct rpc_client *adm, *adm2, *aud;
static struct s3 *s3;
static PGconn *pg;
static unsigned char sig_sk[crypto_sign_SECRETKEYBYTES], rogue_sk[crypto_sign_SECRETKEYBYTES];

static const ProtobufCServiceDescriptor *A = &slipway__v1__artifact__descriptor;

/* ---- helpers ---- */

static uint8_t *random_bytes(size_t n)
{
	uint8_t *b = malloc(n ? n : 1);
	assert_non_null(b);
	randombytes_buf(b, n);
	return b;
}

static void sha_of(const uint8_t *b, size_t n, char out[DIGEST_STR_LEN])
{
	struct digest d;
	uint8_t sha[32];
	digest_init(&d, DIGEST_SHA256);
	digest_update(&d, b, n);
	digest_final(&d, sha);
	digest_cleanup(&d);
	digest_format(sha, out);
}

/* Runs SQL as the superuser; returns the first value of the first row
 * (static storage) or "" when none. */
static const char *sql1(const char *q, const char *p1)
{
	static char out[1024];
	const char *vals[1] = { p1 };
	PGresult *r = PQexecParams(pg, q, p1 ? 1 : 0, NULL, p1 ? vals : NULL, NULL, NULL, 0);
	ExecStatusType st = PQresultStatus(r);
	if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
		fail_msg("SQL failed: %s: %s", q, PQresultErrorMessage(r));
	out[0] = '\0';
	if (st == PGRES_TUPLES_OK && PQntuples(r) > 0 && !PQgetisnull(r, 0, 0))
		snprintf(out, sizeof out, "%s", PQgetvalue(r, 0, 0));
	PQclear(r);
	return out;
}

static long sql_count(const char *q, const char *p1)
{
	return strtol(sql1(q, p1), NULL, 10);
}

/* The state of a digest's blob row ("" when there is none). */
static const char *blob_state(const char *digest)
{
	return sql1("SELECT state FROM artifact.blobs WHERE digest = $1", digest);
}

/* Audit log entries from the artifact service with this action ("" =
 * any) under this resource prefix whose actor or one of whose detail values
 * equals value (NULL = any). */
static long audit_count(const char *action, const char *prefix, const char *value)
{
	long n = 0;
	char token[256] = "", err[512];
	for (int page = 0; page < 1000; page++) {
		Slipway__V1__EntryFilter f = SLIPWAY__V1__ENTRY_FILTER__INIT;
		f.service = "artifact";
		f.action = (char *)action;
		f.resource_prefix = (char *)prefix;
		Slipway__V1__ListEntriesRequest q = SLIPWAY__V1__LIST_ENTRIES_REQUEST__INIT;
		q.filter = &f;
		q.page_size = 500;
		q.page_token = token;
		ProtobufCMessage *m = NULL;
		struct rpc_call_opts co = { .timeout_ms = 30000 };
		if (rpc_call(aud, &slipway__v1__audit__descriptor, "ListEntries", &q.base, &m, &co, err,
			     sizeof err) != 0)
			fail_msg("audit ListEntries: %s", err);
		Slipway__V1__ListEntriesResponse *r = (void *)m;
		for (size_t i = 0; i < r->n_entries; i++) {
			const Slipway__V1__AuditEvent *e = r->entries[i]->event;
			int match = value == NULL || strcmp(e->actor, value) == 0;
			for (size_t k = 0; !match && k < e->n_details; k++)
				match = strcmp(e->details[k]->value, value) == 0;
			n += match;
		}
		snprintf(token, sizeof token, "%s", r->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
		if (token[0] == '\0')
			break;
	}
	return n;
}

/* Events reach the log through the outbox relay: waits (up to 20 s) until
 * at least `want` such entries are there, and returns how many there are. */
static long audit_wait(const char *action, const char *prefix, const char *value, long want)
{
	long n = 0;
	for (int i = 0; i < 200; i++) {
		if ((n = audit_count(action, prefix, value)) >= want)
			break;
		h_sleep_ms(100);
	}
	return n;
}

/* Events about a resource prefix anywhere: in the log or still waiting in
 * an outbox. */
static long audit_any(const char *prefix)
{
	return audit_count("", prefix, NULL) +
	       sql_count("SELECT count(*) FROM artifact.outbox"
			 " WHERE position(convert_to($1, 'UTF8') in event) > 0",
			 prefix);
}

struct push_opts {
	int no_digest;           /* do not announce the digest (spool mode) */
	const char *digest;      /* announce this digest instead of the real one */
	int64_t size_hint;       /* -1: the real size (default 0 means real too) */
	int no_hint;
	size_t chunk;            /* bytes per message; 0 = 256 KiB */
	const unsigned char *sk; /* sign a provenance statement of the announced digest */
	int digest_only;         /* sign the digest string alone (no longer accepted) */
	const char *header_ref;  /* the header claims this ref instead of the signed one */
	const char *key_name;
	const char *commit;
	size_t cancel_after;     /* cancel the call after this many bytes (0 = never) */
	int hold_ms;             /* pause after the first chunk (a push in progress) */
	void (*while_held)(void);
};

/* Pushes data as app@version. Returns the SW_E* code; *resp (may be NULL)
 * gets the response; err the message. */
static int push(struct rpc_client *c, const char *app, const char *version, const uint8_t *data,
		size_t len, const struct push_opts *po, Slipway__V1__PushResponse **resp, char *err,
		size_t errlen)
{
	static const struct push_opts none;
	if (po == NULL)
		po = &none;
	char digest[DIGEST_STR_LEN];
	sha_of(data, len, digest);
	struct rpc_stream *st = NULL;
	struct rpc_call_opts co = { .timeout_ms = 120000 };
	if (resp != NULL)
		*resp = NULL;
	int rc = rpc_stream_open(c, A, "Push", &co, &st, err, errlen);
	assert_int_equal(rc, 0);
	Slipway__V1__Provenance pv = SLIPWAY__V1__PROVENANCE__INIT;
	pv.commit = (char *)(po->commit ? po->commit : "0123abc");
	pv.repository = "https://git.example.com/it/artifact";
	pv.ref = "refs/heads/main";
	pv.builder = "it_artifact";
	uint8_t sig[64];
	char stext[PROV_STATEMENT_MAX];
	const char *announced = po->digest ? po->digest : digest;
	if (po->sk != NULL && po->digest_only) {
		crypto_sign_detached(sig, NULL, (const unsigned char *)announced, strlen(announced),
				     po->sk);
	} else if (po->sk != NULL) {
		struct prov_statement ps;
		size_t slen = 0;
		char why[256];
		memset(&ps, 0, sizeof ps);
		snprintf(ps.app, sizeof ps.app, "%s", app);
		snprintf(ps.version, sizeof ps.version, "%s", version);
		snprintf(ps.digest, sizeof ps.digest, "%s", announced);
		snprintf(ps.repository, sizeof ps.repository, "%s", pv.repository);
		snprintf(ps.commit, sizeof ps.commit, "%s", pv.commit);
		snprintf(ps.ref, sizeof ps.ref, "%s", pv.ref);
		snprintf(ps.builder, sizeof ps.builder, "%s", pv.builder);
		assert_int_equal(prov_encode(&ps, stext, sizeof stext, &slen, why, sizeof why), 0);
		crypto_sign_detached(sig, NULL, (const unsigned char *)stext, slen, po->sk);
		pv.statement.data = (uint8_t *)stext;
		pv.statement.len = slen;
		if (po->header_ref != NULL)
			pv.ref = (char *)po->header_ref;
	}
	if (po->sk != NULL) {
		pv.signature.data = sig;
		pv.signature.len = 64;
		pv.signing_key = (char *)(po->key_name ? po->key_name : "");
	}
	Slipway__V1__PushHeader h = SLIPWAY__V1__PUSH_HEADER__INIT;
	h.app = (char *)app;
	h.version = (char *)version;
	h.provenance = &pv;
	h.expected_digest = po->no_digest ? "" : (char *)announced;
	h.size_hint = po->no_hint || po->no_digest ? 0
		      : po->size_hint > 0	  ? (uint64_t)po->size_hint
						  : len;
	Slipway__V1__PushRequest m = SLIPWAY__V1__PUSH_REQUEST__INIT;
	m.msg_case = SLIPWAY__V1__PUSH_REQUEST__MSG_HEADER;
	m.header = &h;
	int ok = rpc_stream_send(st, &m.base) == 0;
	size_t chunk = po->chunk ? po->chunk : 256 * 1024, off = 0;
	int first = 1;
	while (ok && off < len) {
		size_t n = len - off < chunk ? len - off : chunk;
		Slipway__V1__PushRequest ch = SLIPWAY__V1__PUSH_REQUEST__INIT;
		ch.msg_case = SLIPWAY__V1__PUSH_REQUEST__MSG_CHUNK;
		ch.chunk.data = (uint8_t *)data + off;
		ch.chunk.len = n;
		ok = rpc_stream_send(st, &ch.base) == 0;
		off += n;
		if (first && po->hold_ms) {
			h_sleep_ms(po->hold_ms);
			if (po->while_held)
				po->while_held();
		}
		first = 0;
		if (po->cancel_after && off >= po->cancel_after) {
			rpc_stream_cancel(st);
			return rpc_stream_finish(st, err, errlen);
		}
	}
	if (ok)
		rpc_stream_close_send(st);
	ProtobufCMessage *r = NULL;
	int got = rpc_stream_recv(st, &r);
	rc = rpc_stream_finish(st, err, errlen);
	if (rc == 0 && got == 1 && resp != NULL)
		*resp = (void *)r;
	else if (r != NULL)
		protobuf_c_message_free_unpacked(r, NULL);
	return rc;
}

static void push_ok(struct rpc_client *c, const char *app, const char *version,
		    const uint8_t *data, size_t len, const struct push_opts *po,
		    Slipway__V1__PushResponse **resp)
{
	char err[512];
	Slipway__V1__PushResponse *r = NULL;
	int rc = push(c, app, version, data, len, po, &r, err, sizeof err);
	if (rc != 0)
		fail_msg("push %s@%s: %s", app, version, err);
	assert_non_null(r);
	char digest[DIGEST_STR_LEN];
	sha_of(data, len, digest);
	assert_string_equal(r->release->digest, digest);
	assert_int_equal(r->release->size_bytes, len);
	if (resp != NULL)
		*resp = r;
	else
		protobuf_c_message_free_unpacked(&r->base, NULL);
}

struct pulled {
	uint8_t *data;
	size_t len;
	int got_info;
	uint64_t size;
	char digest[DIGEST_STR_LEN];
};

/* Pulls a digest or app@version from offset; returns the SW_E* code. */
static int pull(struct rpc_client *c, const char *target, uint64_t offset, struct pulled *out,
		char *err, size_t errlen)
{
	memset(out, 0, sizeof *out);
	struct rpc_stream *st = NULL;
	struct rpc_call_opts co = { .timeout_ms = 120000 };
	assert_int_equal(rpc_stream_open(c, A, "Pull", &co, &st, err, errlen), 0);
	Slipway__V1__PullRequest req = SLIPWAY__V1__PULL_REQUEST__INIT;
	Slipway__V1__ReleaseRef ref = SLIPWAY__V1__RELEASE_REF__INIT;
	char app[64], ver[160];
	if (strncmp(target, "sha256:", 7) == 0) {
		req.target_case = SLIPWAY__V1__PULL_REQUEST__TARGET_DIGEST;
		req.digest = (char *)target;
	} else {
		const char *at = strchr(target, '@');
		snprintf(app, sizeof app, "%.*s", (int)(at - target), target);
		snprintf(ver, sizeof ver, "%s", at + 1);
		ref.app = app;
		ref.version = ver;
		req.target_case = SLIPWAY__V1__PULL_REQUEST__TARGET_RELEASE;
		req.release = &ref;
	}
	req.offset = offset;
	rpc_stream_send(st, &req.base);
	rpc_stream_close_send(st);
	size_t cap = 0;
	for (;;) {
		ProtobufCMessage *m = NULL;
		if (rpc_stream_recv(st, &m) != 1)
			break;
		Slipway__V1__PullResponse *r = (void *)m;
		if (r->msg_case == SLIPWAY__V1__PULL_RESPONSE__MSG_INFO) {
			out->got_info++;
			out->size = r->info->size_bytes;
			snprintf(out->digest, sizeof out->digest, "%s", r->info->digest);
		} else {
			if (out->len + r->chunk.len > cap) {
				cap = (out->len + r->chunk.len) * 2;
				out->data = realloc(out->data, cap);
				assert_non_null(out->data);
			}
			memcpy(out->data + out->len, r->chunk.data, r->chunk.len);
			out->len += r->chunk.len;
		}
		protobuf_c_message_free_unpacked(m, NULL);
	}
	return rpc_stream_finish(st, err, errlen);
}

static void pull_equals(struct rpc_client *c, const char *target, const uint8_t *data,
			size_t len)
{
	struct pulled p;
	char err[512];
	int rc = pull(c, target, 0, &p, err, sizeof err);
	if (rc != 0)
		fail_msg("pull %s: %s", target, err);
	assert_int_equal(p.got_info, 1);
	assert_int_equal(p.size, len);
	assert_int_equal(p.len, len);
	assert_memory_equal(p.data, data, len);
	free(p.data);
}

static int unary(struct rpc_client *c, const char *method, const ProtobufCMessage *req,
		 ProtobufCMessage **resp, char *err, size_t errlen)
{
	ProtobufCMessage *r = NULL;
	struct rpc_call_opts co = { .timeout_ms = 60000 };
	int rc = rpc_call(c, A, method, req, &r, &co, err, errlen);
	if (resp != NULL)
		*resp = r;
	else if (r != NULL)
		protobuf_c_message_free_unpacked(r, NULL);
	return rc;
}

static int resolve(struct rpc_client *c, const char *app, const char *version,
		   Slipway__V1__Release **out, char *err, size_t errlen)
{
	Slipway__V1__ResolveRequest q = SLIPWAY__V1__RESOLVE_REQUEST__INIT;
	q.app = (char *)app;
	q.version = (char *)version;
	ProtobufCMessage *r = NULL;
	int rc = unary(c, "Resolve", &q.base, &r, err, errlen);
	if (out != NULL)
		*out = (void *)r;
	else if (r != NULL)
		protobuf_c_message_free_unpacked(r, NULL);
	return rc;
}

static int set_pins(struct rpc_client *c, const char *app, const char *env, const char *cur,
		    const char *good, char *err, size_t errlen)
{
	Slipway__V1__SetPinsRequest q = SLIPWAY__V1__SET_PINS_REQUEST__INIT;
	q.app = (char *)app;
	q.environment = (char *)env;
	q.current_digest = (char *)cur;
	q.last_good_digest = (char *)good;
	return unary(c, "SetPins", &q.base, NULL, err, errlen);
}

static int gc(struct rpc_client *c, int dry, int64_t retention_ms,
	      Slipway__V1__GarbageCollectResponse **out, char *err, size_t errlen)
{
	Slipway__V1__GarbageCollectRequest q = SLIPWAY__V1__GARBAGE_COLLECT_REQUEST__INIT;
	q.dry_run = dry;
	q.retention_ms = retention_ms;
	ProtobufCMessage *r = NULL;
	int rc = unary(c, "GarbageCollect", &q.base, &r, err, errlen);
	*out = (void *)r;
	return rc;
}

static const Slipway__V1__GcCandidate *find_cand(const Slipway__V1__GarbageCollectResponse *r,
						 const char *digest)
{
	for (size_t i = 0; r && i < r->n_candidates; i++)
		if (strcmp(r->candidates[i]->digest, digest) == 0)
			return r->candidates[i];
	return NULL;
}

static int s3_has(const char *digest)
{
	char key[128], err[256];
	snprintf(key, sizeof key, "blobs/sha256/%s", digest + 7);
	int rc = s3_head(s3, key, NULL, err, sizeof err);
	if (rc != 0 && rc != SW_ENOTFOUND)
		fail_msg("HEAD %s: %s", key, err);
	return rc == 0;
}

/* Open descriptors of pid that point into the directory d. */
static int fds_into(pid_t pid, const char *d)
{
	char p[64], target[1024];
	snprintf(p, sizeof p, "/proc/%d/fd", (int)pid);
	DIR *dd = opendir(p);
	int n = 0;
	struct dirent *e;
	while (dd != NULL && (e = readdir(dd)) != NULL) {
		char fp[320];
		snprintf(fp, sizeof fp, "%s/%s", p, e->d_name);
		ssize_t k = readlink(fp, target, sizeof target - 1);
		if (k <= 0)
			continue;
		target[k] = '\0';
		if (strncmp(target, d, strlen(d)) == 0)
			n++;
	}
	if (dd)
		closedir(dd);
	return n;
}

/* ---- the second instance ---- */

static int start_art2(void)
{
	char pgurl[1400], portfile[700], state[700];
	snprintf(pgurl, sizeof pgurl, "postgresql:///slipway?host=%s&port=5432&user=slipway_artifact",
		 pgsock);
	snprintf(portfile, sizeof portfile, "%s/art2.port", dir);
	snprintf(state, sizeof state, "%s/art2-state", dir);
	const char *bin = getenv("SLIPWAY_ARTIFACT_BIN");
	char *argv[64];
	int n = 0;
	argv[n++] = (char *)(bin ? bin : "build/bin/slipway-artifact");
	argv[n++] = "--listen";
	argv[n++] = "127.0.0.1:0";
	argv[n++] = "--port-file";
	argv[n++] = portfile;
	argv[n++] = "--ca";
	argv[n++] = ca;
	argv[n++] = "--cert";
	argv[n++] = svc_crt;
	argv[n++] = "--key";
	argv[n++] = svc_key;
	argv[n++] = "--pg-url";
	argv[n++] = pgurl;
	argv[n++] = "--s3-host";
	argv[n++] = (char *)h_env("SLIPWAY_S3_HOST");
	argv[n++] = "--s3-bucket";
	argv[n++] = (char *)h_env("SLIPWAY_S3_BUCKET");
	argv[n++] = "--s3-access-key";
	argv[n++] = (char *)h_env("SLIPWAY_S3_ACCESS_KEY");
	/* A secret never goes on a command line (the flag is refused). */
	setenv("SLIPWAY_ARTIFACT_S3_SECRET_KEY", h_env("SLIPWAY_S3_SECRET_KEY"), 1);
	argv[n++] = "--s3-stall";
	argv[n++] = "1500ms";
	argv[n++] = "--state-dir";
	argv[n++] = state;
	argv[n++] = "--trusted-keys";
	argv[n++] = keys_file;
	argv[n++] = "--max-blob";
	argv[n++] = "8MiB";
	argv[n++] = "--stream-buffer";
	argv[n++] = "256KiB";
	argv[n++] = "--log-level";
	argv[n++] = "debug";
	argv[n++] = "--audit-addr";
	argv[n++] = (char *)h_env("SLIPWAY_AUDIT_ADDR");
	argv[n++] = "--policy-addr";
	argv[n++] = (char *)h_env("SLIPWAY_POLICY_ADDR");
	argv[n] = NULL;
	if (h_start(&art2, argv, portfile, art2_log) != 0)
		return -1;
	snprintf(art2_addr, sizeof art2_addr, "127.0.0.1:%d", art2.port);
	snprintf(spool2, sizeof spool2, "%s/spool", state);
	return 0;
}

static int group_setup(void **state)
{
	(void)state;
	char err[256], prefix[700], uri[300];
	if (sodium_init() < 0)
		return -1;
	rpc_init();
	snprintf(dir, sizeof dir, "%s", h_tmpdir("it_artifact"));
	snprintf(pki, sizeof pki, "%s", h_env("SLIPWAY_PKI_DIR"));
	snprintf(ca, sizeof ca, "%s", h_env("SLIPWAY_CA"));
	snprintf(admin_crt, sizeof admin_crt, "%s", h_env("SLIPWAY_CERT"));
	snprintf(admin_key, sizeof admin_key, "%s", h_env("SLIPWAY_KEY"));
	if (pki_trust_domain(pki, td, sizeof td, err, sizeof err) != 0)
		return -1;
	/* The second instance runs as the artifact service. */
	snprintf(prefix, sizeof prefix, "%s/artifact", dir);
	snprintf(uri, sizeof uri, "spiffe://%s/service/artifact", td);
	h_issue(pki, prefix, uri, NULL, 1);
	snprintf(svc_crt, sizeof svc_crt, "%s.crt", prefix);
	snprintf(svc_key, sizeof svc_key, "%s.key", prefix);
	/* A user nobody granted anything. */
	snprintf(prefix, sizeof prefix, "%s/nobody", dir);
	snprintf(uri, sizeof uri, "spiffe://%s/user/nobody", td);
	h_issue(pki, prefix, uri, NULL, 0);
	snprintf(nobody_crt, sizeof nobody_crt, "%s.crt", prefix);
	snprintf(nobody_key, sizeof nobody_key, "%s.key", prefix);

	/* Trusted keys: sig-app requires a signature by "ci-sig". */
	unsigned char pk[crypto_sign_PUBLICKEYBYTES], rpk[crypto_sign_PUBLICKEYBYTES];
	char b64[64];
	crypto_sign_keypair(pk, sig_sk);
	crypto_sign_keypair(rpk, rogue_sk);
	sodium_bin2base64(b64, sizeof b64, pk, sizeof pk, sodium_base64_VARIANT_ORIGINAL);
	snprintf(keys_file, sizeof keys_file, "%s/trusted-keys", dir);
	FILE *f = fopen(keys_file, "w");
	if (f == NULL)
		return -1;
	fprintf(f, "# it_artifact\nkey sig-app ci-sig %s\nrequire sig-app\n", b64);
	fclose(f);

	/* The second instance reaches PostgreSQL through a socket path the test
	 * controls: removing the link takes the database away from it alone. */
	snprintf(pgsock, sizeof pgsock, "%s/pg", dir);
	mkdir(pgsock, 0755);
	char link[1100], real[1100];
	snprintf(link, sizeof link, "%s/.s.PGSQL.5432", pgsock);
	snprintf(real, sizeof real, "%s/pg/.s.PGSQL.5432", h_env("SLIPWAY_STACK_DIR"));
	if (symlink(real, link) != 0)
		return -1;

	snprintf(art2_log, sizeof art2_log, "%s/artifact2.log", dir);
	if (start_art2() != 0)
		return -1;

	adm = h_client(h_env("SLIPWAY_ARTIFACT_ADDR"), ca, admin_crt, admin_key);
	adm2 = h_client(art2_addr, ca, admin_crt, admin_key);
	aud = h_client(h_env("SLIPWAY_AUDIT_ADDR"), ca, admin_crt, admin_key);

	if (s3_global_init(err, sizeof err) != 0)
		return -1;
	struct s3_opts so = { .host = h_env("SLIPWAY_S3_HOST"), .bucket = h_env("SLIPWAY_S3_BUCKET"),
			      .access_key = h_env("SLIPWAY_S3_ACCESS_KEY"),
			      .secret_key = h_env("SLIPWAY_S3_SECRET_KEY") };
	if (s3_new(&so, &s3, err, sizeof err) != 0)
		return -1;
	pg = PQconnectdb(h_env("SLIPWAY_PGURL"));
	if (PQstatus(pg) != CONNECTION_OK)
		return -1;
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	if (art2.pid > 0)
		h_stop(&art2, SIGTERM, 15000);
	rpc_client_free(adm);
	rpc_client_free(adm2);
	rpc_client_free(aud);
	s3_free(s3);
	s3_global_cleanup();
	PQfinish(pg);
	rpc_shutdown();
	return 0;
}

/* ---- tests ---- */

static void test_push_pull_roundtrip(void **state)
{
	(void)state;
	size_t len = 3 * 1024 * 1024 + 123;
	uint8_t *data = random_bytes(len);
	char digest[DIGEST_STR_LEN], err[512];
	sha_of(data, len, digest);
	Slipway__V1__PushResponse *r = NULL;
	struct push_opts po = { .commit = "89abcdef0123" };
	push_ok(adm, "it-web", "1.0.0", data, len, &po, &r);
	assert_false(r->deduplicated);
	assert_false(r->release_existed);
	assert_string_equal(r->release->app, "it-web");
	assert_string_equal(r->release->version, "1.0.0");
	char want_peer[300];
	snprintf(want_peer, sizeof want_peer, "spiffe://%s/user/admin", td);
	assert_string_equal(r->release->pushed_by, want_peer); /* from mTLS */
	assert_string_equal(r->release->provenance->commit, "89abcdef0123");
	assert_false(r->release->signature_verified);
	protobuf_c_message_free_unpacked(&r->base, NULL);

	assert_string_equal(blob_state(digest), "live");
	assert_true(s3_has(digest));
	pull_equals(adm, "it-web@1.0.0", data, len);
	pull_equals(adm, digest, data, len);

	Slipway__V1__Release *rel = NULL;
	assert_int_equal(resolve(adm, "it-web", "1.0.0", &rel, err, sizeof err), 0);
	assert_string_equal(rel->digest, digest);
	assert_string_equal(rel->provenance->repository, "https://git.example.com/it/artifact");
	protobuf_c_message_free_unpacked(&rel->base, NULL);

	Slipway__V1__StatRequest sq = SLIPWAY__V1__STAT_REQUEST__INIT;
	sq.digest = digest;
	ProtobufCMessage *m = NULL;
	assert_int_equal(unary(adm, "Stat", &sq.base, &m, err, sizeof err), 0);
	assert_int_equal(((Slipway__V1__BlobInfo *)m)->size_bytes, len);
	protobuf_c_message_free_unpacked(m, NULL);

	Slipway__V1__GetProvenanceRequest gq = SLIPWAY__V1__GET_PROVENANCE_REQUEST__INIT;
	gq.digest = digest;
	assert_int_equal(unary(adm, "GetProvenance", &gq.base, &m, err, sizeof err), 0);
	Slipway__V1__GetProvenanceResponse *gp = (void *)m;
	assert_int_equal(gp->n_releases, 1);
	assert_string_equal(gp->releases[0]->provenance->commit, "89abcdef0123");
	protobuf_c_message_free_unpacked(m, NULL);

	/* Audited in the audit log: the release creation with its digest, and
	 * the push with its actor (from mTLS). */
	assert_int_equal(audit_wait("release.create", "release/it-web@1.0.0", digest, 1), 1);
	char blobres[96];
	snprintf(blobres, sizeof blobres, "blob/%s", digest);
	assert_int_equal(audit_wait("artifact.push", blobres, want_peer, 1), 1);
	free(data);
}

static void test_push_without_digest_spools(void **state)
{
	(void)state;
	size_t len = 2 * 1024 * 1024 + 5;
	uint8_t *data = random_bytes(len);
	char digest[DIGEST_STR_LEN];
	sha_of(data, len, digest);
	struct push_opts po = { .no_digest = 1, .chunk = 100000 };
	Slipway__V1__PushResponse *r = NULL;
	push_ok(adm2, "it-spool", "1", data, len, &po, &r);
	assert_false(r->deduplicated);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	assert_string_equal(blob_state(digest), "live");
	pull_equals(adm, "it-spool@1", data, len);
	/* The spool file went with its descriptor. */
	assert_int_equal(fds_into(art2.pid, spool2), 0);
	free(data);
}

static void test_dedup_and_idempotent_repush(void **state)
{
	(void)state;
	size_t len = 1024 * 1024;
	uint8_t *data = random_bytes(len);
	char digest[DIGEST_STR_LEN], err[512];
	sha_of(data, len, digest);
	Slipway__V1__PushResponse *r = NULL;
	push_ok(adm, "it-dedup", "1", data, len, NULL, &r);
	assert_false(r->deduplicated);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* Same bytes, another release: stored once. Both announced and spooled. */
	push_ok(adm, "it-dedup", "2", data, len, NULL, &r);
	assert_true(r->deduplicated);
	assert_false(r->release_existed);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	struct push_opts spool = { .no_digest = 1 };
	push_ok(adm, "it-dedup-other", "7", data, len, &spool, &r);
	assert_true(r->deduplicated);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	assert_int_equal(sql_count("SELECT count(*) FROM artifact.blobs WHERE digest = $1", digest),
			 1);
	assert_int_equal(sql_count("SELECT count(*) FROM artifact.releases WHERE digest = $1",
				   digest),
			 3);
	/* The same version with the same bytes again: an idempotent success. */
	push_ok(adm, "it-dedup", "1", data, len, NULL, &r);
	assert_true(r->release_existed);
	assert_true(r->deduplicated);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	assert_int_equal(sql_count("SELECT count(*) FROM artifact.releases WHERE digest = $1",
				   digest),
			 3);
	(void)err;
	free(data);
}

static void test_releases_are_immutable(void **state)
{
	(void)state;
	size_t len = 300000;
	uint8_t *a = random_bytes(len), *b = random_bytes(len);
	char da[DIGEST_STR_LEN], db[DIGEST_STR_LEN], err[512];
	sha_of(a, len, da);
	sha_of(b, len, db);
	push_ok(adm, "it-immut", "1.0", a, len, NULL, NULL);
	/* Another digest for the same version: refused, announced or not. */
	assert_int_equal(push(adm, "it-immut", "1.0", b, len, NULL, NULL, err, sizeof err),
			 SW_EEXIST);
	assert_non_null(strstr(err, "immutable"));
	struct push_opts spool = { .no_digest = 1 };
	assert_int_equal(push(adm2, "it-immut", "1.0", b, len, &spool, NULL, err, sizeof err),
			 SW_EEXIST);
	Slipway__V1__Release *rel = NULL;
	assert_int_equal(resolve(adm, "it-immut", "1.0", &rel, err, sizeof err), 0);
	assert_string_equal(rel->digest, da);
	protobuf_c_message_free_unpacked(&rel->base, NULL);
	/* The refused bytes were never recorded as a blob. */
	assert_string_not_equal(blob_state(db), "live");
	/* Even the database owner cannot re-point or delete a release. */
	PGresult *res = PQexecParams(pg,
				     "UPDATE artifact.releases SET digest = $1 WHERE app = 'it-immut'",
				     1, NULL, (const char *[]){ db }, NULL, NULL, 0);
	assert_int_equal(PQresultStatus(res), PGRES_FATAL_ERROR);
	PQclear(res);
	res = PQexec(pg, "DELETE FROM artifact.releases WHERE app = 'it-immut'");
	assert_int_equal(PQresultStatus(res), PGRES_FATAL_ERROR);
	PQclear(res);
	free(a);
	free(b);
}

static void test_digest_mismatch_stores_nothing(void **state)
{
	(void)state;
	size_t len = 1024 * 1024 + 77;
	uint8_t *data = random_bytes(len), *other = random_bytes(len);
	char real[DIGEST_STR_LEN], claimed[DIGEST_STR_LEN], err[512];
	sha_of(data, len, real);
	sha_of(other, len, claimed);
	/* Streamed: the bytes are not the announced digest. */
	struct push_opts po = { .digest = claimed };
	assert_int_equal(push(adm, "it-mismatch", "1", data, len, &po, NULL, err, sizeof err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "digest mismatch"));
	assert_int_equal(resolve(adm, "it-mismatch", "1", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_string_not_equal(blob_state(claimed), "live");
	assert_string_not_equal(blob_state(real), "live");
	struct pulled p;
	assert_int_equal(pull(adm, claimed, 0, &p, err, sizeof err), SW_ENOTFOUND);
	free(p.data);
	/* Fewer bytes than announced, and more. */
	po.digest = NULL;
	po.size_hint = (int64_t)len + 10;
	assert_int_equal(push(adm, "it-mismatch", "2", data, len, &po, NULL, err, sizeof err),
			 SW_EINVAL);
	po.size_hint = (int64_t)len - 10;
	assert_int_equal(push(adm, "it-mismatch", "3", data, len, &po, NULL, err, sizeof err),
			 SW_EINVAL);
	assert_int_equal(resolve(adm, "it-mismatch", "2", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_int_equal(resolve(adm, "it-mismatch", "3", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_string_not_equal(blob_state(real), "live");
	/* Spooled with an announced digest (no size): same answer. */
	struct push_opts sp = { .digest = claimed, .no_hint = 1 };
	assert_int_equal(push(adm2, "it-mismatch", "4", data, len, &sp, NULL, err, sizeof err),
			 SW_EINVAL);
	assert_int_equal(fds_into(art2.pid, spool2), 0);
	/* The refused push is audited as a failure. */
	assert_true(audit_wait("artifact.push", "release/it-mismatch@1", claimed, 1) >= 1);
	free(data);
	free(other);
}

static void test_oversize_refused(void **state)
{
	(void)state;
	size_t len = 9 * 1024 * 1024; /* art2 takes at most 8 MiB */
	uint8_t *data = random_bytes(len);
	char digest[DIGEST_STR_LEN], err[512];
	sha_of(data, len, digest);
	/* Announced: refused before a byte is stored. */
	assert_int_equal(push(adm2, "it-big", "1", data, len, NULL, NULL, err, sizeof err),
			 SW_ELIMIT);
	/* Not announced: refused once the stream passes the limit. */
	struct push_opts po = { .no_digest = 1 };
	assert_int_equal(push(adm2, "it-big", "2", data, len, &po, NULL, err, sizeof err),
			 SW_ELIMIT);
	assert_non_null(strstr(err, "larger than"));
	assert_int_equal(resolve(adm, "it-big", "1", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_int_equal(resolve(adm, "it-big", "2", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_string_equal(blob_state(digest), "");
	assert_int_equal(fds_into(art2.pid, spool2), 0);
	/* Exactly the limit is fine. */
	push_ok(adm2, "it-big", "3", data, 8 * 1024 * 1024, NULL, NULL);
	free(data);
}

static int cancel_seen_spool;

static void check_spooling(void)
{
	/* While the push is held after its first chunk, its spool file exists. */
	for (int i = 0; i < 200 && fds_into(art2.pid, spool2) == 0; i++)
		h_sleep_ms(10);
	cancel_seen_spool = fds_into(art2.pid, spool2);
}

static void test_cancel_mid_stream_records_nothing(void **state)
{
	(void)state;
	size_t len = 4 * 1024 * 1024;
	uint8_t *data = random_bytes(len);
	char digest[DIGEST_STR_LEN], err[512];
	sha_of(data, len, digest);
	/* Spooled push: cancel after 2 MiB. */
	struct push_opts po = { .no_digest = 1, .hold_ms = 1, .while_held = check_spooling,
				.cancel_after = 2 * 1024 * 1024 };
	int rc = push(adm2, "it-cancel", "1", data, len, &po, NULL, err, sizeof err);
	assert_int_not_equal(rc, 0);
	assert_true(cancel_seen_spool > 0); /* the test can see a spool file at all */
	for (int i = 0; i < 500 && fds_into(art2.pid, spool2) > 0; i++)
		h_sleep_ms(10);
	assert_int_equal(fds_into(art2.pid, spool2), 0);
	/* Streamed push (announced digest): cancel half-way. */
	struct push_opts ps = { .cancel_after = 2 * 1024 * 1024 };
	rc = push(adm2, "it-cancel", "2", data, len, &ps, NULL, err, sizeof err);
	assert_int_not_equal(rc, 0);
	h_sleep_ms(300);
	assert_int_equal(resolve(adm, "it-cancel", "1", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_int_equal(resolve(adm, "it-cancel", "2", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_string_not_equal(blob_state(digest), "live");
	assert_int_equal(sql_count("SELECT count(*) FROM artifact.releases WHERE app = $1",
				   "it-cancel"),
			 0);
	assert_int_equal(audit_any("release/it-cancel@"), 0);
	/* And the service is fine afterwards: the same push goes through. */
	push_ok(adm2, "it-cancel", "2", data, len, NULL, NULL);
	pull_equals(adm, "it-cancel@2", data, len);
	free(data);
}

static void test_pull_resume(void **state)
{
	(void)state;
	size_t len = 2 * 1024 * 1024 + 999;
	uint8_t *data = random_bytes(len);
	char digest[DIGEST_STR_LEN], err[512];
	sha_of(data, len, digest);
	push_ok(adm, "it-resume", "1", data, len, NULL, NULL);
	struct pulled p;
	size_t off = len / 2 + 3;
	assert_int_equal(pull(adm, "it-resume@1", off, &p, err, sizeof err), 0);
	assert_int_equal(p.size, len);
	assert_int_equal(p.len, len - off);
	assert_memory_equal(p.data, data + off, len - off);
	/* Prefix + resumed tail hash to the digest, as the CLI checks. */
	struct digest d;
	uint8_t sha[32];
	char got[DIGEST_STR_LEN];
	digest_init(&d, DIGEST_SHA256);
	digest_update(&d, data, off);
	digest_update(&d, p.data, p.len);
	digest_final(&d, sha);
	digest_cleanup(&d);
	digest_format(sha, got);
	assert_string_equal(got, digest);
	free(p.data);
	/* At the end: just the info. Past it: OUT_OF_RANGE. */
	assert_int_equal(pull(adm, digest, len, &p, err, sizeof err), 0);
	assert_int_equal(p.got_info, 1);
	assert_int_equal(p.len, 0);
	free(p.data);
	assert_int_equal(pull(adm, digest, len + 1, &p, err, sizeof err), SW_ERANGE);
	free(p.data);
	free(data);
}

static void tamper(const char *digest, const uint8_t *bytes, size_t len)
{
	char key[128], err[256];
	snprintf(key, sizeof key, "blobs/sha256/%s", digest + 7);
	if (s3_put(s3, key, bytes, len, err, sizeof err) != 0)
		fail_msg("tamper %s: %s", key, err);
}

static void test_tampered_blob_never_served_as_valid(void **state)
{
	(void)state;
	size_t len = 3 * 1024 * 1024 + 1;
	uint8_t *data = random_bytes(len), *bad = malloc(len);
	char digest[DIGEST_STR_LEN], err[512];
	sha_of(data, len, digest);
	push_ok(adm, "it-tamper", "1", data, len, NULL, NULL);
	/* One flipped byte near the start, same size. */
	memcpy(bad, data, len);
	bad[10] ^= 0x40;
	tamper(digest, bad, len);
	struct pulled p;
	assert_int_equal(pull(adm, "it-tamper@1", 0, &p, err, sizeof err), SW_EDATALOSS);
	assert_non_null(strstr(err, "hash"));
	/* The client never got every byte: the last chunk was held back. */
	assert_true(p.len < len);
	free(p.data);
	char blobres[96];
	snprintf(blobres, sizeof blobres, "blob/%s", digest);
	assert_true(audit_wait("artifact.blob.corrupt", blobres, NULL, 1) >= 1);
	/* Truncated and extended objects are caught too. */
	tamper(digest, bad, len - 100);
	assert_int_equal(pull(adm, digest, 0, &p, err, sizeof err), SW_EDATALOSS);
	free(p.data);
	memcpy(bad, data, len);
	tamper(digest, data, len - 1);
	assert_int_equal(pull(adm, digest, 1000, &p, err, sizeof err), SW_EDATALOSS);
	free(p.data);
	/* Pushing the real bytes again repairs it (the copy no longer matches
	 * the MD5 recorded for the blob, so it is uploaded, not deduplicated). */
	Slipway__V1__PushResponse *r = NULL;
	push_ok(adm, "it-tamper", "1", data, len, NULL, &r);
	assert_false(r->deduplicated);
	assert_true(r->release_existed);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	pull_equals(adm, "it-tamper@1", data, len);
	free(data);
	free(bad);
}

static void test_signatures(void **state)
{
	(void)state;
	size_t len = 500000;
	uint8_t *data = random_bytes(len), *other = random_bytes(len);
	char digest[DIGEST_STR_LEN], od[DIGEST_STR_LEN], err[512];
	sha_of(data, len, digest);
	sha_of(other, len, od);
	long missing0 = audit_count("artifact.signature.missing", "release/sig-app@1", NULL);
	long invalid0 = audit_count("artifact.signature.invalid", "release/sig-app@1", NULL);
	/* Unsigned: refused for an app that requires signatures. */
	assert_int_equal(push(adm2, "sig-app", "1", data, len, NULL, NULL, err, sizeof err),
			 SW_EPERM);
	assert_non_null(strstr(err, "signature"));
	/* Signed by a key nobody trusts. */
	struct push_opts po = { .sk = rogue_sk, .key_name = "ci-sig" };
	assert_int_equal(push(adm2, "sig-app", "1", data, len, &po, NULL, err, sizeof err),
			 SW_EPERM);
	/* A valid signature over another digest, replayed on these bytes. */
	struct push_opts replay = { .sk = sig_sk, .key_name = "ci-sig", .digest = od };
	int rc = push(adm2, "sig-app", "1", data, len, &replay, NULL, err, sizeof err);
	assert_true(rc == SW_EINVAL || rc == SW_EPERM);
	/* A trusted key's signature over the digest alone proves nothing about
	 * where the release came from: refused. */
	struct push_opts bare = { .sk = sig_sk, .key_name = "ci-sig", .digest_only = 1 };
	assert_int_equal(push(adm2, "sig-app", "1", data, len, &bare, NULL, err, sizeof err),
			 SW_EPERM);
	assert_non_null(strstr(err, "statement"));
	/* A header that contradicts the signed statement. */
	struct push_opts liar = { .sk = sig_sk, .key_name = "ci-sig",
				  .header_ref = "refs/heads/feature" };
	assert_int_equal(push(adm2, "sig-app", "1", data, len, &liar, NULL, err, sizeof err),
			 SW_EINVAL);
	assert_non_null(strstr(err, "contradicts"));
	/* Spooled without an announced digest: checked once the digest is known. */
	struct push_opts spool = { .no_digest = 1 };
	assert_int_equal(push(adm2, "sig-app", "1", data, len, &spool, NULL, err, sizeof err),
			 SW_EPERM);
	assert_int_equal(resolve(adm, "sig-app", "1", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_string_not_equal(blob_state(digest), "live");
	/* Each refusal was audited: two unsigned pushes, at least the rogue key. */
	assert_true(audit_wait("artifact.signature.missing", "release/sig-app@1", NULL,
			       missing0 + 2) >= missing0 + 2);
	assert_true(audit_wait("artifact.signature.invalid", "release/sig-app@1", NULL,
			       invalid0 + 1) >= invalid0 + 1);
	/* Signed by the trusted key: accepted and marked verified. */
	Slipway__V1__PushResponse *r = NULL;
	struct push_opts good = { .sk = sig_sk, .key_name = "ci-sig" };
	push_ok(adm2, "sig-app", "1", data, len, &good, &r);
	assert_true(r->release->signature_verified);
	assert_true(r->release->signature_required);
	assert_true(r->release->provenance->verified);
	assert_string_equal(r->release->provenance->signing_key, "ci-sig");
	assert_int_equal(r->release->provenance->signature.len, 64);
	assert_true(r->release->provenance->statement.len > 0);
	assert_string_equal(r->release->provenance->pusher, r->release->pushed_by);
	assert_string_equal(r->release->provenance->ref, "refs/heads/main");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* Without naming the key, the trusted keys are tried. */
	struct push_opts anon = { .sk = sig_sk };
	push_ok(adm2, "sig-app", "2", other, len, &anon, &r);
	assert_true(r->release->signature_verified);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* Another app does not require one; a bad signature is still refused. */
	push_ok(adm2, "unsigned-app", "1", data, len, NULL, NULL);
	assert_int_equal(push(adm2, "unsigned-app", "2", data, len, &po, NULL, err, sizeof err),
			 SW_EPERM);
	free(data);
	free(other);
}

static int stop_s3(int sig)
{
	char path[700];
	snprintf(path, sizeof path, "%s/run/s3.pid", h_env("SLIPWAY_STACK_DIR"));
	char *s = h_read_file(path);
	assert_non_null(s);
	int pid = (int)strtol(s, NULL, 10);
	free(s);
	assert_true(pid > 0);
	return kill(pid, sig);
}

static void test_s3_down_or_slow_is_unavailable(void **state)
{
	(void)state;
	size_t len = 1024 * 1024;
	uint8_t *data = random_bytes(len);
	char digest[DIGEST_STR_LEN], err[512];
	sha_of(data, len, digest);
	/* Slow: the S3 server stops answering (SIGSTOP). The second instance
	 * gives up after its 1.5 s stall bound, well before the call deadline. */
	assert_int_equal(stop_s3(SIGSTOP), 0);
	long long t0 = h_now_ms();
	int rc = push(adm2, "it-s3down", "1", data, len, NULL, NULL, err, sizeof err);
	struct push_opts spool = { .no_digest = 1 };
	int rc2 = push(adm2, "it-s3down", "2", data, len, &spool, NULL, err, sizeof err);
	long long took = h_now_ms() - t0;
	assert_int_equal(stop_s3(SIGCONT), 0);
	assert_int_equal(rc, SW_EUNAVAIL);
	assert_int_equal(rc2, SW_EUNAVAIL);
	(void)took;
	assert_int_equal(resolve(adm, "it-s3down", "1", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_int_equal(resolve(adm, "it-s3down", "2", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_string_not_equal(blob_state(digest), "live");

	/* Down: an instance whose S3 port is closed. */
	struct h_proc dead;
	char portfile[700], logp[700], pgurl[900], sdir[700];
	snprintf(portfile, sizeof portfile, "%s/dead.port", dir);
	snprintf(logp, sizeof logp, "%s/artifact-dead-s3.log", dir);
	snprintf(sdir, sizeof sdir, "%s/dead-state", dir);
	snprintf(pgurl, sizeof pgurl,
		 "postgresql:///slipway?host=%s/pg&port=5432&user=slipway_artifact",
		 h_env("SLIPWAY_STACK_DIR"));
	const char *bin = getenv("SLIPWAY_ARTIFACT_BIN");
	char *argv[] = { (char *)(bin ? bin : "build/bin/slipway-artifact"), "--listen",
			 "127.0.0.1:0", "--port-file", portfile, "--ca", ca, "--cert", svc_crt,
			 "--key", svc_key, "--pg-url", pgurl, "--s3-host", "127.0.0.1:9",
			 "--s3-bucket", "slipway", "--s3-access-key", "x",
			 "--state-dir", sdir, "--policy-addr", (char *)h_env("SLIPWAY_POLICY_ADDR"),
			 NULL };
	setenv("SLIPWAY_ARTIFACT_S3_SECRET_KEY", "y", 1);
	assert_int_equal(h_start(&dead, argv, portfile, logp), 0);
	char addr[64];
	snprintf(addr, sizeof addr, "127.0.0.1:%d", dead.port);
	struct rpc_client *c = h_client(addr, ca, admin_crt, admin_key);
	assert_int_equal(push(c, "it-s3down", "3", data, len, NULL, NULL, err, sizeof err),
			 SW_EUNAVAIL);
	/* Its health says so. */
	Grpc__Health__V1__HealthCheckRequest hq = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *hr = NULL;
	assert_int_equal(rpc_call(c, &grpc__health__v1__health__descriptor, "Check", &hq.base, &hr,
				  NULL, err, sizeof err),
			 0);
	assert_int_equal(((Grpc__Health__V1__HealthCheckResponse *)hr)->status,
			 GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING);
	protobuf_c_message_free_unpacked(hr, NULL);
	rpc_client_free(c);
	assert_int_equal(h_stop(&dead, SIGTERM, 15000), 0);
	assert_int_equal(resolve(adm, "it-s3down", "3", NULL, err, sizeof err), SW_ENOTFOUND);

	/* S3 is back: pushes work again (fresh bytes: s3rver may still be
	 * finishing the abandoned requests for the old key). */
	uint8_t *data2 = random_bytes(len);
	push_ok(adm2, "it-s3down", "4", data2, len, NULL, NULL);
	pull_equals(adm2, "it-s3down@4", data2, len);
	free(data2);
	free(data);
}

static void test_postgres_down_is_unavailable(void **state)
{
	(void)state;
	size_t len = 200000;
	uint8_t *data = random_bytes(len);
	char err[512], link[1100], real[1100];
	snprintf(link, sizeof link, "%s/.s.PGSQL.5432", pgsock);
	snprintf(real, sizeof real, "%s/pg/.s.PGSQL.5432", h_env("SLIPWAY_STACK_DIR"));
	/* Take the database away from the second instance only: its socket
	 * path disappears and its open sessions are terminated. */
	assert_int_equal(unlink(link), 0);
	sql1("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
	     " WHERE usename = 'slipway_artifact'",
	     NULL);
	assert_int_equal(resolve(adm2, "it-web", "1.0.0", NULL, err, sizeof err), SW_EUNAVAIL);
	assert_int_equal(push(adm2, "it-pgdown", "1", data, len, NULL, NULL, err, sizeof err),
			 SW_EUNAVAIL);
	assert_int_equal(symlink(real, link), 0);
	/* Back: it reconnects by itself. */
	assert_int_equal(resolve(adm2, "it-web", "1.0.0", NULL, err, sizeof err), 0);
	assert_int_equal(resolve(adm, "it-pgdown", "1", NULL, err, sizeof err), SW_ENOTFOUND);
	push_ok(adm2, "it-pgdown", "1", data, len, NULL, NULL);
	free(data);
}

static void age(const char *digest, const char *interval)
{
	PGresult *r = PQexecParams(pg,
				   "UPDATE artifact.blobs SET last_pushed_at = now() - $2::interval"
				   " WHERE digest = $1",
				   2, NULL, (const char *[]){ digest, interval }, NULL, NULL, 0);
	assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
}

static void age_release(const char *app, const char *interval)
{
	PGresult *r = PQexecParams(pg,
				   "UPDATE artifact.releases SET created_at = now() - $2::interval"
				   " WHERE app = $1",
				   2, NULL, (const char *[]){ app, interval }, NULL, NULL, 0);
	assert_int_equal(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
}

static const int64_t DAY_MS = 24LL * 3600 * 1000;

static void test_gc(void **state)
{
	(void)state;
	size_t len = 400000;
	uint8_t *x = random_bytes(len), *y = random_bytes(len), *z = random_bytes(len),
		*u = random_bytes(len);
	char dx[DIGEST_STR_LEN], dy[DIGEST_STR_LEN], dz[DIGEST_STR_LEN], du[DIGEST_STR_LEN],
		err[512];
	sha_of(x, len, dx);
	sha_of(y, len, dy);
	sha_of(z, len, dz);
	sha_of(u, len, du);
	push_ok(adm, "gc-app", "1", x, len, NULL, NULL);
	push_ok(adm, "gc-app", "2", y, len, NULL, NULL);
	push_ok(adm, "gc-app", "3", z, len, NULL, NULL);
	push_ok(adm, "gc-other", "1", y, len, NULL, NULL);
	assert_int_equal(set_pins(adm, "gc-app", "prod", dz, dy, err, sizeof err), 0);
	/* A pin must name a stored release of that app. */
	assert_int_equal(set_pins(adm, "gc-other", "prod", dz, "", err, sizeof err), SW_EPRECOND);
	assert_int_equal(set_pins(adm, "gc-app", "Prod!", dz, "", err, sizeof err), SW_EINVAL);
	assert_true(audit_wait("artifact.pins.set", "pins/gc-app/prod", dy, 1) >= 1);

	/* gc-app's releases are ten days old; its blobs were pushed 2 h ago. */
	age_release("gc-app", "10 days");
	age(dx, "2 hours");
	age(dy, "2 hours");
	age(dz, "2 hours");

	/* An unreferenced blob: stored, recorded, used by no release. */
	char key[128];
	snprintf(key, sizeof key, "blobs/sha256/%s", du + 7);
	assert_int_equal(s3_put(s3, key, u, len, err, sizeof err), 0);
	char sz[24];
	snprintf(sz, sizeof sz, "%zu", len);
	PGresult *res = PQexecParams(pg,
				     "INSERT INTO artifact.blobs (digest, size_bytes, media_type, state,"
				     " last_pushed_at) VALUES ($1, $2, 'x/y', 'live', now() - '2 hours'"
				     "::interval)",
				     2, NULL, (const char *[]){ du, sz }, NULL, NULL, 0);
	assert_int_equal(PQresultStatus(res), PGRES_COMMAND_OK);
	PQclear(res);

	/* Dry run with a one-day retention: x expired, u unreferenced; y and z
	 * are pinned (and y is also used by a recent release). */
	Slipway__V1__GarbageCollectResponse *r = NULL;
	assert_int_equal(gc(adm, 1, DAY_MS, &r, err, sizeof err), 0);
	assert_true(r->dry_run);
	const Slipway__V1__GcCandidate *cx = find_cand(r, dx), *cu = find_cand(r, du);
	assert_non_null(cx);
	assert_string_equal(cx->reason, "expired");
	assert_int_equal(cx->n_releases, 1);
	assert_string_equal(cx->releases[0], "gc-app@1");
	assert_non_null(cu);
	assert_string_equal(cu->reason, "unreferenced");
	assert_null(find_cand(r, dy));
	assert_null(find_cand(r, dz));
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* Nothing happened. */
	assert_true(s3_has(dx));
	pull_equals(adm, "gc-app@1", x, len);

	/* Without a retention only unreferenced blobs go. */
	assert_int_equal(gc(adm, 1, 0, &r, err, sizeof err), 0);
	assert_null(find_cand(r, dx));
	assert_non_null(find_cand(r, du));
	protobuf_c_message_free_unpacked(&r->base, NULL);

	/* For real. */
	assert_int_equal(gc(adm, 0, DAY_MS, &r, err, sizeof err), 0);
	assert_false(r->dry_run);
	assert_non_null(find_cand(r, dx));
	assert_non_null(find_cand(r, du));
	assert_null(find_cand(r, dy));
	assert_null(find_cand(r, dz));
	assert_true(r->bytes_freed >= 2 * len);
	protobuf_c_message_free_unpacked(&r->base, NULL);
	assert_false(s3_has(dx));
	assert_false(s3_has(du));
	assert_string_equal(blob_state(dx), "");
	assert_string_equal(blob_state(du), "");
	assert_int_equal(resolve(adm, "gc-app", "1", NULL, err, sizeof err), SW_ENOTFOUND);
	assert_non_null(strstr(err, "garbage-collected"));
	pull_equals(adm, "gc-app@2", y, len);
	pull_equals(adm, "gc-app@3", z, len);
	/* Every deletion was audited, with the digest, app and version. */
	assert_int_equal(audit_wait("release.collect", "release/gc-app@1", dx, 1), 1);
	char bres[96];
	snprintf(bres, sizeof bres, "blob/%s", dx);
	assert_int_equal(audit_wait("artifact.blob.delete", bres, "gc-app@1", 1), 1);
	snprintf(bres, sizeof bres, "blob/%s", du);
	assert_int_equal(audit_wait("artifact.blob.delete", bres, "unreferenced", 1), 1);

	/* Unpinning y is not enough while gc-other@1 (recent) uses it... */
	assert_int_equal(set_pins(adm, "gc-app", "prod", dz, "", err, sizeof err), 0);
	assert_int_equal(gc(adm, 0, DAY_MS, &r, err, sizeof err), 0);
	assert_null(find_cand(r, dy));
	protobuf_c_message_free_unpacked(&r->base, NULL);
	/* ...once that release is old too, y and both its releases go. */
	age_release("gc-other", "10 days");
	assert_int_equal(gc(adm, 0, DAY_MS, &r, err, sizeof err), 0);
	const Slipway__V1__GcCandidate *cy = find_cand(r, dy);
	assert_non_null(cy);
	assert_int_equal(cy->n_releases, 2);
	assert_null(find_cand(r, dz)); /* still pinned as current */
	protobuf_c_message_free_unpacked(&r->base, NULL);
	assert_int_equal(resolve(adm, "gc-other", "1", NULL, err, sizeof err), SW_ENOTFOUND);

	/* A collected version keeps its digest: the same bytes restore it,
	 * other bytes are refused. */
	Slipway__V1__PushResponse *pr = NULL;
	push_ok(adm, "gc-app", "1", x, len, NULL, &pr);
	assert_true(pr->release_existed);
	protobuf_c_message_free_unpacked(&pr->base, NULL);
	pull_equals(adm, "gc-app@1", x, len);
	assert_int_equal(push(adm, "gc-app", "2", x, len, NULL, NULL, err, sizeof err), SW_EEXIST);
	free(x);
	free(y);
	free(z);
	free(u);
}

static const char *held_digest;
static int held_gc_rc;
static Slipway__V1__GarbageCollectResponse *held_gc;

static void gc_while_push_held(void)
{
	char err[512];
	/* Wait until the service has claimed the blob for this push. */
	for (int i = 0; i < 500; i++) {
		if (strcmp(sql1("SELECT last_pushed_at > now() - interval '1 minute'"
				" FROM artifact.blobs WHERE digest = $1",
				held_digest),
			   "t") == 0)
			break;
		h_sleep_ms(10);
	}
	held_gc_rc = gc(adm, 0, DAY_MS, &held_gc, err, sizeof err);
}

static void test_gc_races_with_push(void **state)
{
	(void)state;
	size_t len = 2 * 1024 * 1024;
	uint8_t *w = random_bytes(len), *v = random_bytes(len);
	char dw[DIGEST_STR_LEN], dv[DIGEST_STR_LEN], err[512];
	sha_of(w, len, dw);
	sha_of(v, len, dv);
	/* w: stored long ago, no release left using it. */
	push_ok(adm, "race", "w1", w, len, NULL, NULL);
	age_release("race", "10 days");
	age(dw, "2 hours");
	/* Left alone, w would be collected. */
	Slipway__V1__GarbageCollectResponse *dry = NULL;
	assert_int_equal(gc(adm, 1, DAY_MS, &dry, err, sizeof err), 0);
	assert_non_null(find_cand(dry, dw));
	protobuf_c_message_free_unpacked(&dry->base, NULL);
	/* A push of w starts (claiming the blob), then a GC runs while the push
	 * is still streaming: the blob must survive and the push complete. */
	held_digest = dw;
	struct push_opts po = { .hold_ms = 50, .while_held = gc_while_push_held, .chunk = 512 * 1024 };
	push_ok(adm, "race", "w2", w, len, &po, NULL);
	assert_int_equal(held_gc_rc, 0);
	assert_null(find_cand(held_gc, dw));
	protobuf_c_message_free_unpacked(&held_gc->base, NULL);
	assert_true(s3_has(dw));
	pull_equals(adm, "race@w2", w, len);

	/* A GC that marked v for deletion (and crashed before finishing) turns
	 * a concurrent push of v away cleanly; the next GC finishes; then the
	 * push succeeds and stores v again. */
	push_ok(adm, "race2", "v1", v, len, NULL, NULL);
	sql1("UPDATE artifact.blobs SET state = 'deleting' WHERE digest = $1", dv);
	assert_int_equal(push(adm, "race2", "v2", v, len, NULL, NULL, err, sizeof err),
			 SW_EUNAVAIL);
	assert_non_null(strstr(err, "garbage-collected"));
	Slipway__V1__GarbageCollectResponse *r = NULL;
	assert_int_equal(gc(adm, 0, 0, &r, err, sizeof err), 0);
	const Slipway__V1__GcCandidate *c = find_cand(r, dv);
	assert_non_null(c);
	assert_string_equal(c->reason, "unfinished");
	protobuf_c_message_free_unpacked(&r->base, NULL);
	assert_false(s3_has(dv));
	push_ok(adm, "race2", "v2", v, len, NULL, NULL);
	assert_true(s3_has(dv));
	pull_equals(adm, "race2@v2", v, len);
	free(w);
	free(v);
}

static void test_bad_input_changes_nothing(void **state)
{
	(void)state;
	uint8_t data[1000];
	char err[512];
	randombytes_buf(data, sizeof data);
	const char *bad_apps[] = { "", "Web", "../etc", "web/x", "-web", "a b" };
	for (size_t i = 0; i < sizeof bad_apps / sizeof bad_apps[0]; i++)
		assert_int_equal(push(adm, bad_apps[i], "1", data, sizeof data, NULL, NULL, err,
				      sizeof err),
				 SW_EINVAL);
	const char *bad_versions[] = { "", "..", ".", "1..2", "1/2", "v 1", "-1" };
	for (size_t i = 0; i < sizeof bad_versions / sizeof bad_versions[0]; i++)
		assert_int_equal(push(adm, "it-bad", bad_versions[i], data, sizeof data, NULL, NULL,
				      err, sizeof err),
				 SW_EINVAL);
	struct push_opts po = { .digest = "sha256:XYZ" };
	assert_int_equal(push(adm, "it-bad", "1", data, sizeof data, &po, NULL, err, sizeof err),
			 SW_EINVAL);
	struct push_opts pc = { .commit = "not-a-commit" };
	assert_int_equal(push(adm, "it-bad", "1", data, sizeof data, &pc, NULL, err, sizeof err),
			 SW_EINVAL);
	/* A chunk over 1 MiB. */
	size_t big = 1024 * 1024 + 1;
	uint8_t *b = random_bytes(big);
	struct push_opts pb = { .chunk = big };
	assert_int_equal(push(adm, "it-bad", "1", b, big, &pb, NULL, err, sizeof err), SW_EINVAL);
	free(b);
	/* A stream that starts with a chunk, or carries two headers. */
	struct rpc_stream *st = NULL;
	struct rpc_call_opts co = { .timeout_ms = 30000 };
	assert_int_equal(rpc_stream_open(adm, A, "Push", &co, &st, err, sizeof err), 0);
	Slipway__V1__PushRequest ch = SLIPWAY__V1__PUSH_REQUEST__INIT;
	ch.msg_case = SLIPWAY__V1__PUSH_REQUEST__MSG_CHUNK;
	ch.chunk.data = data;
	ch.chunk.len = 10;
	rpc_stream_send(st, &ch.base);
	rpc_stream_close_send(st);
	assert_int_equal(rpc_stream_finish(st, err, sizeof err), SW_EINVAL);
	assert_int_equal(rpc_stream_open(adm, A, "Push", &co, &st, err, sizeof err), 0);
	Slipway__V1__PushHeader h = SLIPWAY__V1__PUSH_HEADER__INIT;
	h.app = "it-bad";
	h.version = "9";
	Slipway__V1__PushRequest hm = SLIPWAY__V1__PUSH_REQUEST__INIT;
	hm.msg_case = SLIPWAY__V1__PUSH_REQUEST__MSG_HEADER;
	hm.header = &h;
	rpc_stream_send(st, &hm.base);
	rpc_stream_send(st, &hm.base);
	rpc_stream_close_send(st);
	assert_int_equal(rpc_stream_finish(st, err, sizeof err), SW_EINVAL);
	/* An empty stream. */
	assert_int_equal(rpc_stream_open(adm, A, "Push", &co, &st, err, sizeof err), 0);
	rpc_stream_close_send(st);
	assert_int_equal(rpc_stream_finish(st, err, sizeof err), SW_EINVAL);

	/* Queries. */
	Slipway__V1__ListVersionsRequest lv = SLIPWAY__V1__LIST_VERSIONS_REQUEST__INIT;
	lv.app = "it-bad";
	lv.page_token = "r1; DROP TABLE releases";
	assert_int_equal(unary(adm, "ListVersions", &lv.base, NULL, err, sizeof err), SW_EINVAL);
	lv.app = "../x";
	lv.page_token = "";
	assert_int_equal(unary(adm, "ListVersions", &lv.base, NULL, err, sizeof err), SW_EINVAL);
	Slipway__V1__StatRequest sq = SLIPWAY__V1__STAT_REQUEST__INIT;
	sq.digest = "sha256:abc";
	assert_int_equal(unary(adm, "Stat", &sq.base, NULL, err, sizeof err), SW_EINVAL);
	sq.digest = "sha256:0000000000000000000000000000000000000000000000000000000000000000";
	assert_int_equal(unary(adm, "Stat", &sq.base, NULL, err, sizeof err), SW_ENOTFOUND);
	struct pulled p;
	assert_int_equal(pull(adm, "it-bad@..", 0, &p, err, sizeof err), SW_EINVAL);
	free(p.data);
	Slipway__V1__GarbageCollectRequest gq = SLIPWAY__V1__GARBAGE_COLLECT_REQUEST__INIT;
	gq.retention_ms = -5;
	assert_int_equal(unary(adm, "GarbageCollect", &gq.base, NULL, err, sizeof err), SW_EINVAL);

	assert_int_equal(sql_count("SELECT count(*) FROM artifact.releases WHERE app = 'it-bad'",
				   NULL),
			 0);
}

static void test_list_pagination(void **state)
{
	(void)state;
	char err[512], ver[16];
	uint8_t data[100];
	for (int i = 1; i <= 5; i++) {
		randombytes_buf(data, sizeof data);
		snprintf(ver, sizeof ver, "1.%d", i);
		push_ok(adm, "it-page", ver, data, sizeof data, NULL, NULL);
	}
	Slipway__V1__ListVersionsRequest q = SLIPWAY__V1__LIST_VERSIONS_REQUEST__INIT;
	q.app = "it-page";
	q.page_size = 2;
	char token[64] = "";
	const char *want[] = { "1.5", "1.4", "1.3", "1.2", "1.1" };
	int seen = 0, pages = 0;
	do {
		q.page_token = token;
		ProtobufCMessage *m = NULL;
		assert_int_equal(unary(adm, "ListVersions", &q.base, &m, err, sizeof err), 0);
		Slipway__V1__ListVersionsResponse *r = (void *)m;
		assert_true(r->n_releases <= 2);
		for (size_t i = 0; i < r->n_releases; i++)
			assert_string_equal(r->releases[i]->version, want[seen++]);
		snprintf(token, sizeof token, "%s", r->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
		pages++;
	} while (token[0] != '\0' && pages < 10);
	assert_int_equal(seen, 5);
	assert_int_equal(pages, 3);

	/* Apps, in name order, paginated. */
	Slipway__V1__ListAppsRequest aq = SLIPWAY__V1__LIST_APPS_REQUEST__INIT;
	aq.page_size = 1;
	token[0] = '\0';
	int found = 0;
	pages = 0;
	char last[64] = "";
	do {
		aq.page_token = token;
		ProtobufCMessage *m = NULL;
		assert_int_equal(unary(adm, "ListApps", &aq.base, &m, err, sizeof err), 0);
		Slipway__V1__ListAppsResponse *r = (void *)m;
		for (size_t i = 0; i < r->n_apps; i++) {
			assert_true(strcmp(r->apps[i], last) > 0);
			snprintf(last, sizeof last, "%s", r->apps[i]);
			found += strcmp(r->apps[i], "it-page") == 0;
		}
		snprintf(token, sizeof token, "%s", r->next_page_token);
		protobuf_c_message_free_unpacked(m, NULL);
	} while (token[0] != '\0' && ++pages < 200);
	assert_int_equal(found, 1);
}

static void test_unknown_user_denied(void **state)
{
	(void)state;
	struct rpc_client *c = h_client(h_env("SLIPWAY_ARTIFACT_ADDR"), ca, nobody_crt, nobody_key);
	uint8_t data[100];
	char err[512];
	randombytes_buf(data, sizeof data);
	assert_int_equal(push(c, "it-authz", "1", data, sizeof data, NULL, NULL, err, sizeof err),
			 SW_EPERM);
	assert_int_equal(resolve(c, "it-web", "1.0.0", NULL, err, sizeof err), SW_EPERM);
	Slipway__V1__GarbageCollectResponse *r = NULL;
	assert_int_equal(gc(c, 1, 0, &r, err, sizeof err), SW_EPERM);
	assert_int_equal(set_pins(c, "it-web", "prod", "", "", err, sizeof err), SW_EPERM);
	struct pulled p;
	assert_int_equal(pull(c, "it-web@1.0.0", 0, &p, err, sizeof err), SW_EPERM);
	free(p.data);
	rpc_client_free(c);
	assert_int_equal(resolve(adm, "it-authz", "1", NULL, err, sizeof err), SW_ENOTFOUND);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_push_pull_roundtrip),
		cmocka_unit_test(test_push_without_digest_spools),
		cmocka_unit_test(test_dedup_and_idempotent_repush),
		cmocka_unit_test(test_releases_are_immutable),
		cmocka_unit_test(test_digest_mismatch_stores_nothing),
		cmocka_unit_test(test_oversize_refused),
		cmocka_unit_test(test_cancel_mid_stream_records_nothing),
		cmocka_unit_test(test_pull_resume),
		cmocka_unit_test(test_tampered_blob_never_served_as_valid),
		cmocka_unit_test(test_signatures),
		cmocka_unit_test(test_s3_down_or_slow_is_unavailable),
		cmocka_unit_test(test_postgres_down_is_unavailable),
		cmocka_unit_test(test_gc),
		cmocka_unit_test(test_gc_races_with_push),
		cmocka_unit_test(test_bad_input_changes_nothing),
		cmocka_unit_test(test_list_pagination),
		cmocka_unit_test(test_unknown_user_denied),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
