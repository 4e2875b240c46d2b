/*
 * tls.c - PEM loading, gRPC mTLS credentials and peer identity.
 */
#include "tls.h"
#include "err.h"
#include "spiffe.h"

#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int tls_read_pem(const char *path, char **out, char *err, size_t errlen)
{
	int fd = -1, rc = 0;
	char *buf = NULL;
	struct stat st;

	*out = NULL;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		rc = sw_errf(err, errlen, SW_EIO, "open %s: %s", path, strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
		rc = sw_errf(err, errlen, SW_EIO, "%s is not a regular file", path);
		goto out;
	}
	if (st.st_size <= 0 || st.st_size > TLS_PEM_MAX) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s: size %lld is out of range", path,
			     (long long)st.st_size);
		goto out;
	}
	buf = malloc((size_t)st.st_size + 1);
	if (buf == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	size_t got = 0;
	while (got < (size_t)st.st_size) {
		ssize_t r = read(fd, buf + got, (size_t)st.st_size - got);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0) {
			rc = sw_errf(err, errlen, SW_EIO, "read %s failed", path);
			goto out;
		}
		got += (size_t)r;
	}
	buf[got] = '\0';
	if (strstr(buf, "PRIVATE KEY-----") != NULL && (st.st_mode & 077) != 0) {
		rc = sw_errf(err, errlen, SW_EPERM,
			     "%s holds a private key but is readable by others (chmod 600)", path);
		goto out;
	}
	*out = buf;
	buf = NULL;
out:
	if (buf != NULL) {
		memset(buf, 0, got);
		free(buf);
	}
	if (fd >= 0)
		close(fd);
	return rc;
}

grpc_server_credentials *tls_server_creds(const char *ca_pem, const char *cert_pem,
					  const char *key_pem)
{
	grpc_ssl_pem_key_cert_pair kp = { .private_key = key_pem, .cert_chain = cert_pem };
	return grpc_ssl_server_credentials_create_ex(
		ca_pem, &kp, 1, GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, NULL);
}

/* ---- reloadable server material ---- */

struct tls_server_src {
	pthread_mutex_t mu;
	char *ca, *cert, *key;  /* the material new handshakes should use */
	unsigned gen;           /* bumped by tls_server_src_set */
	unsigned served;        /* the generation gRPC has */
	int fetched;            /* gRPC has fetched once */
};

static void free_key(char *key)
{
	if (key != NULL) {
		memset(key, 0, strlen(key));
		free(key);
	}
}

struct tls_server_src *tls_server_src_new(const char *ca_pem, const char *cert_pem,
					  const char *key_pem)
{
	struct tls_server_src *src = calloc(1, sizeof *src);
	if (src == NULL)
		return NULL;
	pthread_mutex_init(&src->mu, NULL);
	src->ca = strdup(ca_pem);
	src->cert = strdup(cert_pem);
	src->key = strdup(key_pem);
	if (src->ca == NULL || src->cert == NULL || src->key == NULL) {
		tls_server_src_free(src);
		return NULL;
	}
	return src;
}

int tls_server_src_set(struct tls_server_src *src, const char *ca_pem, const char *cert_pem,
		       const char *key_pem)
{
	char *ca = strdup(ca_pem), *cert = strdup(cert_pem), *key = strdup(key_pem);
	if (ca == NULL || cert == NULL || key == NULL) {
		free(ca);
		free(cert);
		free_key(key);
		return SW_ENOMEM;
	}
	pthread_mutex_lock(&src->mu);
	free(src->ca);
	free(src->cert);
	free_key(src->key);
	src->ca = ca;
	src->cert = cert;
	src->key = key;
	src->gen++;
	pthread_mutex_unlock(&src->mu);
	return 0;
}

void tls_server_src_free(struct tls_server_src *src)
{
	if (src == NULL)
		return;
	free(src->ca);
	free(src->cert);
	free_key(src->key);
	pthread_mutex_destroy(&src->mu);
	free(src);
}

