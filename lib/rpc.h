/*
 * rpc.h - Slipway's gRPC layer on gRPC C core and protobuf-c.
 *
 * Server: one generic server routes "/package.Service/Method" to handlers by
 * protobuf-c's generated ProtobufCServiceDescriptor (no protoc plugin). The
 * descriptor has no streaming flag, so each handler table entry says whether
 * the method is unary, server-streaming or client-streaming.
 *
 * Threads: completion-queue threads only move events. Handlers run on a
 * bounded worker pool, where they may block (libpq, libs3); only handlers
 * flagged RPC_INLINE, which promise never to block, run on the CQ thread.
 * A handler may also defer a unary call and finish it later from any thread
 * (long polls), or defer a server stream and send on it from any thread
 * (watches, rpc_stream_defer); neither holds a thread while it waits.
 *
 * Every server requires a client certificate from the deployment CA (see
 * tls.h). Before any handler runs, the caller's SPIFFE ID is read from the
 * auth property peer_spiffe_id (and nothing else) and validated; a call
 * without exactly one valid SPIFFE ID is answered UNAUTHENTICATED, and a
 * caller whose kind (service, agent, user) the method does not accept
 * (rpc_method.peers) PERMISSION_DENIED.
 *
 * Admission (rpc_limits.h): once the caller is known, a call that would
 * take it past its share (open streams, calls on the worker pool) or the
 * service past its stream limits is answered RESOURCE_EXHAUSTED at once,
 * naming the flag that sets the limit; it is never queued. A blocking
 * rpc_recv or rpc_send that waits for the client longer than the idle
 * timeout cancels the call (DEADLINE_EXCEEDED), freeing its worker.
 *
 * Every call carries x-request-id: read from the request (when well formed)
 * or generated, sent back in the response headers, set as the log request
 * id while the handler runs, and forwarded by the client on downstream calls.
 *
 * Access log: when a call finishes, one info line "msg=access" with its
 * method, the caller's SPIFFE ID, the status name, the duration, the
 * request id and the trace id (health checks at debug; never a request
 * body). It is written at the single point where every call ends.
 *
 * Trace context (trace.h): every call's W3C `traceparent` is parsed (an
 * invalid one is ignored and a new trace started); the call gets a span
 * of its own in that trace, current on the handler's thread while it
 * runs, and downstream calls (rpc_call, rpc_stream_open) carry a child
 * span of the parent call or of the thread's current context.
 *
 * Client: long-lived channels, unary and streaming calls with deadlines, and
 * deadline/cancellation propagation from a server call to downstream calls.
 * Every client pins the SPIFFE ID of the server it calls (tls.h): a server
 * presenting another identity is refused during the handshake, before any
 * request is sent, and calls fail with UNAVAILABLE naming both IDs.
 */
#ifndef SLIPWAY_RPC_H
#define SLIPWAY_RPC_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

struct rpc_server;
struct rpc_ctx;
struct rpc_client;
struct rpc_stream;

enum rpc_kind { RPC_UNARY = 0, RPC_SERVER_STREAM = 1, RPC_CLIENT_STREAM = 2 };

enum {
	RPC_INLINE = 1, /* the handler never blocks: run it on the CQ thread
			 * (unary calls, and server streams whose handler only
			 * defers: rpc_stream_defer, never rpc_send; ignored on
			 * client streams, which block in rpc_recv) */
	RPC_DEFERS = 2, /* a server stream whose handler does bounded work (a
			 * query) and then always defers: it runs on the pool
			 * but is not counted as a stream holding a worker, nor
			 * against the caller's --max-calls-per-peer, so a
			 * burst of watches from one caller is not refused */
};

/* Returned by a handler that called rpc_defer(): the call stays open until
 * rpc_finish(). */
#define RPC_DEFERRED 1

/*
 * A handler. For RPC_UNARY, req is the unpacked request and resp an
 * initialised response that the handler fills (pointing into the request,
 * static data or rpc_alloc memory). For RPC_SERVER_STREAM, resp is NULL and
 * the handler calls rpc_send() for each message. For RPC_CLIENT_STREAM, req
 * is NULL and the handler reads with rpc_recv(), then fills resp.
 * Returns 0, a negative SW_E* code (message via rpc_errorf), or RPC_DEFERRED.
 */
typedef int (*rpc_handler_fn)(struct rpc_ctx *ctx, const ProtobufCMessage *req,
			      ProtobufCMessage *resp, void *svc_data);

