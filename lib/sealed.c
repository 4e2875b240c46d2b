/*
 * sealed.c - the sealed secret bundle and the key files of sealed.h.
 *
 * Everything that holds plaintext (values, packed bundles, key files, hex
 * of keys) lives in sodium_malloc memory and is wiped before it is freed.
 * The agent side unpacks protobuf messages through an arena allocator whose
 * chunks are sodium_malloc memory, so protobuf-c's copies of the values
 * never touch the ordinary heap.
 */
#include "sealed.h"
#include "err.h"

#include "slipway/v1/secrets.pb-c.h"
#include "clock.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#define KEY_MAGIC "slipway-key "
#define ARENA_CHUNK (64 * 1024)
#define ARENA_MAX ((size_t)SEALED_MAX_BOX * 4)
#define TMPFS_MAGIC_ 0x01021994
#define RAMFS_MAGIC_ 0x858458f6
#define ID_MAX 256

int sealed_init(void)
{
	return sodium_init() < 0 ? SW_EINTERNAL : 0;
}

int sealed_name_ok(const char *s)
{
	size_t n = 0;
	if (s == NULL || s[0] == '\0' || s[0] == '.' || s[0] == '-')
		return 0;
	for (; s[n] != '\0'; n++) {
		char c = s[n];
		if (n >= SEALED_NAME_MAX)
			return 0;
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return 0;
	}
	return 1;
}

void sealed_key_id(const uint8_t sign_pk[SEALED_SIGN_PUBLIC_BYTES], char out[SEALED_KEY_ID_MAX])
{
	uint8_t h[32];
	char hex[17];
	crypto_generichash(h, sizeof h, sign_pk, SEALED_SIGN_PUBLIC_BYTES, NULL, 0);
	sodium_bin2hex(hex, sizeof hex, h, 8);
	snprintf(out, SEALED_KEY_ID_MAX, "ed25519:%s", hex);
}

/* ---------------------------------------------------------------- key files */

