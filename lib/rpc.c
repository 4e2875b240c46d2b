/*
 * rpc.c - the generic gRPC server of rpc.h.
 *
 * Every method of every registered service descriptor is registered with
 * gRPC core (payload read with the call for unary and server-streaming
 * methods), and a few generic requests stay posted as a catch-all so that
 * unknown methods are answered UNIMPLEMENTED at once. One completion queue
 * is polled by cq_threads threads; they only move events: a new call is
 * checked (identity, method) and handed to the worker pool, or run in place
 * when its handler is flagged RPC_INLINE.
 *
 * A call's context is reference counted: one reference for the handler and
 * one for each batch in flight. It is destroyed when the last drops, on
 * whichever thread that is. A deferred call's handler reference passes to
 * the application, which drops it with rpc_finish.
 *
 * Deferred server streams (rpc_stream_defer) hold no thread: messages are
 * packed by the sender and queued on the call, and one write at a time is
 * started, the next one by the completion-queue thread when the previous
 * completes; the final status follows the last queued message.
 */
#include "rpc.h"
#include "rpc_internal.h"
#include "rpc_limits.h"
#include "clock.h"
#include "err.h"
#include "log.h"
#include "metrics.h"
#include "spiffe.h"
#include "tls.h"
#include "trace.h"

#include <grpc/byte_buffer.h>
#include <grpc/byte_buffer_reader.h>
#include <grpc/grpc.h>
#include <grpc/grpc_security.h>
#include <grpc/support/alloc.h>
#include <grpc/support/log.h>
#include <grpc/support/time.h>

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

enum tag_kind { TAG_SLOT = 1, TAG_OP, TAG_CLOSE, TAG_FINAL, TAG_WRITE, TAG_SHUTDOWN };

struct tag {
	int kind;
	struct rpc_ctx *ctx;
};

struct method_entry {
	char path[256];
	const ProtobufCMethodDescriptor *md;
	const struct rpc_method *impl; /* NULL: answer UNIMPLEMENTED */
	void *svc_data;
	void *reg;                     /* gRPC registered-method handle */
};

/* A request kept posted with gRPC: fires when a call arrives. */
struct slot {
	int kind;                      /* TAG_SLOT; must be first */
	struct rpc_server *srv;
	struct method_entry *m;        /* NULL for a generic (catch-all) slot */
	grpc_call *call;
	gpr_timespec deadline;
	grpc_metadata_array md;
	grpc_byte_buffer *payload;
	grpc_call_details details;     /* generic slots only */
};

/* A message queued by rpc_send_async. */
struct out_msg {
	struct out_msg *next;
	grpc_byte_buffer *bb;
};

struct arena_block {
	struct arena_block *next;
	size_t used, cap;
	_Alignas(max_align_t) unsigned char data[];
};

struct rpc_ctx {
	struct rpc_server *srv;
	struct method_entry *m;
	grpc_call *call;
	gpr_timespec deadline;
	grpc_metadata_array req_md;
	grpc_byte_buffer *payload;
	char peer[SPIFFE_ID_MAX + 1];
	char rid[65];
	char path[256];
	struct trace_ctx trace; /* this call's span (traceparent, or a new trace) */
	atomic_int refs;
	atomic_int cancelled;
	int close_started;     /* RECV_CLOSE_ON_SERVER issued early */
	int close_cancelled;   /* its result */
	int md_sent;
	int deferred;
	int finished;
	struct timespec start;
	/* a blocking op started by a worker */
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int op_done, op_ok;
	grpc_byte_buffer *recv_bb;
	/* final batch */
	grpc_status_code status;
	grpc_slice details;
	grpc_metadata resp_md[1];
	grpc_byte_buffer *resp_bb;
	ProtobufCMessage *req, *resp;
	char errmsg[512];
	/* per-call arena */
	struct arena_block *arena;
	size_t arena_total;
	/* asynchronous server stream (rpc_stream_defer); under mu unless noted */
	int async;                       /* set by the handler before it returns */
	struct out_msg *outq, *outq_tail;
	int outq_len;
	int writing;                     /* the writer token: a write in flight, or a
					  * thread about to start one or the final batch */
	int fin_requested, fin_code;     /* rpc_finish was called */
	grpc_byte_buffer *write_bb;      /* the write in flight (writer only) */
	void (*on_cancel)(struct rpc_ctx *, void *);
	void *cancel_arg;
	int cb_running;
	pthread_t cb_thread;
	struct tag op_tag, close_tag, final_tag, write_tag;
	/* admission (rpc_limits.h) and the idle timeout of blocking ops */
	struct rpc_hold hold;
	int idle_expired;                /* under mu */
	char idle_msg[128];
};

struct rpc_server {
	struct rpc_server_opts o;
	char *listen, *service, *trust_domain;
	struct tls_server_src *tls; /* the certificate new handshakes use */
	grpc_server *server;
	grpc_completion_queue *cq;
	pthread_t *cq_threads;
	int started;
	atomic_int shutting_down;
	/* methods */
	struct method_entry *methods;
	size_t nmethods, capmethods;
	struct slot *slots;
	size_t nslots;
	/* worker pool */
	pthread_mutex_t pmu;
	pthread_cond_t pcv;
	struct rpc_ctx **queue;
	int qhead, qlen;
	int pool_stop;
	pthread_t *workers;
	/* in-flight accounting */
	pthread_mutex_t imu;
	pthread_cond_t icv;
	int inflight;
	void (*drain_fn)(void *);
	void *drain_arg;
	struct rpc_limits *limits;
};

static void ctx_unref(struct rpc_ctx *ctx);
static void ctx_finish(struct rpc_ctx *ctx, int code);

/* ---------- process-wide init ---------- */

static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;
static int init_count;

static void grpc_log_to_ours(gpr_log_func_args *args)
{
	enum log_level lvl = args->severity == GPR_LOG_SEVERITY_ERROR ? LOG_WARN
			     : args->severity == GPR_LOG_SEVERITY_INFO	 ? LOG_INFO
									 : LOG_DEBUG;
	log_emit(lvl, "grpc", "file=%s line=%d detail=%s", args->file, args->line,
		 args->message);
}

void rpc_init(void)
{
	pthread_mutex_lock(&init_mu);
	if (init_count++ == 0) {
		gpr_set_log_function(grpc_log_to_ours);
		gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
		grpc_init();
	}
	pthread_mutex_unlock(&init_mu);
}

void rpc_shutdown(void)
{
	pthread_mutex_lock(&init_mu);
	if (init_count > 0 && --init_count == 0)
		grpc_shutdown();
	pthread_mutex_unlock(&init_mu);
}

void rpc_new_request_id(char out[33])
{
	unsigned char b[16];
	if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b) {
		/* getrandom on Linux does not fail for 16 bytes once seeded;
		 * fall back to time and address bits rather than abort. */
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uintptr_t)b;
		memcpy(b, &x, 8);
		memcpy(b + 8, &x, 8);
	}
	static const char hex[] = "0123456789abcdef";
	for (int i = 0; i < 16; i++) {
		out[2 * i] = hex[b[i] >> 4];
		out[2 * i + 1] = hex[b[i] & 15];
	}
	out[32] = '\0';
}

