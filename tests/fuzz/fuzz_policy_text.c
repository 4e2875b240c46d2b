/*
 * fuzz_policy_text.c - the small parsers inside a policy document
 * (services/policy/doc.c, tz.c): durations, RFC 3339 times, glob
 * patterns, principal patterns, POSIX TZ rules and TZif zone files.
 *
 * The first input byte picks a mode; the rest is the text (or file).
 *
 *   0  pol_parse_duration agrees with a reference (digits + one unit):
 *      what it accepts, the reference accepts with the same value, and
 *      what the reference accepts below 2^62 ms, it accepts.
 *   1  pol_parse_time: an accepted time equals timegm() of its fields
 *      minus its zone offset, and its canonical form
 *      (YYYY-MM-DDTHH:MM:SSZ) parses back to the same instant.
 *   2  pol_glob(pattern, s) agrees with a recursive reference matcher.
 *   3  pol_check_principal: an accepted ID is a SPIFFE ID of the trust
 *      domain; an accepted prefix pattern is one followed by "/" and "*".
 *   4  pol_tz_posix: an accepted rule gives offsets within -25h..+26h for
 *      instants from 1900 to 2200.
 *   5  pol_tz_load of the input as a TZif file: the same bound, and
 *      offsets are stable between transitions.
 */
#include "fuzz.h"

#include "../../services/policy/policy.h"
#include "err.h"
#include "spiffe.h"

#include <ctype.h>
#include <time.h>

static void mode_duration(const char *s)
{
	static const char *const units[] = { "ms", "s", "m", "h", "d" };
	static const int64_t mul[] = { 1, 1000, 60000, 3600000, 86400000 };
	const char *p = s;
	__int128 v = 0;
	int ok = isdigit((unsigned char)*p);
	for (; isdigit((unsigned char)*p); p++)
		if (v < ((__int128)1 << 100))
			v = v * 10 + (*p - '0');
	int unit = -1;
	for (int i = 0; i < 5; i++)
		if (strcmp(p, units[i]) == 0)
			unit = i;
	ok = ok && unit >= 0;
	__int128 want = ok ? v * mul[unit] : 0;
	int64_t got = 0;
	int rc = pol_parse_duration(s, &got);
	if (rc == 0)
		FUZZ_CHECK(ok && want == got, "pol_parse_duration('%s') = %lld", s, (long long)got);
	else if (ok && want < ((__int128)1 << 62))
		FUZZ_CHECK(0, "pol_parse_duration refused '%s'", s);
}

static int two(const char *s)
{
	return (s[0] - '0') * 10 + (s[1] - '0');
}

static void mode_time(const char *s)
{
	int64_t ms;
	if (pol_parse_time(s, &ms) != 0)
		return;
	/* The fields, read independently: YYYY-MM-DD[Thh:mm[:ss[.frac]]](Z|+hh:mm). */
	struct tm tm = { 0 };
	tm.tm_year = two(s) * 100 + two(s + 2) - 1900;
	tm.tm_mon = two(s + 5) - 1;
	tm.tm_mday = two(s + 8);
	const char *p = s + 10;
	if (*p == 'T' || *p == 't' || *p == ' ') {
		tm.tm_hour = two(p + 1);
		tm.tm_min = two(p + 4);
		p += 6;
		if (*p == ':') {
			tm.tm_sec = two(p + 1);
			p += 3;
			if (*p == '.')
				for (p++; isdigit((unsigned char)*p); p++)
					;
		}
	}
	int off = 0;
	if (*p == '+' || *p == '-')
		off = (*p == '-' ? -1 : 1) * (two(p + 1) * 3600 + two(p + 4) * 60);
	FUZZ_CHECK(tm.tm_mon >= 0 && tm.tm_mon < 12 && tm.tm_mday >= 1 && tm.tm_hour < 24 &&
			   tm.tm_min < 60 && tm.tm_sec <= 60,
		   "accepted fields out of range in '%s'", s);
	int64_t want = ((int64_t)timegm(&tm) - off) * 1000;
	FUZZ_CHECK(ms == want, "pol_parse_time('%s') = %lld, want %lld", s, (long long)ms,
		   (long long)want);
	/* The canonical spelling of the same instant (4-digit years only). */
	time_t t = (time_t)(ms / 1000 - (ms % 1000 < 0));
	struct tm g;
	if (gmtime_r(&t, &g) == NULL || g.tm_year + 1900 < 0 || g.tm_year + 1900 > 9999)
		return;
	char canon[64];
	snprintf(canon, sizeof canon, "%04d-%02d-%02dT%02d:%02d:%02dZ", g.tm_year + 1900,
		 g.tm_mon + 1, g.tm_mday, g.tm_hour, g.tm_min, g.tm_sec);
	int64_t back;
	FUZZ_CHECK(pol_parse_time(canon, &back) == 0 && back == ms / 1000 * 1000,
		   "canonical '%s' of '%s' does not parse back", canon, s);
}