/* Writes the directory part of path into out ("." when none). */
static void dir_of(const char *path, char *out, size_t cap)
{
	const char *slash = strrchr(path, '/');
	if (slash == NULL)
		snprintf(out, cap, ".");
	else if (slash == path)
		snprintf(out, cap, "/");
	else
		snprintf(out, cap, "%.*s", (int)(slash - path), path);
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n > 0) {
		ssize_t w = write(fd, p, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int sealed_secret_file_read(const char *path, size_t max, uint8_t **out, size_t *len, char *err,
			    size_t errlen)
{
	int fd = -1, rc = 0;
	uint8_t *buf = NULL;
	size_t got = 0, cap = 0;
	struct stat st;

	*out = NULL;
	*len = 0;
	if (max == 0 || max > SEALED_KEY_FILE_MAX)
		max = SEALED_KEY_FILE_MAX;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0) {
		if (errno == ENOENT)
			rc = sw_errf(err, errlen, SW_ENOTFOUND, "%s does not exist", path);
		else if (errno == ELOOP)
			rc = sw_errf(err, errlen, SW_EPERM, "%s is a symbolic link; refusing it",
				     path);
		else
			rc = sw_errf(err, errlen, SW_EIO, "open %s: %s", path, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		rc = sw_errf(err, errlen, SW_EIO, "%s is not a regular file", path);
		goto out;
	}
	if (st.st_uid != geteuid()) {
		rc = sw_errf(err, errlen, SW_EPERM, "%s is owned by uid %u, not by this user", path,
			     (unsigned)st.st_uid);
		goto out;
	}
	if ((st.st_mode & 077) != 0) {
		rc = sw_errf(err, errlen, SW_EPERM,
			     "%s is accessible by group or others (mode %03o); chmod 600 it", path,
			     (unsigned)(st.st_mode & 0777));
		goto out;
	}
	if (st.st_size < 0 || (size_t)st.st_size > max) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s is larger than %zu bytes", path, max);
		goto out;
	}
	cap = (size_t)st.st_size + 1;
	buf = sodium_malloc(cap);
	if (buf == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
		goto out;
	}
	for (;;) {
		ssize_t r = read(fd, buf + got, cap - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			rc = sw_errf(err, errlen, SW_EIO, "read %s: %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		got += (size_t)r;
		if (got == cap) { /* grew while we read it */
			rc = sw_errf(err, errlen, SW_EIO, "%s changed while being read", path);
			goto out;
		}
	}
	buf[got] = 0;
	*out = buf;
	*len = got;
	buf = NULL;
out:
	if (buf != NULL) {
		sodium_memzero(buf, cap);
		sodium_free(buf);
	}
	if (fd >= 0)
		close(fd);
	return rc;
}

int sealed_secret_file_write(const char *path, const uint8_t *buf, size_t len, int replace,
			     char *err, size_t errlen)
{
	char tmp[4096], dir[4096];
	int fd = -1, rc = 0, made = 0;
	uint32_t r = randombytes_random();

	if (snprintf(tmp, sizeof tmp, "%s.tmp-%ld-%08x", path, (long)getpid(), r) >=
	    (int)sizeof tmp)
		return sw_errf(err, errlen, SW_EINVAL, "path too long");
	fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0) {
		rc = sw_errf(err, errlen, SW_EIO, "create %s: %s", tmp, strerror(errno));
		goto out;
	}
	made = 1;
	if (fchmod(fd, 0600) != 0 || write_all(fd, buf, len) != 0 || fsync(fd) != 0) {
		rc = sw_errf(err, errlen, SW_EIO, "write %s: %s", tmp, strerror(errno));
		goto out;
	}
	close(fd);
	fd = -1;
	if (replace) {
		if (rename(tmp, path) != 0) {
			rc = sw_errf(err, errlen, SW_EIO, "rename to %s: %s", path,
				     strerror(errno));
			goto out;
		}
	} else {
		/* link() never replaces: an atomic exclusive create. */
		if (link(tmp, path) != 0) {
			rc = sw_errf(err, errlen, errno == EEXIST ? SW_EEXIST : SW_EIO,
				     "create %s: %s", path, strerror(errno));
			goto out;
		}
		unlink(tmp);
	}
	made = 0;
	dir_of(path, dir, sizeof dir);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0)
		fsync(fd);
out:
	if (fd >= 0)
		close(fd);
	if (made)
		unlink(tmp);
	return rc;
}

/* Parses "slipway-key <label>\n<hex>\n" in text[n] into key[keylen]. */
static int parse_key(const char *path, const char *label, const uint8_t *text, size_t n,
		     uint8_t *key, size_t keylen, char *err, size_t errlen)
{
	size_t ml = strlen(KEY_MAGIC), ll = strlen(label), binlen = 0;
	const char *end = NULL;
	if (n < ml + ll + 1 || memcmp(text, KEY_MAGIC, ml) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "%s is not a slipway key file", path);
	if (memcmp(text + ml, label, ll) != 0 || text[ml + ll] != '\n')
		return sw_errf(err, errlen, SW_EINVAL, "%s does not hold a %s key", path, label);
	const char *hex = (const char *)text + ml + ll + 1;
	size_t hexlen = n - (ml + ll + 1);
	if (sodium_hex2bin(key, keylen, hex, hexlen, NULL, &binlen, &end) != 0 ||
	    binlen != keylen || (*end != '\0' && strcmp(end, "\n") != 0)) {
		sodium_memzero(key, keylen);
		return sw_errf(err, errlen, SW_EINVAL, "%s: the key is not %zu bytes of hex", path,
			       keylen);
	}
	return 0;
}

/* Formats a key file into new sodium memory (*out, *n). */
static int format_key(const char *label, const uint8_t *key, size_t keylen, uint8_t **out,
		      size_t *n, char *err, size_t errlen)
{
	size_t ml = strlen(KEY_MAGIC), ll = strlen(label), cap = ml + ll + 1 + keylen * 2 + 2;
	uint8_t *buf = sodium_malloc(cap);
	if (buf == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
	memcpy(buf, KEY_MAGIC, ml);
	memcpy(buf + ml, label, ll);
	buf[ml + ll] = '\n';
	sodium_bin2hex((char *)buf + ml + ll + 1, keylen * 2 + 1, key, keylen);
	buf[cap - 2] = '\n';
	buf[cap - 1] = 0;
	*out = buf;
	*n = cap - 1;
	return 0;
}

int sealed_key_read(const char *path, const char *label, uint8_t *key, size_t keylen, char *err,
		    size_t errlen)
{
	uint8_t *text = NULL;
	size_t n = 0;
	int rc = sealed_secret_file_read(path, 4096, &text, &n, err, errlen);
	if (rc != 0)
		return rc;
	rc = parse_key(path, label, text, n, key, keylen, err, errlen);
	sodium_memzero(text, n);
	sodium_free(text);
	return rc;
}

int sealed_key_write(const char *path, const char *label, const uint8_t *key, size_t keylen,
		     char *err, size_t errlen)
{
	uint8_t *text = NULL;
	size_t n = 0;
	int rc = format_key(label, key, keylen, &text, &n, err, errlen);
	if (rc != 0)
		return rc;
	rc = sealed_secret_file_write(path, text, n, 0, err, errlen);
	sodium_memzero(text, n);
	sodium_free(text);
	return rc;
}

int sealed_public_key_read(const char *path, const char *label, uint8_t *key, size_t keylen,
			   char *err, size_t errlen)
{
	char buf[1024];
	size_t n = 0;
	int rc = 0;
	FILE *f = fopen(path, "re");
	if (f == NULL)
		return sw_errf(err, errlen, errno == ENOENT ? SW_ENOTFOUND : SW_EIO, "open %s: %s",
			       path, strerror(errno));
	n = fread(buf, 1, sizeof buf - 1, f);
	if (ferror(f) || !feof(f))
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: unreadable or too large", path);
	fclose(f);
	if (rc != 0)
		return rc;
	buf[n] = '\0';
	return parse_key(path, label, (const uint8_t *)buf, n, key, keylen, err, errlen);
}

int sealed_public_key_write(const char *path, const char *label, const uint8_t *key,
			    size_t keylen, char *err, size_t errlen)
{
	uint8_t *text = NULL;
	size_t n = 0;
	int rc = format_key(label, key, keylen, &text, &n, err, errlen);
	if (rc != 0)
		return rc;
	rc = sealed_secret_file_write(path, text, n, 1, err, errlen);
	sodium_free(text);
	if (rc == 0 && chmod(path, 0644) != 0)
		rc = sw_errf(err, errlen, SW_EIO, "chmod %s: %s", path, strerror(errno));
	return rc;
}

int sealed_x25519_load(const char *path, int create, uint8_t pk[SEALED_X25519_BYTES], uint8_t *sk,
		       char *err, size_t errlen)
{
	int rc = sealed_key_read(path, SEALED_LABEL_X25519_SECRET, sk, SEALED_X25519_BYTES, err,
				 errlen);
	if (rc == SW_ENOTFOUND && create) {
		crypto_box_keypair(pk, sk);
		rc = sealed_key_write(path, SEALED_LABEL_X25519_SECRET, sk, SEALED_X25519_BYTES, err,
				      errlen);
		if (rc == SW_EEXIST) /* created meanwhile by someone else: use theirs */
			rc = sealed_key_read(path, SEALED_LABEL_X25519_SECRET, sk,
					     SEALED_X25519_BYTES, err, errlen);
	}
	if (rc == 0 && crypto_scalarmult_base(pk, sk) != 0)
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: unusable X25519 key", path);
	if (rc != 0)
		sodium_memzero(sk, SEALED_X25519_BYTES);
	return rc;
}

/* ---------------------------------------------------------------- build */

static int id_ok(const char *s, size_t max)
{
	if (s == NULL || s[0] == '\0' || strlen(s) > max)
		return 0;
	for (const char *p = s; *p; p++)
		if ((unsigned char)*p < 0x21 || (unsigned char)*p > 0x7e)
			return 0;
	return 1;
}

/* The protobuf view of a build request: malloc'd arrays of pointers into
 * the caller's (secure) values. Holds no plaintext itself. */
struct view {
	Slipway__V1__SecretBundle b;
	Slipway__V1__SecretValue *vals;
	Slipway__V1__SecretValue **ptrs;
	uint8_t nonce[SEALED_NONCE_BYTES];
};

static int view_make(const struct sealed_build_req *r, struct view *v, char *err, size_t errlen)
{
	memset(v, 0, sizeof *v);
	if (!id_ok(r->deployment_id, ID_MAX))
		return sw_errf(err, errlen, SW_EINVAL, "deployment id missing or malformed");
	if (!id_ok(r->agent, ID_MAX))
		return sw_errf(err, errlen, SW_EINVAL, "agent id missing or malformed");
	if (r->sign_sk == NULL || r->agent_pk == NULL || r->key_id == NULL ||
	    strlen(r->key_id) >= SEALED_KEY_ID_MAX)
		return sw_errf(err, errlen, SW_EINVAL, "signing key, key id or agent key missing");
	if (r->nitems > SEALED_MAX_ITEMS)
		return sw_errf(err, errlen, SW_ELIMIT, "%zu secrets in one bundle; the limit is %d",
			       r->nitems, SEALED_MAX_ITEMS);
	if (r->expires_unix_ms <= 0)
		return sw_errf(err, errlen, SW_EINVAL, "bundle expiry missing");
	slipway__v1__secret_bundle__init(&v->b);
	if (r->nitems > 0) {
		v->vals = calloc(r->nitems, sizeof *v->vals);
		v->ptrs = calloc(r->nitems, sizeof *v->ptrs);
		if (v->vals == NULL || v->ptrs == NULL)
			return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < r->nitems; i++) {
		const struct sealed_item *it = &r->items[i];
		if (!sealed_name_ok(it->name))
			return sw_errf(err, errlen, SW_EINVAL, "secret %zu: bad name", i);
		if (it->value == NULL && it->len != 0)
			return sw_errf(err, errlen, SW_EINVAL, "secret %s: value missing", it->name);
		for (size_t j = 0; j < i; j++)
			if (strcmp(r->items[j].name, it->name) == 0)
				return sw_errf(err, errlen, SW_EINVAL, "secret %s appears twice",
					       it->name);
		slipway__v1__secret_value__init(&v->vals[i]);
		v->vals[i].name = (char *)it->name;
		v->vals[i].version = it->version;
		v->vals[i].value.data = (uint8_t *)it->value;
		v->vals[i].value.len = it->len;
		v->ptrs[i] = &v->vals[i];
	}
	v->b.deployment_id = (char *)r->deployment_id;
	v->b.agent = (char *)r->agent;
	v->b.expires_unix_ms = r->expires_unix_ms;
	v->b.issued_unix_ms = r->issued_unix_ms ? r->issued_unix_ms : clock_wall_ms();
	v->b.nonce.data = v->nonce;
	v->b.nonce.len = sizeof v->nonce;
	v->b.n_secrets = r->nitems;
	v->b.secrets = v->ptrs;
	return 0;
}

static void view_free(struct view *v)
{
	free(v->vals);
	free(v->ptrs);
	v->vals = NULL;
	v->ptrs = NULL;
}

static size_t signed_size(size_t bundle_len, const char *key_id)
{
	Slipway__V1__SignedBundle s = SLIPWAY__V1__SIGNED_BUNDLE__INIT;
	s.bundle.len = bundle_len;
	s.signature.len = SEALED_SIGNATURE_BYTES;
	s.key_id = (char *)key_id;
	return slipway__v1__signed_bundle__get_packed_size(&s);
}

static int sizes(const struct view *v, const char *key_id, size_t *blen, size_t *work,
		 size_t *out, char *err, size_t errlen)
{
	*blen = slipway__v1__secret_bundle__get_packed_size(&v->b);
	size_t slen = signed_size(*blen, key_id);
	if (slen + SEALED_BOX_OVERHEAD > SEALED_MAX_BOX)
		return sw_errf(err, errlen, SW_ELIMIT, "bundle of %zu bytes is over the %u limit",
			       slen, SEALED_MAX_BOX);
	*work = *blen + slen;
	*out = slen + SEALED_BOX_OVERHEAD;
	return 0;
}

int sealed_build_size(const struct sealed_build_req *r, size_t *work_len, size_t *out_len,
		      char *err, size_t errlen)
{
	struct view v;
	size_t blen;
	int rc = view_make(r, &v, err, errlen);
	if (rc == 0)
		rc = sizes(&v, r->key_id, &blen, work_len, out_len, err, errlen);
	view_free(&v);
	return rc;
}

int sealed_build(const struct sealed_build_req *r, uint8_t *work, size_t work_len, uint8_t *out,
		 size_t out_cap, size_t *out_len, char *err, size_t errlen)
{
	struct view v;
	size_t blen = 0, need_work = 0, need_out = 0, slen = 0;
	uint8_t sig[SEALED_SIGNATURE_BYTES];
	int rc = view_make(r, &v, err, errlen);

	*out_len = 0;
	if (rc != 0)
		goto out;
	randombytes_buf(v.nonce, sizeof v.nonce);
	rc = sizes(&v, r->key_id, &blen, &need_work, &need_out, err, errlen);
	if (rc != 0)
		goto out;
	if (work == NULL || work_len < need_work || out == NULL || out_cap < need_out) {
		rc = sw_errf(err, errlen, SW_EINVAL, "buffers too small (work %zu < %zu or out %zu < %zu)",
			     work_len, need_work, out_cap, need_out);
		goto out;
	}
	if (slipway__v1__secret_bundle__pack(&v.b, work) != blen) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "bundle packing size mismatch");
		goto out;
	}
	crypto_sign_detached(sig, NULL, work, blen, r->sign_sk);
	Slipway__V1__SignedBundle s = SLIPWAY__V1__SIGNED_BUNDLE__INIT;
	s.bundle.data = work;
	s.bundle.len = blen;
	s.signature.data = sig;
	s.signature.len = sizeof sig;
	s.key_id = (char *)r->key_id;
	slen = slipway__v1__signed_bundle__pack(&s, work + blen);
	if (slen + SEALED_BOX_OVERHEAD != need_out) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "signed bundle packing size mismatch");
		goto out;
	}
	if (crypto_box_seal(out, work + blen, slen, r->agent_pk) != 0) {
		rc = sw_errf(err, errlen, SW_EINVAL, "the agent's public key is not a usable X25519 key");
		goto out;
	}
	*out_len = need_out;