/* gRPC asks before each handshake (and once when the credentials are
 * made): a new config when the material changed since it last asked. */
static grpc_ssl_certificate_config_reload_status
fetch_config(void *arg, grpc_ssl_server_certificate_config **config)
{
	struct tls_server_src *src = arg;
	grpc_ssl_certificate_config_reload_status st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_UNCHANGED;
	pthread_mutex_lock(&src->mu);
	if (!src->fetched || src->served != src->gen) {
		grpc_ssl_pem_key_cert_pair kp = { .private_key = src->key, .cert_chain = src->cert };
		*config = grpc_ssl_server_certificate_config_create(src->ca, &kp, 1);
		if (*config == NULL) {
			st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_FAIL;
		} else {
			st = GRPC_SSL_CERTIFICATE_CONFIG_RELOAD_NEW;
			src->fetched = 1;
			src->served = src->gen;
		}
	}
	pthread_mutex_unlock(&src->mu);
	return st;
}

grpc_server_credentials *tls_server_creds_reloadable(struct tls_server_src *src)
{
	grpc_ssl_server_credentials_options *o =
		grpc_ssl_server_credentials_create_options_using_config_fetcher(
			GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY, fetch_config, src);
	if (o == NULL)
		return NULL;
	/* Takes ownership of o. */
	return grpc_ssl_server_credentials_create_with_options(o);
}

int tls_check_material(const char *ca_pem, const char *cert_pem, const char *key_pem,
		       struct tls_cert_info *info, char *err, size_t errlen)
{
	int rc = 0;
	BIO *b = NULL;
	X509 *leaf = NULL;
	STACK_OF(X509) *chain = NULL;
	EVP_PKEY *key = NULL;
	X509_STORE *store = NULL;
	X509_STORE_CTX *vctx = NULL;
	BIGNUM *bn = NULL;
	char *hex = NULL;

	memset(info, 0, sizeof *info);
	/* The certificate chain: the leaf first, then any intermediates. */
	b = BIO_new_mem_buf(cert_pem, -1);
	leaf = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
	if (leaf == NULL) {
		rc = sw_errf(err, errlen, SW_EINVAL, "the certificate file holds no PEM certificate");
		goto out;
	}
	chain = sk_X509_new_null();
	for (X509 *x; chain != NULL && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL;)
		if (!sk_X509_push(chain, x))
			X509_free(x);
	BIO_free(b);
	/* The key, and that it belongs to the certificate. */
	b = BIO_new_mem_buf(key_pem, -1);
	key = b ? PEM_read_bio_PrivateKey(b, NULL, NULL, NULL) : NULL;
	if (key == NULL) {
		rc = sw_errf(err, errlen, SW_EINVAL, "the key file holds no PEM private key");
		goto out;
	}
	if (X509_check_private_key(leaf, key) != 1) {
		rc = sw_errf(err, errlen, SW_EINVAL,
			     "the private key does not match the certificate");
		goto out;
	}
	/* The certificate chains to the CA file and is valid now. */
	BIO_free(b);
	b = BIO_new_mem_buf(ca_pem, -1);
	store = X509_STORE_new();
	int ncas = 0;
	for (X509 *x; b != NULL && store != NULL && (x = PEM_read_bio_X509(b, NULL, NULL, NULL)) != NULL;) {
		if (X509_STORE_add_cert(store, x) == 1)
			ncas++;
		X509_free(x);
	}
	if (ncas == 0) {
		rc = sw_errf(err, errlen, SW_EINVAL, "the CA file holds no PEM certificate");
		goto out;
	}
	vctx = X509_STORE_CTX_new();
	if (vctx == NULL || X509_STORE_CTX_init(vctx, store, leaf, chain) != 1) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	if (X509_verify_cert(vctx) != 1) {
		rc = sw_errf(err, errlen, SW_EINVAL, "the certificate does not verify against the CA: %s",
			     X509_verify_cert_error_string(X509_STORE_CTX_get_error(vctx)));
		goto out;
	}
	/* What the log says about it. */
	bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(leaf), NULL);
	hex = bn ? BN_bn2hex(bn) : NULL;
	snprintf(info->serial, sizeof info->serial, "%s", hex ? hex : "?");
	struct tm tm;
	if (ASN1_TIME_to_tm(X509_get0_notAfter(leaf), &tm) == 1)
		strftime(info->not_after, sizeof info->not_after, "%Y-%m-%dT%H:%M:%SZ", &tm);
	char why[256];
	if (tls_cert_spiffe_id(cert_pem, info->spiffe_id, sizeof info->spiffe_id, why,
			       sizeof why) != 0)
		rc = sw_errf(err, errlen, SW_EINVAL, "%s", why);