/* Accepts a client-supplied request id when it is a short plain token. */
static int request_id_ok(const char *p, size_t n)
{
	if (n == 0 || n > 64)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = p[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == ':'))
			return 0;
	}
	return 1;
}

/* ---------- arena ---------- */

void *rpc_alloc(struct rpc_ctx *ctx, size_t n)
{
	size_t cap_total = ctx->srv->o.max_msg_bytes * 2 + (1u << 20);
	n = (n + 15) & ~(size_t)15;
	if (n == 0)
		n = 16;
	struct arena_block *b = ctx->arena;
	if (b == NULL || b->cap - b->used < n) {
		size_t sz = n > 4096 ? n : 4096;
		if (ctx->arena_total + sz > cap_total)
			return NULL;
		b = malloc(sizeof *b + sz);
		if (b == NULL)
			return NULL;
		b->next = ctx->arena;
		b->used = 0;
		b->cap = sz;
		ctx->arena = b;
		ctx->arena_total += sz;
	}
	void *p = b->data + b->used;
	b->used += n;
	memset(p, 0, n);
	return p;
}

struct rpc_mark rpc_arena_mark(struct rpc_ctx *ctx)
{
	struct rpc_mark m = { ctx->arena, ctx->arena ? ctx->arena->used : 0, ctx->arena_total };
	return m;
}

void rpc_arena_release(struct rpc_ctx *ctx, struct rpc_mark m)
{
	while (ctx->arena != NULL && ctx->arena != m.block) {
		struct arena_block *b = ctx->arena;
		ctx->arena = b->next;
		free(b);
	}
	if (ctx->arena != NULL)
		ctx->arena->used = m.used;
	ctx->arena_total = m.total;
}

char *rpc_memdup(struct rpc_ctx *ctx, const void *p, size_t n)
{
	char *d = rpc_alloc(ctx, n + 1);
	if (d != NULL) {
		memcpy(d, p, n);
		d[n] = '\0';
	}
	return d;
}

char *rpc_strdup(struct rpc_ctx *ctx, const char *s)
{
	return rpc_memdup(ctx, s, strlen(s));
}

/* ---------- accessors ---------- */

const char *rpc_peer(const struct rpc_ctx *ctx) { return ctx->peer; }
const char *rpc_request_id(const struct rpc_ctx *ctx) { return ctx->rid; }
const char *rpc_method_path(const struct rpc_ctx *ctx) { return ctx->path; }
ProtobufCMessage *rpc_response(struct rpc_ctx *ctx) { return ctx->resp; }
grpc_call *rpc_ctx_call(struct rpc_ctx *ctx) { return ctx->call; }
const struct trace_ctx *rpc_ctx_trace(const struct rpc_ctx *ctx) { return &ctx->trace; }

int64_t rpc_remaining_ms(const struct rpc_ctx *ctx)
{
	if (gpr_time_cmp(ctx->deadline, gpr_inf_future(ctx->deadline.clock_type)) == 0)
		return INT64_MAX;
	gpr_timespec left = gpr_time_sub(ctx->deadline, gpr_now(ctx->deadline.clock_type));
	int64_t ms = left.tv_sec * 1000 + left.tv_nsec / 1000000;
	return ms < 0 ? 0 : ms;
}

int rpc_cancelled(const struct rpc_ctx *ctx)
{
	if (atomic_load(&((struct rpc_ctx *)ctx)->cancelled))
		return 1;
	return rpc_remaining_ms(ctx) == 0;
}

int rpc_errorf(struct rpc_ctx *ctx, int code, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(ctx->errmsg, sizeof ctx->errmsg, fmt, ap);
	va_end(ap);
	return code;
}

/* ---------- call context life ---------- */

static void inflight_add(struct rpc_server *srv, int d)
{
	pthread_mutex_lock(&srv->imu);
	srv->inflight += d;
	if (srv->inflight == 0)
		pthread_cond_broadcast(&srv->icv);
	pthread_mutex_unlock(&srv->imu);
}

int rpc_server_inflight(struct rpc_server *srv)
{
	pthread_mutex_lock(&srv->imu);
	int n = srv->inflight;
	pthread_mutex_unlock(&srv->imu);
	return n;
}

static void ctx_destroy(struct rpc_ctx *ctx)
{
	struct rpc_server *srv = ctx->srv;
	if (ctx->req != NULL)
		protobuf_c_message_free_unpacked(ctx->req, NULL);
	if (ctx->payload != NULL)
		grpc_byte_buffer_destroy(ctx->payload);
	if (ctx->recv_bb != NULL)
		grpc_byte_buffer_destroy(ctx->recv_bb);
	if (ctx->resp_bb != NULL)
		grpc_byte_buffer_destroy(ctx->resp_bb);
	if (ctx->write_bb != NULL)
		grpc_byte_buffer_destroy(ctx->write_bb);
	while (ctx->outq != NULL) {
		struct out_msg *om = ctx->outq;
		ctx->outq = om->next;
		grpc_byte_buffer_destroy(om->bb);
		free(om);
	}
	grpc_slice_unref(ctx->details);
	grpc_metadata_array_destroy(&ctx->req_md);
	if (ctx->call != NULL)
		grpc_call_unref(ctx->call);
	while (ctx->arena != NULL) {
		struct arena_block *b = ctx->arena;
		ctx->arena = b->next;
		free(b);
	}
	pthread_mutex_destroy(&ctx->mu);
	pthread_cond_destroy(&ctx->cv);
	rpc_limits_release(srv->limits, &ctx->hold);
	free(ctx);
	inflight_add(srv, -1);
}

static void ctx_ref(struct rpc_ctx *ctx)
{
	atomic_fetch_add(&ctx->refs, 1);
}

static void ctx_unref(struct rpc_ctx *ctx)
{
	if (atomic_fetch_sub(&ctx->refs, 1) == 1)
		ctx_destroy(ctx);
}

/* Starts a batch holding a reference for it. Returns 0 or SW_EINTERNAL. */
static int start_batch(struct rpc_ctx *ctx, const grpc_op *ops, size_t n, struct tag *t)
{
	ctx_ref(ctx);
	grpc_call_error e = grpc_call_start_batch(ctx->call, ops, n, t, NULL);
	if (e != GRPC_CALL_OK) {
		log_error("rpc batch refused", "path=%s grpc_call_error=%d", ctx->path, (int)e);
		ctx_unref(ctx);
		return SW_EINTERNAL;
	}
	return 0;
}

static void fill_initial_md(struct rpc_ctx *ctx, grpc_op *op)
{
	ctx->resp_md[0].key = grpc_slice_from_static_string("x-request-id");
	ctx->resp_md[0].value = grpc_slice_from_static_string(ctx->rid);
	op->op = GRPC_OP_SEND_INITIAL_METADATA;
	op->flags = 0;
	op->reserved = NULL;
	op->data.send_initial_metadata.count = 1;
	op->data.send_initial_metadata.metadata = ctx->resp_md;
	op->data.send_initial_metadata.maybe_compression_level.is_set = 0;
	ctx->md_sent = 1;
}

