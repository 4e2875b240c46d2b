/*
 * artifact.c - `slipway artifact ...`: push, pull, list and inspect
 * releases, pin digests, collect garbage, and make builder signing keys.
 *
 *   slipway artifact push FILE --app A --version V [--repo R] [--commit C]
 *                    [--branch B | --tag T | --ref R] [--build-id ID]
 *                    [--builder NAME] [--media-type T] [--sign KEYFILE]
 *   slipway artifact pull (APP@VERSION | sha256:HEX) [--out FILE] [--resume]
 *   slipway artifact ls [APP] [--limit N] [--page-token T] [--all]
 *   slipway artifact show (APP@VERSION | sha256:HEX)
 *   slipway artifact gc [--dry-run] [--retention DUR]
 *   slipway artifact pin APP ENV [--current DIGEST] [--last-good DIGEST]
 *   slipway artifact keygen --out PREFIX [--name NAME]
 *
 * push hashes the file first and announces its digest and size, so the
 * service streams it to S3 as it arrives and a signature (--sign) can be
 * made before anything is sent: over the provenance statement
 * (lib/provenance.h) that binds app, version, digest and what the flags
 * say about the build. pull writes FILE.part,
 * re-hashes everything it has (a resumed prefix included), and renames it
 * to FILE only when the bytes match the digest; on a mismatch it deletes
 * the partial file and fails loudly. Both draw a progress bar with rate and
 * ETA when stderr is a terminal. Every command takes -o json.
 */
#include "cfg.h"
#include "cli.h"
#include "digest.h"
#include "err.h"
#include "provenance.h"

#include "slipway/v1/artifact.pb-c.h"

#include <sodium.h>

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <getopt.h>
#include <malloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1u << 20)
#define TRANSFER_TIMEOUT_MS (6LL * 3600 * 1000)

static const ProtobufCServiceDescriptor *svc_desc = &slipway__v1__artifact__descriptor;

/* Transfers move 1 MiB messages: keep freed buffers for the next message
 * instead of returning them to the kernel and faulting fresh pages in for
 * every one (a one-command process, so this is only ours). */