out:
	OPENSSL_free(hex);
	BN_free(bn);
	X509_STORE_CTX_free(vctx);
	X509_STORE_free(store);
	EVP_PKEY_free(key);
	sk_X509_pop_free(chain, X509_free);
	X509_free(leaf);
	BIO_free(b);
	return rc;
}

struct tls_pin {
	atomic_int refs;
	pthread_mutex_t mu;
	char expect[SPIFFE_ID_MAX + 1];
	char why[384]; /* the last refusal; "" after a pass */
};

const char *tls_pin_expected(const struct tls_pin *pin)
{
	return pin->expect;
}

void tls_pin_release(struct tls_pin *pin)
{
	if (pin == NULL || atomic_fetch_sub(&pin->refs, 1) != 1)
		return;
	pthread_mutex_destroy(&pin->mu);
	free(pin);
}

int tls_pin_refusal(struct tls_pin *pin, char *out, size_t outlen)
{
	pthread_mutex_lock(&pin->mu);
	int have = pin->why[0] != '\0';
	if (have)
		snprintf(out, outlen, "%s", pin->why);
	pthread_mutex_unlock(&pin->mu);
	return have;
}

/* Copies an ID read from a certificate for a message: printable ASCII only. */
static void printable(char *out, size_t outlen, const unsigned char *p, size_t n)
{
	size_t i;
	if (outlen == 0)
		return;
	for (i = 0; i < n && i + 1 < outlen; i++)
		out[i] = (p[i] > 0x20 && p[i] < 0x7f) ? (char)p[i] : '?';
	out[i] = '\0';
}

/* The URI SANs of x: their number, and the first one (printable) in first. */
static int uri_sans(X509 *x, char *first, size_t firstlen, int *exact_len_ok)
{
	GENERAL_NAMES *gens = X509_get_ext_d2i(x, NID_subject_alt_name, NULL, NULL);
	int n = 0;
	first[0] = '\0';
	*exact_len_ok = 0;
	for (int i = 0; gens != NULL && i < sk_GENERAL_NAME_num(gens); i++) {
		const GENERAL_NAME *g = sk_GENERAL_NAME_value(gens, i);
		if (g->type != GEN_URI)
			continue;
		if (n++ == 0) {
			const ASN1_IA5STRING *u = g->d.uniformResourceIdentifier;
			size_t len = (size_t)ASN1_STRING_length(u);
			const unsigned char *d = ASN1_STRING_get0_data(u);
			*exact_len_ok = len < firstlen && memchr(d, '\0', len) == NULL;
			printable(first, firstlen, d, len);
		}
	}
	GENERAL_NAMES_free(gens);
	return n;
}

static X509 *read_cert(const char *pem)
{
	BIO *b = BIO_new_mem_buf(pem, -1);
	X509 *x = b ? PEM_read_bio_X509(b, NULL, NULL, NULL) : NULL;
	BIO_free(b);
	return x;
}

