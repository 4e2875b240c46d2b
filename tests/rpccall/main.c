/*
 * slipway-rpc - a test-only client that makes one unary call to any
 * Slipway RPC, for the write RPCs the CLI has no command for
 * (tests/security/auditor_read_only.sh: AppendBatch, SetPins, CreateGrant,
 * PinSealingKey, ...). Built into build/tests, never installed.
 *
 *   slipway-rpc SERVICE METHOD [FIELD=VALUE ...]
 *
 * SERVICE is the process to call (artifact, audit, orchestrator, policy,
 * secrets; its address from SLIPWAY_<SERVICE>_ADDR, its identity pinned as
 * spiffe://<td>/service/<SERVICE>); METHOD is "Service/Method" as in the
 * proto ("Orchestrator/CreateDeployment", "Enrollments/EnrollAgent",
 * "AgentControl/ReportTask"). FIELD=VALUE sets a top-level scalar field of
 * the request by its proto name (strings, bytes as text, integers, bools,
 * enums by number), "event.actor=..." one of a nested message; every other
 * field keeps its default. TLS material
 * from SLIPWAY_CA, SLIPWAY_CERT and SLIPWAY_KEY, as for the CLI.
 *
 * Prints "OK" or "STATUS: message" and exits 0 (OK), 3 (PERMISSION_DENIED
 * or UNAUTHENTICATED), 1 (any other status) or 2 (bad usage).
 */
#include "err.h"
#include "rpc.h"
#include "tls.h"

#include "slipway/v1/artifact.pb-c.h"
#include "slipway/v1/audit.pb-c.h"
#include "slipway/v1/enrollment.pb-c.h"
#include "slipway/v1/orchestrator.pb-c.h"
#include "slipway/v1/policy.pb-c.h"
#include "slipway/v1/secrets.pb-c.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const ProtobufCServiceDescriptor *const services[] = {
	&slipway__v1__artifact__descriptor,      &slipway__v1__audit__descriptor,
	&slipway__v1__enrollments__descriptor,   &slipway__v1__orchestrator__descriptor,
	&slipway__v1__agent_control__descriptor, &slipway__v1__policy__descriptor,
	&slipway__v1__secrets__descriptor,
};

static int usage(void)
{
	fprintf(stderr, "usage: slipway-rpc SERVICE Service/Method [FIELD=VALUE ...]\n");
	return 2;
}

/* Nested messages set_field made: kept reachable until the process ends
 * (the request's strings point into argv, so it is never freed as a tree). */
static void *made[64];
static size_t nmade;

/* Sets one scalar field of m from text; "event.actor" sets a field of a
 * nested message (made on first use; freed with the process). 0 or -1. */
