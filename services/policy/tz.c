/*
 * tz.c - time zones for freeze windows, read from the system's TZif files
 * (RFC 8536; Debian package tzdata, /usr/share/zoneinfo) without touching
 * the process-wide TZ state, so any thread may convert at any time.
 *
 * A zone is its list of transitions (the 64-bit data block of a version 2+
 * file) plus the footer's POSIX TZ rule, which governs every instant after
 * the last transition (slim TZif files end their table early and rely on
 * it). Zones are loaded when a policy is compiled; evaluation never reads
 * the disk.
 */
#include "policy.h"
#include "err.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TZ_MAX_FILE (512 * 1024)
#define TZ_MAX_TRANS 4000
#define TZ_MAX_TYPES 256

/* A point of a POSIX rule: Jn, n or Mm.w.d, with a local time of day. */
struct rule_point {
	char kind; /* 'J', 'N' (zero-based day) or 'M' */
	int a, b, c;
	int32_t secs;
};

struct pol_tz {
	size_t ntrans;
	int64_t *trans;
	uint8_t *idx;
	size_t ntypes;
	int32_t *utoff;
	int has_rule;
	int32_t std_off, dst_off; /* east of UTC, seconds */
	int has_dst;
	struct rule_point start, end;
};

static int64_t civil_days(int64_t y, int m, int d)
{
	y -= m <= 2;
	int64_t era = (y >= 0 ? y : y - 399) / 400;
	int64_t yoe = y - era * 400;
	int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static int64_t year_of_days(int64_t z)
{
	z += 719468;
	int64_t era = (z >= 0 ? z : z - 146096) / 146097;
	int64_t doe = z - era * 146097;
	int64_t yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	int64_t y = yoe + era * 400;
	int64_t doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	int64_t mp = (5 * doy + 2) / 153;
	int64_t m = mp + (mp < 10 ? 3 : -9);
	return y + (m <= 2);
}

static int is_leap(int64_t y)
{
	return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int mdays(int64_t y, int m)
{
	static const int d[] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31 };
	return m == 2 && is_leap(y) ? 29 : d[m - 1];
}

/* Day (days since the epoch) a rule point falls on in year y. */
static int64_t rule_day(const struct rule_point *r, int64_t y)
{
	int64_t jan1 = civil_days(y, 1, 1);
	if (r->kind == 'J')
		return jan1 + r->a - 1 + (is_leap(y) && r->a >= 60);
	if (r->kind == 'N')
		return jan1 + r->a;
	int64_t first = civil_days(y, r->a, 1);
	int wd = (int)(((first % 7) + 7 + 4) % 7); /* 1970-01-01 was a Thursday (4) */
	int64_t day = first + (r->c - wd + 7) % 7 + (int64_t)(r->b - 1) * 7;
	while (day >= first + mdays(y, r->a))
		day -= 7;
	return day;
}

static int32_t rule_offset(const struct pol_tz *tz, int64_t t)
{
	if (!tz->has_dst)
		return tz->std_off;
	int64_t local = t + tz->std_off;
	int64_t days = local >= 0 ? local / 86400 : -((-local + 86399) / 86400);
	int64_t y = year_of_days(days);
	/* The start is in standard local time, the end in daylight time. */
	int64_t s = rule_day(&tz->start, y) * 86400 + tz->start.secs - tz->std_off;
	int64_t e = rule_day(&tz->end, y) * 86400 + tz->end.secs - tz->dst_off;
	int dst = s < e ? (t >= s && t < e) : !(t >= e && t < s);
	return dst ? tz->dst_off : tz->std_off;
}

int32_t pol_tz_offset(const struct pol_tz *tz, int64_t t)
{
	if (tz == NULL)
		return 0;
	if (tz->ntrans == 0 || t < tz->trans[0]) {
		if (tz->ntrans == 0 && tz->has_rule)
			return rule_offset(tz, t);
		return tz->ntypes ? tz->utoff[0] : 0;
	}
	if (t >= tz->trans[tz->ntrans - 1] && tz->has_rule)
		return rule_offset(tz, t);
	size_t lo = 0, hi = tz->ntrans; /* last transition <= t */
	while (hi - lo > 1) {
		size_t mid = (lo + hi) / 2;
		if (tz->trans[mid] <= t)
			lo = mid;
		else
			hi = mid;
	}
	return tz->utoff[tz->idx[lo]];
}

void pol_tz_free(struct pol_tz *tz)
{
	if (tz == NULL)
		return;
	free(tz->trans);
	free(tz->idx);
	free(tz->utoff);
	free(tz);
}

/* ---- POSIX TZ strings ---- */

static int p_name(const char **p)
{
	const char *s = *p;
	if (*s == '<') {
		s++;
		while (*s && *s != '>')
			s++;
		if (*s != '>')
			return -1;
		*p = s + 1;
		return 0;
	}
	int n = 0;
	while (isalpha((unsigned char)s[n]))
		n++;
	if (n < 3)
		return -1;
	*p = s + n;
	return 0;
}

/* [+-]hh[:mm[:ss]], hours up to max_h. */
static int p_time(const char **p, int max_h, int32_t *out)
{
	const char *s = *p;
	int sign = 1, h = 0, m = 0, sec = 0, nd = 0;
	if (*s == '+' || *s == '-')
		sign = *s++ == '-' ? -1 : 1;
	while (isdigit((unsigned char)*s) && nd < 3)
		h = h * 10 + (*s++ - '0'), nd++;
	if (nd == 0 || h > max_h)
		return -1;
	if (*s == ':') {
		s++;
		if (!isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]))
			return -1;
		m = (s[0] - '0') * 10 + (s[1] - '0');
		s += 2;
		if (*s == ':') {
			s++;
			if (!isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]))
				return -1;
			sec = (s[0] - '0') * 10 + (s[1] - '0');
			s += 2;
		}
	}
	if (m > 59 || sec > 59)
		return -1;
	*out = sign * (h * 3600 + m * 60 + sec);
	*p = s;
	return 0;
}