/* Runs a batch from a worker and waits for it. Returns 1 if it succeeded,
 * 0 if the call is over, negative if it could not start. With an idle
 * timeout, a batch the client leaves waiting that long (a stream that
 * sends nothing, or reads nothing under flow control) cancels the call
 * with DEADLINE_EXCEEDED, which completes the batch (ctx->idle_expired is
 * then set): a silent client cannot hold a worker for longer. */
static int op_wait(struct rpc_ctx *ctx, const grpc_op *ops, size_t n)
{
	int64_t idle_ms = ctx->srv->o.stream_idle_ms;
	pthread_mutex_lock(&ctx->mu);
	ctx->op_done = 0;
	pthread_mutex_unlock(&ctx->mu);
	if (start_batch(ctx, ops, n, &ctx->op_tag) != 0)
		return SW_EINTERNAL;
	pthread_mutex_lock(&ctx->mu);
	if (idle_ms > 0) {
		struct timespec dl = clock_after(CLOCK_MONOTONIC, idle_ms);
		while (!ctx->op_done && !ctx->idle_expired)
			if (pthread_cond_timedwait(&ctx->cv, &ctx->mu, &dl) == ETIMEDOUT &&
			    !ctx->op_done)
				ctx->idle_expired = 1;
		if (ctx->idle_expired && !ctx->op_done) {
			snprintf(ctx->idle_msg, sizeof ctx->idle_msg,
				 "stream idle for %lld ms (--stream-idle-timeout)",
				 (long long)idle_ms);
			pthread_mutex_unlock(&ctx->mu);
			grpc_call_cancel_with_status(ctx->call, GRPC_STATUS_DEADLINE_EXCEEDED,
						     ctx->idle_msg, NULL);
			atomic_store(&ctx->cancelled, 1);
			pthread_mutex_lock(&ctx->mu);
		}
	}
	while (!ctx->op_done)
		pthread_cond_wait(&ctx->cv, &ctx->mu);
	int ok = ctx->op_ok;
	pthread_mutex_unlock(&ctx->mu);
	return ok;
}

/* The error of a blocking op that did not succeed: SW_ETIMEDOUT (with the
 * message) when the idle timeout cancelled the call, else SW_ECANCELLED. */
static int op_failed(struct rpc_ctx *ctx)
{
	pthread_mutex_lock(&ctx->mu);
	int idle = ctx->idle_expired;
	pthread_mutex_unlock(&ctx->mu);
	if (idle)
		return rpc_errorf(ctx, SW_ETIMEDOUT, "%s", ctx->idle_msg);
	return SW_ECANCELLED;
}

grpc_byte_buffer *rpc_pack(const ProtobufCMessage *msg, size_t cap)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	if (n > cap)
		return NULL;
	grpc_slice s = grpc_slice_malloc(n);
	protobuf_c_message_pack(msg, GRPC_SLICE_START_PTR(s));
	grpc_byte_buffer *bb = grpc_raw_byte_buffer_create(&s, 1);
	grpc_slice_unref(s);
	return bb;
}

ProtobufCMessage *rpc_unpack(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb)
{
	grpc_byte_buffer_reader r;
	if (!grpc_byte_buffer_reader_init(&r, bb))
		return NULL;
	grpc_slice s = grpc_byte_buffer_reader_readall(&r);
	grpc_byte_buffer_reader_destroy(&r);
	ProtobufCMessage *m =
		protobuf_c_message_unpack(d, NULL, GRPC_SLICE_LENGTH(s), GRPC_SLICE_START_PTR(s));
	grpc_slice_unref(s);
	return m;
}

int rpc_send(struct rpc_ctx *ctx, const ProtobufCMessage *msg)
{
	if (ctx->async)
		return SW_EINVAL; /* a deferred stream writes with rpc_send_async */
	if (atomic_load(&ctx->cancelled))
		return SW_ECANCELLED;
	grpc_byte_buffer *bb = rpc_pack(msg, ctx->srv->o.max_msg_bytes);
	if (bb == NULL)
		return SW_ELIMIT;
	grpc_op ops[2];
	size_t n = 0;
	memset(ops, 0, sizeof ops);
	if (!ctx->md_sent)
		fill_initial_md(ctx, &ops[n++]);
	ops[n].op = GRPC_OP_SEND_MESSAGE;
	ops[n].data.send_message.send_message = bb;
	n++;
	int ok = op_wait(ctx, ops, n);
	grpc_byte_buffer_destroy(bb);
	if (ok < 0)
		return ok;
	return ok ? 0 : op_failed(ctx);
}

int rpc_recv(struct rpc_ctx *ctx, ProtobufCMessage **msg)
{
	*msg = NULL;
	if (atomic_load(&ctx->cancelled))
		return SW_ECANCELLED;
	grpc_op op;
	memset(&op, 0, sizeof op);
	op.op = GRPC_OP_RECV_MESSAGE;
	op.data.recv_message.recv_message = &ctx->recv_bb;
	int ok = op_wait(ctx, &op, 1);
	if (ok < 0)
		return ok;
	if (!ok)
		return op_failed(ctx);
	if (ctx->recv_bb == NULL)
		return atomic_load(&ctx->cancelled) ? op_failed(ctx) : 0; /* end of stream */
	ProtobufCMessage *m = rpc_unpack(ctx->m->md->input, ctx->recv_bb);
	grpc_byte_buffer_destroy(ctx->recv_bb);
	ctx->recv_bb = NULL;
	if (m == NULL)
		return SW_EINVAL;
	*msg = m;
	return 1;
}

/*
 * The access log: one line per finished call, written where every call
 * ends (ctx_finish), whatever thread that is:
 *
 *   level=info ... req=<id> trace_id=<32 hex> msg=access method=/pkg.Svc/M
 *     peer=spiffe://... status=OK duration_ms=1.234 [error="..."]
 *
 * Request bodies are never logged; `error` is the status message sent to
 * the caller, which by rpc_errorf's contract holds no secrets. Health
 * checks (grpc.health.v1) log at debug, INTERNAL errors at error, and
 * with --no-access-log (opts.no_access_log) successful calls log at debug
 * only, failures still at info.
 */
static void access_log(struct rpc_ctx *ctx, int code, const char *msg, double ms)
{
	int health = strncmp(ctx->path, "/grpc.health.v1.Health/", 23) == 0;
	enum log_level lvl = ctx->status == GRPC_STATUS_INTERNAL		? LOG_ERROR
			     : health || (code == 0 && ctx->srv->o.no_access_log) ? LOG_DEBUG
										    : LOG_INFO;
	if (!log_enabled(lvl))
		return;
	/* The call may end on a thread that serves another (deferred calls):
	 * log under this call's ids and put the thread's back. */
	char saved_rid[65], saved_tid[TRACE_ID_HEX + 1], tid[TRACE_ID_HEX + 1];
	snprintf(saved_rid, sizeof saved_rid, "%s", log_request_id());
	snprintf(saved_tid, sizeof saved_tid, "%s", log_trace_id());
	trace_id_hex(&ctx->trace, tid);
	log_set_request_id(ctx->rid);
	log_set_trace_id(tid[0] ? tid : NULL);
	if (code == 0)
		log_emit(lvl, "access", "method=%s peer=%s status=%s duration_ms=%.3f", ctx->path,
			 ctx->peer[0] ? ctx->peer : "-", sw_grpc_status_name((int)ctx->status), ms);
	else
		log_emit(lvl, "access", "method=%s peer=%s status=%s duration_ms=%.3f error=%s",
			 ctx->path, ctx->peer[0] ? ctx->peer : "-",
			 sw_grpc_status_name((int)ctx->status), ms, msg);
	log_set_request_id(saved_rid[0] ? saved_rid : NULL);
	log_set_trace_id(saved_tid[0] ? saved_tid : NULL);
}