out:
	if (work != NULL)
		sodium_memzero(work, need_work && need_work <= work_len ? need_work : work_len);
	sodium_memzero(sig, sizeof sig);
	view_free(&v);
	return rc;
}

/* ---------------------------------------------------------------- open */

struct chunk {
	struct chunk *next;
	size_t cap;   /* bytes usable after the header */
	size_t used;
	size_t total; /* bytes given to sodium_malloc */
};

#define CHUNK_HDR ((sizeof(struct chunk) + 15) & ~(size_t)15)

struct arena {
	struct chunk *head;
	size_t total;
	int failed;
};

struct sealed_bundle {
	struct arena arena;
	Slipway__V1__SecretBundle *b;
};

static void *arena_alloc(void *data, size_t n)
{
	struct arena *a = data;
	n = (n + 15) & ~(size_t)15;
	if (n == 0)
		n = 16;
	if (a->head == NULL || a->head->cap - a->head->used < n) {
		size_t cap = n > ARENA_CHUNK ? n : ARENA_CHUNK;
		size_t total = (CHUNK_HDR + cap + 63) & ~(size_t)63;
		if (a->total + total > ARENA_MAX) {
			a->failed = 1;
			return NULL;
		}
		/* sodium_malloc places the region against a guard page: a size that
		 * is a multiple of 64 keeps the start 64-byte aligned. */
		struct chunk *c = sodium_malloc(total);
		if (c == NULL) {
			a->failed = 1;
			return NULL;
		}
		c->next = a->head;
		c->cap = total - CHUNK_HDR;
		c->used = 0;
		c->total = total;
		a->head = c;
		a->total += total;
	}
	void *p = (uint8_t *)a->head + CHUNK_HDR + a->head->used;
	a->head->used += n;
	return p;
}