static int p_int(const char **p, int lo, int hi, int *out)
{
	const char *s = *p;
	int v = 0, nd = 0;
	while (isdigit((unsigned char)*s) && nd < 4)
		v = v * 10 + (*s++ - '0'), nd++;
	if (nd == 0 || v < lo || v > hi)
		return -1;
	*out = v;
	*p = s;
	return 0;
}

static int p_rule(const char **p, struct rule_point *r)
{
	const char *s = *p;
	if (*s == 'M') {
		s++;
		r->kind = 'M';
		if (p_int(&s, 1, 12, &r->a) || *s++ != '.' || p_int(&s, 1, 5, &r->b) ||
		    *s++ != '.' || p_int(&s, 0, 6, &r->c))
			return -1;
	} else if (*s == 'J') {
		s++;
		r->kind = 'J';
		if (p_int(&s, 1, 365, &r->a))
			return -1;
	} else {
		r->kind = 'N';
		if (p_int(&s, 0, 365, &r->a))
			return -1;
	}
	r->secs = 7200;
	if (*s == '/') {
		s++;
		if (p_time(&s, 167, &r->secs))
			return -1;
	}
	*p = s;
	return 0;
}

static int parse_posix(const char *s, struct pol_tz *tz)
{
	int32_t off;
	if (p_name(&s) || p_time(&s, 24, &off))
		return -1;
	tz->std_off = -off; /* POSIX counts west of UTC as positive */
	tz->has_rule = 1;
	if (*s == '\0')
		return 0;
	if (p_name(&s))
		return -1;
	tz->has_dst = 1;
	tz->dst_off = tz->std_off + 3600;
	if (*s != ',' && *s != '\0') {
		if (p_time(&s, 24, &off))
			return -1;
		tz->dst_off = -off;
	}
	if (*s == '\0') {
		/* No rule: the US rules of POSIX's default. */
		tz->start = (struct rule_point){ 'M', 3, 2, 0, 7200 };
		tz->end = (struct rule_point){ 'M', 11, 1, 0, 7200 };
		return 0;
	}
	if (*s++ != ',' || p_rule(&s, &tz->start) || *s++ != ',' || p_rule(&s, &tz->end) ||
	    *s != '\0')
		return -1;
	return 0;
}