/* Sends the final status (and the response for unary/client-streaming
 * calls when code == 0). Any thread; once per call. */
static void ctx_finish(struct rpc_ctx *ctx, int code)
{
	if (ctx->finished)
		return;
	ctx->finished = 1;
	struct rpc_server *srv = ctx->srv;
	grpc_op ops[4];
	size_t n = 0;
	memset(ops, 0, sizeof ops);

	if (code == 0 && ctx->resp != NULL) {
		ctx->resp_bb = rpc_pack(ctx->resp, srv->o.max_msg_bytes);
		if (ctx->resp_bb == NULL)
			code = rpc_errorf(ctx, SW_ELIMIT, "response larger than %zu bytes",
					  srv->o.max_msg_bytes);
	}
	if (code > 0)
		code = SW_EINTERNAL;
	ctx->status = (grpc_status_code)sw_err_to_grpc(code);
	const char *msg = code == 0 ? "" : (ctx->errmsg[0] ? ctx->errmsg : sw_strerror(code));
	ctx->details = grpc_slice_from_copied_string(msg);

	if (!ctx->md_sent)
		fill_initial_md(ctx, &ops[n++]);
	if (ctx->resp_bb != NULL) {
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n].data.send_message.send_message = ctx->resp_bb;
		n++;
	}
	ops[n].op = GRPC_OP_SEND_STATUS_FROM_SERVER;
	ops[n].data.send_status_from_server.status = ctx->status;
	ops[n].data.send_status_from_server.status_details = &ctx->details;
	ops[n].data.send_status_from_server.trailing_metadata_count = 0;
	n++;
	if (!ctx->close_started) {
		ops[n].op = GRPC_OP_RECV_CLOSE_ON_SERVER;
		ops[n].data.recv_close_on_server.cancelled = &ctx->close_cancelled;
		n++;
	}

	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	double ms = (double)(now.tv_sec - ctx->start.tv_sec) * 1e3 +
		    (double)(now.tv_nsec - ctx->start.tv_nsec) / 1e6;
	metrics_rpc_observe(ctx->m != NULL ? ctx->path : NULL,
			    sw_grpc_status_name((int)ctx->status), ms / 1e3);
	access_log(ctx, code, msg, ms);
	start_batch(ctx, ops, n, &ctx->final_tag);
}

/* Runs the handler of a call on the current thread, then finishes it. */
static void run_handler(struct rpc_ctx *ctx)
{
	const struct rpc_method *impl = ctx->m->impl;
	const ProtobufCMethodDescriptor *md = ctx->m->md;
	int rc;

	log_set_request_id(ctx->rid);
	trace_set_current(&ctx->trace);
	if (impl->kind != RPC_CLIENT_STREAM) {
		if (ctx->payload == NULL) {
			rc = rpc_errorf(ctx, SW_EINVAL, "the call carried no request message");
			goto done;
		}
		ctx->req = rpc_unpack(md->input, ctx->payload);
		grpc_byte_buffer_destroy(ctx->payload);
		ctx->payload = NULL;
		if (ctx->req == NULL) {
			rc = rpc_errorf(ctx, SW_EINVAL, "the request does not decode as %s",
					md->input->name);
			goto done;
		}
	}
	if (impl->kind != RPC_SERVER_STREAM) {
		ctx->resp = rpc_alloc(ctx, md->output->sizeof_message);
		if (ctx->resp == NULL) {
			rc = SW_ENOMEM;
			goto done;
		}
		protobuf_c_message_init(md->output, ctx->resp);
	}
	/* Once the handler defers, another thread may finish the call (and
	 * drop the handler reference) before fn returns: hold a reference of
	 * our own until we have looked at ctx. */
	ctx_ref(ctx);
	rc = impl->fn(ctx, ctx->req, ctx->resp, ctx->m->svc_data);
	int deferred = rc == RPC_DEFERRED && ctx->deferred &&
		       (impl->kind == RPC_UNARY || ctx->async);
	/* This thread is free again: a deferred call waits without one. */
	rpc_limits_release_worker(ctx->srv->limits, &ctx->hold);
	ctx_unref(ctx);
	if (deferred) {
		log_set_request_id(NULL);
		trace_set_current(NULL);
		return; /* rpc_finish will finish and drop the handler reference */
	}
	if (rc == RPC_DEFERRED)
		rc = rpc_errorf(ctx, SW_EINTERNAL, "handler deferred without rpc_defer");
done:
	rpc_limits_release_worker(ctx->srv->limits, &ctx->hold);
	ctx_finish(ctx, rc);
	log_set_request_id(NULL);
	trace_set_current(NULL);
	ctx_unref(ctx);
}

int rpc_defer(struct rpc_ctx *ctx)
{
	if (ctx->m->impl->kind == RPC_SERVER_STREAM)
		return rpc_stream_defer(ctx, NULL, NULL);
	ctx->deferred = 1;
	return RPC_DEFERRED;
}

/* ---------- asynchronous server streams ---------- */

/*
 * The writer token (ctx->writing) serialises everything that starts a
 * batch on a deferred stream: one write at a time, and the final batch
 * only after the last one. Whoever sets it (under mu) runs stream_pump,
 * which starts the next write and returns (the completion-queue thread
 * runs it again when that write completes), or, with nothing queued,
 * releases the token or starts the final batch if rpc_finish asked for it.
 * md_sent, write_bb and ctx_finish are only touched by the token holder.
 */
static void stream_pump(struct rpc_ctx *ctx)
{
	for (;;) {
		pthread_mutex_lock(&ctx->mu);
		struct out_msg *om = ctx->outq;
		if (om != NULL && atomic_load(&ctx->cancelled)) {
			/* Nobody will read them: drop what is queued. */
			while (ctx->outq != NULL) {
				om = ctx->outq;
				ctx->outq = om->next;
				grpc_byte_buffer_destroy(om->bb);
				free(om);
			}
			ctx->outq_tail = NULL;
			ctx->outq_len = 0;
			om = NULL;
		}
		if (om == NULL) {
			int fin = ctx->fin_requested;
			ctx->writing = fin; /* the final batch keeps the token for good */
			int code = ctx->fin_code;
			pthread_mutex_unlock(&ctx->mu);
			if (fin)
				ctx_finish(ctx, code);
			return;
		}
		ctx->outq = om->next;
		if (ctx->outq == NULL)
			ctx->outq_tail = NULL;
		ctx->outq_len--;
		pthread_mutex_unlock(&ctx->mu);

		grpc_op ops[2];
		size_t n = 0;
		memset(ops, 0, sizeof ops);
		if (!ctx->md_sent)
			fill_initial_md(ctx, &ops[n++]);
		ctx->write_bb = om->bb;
		free(om);
		ops[n].op = GRPC_OP_SEND_MESSAGE;
		ops[n].data.send_message.send_message = ctx->write_bb;
		n++;
		if (start_batch(ctx, ops, n, &ctx->write_tag) == 0)
			return;
		/* Refused: the call is unusable; drain and finish. */
		grpc_byte_buffer_destroy(ctx->write_bb);
		ctx->write_bb = NULL;
		atomic_store(&ctx->cancelled, 1);
	}
}

