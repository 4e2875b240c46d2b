/*
 * rpc_client.c - the client half of rpc.h: long-lived mTLS channels, unary
 * calls as one batch on a per-call pluck queue, and streaming calls whose
 * operations are plucked one at a time by the calling thread.
 *
 * Deadlines are always set (10 s when the caller gives none). A call made
 * from inside a handler passes the server call as parent, so the
 * downstream call inherits the caller's deadline and is cancelled with it,
 * and carries the same x-request-id.
 *
 * Dead peers: a service's call (a client without fail_fast, a call without
 * wait_for_ready) waits for a channel that is connecting, but not for a
 * peer known to be down. Before the call starts, the channel's
 * connectivity state is read (asking an idle channel to connect); while it
 * is IDLE or CONNECTING the call waits, within its deadline, for the
 * outcome of that attempt. TRANSIENT_FAILURE means the last attempt to
 * reach the peer failed and gRPC is backing off before the next one: the
 * call fails at once with SW_EUNAVAIL ("UNAVAILABLE: /pkg.Svc/Method:
 * host:port is down ...; failing fast")
 * instead of holding its thread for its whole deadline, and is counted
 * (rpc_client_fast_failures). A channel in TRANSIENT_FAILURE does not
 * reconnect by itself in gRPC 1.51 (a pick does it once the backoff is
 * over), so at most once a second one caller first sends a probe (an empty
 * grpc.health.v1 Check that waits for readiness for at most 300 ms) and
 * proceeds if the channel became ready: calls work again within about a
 * second of the peer's return, or of the end of gRPC's reconnect backoff
 * (200 ms to 5 s).
 */
#include "clock.h"
#include "err.h"
#include "log.h"
#include "metrics.h"
#include "rpc.h"
#include "rpc_internal.h"
#include "spiffe.h"
#include "tls.h"
#include "trace.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/support/alloc.h>
#include <grpc/support/time.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define DEFAULT_TIMEOUT_MS 10000
#define PROBE_EVERY_MS 1000 /* at most one reconnection probe a second */
#define PROBE_MAX_MS 300    /* how long a probe waits for readiness */
#define DEFAULT_MAX_MSG (16u << 20)

/* A channel and the pin of the credentials it was made with. Calls hold a
 * reference for their life, so a channel replaced by new credentials
 * (rpc_client_set_tls) is destroyed only when its last call ends. */
struct chan {
	grpc_channel *ch;
	struct tls_pin *pin;              /* the server's pinned identity */
	atomic_int refs;
};

struct rpc_client {
	pthread_mutex_t mu;               /* guards cur */
	struct chan *cur;                 /* the channel new calls use */
	size_t max_msg;
	int fail_fast;
	char target[128];                 /* for messages, maybe cut */
	/* what a new channel is made from (rpc_client_set_tls) */
	char *full_target;
	char *server_name;                /* NULL: the target's host */
	char expect[SPIFFE_ID_MAX + 1];   /* the pinned server ID */
	int own_connection;
	size_t stream_window;
	int reloadable;                   /* in the registry (rpc_client_reload_all) */
	struct rpc_client *reg_next;
	atomic_ullong fast_failures;      /* calls refused because the peer was down */
	atomic_llong next_probe_ms;       /* clock_mono_ms of the next allowed probe */
	atomic_int probing;               /* a probe is running */
};

struct rpc_stream {
	struct rpc_client *c;
	struct chan *chan;
	grpc_call *call;
	grpc_completion_queue *cq;
	const ProtobufCMethodDescriptor *md;
	grpc_metadata send_md[2];
	char rid[65];
	char traceparent[TRACE_PARENT_LEN + 1];
	grpc_metadata_array init_md, trail_md;
	int got_init_md;
	grpc_status_code status;
	grpc_slice details;
	const char *error_string;
	int status_tag;
	int op_tag;
};

/* Clients made reloadable, for rpc_client_reload_all. */
static pthread_mutex_t reg_mu = PTHREAD_MUTEX_INITIALIZER;
static struct rpc_client *reg_head;

static void chan_put(struct chan *ch)
{
	if (ch == NULL || atomic_fetch_sub(&ch->refs, 1) != 1)
		return;
	grpc_channel_destroy(ch->ch);
	tls_pin_release(ch->pin);
	free(ch);
}

/* The channel new calls use, with a reference for the caller. */
static struct chan *chan_get(struct rpc_client *c)
{
	pthread_mutex_lock(&c->mu);
	struct chan *ch = c->cur;
	atomic_fetch_add(&ch->refs, 1);
	pthread_mutex_unlock(&c->mu);
	return ch;
}

