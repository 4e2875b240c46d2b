/*
 * spiffe.c - strict SPIFFE ID parsing and formatting (see spiffe.h).
 */
#include "spiffe.h"
#include "err.h"

#include <stdio.h>
#include <string.h>

int spiffe_trust_domain_ok(const char *s)
{
	size_t n = strlen(s);
	if (n == 0 || n > 127)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
		      c == '-' || c == '_'))
			return 0;
	}
	return 1;
}

static int segment_ok_n(const char *s, size_t n)
{
	if (n == 0 || n > 63)
		return 0;
	if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_'))
			return 0;
	}
	return 1;
}

int spiffe_segment_ok(const char *s)
{
	return segment_ok_n(s, strlen(s));
}

int spiffe_parse(const char *id, const char *trust_domain, struct spiffe_id *out,
		 char *err, size_t errlen)
{
	static const char scheme[] = "spiffe://";
	size_t len = strlen(id);
	if (len > SPIFFE_ID_MAX)
		return sw_errf(err, errlen, SW_EINVAL, "SPIFFE ID longer than %d bytes",
			       SPIFFE_ID_MAX);
	if (strncmp(id, scheme, sizeof scheme - 1) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "not a spiffe:// URI");
	const char *td = id + sizeof scheme - 1;
	const char *slash = strchr(td, '/');
	if (slash == NULL || slash == td)
		return sw_errf(err, errlen, SW_EINVAL, "SPIFFE ID has no trust domain or path");
	char tdbuf[128];
	size_t tdlen = (size_t)(slash - td);
	if (tdlen >= sizeof tdbuf)
		return sw_errf(err, errlen, SW_EINVAL, "trust domain too long");
	memcpy(tdbuf, td, tdlen);
	tdbuf[tdlen] = '\0';
	if (!spiffe_trust_domain_ok(tdbuf))
		return sw_errf(err, errlen, SW_EINVAL, "invalid trust domain");
	if (trust_domain != NULL && strcmp(tdbuf, trust_domain) != 0)
		return sw_errf(err, errlen, SW_EINVAL, "trust domain '%s' is not '%s'", tdbuf,
			       trust_domain);
	/* Validate every path segment. */
	const char *segs[8];
	size_t seglen[8];
	size_t nseg = 0;
	const char *p = slash + 1;
	for (;;) {
		const char *q = strchr(p, '/');
		size_t n = q ? (size_t)(q - p) : strlen(p);
		if (!segment_ok_n(p, n))
			return sw_errf(err, errlen, SW_EINVAL, "invalid SPIFFE path segment");
		if (nseg == 8)
			return sw_errf(err, errlen, SW_EINVAL, "SPIFFE path too deep");
		segs[nseg] = p;
		seglen[nseg++] = n;
		if (q == NULL)
			break;
		p = q + 1;
	}
	if (out == NULL)
		return 0;
	memset(out, 0, sizeof *out);
	memcpy(out->trust_domain, tdbuf, tdlen + 1);
	out->kind = SPIFFE_OTHER;
	const char *rest = slash + 1;
	if (nseg == 2 && seglen[0] == 7 && strncmp(segs[0], "service", 7) == 0)
		out->kind = SPIFFE_SERVICE;
	else if (nseg == 2 && seglen[0] == 4 && strncmp(segs[0], "user", 4) == 0)
		out->kind = SPIFFE_USER;
	else if (nseg == 3 && seglen[0] == 5 && strncmp(segs[0], "agent", 5) == 0)
		out->kind = SPIFFE_AGENT;
	if (out->kind != SPIFFE_OTHER)
		rest = segs[1];
	snprintf(out->name, sizeof out->name, "%s", rest);
	return 0;
}

int spiffe_format(char *out, size_t outlen, const char *trust_domain,
		  enum spiffe_kind kind, const char *name)
{
	const char *k = kind == SPIFFE_SERVICE ? "service"
			: kind == SPIFFE_AGENT ? "agent"
			: kind == SPIFFE_USER	? "user"
						: NULL;
	if (k == NULL || !spiffe_trust_domain_ok(trust_domain))
		return SW_EINVAL;
	int n = snprintf(out, outlen, "spiffe://%s/%s/%s", trust_domain, k, name);
	if (n < 0 || (size_t)n >= outlen)
		return SW_EINVAL;
	struct spiffe_id id;
	if (spiffe_parse(out, trust_domain, &id, NULL, 0) != 0 || id.kind != kind)
		return SW_EINVAL;
	return 0;
}
