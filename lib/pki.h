/*
 * pki.h - the deployment's small certificate authority (OpenSSL libcrypto).
 *
 * `slipway pki init` creates DIR/ca.key (0600) and DIR/ca.crt; `slipway pki
 * issue` signs EC P-256 leaf certificates with exactly one URI SAN, the
 * principal's SPIFFE ID, plus DNS/IP SANs for servers (services only:
 * agent and user certificates are clientAuth only). The trust domain is
 * recorded in DIR/trust-domain. Private keys are always written 0600.
 */
#ifndef SLIPWAY_PKI_H
#define SLIPWAY_PKI_H

#include <stddef.h>

#define PKI_MAX_SANS 8

struct pki_issue_req {
	const char *dir;          /* CA directory */
	const char *out_prefix;   /* writes <prefix>.crt and <prefix>.key */
	const char *common_name;  /* subject CN (informational only) */
	const char *uris[PKI_MAX_SANS];  /* URI SANs (the CLI always gives exactly one) */
	const char *dns[PKI_MAX_SANS];   /* DNS SANs */
	const char *ips[PKI_MAX_SANS];   /* IP SANs */
	int server;               /* add serverAuth to the extended key usage */
	int days;                 /* validity; 0 = 365 */
	long not_before_offset_s; /* shifts the validity window (tests: expired certs) */
};

/* Creates a CA in dir (created 0700 if missing) for trust_domain. Refuses
 * to overwrite an existing CA key. Returns 0 or SW_E* with err. */
int pki_init(const char *dir, const char *trust_domain, int days, char *err, size_t errlen);

/* Reads DIR/trust-domain into out. */
int pki_trust_domain(const char *dir, char *out, size_t outlen, char *err, size_t errlen);

/* Issues a certificate as described by r. */
int pki_issue(const struct pki_issue_req *r, char *err, size_t errlen);

#endif
