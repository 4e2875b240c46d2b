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

/* Client credentials presenting cert/key (may be NULL for none) and
 * trusting ca_pem. Caller releases with grpc_channel_credentials_release. */
grpc_channel_credentials *tls_client_creds(const char *ca_pem, const char *cert_pem,
					   const char *key_pem);

/*
 * Copies the caller's SPIFFE ID into out[outlen]: there must be exactly one
 * peer_spiffe_id property, it must parse as a SPIFFE ID of trust_domain (any
 * domain when NULL). Returns 0 or SW_EUNAUTH with the reason in err.
 */
int tls_peer_spiffe_id(grpc_call *call, const char *trust_domain, char *out, size_t outlen,
		       char *err, size_t errlen);

#endif
