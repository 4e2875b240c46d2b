/*
 * health.c - `slipway health [--addr HOST:PORT] [SERVICE...]`: asks each
 * service's grpc.health.v1.Health/Check over mTLS. With no arguments it
 * checks every service that has an address (SLIPWAY_<SERVICE>_ADDR, or the
 * config file's context). Exit status 0
 * only when every checked service is SERVING.
 */
#include "cli.h"
#include "err.h"

#include "grpc/health/v1/health.pb-c.h"

#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const known[] = { "audit", "artifact", "policy", "secrets", "orchestrator" };

/* Returns 1 serving, 0 not serving, -1 unreachable (message printed). */
static int check_one(struct cli *c, const char *name, const char *addr, json_t *out)
{
	struct rpc_client *cl = NULL;
	char err[512];
	if (cli_connect(c, name, addr, &cl) != 0)
		return -1;
	Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
	ProtobufCMessage *resp = NULL;
	struct rpc_call_opts o = cli_call_opts(c);
	if (o.timeout_ms > 5000)
		o.timeout_ms = 5000;
	int rc = rpc_call(cl, &grpc__health__v1__health__descriptor, "Check", &req.base, &resp, &o,
			  err, sizeof err);
	rpc_client_free(cl);
	int st = -1;
	const char *text = "UNREACHABLE";
	if (rc == 0) {
		Grpc__Health__V1__HealthCheckResponse *r = (void *)resp;
		st = r->status == GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
		text = st ? "SERVING" : "NOT_SERVING";
		protobuf_c_message_free_unpacked(resp, NULL);
	}
	if (c->output == CLI_JSON)
		json_object_set_new(out, name, json_pack("{s:s,s:s}", "status", text, "error",
							 rc ? err : ""));
	else
		printf("%-14s %-12s %s\n", name, text, rc ? err : "");
	return st;
}

int cli_cmd_health(struct cli *c, int argc, char **argv);
const struct cli_opt cli_health_opts[] = {
	{ "addr", required_argument, 'a', "HOST:PORT", "the service address (else SLIPWAY_<SERVICE>_ADDR)" },
	{ NULL, 0, 0, NULL, NULL },
};

int cli_cmd_health(struct cli *c, int argc, char **argv)
{
	const char *addr = NULL;
	int o, bad = 0, checked = 0;
	optind = 0;
	char **args = argv;
	while ((o = cli_getopt(c, argc, args)) != -1) {
		if (o == 'a')
			addr = optarg;
		else
			return cli_usage_cmd(c);
	}
	json_t *out = json_object();
	if (optind < argc) {
		for (int i = optind; i < argc; i++, checked++)
			bad |= check_one(c, args[i], addr, out) != 1;
	} else if (addr != NULL) {
		bad |= check_one(c, "service", addr, out) != 1;
		checked++;
	} else {
		for (size_t i = 0; i < sizeof known / sizeof known[0]; i++) {
			if (cli_service_addr(c, known[i]) == NULL)
				continue;
			checked++;
			bad |= check_one(c, known[i], NULL, out) != 1;
		}
	}
	if (c->output == CLI_JSON)
		cli_print_json(out);
	else
		json_decref(out);
	if (checked == 0)
		return cli_fail("no services to check: set SLIPWAY_<SERVICE>_ADDR or pass --addr");
	return bad ? CLI_FAIL : CLI_OK;
}
