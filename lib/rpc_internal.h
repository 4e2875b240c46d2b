/*
 * rpc_internal.h - what rpc.c shares with rpc_client.c and nobody else.
 */
#ifndef SLIPWAY_RPC_INTERNAL_H
#define SLIPWAY_RPC_INTERNAL_H

#include <grpc/grpc.h>

struct rpc_ctx;

/* The server call behind a handler context, used as the parent of
 * downstream calls. Borrowed: valid while the call is being handled. */
grpc_call *rpc_ctx_call(struct rpc_ctx *ctx);

#endif
