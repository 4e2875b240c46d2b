/*
 * fuzz_secrets.c - the secrets service's cryptographic envelope
 * (services/secrets/envelope.c, keys.c): values arrive sealed to the
 * service's X25519 key from any client, and stored ciphertexts come back
 * from the database.
 *
 * Keys are generated once into a private temporary directory. The first
 * input byte picks a mode; the rest is its input.
 *
 *   0  sec_keys_open_sealed on arbitrary bytes must refuse them
 *      (SW_EINVAL); a value sealed by the harness opens to the same bytes,
 *      and with one byte changed it does not.
 *   1  sec_env_seal of an input value under an input identity opens with
 *      sec_env_open to the same bytes; changing one byte of the ciphertext
 *      or the wrapped key, the identity (app, environment, name, version)
 *      or the master key version makes it fail with SW_EDATALOSS or
 *      SW_EPRECOND, never succeed.
 *   2  sec_env_open on an arbitrary ciphertext and wrapped key must fail.
 *   3  the input as a keyring file: when sec_keys_load accepts it, the
 *      current version is held, versions are distinct, and wrapping and
 *      unwrapping a data key works under every version it holds.
 *   4  a PutSecretRequest through rpc.c's checks (sealed_name_ok,
 *      sec_scope_ok, the box length): an accepted scope is one or two
 *      plain segments, a sealed value the input made does not open, and
 *      the identity always fits the envelope (sec_env_seal succeeds).
 */
#include "fuzz.h"

#include "../../services/secrets/secrets.h"
#include "err.h"

#include <fcntl.h>
#include <sodium.h>

static struct sec_keys *keys;
static char seal_path[512], sign_path[512], ring_path[512];

static void init(void)
{
	if (keys != NULL)
		return;
	if (sealed_init() != 0)
		abort();
	const char *t = fuzz_tmpdir();
	snprintf(ring_path, sizeof ring_path, "%s/keyring", t);
	snprintf(seal_path, sizeof seal_path, "%s/seal.key", t);
	snprintf(sign_path, sizeof sign_path, "%s/sign.key", t);
	struct sec_keys_opts o = { ring_path, seal_path, sign_path, 1, 1 };
	char err[512];
	if (sec_keys_load(&o, &keys, err, sizeof err) != 0) {
		fprintf(stderr, "sec_keys_load: %s\n", err);
		abort();
	}
}

static void mode_sealed(struct fz *f)
{
	static uint8_t out[70000];
	size_t outlen = 0;
	char err[512];
	uint32_t where = fz_u32(f);
	uint8_t bit = fz_u8(f) % 8;
	int rc = sec_keys_open_sealed(keys, f->p, f->n, out, sizeof out, &outlen, err, sizeof err);
	FUZZ_CHECK(rc == SW_EINVAL, "arbitrary sealed bytes gave %d", rc);
	if (f->n > 65000)
		return;
	uint8_t seal_pk[32], sign_pk[32];
	char kid[SEALED_KEY_ID_MAX];
	sec_keys_public(keys, seal_pk, sign_pk, kid);
	size_t blen = f->n + crypto_box_SEALBYTES;
	uint8_t *box = malloc(blen);
	FUZZ_CHECK(box != NULL, "malloc");
	FUZZ_CHECK(crypto_box_seal(box, f->p, f->n, seal_pk) == 0, "seal");
	rc = sec_keys_open_sealed(keys, box, blen, out, sizeof out, &outlen, err, sizeof err);
	FUZZ_CHECK(rc == 0 && outlen == f->n && (f->n == 0 || memcmp(out, f->p, f->n) == 0),
		   "a sealed value does not open to itself: %d", rc);
	box[where % blen] ^= (uint8_t)(1u << bit);
	rc = sec_keys_open_sealed(keys, box, blen, out, sizeof out, &outlen, err, sizeof err);
	FUZZ_CHECK(rc == SW_EINVAL, "a value with byte %zu changed opened", (size_t)(where % blen));
	free(box);
}