static void arena_free_one(void *data, void *p)
{
	(void)data; /* freed with the arena */
	(void)p;
}

static void arena_release(struct arena *a)
{
	struct chunk *c = a->head;
	while (c != NULL) {
		struct chunk *next = c->next;
		size_t total = c->total;
		sodium_memzero(c, total);
		sodium_free(c);
		c = next;
	}
	a->head = NULL;
	a->total = 0;
}

static int bundle_check(const Slipway__V1__SecretBundle *b, const struct sealed_expect *x,
			char *err, size_t errlen)
{
	int64_t now = x->now_unix_ms ? x->now_unix_ms : clock_wall_ms();
	if (b->agent == NULL || strcmp(b->agent, x->agent) != 0)
		return sw_errf(err, errlen, SW_EPERM, "the bundle is for agent %s, not for %s",
			       b->agent ? b->agent : "?", x->agent);
	if (x->deployment_id != NULL &&
	    (b->deployment_id == NULL || strcmp(b->deployment_id, x->deployment_id) != 0))
		return sw_errf(err, errlen, SW_EPERM, "the bundle is for deployment %s, not for %s",
			       b->deployment_id ? b->deployment_id : "?", x->deployment_id);
	if (b->expires_unix_ms <= now)
		return sw_errf(err, errlen, SW_EPRECOND,
			       "the bundle expired %lld ms ago (expires_unix_ms %lld)",
			       (long long)(now - b->expires_unix_ms), (long long)b->expires_unix_ms);
	if (b->issued_unix_ms > now + SEALED_CLOCK_SKEW_MS)
		return sw_errf(err, errlen, SW_EPRECOND,
			       "the bundle was issued %lld ms in the future; check the clocks",
			       (long long)(b->issued_unix_ms - now));
	if (b->nonce.len != SEALED_NONCE_BYTES)
		return sw_errf(err, errlen, SW_EINVAL, "the bundle's nonce is %zu bytes, not %d",
			       b->nonce.len, SEALED_NONCE_BYTES);
	if (b->n_secrets > SEALED_MAX_ITEMS)
		return sw_errf(err, errlen, SW_EINVAL, "too many secrets in the bundle");
	for (size_t i = 0; i < b->n_secrets; i++) {
		if (!sealed_name_ok(b->secrets[i]->name))
			return sw_errf(err, errlen, SW_EINVAL, "secret %zu has a bad name", i);
		for (size_t j = 0; j < i; j++)
			if (strcmp(b->secrets[i]->name, b->secrets[j]->name) == 0)
				return sw_errf(err, errlen, SW_EINVAL, "secret %s appears twice",
					       b->secrets[i]->name);
	}
	return 0;
}