static int set_field(ProtobufCMessage *m, char *name, const char *value)
{
	char *dot = strchr(name, '.');
	if (dot != NULL)
		*dot = '\0';
	const ProtobufCFieldDescriptor *f =
		protobuf_c_message_descriptor_get_field_by_name(m->descriptor, name);
	if (f == NULL || f->label == PROTOBUF_C_LABEL_REPEATED)
		return -1;
	if (dot != NULL) {
		if (f->type != PROTOBUF_C_TYPE_MESSAGE)
			return -1;
		ProtobufCMessage **sub = (ProtobufCMessage **)((char *)m + f->offset);
		const ProtobufCMessageDescriptor *d = f->descriptor;
		if (*sub == NULL) {
			if (nmade == sizeof made / sizeof made[0] ||
			    (*sub = calloc(1, d->sizeof_message)) == NULL)
				return -1;
			made[nmade++] = *sub;
			protobuf_c_message_init(d, *sub);
		}
		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
			*(uint32_t *)((char *)m + f->quantifier_offset) = f->id;
		return set_field(*sub, dot + 1, value);
	}
	char *p = (char *)m + f->offset, *end = NULL;
	if (f->quantifier_offset != 0 && f->label != PROTOBUF_C_LABEL_NONE)
		*(protobuf_c_boolean *)((char *)m + f->quantifier_offset) = 1;
	if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
		*(uint32_t *)((char *)m + f->quantifier_offset) = f->id;
	errno = 0;
	switch (f->type) {
	case PROTOBUF_C_TYPE_STRING: *(const char **)p = value; return 0;
	case PROTOBUF_C_TYPE_BYTES:
		((ProtobufCBinaryData *)p)->data = (uint8_t *)value;
		((ProtobufCBinaryData *)p)->len = strlen(value);
		return 0;
	case PROTOBUF_C_TYPE_BOOL:
		*(protobuf_c_boolean *)p = strcmp(value, "true") == 0;
		return strcmp(value, "true") == 0 || strcmp(value, "false") == 0 ? 0 : -1;
	case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
	case PROTOBUF_C_TYPE_ENUM:
		*(int32_t *)p = (int32_t)strtol(value, &end, 10); break;
	case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32:
		*(uint32_t *)p = (uint32_t)strtoul(value, &end, 10); break;
	case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
		*(int64_t *)p = strtoll(value, &end, 10); break;
	case PROTOBUF_C_TYPE_UINT64: case PROTOBUF_C_TYPE_FIXED64:
		*(uint64_t *)p = strtoull(value, &end, 10); break;
	default: return -1;
	}
	return errno == 0 && end != value && *end == '\0' ? 0 : -1;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return usage();
	const char *svc = argv[1], *slash = strchr(argv[2], '/');
	if (slash == NULL)
		return usage();
	const ProtobufCServiceDescriptor *sd = NULL;
	for (size_t i = 0; i < sizeof services / sizeof services[0]; i++)
		if (strlen(services[i]->short_name) == (size_t)(slash - argv[2]) &&
		    strncmp(services[i]->short_name, argv[2], (size_t)(slash - argv[2])) == 0)
			sd = services[i];
	const ProtobufCMethodDescriptor *md =
		sd ? protobuf_c_service_descriptor_get_method_by_name(sd, slash + 1) : NULL;
	if (md == NULL) {
		fprintf(stderr, "slipway-rpc: no method %s\n", argv[2]);
		return 2;
	}
	ProtobufCMessage *req = calloc(1, md->input->sizeof_message);
	if (req == NULL)
		return 2;
	protobuf_c_message_init(md->input, req);
	for (int i = 3; i < argc; i++) {
		char *eq = strchr(argv[i], '=');
		if (eq == NULL)
			return usage();
		*eq = '\0';
		if (set_field(req, argv[i], eq + 1) != 0) {
			fprintf(stderr, "slipway-rpc: cannot set %s of %s\n", argv[i], md->input->name);
			return 2;
		}
	}
	char env[64], err[1024];
	snprintf(env, sizeof env, "SLIPWAY_%s_ADDR", svc);
	for (char *p = env; *p; p++)
		*p = (char)(*p >= 'a' && *p <= 'z' ? *p - 32 : *p);
	const char *addr = getenv(env), *caf = getenv("SLIPWAY_CA"),
		   *crtf = getenv("SLIPWAY_CERT"), *keyf = getenv("SLIPWAY_KEY");
	if (addr == NULL || caf == NULL || crtf == NULL || keyf == NULL) {
		fprintf(stderr, "slipway-rpc: %s, SLIPWAY_CA, SLIPWAY_CERT and SLIPWAY_KEY are needed\n",
			env);
		return 2;
	}
	char *ca = NULL, *crt = NULL, *key = NULL;
	if (tls_read_pem(caf, &ca, err, sizeof err) != 0 ||
	    tls_read_pem(crtf, &crt, err, sizeof err) != 0 ||
	    tls_read_pem(keyf, &key, err, sizeof err) != 0) {
		fprintf(stderr, "slipway-rpc: %s\n", err);
		return 2;
	}
	rpc_init();
	struct rpc_client *cl = NULL;
	struct rpc_client_opts co = { .target = addr, .ca_pem = ca, .cert_pem = crt,
				      .key_pem = key, .server_service = svc };
	if (rpc_client_new(&co, &cl, err, sizeof err) != 0) {
		fprintf(stderr, "slipway-rpc: %s\n", err);
		return 2;
	}
	ProtobufCMessage *resp = NULL;
	struct rpc_call_opts o = { .timeout_ms = 15000 };
	int rc = rpc_call(cl, sd, md->name, req, &resp, &o, err, sizeof err);
	int code = rc == 0 ? 0 : sw_err_to_grpc(rc);
	if (rc == 0)
		printf("OK\n");
	else
		printf("%s: %s\n", sw_grpc_status_name(code), err);
	if (resp != NULL)
		protobuf_c_message_free_unpacked(resp, NULL);
	rpc_client_free(cl);
	free(req); /* nested messages are left to the process's exit */
	free(ca);
	free(crt);
	free(key);
	return rc == 0 ? 0 : (code == 7 || code == 16) ? 3 : 1;
}