static int ref_glob(const char *p, const char *s)
{
	if (*p == '\0')
		return *s == '\0';
	if (*p == '*')
		return ref_glob(p + 1, s) || (*s != '\0' && ref_glob(p, s + 1));
	if (*s != '\0' && (*p == '?' || *p == *s))
		return ref_glob(p + 1, s + 1);
	return 0;
}

static void mode_glob(struct fz *f)
{
	char pat[40], s[40];
	fz_str(f, pat, 24);
	fz_str(f, s, 24);
	/* Keep the reference's backtracking cheap: at most 6 stars. */
	int stars = 0;
	for (const char *q = pat; *q; q++)
		stars += *q == '*';
	if (stars > 6)
		return;
	int got = pol_glob(pat, s), want = ref_glob(pat, s);
	FUZZ_CHECK(got == want, "pol_glob('%s', '%s') = %d, want %d", pat, s, got, want);
}

static void mode_principal(const char *s)
{
	char err[256];
	if (pol_check_principal(s, "slipway", 0, err, sizeof err) == 0) {
		struct spiffe_id id;
		FUZZ_CHECK(spiffe_parse(s, "slipway", &id, NULL, 0) == 0,
			   "accepted principal '%s' is not a SPIFFE ID of the trust domain", s);
	}
	if (pol_check_principal(s, "slipway", 1, err, sizeof err) == 0) {
		size_t n = strlen(s);
		if (n >= 2 && strcmp(s + n - 2, "/*") == 0) {
			char base[SPIFFE_ID_MAX + 1];
			FUZZ_CHECK(n - 2 <= SPIFFE_ID_MAX, "long pattern accepted");
			memcpy(base, s, n - 2);
			base[n - 2] = '\0';
			FUZZ_CHECK(strcmp(base, "spiffe://slipway") == 0 ||
					   spiffe_parse(base, "slipway", NULL, NULL, 0) == 0,
				   "pattern '%s' is not a prefix of the trust domain's IDs", s);
		} else {
			FUZZ_CHECK(strchr(s, '*') == NULL &&
					   spiffe_parse(s, "slipway", NULL, NULL, 0) == 0,
				   "accepted principal '%s'", s);
		}
	}
}

static void check_offsets(const struct pol_tz *tz, const char *what)
{
	/* 1900-01-01 .. 2200-01-01, every ~11 days, plus some fixed instants. */
	for (int64_t t = -2208988800LL; t < 7258118400LL; t += 950400 + 3607) {
		int32_t o = pol_tz_offset(tz, t);
		FUZZ_CHECK(o >= -25 * 3600 && o <= 26 * 3600, "%s: offset %d at %lld", what, o,
			   (long long)t);
	}
}

static void mode_posix(const char *s)
{
	struct pol_tz *tz = NULL;
	char err[256];
	if (pol_tz_posix(s, &tz, err, sizeof err) != 0)
		return;
	check_offsets(tz, s);
	pol_tz_free(tz);
}

static void mode_tzif(const uint8_t *p, size_t n)
{
	char dir[512], path[600];
	snprintf(dir, sizeof dir, "%s/Fuzz", fuzz_tmpdir());
	mkdir(dir, 0700);
	snprintf(path, sizeof path, "%s/Zone", dir);
	FILE *f = fopen(path, "wb");
	FUZZ_CHECK(f != NULL, "cannot write %s", path);
	FUZZ_CHECK(n == 0 || fwrite(p, 1, n, f) == n, "write");
	fclose(f);
	struct pol_tz *tz = NULL;
	char err[256];
	if (pol_tz_load("Fuzz/Zone", fuzz_tmpdir(), &tz, err, sizeof err) == 0) {
		check_offsets(tz, "TZif");
		pol_tz_free(tz);
	}
	unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = { data, size };
	uint8_t mode = fz_u8(&f) % 6;
	if (mode == 2) {
		mode_glob(&f);
		return 0;
	}
	if (mode == 5) {
		mode_tzif(f.p, f.n);
		return 0;
	}
	char *s = fz_rest(&f, NULL);
	switch (mode) {
	case 0: mode_duration(s); break;
	case 1: mode_time(s); break;
	case 3: mode_principal(s); break;
	default: mode_posix(s); break;
	}
	free(s);
	return 0;
}