int pol_tz_posix(const char *s, struct pol_tz **out, char *err, size_t errlen)
{
	struct pol_tz *tz = calloc(1, sizeof *tz);
	*out = NULL;
	if (tz == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	if (parse_posix(s, tz) != 0) {
		free(tz);
		return sw_errf(err, errlen, SW_EINVAL, "'%s' is not a POSIX TZ rule", s);
	}
	*out = tz;
	return 0;
}

/* ---- TZif ---- */

static uint32_t be32(const unsigned char *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static int64_t be64s(const unsigned char *p)
{
	uint64_t v = 0;
	for (int i = 0; i < 8; i++)
		v = v << 8 | p[i];
	return (int64_t)v;
}

struct hdr {
	int version;
	uint32_t isutcnt, isstdcnt, leapcnt, timecnt, typecnt, charcnt;
};

static int read_hdr(const unsigned char *b, size_t len, struct hdr *h)
{
	if (len < 44 || memcmp(b, "TZif", 4) != 0)
		return -1;
	h->version = b[4] == 0 ? 1 : b[4] - '0';
	h->isutcnt = be32(b + 20);
	h->isstdcnt = be32(b + 24);
	h->leapcnt = be32(b + 28);
	h->timecnt = be32(b + 32);
	h->typecnt = be32(b + 36);
	h->charcnt = be32(b + 40);
	if (h->timecnt > TZ_MAX_TRANS || h->typecnt == 0 || h->typecnt > TZ_MAX_TYPES ||
	    h->charcnt > 1024 || h->leapcnt > 1000 || h->isutcnt > TZ_MAX_TYPES ||
	    h->isstdcnt > TZ_MAX_TYPES)
		return -1;
	return 0;
}

static size_t block_len(const struct hdr *h, int tsize)
{
	return (size_t)h->timecnt * (size_t)tsize + h->timecnt + (size_t)h->typecnt * 6 +
	       h->charcnt + (size_t)h->leapcnt * (size_t)(tsize + 4) + h->isstdcnt + h->isutcnt;
}

static int parse_tzif(const unsigned char *b, size_t len, struct pol_tz *tz)
{
	struct hdr h;
	if (read_hdr(b, len, &h) != 0)
		return -1;
	int tsize = 4;
	size_t off = 44;
	if (h.version >= 2) {
		/* Skip the 32-bit block; use the 64-bit one. */
		off += block_len(&h, 4);
		if (off > len || read_hdr(b + off, len - off, &h) != 0)
			return -1;
		off += 44;
		tsize = 8;
	}
	if (off + block_len(&h, tsize) > len)
		return -1;
	const unsigned char *d = b + off;
	tz->ntrans = h.timecnt;
	tz->ntypes = h.typecnt;
	tz->trans = calloc(h.timecnt + 1, sizeof *tz->trans);
	tz->idx = calloc(h.timecnt + 1, 1);
	tz->utoff = calloc(h.typecnt, sizeof *tz->utoff);
	if (tz->trans == NULL || tz->idx == NULL || tz->utoff == NULL)
		return -1;
	for (uint32_t i = 0; i < h.timecnt; i++) {
		tz->trans[i] = tsize == 8 ? be64s(d + 8 * i) : (int32_t)be32(d + 4 * i);
		if (i > 0 && tz->trans[i] <= tz->trans[i - 1])
			return -1;
	}
	d += (size_t)h.timecnt * (size_t)tsize;
	for (uint32_t i = 0; i < h.timecnt; i++) {
		if (d[i] >= h.typecnt)
			return -1;
		tz->idx[i] = d[i];
	}
	d += h.timecnt;
	for (uint32_t i = 0; i < h.typecnt; i++) {
		int32_t u = (int32_t)be32(d + 6 * i);
		if (u < -25 * 3600 || u > 26 * 3600)
			return -1;
		tz->utoff[i] = u;
	}
	off += block_len(&h, tsize);
	if (h.version >= 2 && off < len && b[off] == '\n') {
		const unsigned char *s = b + off + 1;
		const unsigned char *e = memchr(s, '\n', len - off - 1);
		if (e == NULL)
			return -1;
		char rule[128];
		size_t n = (size_t)(e - s);
		if (n >= sizeof rule)
			return -1;
		memcpy(rule, s, n);
		rule[n] = '\0';
		if (n > 0 && parse_posix(rule, tz) != 0)
			return -1;
	}
	return 0;
}

static int zone_name_ok(const char *n)
{
	size_t len = strlen(n);
	if (len == 0 || len > 64 || n[0] == '/' || n[0] == '.')
		return 0;
	for (size_t i = 0; i < len; i++) {
		char c = n[i];
		if (!(isalnum((unsigned char)c) || c == '_' || c == '-' || c == '+' || c == '/' ||
		      c == '.'))
			return 0;
		if (c == '.' && i + 1 < len && n[i + 1] == '.')
			return 0;
		if (c == '/' && (n[i + 1] == '.' || n[i + 1] == '/' || n[i + 1] == '\0'))
			return 0;
	}
	return 1;
}

int pol_tz_load(const char *name, const char *dir, struct pol_tz **out, char *err,
		size_t errlen)
{
	struct pol_tz *tz = NULL;
	unsigned char *buf = NULL;
	FILE *f = NULL;
	int rc = 0;

	*out = NULL;
	if (!zone_name_ok(name))
		return sw_errf(err, errlen, SW_EINVAL, "'%s' is not a time zone name", name);
	tz = calloc(1, sizeof *tz);
	if (tz == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	if (dir == NULL)
		dir = getenv("TZDIR");
	if (dir == NULL || dir[0] == '\0')
		dir = "/usr/share/zoneinfo";
	char path[512];
	snprintf(path, sizeof path, "%s/%s", dir, name);
	f = fopen(path, "rb");
	if (f == NULL) {
		if (strcmp(name, "UTC") == 0 || strcmp(name, "Etc/UTC") == 0) {
			tz->has_rule = 1; /* no tzdata installed: UTC needs none */
			goto done;
		}
		rc = sw_errf(err, errlen, SW_ENOTFOUND, "unknown time zone '%s' (no %s)", name, path);
		goto out;
	}
	buf = malloc(TZ_MAX_FILE);
	if (buf == NULL) {
		rc = sw_errf(err, errlen, SW_ENOMEM, "out of memory");
		goto out;
	}
	size_t len = fread(buf, 1, TZ_MAX_FILE, f);
	if (len == TZ_MAX_FILE || parse_tzif(buf, len, tz) != 0) {
		rc = sw_errf(err, errlen, SW_EINVAL, "'%s' is not a valid TZif file", path);
		goto out;
	}
done:
	*out = tz;
	tz = NULL;
out:
	if (f != NULL)
		fclose(f);
	free(buf);
	pol_tz_free(tz);
	return rc;
}
