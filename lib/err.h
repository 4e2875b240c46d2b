/*
 * err.h - the one error convention of Slipway.
 *
 * Every function that can fail returns int: 0 on success, or one of the
 * negative SW_E* codes below. Detail for people goes into a caller-owned,
 * bounded buffer; it is never allocated on the error path. The mapping of
 * these codes to gRPC canonical status codes lives in exactly one place,
 * err.c (sw_err_to_grpc / sw_err_from_grpc).
 */
#ifndef SLIPWAY_ERR_H
#define SLIPWAY_ERR_H

#include <stddef.h>

enum {
	SW_OK = 0,
	SW_EINVAL = -1,      /* bad input: INVALID_ARGUMENT */
	SW_ENOTFOUND = -2,   /* NOT_FOUND */
	SW_EEXIST = -3,      /* ALREADY_EXISTS */
	SW_EPERM = -4,       /* PERMISSION_DENIED */
	SW_EUNAUTH = -5,     /* UNAUTHENTICATED: no usable identity */
	SW_EPRECOND = -6,    /* FAILED_PRECONDITION */
	SW_ERANGE = -7,      /* OUT_OF_RANGE */
	SW_ELIMIT = -8,      /* RESOURCE_EXHAUSTED: a cap was reached */
	SW_EUNAVAIL = -9,    /* UNAVAILABLE: a dependency is down; retry */
	SW_ETIMEDOUT = -10,  /* DEADLINE_EXCEEDED */
	SW_ECANCELLED = -11, /* CANCELLED */
	SW_EABORTED = -12,   /* ABORTED: conflict, retry the whole operation */
	SW_EUNIMPL = -13,    /* UNIMPLEMENTED */
	SW_EDATALOSS = -14,  /* DATA_LOSS: stored bytes do not match */
	SW_ENOMEM = -15,     /* out of memory: INTERNAL */
	SW_EIO = -16,        /* local I/O failure: INTERNAL */
	SW_EINTERNAL = -17,  /* a bug or an unexpected state: INTERNAL */
};

/* Returns a static, human-readable name for an SW_E* code ("invalid
 * argument"). Unknown codes give "unknown error". Any thread. */
const char *sw_strerror(int err);

/* Maps an SW_E* code to a gRPC canonical status code (as an int so that
 * this header does not need grpc). 0 maps to 0 (OK). Any thread. */
int sw_err_to_grpc(int err);

/* Maps a gRPC status code received by a client back to an SW_E* code.
 * Any thread. */
int sw_err_from_grpc(int status);

/* Returns the canonical name of a gRPC status code ("NOT_FOUND"). */
const char *sw_grpc_status_name(int status);

/* Writes a formatted message into err[errlen] when err is not NULL and
 * returns code, so that failures read: return sw_errf(err, n, SW_EINVAL, ...).
 * The message is truncated to fit; err is always NUL-terminated. */
int sw_errf(char *err, size_t errlen, int code, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

#endif
