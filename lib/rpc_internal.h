/*
 * rpc_internal.h - what rpc.c shares with rpc_client.c and nobody else.
 */
#ifndef SLIPWAY_RPC_INTERNAL_H
#define SLIPWAY_RPC_INTERNAL_H

#include <grpc/grpc.h>
#include <protobuf-c/protobuf-c.h>
#include <stddef.h>

struct rpc_ctx;

/* The server call behind a handler context, used as the parent of
 * downstream calls. Borrowed: valid while the call is being handled. */
grpc_call *rpc_ctx_call(struct rpc_ctx *ctx);

struct trace_ctx;
/* The trace context (span) of a server call, the parent of the spans of
 * downstream calls. Borrowed like the call. */
const struct trace_ctx *rpc_ctx_trace(const struct rpc_ctx *ctx);

/* Packs msg into a new byte buffer, or returns NULL past the size cap. */
grpc_byte_buffer *rpc_pack(const ProtobufCMessage *msg, size_t cap);

/* Unpacks a byte buffer with descriptor d. Returns NULL if it does not
 * decode. */
ProtobufCMessage *rpc_unpack(const ProtobufCMessageDescriptor *d, grpc_byte_buffer *bb);

#endif