int sealed_open(const uint8_t *box, size_t len, const uint8_t pk[SEALED_X25519_BYTES],
		const uint8_t *sk, const struct sealed_expect *x, struct sealed_bundle **out,
		char *err, size_t errlen)
{
	struct sealed_bundle *sb = NULL;
	uint8_t *plain = NULL;
	Slipway__V1__SignedBundle *s = NULL;
	int rc = 0;

	*out = NULL;
	if (x == NULL || x->agent == NULL || x->sign_pk == NULL || pk == NULL || sk == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "agent id, keys or pinned key missing");
	if (box == NULL || len <= SEALED_BOX_OVERHEAD || len > SEALED_MAX_BOX)
		return sw_errf(err, errlen, SW_EINVAL, "sealed bundle of %zu bytes is out of range",
			       len);
	sb = calloc(1, sizeof *sb);
	if (sb == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	ProtobufCAllocator alloc = { arena_alloc, arena_free_one, &sb->arena };

	plain = arena_alloc(&sb->arena, len - SEALED_BOX_OVERHEAD);
	if (plain == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of secure memory");
		goto out;
	}
	if (crypto_box_seal_open(plain, box, len, pk, sk) != 0) {
		rc = sw_errf(err, errlen, SW_EINVAL,
			     "the sealed bundle does not open with this agent's key (tampered, "
			     "or sealed to another key)");
		goto out;
	}
	s = slipway__v1__signed_bundle__unpack(&alloc, len - SEALED_BOX_OVERHEAD, plain);
	if (s == NULL) {
		rc = sw_errf(err, errlen, sb->arena.failed ? SW_ENOMEM : SW_EINVAL,
			     "the signed bundle does not decode");
		goto out;
	}
	if (s->signature.len != SEALED_SIGNATURE_BYTES ||
	    crypto_sign_verify_detached(s->signature.data, s->bundle.data, s->bundle.len,
					x->sign_pk) != 0) {
		char pinned[SEALED_KEY_ID_MAX];
		sealed_key_id(x->sign_pk, pinned);
		rc = sw_errf(err, errlen, SW_EPERM,
			     "the bundle's signature does not verify with the pinned service key "
			     "%s (bundle names key %.40s)",
			     pinned, s->key_id ? s->key_id : "?");
		goto out;
	}
	sb->b = slipway__v1__secret_bundle__unpack(&alloc, s->bundle.len, s->bundle.data);
	if (sb->b == NULL) {
		rc = sw_errf(err, errlen, sb->arena.failed ? SW_ENOMEM : SW_EINVAL,
			     "the bundle does not decode");
		goto out;
	}
	rc = bundle_check(sb->b, x, err, errlen);
	if (rc != 0)
		goto out;
	*out = sb;
	sb = NULL;
out:
	sealed_bundle_free(sb);
	return rc;
}

size_t sealed_bundle_count(const struct sealed_bundle *b)
{
	return b->b->n_secrets;
}

int sealed_bundle_item(const struct sealed_bundle *b, size_t i, struct sealed_item *it)
{
	if (i >= b->b->n_secrets)
		return SW_ERANGE;
	const Slipway__V1__SecretValue *v = b->b->secrets[i];
	it->name = v->name;
	it->version = v->version;
	it->value = v->value.data;
	it->len = v->value.len;
	return 0;
}

int sealed_bundle_find(const struct sealed_bundle *b, const char *name, struct sealed_item *it)
{
	for (size_t i = 0; i < b->b->n_secrets; i++)
		if (strcmp(b->b->secrets[i]->name, name) == 0)
			return sealed_bundle_item(b, i, it);
	return SW_ENOTFOUND;
}

const char *sealed_bundle_deployment(const struct sealed_bundle *b)
{
	return b->b->deployment_id;
}

const char *sealed_bundle_agent(const struct sealed_bundle *b)
{
	return b->b->agent;
}

int64_t sealed_bundle_expires(const struct sealed_bundle *b)
{
	return b->b->expires_unix_ms;
}

int64_t sealed_bundle_issued(const struct sealed_bundle *b)
{
	return b->b->issued_unix_ms;
}

const uint8_t *sealed_bundle_nonce(const struct sealed_bundle *b)
{
	return b->b->nonce.data;
}

void sealed_bundle_free(struct sealed_bundle *b)
{
	if (b == NULL)
		return;
	arena_release(&b->arena);
	free(b);
}

/* ---------------------------------------------------------------- files */

int sealed_bundle_write_files(const struct sealed_bundle *b, const char *dir, int require_tmpfs,
			      char *err, size_t errlen)
{
	int dfd = -1, rc = 0;
	size_t done = 0;
	struct stat st;
	struct statfs fs;
	char tmp[SEALED_NAME_MAX + 16];

	dfd = open(dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dfd < 0)
		return sw_errf(err, errlen, SW_EIO, "open %s: %s", dir, strerror(errno));
	if (fstat(dfd, &st) != 0 || st.st_uid != geteuid() || (st.st_mode & 077) != 0) {
		rc = sw_errf(err, errlen, SW_EPERM,
			     "%s must be owned by this user and closed to group and others", dir);
		goto out;
	}
	if (require_tmpfs && (fstatfs(dfd, &fs) != 0 || ((unsigned long)fs.f_type != TMPFS_MAGIC_ &&
							 (unsigned long)fs.f_type != RAMFS_MAGIC_))) {
		rc = sw_errf(err, errlen, SW_EPERM, "%s is not on tmpfs: values would reach a disk",
			     dir);
		goto out;
	}
	for (done = 0; done < b->b->n_secrets; done++) {
		const Slipway__V1__SecretValue *v = b->b->secrets[done];
		snprintf(tmp, sizeof tmp, ".%s.tmp", v->name);
		unlinkat(dfd, tmp, 0);
		int fd = openat(dfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0400);
		if (fd < 0) {
			rc = sw_errf(err, errlen, SW_EIO, "create %s/%s: %s", dir, v->name,
				     strerror(errno));
			goto out;
		}
		int wr = write_all(fd, v->value.data, v->value.len);
		if (close(fd) != 0 || wr != 0) {
			unlinkat(dfd, tmp, 0);
			rc = sw_errf(err, errlen, SW_EIO, "write %s/%s failed", dir, v->name);
			goto out;
		}
		if (renameat(dfd, tmp, dfd, v->name) != 0) {
			unlinkat(dfd, tmp, 0);
			rc = sw_errf(err, errlen, SW_EIO, "rename %s/%s: %s", dir, v->name,
				     strerror(errno));
			goto out;
		}
	}
out:
	if (rc != 0)
		for (size_t i = 0; i < done; i++)
			unlinkat(dfd, b->b->secrets[i]->name, 0);
	if (dfd >= 0)
		close(dfd);
	return rc;
}
