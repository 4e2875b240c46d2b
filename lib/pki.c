/*
 * pki.c - CA creation and certificate issuance with OpenSSL 3 (see pki.h).
 */
#include "pki.h"
#include "err.h"
#include "spiffe.h"

#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Opens path for writing with the given mode, replacing any old file. */
static FILE *open_out(const char *path, mode_t mode, int excl)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_CLOEXEC | (excl ? O_EXCL : O_TRUNC), mode);
	if (fd < 0)
		return NULL;
	if (fchmod(fd, mode) != 0) {
		close(fd);
		return NULL;
	}
	FILE *f = fdopen(fd, "w");
	if (f == NULL)
		close(fd);
	return f;
}

static int write_key(const char *path, EVP_PKEY *k, int excl, char *err, size_t errlen)
{
	FILE *f = open_out(path, 0600, excl);
	if (f == NULL)
		return sw_errf(err, errlen, errno == EEXIST ? SW_EEXIST : SW_EIO, "%s: %s", path,
			       strerror(errno));
	int ok = PEM_write_PrivateKey(f, k, NULL, NULL, 0, NULL, NULL) == 1;
	if (fclose(f) != 0)
		ok = 0;
	return ok ? 0 : sw_errf(err, errlen, SW_EIO, "cannot write %s", path);
}

static int write_cert(const char *path, X509 *x, char *err, size_t errlen)
{
	FILE *f = open_out(path, 0644, 0);
	if (f == NULL)
		return sw_errf(err, errlen, SW_EIO, "%s: %s", path, strerror(errno));
	int ok = PEM_write_X509(f, x) == 1;
	if (fclose(f) != 0)
		ok = 0;
	return ok ? 0 : sw_errf(err, errlen, SW_EIO, "cannot write %s", path);
}

static int add_ext(X509 *x, X509 *issuer, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, issuer, x, NULL, NULL, 0);
	X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &ctx, nid, value);
	if (e == NULL)
		return -1;
	int ok = X509_add_ext(x, e, -1);
	X509_EXTENSION_free(e);
	return ok ? 0 : -1;
}

static int set_serial(X509 *x)
{
	BIGNUM *bn = BN_new();
	int rc = -1;
	if (bn != NULL && BN_rand(bn, 127, BN_RAND_TOP_ANY, BN_RAND_BOTTOM_ANY) == 1 &&
	    BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x)) != NULL)
		rc = 0;
	BN_free(bn);
	return rc;
}

static X509 *new_cert(EVP_PKEY *key, const char *cn, int days, long offset)
{
	X509 *x = X509_new();
	if (x == NULL)
		return NULL;
	X509_NAME *name = X509_get_subject_name(x);
	if (X509_set_version(x, 2) != 1 || set_serial(x) != 0 ||
	    X509_gmtime_adj(X509_getm_notBefore(x), offset - 300) == NULL ||
	    X509_gmtime_adj(X509_getm_notAfter(x), offset + (long)days * 86400) == NULL ||
	    X509_set_pubkey(x, key) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, (const unsigned char *)"Slipway", -1,
				       -1, 0) != 1 ||
	    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1,
				       0) != 1) {
		X509_free(x);
		return NULL;
	}
	return x;
}

static int path_join(char *out, size_t len, const char *dir, const char *file)
{
	int n = snprintf(out, len, "%s/%s", dir, file);
	return (n < 0 || (size_t)n >= len) ? -1 : 0;
}

int pki_init(const char *dir, const char *trust_domain, int days, char *err, size_t errlen)
{
	int rc = 0;
	EVP_PKEY *key = NULL;
	X509 *x = NULL;
	char kp[4096], cp[4096], tp[4096], cn[200];

	if (!spiffe_trust_domain_ok(trust_domain))
		return sw_errf(err, errlen, SW_EINVAL, "invalid trust domain '%s'", trust_domain);
	if (path_join(kp, sizeof kp, dir, "ca.key") || path_join(cp, sizeof cp, dir, "ca.crt") ||
	    path_join(tp, sizeof tp, dir, "trust-domain"))
		return sw_errf(err, errlen, SW_EINVAL, "directory path too long");
	if (mkdir(dir, 0700) != 0 && errno != EEXIST)
		return sw_errf(err, errlen, SW_EIO, "mkdir %s: %s", dir, strerror(errno));
	if (days <= 0)
		days = 3650;
	key = EVP_EC_gen("P-256");
	snprintf(cn, sizeof cn, "Slipway CA %s", trust_domain);
	if (key == NULL || (x = new_cert(key, cn, days, 0)) == NULL ||
	    X509_set_issuer_name(x, X509_get_subject_name(x)) != 1 ||
	    add_ext(x, x, NID_basic_constraints, "critical,CA:TRUE,pathlen:0") != 0 ||
	    add_ext(x, x, NID_key_usage, "critical,keyCertSign,cRLSign") != 0 ||
	    add_ext(x, x, NID_subject_key_identifier, "hash") != 0 ||
	    X509_sign(x, key, EVP_sha256()) == 0) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "cannot create the CA certificate");
		goto out;
	}
	if ((rc = write_key(kp, key, 1, err, errlen)) != 0)
		goto out;
	if ((rc = write_cert(cp, x, err, errlen)) != 0)
		goto out;
	FILE *f = open_out(tp, 0644, 0);
	if (f == NULL || fprintf(f, "%s\n", trust_domain) < 0) {
		if (f)
			fclose(f);
		rc = sw_errf(err, errlen, SW_EIO, "cannot write %s", tp);
		goto out;
	}
	if (fclose(f) != 0)
		rc = sw_errf(err, errlen, SW_EIO, "cannot write %s", tp);