/* A new channel to c's target with credentials from ca/cert/key (PEM,
 * borrowed), pinned to c->expect, into *out (one reference). Returns 0,
 * or SW_ENOMEM / SW_EINVAL with err. */
static int chan_make(struct rpc_client *c, const char *ca_pem, const char *cert_pem,
		     const char *key_pem, struct chan **out, char *err, size_t errlen)
{
	*out = NULL;
	struct chan *ch = calloc(1, sizeof *ch);
	if (ch == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	atomic_init(&ch->refs, 1);
	grpc_channel_credentials *creds =
		tls_client_creds(ca_pem, cert_pem, key_pem, c->expect, &ch->pin);
	if (creds == NULL) {
		free(ch);
		return sw_errf(err, errlen, SW_EINVAL, "invalid TLS material");
	}
	grpc_arg args[16];
	size_t n = 0;
	memset(args, 0, sizeof args);
	args[n].type = GRPC_ARG_INTEGER;
	args[n].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	args[n++].value.integer = (int)c->max_msg;
	args[n].type = GRPC_ARG_INTEGER;
	args[n].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
	args[n++].value.integer = (int)c->max_msg;
	args[n].type = GRPC_ARG_INTEGER;
	args[n].key = GRPC_ARG_KEEPALIVE_TIME_MS;
	args[n++].value.integer = 30000;
	args[n].type = GRPC_ARG_INTEGER;
	args[n].key = GRPC_ARG_KEEPALIVE_TIMEOUT_MS;
	args[n++].value.integer = 10000;
	args[n].type = GRPC_ARG_INTEGER;
	args[n].key = GRPC_ARG_ENABLE_RETRIES;
	args[n++].value.integer = 0;
	/* A receive window as large as a message: with gRPC's default 64 KiB a
	 * larger message waits for window updates that a client polling only
	 * while it reads send late (about 10 ms a message, measured). */
	args[n].type = GRPC_ARG_INTEGER;
	args[n].key = GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES;
	args[n++].value.integer = c->stream_window > 0 ? (int)c->stream_window : (int)c->max_msg;
	/* Services restart: reconnect within seconds, not gRPC's default of up
	 * to two minutes. */
	args[n].type = GRPC_ARG_INTEGER;
	args[n].key = GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS;
	args[n++].value.integer = 200;
	args[n].type = GRPC_ARG_INTEGER;
	args[n].key = GRPC_ARG_MIN_RECONNECT_BACKOFF_MS;
	args[n++].value.integer = 200;
	args[n].type = GRPC_ARG_INTEGER;
	args[n].key = GRPC_ARG_MAX_RECONNECT_BACKOFF_MS;
	args[n++].value.integer = 5000;
	if (c->stream_window > 0) {
		/* A fixed window for bulk transfers (set below): no BDP probing. */
		args[n].type = GRPC_ARG_INTEGER;
		args[n].key = GRPC_ARG_HTTP2_BDP_PROBE;
		args[n++].value.integer = 0;
	}
	if (c->server_name != NULL) {
		args[n].type = GRPC_ARG_STRING;
		args[n].key = GRPC_SSL_TARGET_NAME_OVERRIDE_ARG;
		args[n++].value.string = c->server_name;
	}
	if (c->own_connection) {
		args[n].type = GRPC_ARG_INTEGER;
		args[n].key = GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL;
		args[n++].value.integer = 1;
	}
	grpc_channel_args chargs = { n, args };
	ch->ch = grpc_channel_create(c->full_target, creds, &chargs);
	grpc_channel_credentials_release(creds);
	if (ch->ch == NULL) {
		tls_pin_release(ch->pin);
		free(ch);
		return sw_errf(err, errlen, SW_EINVAL, "cannot create a channel to %s", c->target);
	}
	*out = ch;
	return 0;
}

static void client_free_fields(struct rpc_client *c)
{
	free(c->full_target);
	free(c->server_name);
	pthread_mutex_destroy(&c->mu);
	free(c);
}

int rpc_client_new(const struct rpc_client_opts *opts, struct rpc_client **out, char *err,
		   size_t errlen)
{
	*out = NULL;
	if (opts->target == NULL || opts->ca_pem == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "target and CA are required");
	char expect[SPIFFE_ID_MAX + 1], why[256];
	if (opts->server_id != NULL) {
		if (spiffe_parse(opts->server_id, NULL, NULL, why, sizeof why) != 0)
			return sw_errf(err, errlen, SW_EINVAL, "server identity: %s", why);
		snprintf(expect, sizeof expect, "%s", opts->server_id);
	} else if (opts->server_service != NULL) {
		struct spiffe_id own;
		char id[SPIFFE_ID_MAX + 2];
		if (opts->cert_pem == NULL ||
		    tls_cert_spiffe_id(opts->cert_pem, id, sizeof id, why, sizeof why) != 0 ||
		    spiffe_parse(id, NULL, &own, why, sizeof why) != 0)
			return sw_errf(err, errlen, SW_EINVAL,
				       "cannot learn the trust domain from our certificate: %s",
				       opts->cert_pem ? why : "no certificate");
		if (spiffe_format(expect, sizeof expect, own.trust_domain, SPIFFE_SERVICE,
				  opts->server_service) != 0)
			return sw_errf(err, errlen, SW_EINVAL, "invalid service name '%s'",
				       opts->server_service);
	} else {
		return sw_errf(err, errlen, SW_EINVAL,
			       "the server's SPIFFE ID must be pinned (server_id or server_service)");
	}
	struct rpc_client *c = calloc(1, sizeof *c);
	if (c == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	pthread_mutex_init(&c->mu, NULL);
	c->max_msg = opts->max_msg_bytes ? opts->max_msg_bytes : DEFAULT_MAX_MSG;
	c->fail_fast = opts->fail_fast;
	c->own_connection = opts->own_connection;
	c->stream_window = opts->stream_window;
	snprintf(c->target, sizeof c->target, "%s", opts->target);
	snprintf(c->expect, sizeof c->expect, "%s", expect);
	atomic_init(&c->fast_failures, 0);
	atomic_init(&c->next_probe_ms, 0);
	atomic_init(&c->probing, 0);
	/* A list of addresses ("ipv4:10.0.0.1:7443,10.0.0.2:7443", for several
	 * replicas) has no single authority: check the servers' certificates
	 * against the first host unless told otherwise. */
	char first_host[256] = "";
	const char *server_name = opts->server_name;
	if (server_name == NULL && (strncmp(opts->target, "ipv4:", 5) == 0 ||
				    strncmp(opts->target, "ipv6:", 5) == 0) &&
	    strchr(opts->target, ',') != NULL) {
		const char *h = opts->target + 5;
		size_t len = strcspn(h, ",");
		if (h[0] == '[') { /* [v6]:port */
			const char *close = memchr(h, ']', len);
			if (close != NULL)
				snprintf(first_host, sizeof first_host, "%.*s", (int)(close - h - 1), h + 1);
		} else {
			const char *colon = memchr(h, ':', len);
			snprintf(first_host, sizeof first_host, "%.*s",
				 (int)(colon ? (size_t)(colon - h) : len), h);
		}
		if (first_host[0])
			server_name = first_host;
	}
	c->full_target = strdup(opts->target);
	c->server_name = server_name ? strdup(server_name) : NULL;
	if (c->full_target == NULL || (server_name != NULL && c->server_name == NULL)) {
		client_free_fields(c);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	int rc = chan_make(c, opts->ca_pem, opts->cert_pem, opts->key_pem, &c->cur, err, errlen);
	if (rc != 0) {
		client_free_fields(c);
		return rc;
	}
	if (opts->reloadable) {
		c->reloadable = 1;
		pthread_mutex_lock(&reg_mu);
		c->reg_next = reg_head;
		reg_head = c;
		pthread_mutex_unlock(&reg_mu);
	}
	*out = c;
	return 0;
}

int rpc_client_set_tls(struct rpc_client *c, const char *ca_pem, const char *cert_pem,
		       const char *key_pem, char *err, size_t errlen)
{
	struct chan *ch = NULL;
	int rc = chan_make(c, ca_pem, cert_pem, key_pem, &ch, err, errlen);
	if (rc != 0)
		return rc;
	pthread_mutex_lock(&c->mu);
	struct chan *old = c->cur;
	c->cur = ch;
	pthread_mutex_unlock(&c->mu);
	chan_put(old); /* destroyed once its last call ends */
	return 0;
}

int rpc_client_reload_all(const char *ca_pem, const char *cert_pem, const char *key_pem,
			  char *err, size_t errlen)
{
	int n = 0, rc = 0;
	pthread_mutex_lock(&reg_mu);
	for (struct rpc_client *c = reg_head; c != NULL; c = c->reg_next) {
		char e[256];
		if (rpc_client_set_tls(c, ca_pem, cert_pem, key_pem, e, sizeof e) != 0) {
			rc = sw_errf(err, errlen, SW_EINVAL, "client of %s: %s", c->target, e);
			continue;
		}
		n++;
	}
	pthread_mutex_unlock(&reg_mu);
	return rc != 0 ? rc : n;
}

void rpc_client_free(struct rpc_client *c)
{
	if (c == NULL)
		return;
	if (c->reloadable) {
		pthread_mutex_lock(&reg_mu);
		for (struct rpc_client **pp = &reg_head; *pp != NULL; pp = &(*pp)->reg_next)
			if (*pp == c) {
				*pp = c->reg_next;
				break;
			}
		pthread_mutex_unlock(&reg_mu);
	}
	chan_put(c->cur);
	client_free_fields(c);
}

static const ProtobufCMethodDescriptor *find_method(const ProtobufCServiceDescriptor *sd,
						    const char *method, char *path, size_t plen)
{
	const ProtobufCMethodDescriptor *md =
		protobuf_c_service_descriptor_get_method_by_name(sd, method);
	if (md != NULL)
		snprintf(path, plen, "/%s/%s", sd->name, md->name);
	return md;
}

static void pick_request_id(const struct rpc_call_opts *o, char rid[65])
{
	const char *r = NULL;
	if (o != NULL && o->request_id != NULL && o->request_id[0])
		r = o->request_id;
	else if (o != NULL && o->parent != NULL)
		r = rpc_request_id(o->parent);
	else if (log_request_id()[0])
		r = log_request_id();
	if (r != NULL)
		snprintf(rid, 65, "%s", r);
	else
		rpc_new_request_id(rid);
}

/* The traceparent of an outgoing call: a child span of the parent call's,
 * else of the thread's current context, else a new trace. */
static void pick_traceparent(const struct rpc_call_opts *o, char tp[TRACE_PARENT_LEN + 1])
{
	struct trace_ctx t;
	if (o != NULL && o->parent != NULL)
		trace_child(rpc_ctx_trace(o->parent), &t);
	else
		trace_child(trace_current(), &t);
	trace_format(&t, tp);
}

unsigned long long rpc_client_fast_failures(struct rpc_client *c)
{
	return atomic_load(&c->fast_failures);
}

/* The call's deadline: its own timeout (or the default) from now. */
static gpr_timespec call_deadline(const struct rpc_call_opts *o)
{
	int64_t t = (o != NULL && o->timeout_ms > 0) ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	return gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC), gpr_time_from_millis(t, GPR_TIMESPAN));
}

/* Whether a call waits for the channel to be ready (see the file header). */
static int waits_for_ready(const struct rpc_client *c, const struct rpc_call_opts *o)
{
	return !c->fail_fast || (o != NULL && o->wait_for_ready);
}

/* The six operations of a unary call in one batch: initial metadata (md,
 * n entries; `flags` GRPC_INITIAL_METADATA_*), the request, half-close, and
 * the answer's metadata, message and status (error_string may be NULL).
 * Everything is borrowed for the batch's lifetime. */
static void unary_ops(grpc_op ops[6], grpc_metadata *md, size_t n, uint32_t flags,
		      grpc_byte_buffer *send, grpc_byte_buffer **recv, grpc_metadata_array *init_md,
		      grpc_metadata_array *trail_md, grpc_status_code *status, grpc_slice *details,
		      const char **error_string)
{
	memset(ops, 0, 6 * sizeof *ops);
	ops[0].op = GRPC_OP_SEND_INITIAL_METADATA;
	ops[0].data.send_initial_metadata.count = n;
	ops[0].data.send_initial_metadata.metadata = md;
	ops[0].flags = flags;
	ops[1].op = GRPC_OP_SEND_MESSAGE;
	ops[1].data.send_message.send_message = send;
	ops[2].op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	ops[3].op = GRPC_OP_RECV_INITIAL_METADATA;
	ops[3].data.recv_initial_metadata.recv_initial_metadata = init_md;
	ops[4].op = GRPC_OP_RECV_MESSAGE;
	ops[4].data.recv_message.recv_message = recv;
	ops[5].op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	ops[5].data.recv_status_on_client.trailing_metadata = trail_md;
	ops[5].data.recv_status_on_client.status = status;
	ops[5].data.recv_status_on_client.status_details = details;
	ops[5].data.recv_status_on_client.error_string = error_string;
}

/* Sends an empty grpc.health.v1 Check that waits for readiness until pdl,
 * which makes a channel in TRANSIENT_FAILURE try the peer again; the answer
 * does not matter. Uses cq (plucked). */
static void probe(struct chan *ch, grpc_completion_queue *cq, gpr_timespec pdl)
{
	grpc_slice m = grpc_slice_from_static_string("/grpc.health.v1.Health/Check");
	grpc_call *call = grpc_channel_create_call(ch->ch, NULL, 0, cq, m, NULL, pdl, NULL);
	grpc_slice_unref(m);
	if (call == NULL)
		return;
	grpc_slice empty = grpc_empty_slice();
	grpc_byte_buffer *send_bb = grpc_raw_byte_buffer_create(&empty, 1), *recv_bb = NULL;
	grpc_metadata_array init_md, trail_md;
	grpc_metadata_array_init(&init_md);
	grpc_metadata_array_init(&trail_md);
	grpc_status_code status = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	grpc_op ops[6];
	unary_ops(ops, NULL, 0, GRPC_INITIAL_METADATA_WAIT_FOR_READY, send_bb, &recv_bb, &init_md,
		  &trail_md, &status, &details, NULL);
	int tag = 2;
	if (grpc_call_start_batch(call, ops, 6, &tag, NULL) == GRPC_CALL_OK)
		grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
	grpc_byte_buffer_destroy(send_bb);
	if (recv_bb != NULL)
		grpc_byte_buffer_destroy(recv_bb);
	grpc_slice_unref(details);
	grpc_metadata_array_destroy(&init_md);
	grpc_metadata_array_destroy(&trail_md);
	grpc_call_unref(call);
}

/*
 * The fast path for a dead peer. For a call that would wait for readiness
 * but did not insist on it (no wait_for_ready), returns 1 with the reason
 * in why[whylen] (counted as a fast failure) when the channel is, or
 * becomes within the deadline dl, in TRANSIENT_FAILURE (or was shut down);
 * else 0. Uses cq (the call's pluck queue) for the connectivity watch and
 * the probe. Any thread.
 */
static int peer_down(struct rpc_client *c, struct chan *ch, const char *path, const struct rpc_call_opts *o,
		     grpc_completion_queue *cq, gpr_timespec dl, char *why, size_t whylen)
{
	if (c->fail_fast || (o != NULL && o->wait_for_ready))
		return 0;
	grpc_connectivity_state st = grpc_channel_check_connectivity_state(ch->ch, 1);
	while ((st == GRPC_CHANNEL_IDLE || st == GRPC_CHANNEL_CONNECTING) &&
	       gpr_time_cmp(gpr_now(GPR_CLOCK_MONOTONIC), dl) < 0) {
		int tag = 0;
		grpc_channel_watch_connectivity_state(ch->ch, st, dl, cq, &tag);
		grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
		st = grpc_channel_check_connectivity_state(ch->ch, 1);
	}
	int64_t now = clock_mono_ms();
	if (st == GRPC_CHANNEL_TRANSIENT_FAILURE && now >= atomic_load(&c->next_probe_ms) &&
	    !atomic_exchange(&c->probing, 1)) {
		atomic_store(&c->next_probe_ms, now + PROBE_EVERY_MS);
		/* The channel may be waiting out its reconnect back-off (up to
		 * the max, 5 s): try the peer now, so a peer that is back is
		 * found by this probe, not seconds later. */
		grpc_channel_reset_connect_backoff(ch->ch);
		gpr_timespec pdl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
						gpr_time_from_millis(PROBE_MAX_MS, GPR_TIMESPAN));
		probe(ch, cq, gpr_time_cmp(pdl, dl) < 0 ? pdl : dl);
		atomic_store(&c->probing, 0);
		st = grpc_channel_check_connectivity_state(ch->ch, 0);
	}
	if (st != GRPC_CHANNEL_TRANSIENT_FAILURE && st != GRPC_CHANNEL_SHUTDOWN)
		return 0; /* READY, or still connecting at the deadline: the call tells */
	atomic_fetch_add(&c->fast_failures, 1);
	snprintf(why, whylen, "%s: %s is down (its last connection attempt failed); failing fast",
		 path, c->target);
	return 1;
}

