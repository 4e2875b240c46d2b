/* Unit tests for the identity checks of lib/tls: the server pin
 * (tls_check_server_cert, run during the handshake) and the kind of
 * caller (tls_peer_kind_ok), on real certificates from lib/pki. */
#include "err.h"
#include "pki.h"
#include "rpc.h"
#include "spiffe.h"
#include "tls.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

static char dir[] = "/tmp/test_tls_pin.XXXXXX";
static char cadir[300]; /* dir/ca */

/* Issues a certificate (prefix under dir) and returns its PEM text. */
static char *issue(const char *name, const char *uri, const char *uri2, int server, int names)
{
	char prefix[256], path[300], err[256];
	snprintf(prefix, sizeof prefix, "%s/%s", dir, name);
	struct pki_issue_req r = { .dir = cadir, .out_prefix = prefix, .common_name = name,
				   .server = server };
	r.uris[0] = uri;
	r.uris[1] = uri2;
	if (names) {
		r.dns[0] = "localhost";
		r.ips[0] = "127.0.0.1";
	}
	assert_int_equal(pki_issue(&r, err, sizeof err), 0);
	snprintf(path, sizeof path, "%s.crt", prefix);
	char *pem = NULL;
	assert_int_equal(tls_read_pem(path, &pem, err, sizeof err), 0);
	return pem;
}

static int setup(void **state)
{
	(void)state;
	char err[256];
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(cadir, sizeof cadir, "%s/ca", dir);
	return pki_init(cadir, "slipway", 1, err, sizeof err) == 0 ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	char cmd[300];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_pin(void **state)
{
	(void)state;
	char why[384];
	const char *orch = "spiffe://slipway/service/orchestrator";
	char *svc = issue("orch", orch, NULL, 1, 1);
	char *other = issue("policy", "spiffe://slipway/service/policy", NULL, 1, 1);
	char *legacy_agent = issue("agent-old", "spiffe://slipway/agent/r/h", NULL, 1, 1);
	char *agent = issue("agent", "spiffe://slipway/agent/r/h2", NULL, 0, 0);
	char *two = issue("two", orch, "spiffe://slipway/user/mallory", 1, 1);
	char *client_only = issue("orch-client", orch, NULL, 0, 1);

	assert_int_equal(tls_check_server_cert(svc, orch, why, sizeof why), 0);
	/* another service, a server-capable agent certificate: the ID decides */
	assert_int_equal(tls_check_server_cert(other, orch, why, sizeof why), SW_EUNAUTH);
	assert_non_null(strstr(why, "spiffe://slipway/service/policy"));
	assert_int_equal(tls_check_server_cert(legacy_agent, orch, why, sizeof why), SW_EUNAUTH);
	assert_non_null(strstr(why, "spiffe://slipway/agent/r/h"));
	assert_int_equal(tls_check_server_cert(agent, orch, why, sizeof why), SW_EUNAUTH);
	/* two URI SANs: no single identity */
	assert_int_equal(tls_check_server_cert(two, orch, why, sizeof why), SW_EUNAUTH);
	assert_non_null(strstr(why, "2 URI SANs"));
	/* the right ID on a certificate not meant for serving */
	assert_int_equal(tls_check_server_cert(client_only, orch, why, sizeof why), SW_EUNAUTH);
	assert_non_null(strstr(why, "serverAuth"));
	/* a prefix of the expected ID is not the ID */
	assert_int_equal(tls_check_server_cert(svc, "spiffe://slipway/service/orch", why, sizeof why),
			 SW_EUNAUTH);
	assert_int_equal(tls_check_server_cert("not a certificate", orch, why, sizeof why),
			 SW_EUNAUTH);

	char id[SPIFFE_ID_MAX + 2], err[256];
	assert_int_equal(tls_cert_spiffe_id(agent, id, sizeof id, err, sizeof err), 0);
	assert_string_equal(id, "spiffe://slipway/agent/r/h2");
	assert_int_equal(tls_cert_spiffe_id(two, id, sizeof id, err, sizeof err), SW_EINVAL);
	free(svc);
	free(other);
	free(legacy_agent);
	free(agent);
	free(two);
	free(client_only);
}

static void test_peer_kinds(void **state)
{
	(void)state;
	char err[512];
	const char *path = "/slipway.v1.Audit/Append";
	assert_int_equal(tls_peer_kind_ok("spiffe://slipway/service/policy", RPC_PEER_SERVICE, path,
					  err, sizeof err),
			 0);
	assert_int_equal(tls_peer_kind_ok("spiffe://slipway/user/alice", RPC_PEER_SERVICE, path, err,
					  sizeof err),
			 SW_EPERM);
	assert_non_null(strstr(err, "not for user principals"));
	assert_non_null(strstr(err, "only services may call it"));
	assert_int_equal(tls_peer_kind_ok("spiffe://slipway/agent/r/h",
					  RPC_PEER_USER | RPC_PEER_SERVICE, path, err, sizeof err),
			 SW_EPERM);
	assert_non_null(strstr(err, "only services and users"));
	assert_int_equal(tls_peer_kind_ok("spiffe://slipway/agent/r/h", RPC_PEER_ANY, path, err,
					  sizeof err),
			 0);
	/* an ID of no known kind is never accepted */
	assert_int_equal(tls_peer_kind_ok("spiffe://slipway/other/x", RPC_PEER_ANY, path, err,
					  sizeof err),
			 SW_EPERM);
	/* the bits of rpc.h are those of tls.h */
	assert_int_equal(RPC_PEER_SERVICE, TLS_PEER_KIND_BIT(SPIFFE_SERVICE));
	assert_int_equal(RPC_PEER_AGENT, TLS_PEER_KIND_BIT(SPIFFE_AGENT));
	assert_int_equal(RPC_PEER_USER, TLS_PEER_KIND_BIT(SPIFFE_USER));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pin),
		cmocka_unit_test(test_peer_kinds),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