/* A write completed (completion-queue thread, token held). */
static void on_write_done(struct rpc_ctx *ctx, int success)
{
	grpc_byte_buffer_destroy(ctx->write_bb);
	ctx->write_bb = NULL;
	if (!success)
		atomic_store(&ctx->cancelled, 1);
	stream_pump(ctx);
}

/* The client cancelled or the deadline passed (completion-queue thread). */
static void on_cancelled(struct rpc_ctx *ctx)
{
	pthread_mutex_lock(&ctx->mu);
	void (*fn)(struct rpc_ctx *, void *) = NULL;
	if (ctx->async && ctx->on_cancel != NULL && !ctx->fin_requested) {
		fn = ctx->on_cancel;
		ctx->on_cancel = NULL; /* at most once */
		ctx->cb_running = 1;
		ctx->cb_thread = pthread_self();
	}
	pthread_mutex_unlock(&ctx->mu);
	if (fn == NULL)
		return;
	fn(ctx, ctx->cancel_arg);
	pthread_mutex_lock(&ctx->mu);
	ctx->cb_running = 0;
	pthread_cond_broadcast(&ctx->cv);
	pthread_mutex_unlock(&ctx->mu);
}

int rpc_stream_defer(struct rpc_ctx *ctx, void (*on_cancel)(struct rpc_ctx *ctx, void *arg),
		     void *arg)
{
	if (ctx->m->impl->kind != RPC_SERVER_STREAM)
		return SW_EINVAL;
	pthread_mutex_lock(&ctx->mu);
	ctx->async = 1;
	ctx->on_cancel = on_cancel;
	ctx->cancel_arg = arg;
	pthread_mutex_unlock(&ctx->mu);
	ctx->deferred = 1;
	return RPC_DEFERRED;
}

int rpc_send_async(struct rpc_ctx *ctx, const ProtobufCMessage *msg)
{
	if (!ctx->async)
		return SW_EINVAL;
	if (atomic_load(&ctx->cancelled))
		return SW_ECANCELLED;
	grpc_byte_buffer *bb = rpc_pack(msg, ctx->srv->o.max_msg_bytes);
	if (bb == NULL)
		return SW_ERANGE;
	struct out_msg *om = malloc(sizeof *om);
	if (om == NULL) {
		grpc_byte_buffer_destroy(bb);
		return SW_ENOMEM;
	}
	om->next = NULL;
	om->bb = bb;
	int rc = 0, start = 0;
	pthread_mutex_lock(&ctx->mu);
	if (atomic_load(&ctx->cancelled)) {
		rc = SW_ECANCELLED;
	} else if (ctx->outq_len >= RPC_SEND_QUEUE_MAX) {
		rc = SW_ELIMIT;
	} else {
		if (ctx->outq_tail != NULL)
			ctx->outq_tail->next = om;
		else
			ctx->outq = om;
		ctx->outq_tail = om;
		ctx->outq_len++;
		if (!ctx->writing) {
			start = ctx->writing = 1;
			ctx_ref(ctx); /* until the write is started */
		}
	}
	pthread_mutex_unlock(&ctx->mu);
	if (rc != 0) {
		grpc_byte_buffer_destroy(bb);
		free(om);
		return rc;
	}
	if (start) {
		stream_pump(ctx);
		ctx_unref(ctx);
	}
	return 0;
}

void rpc_finish(struct rpc_ctx *ctx, int code)
{
	if (!ctx->async) {
		ctx_finish(ctx, code);
		ctx_unref(ctx);
		return;
	}
	int start = 0;
	pthread_mutex_lock(&ctx->mu);
	ctx->fin_requested = 1;
	ctx->fin_code = code;
	if (!ctx->writing)
		start = ctx->writing = 1;
	/* Once we return the application may free on_cancel's argument. */
	while (ctx->cb_running && !pthread_equal(ctx->cb_thread, pthread_self()))
		pthread_cond_wait(&ctx->cv, &ctx->mu);
	pthread_mutex_unlock(&ctx->mu);
	if (start)
		stream_pump(ctx);
	ctx_unref(ctx);
}

/* ---------- worker pool ---------- */

static int pool_push(struct rpc_server *srv, struct rpc_ctx *ctx)
{
	int ok = 0;
	pthread_mutex_lock(&srv->pmu);
	if (srv->qlen < srv->o.max_queue && !srv->pool_stop) {
		srv->queue[(srv->qhead + srv->qlen) % srv->o.max_queue] = ctx;
		srv->qlen++;
		pthread_cond_signal(&srv->pcv);
		ok = 1;
	}
	pthread_mutex_unlock(&srv->pmu);
	return ok;
}

static void *worker_main(void *arg)
{
	struct rpc_server *srv = arg;
	for (;;) {
		pthread_mutex_lock(&srv->pmu);
		while (srv->qlen == 0 && !srv->pool_stop)
			pthread_cond_wait(&srv->pcv, &srv->pmu);
		if (srv->qlen == 0 && srv->pool_stop) {
			pthread_mutex_unlock(&srv->pmu);
			return NULL;
		}
		struct rpc_ctx *ctx = srv->queue[srv->qhead];
		srv->qhead = (srv->qhead + 1) % srv->o.max_queue;
		srv->qlen--;
		pthread_mutex_unlock(&srv->pmu);
		run_handler(ctx);
	}
}

/* ---------- new calls ---------- */

static void post_slot(struct slot *s)
{
	struct rpc_server *srv = s->srv;
	grpc_call_error e;
	s->call = NULL;
	s->payload = NULL;
	grpc_metadata_array_init(&s->md);
	if (s->m != NULL) {
		e = grpc_server_request_registered_call(
			srv->server, s->m->reg, &s->call, &s->deadline, &s->md,
			s->m->impl != NULL && s->m->impl->kind != RPC_CLIENT_STREAM ? &s->payload
										    : NULL,
			srv->cq, srv->cq, s);
	} else {
		grpc_call_details_init(&s->details);
		e = grpc_server_request_call(srv->server, &s->call, &s->details, &s->md, srv->cq,
					     srv->cq, s);
	}
	if (e != GRPC_CALL_OK)
		log_error("rpc request_call refused", "grpc_call_error=%d", (int)e);
}

/* Admits a call under the server's limits (rpc_limits.h): a stream takes
 * a stream slot for its life, a call run on the pool a worker slot until
 * its handler returns. Past a limit: SW_ELIMIT with the message set, and
 * the call holds nothing. */