static grpc_call *create_call(struct chan *ch, grpc_completion_queue *cq, const char *path,
			      const struct rpc_call_opts *o, gpr_timespec dl)
{
	grpc_call *parent = (o != NULL && o->parent != NULL) ? rpc_ctx_call(o->parent) : NULL;
	grpc_slice method = grpc_slice_from_copied_string(path);
	grpc_call *call = grpc_channel_create_call(ch->ch, parent,
						   parent ? GRPC_PROPAGATE_DEFAULTS : 0, cq,
						   method, NULL, dl, NULL);
	grpc_slice_unref(method);
	return call;
}

/* Whether a transport failure's text is about TLS (the handshake, the
 * certificate or the host name). */
static int tls_trouble(const char *s, size_t n)
{
	static const char *const words[] = { "ssl", "handshake", "certificate", "peer name",
					     "verify peer" };
	for (size_t w = 0; w < sizeof words / sizeof words[0]; w++) {
		size_t k = strlen(words[w]);
		for (size_t i = 0; i + k <= n; i++)
			if (strncasecmp(s + i, words[w], k) == 0)
				return 1;
	}
	return 0;
}

/* Appends to err[errlen] why the server was not accepted: the pin's last
 * refusal ("... is not spiffe://td/service/x: it presented ..."), or for a
 * failure of the TLS handshake which ID was expected. */