int tls_check_server_cert(const char *pem, const char *expect_id, char *why, size_t whylen)
{
	int rc = 0, exact = 0;
	char id[SPIFFE_ID_MAX + 2];
	X509 *x = read_cert(pem);
	if (x == NULL) {
		rc = sw_errf(why, whylen, SW_EUNAUTH, "its certificate does not parse");
		goto out;
	}
	int n = uri_sans(x, id, sizeof id, &exact);
	if (n != 1) {
		rc = sw_errf(why, whylen, SW_EUNAUTH,
			     "its certificate carries %d URI SANs, not exactly one SPIFFE ID", n);
		goto out;
	}
	if (!exact || strcmp(id, expect_id) != 0) {
		rc = sw_errf(why, whylen, SW_EUNAUTH, "it presented %s", id);
		goto out;
	}
	/* serverAuth: a certificate with an extended key usage that lacks it
	 * (agents', users') is not meant to serve. */
	if (X509_check_purpose(x, X509_PURPOSE_SSL_SERVER, 0) != 1) {
		rc = sw_errf(why, whylen, SW_EUNAUTH,
			     "its certificate %s is not meant for serving TLS (no serverAuth)", id);
		goto out;
	}
out:
	X509_free(x);
	return rc;
}

int tls_cert_spiffe_id(const char *pem, char *out, size_t outlen, char *err, size_t errlen)
{
	int exact = 0, rc = 0;
	X509 *x = read_cert(pem);
	if (x == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "the certificate does not parse");
	if (uri_sans(x, out, outlen, &exact) != 1 || !exact)
		rc = sw_errf(err, errlen, SW_EINVAL,
			     "the certificate must carry exactly one spiffe:// URI SAN");
	X509_free(x);
	if (rc == 0 && spiffe_parse(out, NULL, NULL, NULL, 0) != 0)
		rc = sw_errf(err, errlen, SW_EINVAL, "the certificate's URI SAN is not a SPIFFE ID");
	return rc;
}

/* gRPC's verify_peer_callback: runs on a gRPC thread after the chain and
 * host-name checks, before the connection carries any request. Non-zero
 * fails the handshake. */
static int pin_verify(const char *target_name, const char *peer_pem, void *userdata)
{
	(void)target_name;
	struct tls_pin *pin = userdata;
	char why[sizeof pin->why];
	int rc = tls_check_server_cert(peer_pem, pin->expect, why, sizeof why);
	pthread_mutex_lock(&pin->mu);
	snprintf(pin->why, sizeof pin->why, "%s", rc == 0 ? "" : why);
	pthread_mutex_unlock(&pin->mu);
	return rc == 0 ? 0 : 1;
}

static void pin_destruct(void *userdata)
{
	tls_pin_release(userdata);
}

grpc_channel_credentials *tls_client_creds(const char *ca_pem, const char *cert_pem,
					   const char *key_pem, const char *expect_id,
					   struct tls_pin **pin_out)
{
	grpc_ssl_pem_key_cert_pair kp = { .private_key = key_pem, .cert_chain = cert_pem };
	int have = cert_pem != NULL && key_pem != NULL;
	if (pin_out != NULL)
		*pin_out = NULL;
	if (expect_id == NULL)
		return grpc_ssl_credentials_create_ex(ca_pem, have ? &kp : NULL, NULL, NULL);
	if (strlen(expect_id) > SPIFFE_ID_MAX)
		return NULL;
	struct tls_pin *pin = calloc(1, sizeof *pin);
	if (pin == NULL)
		return NULL;
	atomic_init(&pin->refs, 1); /* the credentials' reference, dropped by pin_destruct */
	pthread_mutex_init(&pin->mu, NULL);
	snprintf(pin->expect, sizeof pin->expect, "%s", expect_id);
	grpc_ssl_verify_peer_options vo = { .verify_peer_callback = pin_verify,
					    .verify_peer_callback_userdata = pin,
					    .verify_peer_destruct = pin_destruct };
	if (pin_out != NULL) {
		atomic_fetch_add(&pin->refs, 1);
		*pin_out = pin;
	}
	grpc_channel_credentials *cc =
		grpc_ssl_credentials_create_ex(ca_pem, have ? &kp : NULL, &vo, NULL);
	if (cc == NULL) {
		tls_pin_release(pin); /* the credentials never took theirs */
		if (pin_out != NULL) {
			tls_pin_release(pin);
			*pin_out = NULL;
		}
	}
	return cc;
}