static int admit(struct rpc_ctx *ctx)
{
	const struct rpc_method *impl = ctx->m->impl;
	int stream = impl->kind != RPC_UNARY;
	int worker = !((impl->flags & RPC_INLINE) && impl->kind != RPC_CLIENT_STREAM) &&
		     !((impl->flags & RPC_DEFERS) && impl->kind == RPC_SERVER_STREAM);
	struct spiffe_id id;
	int service = spiffe_parse(ctx->peer, NULL, &id, NULL, 0) == 0 &&
		      id.kind == SPIFFE_SERVICE;
	char why[sizeof ctx->errmsg];
	int rc = rpc_limits_admit(ctx->srv->limits, ctx->peer, service, stream, worker, &ctx->hold,
				  why, sizeof why);
	if (rc != 0)
		rpc_errorf(ctx, rc, "%s", why);
	return rc;
}

static void on_new_call(struct slot *s, int success)
{
	struct rpc_server *srv = s->srv;
	int shutting = atomic_load(&srv->shutting_down);

	if (!success || s->call == NULL) {
		/* The server is shutting down and gave the request back. */
		grpc_metadata_array_destroy(&s->md);
		if (s->m == NULL)
			grpc_call_details_destroy(&s->details);
		if (s->payload)
			grpc_byte_buffer_destroy(s->payload);
		if (!shutting && success)
			post_slot(s);
		return;
	}

	struct rpc_ctx *ctx = calloc(1, sizeof *ctx);
	if (ctx == NULL) {
		grpc_call_cancel_with_status(s->call, GRPC_STATUS_RESOURCE_EXHAUSTED,
					     "server out of memory", NULL);
		grpc_call_unref(s->call);
		grpc_metadata_array_destroy(&s->md);
		if (s->m == NULL)
			grpc_call_details_destroy(&s->details);
		if (s->payload)
			grpc_byte_buffer_destroy(s->payload);
		if (!shutting)
			post_slot(s);
		return;
	}
	clock_gettime(CLOCK_MONOTONIC, &ctx->start);
	ctx->srv = srv;
	ctx->call = s->call;
	ctx->req_md = s->md;
	ctx->payload = s->payload;
	ctx->details = grpc_empty_slice();
	atomic_init(&ctx->refs, 1);
	atomic_init(&ctx->cancelled, 0);
	pthread_mutex_init(&ctx->mu, NULL);
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* op_wait's idle timeout */
	pthread_cond_init(&ctx->cv, &ca);
	pthread_condattr_destroy(&ca);
	ctx->op_tag = (struct tag){ TAG_OP, ctx };
	ctx->close_tag = (struct tag){ TAG_CLOSE, ctx };
	ctx->final_tag = (struct tag){ TAG_FINAL, ctx };
	ctx->write_tag = (struct tag){ TAG_WRITE, ctx };
	inflight_add(srv, 1);

	struct method_entry *m = s->m;
	if (m != NULL) {
		ctx->deadline = s->deadline;
		snprintf(ctx->path, sizeof ctx->path, "%s", m->path);
	} else {
		ctx->deadline = s->details.deadline;
		size_t len = GRPC_SLICE_LENGTH(s->details.method);
		if (len >= sizeof ctx->path)
			len = sizeof ctx->path - 1;
		memcpy(ctx->path, GRPC_SLICE_START_PTR(s->details.method), len);
		ctx->path[len] = '\0';
		for (size_t i = 0; i < srv->nmethods; i++)
			if (strcmp(srv->methods[i].path, ctx->path) == 0)
				m = &srv->methods[i];
		grpc_call_details_destroy(&s->details);
	}
	ctx->m = m;
	if (!shutting)
		post_slot(s);

	/* Request id: the client's when it is well formed, else a new one. */
	for (size_t i = 0; i < ctx->req_md.count; i++) {
		const grpc_metadata *md = &ctx->req_md.metadata[i];
		if (grpc_slice_str_cmp(md->key, "x-request-id") == 0 &&
		    request_id_ok((const char *)GRPC_SLICE_START_PTR(md->value),
				  GRPC_SLICE_LENGTH(md->value))) {
			memcpy(ctx->rid, GRPC_SLICE_START_PTR(md->value), GRPC_SLICE_LENGTH(md->value));
			ctx->rid[GRPC_SLICE_LENGTH(md->value)] = '\0';
		}
	}
	if (ctx->rid[0] == '\0')
		rpc_new_request_id(ctx->rid);
	/* Trace context: this call is a child span of the caller's
	 * traceparent; none, or an invalid one, starts a new trace (never an
	 * error: tracing must not refuse work). */
	struct trace_ctx parent = { .valid = 0 };
	for (size_t i = 0; i < ctx->req_md.count; i++) {
		const grpc_metadata *md = &ctx->req_md.metadata[i];
		if (grpc_slice_str_cmp(md->key, "traceparent") == 0 &&
		    trace_parse((const char *)GRPC_SLICE_START_PTR(md->value),
				GRPC_SLICE_LENGTH(md->value), &parent) == 0)
			break;
	}
	trace_child(&parent, &ctx->trace);

	if (m == NULL || m->impl == NULL) {
		ctx_finish(ctx, rpc_errorf(ctx, SW_EUNIMPL, "method %s is not implemented",
					   ctx->path));
		ctx_unref(ctx);
		return;
	}
	char why[512];
	if (tls_peer_spiffe_id(ctx->call, srv->trust_domain, ctx->peer, sizeof ctx->peer, why,
			       sizeof why) != 0 ||
	    tls_peer_kind_ok(ctx->peer, m->impl->peers, ctx->path, why, sizeof why) != 0) {
		ctx_finish(ctx, rpc_errorf(ctx, ctx->peer[0] ? SW_EPERM : SW_EUNAUTH, "%s", why));
		ctx_unref(ctx);
		return;
	}
	if (admit(ctx) != 0) {
		ctx_finish(ctx, SW_ELIMIT);
		ctx_unref(ctx);
		return;
	}
	if (m->impl->kind != RPC_UNARY) {
		/* Learn about cancellation while a stream is open. */
		grpc_op op;
		memset(&op, 0, sizeof op);
		op.op = GRPC_OP_RECV_CLOSE_ON_SERVER;
		op.data.recv_close_on_server.cancelled = &ctx->close_cancelled;
		ctx->close_started = 1;
		if (start_batch(ctx, &op, 1, &ctx->close_tag) != 0)
			ctx->close_started = 0;
	}
	if ((m->impl->flags & RPC_INLINE) && m->impl->kind != RPC_CLIENT_STREAM) {
		run_handler(ctx);
		return;
	}
	if (!pool_push(srv, ctx)) {
		ctx_finish(ctx, rpc_errorf(ctx, SW_ELIMIT, "server busy: %d calls queued",
					   srv->o.max_queue));
		ctx_unref(ctx);
	}
}