static void explain_pin(struct rpc_client *c, struct chan *ch, const char *details, size_t n, char *err,
			size_t errlen)
{
	char why[384];
	size_t used = strnlen(err, errlen);
	if (used + 1 >= errlen)
		return;
	if (tls_pin_refusal(ch->pin, why, sizeof why))
		snprintf(err + used, errlen - used,
			 "; refused the server at %s before sending anything: it is not %s, %s",
			 c->target, tls_pin_expected(ch->pin), why);
	else if (tls_trouble(details, n))
		snprintf(err + used, errlen - used, " (expected the server at %s to be %s)",
			 c->target, tls_pin_expected(ch->pin));
}

/* Turns a finished call's status into an SW_E* code and a message. */
static int status_to_err(struct rpc_client *c, struct chan *ch, grpc_status_code st, grpc_slice details,
			 const char *error_string, char *err, size_t errlen)
{
	if (st == GRPC_STATUS_OK)
		return 0;
	size_t n = GRPC_SLICE_LENGTH(details);
	const char *d = (const char *)GRPC_SLICE_START_PTR(details);
	if (error_string != NULL)
		log_debug("rpc client error detail", "status=%s detail=%s",
			  sw_grpc_status_name((int)st), error_string);
	if (n > 0)
		sw_errf(err, errlen, 0, "%s: %.*s", sw_grpc_status_name((int)st), (int)n, d);
	else
		sw_errf(err, errlen, 0, "%s", sw_grpc_status_name((int)st));
	if (st == GRPC_STATUS_UNAVAILABLE || st == GRPC_STATUS_DEADLINE_EXCEEDED)
		explain_pin(c, ch, d, n, err, errlen);
	return sw_err_from_grpc((int)st);
}

