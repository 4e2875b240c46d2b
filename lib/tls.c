/*
 * tls.c - PEM loading, gRPC mTLS credentials and peer identity.
 */
#include "tls.h"
#include "err.h"
#include "spiffe.h"

#include <openssl/bio.h>
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
