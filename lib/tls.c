/*
 * tls.c - PEM loading, gRPC mTLS credentials and peer identity.
 */
#include "tls.h"
#include "err.h"
#include "spiffe.h"

#include <errno.h>
#include <fcntl.h>
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

grpc_channel_credentials *tls_client_creds(const char *ca_pem, const char *cert_pem,
					   const char *key_pem)
{
	grpc_ssl_pem_key_cert_pair kp = { .private_key = key_pem, .cert_chain = cert_pem };
	int have = cert_pem != NULL && key_pem != NULL;
	return grpc_ssl_credentials_create_ex(ca_pem, have ? &kp : NULL, NULL, NULL);
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