int rpc_call(struct rpc_client *c, const ProtobufCServiceDescriptor *sd, const char *method,
	     const ProtobufCMessage *req, ProtobufCMessage **resp,
	     const struct rpc_call_opts *opts, char *err, size_t errlen)
{
	char path[256], rid[65];
	int rc = 0;
	grpc_completion_queue *cq = NULL;
	grpc_call *call = NULL;
	struct chan *ch = NULL;
	grpc_byte_buffer *send_bb = NULL, *recv_bb = NULL;
	grpc_metadata_array init_md, trail_md;
	grpc_status_code status = GRPC_STATUS_UNKNOWN;
	grpc_slice details = grpc_empty_slice();
	const char *error_string = NULL;

	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	*resp = NULL;
	grpc_metadata_array_init(&init_md);
	grpc_metadata_array_init(&trail_md);
	const ProtobufCMethodDescriptor *md = find_method(sd, method, path, sizeof path);
	if (md == NULL) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s has no method %s", sd->name, method);
		goto out;
	}
	if (req->descriptor != md->input) {
		rc = sw_errf(err, errlen, SW_EINVAL, "%s wants %s", path, md->input->name);
		goto out;
	}
	send_bb = rpc_pack(req, c->max_msg);
	if (send_bb == NULL) {
		rc = sw_errf(err, errlen, SW_ELIMIT, "request larger than %zu bytes", c->max_msg);
		goto out;
	}
	pick_request_id(opts, rid);
	char tp[TRACE_PARENT_LEN + 1];
	pick_traceparent(opts, tp);
	ch = chan_get(c);
	cq = grpc_completion_queue_create_for_pluck(NULL);
	gpr_timespec dl = call_deadline(opts);
	char why[384];
	if (peer_down(c, ch, path, opts, cq, dl, why, sizeof why)) {
		rc = sw_errf(err, errlen, SW_EUNAVAIL, "UNAVAILABLE: %s", why);
		explain_pin(c, ch, "", 0, err, errlen);
		goto out;
	}
	call = create_call(ch, cq, path, opts, dl);
	if (call == NULL) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "cannot create call");
		goto out;
	}
	grpc_metadata smd[2];
	memset(smd, 0, sizeof smd);
	smd[0].key = grpc_slice_from_static_string("x-request-id");
	smd[0].value = grpc_slice_from_static_string(rid);
	smd[1].key = grpc_slice_from_static_string("traceparent");
	smd[1].value = grpc_slice_from_static_string(tp);

	grpc_op ops[6];
	unary_ops(ops, smd, 2, waits_for_ready(c, opts) ? GRPC_INITIAL_METADATA_WAIT_FOR_READY : 0,
		  send_bb, &recv_bb, &init_md, &trail_md, &status, &details, &error_string);
	int tag = 1;
	grpc_call_error ce = grpc_call_start_batch(call, ops, 6, &tag, NULL);
	if (ce != GRPC_CALL_OK) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "call refused by gRPC (%d)", (int)ce);
		goto out;
	}
	grpc_completion_queue_pluck(cq, &tag, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
	rc = status_to_err(c, ch, status, details, error_string, err, errlen);
	if (rc != 0)
		goto out;
	if (recv_bb == NULL) {
		rc = sw_errf(err, errlen, SW_EINTERNAL, "%s: OK without a response message", path);
		goto out;
	}
	*resp = rpc_unpack(md->output, recv_bb);
	if (*resp == NULL)
		rc = sw_errf(err, errlen, SW_EINTERNAL, "%s: the response does not decode", path);
out:
	if (md != NULL) {
		struct timespec t1;
		clock_gettime(CLOCK_MONOTONIC, &t1);
		metrics_rpc_client_observe(path, sw_grpc_status_name(sw_err_to_grpc(rc)),
					   (double)(t1.tv_sec - t0.tv_sec) +
						   (double)(t1.tv_nsec - t0.tv_nsec) / 1e9);
	}
	if (send_bb)
		grpc_byte_buffer_destroy(send_bb);
	if (recv_bb)
		grpc_byte_buffer_destroy(recv_bb);
	grpc_slice_unref(details);
	gpr_free((void *)error_string);
	grpc_metadata_array_destroy(&init_md);
	grpc_metadata_array_destroy(&trail_md);
	if (call)
		grpc_call_unref(call);
	if (cq) {
		grpc_completion_queue_shutdown(cq);
		while (grpc_completion_queue_pluck(cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC),
						   NULL)
			       .type != GRPC_QUEUE_SHUTDOWN)
			;
		grpc_completion_queue_destroy(cq);
	}
	chan_put(ch);
	return rc;
}