out:
	X509_free(x);
	EVP_PKEY_free(key);
	return rc;
}

int pki_trust_domain(const char *dir, char *out, size_t outlen, char *err, size_t errlen)
{
	char tp[4096];
	if (path_join(tp, sizeof tp, dir, "trust-domain"))
		return sw_errf(err, errlen, SW_EINVAL, "directory path too long");
	FILE *f = fopen(tp, "r");
	if (f == NULL)
		return sw_errf(err, errlen, SW_EIO, "%s: %s (run 'slipway pki init' first)", tp,
			       strerror(errno));
	int ok = fgets(out, (int)outlen, f) != NULL;
	fclose(f);
	if (ok)
		out[strcspn(out, "\r\n")] = '\0';
	if (!ok || !spiffe_trust_domain_ok(out))
		return sw_errf(err, errlen, SW_EINVAL, "%s does not hold a valid trust domain", tp);
	return 0;
}

/* Checks a DNS name: labels of [A-Za-z0-9-], dots between. */
static int dns_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 253)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '-' || c == '.' || (c == '*' && i == 0)))
			return 0;
	}
	return 1;
}

static int ip_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 45)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f') ||
		      (s[i] >= 'A' && s[i] <= 'F') || s[i] == '.' || s[i] == ':'))
			return 0;
	return 1;
}

int pki_issue(const struct pki_issue_req *r, char *err, size_t errlen)
{
	int rc = 0;
	EVP_PKEY *cakey = NULL, *key = NULL;
	X509 *ca = NULL, *x = NULL;
	FILE *f = NULL;
	char kp[4096], cp[4096], okp[4096], ocp[4096], san[4096];
	size_t sl = 0;

	if (path_join(kp, sizeof kp, r->dir, "ca.key") || path_join(cp, sizeof cp, r->dir, "ca.crt"))
		return sw_errf(err, errlen, SW_EINVAL, "directory path too long");
	int n1 = snprintf(okp, sizeof okp, "%s.key", r->out_prefix);
	int n2 = snprintf(ocp, sizeof ocp, "%s.crt", r->out_prefix);
	if (n1 < 0 || (size_t)n1 >= sizeof okp || n2 < 0 || (size_t)n2 >= sizeof ocp)
		return sw_errf(err, errlen, SW_EINVAL, "output prefix too long");
	san[0] = '\0';
	for (int k = 0; k < 3; k++) {
		static const char *const kinds[3] = { "URI", "DNS", "IP" };
		const char *const *list = k == 0 ? r->uris : k == 1 ? r->dns : r->ips;
		for (int i = 0; i < PKI_MAX_SANS && list[i] != NULL; i++) {
			int ok = k == 0 ? spiffe_parse(list[i], NULL, NULL, NULL, 0) == 0
				 : k == 1 ? dns_ok(list[i])
					  : ip_ok(list[i]);
			if (!ok)
				return sw_errf(err, errlen, SW_EINVAL, "invalid %s SAN '%s'", kinds[k],
					       list[i]);
			int n = snprintf(san + sl, sizeof san - sl, "%s%s:%s", sl ? "," : "", kinds[k],
					 list[i]);
			if (n < 0 || (size_t)n >= sizeof san - sl)
				return sw_errf(err, errlen, SW_EINVAL, "too many SANs");
			sl += (size_t)n;
		}
	}
	if (sl == 0)
		return sw_errf(err, errlen, SW_EINVAL, "a certificate needs at least one SAN");

	f = fopen(kp, "r");
	if (f == NULL) {
		rc = sw_errf(err, errlen, SW_EIO, "%s: %s", kp, strerror(errno));
		goto out;
	}
	cakey = PEM_read_PrivateKey(f, NULL, NULL, NULL);
	fclose(f);
	f = fopen(cp, "r");
	if (f == NULL) {
		rc = sw_errf(err, errlen, SW_EIO, "%s: %s", cp, strerror(errno));
		goto out;
	}
	ca = PEM_read_X509(f, NULL, NULL, NULL);
	fclose(f);
	f = NULL;
	if (cakey == NULL || ca == NULL) {
		rc = sw_errf(err, errlen, SW_EINVAL, "cannot read the CA in %s", r->dir);
		goto out;
	}
	key = EVP_EC_gen("P-256");
	const char *cn = r->common_name ? r->common_name : "slipway";
	if (key == NULL || (x = new_cert(key, cn, r->days > 0 ? r->days : 365,
					  r->not_before_offset_s)) == NULL ||
	    X509_set_issuer_name(x, X509_get_subject_name(ca)) != 1 ||
	    add_ext(x, ca, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
	    add_ext(x, ca, NID_key_usage, "critical,digitalSignature,keyAgreement") != 0 ||
	    add_ext(x, ca, NID_ext_key_usage,
		    r->server ? "serverAuth,clientAuth" : "clientAuth") != 0 ||
	    add_ext(x, ca, NID_subject_key_identifier, "hash") != 0 ||
	    add_ext(x, ca, NID_authority_key_identifier, "keyid:always") != 0 ||
	    add_ext(x, ca, NID_subject_alt_name, san) != 0 ||
	    X509_sign(x, cakey, EVP_sha256()) == 0) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "cannot sign the certificate");
		goto out;
	}
	if ((rc = write_key(okp, key, 0, err, errlen)) != 0)
		goto out;
	rc = write_cert(ocp, x, err, errlen);
out:
	X509_free(x);
	X509_free(ca);
	EVP_PKEY_free(key);
	EVP_PKEY_free(cakey);
	return rc;
}