static void mode_envelope(struct fz *f)
{
	char app[80], env[80], name[140];
	fz_str(f, app, 70);
	fz_str(f, env, 70);
	fz_str(f, name, 135);
	uint32_t version = fz_u32(f);
	uint8_t what = fz_u8(f);
	uint32_t where = fz_u32(f);
	uint8_t bit = fz_u8(f) % 8;
	size_t len = f->n;
	const uint8_t *plain = f->p;
	struct sec_ident id = { app, env, name, version };
	uint8_t *ct = malloc(len + SEC_CT_OVERHEAD), *back = sodium_malloc(len + 1);
	uint8_t wrapped[SEC_WRAPPED_BYTES];
	uint32_t mk = 0;
	char err[512];
	FUZZ_CHECK(ct != NULL && back != NULL, "alloc");
	int rc = sec_env_seal(keys, &id, plain, len, ct, wrapped, &mk, err, sizeof err);
	if (rc != 0) {
		FUZZ_CHECK(rc == SW_EINVAL && (strlen(app) > SEC_APP_MAX || strlen(env) > SEC_APP_MAX ||
					       strlen(name) > SEALED_NAME_MAX),
			   "seal refused a fitting identity: %s", err);
		goto out;
	}
	FUZZ_CHECK(mk == sec_keys_current(keys), "sealed under master key %u", mk);
	rc = sec_env_open(keys, NULL, &id, ct, len + SEC_CT_OVERHEAD, wrapped, mk, back, err, sizeof err);
	FUZZ_CHECK(rc == 0, "a sealed value does not open: %s", err);
	FUZZ_CHECK(len == 0 || memcmp(back, plain, len) == 0, "opened to other bytes");

	/* One change, chosen by the input. */
	char app2[sizeof app + 1], env2[sizeof env + 1], name2[140];
	struct sec_ident id2 = id;
	uint32_t mk2 = mk;
	size_t ctlen = len + SEC_CT_OVERHEAD;
	switch (what % 7) {
	case 0:
		ct[where % ctlen] ^= (uint8_t)(1u << bit);
		break;
	case 1:
		wrapped[where % SEC_WRAPPED_BYTES] ^= (uint8_t)(1u << bit);
		break;
	case 2:
		snprintf(app2, sizeof app2, "%s%c", app, 'a' + bit);
		id2.app = app2;
		break;
	case 3:
		snprintf(env2, sizeof env2, "%s%c", env, 'a' + bit);
		id2.env = env2;
		break;
	case 4:
		snprintf(name2, sizeof name2, "%.*s", (int)(strlen(name) ? strlen(name) - 1 : 0),
			 name);
		if (strcmp(name2, name) == 0)
			snprintf(name2, sizeof name2, "x");
		id2.name = name2;
		break;
	case 5:
		id2.version = version ^ (1u << (where % 32));
		break;
	default:
		mk2 = mk + 1 + where % 3;
	}
	/* Moving a byte between adjacent fields keeps the AAD only if the
	 * encoding is ambiguous: it is length-prefixed, so it never does. */
	if (strlen(id2.app) > SEC_APP_MAX || strlen(id2.env) > SEC_APP_MAX ||
	    strlen(id2.name) > SEALED_NAME_MAX)
		goto out;
	rc = sec_env_open(keys, NULL, &id2, ct, ctlen, wrapped, mk2, back, err, sizeof err);
	FUZZ_CHECK(rc == SW_EDATALOSS || rc == SW_EPRECOND,
		   "change %d still opened (%d): the value is not bound to what it belongs to",
		   what % 7, rc);
out:
	free(ct);
	sodium_free(back);
}

static void mode_arbitrary(struct fz *f)
{
	uint8_t wrapped[SEC_WRAPPED_BYTES];
	for (size_t i = 0; i < sizeof wrapped; i++)
		wrapped[i] = fz_u8(f);
	uint32_t mk = fz_u8(f) % 3;
	struct sec_ident id = { "web", "prod", "DB_PASSWORD", 1 };
	uint8_t *back = sodium_malloc(f->n + 1);
	char err[512];
	FUZZ_CHECK(back != NULL, "alloc");
	int rc = sec_env_open(keys, NULL, &id, f->p, f->n, wrapped, mk, back, err, sizeof err);
	FUZZ_CHECK(rc == SW_EDATALOSS || rc == SW_EPRECOND, "arbitrary ciphertext gave %d", rc);
	sodium_free(back);
}