static void *cq_main(void *arg)
{
	struct rpc_server *srv = arg;
	for (;;) {
		grpc_event ev = grpc_completion_queue_next(
			srv->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL);
		if (ev.type == GRPC_QUEUE_SHUTDOWN)
			return NULL;
		if (ev.type != GRPC_OP_COMPLETE)
			continue;
		int kind = *(int *)ev.tag;
		if (kind == TAG_SLOT) {
			on_new_call(ev.tag, ev.success);
			continue;
		}
		struct tag *t = ev.tag;
		struct rpc_ctx *ctx = t->ctx;
		switch (kind) {
		case TAG_OP:
			pthread_mutex_lock(&ctx->mu);
			ctx->op_done = 1;
			ctx->op_ok = ev.success;
			pthread_cond_signal(&ctx->cv);
			pthread_mutex_unlock(&ctx->mu);
			break;
		case TAG_CLOSE:
			if (ctx->close_cancelled) {
				atomic_store(&ctx->cancelled, 1);
				on_cancelled(ctx);
			}
			break;
		case TAG_WRITE:
			on_write_done(ctx, ev.success);
			break;
		case TAG_FINAL:
			break;
		default:
			break;
		}
		ctx_unref(ctx);
	}
}

/* ---------- server set-up ---------- */