/* Kinds of principal a method accepts (rpc_method.peers): the kind is the
 * certificate's SPIFFE ID (.../service/..., .../agent/..., .../user/...),
 * fixed at issuance, so no policy can grant it away. Deny by default: a
 * method must name the kinds it serves (registration refuses 0), and a
 * caller of another kind gets PERMISSION_DENIED before the handler runs. */
enum {
	RPC_PEER_SERVICE = 1u << 1, /* TLS_PEER_KIND_BIT(SPIFFE_SERVICE) */
	RPC_PEER_AGENT = 1u << 2,   /* TLS_PEER_KIND_BIT(SPIFFE_AGENT) */
	RPC_PEER_USER = 1u << 3,    /* TLS_PEER_KIND_BIT(SPIFFE_USER) */
	RPC_PEER_ANY = RPC_PEER_SERVICE | RPC_PEER_AGENT | RPC_PEER_USER,
};

struct rpc_method {
	const char *name; /* the method's name in the service descriptor */
	enum rpc_kind kind;
	unsigned flags;   /* RPC_INLINE */
	rpc_handler_fn fn;
	unsigned peers;   /* RPC_PEER_* the method accepts (never 0) */
};

struct rpc_server_opts {
	const char *service;      /* name for logs ("audit") */
	const char *listen;       /* "127.0.0.1:7443"; port 0 picks a free one */
	const char *ca_pem;       /* PEM text, copied: the deployment CA */
	const char *cert_pem;     /* the server's certificate chain */
	const char *key_pem;      /* the server's private key */
	const char *trust_domain; /* callers outside it are UNAUTHENTICATED */
	size_t max_msg_bytes;     /* receive and send cap per message */
	int cq_threads;           /* threads polling the completion queue (>= 1) */
	int workers;              /* handler threads (>= 1) */
	int max_queue;            /* handler jobs waiting; past it RESOURCE_EXHAUSTED */
	int requests_per_method;  /* posted requests kept per method (>= 1) */
	size_t stream_window;     /* 0: a per-stream receive window of one message
				   * (max_msg_bytes); > 0: a fixed window of this many
				   * bytes without BDP probing, which bounds what a fast
				   * sender can make this server buffer for a slow
				   * handler (big uploads) */
	/* Admission limits (rpc_limits.h): a call past one is refused at once
	 * with RESOURCE_EXHAUSTED naming the flag, never queued. 0 picks the
	 * default. */
	int max_streams;          /* open streams in all (1024) */
	int max_streams_per_peer; /* open streams of one SPIFFE ID (32) */
	int max_calls_per_peer;   /* calls of one SPIFFE ID queued for or on a
				   * worker (half the workers, >= 1); service
				   * principals are exempt */
	int max_worker_streams;   /* streams queued for or on a worker, in all
				   * (three quarters of workers, >= 1): the rest
				   * of the pool stays for unary calls */
	int64_t stream_idle_ms;   /* > 0: a blocking rpc_recv or rpc_send that
				   * waits this long for the client cancels the
				   * call with DEADLINE_EXCEEDED; 0: no limit */
	int no_access_log;        /* 1: successful calls are logged at debug, not
				   * info (failures stay at info; see "Access log") */
};

/* Creates a server (not yet listening). Returns 0 and *out (free with
 * rpc_server_free), or SW_EINVAL with a message. Main thread. */
int rpc_server_new(const struct rpc_server_opts *opts, struct rpc_server **out,
		   char *err, size_t errlen);

/* Registers the handlers for service sd; svc_data is passed to each. Every
 * entry must name a method of sd; methods without an entry answer
 * UNIMPLEMENTED. Borrows sd, methods and svc_data for the server's life.
 * Before rpc_server_start. */
int rpc_server_add_service(struct rpc_server *srv, const ProtobufCServiceDescriptor *sd,
			   const struct rpc_method *methods, size_t n, void *svc_data,
			   char *err, size_t errlen);

/* Called from rpc_server_shutdown right after the server stops accepting
 * calls, so that a service can finish its deferred calls (long polls) now
 * instead of at the grace deadline. Any thread may run it. */
void rpc_server_on_drain(struct rpc_server *srv, void (*fn)(void *), void *arg);

/* Binds, starts the threads and begins serving. *bound_port receives the
 * port actually bound. Fails (SW_EUNAVAIL) if the port is taken: address
 * reuse between processes is disabled. */