/* Runs one batch on the stream and waits for it; returns ev.success. */
static int stream_op(struct rpc_stream *s, const grpc_op *ops, size_t n)
{
	if (grpc_call_start_batch(s->call, ops, n, &s->op_tag, NULL) != GRPC_CALL_OK)
		return 0;
	grpc_event ev = grpc_completion_queue_pluck(s->cq, &s->op_tag,
						    gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
	return ev.success;
}

int rpc_stream_open(struct rpc_client *c, const ProtobufCServiceDescriptor *sd,
		    const char *method, const struct rpc_call_opts *opts,
		    struct rpc_stream **out, char *err, size_t errlen)
{
	char path[256];
	*out = NULL;
	const ProtobufCMethodDescriptor *md = find_method(sd, method, path, sizeof path);
	if (md == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "%s has no method %s", sd->name, method);
	struct rpc_stream *s = calloc(1, sizeof *s);
	if (s == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	s->c = c;
	s->md = md;
	s->details = grpc_empty_slice();
	grpc_metadata_array_init(&s->init_md);
	grpc_metadata_array_init(&s->trail_md);
	pick_request_id(opts, s->rid);
	pick_traceparent(opts, s->traceparent);
	s->chan = chan_get(c);
	s->cq = grpc_completion_queue_create_for_pluck(NULL);
	gpr_timespec dl = call_deadline(opts);
	char why[384];
	int down = peer_down(c, s->chan, path, opts, s->cq, dl, why, sizeof why);
	s->call = create_call(s->chan, s->cq, path, opts, dl);
	if (s->call == NULL) {
		grpc_completion_queue_shutdown(s->cq);
		while (grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC),
						   NULL)
			       .type != GRPC_QUEUE_SHUTDOWN)
			;
		grpc_completion_queue_destroy(s->cq);
		grpc_metadata_array_destroy(&s->init_md);
		grpc_metadata_array_destroy(&s->trail_md);
		chan_put(s->chan);
		free(s);
		return sw_errf(err, errlen, SW_EINTERNAL, "cannot create call");
	}
	s->send_md[0].key = grpc_slice_from_static_string("x-request-id");
	s->send_md[0].value = grpc_slice_from_static_string(s->rid);
	s->send_md[1].key = grpc_slice_from_static_string("traceparent");
	s->send_md[1].value = grpc_slice_from_static_string(s->traceparent);
	grpc_op op;
	memset(&op, 0, sizeof op);
	op.op = GRPC_OP_SEND_INITIAL_METADATA;
	op.data.send_initial_metadata.count = 2;
	op.data.send_initial_metadata.metadata = s->send_md;
	if (waits_for_ready(c, opts))
		op.flags = GRPC_INITIAL_METADATA_WAIT_FOR_READY;
	/* The status batch stays outstanding until finish. */
	grpc_op st;
	memset(&st, 0, sizeof st);
	st.op = GRPC_OP_RECV_STATUS_ON_CLIENT;
	st.data.recv_status_on_client.trailing_metadata = &s->trail_md;
	st.data.recv_status_on_client.status = &s->status;
	st.data.recv_status_on_client.status_details = &s->details;
	st.data.recv_status_on_client.error_string = &s->error_string;
	grpc_call_start_batch(s->call, &st, 1, &s->status_tag, NULL);
	if (down)
		/* Like any other failure of a stream: the operations fail and
		 * rpc_stream_finish returns UNAVAILABLE with the reason. */
		grpc_call_cancel_with_status(s->call, GRPC_STATUS_UNAVAILABLE, why, NULL);
	else
		stream_op(s, &op, 1); /* failure shows up in the final status */
	*out = s;
	return 0;
}