int tls_peer_kind_ok(const char *peer, unsigned kinds, const char *path, char *err,
		     size_t errlen)
{
	static const char *const names[] = { "other", "service", "agent", "user" };
	struct spiffe_id id;
	if (spiffe_parse(peer, NULL, &id, NULL, 0) != 0)
		return sw_errf(err, errlen, SW_EPERM, "%s: the caller's SPIFFE ID is not accepted",
			       path);
	if (kinds & TLS_PEER_KIND_BIT(id.kind))
		return 0;
	/* "services", "services and users", "services, agents and users" */
	char allowed[64] = "";
	size_t used = 0;
	int total = 0, done = 0;
	for (int k = SPIFFE_SERVICE; k <= SPIFFE_USER; k++)
		total += (kinds & TLS_PEER_KIND_BIT(k)) != 0;
	for (int k = SPIFFE_SERVICE; k <= SPIFFE_USER; k++) {
		if (!(kinds & TLS_PEER_KIND_BIT(k)))
			continue;
		const char *sep = done == 0 ? "" : done == total - 1 ? " and " : ", ";
		int w = snprintf(allowed + used, sizeof allowed - used, "%s%ss", sep, names[k]);
		if (w < 0 || (size_t)w >= sizeof allowed - used)
			break;
		used += (size_t)w;
		done++;
	}
	return sw_errf(err, errlen, SW_EPERM,
		       "permission denied: %s is not for %s principals (only %s may call it); "
		       "%s is one",
		       path, names[id.kind], used ? allowed : "nobody", peer);
}

int tls_peer_spiffe_id(grpc_call *call, const char *trust_domain, char *out, size_t outlen,
		       char *err, size_t errlen)
{
	int rc = 0, count = 0;
	grpc_auth_context *ac = grpc_call_auth_context(call);
	if (ac == NULL || !grpc_auth_context_peer_is_authenticated(ac)) {
		rc = sw_errf(err, errlen, SW_EUNAUTH, "the caller is not authenticated");
		goto out;
	}
	grpc_auth_property_iterator it =
		grpc_auth_context_find_properties_by_name(ac, GRPC_PEER_SPIFFE_ID_PROPERTY_NAME);
	const grpc_auth_property *p;
	while ((p = grpc_auth_property_iterator_next(&it)) != NULL) {
		count++;
		if (count > 1)
			break;
		if (p->value_length == 0 || p->value_length >= outlen ||
		    memchr(p->value, '\0', p->value_length) != NULL) {
			rc = sw_errf(err, errlen, SW_EUNAUTH, "the certificate's SPIFFE ID is malformed");
			goto out;
		}
		memcpy(out, p->value, p->value_length);
		out[p->value_length] = '\0';
	}
	if (count != 1) {
		rc = sw_errf(err, errlen, SW_EUNAUTH,
			     "the client certificate must carry exactly one spiffe:// URI SAN");
		goto out;
	}
	char why[128];
	if (spiffe_parse(out, trust_domain, NULL, why, sizeof why) != 0) {
		rc = sw_errf(err, errlen, SW_EUNAUTH, "the certificate's SPIFFE ID is not accepted: %s",
			     why);
		goto out;
	}
out:
	if (rc != 0 && outlen > 0)
		out[0] = '\0';
	if (ac != NULL)
		grpc_auth_context_release(ac);
	return rc;
}