int rpc_server_start(struct rpc_server *srv, int *bound_port, char *err, size_t errlen);

/* Graceful stop: stops accepting calls, lets in-flight calls finish for up
 * to grace_ms, then cancels what is left, drains the completion queue and
 * joins every thread. Returns the number of calls that had to be cancelled.
 * Main thread. */
int rpc_server_shutdown(struct rpc_server *srv, int grace_ms);

/* Certificate rotation: connections accepted from now on use this
 * material (PEM text, copied); established ones keep theirs. Check it with
 * tls_check_material first. Returns 0 or SW_ENOMEM. Any thread. */
int rpc_server_set_tls(struct rpc_server *srv, const char *ca_pem, const char *cert_pem,
		       const char *key_pem);

/* Frees a server after rpc_server_shutdown (or one never started). NULL ok. */
void rpc_server_free(struct rpc_server *srv);

/* Number of calls currently being handled (for tests and health). */
int rpc_server_inflight(struct rpc_server *srv);

/* ---- inside a handler (the call's thread unless noted) ---- */

/* The caller's SPIFFE ID: valid for the call, never NULL or empty. */
const char *rpc_peer(const struct rpc_ctx *ctx);

/* The call's request id (never empty). */
const char *rpc_request_id(const struct rpc_ctx *ctx);

/* The method path, e.g. "/slipway.v1.Audit/Append". */
const char *rpc_method_path(const struct rpc_ctx *ctx);

/* Milliseconds left before the caller's deadline (INT64_MAX when none). */
int64_t rpc_remaining_ms(const struct rpc_ctx *ctx);

/* Returns 1 once the client has cancelled or the deadline has passed. Any
 * thread. For unary calls this is known only for deadlines. */
int rpc_cancelled(const struct rpc_ctx *ctx);

/* Memory freed when the call ends (after the response is sent). Returns
 * zeroed memory, or NULL when the per-call cap (max message size * 2 plus
 * 1 MiB) is reached. */
void *rpc_alloc(struct rpc_ctx *ctx, size_t n);
char *rpc_strdup(struct rpc_ctx *ctx, const char *s);
/* Copies n bytes; the result is NUL-terminated. */
char *rpc_memdup(struct rpc_ctx *ctx, const void *p, size_t n);

/* Marks the arena so that later allocations can be released together (long
 * streams that build one message per round). */
struct rpc_mark {
	void *block;
	size_t used;
	size_t total;
};
struct rpc_mark rpc_arena_mark(struct rpc_ctx *ctx);
/* Frees everything allocated since mark m. */
void rpc_arena_release(struct rpc_ctx *ctx, struct rpc_mark m);

/* Sets the status message sent to the client and returns code, so handlers
 * write: return rpc_errorf(ctx, SW_EINVAL, "app: %s", why). The message is
 * for people: never put secret values in it. */