int rpc_stream_send(struct rpc_stream *s, const ProtobufCMessage *msg)
{
	grpc_byte_buffer *bb = rpc_pack(msg, s->c->max_msg);
	if (bb == NULL)
		return SW_ELIMIT;
	grpc_op op;
	memset(&op, 0, sizeof op);
	op.op = GRPC_OP_SEND_MESSAGE;
	op.data.send_message.send_message = bb;
	int ok = stream_op(s, &op, 1);
	grpc_byte_buffer_destroy(bb);
	return ok ? 0 : SW_ECANCELLED;
}

int rpc_stream_close_send(struct rpc_stream *s)
{
	grpc_op op;
	memset(&op, 0, sizeof op);
	op.op = GRPC_OP_SEND_CLOSE_FROM_CLIENT;
	return stream_op(s, &op, 1) ? 0 : SW_ECANCELLED;
}

int rpc_stream_recv(struct rpc_stream *s, ProtobufCMessage **msg)
{
	grpc_byte_buffer *bb = NULL;
	grpc_op ops[2];
	size_t n = 0;
	memset(ops, 0, sizeof ops);
	*msg = NULL;
	if (!s->got_init_md) {
		ops[n].op = GRPC_OP_RECV_INITIAL_METADATA;
		ops[n++].data.recv_initial_metadata.recv_initial_metadata = &s->init_md;
		s->got_init_md = 1;
	}
	ops[n].op = GRPC_OP_RECV_MESSAGE;
	ops[n++].data.recv_message.recv_message = &bb;
	int ok = stream_op(s, ops, n);
	if (!ok || bb == NULL) {
		if (bb)
			grpc_byte_buffer_destroy(bb);
		return 0; /* end of stream or failure: finish tells */
	}
	*msg = rpc_unpack(s->md->output, bb);
	grpc_byte_buffer_destroy(bb);
	if (*msg == NULL) {
		grpc_call_cancel_with_status(s->call, GRPC_STATUS_INTERNAL,
					     "response does not decode", NULL);
		return SW_EINTERNAL;
	}
	return 1;
}

void rpc_stream_cancel(struct rpc_stream *s)
{
	grpc_call_cancel(s->call, NULL);
}

int rpc_stream_finish(struct rpc_stream *s, char *err, size_t errlen)
{
	grpc_completion_queue_pluck(s->cq, &s->status_tag, gpr_inf_future(GPR_CLOCK_MONOTONIC),
				    NULL);
	int rc = status_to_err(s->c, s->chan, s->status, s->details, s->error_string, err, errlen);
	grpc_slice_unref(s->details);
	gpr_free((void *)s->error_string);
	grpc_metadata_array_destroy(&s->init_md);
	grpc_metadata_array_destroy(&s->trail_md);
	grpc_call_unref(s->call);
	grpc_completion_queue_shutdown(s->cq);
	while (grpc_completion_queue_pluck(s->cq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
		       .type != GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(s->cq);
	chan_put(s->chan);
	free(s);
	return rc;
}