int rpc_server_new(const struct rpc_server_opts *opts, struct rpc_server **out, char *err,
		   size_t errlen)
{
	struct rpc_server *srv = NULL;
	*out = NULL;
	if (opts->listen == NULL || opts->ca_pem == NULL || opts->cert_pem == NULL ||
	    opts->key_pem == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "listen address and TLS material are required");
	srv = calloc(1, sizeof *srv);
	if (srv == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	srv->o = *opts;
	if (srv->o.max_msg_bytes == 0)
		srv->o.max_msg_bytes = 4u << 20;
	if (srv->o.cq_threads < 1)
		srv->o.cq_threads = 1;
	if (srv->o.workers < 1)
		srv->o.workers = 8;
	if (srv->o.max_queue < 1)
		srv->o.max_queue = 1024;
	if (srv->o.requests_per_method < 1)
		srv->o.requests_per_method = 8;
	int three_quarters = srv->o.workers * 3 / 4;
	if (three_quarters < 1)
		three_quarters = 1;
	if (srv->o.max_streams < 1)
		srv->o.max_streams = 1024;
	if (srv->o.max_streams_per_peer < 1)
		srv->o.max_streams_per_peer = 32;
	/* One caller may hold half the pool, and fewer worker slots than
	 * streams may hold in all: a caller at its limit leaves threads (and
	 * stream slots) to the others. */
	if (srv->o.max_calls_per_peer < 1)
		srv->o.max_calls_per_peer = srv->o.workers / 2 > 0 ? srv->o.workers / 2 : 1;
	if (srv->o.max_worker_streams < 1)
		srv->o.max_worker_streams = three_quarters;
	if (srv->o.stream_idle_ms < 0)
		srv->o.stream_idle_ms = 0;
	struct rpc_limits_opts lo = {
		.max_streams = srv->o.max_streams,
		.max_streams_per_peer = srv->o.max_streams_per_peer,
		.max_calls_per_peer = srv->o.max_calls_per_peer,
		.max_worker_streams = srv->o.max_worker_streams,
	};
	if (rpc_limits_new(&lo, &srv->limits) != 0) {
		free(srv);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	srv->tls = tls_server_src_new(opts->ca_pem, opts->cert_pem, opts->key_pem);
	srv->listen = strdup(opts->listen);
	srv->service = strdup(opts->service ? opts->service : "rpc");
	srv->trust_domain = opts->trust_domain ? strdup(opts->trust_domain) : NULL;
	srv->queue = calloc((size_t)srv->o.max_queue, sizeof *srv->queue);
	if (!srv->tls || !srv->listen || !srv->service ||
	    (opts->trust_domain && !srv->trust_domain) || !srv->queue) {
		rpc_server_free(srv);
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	}
	pthread_mutex_init(&srv->pmu, NULL);
	pthread_cond_init(&srv->pcv, NULL);
	pthread_mutex_init(&srv->imu, NULL);
	pthread_cond_init(&srv->icv, NULL);
	atomic_init(&srv->shutting_down, 0);
	*out = srv;
	return 0;
}

int rpc_server_add_service(struct rpc_server *srv, const ProtobufCServiceDescriptor *sd,
			   const struct rpc_method *methods, size_t n, void *svc_data, char *err,
			   size_t errlen)
{
	if (srv->started)
		return sw_errf(err, errlen, SW_EPRECOND, "server already started");
	for (size_t i = 0; i < n; i++) {
		if (protobuf_c_service_descriptor_get_method_by_name(sd, methods[i].name) == NULL)
			return sw_errf(err, errlen, SW_EINVAL, "%s has no method %s", sd->name,
				       methods[i].name);
		if (methods[i].fn == NULL)
			return sw_errf(err, errlen, SW_EINVAL, "%s.%s has no handler", sd->name,
				       methods[i].name);
		if ((methods[i].peers & RPC_PEER_ANY) == 0 || (methods[i].peers & ~RPC_PEER_ANY))
			return sw_errf(err, errlen, SW_EINVAL, "%s.%s names no kind of caller (peers)",
				       sd->name, methods[i].name);
	}
	size_t need = srv->nmethods + sd->n_methods;
	if (need > srv->capmethods) {
		struct method_entry *nm = realloc(srv->methods, need * sizeof *nm);
		if (nm == NULL)
			return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		srv->methods = nm;
		srv->capmethods = need;
	}
	for (unsigned i = 0; i < sd->n_methods; i++) {
		struct method_entry *e = &srv->methods[srv->nmethods++];
		memset(e, 0, sizeof *e);
		e->md = &sd->methods[i];
		e->svc_data = svc_data;
		snprintf(e->path, sizeof e->path, "/%s/%s", sd->name, e->md->name);
		for (size_t j = 0; j < n; j++)
			if (strcmp(methods[j].name, e->md->name) == 0)
				e->impl = &methods[j];
	}
	return 0;
}

void rpc_server_on_drain(struct rpc_server *srv, void (*fn)(void *), void *arg)
{
	srv->drain_fn = fn;
	srv->drain_arg = arg;
}

int rpc_server_start(struct rpc_server *srv, int *bound_port, char *err, size_t errlen)
{
	grpc_arg args[8];
	memset(args, 0, sizeof args);
	args[0].type = GRPC_ARG_INTEGER;
	args[0].key = GRPC_ARG_ALLOW_REUSEPORT;
	args[0].value.integer = 0;
	args[1].type = GRPC_ARG_INTEGER;
	args[1].key = GRPC_ARG_MAX_RECEIVE_MESSAGE_LENGTH;
	args[1].value.integer = (int)srv->o.max_msg_bytes;
	args[2].type = GRPC_ARG_INTEGER;
	args[2].key = GRPC_ARG_MAX_SEND_MESSAGE_LENGTH;
	args[2].value.integer = (int)srv->o.max_msg_bytes;
	args[3].type = GRPC_ARG_INTEGER;
	args[3].key = GRPC_ARG_KEEPALIVE_TIME_MS;
	args[3].value.integer = 30000;
	args[4].type = GRPC_ARG_INTEGER;
	args[4].key = GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS;
	args[4].value.integer = 10000;
	args[5].type = GRPC_ARG_INTEGER;
	args[5].key = GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS;
	args[5].value.integer = 1;
	/* Receive window for client streams (uploads): a message's size, or
	 * the fixed window a bulk-transfer service asks for (no BDP probing). */
	size_t nargs = 6;
	if (srv->o.stream_window > 0) {
		args[nargs].type = GRPC_ARG_INTEGER;
		args[nargs].key = GRPC_ARG_HTTP2_BDP_PROBE;
		args[nargs++].value.integer = 0;
	}
	args[nargs].type = GRPC_ARG_INTEGER;
	args[nargs].key = GRPC_ARG_HTTP2_STREAM_LOOKAHEAD_BYTES;
	args[nargs++].value.integer =
		srv->o.stream_window > 0 ? (int)srv->o.stream_window : (int)srv->o.max_msg_bytes;
	grpc_channel_args chargs = { nargs, args };

	srv->server = grpc_server_create(&chargs, NULL);
	srv->cq = grpc_completion_queue_create_for_next(NULL);
	grpc_server_register_completion_queue(srv->server, srv->cq, NULL);
	for (size_t i = 0; i < srv->nmethods; i++) {
		struct method_entry *e = &srv->methods[i];
		int with_payload = e->impl != NULL && e->impl->kind != RPC_CLIENT_STREAM;
		e->reg = grpc_server_register_method(
			srv->server, e->path, NULL,
			with_payload ? GRPC_SRM_PAYLOAD_READ_INITIAL_BYTE_BUFFER : GRPC_SRM_PAYLOAD_NONE,
			0);
		if (e->reg == NULL)
			return sw_errf(err, errlen, SW_EINVAL, "cannot register %s", e->path);
	}
	/* Reloadable (rpc_server_set_tls): each new handshake takes the
	 * material last set. */
	grpc_server_credentials *creds = tls_server_creds_reloadable(srv->tls);
	if (creds == NULL)
		return sw_errf(err, errlen, SW_EINVAL, "invalid TLS material");
	int port = grpc_server_add_http2_port(srv->server, srv->listen, creds);
	grpc_server_credentials_release(creds);
	if (port == 0)
		return sw_errf(err, errlen, SW_EUNAVAIL,
			       "cannot listen on %s (in use, or not a valid address)", srv->listen);
	grpc_server_start(srv->server);
	srv->started = 1;

	srv->nslots = srv->nmethods * (size_t)srv->o.requests_per_method + 4;
	srv->slots = calloc(srv->nslots, sizeof *srv->slots);
	srv->cq_threads = calloc((size_t)srv->o.cq_threads, sizeof *srv->cq_threads);
	srv->workers = calloc((size_t)srv->o.workers, sizeof *srv->workers);
	if (!srv->slots || !srv->cq_threads || !srv->workers)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	size_t k = 0;
	for (size_t i = 0; i < srv->nmethods; i++)
		for (int j = 0; j < srv->o.requests_per_method; j++) {
			struct slot *s = &srv->slots[k++];
			s->kind = TAG_SLOT;
			s->srv = srv;
			s->m = &srv->methods[i];
		}
	for (; k < srv->nslots; k++) {
		srv->slots[k].kind = TAG_SLOT;
		srv->slots[k].srv = srv;
	}
	for (size_t i = 0; i < srv->nslots; i++)
		post_slot(&srv->slots[i]);
	for (int i = 0; i < srv->o.workers; i++)
		pthread_create(&srv->workers[i], NULL, worker_main, srv);
	for (int i = 0; i < srv->o.cq_threads; i++)
		pthread_create(&srv->cq_threads[i], NULL, cq_main, srv);
	if (bound_port != NULL)
		*bound_port = port;
	return 0;
}

int rpc_server_shutdown(struct rpc_server *srv, int grace_ms)
{
	int cancelled = 0;
	if (!srv->started)
		return 0;
	atomic_store(&srv->shutting_down, 1);
	grpc_completion_queue *scq = grpc_completion_queue_create_for_pluck(NULL);
	int stag = TAG_SHUTDOWN;
	grpc_server_shutdown_and_notify(srv->server, scq, &stag);
	if (srv->drain_fn != NULL)
		srv->drain_fn(srv->drain_arg);
	gpr_timespec dl = gpr_time_add(gpr_now(GPR_CLOCK_MONOTONIC),
				       gpr_time_from_millis(grace_ms, GPR_TIMESPAN));
	grpc_event ev = grpc_completion_queue_pluck(scq, &stag, dl, NULL);
	if (ev.type == GRPC_QUEUE_TIMEOUT) {
		cancelled = rpc_server_inflight(srv);
		grpc_server_cancel_all_calls(srv->server);
		ev = grpc_completion_queue_pluck(scq, &stag, gpr_inf_future(GPR_CLOCK_MONOTONIC),
						 NULL);
	}
	/* Handlers still running (blocked in a database, say) see their calls
	 * cancelled; wait for the pool to empty and every context to go. */
	pthread_mutex_lock(&srv->pmu);
	srv->pool_stop = 1;
	pthread_cond_broadcast(&srv->pcv);
	pthread_mutex_unlock(&srv->pmu);
	for (int i = 0; i < srv->o.workers; i++)
		pthread_join(srv->workers[i], NULL);
	pthread_mutex_lock(&srv->imu);
	while (srv->inflight > 0)
		pthread_cond_wait(&srv->icv, &srv->imu);
	pthread_mutex_unlock(&srv->imu);

	grpc_server_destroy(srv->server);
	srv->server = NULL;
	grpc_completion_queue_shutdown(srv->cq);
	for (int i = 0; i < srv->o.cq_threads; i++)
		pthread_join(srv->cq_threads[i], NULL);
	grpc_completion_queue_destroy(srv->cq);
	srv->cq = NULL;
	grpc_completion_queue_shutdown(scq);
	while (grpc_completion_queue_pluck(scq, NULL, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
		       .type != GRPC_QUEUE_SHUTDOWN)
		;
	grpc_completion_queue_destroy(scq);
	srv->started = 0;
	return cancelled;
}

int rpc_server_set_tls(struct rpc_server *srv, const char *ca_pem, const char *cert_pem,
		       const char *key_pem)
{
	return tls_server_src_set(srv->tls, ca_pem, cert_pem, key_pem);
}

void rpc_server_free(struct rpc_server *srv)
{
	if (srv == NULL)
		return;
	if (srv->server != NULL) {
		/* Started but never shut down cleanly: do it now. */
		if (srv->started)
			rpc_server_shutdown(srv, 0);
		else
			grpc_server_destroy(srv->server);
	}
	if (srv->cq != NULL) {
		grpc_completion_queue_shutdown(srv->cq);
		while (grpc_completion_queue_next(srv->cq, gpr_inf_future(GPR_CLOCK_MONOTONIC), NULL)
			       .type != GRPC_QUEUE_SHUTDOWN)
			;
		grpc_completion_queue_destroy(srv->cq);
	}
	free(srv->slots);
	free(srv->cq_threads);
	free(srv->workers);
	free(srv->methods);
	free(srv->queue);
	tls_server_src_free(srv->tls); /* after grpc_server_destroy: gRPC asks it */
	free(srv->listen);
	free(srv->service);
	free(srv->trust_domain);
	rpc_limits_free(srv->limits);
	pthread_mutex_destroy(&srv->pmu);
	pthread_cond_destroy(&srv->pcv);
	pthread_mutex_destroy(&srv->imu);
	pthread_cond_destroy(&srv->icv);
	free(srv);
}