int rpc_errorf(struct rpc_ctx *ctx, int code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Server streaming: sends one message and waits until the transport took it
 * (flow control). Returns 0, SW_ECANCELLED when the client went away,
 * SW_ETIMEDOUT when it took nothing for the idle timeout (stream_idle_ms:
 * the call is then cancelled with DEADLINE_EXCEEDED), or SW_ELIMIT when the
 * message is over the size cap. Worker thread only. */
int rpc_send(struct rpc_ctx *ctx, const ProtobufCMessage *msg);

/* Client streaming: receives the next message. Returns 1 and *msg (free
 * with protobuf_c_message_free_unpacked(msg, NULL)), 0 at the end of the
 * stream, SW_ECANCELLED, SW_ETIMEDOUT when the client sent nothing for the
 * idle timeout (the call is then cancelled with DEADLINE_EXCEEDED), or
 * SW_EINVAL when the bytes do not decode. Worker thread only. */
int rpc_recv(struct rpc_ctx *ctx, ProtobufCMessage **msg);

/* Defers a unary call: the handler returns RPC_DEFERRED and later, from any
 * thread, fills the response (from rpc_response) and calls rpc_finish.
 * On a server-streaming call it is rpc_stream_defer(ctx, NULL, NULL). */
int rpc_defer(struct rpc_ctx *ctx);
ProtobufCMessage *rpc_response(struct rpc_ctx *ctx);
/* Ends a deferred call with code (0 or a negative SW_E*, message via
 * rpc_errorf first). Any thread, exactly once per deferred call; ctx is
 * invalid once it returns. */
void rpc_finish(struct rpc_ctx *ctx, int code);

/*
 * Asynchronous server streams: a stream that holds no thread while idle.
 *
 * A RPC_SERVER_STREAM handler calls rpc_stream_defer() and returns
 * RPC_DEFERRED (it must return exactly that once it deferred). From then on
 * the application owns one reference to ctx, "the app reference", which it
 * may hand to any thread; it sends with rpc_send_async() and ends the call
 * with rpc_finish(), which drops that reference. Rules:
 *
 *  - rpc_finish must be called exactly once, also after the client went
 *    away (rpc_send_async then answers SW_ECANCELLED and rpc_cancelled is
 *    1): the call, its arena and its slot in rpc_server_inflight live until
 *    it is, so a server cannot finish shutting down before the application
 *    finishes every deferred call (use rpc_server_on_drain).
 *  - Until rpc_finish, ctx and its arena stay valid whatever the client
 *    does. rpc_send_async, rpc_finish, rpc_cancelled, rpc_remaining_ms and
 *    the accessors may be called from any thread, concurrently. The arena
 *    (rpc_alloc, marks) and rpc_errorf are not locked: the application
 *    must let one thread at a time use them (the thread that owns the call
 *    in its own bookkeeping). After rpc_finish returns, nothing of ctx may
 *    be touched.
 *  - Messages go out in the order rpc_send_async queued them, one write in
 *    flight per call (started by whichever thread queues into an idle
 *    stream, then by the completion-queue thread as each write completes);
 *    rpc_finish's status follows the last queued message. At most
 *    RPC_SEND_QUEUE_MAX messages wait per call.
 *  - on_cancel (may be NULL) is a wake-up hint, not the truth: it runs at
 *    most once, on a completion-queue thread, when the client cancels or
 *    the deadline passes, and only if rpc_finish has not been called yet;
 *    it may run before the handler has returned, and does not run if the
 *    call was already cancelled when rpc_stream_defer was called. It must
 *    not block; it may call rpc_finish. rpc_finish waits for a running
 *    on_cancel to return (unless called from it), so once rpc_finish
 *    returns, on_cancel is neither running nor will run and arg may go.
 *    The application still checks rpc_cancelled().
 *
 * Blocking rpc_send stays available to handlers that do not defer (worker
 * thread only; SW_EINVAL on a deferred stream).
 */
#define RPC_SEND_QUEUE_MAX 64

/* Defers a server-streaming call (see above). Handler thread, once.
 * Returns RPC_DEFERRED, or SW_EINVAL when the method is not
 * RPC_SERVER_STREAM (the call is then not deferred). */
int rpc_stream_defer(struct rpc_ctx *ctx, void (*on_cancel)(struct rpc_ctx *ctx, void *arg),
		     void *arg);

/* Packs msg (borrowed for the call only: it may be freed or its arena
 * released as soon as this returns) and queues it on a deferred stream.
 * Returns 0, SW_ECANCELLED when the client went away (or the deadline
 * passed), SW_ELIMIT when RPC_SEND_QUEUE_MAX messages already wait (the
 * client is not reading: nothing was queued, try a newer message later),
 * SW_ERANGE when msg is over the size cap, SW_EINVAL when ctx is not a
 * deferred stream, SW_ENOMEM. Any thread that holds the app reference. */
int rpc_send_async(struct rpc_ctx *ctx, const ProtobufCMessage *msg);

/* ---- client ---- */

struct rpc_client_opts {
	const char *target;       /* "127.0.0.1:7443", or a list of replicas
				   * "ipv4:10.0.0.1:7443,10.0.0.2:7443" */
	const char *ca_pem;       /* PEM text of the CA that signed the server */
	const char *cert_pem;     /* our certificate (mTLS) */
	const char *key_pem;      /* our private key */
	const char *server_name;  /* expected name in the server cert; NULL = host */
	/* The server's identity, required (one of the two): server_id is its
	 * full SPIFFE ID; server_service a service name ("orchestrator"),
	 * pinned as spiffe://<our trust domain>/service/<name>, the trust
	 * domain read from cert_pem. */
	const char *server_id;
	const char *server_service;
	size_t max_msg_bytes;     /* receive/send cap; 0 = 16 MiB */
	int own_connection;       /* 1 = do not share the TCP connection */
	/* 0 (services, agents): a call waits, within its deadline, for a
	 * channel that is connecting (which also drives reconnection after
	 * the server restarts), but fails at once with SW_EUNAVAIL when the
	 * peer is known down (the channel is in TRANSIENT_FAILURE: its last
	 * connection attempt failed), counted by rpc_client_fast_failures.
	 * 1 (interactive tools): a call fails at once with UNAVAILABLE when
	 * the server cannot be reached. */
	int fail_fast;
	size_t stream_window;     /* 0: a receive window of one message (max_msg_bytes);
				   * > 0: a fixed per-stream window without BDP probing,
				   * so a server streaming bulk data is not throttled to
				   * the estimated BDP */
	int reloadable;           /* 1: rpc_client_reload_all replaces its TLS
				   * material (a process's own identity: services'
				   * and the agent's clients, on SIGHUP) */
};

/* Creates a long-lived channel. Returns 0 and *out (free with
 * rpc_client_free), or SW_EINVAL (also when no server identity is given).
 * Thread-safe to use from many threads. */
int rpc_client_new(const struct rpc_client_opts *opts, struct rpc_client **out,
		   char *err, size_t errlen);
void rpc_client_free(struct rpc_client *c);

/* Certificate rotation: new calls of c use a new channel made with these
 * credentials (PEM text, copied), still pinned to the same server ID;
 * calls in flight finish on the old channel, which is destroyed after the
 * last. Returns 0, or SW_EINVAL (c keeps its channel). Any thread. */
int rpc_client_set_tls(struct rpc_client *c, const char *ca_pem, const char *cert_pem,
		       const char *key_pem, char *err, size_t errlen);

/* rpc_client_set_tls on every client created with opts.reloadable.
 * Returns how many were switched, or a negative code with the first
 * failure in err (the others are still switched). Any thread. */
int rpc_client_reload_all(const char *ca_pem, const char *cert_pem, const char *key_pem,
			  char *err, size_t errlen);

struct rpc_call_opts {
	int64_t timeout_ms;          /* 0 = 10 s default; a deadline is always set */
	struct rpc_ctx *parent;      /* propagate deadline, cancellation and request id */
	const char *request_id;      /* else the parent's, else the thread's, else new */
	int wait_for_ready;          /* wait for the peer until the deadline, even
				      * on a fail_fast client or a peer known down */
};

/* Calls of c refused at once because the peer was known down (tests,
 * metrics). Any thread. */
unsigned long long rpc_client_fast_failures(struct rpc_client *c);

/*
 * Unary call of method `method` of service sd. On success returns 0 and
 * *resp (free with protobuf_c_message_free_unpacked). On failure returns the
 * SW_E* code mapped from the gRPC status, with the server's message (or a
 * transport reason) in err. opts may be NULL. Any thread.
 */
int rpc_call(struct rpc_client *c, const ProtobufCServiceDescriptor *sd, const char *method,
	     const ProtobufCMessage *req, ProtobufCMessage **resp,
	     const struct rpc_call_opts *opts, char *err, size_t errlen);

/* Streaming calls (client- or server-streaming) on their own queue. A
 * stream to a peer known down (see fail_fast) is opened already failed:
 * its operations fail and rpc_stream_finish returns SW_EUNAVAIL with the
 * reason, as for any other transport failure. */
int rpc_stream_open(struct rpc_client *c, const ProtobufCServiceDescriptor *sd,
		    const char *method, const struct rpc_call_opts *opts,
		    struct rpc_stream **out, char *err, size_t errlen);
/* Sends one request message. 0, or SW_ECANCELLED if the call already ended
 * (rpc_stream_finish then tells why). */
int rpc_stream_send(struct rpc_stream *s, const ProtobufCMessage *msg);
/* Half-closes: no more requests. */
int rpc_stream_close_send(struct rpc_stream *s);
/* Receives one response: 1 and *msg, 0 at the end (then call finish), or a
 * negative code. */
int rpc_stream_recv(struct rpc_stream *s, ProtobufCMessage **msg);
/* Cancels the call (any time before finish). */
void rpc_stream_cancel(struct rpc_stream *s);
/* Waits for the final status, frees s, and returns 0 or the mapped SW_E*
 * code with the message in err. */
int rpc_stream_finish(struct rpc_stream *s, char *err, size_t errlen);

/* Generates a fresh request id (32 hex characters) into out[33]. */
void rpc_new_request_id(char out[33]);

/* Process-wide set-up and tear-down of gRPC (idempotent, counted). Routes
 * gRPC's own log lines into log.h. */
void rpc_init(void);
void rpc_shutdown(void);

#endif