static void mode_keyring(struct fz *f)
{
	char path[600];
	snprintf(path, sizeof path, "%s/keyring-fuzz", fuzz_tmpdir());
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600);
	FUZZ_CHECK(fd >= 0 && (f->n == 0 || write(fd, f->p, f->n) == (ssize_t)f->n), "write");
	close(fd);
	struct sec_keys_opts o = { path, seal_path, sign_path, 0, 0 };
	struct sec_keys *k = NULL;
	char err[512];
	if (sec_keys_load(&o, &k, err, sizeof err) == 0) {
		uint32_t v[SEC_MAX_MASTER + 1];
		size_t n = sec_keys_versions(k, v, SEC_MAX_MASTER + 1);
		FUZZ_CHECK(n >= 1 && n <= SEC_MAX_MASTER, "%zu versions", n);
		int cur = 0;
		for (size_t i = 0; i < n; i++) {
			cur |= v[i] == sec_keys_current(k);
			for (size_t j = 0; j < i; j++)
				FUZZ_CHECK(v[i] != v[j], "version %u twice", v[i]);
			uint8_t dk[SEC_KEY_BYTES], dk2[SEC_KEY_BYTES], w[SEC_WRAPPED_BYTES], kcv[16];
			uint32_t used = 0;
			memset(dk, 0x5a, sizeof dk);
			FUZZ_CHECK(sec_keys_kcv(k, v[i], kcv) == 0, "kcv of %u", v[i]);
			FUZZ_CHECK(sec_keys_wrap(k, v[i], (const uint8_t *)"aad", 3, dk, w, &used, err,
						 sizeof err) == 0 &&
					   used == v[i],
				   "wrap with %u", v[i]);
			FUZZ_CHECK(sec_keys_unwrap(k, v[i], (const uint8_t *)"aad", 3, w, dk2, err,
						   sizeof err) == 0 &&
					   memcmp(dk, dk2, sizeof dk) == 0,
				   "unwrap with %u", v[i]);
		}
		FUZZ_CHECK(cur, "current version %u is not held", sec_keys_current(k));
		sec_keys_free(k);
	}
	unlink(path);
}

/* PutSecret's checks (rpc.c), then the envelope under the same identity. */
static void mode_put(struct fz *f)
{
	Slipway__V1__PutSecretRequest *req = slipway__v1__put_secret_request__unpack(NULL, f->n, f->p);
	if (req == NULL)
		return;
	const char *app = req->scope ? req->scope->app : "";
	const char *env = req->scope ? req->scope->environment : "";
	if (!sealed_name_ok(req->name) || !sec_scope_ok(app, env) ||
	    req->sealed_value.len < SEALED_BOX_OVERHEAD)
		goto out;
	FUZZ_CHECK(strlen(app) >= 1 && strlen(app) <= SEC_APP_MAX && strlen(env) <= SEC_APP_MAX &&
			   strchr(app, '/') == NULL && strchr(env, '/') == NULL,
		   "scope '%s'/'%s'", app, env);
	uint8_t out[256];
	size_t outlen = 0;
	char err[512];
	int rc = sec_keys_open_sealed(keys, req->sealed_value.data, req->sealed_value.len, out,
				      sizeof out, &outlen, err, sizeof err);
	FUZZ_CHECK(rc == SW_EINVAL, "a value the input sealed opened");
	/* A validated identity always fits the envelope's associated data. */
	struct sec_ident id = { app, env, req->name, 1 };
	uint8_t ct[SEC_CT_OVERHEAD + 4], wrapped[SEC_WRAPPED_BYTES];
	uint32_t mk = 0;
	FUZZ_CHECK(sec_env_seal(keys, &id, (const uint8_t *)"abcd", 4, ct, wrapped, &mk, err,
				sizeof err) == 0,
		   "a validated identity cannot be sealed: %s", err);
out:
	slipway__v1__put_secret_request__free_unpacked(req, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	init();
	struct fz f = { data, size };
	switch (fz_u8(&f) % 5) {
	case 0: mode_sealed(&f); break;
	case 1: mode_envelope(&f); break;
	case 2: mode_arbitrary(&f); break;
	case 3: mode_keyring(&f); break;
	default: mode_put(&f); break;
	}
	return 0;
}
