/*
 * err.c - names of the SW_E* codes and the single mapping between them and
 * gRPC canonical status codes. Nothing else in the tree maps status codes.
 */
#include "err.h"

#include <stdarg.h>
#include <stdio.h>

/* gRPC canonical codes (grpc/status.h), repeated so this file stays free of
 * grpc headers; tests check that they match. */
enum {
	G_OK = 0, G_CANCELLED = 1, G_UNKNOWN = 2, G_INVALID_ARGUMENT = 3,
	G_DEADLINE_EXCEEDED = 4, G_NOT_FOUND = 5, G_ALREADY_EXISTS = 6,
	G_PERMISSION_DENIED = 7, G_RESOURCE_EXHAUSTED = 8,
	G_FAILED_PRECONDITION = 9, G_ABORTED = 10, G_OUT_OF_RANGE = 11,
	G_UNIMPLEMENTED = 12, G_INTERNAL = 13, G_UNAVAILABLE = 14,
	G_DATA_LOSS = 15, G_UNAUTHENTICATED = 16,
};

static const struct {
	int err;
	int grpc;
	const char *text;
} map[] = {
	{ SW_OK, G_OK, "ok" },
	{ SW_EINVAL, G_INVALID_ARGUMENT, "invalid argument" },
	{ SW_ENOTFOUND, G_NOT_FOUND, "not found" },
	{ SW_EEXIST, G_ALREADY_EXISTS, "already exists" },
	{ SW_EPERM, G_PERMISSION_DENIED, "permission denied" },
	{ SW_EUNAUTH, G_UNAUTHENTICATED, "unauthenticated" },
	{ SW_EPRECOND, G_FAILED_PRECONDITION, "failed precondition" },
	{ SW_ERANGE, G_OUT_OF_RANGE, "out of range" },
	{ SW_ELIMIT, G_RESOURCE_EXHAUSTED, "resource exhausted" },
	{ SW_EUNAVAIL, G_UNAVAILABLE, "unavailable" },
	{ SW_ETIMEDOUT, G_DEADLINE_EXCEEDED, "deadline exceeded" },
	{ SW_ECANCELLED, G_CANCELLED, "cancelled" },
	{ SW_EABORTED, G_ABORTED, "aborted" },
	{ SW_EUNIMPL, G_UNIMPLEMENTED, "unimplemented" },
	{ SW_EDATALOSS, G_DATA_LOSS, "data loss" },
	{ SW_ENOMEM, G_INTERNAL, "out of memory" },
	{ SW_EIO, G_INTERNAL, "i/o error" },
	{ SW_EINTERNAL, G_INTERNAL, "internal error" },
};

static const char *const status_names[] = {
	"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
	"NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
	"FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED",
	"INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED",
};

const char *sw_strerror(int err)
{
	for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
		if (map[i].err == err)
			return map[i].text;
	return "unknown error";
}

int sw_err_to_grpc(int err)
{
	for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
		if (map[i].err == err)
			return map[i].grpc;
	return G_UNKNOWN;
}

int sw_err_from_grpc(int status)
{
	if (status == G_INTERNAL)
		return SW_EINTERNAL;
	if (status == G_UNKNOWN)
		return SW_EINTERNAL;
	/* First match wins: INTERNAL was handled above, the rest are 1:1. */
	for (size_t i = 0; i < sizeof map / sizeof map[0]; i++)
		if (map[i].grpc == status)
			return map[i].err;
	return SW_EINTERNAL;
}

const char *sw_grpc_status_name(int status)
{
	if (status < 0 || (size_t)status >= sizeof status_names / sizeof status_names[0])
		return "UNKNOWN";
	return status_names[status];
}

int sw_errf(char *err, size_t errlen, int code, const char *fmt, ...)
{
	if (err != NULL && errlen > 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err, errlen, fmt, ap);
		va_end(ap);
	}
	return code;
}
