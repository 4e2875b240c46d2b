/*
 * tls.h - mutual TLS material and caller identity for the RPC layer.
 *
 * Servers require and verify a client certificate signed by the deployment
 * CA (GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY): a client
 * with no certificate, or one from another CA, fails the handshake and never
 * reaches a handler. The caller's identity is the auth property
 * peer_spiffe_id, which gRPC sets only when the certificate has exactly one
 * URI SAN; no other SAN and never the CN is used.
 */
#ifndef SLIPWAY_TLS_H
#define SLIPWAY_TLS_H

#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <stddef.h>

#define TLS_PEM_MAX (1 << 20)

/* Reads a PEM file (at most TLS_PEM_MAX bytes) into a new NUL-terminated
 * string (free with free()). When it holds a private key, the file must not
 * be readable by group or others. Returns 0, SW_EIO or SW_EINVAL. */
int tls_read_pem(const char *path, char **out, char *err, size_t errlen);

/* Server credentials that require a client certificate chaining to ca_pem.
 * Returns NULL on failure. Caller releases with
 * grpc_server_credentials_release. */
grpc_server_credentials *tls_server_creds(const char *ca_pem, const char *cert_pem,
					  const char *key_pem);

/*
 * Certificate rotation (SIGHUP). A server's TLS material lives in a
 * tls_server_src; credentials made with tls_server_creds_reloadable ask it
 * before each handshake, so new connections use whatever was last set
 * with tls_server_src_set while established connections keep theirs.
 */
struct tls_server_src;

/* Returns a new source holding copies of the PEM texts (free with
 * tls_server_src_free once the server using it is destroyed), or NULL. */
struct tls_server_src *tls_server_src_new(const char *ca_pem, const char *cert_pem,
					  const char *key_pem);

/* Replaces the material (copied) for new handshakes. Check it first with
 * tls_check_material: gRPC refusing it would fail every new handshake.
 * Returns 0 or SW_ENOMEM (the old material stays). Any thread. */
int tls_server_src_set(struct tls_server_src *src, const char *ca_pem, const char *cert_pem,
		       const char *key_pem);

void tls_server_src_free(struct tls_server_src *src);

/* Server credentials (client certificate required, as tls_server_creds)
 * that follow src, which must outlive them. NULL on failure. */
grpc_server_credentials *tls_server_creds_reloadable(struct tls_server_src *src);

struct tls_cert_info {
	char serial[80];    /* hex */
	char not_after[32]; /* 2027-01-01T00:00:00Z */
	char spiffe_id[256];
};

/*
 * Checks TLS material before it is put in service: the certificate file
 * starts with a certificate, the key file holds the private key of that
 * certificate, the certificate verifies against the CA file now (chain,
 * validity dates) and carries exactly one URI SAN. Fills *info (for the
 * log). Returns 0, or SW_EINVAL with the reason in err (never key
 * material).
 */
int tls_check_material(const char *ca_pem, const char *cert_pem, const char *key_pem,
		       struct tls_cert_info *info, char *err, size_t errlen);

/*
 * Server pinning. A client states the SPIFFE ID of the server it means to
 * reach; during the TLS handshake, after gRPC has checked the chain and the
 * host name and before any request byte is sent, the server's leaf
 * certificate must be meant for serving (tls_check_server_cert) and carry
 * exactly that ID as its only URI SAN. Otherwise the handshake fails and
 * the connection is closed: calls fail with UNAVAILABLE, and the reason is
 * kept in the pin for the client's error message (gRPC's own message only
 * says "Verify peer callback returned a failure").
 */
struct tls_pin;

/* Client credentials presenting cert/key (may be NULL for none), trusting
 * ca_pem, and pinned to the server ID expect_id (NULL: no pin, for
 * benchmarks and raw tools only; rpc_client_new always pins). When pin is
 * not NULL it receives a new reference to the pin's state (release with
 * tls_pin_release). Returns NULL on failure. Caller releases the
 * credentials with grpc_channel_credentials_release. */
grpc_channel_credentials *tls_client_creds(const char *ca_pem, const char *cert_pem,
					   const char *key_pem, const char *expect_id,
					   struct tls_pin **pin);

/* Copies the reason of the pin's last refusal into out and returns 1, or
 * returns 0 when the last handshake checked passed (or none ran). Any
 * thread. */
int tls_pin_refusal(struct tls_pin *pin, char *out, size_t outlen);

/* The ID a pin expects (borrowed for the pin's life). */
const char *tls_pin_expected(const struct tls_pin *pin);

/* Drops a reference. NULL ok. */
void tls_pin_release(struct tls_pin *pin);

/* The check the pin runs on a server's leaf certificate (PEM): it may
 * serve TLS (no extended key usage, or one with serverAuth: agent and
 * user certificates are clientAuth only) and its single URI SAN is
 * expect_id. Returns 0, or SW_EUNAUTH with the reason in why (names the ID
 * found, never key material). */
int tls_check_server_cert(const char *pem, const char *expect_id, char *why, size_t whylen);

/* Copies the single URI SAN (the SPIFFE ID) of the certificate in pem into
 * out, e.g. to learn our own trust domain. Returns 0, or SW_EINVAL. */
int tls_cert_spiffe_id(const char *pem, char *out, size_t outlen, char *err, size_t errlen);

/* Kinds of principal, as bits for rpc_method.peers (1u << enum spiffe_kind). */
#define TLS_PEER_KIND_BIT(kind) (1u << (unsigned)(kind))

/* Whether the principal `peer` (a validated SPIFFE ID) is of a kind in the
 * mask `kinds` (TLS_PEER_KIND_BIT of enum spiffe_kind). Returns 0, or
 * SW_EPERM with "<path> is not for <kind> principals (...)" in err. */
int tls_peer_kind_ok(const char *peer, unsigned kinds, const char *path, char *err,
		     size_t errlen);

/*
 * Copies the caller's SPIFFE ID into out[outlen]: there must be exactly one
 * peer_spiffe_id property, it must parse as a SPIFFE ID of trust_domain (any
 * domain when NULL). Returns 0 or SW_EUNAUTH with the reason in err.
 */
int tls_peer_spiffe_id(grpc_call *call, const char *trust_domain, char *out, size_t outlen,
		       char *err, size_t errlen);

#endif