static void transfer_malloc_tuning(void)
{
	mallopt(M_MMAP_THRESHOLD, 8 << 20);
	mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

/* A channel for a bulk transfer: like cli_connect (which also loads the TLS
 * material), with a fixed HTTP/2 window so that a pull is not throttled to
 * gRPC's bandwidth-delay estimate. */
static int transfer_connect(struct cli *c, const char *addr, struct rpc_client **out)
{
	struct rpc_client *first = NULL;
	char err[512];
	*out = NULL;
	if (cli_connect(c, "artifact", addr, &first) != 0)
		return CLI_FAIL;
	rpc_client_free(first);
	if (addr == NULL)
		addr = getenv("SLIPWAY_ARTIFACT_ADDR"); /* cli_connect checked it */
	struct rpc_client_opts o = { .target = addr, .ca_pem = c->ca_pem, .cert_pem = c->cert_pem,
				     .key_pem = c->key_pem, .max_msg_bytes = 64u << 20,
				     .stream_window = 8u << 20, .server_service = "artifact" };
	if (rpc_client_new(&o, out, err, sizeof err) != 0)
		return cli_fail("%s", err);
	return 0;
}

/* ---- output helpers ---- */

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static const char *human(uint64_t n, char out[32])
{
	static const char *u[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double v = (double)n;
	int i = 0;
	while (v >= 1024 && i < 4) {
		v /= 1024;
		i++;
	}
	snprintf(out, 32, i == 0 ? "%.0f %s" : "%.1f %s", v, u[i]);
	return out;
}

/* A progress bar on stderr, drawn only when it is a terminal. */
struct progress {
	int on;
	const char *what;
	uint64_t total, base, done;
	double start, last;
};

static void progress_start(struct progress *p, const char *what, uint64_t total, uint64_t base)
{
	memset(p, 0, sizeof *p);
	p->on = cli_tty();
	p->what = what;
	p->total = total;
	p->base = base;
	p->done = base;
	p->start = p->last = now_s();
}

static void progress_draw(struct progress *p, int final)
{
	double t = now_s();
	if (!p->on || (!final && t - p->last < 0.1))
		return;
	p->last = t;
	double el = t - p->start;
	double rate = el > 0 ? (double)(p->done - p->base) / el : 0;
	double pct = p->total ? 100.0 * (double)p->done / (double)p->total : 100.0;
	int width = 28, fill = (int)(pct / 100.0 * width);
	char bar[64], a[32], b[32], eta[32];
	for (int i = 0; i < width; i++)
		bar[i] = i < fill ? '=' : (i == fill ? '>' : ' ');
	bar[width] = '\0';
	if (rate > 0 && p->total > p->done) {
		long s = (long)((double)(p->total - p->done) / rate + 0.5);
		snprintf(eta, sizeof eta, "ETA %ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
	} else {
		snprintf(eta, sizeof eta, final ? "in %.1fs" : "ETA -", el);
	}
	fprintf(stderr, "\r%s [%s] %3.0f%% %s/%s %6.1f MB/s %s\033[K", p->what, bar, pct,
		human(p->done, a), human(p->total, b), rate / 1e6, eta);
	if (final)
		fputc('\n', stderr);
	fflush(stderr);
}

static json_t *provenance_json(const Slipway__V1__Provenance *p)
{
	json_t *j = json_object();
	if (p == NULL)
		return j;
	json_object_set_new(j, "repository", json_string(p->repository));
	json_object_set_new(j, "commit", json_string(p->commit));
	json_object_set_new(j, "ref", json_string(p->ref));
	json_object_set_new(j, "build_id", json_string(p->build_id));
	json_object_set_new(j, "builder", json_string(p->builder));
	json_object_set_new(j, "build_time_unix_ms", json_integer(p->build_time_unix_ms));
	json_object_set_new(j, "signing_key", json_string(p->signing_key));
	json_object_set_new(j, "signed", json_boolean(p->signature.len > 0));
	/* What the artifact service authenticated; the fields above are only
	 * claims unless verified. */
	json_object_set_new(j, "verified", json_boolean(p->verified));
	json_object_set_new(j, "signer", json_string(p->signer));
	json_object_set_new(j, "pusher", json_string(p->pusher));
	json_object_set_new(j, "statement", json_stringn((const char *)p->statement.data,
							 p->statement.len));
	return j;
}

static json_t *release_json(const Slipway__V1__Release *r)
{
	json_t *j = json_object();
	json_object_set_new(j, "app", json_string(r->app));
	json_object_set_new(j, "version", json_string(r->version));
	json_object_set_new(j, "digest", json_string(r->digest));
	json_object_set_new(j, "size_bytes", json_integer((json_int_t)r->size_bytes));
	json_object_set_new(j, "media_type", json_string(r->media_type));
	json_object_set_new(j, "pushed_by", json_string(r->pushed_by));
	json_object_set_new(j, "created_unix_ms", json_integer(r->created_unix_ms));
	json_object_set_new(j, "signature_verified", json_boolean(r->signature_verified));
	json_object_set_new(j, "signature_required", json_boolean(r->signature_required));
	json_object_set_new(j, "provenance", provenance_json(r->provenance));
	return j;
}

static void print_release(const Slipway__V1__Release *r)
{
	char t[32], sz[32];
	const Slipway__V1__Provenance *p = r->provenance;
	printf("release     %s@%s\n", r->app, r->version);
	printf("digest      %s\n", r->digest);
	printf("size        %s (%llu bytes)\n", human(r->size_bytes, sz),
	       (unsigned long long)r->size_bytes);
	printf("media type  %s\n", r->media_type);
	printf("pushed by   %s at %s\n", r->pushed_by, cli_time(r->created_unix_ms, t));
	if (p != NULL) {
		printf("repository  %s\n", p->repository[0] ? p->repository : "-");
		printf("commit      %s\n", p->commit[0] ? p->commit : "-");
		printf("ref         %s\n", p->ref[0] ? p->ref : "-");
		printf("build       %s by %s at %s\n", p->build_id[0] ? p->build_id : "-",
		       p->builder[0] ? p->builder : "-", cli_time(p->build_time_unix_ms, t));
	}
	printf("signature   %s\n", r->signature_verified
				       ? (p && p->signing_key[0] ? p->signing_key : "verified")
				       : "none");
	if (r->signature_verified && p != NULL)
		printf("            the provenance statement verified with trusted key %s%s%s\n",
		       p->signing_key, p->signer[0] ? ", owned by " : "", p->signer);
	else
		printf("            unsigned: repository, commit, ref and builder are the pusher's "
		       "claims%s\n",
		       r->signature_required ? "; this app requires signatures: it will not deploy"
					     : "");
}

/* ---- keys ---- */

struct signing_key {
	char name[65];
	unsigned char *sk; /* sodium_malloc, crypto_sign_SECRETKEYBYTES */
};

static void key_free(struct signing_key *k)
{
	if (k->sk != NULL)
		sodium_free(k->sk);
	k->sk = NULL;
}

static int key_load(const char *path, struct signing_key *k)
{
	char line[512];
	int have = 0, rc = CLI_FAIL;
	struct stat st;
	memset(k, 0, sizeof *k);
	if (sodium_init() < 0)
		return cli_fail("libsodium failed to initialise");
	FILE *f = fopen(path, "r");
	if (f == NULL)
		return cli_fail("--sign %s: %s", path, strerror(errno));
	if (fstat(fileno(f), &st) != 0 || (st.st_mode & 077) != 0) {
		fclose(f);
		return cli_fail("--sign %s: the signing key must be readable by its owner only "
				"(chmod 600)",
				path);
	}
	k->sk = sodium_malloc(crypto_sign_SECRETKEYBYTES);
	if (k->sk == NULL) {
		fclose(f);
		return cli_fail("out of memory");
	}
	while (fgets(line, sizeof line, f) != NULL) {
		char *nl = strpbrk(line, "\r\n");
		if (nl)
			*nl = '\0';
		if (strncmp(line, "name ", 5) == 0) {
			if (strlen(line + 5) < sizeof k->name)
				memcpy(k->name, line + 5, strlen(line + 5) + 1);
		} else if (strncmp(line, "secret ", 7) == 0) {
			size_t n = 0;
			if (sodium_base642bin(k->sk, crypto_sign_SECRETKEYBYTES, line + 7,
					      strlen(line + 7), NULL, &n, NULL,
					      sodium_base64_VARIANT_ORIGINAL) == 0 &&
			    n == crypto_sign_SECRETKEYBYTES)
				have = 1;
		}
		sodium_memzero(line, sizeof line);
	}
	fclose(f);
	if (!have || k->name[0] == '\0')
		cli_fail("--sign %s: not a slipway signing key (want 'name' and 'secret' lines; "
			 "see slipway artifact keygen)",
			 path);
	else
		rc = CLI_OK;
	if (rc != CLI_OK)
		key_free(k);
	return rc;
}

static const struct cli_opt keygen_opts[] = {
	{ "out", required_argument, 'o', "PREFIX", "write PREFIX.key and PREFIX.pub" },
	{ "name", required_argument, 'n', "NAME", "the key's name (default: the prefix's file name)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_keygen(struct cli *c, int argc, char **argv)
{
	const char *prefix = NULL, *name = NULL;
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		if (o == 'o')
			prefix = optarg;
		else if (o == 'n')
			name = optarg;
		else
			return CLI_USAGE;
	}
	if (prefix == NULL)
		return cli_usage_cmd(c);
	if (name == NULL) {
		const char *slash = strrchr(prefix, '/');
		name = slash ? slash + 1 : prefix;
	}
	for (const char *p = name; *p; p++)
		if (!((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		      (*p >= '0' && *p <= '9') || *p == '.' || *p == '_' || *p == '-'))
			return cli_usage("--name: 1-64 of [A-Za-z0-9._-]");
	if (name[0] == '\0' || strlen(name) > 64)
		return cli_usage("--name: 1-64 of [A-Za-z0-9._-]");
	if (sodium_init() < 0)
		return cli_fail("libsodium failed to initialise");

	unsigned char pk[crypto_sign_PUBLICKEYBYTES];
	unsigned char *sk = sodium_malloc(crypto_sign_SECRETKEYBYTES);
	char *b64 = sodium_malloc(sodium_base64_ENCODED_LEN(crypto_sign_SECRETKEYBYTES,
							     sodium_base64_VARIANT_ORIGINAL));
	char pk64[sodium_base64_ENCODED_LEN(crypto_sign_PUBLICKEYBYTES,
					    sodium_base64_VARIANT_ORIGINAL)];
	char path[4096], pubpath[4096];
	int rc = CLI_FAIL, fd = -1;
	FILE *f = NULL;
	if (sk == NULL || b64 == NULL) {
		rc = cli_fail("out of memory");
		goto out;
	}
	crypto_sign_keypair(pk, sk);
	sodium_bin2base64(b64, sodium_base64_ENCODED_LEN(crypto_sign_SECRETKEYBYTES,
							 sodium_base64_VARIANT_ORIGINAL),
			  sk, crypto_sign_SECRETKEYBYTES, sodium_base64_VARIANT_ORIGINAL);
	sodium_bin2base64(pk64, sizeof pk64, pk, sizeof pk, sodium_base64_VARIANT_ORIGINAL);
	snprintf(path, sizeof path, "%s.key", prefix);
	snprintf(pubpath, sizeof pubpath, "%s.pub", prefix);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (fd < 0) {
		rc = cli_fail("%s: %s", path, strerror(errno));
		goto out;
	}
	f = fdopen(fd, "w");
	if (f == NULL) {
		rc = cli_fail("%s: %s", path, strerror(errno));
		goto out;
	}
	fd = -1;
	fprintf(f, "# slipway builder signing key (Ed25519): keep it secret\nname %s\nsecret %s\n",
		name, b64);
	if (fclose(f) != 0) {
		f = NULL;
		rc = cli_fail("%s: write failed", path);
		goto out;
	}
	f = fopen(pubpath, "w");
	if (f == NULL) {
		rc = cli_fail("%s: %s", pubpath, strerror(errno));
		goto out;
	}
	fprintf(f, "key * %s %s\n", name, pk64);
	if (fclose(f) != 0) {
		f = NULL;
		rc = cli_fail("%s: write failed", pubpath);
		goto out;
	}
	f = NULL;
	if (c->output == CLI_JSON) {
		cli_print_json(json_pack("{s:s,s:s,s:s,s:s}", "name", name, "secret_key_file", path,
					 "public_key_file", pubpath, "public_key", pk64));
	} else {
		printf("wrote %s (secret, 0600) and %s\n", path, pubpath);
		printf("trust it on the artifact service (and agents) with this --trusted-keys line "
		       "(replace * with an app to narrow it, and append the SPIFFE ID of whoever "
		       "holds the key, so that they cannot approve what it signs):\n  key * %s %s\n",
		       name, pk64);
	}
	rc = CLI_OK;
out:
	if (f != NULL)
		fclose(f);
	if (fd >= 0)
		close(fd);
	if (sk != NULL)
		sodium_free(sk);
	if (b64 != NULL)
		sodium_free(b64);
	return rc;
}

/* ---- push ---- */

static const struct cli_opt push_opts[] = {
	{ "app", required_argument, 'a', "APP", "the app" },
	{ "version", required_argument, 'V', "VERSION", "the release's version" },
	{ "repo", required_argument, 'r', "URL", "the source repository (provenance)" },
	{ "commit", required_argument, 'c', "SHA", "the source commit (provenance)" },
	{ "branch", required_argument, 'b', "BRANCH", "the source branch (provenance)" },
	{ "tag", required_argument, 't', "TAG", "the source tag (provenance)" },
	{ "ref", required_argument, 'R', "REF", "another source ref (provenance)" },
	{ "build-id", required_argument, 'i', "ID", "the CI build id (provenance)" },
	{ "builder", required_argument, 'B', "NAME", "who built it (provenance)" },
	{ "media-type", required_argument, 'm', "TYPE", "the artifact's media type" },
	{ "sign", required_argument, 's', "KEYFILE", "sign the provenance statement with this builder key" },
	{ "addr", required_argument, 'A', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_push(struct cli *c, int argc, char **argv)
{
	const char *app = NULL, *version = NULL, *repo = "", *commit = "", *build_id = "",
		   *builder = "", *media = "", *keyfile = NULL, *addr = NULL;
	char ref[300] = "";
	int o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'a': app = optarg; break;
		case 'V': version = optarg; break;
		case 'r': repo = optarg; break;
		case 'c': commit = optarg; break;
		case 'b': snprintf(ref, sizeof ref, "refs/heads/%s", optarg); break;
		case 't': snprintf(ref, sizeof ref, "refs/tags/%s", optarg); break;
		case 'R': snprintf(ref, sizeof ref, "%s", optarg); break;
		case 'i': build_id = optarg; break;
		case 'B': builder = optarg; break;
		case 'm': media = optarg; break;
		case 's': keyfile = optarg; break;
		case 'A': addr = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (optind + 1 != argc || app == NULL || version == NULL)
		return cli_usage_cmd(c);
	const char *file = argv[optind];
	int fd = -1, rc = CLI_FAIL;
	transfer_malloc_tuning();
	uint8_t *buf = NULL, sha[DIGEST_SHA256_LEN], sig[crypto_sign_BYTES];
	char digest[DIGEST_STR_LEN], err[512], what[256];
	struct signing_key key;
	struct rpc_client *cl = NULL;
	struct rpc_stream *st = NULL;
	ProtobufCMessage *resp = NULL;
	uint64_t size = 0;
	struct stat sb;

	memset(&key, 0, sizeof key);
	if (keyfile != NULL && key_load(keyfile, &key) != CLI_OK)
		return CLI_FAIL;
	fd = open(file, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
		rc = cli_fail("%s: %s", file, fd < 0 ? strerror(errno) : "not a regular file");
		goto out;
	}
	/* Hash first: the digest goes in the header (and under the signature). */
	if (digest_sha256_fd(fd, 0, sha, &size, err, sizeof err) != 0) {
		rc = cli_fail("%s: %s", file, err);
		goto out;
	}
	digest_format(sha, digest);
	if (lseek(fd, 0, SEEK_SET) != 0) {
		rc = cli_fail("%s: %s", file, strerror(errno));
		goto out;
	}
	/* The statement the key signs: what the flags say about this build,
	 * bound to app, version and digest (lib/provenance.h). */
	struct prov_statement stmt;
	char stext[PROV_STATEMENT_MAX];
	size_t slen = 0;
	struct timespec rt;
	clock_gettime(CLOCK_REALTIME, &rt);
	int64_t build_ms = (int64_t)rt.tv_sec * 1000 + rt.tv_nsec / 1000000;
	if (key.sk != NULL) {
		memset(&stmt, 0, sizeof stmt);
		if (strlen(app) >= sizeof stmt.app || strlen(version) >= sizeof stmt.version ||
		    strlen(repo) >= sizeof stmt.repository || strlen(commit) >= sizeof stmt.commit ||
		    strlen(ref) >= sizeof stmt.ref || strlen(builder) >= sizeof stmt.builder ||
		    strlen(build_id) >= sizeof stmt.build_id) {
			rc = cli_fail("--sign: a provenance field is too long to sign");
			goto out;
		}
		snprintf(stmt.app, sizeof stmt.app, "%s", app);
		snprintf(stmt.version, sizeof stmt.version, "%s", version);
		snprintf(stmt.digest, sizeof stmt.digest, "%s", digest);
		snprintf(stmt.repository, sizeof stmt.repository, "%s", repo);
		snprintf(stmt.commit, sizeof stmt.commit, "%s", commit);
		snprintf(stmt.ref, sizeof stmt.ref, "%s", ref);
		snprintf(stmt.builder, sizeof stmt.builder, "%s", builder);
		snprintf(stmt.build_id, sizeof stmt.build_id, "%s", build_id);
		stmt.build_time_ms = build_ms;
		if (prov_encode(&stmt, stext, sizeof stext, &slen, err, sizeof err) != 0) {
			rc = cli_fail("--sign: %s", err);
			goto out;
		}
		crypto_sign_detached(sig, NULL, (const unsigned char *)stext, slen, key.sk);
	}

	if (transfer_connect(c, addr, &cl) != 0)
		goto out;
	struct rpc_call_opts co = cli_call_opts(c);
	if (co.timeout_ms < TRANSFER_TIMEOUT_MS)
		co.timeout_ms = TRANSFER_TIMEOUT_MS;
	if (rpc_stream_open(cl, svc_desc, "Push", &co, &st, err, sizeof err) != 0) {
		rc = cli_fail("push: %s", err);
		goto out;
	}
	Slipway__V1__Provenance pv = SLIPWAY__V1__PROVENANCE__INIT;
	pv.repository = (char *)repo;
	pv.commit = (char *)commit;
	pv.ref = ref;
	pv.build_id = (char *)build_id;
	pv.builder = (char *)builder;
	pv.build_time_unix_ms = build_ms;
	if (key.sk != NULL) {
		pv.signature.data = sig;
		pv.signature.len = sizeof sig;
		pv.signing_key = key.name;
		pv.statement.data = (uint8_t *)stext;
		pv.statement.len = slen;
	}
	Slipway__V1__PushHeader h = SLIPWAY__V1__PUSH_HEADER__INIT;
	h.app = (char *)app;
	h.version = (char *)version;
	h.media_type = (char *)media;
	h.provenance = &pv;
	h.expected_digest = digest;
	h.size_hint = size;
	Slipway__V1__PushRequest req = SLIPWAY__V1__PUSH_REQUEST__INIT;
	req.msg_case = SLIPWAY__V1__PUSH_REQUEST__MSG_HEADER;
	req.header = &h;
	int sent_ok = rpc_stream_send(st, &req.base) == 0;

	buf = malloc(CHUNK);
	if (buf == NULL) {
		rc = cli_fail("out of memory");
		goto out;
	}
	struct progress pg;
	snprintf(what, sizeof what, "push %s@%s", app, version);
	progress_start(&pg, what, size, 0);
	uint64_t done = 0;
	while (sent_ok && done < size) {
		ssize_t n = read(fd, buf, CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rpc_stream_cancel(st);
			rc = cli_fail("%s: read failed: %s", file, n < 0 ? strerror(errno)
									 : "file shrank during the push");
			goto out;
		}
		Slipway__V1__PushRequest ch = SLIPWAY__V1__PUSH_REQUEST__INIT;
		ch.msg_case = SLIPWAY__V1__PUSH_REQUEST__MSG_CHUNK;
		ch.chunk.data = buf;
		ch.chunk.len = (size_t)n;
		sent_ok = rpc_stream_send(st, &ch.base) == 0;
		done += (uint64_t)n;
		pg.done = done;
		progress_draw(&pg, 0);
	}
	if (sent_ok) {
		pg.done = done;
		progress_draw(&pg, 1);
		rpc_stream_close_send(st);
	} else if (pg.on) {
		fputc('\n', stderr);
	}
	int got = rpc_stream_recv(st, &resp);
	int frc = rpc_stream_finish(st, err, sizeof err);
	st = NULL;
	if (frc != 0) {
		/* exit 3 when denied, 4 when unreachable, like every command */
		rc = cli_fail_rc(frc, "push %s@%s failed: %s", app, version, err);
		goto out;
	}
	if (got != 1 || resp == NULL) {
		rc = cli_fail("push %s@%s: no response", app, version);
		goto out;
	}
	Slipway__V1__PushResponse *r = (void *)resp;
	if (r->release == NULL) {
		rc = cli_fail("push: empty response");
		goto out;
	}
	if (strcmp(r->release->digest, digest) != 0) {
		rc = cli_fail("push: the service recorded %s, the file is %s", r->release->digest,
			      digest);
		goto out;
	}
	if (c->output == CLI_JSON) {
		json_t *j = release_json(r->release);
		json_object_set_new(j, "deduplicated", json_boolean(r->deduplicated));
		json_object_set_new(j, "release_existed", json_boolean(r->release_existed));
		cli_print_json(j);
	} else {
		print_release(r->release);
		printf("stored      %s%s\n", r->deduplicated ? "deduplicated (bytes already stored)"
							    : "uploaded",
		       r->release_existed ? "; the release already existed with this digest" : "");
	}
	rc = CLI_OK;
out:
	if (st != NULL) {
		rpc_stream_cancel(st);
		rpc_stream_finish(st, err, sizeof err);
	}
	if (resp != NULL)
		protobuf_c_message_free_unpacked(resp, NULL);
	rpc_client_free(cl);
	free(buf);
	if (fd >= 0)
		close(fd);
	key_free(&key);
	sodium_memzero(sig, sizeof sig);
	return rc;
}

/* ---- pull ---- */

/* Parses APP@VERSION or a digest. */
static int parse_target(const char *t, char *app, size_t applen, char *version, size_t vlen,
			int *is_digest)
{
	*is_digest = 0;
	if (strncmp(t, "sha256:", 7) == 0) {
		if (digest_parse(t, NULL) != 0)
			return cli_usage("%s: a digest is sha256:<64 lower-case hex>", t);
		*is_digest = 1;
		return 0;
	}
	const char *at = strchr(t, '@');
	if (at == NULL || at == t || at[1] == '\0' || (size_t)(at - t) >= applen ||
	    strlen(at + 1) >= vlen)
		return cli_usage("%s: want APP@VERSION or sha256:<hex>", t);
	snprintf(app, applen, "%.*s", (int)(at - t), t);
	snprintf(version, vlen, "%s", at + 1);
	return 0;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* The pull's disk side: a second thread hashes and writes the chunks while
 * the main thread receives the next ones. It owns each queued message. */
#define SINK_QUEUE 4

struct sink {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	ProtobufCMessage *q[SINK_QUEUE];
	int head, count, closed;
	int fd;
	struct digest *sha;
	uint64_t written;   /* bytes on disk (writer thread; read after join) */
	int err;            /* errno of a failed write */
};

static void *sink_main(void *arg)
{
	struct sink *k = arg;
	for (;;) {
		pthread_mutex_lock(&k->mu);
		while (k->count == 0 && !k->closed)
			pthread_cond_wait(&k->cv, &k->mu);
		if (k->count == 0) {
			pthread_mutex_unlock(&k->mu);
			return NULL;
		}
		ProtobufCMessage *m = k->q[k->head];
		k->head = (k->head + 1) % SINK_QUEUE;
		k->count--;
		pthread_cond_broadcast(&k->cv);
		pthread_mutex_unlock(&k->mu);
		Slipway__V1__PullResponse *pr = (void *)m;
		if (k->err == 0) {
			if (write_all(k->fd, pr->chunk.data, pr->chunk.len) != 0)
				k->err = errno ? errno : EIO;
			else {
				digest_update(k->sha, pr->chunk.data, pr->chunk.len);
				k->written += pr->chunk.len;
			}
		}
		protobuf_c_message_free_unpacked(m, NULL);
	}
}

/* Queues m for the writer (blocks while the queue is full). Returns the
 * writer's errno once a write failed (m is then freed here), else 0. */
static int sink_put(struct sink *k, ProtobufCMessage *m)
{
	pthread_mutex_lock(&k->mu);
	while (k->count == SINK_QUEUE)
		pthread_cond_wait(&k->cv, &k->mu);
	int e = k->err;
	if (e == 0) {
		k->q[(k->head + k->count) % SINK_QUEUE] = m;
		k->count++;
		pthread_cond_broadcast(&k->cv);
	}
	pthread_mutex_unlock(&k->mu);
	if (e != 0)
		protobuf_c_message_free_unpacked(m, NULL);
	return e;
}

/* Lets the writer finish what is queued and joins it. */
static void sink_close(struct sink *k, pthread_t t)
{
	pthread_mutex_lock(&k->mu);
	k->closed = 1;
	pthread_cond_broadcast(&k->cv);
	pthread_mutex_unlock(&k->mu);
	pthread_join(t, NULL);
}

static const struct cli_opt pull_opts[] = {
	{ "out", required_argument, 'o', "FILE", "write to FILE (also -O FILE; default APP-VERSION)" },
	{ "resume", no_argument, 'r', NULL, "continue a partial download (FILE.part)" },
	{ "addr", required_argument, 'A', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_pull(struct cli *c, int argc, char **argv)
{
	const char *out = NULL, *addr = NULL;
	int resume = 0, o;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'o':
		case 'O': out = optarg; break;
		case 'r': resume = 1; break;
		case 'A': addr = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (optind + 1 != argc)
		return cli_usage_cmd(c);
	const char *target = argv[optind];
	char app[64], version[160], defout[256], part[4200], err[512], what[300];
	char want[DIGEST_STR_LEN] = "", got_digest[DIGEST_STR_LEN];
	int is_digest, rc = CLI_FAIL, fd = -1;
	struct rpc_client *cl = NULL;
	struct rpc_stream *st = NULL;
	struct digest sha = { 0 };
	uint64_t offset = 0, size = 0, written = 0;
	int status_ok = 0, mismatch = 0;

	if ((rc = parse_target(target, app, sizeof app, version, sizeof version, &is_digest)) != 0)
		return rc;
	rc = CLI_FAIL;
	transfer_malloc_tuning();
	if (out == NULL) {
		if (is_digest)
			snprintf(defout, sizeof defout, "sha256-%.64s", target + 7);
		else
			snprintf(defout, sizeof defout, "%s-%s", app, version);
		out = defout;
	}
	snprintf(part, sizeof part, "%s.part", out);
	if (digest_init(&sha, DIGEST_SHA256) != 0)
		return cli_fail("out of memory");
	fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC | (resume ? 0 : O_TRUNC), 0644);
	if (fd < 0) {
		rc = cli_fail("%s: %s", part, strerror(errno));
		goto out;
	}
	if (resume) {
		/* Re-hash what we already have: it is verified with the rest. */
		if (digest_sha256_fd(fd, 0, (uint8_t[32]){ 0 }, &offset, err, sizeof err) != 0) {
			rc = cli_fail("%s: %s", part, err);
			goto out;
		}
		if (lseek(fd, 0, SEEK_SET) != 0) {
			rc = cli_fail("%s: %s", part, strerror(errno));
			goto out;
		}
		uint8_t *b = malloc(CHUNK);
		uint64_t left = offset;
		while (b != NULL && left > 0) {
			ssize_t n = read(fd, b, left < CHUNK ? (size_t)left : CHUNK);
			if (n <= 0)
				break;
			digest_update(&sha, b, (size_t)n);
			left -= (uint64_t)n;
		}
		free(b);
		if (left != 0) {
			rc = cli_fail("%s: cannot re-read the partial file", part);
			goto out;
		}
	}
	if (transfer_connect(c, addr, &cl) != 0)
		goto out;
	struct rpc_call_opts co = cli_call_opts(c);
	if (co.timeout_ms < TRANSFER_TIMEOUT_MS)
		co.timeout_ms = TRANSFER_TIMEOUT_MS;
	if (rpc_stream_open(cl, svc_desc, "Pull", &co, &st, err, sizeof err) != 0) {
		rc = cli_fail("pull: %s", err);
		goto out;
	}
	Slipway__V1__PullRequest req = SLIPWAY__V1__PULL_REQUEST__INIT;
	Slipway__V1__ReleaseRef ref = SLIPWAY__V1__RELEASE_REF__INIT;
	if (is_digest) {
		req.target_case = SLIPWAY__V1__PULL_REQUEST__TARGET_DIGEST;
		req.digest = (char *)target;
		snprintf(want, sizeof want, "%s", target);
	} else {
		ref.app = app;
		ref.version = version;
		req.target_case = SLIPWAY__V1__PULL_REQUEST__TARGET_RELEASE;
		req.release = &ref;
	}
	req.offset = offset;
	rpc_stream_send(st, &req.base);
	rpc_stream_close_send(st);

	struct progress pg;
	int have_info = 0, write_err = 0;
	uint64_t received = offset;
	struct sink k = { .fd = fd, .sha = &sha, .written = offset };
	pthread_t writer;
	pthread_mutex_init(&k.mu, NULL);
	pthread_cond_init(&k.cv, NULL);
	if (pthread_create(&writer, NULL, sink_main, &k) != 0) {
		rc = cli_fail("cannot start the writer thread");
		goto out;
	}
	for (;;) {
		ProtobufCMessage *m = NULL;
		int r = rpc_stream_recv(st, &m);
		if (r != 1)
			break;
		Slipway__V1__PullResponse *pr = (void *)m;
		if (pr->msg_case == SLIPWAY__V1__PULL_RESPONSE__MSG_INFO && !have_info &&
		    pr->info != NULL) {
			have_info = 1;
			size = pr->info->size_bytes;
			if (digest_parse(pr->info->digest, NULL) != 0 ||
			    (want[0] && strcmp(want, pr->info->digest) != 0)) {
				protobuf_c_message_free_unpacked(m, NULL);
				mismatch = 1;
				snprintf(got_digest, sizeof got_digest, "%s", "(a different blob)");
				break;
			}
			snprintf(want, sizeof want, "%s", pr->info->digest);
			snprintf(what, sizeof what, "pull %s", is_digest ? "blob" : target);
			progress_start(&pg, what, size, offset);
		} else if (pr->msg_case == SLIPWAY__V1__PULL_RESPONSE__MSG_CHUNK && have_info) {
			if (received + pr->chunk.len > size) {
				protobuf_c_message_free_unpacked(m, NULL);
				mismatch = 1;
				snprintf(got_digest, sizeof got_digest, "%s", "(more bytes than announced)");
				break;
			}
			received += pr->chunk.len;
			if ((write_err = sink_put(&k, m)) != 0)
				break;
			pg.done = received;
			progress_draw(&pg, 0);
			continue; /* the writer owns m now */
		}
		protobuf_c_message_free_unpacked(m, NULL);
	}
	sink_close(&k, writer);
	pthread_mutex_destroy(&k.mu);
	pthread_cond_destroy(&k.cv);
	written = k.written;
	if (write_err == 0)
		write_err = k.err;
	if (write_err != 0) {
		rpc_stream_cancel(st);
		rpc_stream_finish(st, err, sizeof err);
		st = NULL;
		rc = cli_fail("%s: %s", part, strerror(write_err));
		goto out;
	}
	if (mismatch)
		rpc_stream_cancel(st);
	int frc = rpc_stream_finish(st, err, sizeof err);
	st = NULL;
	if (have_info && pg.on)
		progress_draw(&pg, 1);
	status_ok = frc == 0;
	if (!status_ok && !mismatch) {
		if (frc == SW_EDATALOSS) {
			/* The service refused to serve damaged bytes: drop them. */
			unlink(part);
			rc = cli_fail("pull %s: the stored artifact is DAMAGED and was not "
				      "accepted: %s",
				      target, err);
		} else {
			rc = cli_fail("pull %s failed: %s%s", target, err,
				      written > offset ? " (run again with --resume to continue)" : "");
		}
		goto out;
	}
	if (!have_info) {
		rc = cli_fail("pull %s: the service sent no blob information", target);
		goto out;
	}
	if (!mismatch) {
		uint8_t d[DIGEST_SHA256_LEN];
		digest_final(&sha, d);
		digest_format(d, got_digest);
		mismatch = written != size || strcmp(got_digest, want) != 0;
	}
	if (mismatch) {
		unlink(part);
		fprintf(stderr,
			"slipway: DIGEST MISMATCH pulling %s\n"
			"slipway:   expected %s (%llu bytes)\n"
			"slipway:   received %s (%llu bytes)\n"
			"slipway: the download was deleted; do not use it\n",
			target, want, (unsigned long long)size, got_digest,
			(unsigned long long)written);
		rc = CLI_FAIL;
		goto out;
	}
	if (fsync(fd) != 0 || rename(part, out) != 0) {
		rc = cli_fail("%s: %s", out, strerror(errno));
		goto out;
	}
	if (c->output == CLI_JSON) {
		cli_print_json(json_pack("{s:s,s:I,s:s,s:b,s:I}", "digest", want, "size_bytes",
					 (json_int_t)size, "path", out, "verified", 1,
					 "resumed_from", (json_int_t)offset));
	} else {
		char h[32];
		printf("pulled %s (%s) to %s: digest verified%s\n", want, human(size, h), out,
		       offset ? " (resumed)" : "");
	}
	rc = CLI_OK;
out:
	if (st != NULL) {
		rpc_stream_cancel(st);
		rpc_stream_finish(st, err, sizeof err);
	}
	digest_cleanup(&sha);
	if (fd >= 0)
		close(fd);
	rpc_client_free(cl);
	return rc;
}

/* ---- queries ---- */

static int call(struct cli *c, struct rpc_client *cl, const char *method,
		const ProtobufCMessage *req, ProtobufCMessage **resp)
{
	char err[512];
	struct rpc_call_opts co = cli_call_opts(c);
	int rc = rpc_call(cl, svc_desc, method, req, resp, &co, err, sizeof err);
	if (rc != 0)
		return cli_fail_rc(rc, "%s: %s", method, err);
	return 0;
}

static const struct cli_opt ls_opts[] = {
	{ "limit", required_argument, 'l', "N", "page size" },
	{ "page-token", required_argument, 'p', "TOKEN", "continue from the token a previous page printed" },
	{ "all", no_argument, 'a', NULL, "every page, not just the first" },
	{ "addr", required_argument, 'A', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_ls(struct cli *c, int argc, char **argv)
{
	const char *token = "", *addr = NULL;
	long long limit = 0;
	int all = 0, o, rc = CLI_FAIL;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'l':
			if (cfg_parse_ll(optarg, &limit) != 0 || limit < 1 || limit > 500)
				return cli_usage("--limit wants 1..500");
			break;
		case 'p': token = optarg; break;
		case 'a': all = 1; break;
		case 'A': addr = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (optind + 1 < argc)
		return cli_usage_cmd(c);
	const char *app = optind < argc ? argv[optind] : NULL;
	struct rpc_client *cl = NULL;
	if (cli_connect(c, "artifact", addr, &cl) != 0)
		return CLI_FAIL;
	json_t *items = json_array();
	char next[128] = "";
	snprintf(next, sizeof next, "%s", token);
	int first = 1;
	struct cli_table tab;
	cli_table_init(&tab, "llrlll", "VERSION", "DIGEST", "SIZE", "CREATED", "COMMIT",
		       "PUSHED BY");
	do {
		ProtobufCMessage *resp = NULL;
		if (app != NULL) {
			Slipway__V1__ListVersionsRequest req = SLIPWAY__V1__LIST_VERSIONS_REQUEST__INIT;
			req.app = (char *)app;
			req.page_size = (uint32_t)limit;
			req.page_token = next;
			if ((rc = call(c, cl, "ListVersions", &req.base, &resp)) != 0)
				goto out;
			Slipway__V1__ListVersionsResponse *r = (void *)resp;
			for (size_t i = 0; i < r->n_releases; i++) {
				const Slipway__V1__Release *x = r->releases[i];
				if (c->output == CLI_JSON) {
					json_array_append_new(items, release_json(x));
					continue;
				}
				char t[32], h[32], digest[20], commit[11], by[300];
				snprintf(digest, sizeof digest, "%.19s", x->digest);
				snprintf(commit, sizeof commit, "%.10s",
					 x->provenance && x->provenance->commit[0]
						 ? x->provenance->commit
						 : "-");
				snprintf(by, sizeof by, "%s%s", x->pushed_by,
					 x->signature_verified ? " (signed)" : "");
				cli_table_row(&tab, x->version, digest, human(x->size_bytes, h),
					      cli_time(x->created_unix_ms, t), commit, by);
			}
			snprintf(next, sizeof next, "%s", r->next_page_token);
		} else {
			Slipway__V1__ListAppsRequest req = SLIPWAY__V1__LIST_APPS_REQUEST__INIT;
			req.page_size = (uint32_t)limit;
			req.page_token = next;
			if ((rc = call(c, cl, "ListApps", &req.base, &resp)) != 0)
				goto out;
			Slipway__V1__ListAppsResponse *r = (void *)resp;
			if (c->output != CLI_JSON && first)
				printf("APP\n");
			for (size_t i = 0; i < r->n_apps; i++) {
				if (c->output == CLI_JSON)
					json_array_append_new(items, json_string(r->apps[i]));
				else
					printf("%s\n", r->apps[i]);
			}
			snprintf(next, sizeof next, "%s", r->next_page_token);
		}
		protobuf_c_message_free_unpacked(resp, NULL);
		first = 0;
	} while (all && next[0] != '\0');
	if (c->output == CLI_JSON) {
		json_t *j = json_object();
		json_object_set_new(j, app ? "releases" : "apps", items);
		items = NULL;
		json_object_set_new(j, "next_page_token", json_string(next));
		cli_print_json(j);
	} else {
		if (app != NULL)
			cli_table_print(&tab, stdout);
		if (next[0] != '\0')
			printf("(more: --page-token %s, or --all)\n", next);
	}
	rc = CLI_OK;
out:
	cli_table_free(&tab);
	json_decref(items);
	rpc_client_free(cl);
	return rc;
}

static const struct cli_opt show_opts[] = {
	{ "addr", required_argument, 'A', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_show(struct cli *c, int argc, char **argv)
{
	const char *addr = NULL;
	int o, rc = CLI_FAIL, is_digest;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		if (o == 'A')
			addr = optarg;
		else
			return CLI_USAGE;
	}
	if (optind + 1 != argc)
		return cli_usage_cmd(c);
	const char *target = argv[optind];
	char app[64], version[160];
	if ((rc = parse_target(target, app, sizeof app, version, sizeof version, &is_digest)) != 0)
		return rc;
	rc = CLI_FAIL;
	struct rpc_client *cl = NULL;
	ProtobufCMessage *r1 = NULL, *r2 = NULL;
	if (cli_connect(c, "artifact", addr, &cl) != 0)
		return CLI_FAIL;
	if (!is_digest) {
		Slipway__V1__ResolveRequest req = SLIPWAY__V1__RESOLVE_REQUEST__INIT;
		req.app = app;
		req.version = version;
		if ((rc = call(c, cl, "Resolve", &req.base, &r1)) != 0)
			goto out;
		if (c->output == CLI_JSON)
			cli_print_json(release_json((void *)r1));
		else
			print_release((void *)r1);
		rc = CLI_OK;
		goto out;
	}
	Slipway__V1__StatRequest sreq = SLIPWAY__V1__STAT_REQUEST__INIT;
	sreq.digest = (char *)target;
	if ((rc = call(c, cl, "Stat", &sreq.base, &r1)) != 0)
		goto out;
	Slipway__V1__GetProvenanceRequest preq = SLIPWAY__V1__GET_PROVENANCE_REQUEST__INIT;
	preq.digest = (char *)target;
	if ((rc = call(c, cl, "GetProvenance", &preq.base, &r2)) != 0)
		goto out;
	Slipway__V1__BlobInfo *bi = (void *)r1;
	Slipway__V1__GetProvenanceResponse *pr = (void *)r2;
	if (c->output == CLI_JSON) {
		json_t *j = json_object(), *rels = json_array();
		json_object_set_new(j, "digest", json_string(bi->digest));
		json_object_set_new(j, "size_bytes", json_integer((json_int_t)bi->size_bytes));
		json_object_set_new(j, "media_type", json_string(bi->media_type));
		json_object_set_new(j, "created_unix_ms", json_integer(bi->created_unix_ms));
		for (size_t i = 0; i < pr->n_releases; i++)
			json_array_append_new(rels, release_json(pr->releases[i]));
		json_object_set_new(j, "releases", rels);
		cli_print_json(j);
	} else {
		char t[32], h[32];
		printf("digest      %s\nsize        %s (%llu bytes)\nmedia type  %s\nstored      %s\n",
		       bi->digest, human(bi->size_bytes, h), (unsigned long long)bi->size_bytes,
		       bi->media_type, cli_time(bi->created_unix_ms, t));
		printf("releases    %zu\n", pr->n_releases);
		for (size_t i = 0; i < pr->n_releases; i++) {
			const Slipway__V1__Release *x = pr->releases[i];
			const Slipway__V1__Provenance *p = x->provenance;
			printf("  %s@%s  commit %s  %s  by %s%s\n", x->app, x->version,
			       p && p->commit[0] ? p->commit : "-", p && p->ref[0] ? p->ref : "-",
			       x->pushed_by, x->signature_verified ? "  (signed)" : "");
		}
	}
	rc = CLI_OK;
out:
	if (r1)
		protobuf_c_message_free_unpacked(r1, NULL);
	if (r2)
		protobuf_c_message_free_unpacked(r2, NULL);
	rpc_client_free(cl);
	return rc;
}

static const struct cli_opt gc_opts[] = {
	{ "dry-run", no_argument, 'n', NULL, "show what would change, change nothing" },
	{ "retention", required_argument, 'r', "DUR", "keep unreferenced blobs younger than this (e.g. 168h)" },
	{ "addr", required_argument, 'A', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_gc(struct cli *c, int argc, char **argv)
{
	const char *addr = NULL;
	long long retention = 0;
	int dry = 0, o, rc = CLI_FAIL;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'n': dry = 1; break;
		case 'r':
			if (cfg_parse_ms(optarg, &retention) != 0 || retention <= 0)
				return cli_usage("--retention wants a duration such as 720h");
			break;
		case 'A': addr = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (optind != argc)
		return cli_usage_cmd(c);
	struct rpc_client *cl = NULL;
	ProtobufCMessage *resp = NULL;
	if (cli_connect(c, "artifact", addr, &cl) != 0)
		return CLI_FAIL;
	Slipway__V1__GarbageCollectRequest req = SLIPWAY__V1__GARBAGE_COLLECT_REQUEST__INIT;
	req.dry_run = dry;
	req.retention_ms = retention;
	struct cli c2 = *c;
	if (c2.timeout_ms < 600000)
		c2.timeout_ms = 600000;
	if ((rc = call(&c2, cl, "GarbageCollect", &req.base, &resp)) != 0)
		goto out;
	Slipway__V1__GarbageCollectResponse *r = (void *)resp;
	if (c->output == CLI_JSON) {
		json_t *j = json_object(), *arr = json_array();
		for (size_t i = 0; i < r->n_candidates; i++) {
			const Slipway__V1__GcCandidate *x = r->candidates[i];
			json_t *rels = json_array();
			for (size_t k = 0; k < x->n_releases; k++)
				json_array_append_new(rels, json_string(x->releases[k]));
			json_array_append_new(arr,
					      json_pack("{s:s,s:I,s:s,s:o}", "digest", x->digest,
							"size_bytes", (json_int_t)x->size_bytes,
							"reason", x->reason, "releases", rels));
		}
		json_object_set_new(j, "candidates", arr);
		json_object_set_new(j, "dry_run", json_boolean(r->dry_run));
		json_object_set_new(j, "bytes_freed", json_integer((json_int_t)r->bytes_freed));
		cli_print_json(j);
	} else {
		char h[32];
		printf("%-71s %10s %-12s %s\n", "DIGEST", "SIZE", "REASON", "RELEASES");
		for (size_t i = 0; i < r->n_candidates; i++) {
			const Slipway__V1__GcCandidate *x = r->candidates[i];
			printf("%-71s %10s %-12s ", x->digest, human(x->size_bytes, h), x->reason);
			for (size_t k = 0; k < x->n_releases; k++)
				printf("%s%s", k ? "," : "", x->releases[k]);
			printf("%s\n", x->n_releases ? "" : "-");
		}
		printf("%s %zu blob(s), %s\n", r->dry_run ? "would delete" : "deleted",
		       r->n_candidates, human(r->bytes_freed, h));
	}
	rc = CLI_OK;
out:
	if (resp)
		protobuf_c_message_free_unpacked(resp, NULL);
	rpc_client_free(cl);
	return rc;
}

static const struct cli_opt pin_opts[] = {
	{ "current", required_argument, 'c', "DIGEST", "pin the current release's digest" },
	{ "last-good", required_argument, 'l', "DIGEST", "pin the last known-good digest" },
	{ "addr", required_argument, 'A', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

static int cmd_pin(struct cli *c, int argc, char **argv)
{
	const char *cur = "", *good = "", *addr = NULL;
	int o, rc = CLI_FAIL;
	optind = 0;
	while ((o = cli_getopt(c, argc, argv)) != -1) {
		switch (o) {
		case 'c': cur = optarg; break;
		case 'l': good = optarg; break;
		case 'A': addr = optarg; break;
		default: return CLI_USAGE;
		}
	}
	if (optind + 2 != argc)
		return cli_usage_cmd(c);
	struct rpc_client *cl = NULL;
	ProtobufCMessage *resp = NULL;
	if (cli_connect(c, "artifact", addr, &cl) != 0)
		return CLI_FAIL;
	Slipway__V1__SetPinsRequest req = SLIPWAY__V1__SET_PINS_REQUEST__INIT;
	req.app = argv[optind];
	req.environment = argv[optind + 1];
	req.current_digest = (char *)cur;
	req.last_good_digest = (char *)good;
	if ((rc = call(c, cl, "SetPins", &req.base, &resp)) != 0)
		goto out;
	if (c->output == CLI_JSON)
		cli_print_json(json_pack("{s:s,s:s,s:s,s:s}", "app", req.app, "environment",
					 req.environment, "current_digest", cur, "last_good_digest",
					 good));
	else
		printf("pinned %s/%s: current %s, last good %s\n", req.app, req.environment,
		       cur[0] ? cur : "-", good[0] ? good : "-");
	rc = CLI_OK;
out:
	if (resp)
		protobuf_c_message_free_unpacked(resp, NULL);
	rpc_client_free(cl);
	return rc;
}

extern const struct cli_cmd cli_artifact_cmds[];
const struct cli_cmd cli_artifact_cmds[] = {
	{ "push", cmd_push, "push FILE as APP@VERSION (hashed, optionally signed)",
	  "FILE --app APP --version VERSION [--repo URL] [--commit SHA] [--branch B | --tag T | "
	  "--ref R] [--build-id ID] [--builder NAME] [--media-type TYPE] [--sign KEYFILE]",
	  push_opts,
	  "slipway artifact push web-1.0.0.tar.gz --app web --version 1.0.0 \\\n"
	  "    --repo https://git.example.com/web --commit 0123abc --branch main --sign ci.key", NULL, NULL },
	{ "pull", cmd_pull, "download and verify APP@VERSION or a digest",
	  "(APP@VERSION | sha256:HEX) [--out FILE] [--resume]", pull_opts,
	  "slipway artifact pull web@1.0.0\nslipway artifact pull web@1.0.0 --out web.tgz --resume",
	  "O:", NULL },
	{ "ls", cmd_ls, "list apps, or the versions of an app (newest first)",
	  "[APP] [--limit N] [--page-token T] [--all]", ls_opts,
	  "slipway artifact ls\nslipway artifact ls web --all", NULL, NULL },
	{ "show", cmd_show, "a release's provenance, or a digest and its releases",
	  "(APP@VERSION | sha256:HEX)", show_opts, "slipway artifact show web@1.0.0", NULL, NULL },
	{ "gc", cmd_gc, "delete unreferenced and expired, unpinned blobs",
	  "[--dry-run] [--retention DUR]", gc_opts,
	  "slipway artifact gc --dry-run\nslipway artifact gc --retention 168h", NULL, NULL },
	{ "pin", cmd_pin, "record an environment's current and last-good digests",
	  "APP ENV [--current DIGEST] [--last-good DIGEST]", pin_opts,
	  "slipway artifact pin web prod --current sha256:... --last-good sha256:...", NULL, NULL },
	{ "keygen", cmd_keygen, "create a builder signing key pair", "--out PREFIX [--name NAME]",
	  keygen_opts, "slipway artifact keygen --out ./ci --name ci-builder", NULL, NULL },
	{ NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL },
};

int cli_cmd_artifact(struct cli *c, int argc, char **argv);
int cli_cmd_artifact(struct cli *c, int argc, char **argv)
{
	return cli_dispatch(c, "artifact", cli_artifact_cmds, argc, argv);
}
