/*
 * spiffe.h - SPIFFE IDs, the only principals Slipway knows.
 *
 *   spiffe://<trust-domain>/service/<name>
 *   spiffe://<trust-domain>/agent/<region>/<host>
 *   spiffe://<trust-domain>/user/<name>
 *
 * Parsing is strict (lower-case trust domain; path segments of
 * [A-Za-z0-9._-]; no empty, "." or ".." segments; no trailing slash, query
 * or fragment) so that authorization can compare IDs byte for byte.
 */
#ifndef SLIPWAY_SPIFFE_H
#define SLIPWAY_SPIFFE_H

#include <stddef.h>

#define SPIFFE_ID_MAX 255

enum spiffe_kind { SPIFFE_OTHER = 0, SPIFFE_SERVICE, SPIFFE_AGENT, SPIFFE_USER };

struct spiffe_id {
	char trust_domain[128];
	enum spiffe_kind kind;
	char name[SPIFFE_ID_MAX + 1]; /* service or user name, or "region/host" */
};

/* Parses and validates id. When trust_domain is not NULL the ID must belong
 * to it. Returns 0 (out may be NULL) or SW_EINVAL with the reason in err. */
int spiffe_parse(const char *id, const char *trust_domain, struct spiffe_id *out,
		 char *err, size_t errlen);

/* Returns 1 when s is a valid path segment ([A-Za-z0-9._-]{1,63}, not "."
 * or ".."). Used to validate names before building IDs. */
int spiffe_segment_ok(const char *s);

/* Returns 1 when s is a valid trust domain ([a-z0-9.-_]{1,127}). */
int spiffe_trust_domain_ok(const char *s);

/* Builds "spiffe://td/<kind>/<name>" into out. Returns 0 or SW_EINVAL. */
int spiffe_format(char *out, size_t outlen, const char *trust_domain,
		  enum spiffe_kind kind, const char *name);

#endif
