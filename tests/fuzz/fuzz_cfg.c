/*
 * fuzz_cfg.c - the strict number, duration, size and boolean parsers of
 * lib/cfg.c (used on configuration and, through art_token_id and others,
 * on network input) and the option-table parser cfg_parse.
 *
 * The first input byte picks a mode; the rest is the text.
 *
 *   0  cfg_parse_ll, _ms, _size, _bool are compared with reference parsers
 *      written from cfg.h (digits with an optional sign for ll; digits and
 *      one exact unit for ms and size; exact words for bool; 128-bit
 *      arithmetic for overflow). Accepted values format back and parse to
 *      the same value.
 *   1  cfg_parse on an argv made of the NUL-separated pieces of the input,
 *      against a table with one option of each type: a CFG_RUN/CFG_CHECK
 *      result leaves every number in its range and the required option
 *      set, and cfg_print_values never prints the secret option's value.
 */
#include "fuzz.h"

#include "cfg.h"
#include "err.h"

#include <limits.h>
#include <strings.h>

/* [+-]?[0-9]+ fitting a long long. */
static int ref_ll(const char *s, long long *out)
{
	const char *p = s;
	int neg = 0;
	if (*p == '+' || *p == '-')
		neg = *p++ == '-';
	if (*p < '0' || *p > '9')
		return -1;
	__int128 v = 0;
	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (*p - '0');
		if (v > (__int128)LLONG_MAX + 1)
			return -1;
	}
	if (*p != '\0')
		return -1;
	if (neg)
		v = -v;
	if (v > LLONG_MAX || v < LLONG_MIN)
		return -1;
	*out = (long long)v;
	return 0;
}

/* [0-9]+ then one of the units (or none), product fitting a long long. */
static int ref_unit(const char *s, const char *const *units, const long long *mul, size_t nu,
		    long long *out)
{
	const char *p = s;
	if (*p < '0' || *p > '9')
		return -1;
	__int128 v = 0;
	for (; *p >= '0' && *p <= '9'; p++) {
		v = v * 10 + (*p - '0');
		if (v > LLONG_MAX)
			return -1;
	}
	for (size_t i = 0; i < nu; i++)
		if (strcmp(p, units[i]) == 0) {
			v *= mul[i];
			if (v > LLONG_MAX)
				return -1;
			*out = (long long)v;
			return 0;
		}
	return -1;
}

static void mode_numbers(const char *s)
{
	static const char *const ms_u[] = { "", "ms", "s", "m", "h" };
	static const long long ms_m[] = { 1, 1, 1000, 60000, 3600000 };
	static const char *const sz_u[] = { "", "B", "KiB", "MiB", "GiB" };
	static const long long sz_m[] = { 1, 1, 1LL << 10, 1LL << 20, 1LL << 30 };
	long long got = 0, want = 0;
	char again[64];

	int rc = cfg_parse_ll(s, &got), rr = ref_ll(s, &want);
	FUZZ_CHECK((rc == 0) == (rr == 0), "cfg_parse_ll('%s') = %d, reference %d", s, rc, rr);
	if (rc == 0) {
		FUZZ_CHECK(got == want, "cfg_parse_ll('%s') = %lld, want %lld", s, got, want);
		snprintf(again, sizeof again, "%lld", got);
		FUZZ_CHECK(cfg_parse_ll(again, &want) == 0 && want == got, "ll round trip");
	}

	rc = cfg_parse_ms(s, &got);
	rr = ref_unit(s, ms_u, ms_m, 5, &want);
	FUZZ_CHECK((rc == 0) == (rr == 0), "cfg_parse_ms('%s') = %d, reference %d", s, rc, rr);
	if (rc == 0) {
		FUZZ_CHECK(got == want && got >= 0, "cfg_parse_ms('%s') = %lld, want %lld", s, got,
			   want);
		snprintf(again, sizeof again, "%lldms", got);
		FUZZ_CHECK(cfg_parse_ms(again, &want) == 0 && want == got, "ms round trip");
	}

	rc = cfg_parse_size(s, &got);
	rr = ref_unit(s, sz_u, sz_m, 5, &want);
	FUZZ_CHECK((rc == 0) == (rr == 0), "cfg_parse_size('%s') = %d, reference %d", s, rc, rr);
	if (rc == 0) {
		FUZZ_CHECK(got == want && got >= 0, "cfg_parse_size('%s') = %lld, want %lld", s, got,
			   want);
		snprintf(again, sizeof again, "%lld", got);
		FUZZ_CHECK(cfg_parse_size(again, &want) == 0 && want == got, "size round trip");
	}

	static const char *const yes[] = { "1", "true", "yes", "on" };
	static const char *const no[] = { "0", "false", "no", "off" };
	int b = -1, wb = -1;
	for (size_t i = 0; i < 4; i++) {
		if (strcasecmp(s, yes[i]) == 0)
			wb = 1;
		if (strcasecmp(s, no[i]) == 0)
			wb = 0;
	}
	rc = cfg_parse_bool(s, &b);
	FUZZ_CHECK((rc == 0) == (wb >= 0) && (rc != 0 || b == wb), "cfg_parse_bool('%s')", s);
}

static void mode_table(struct fz *f)
{
	char *text_s = NULL, *path_s = NULL, *secret_s = NULL;
	long long num = 0, ms = 0, size = 0;
	int flag = 0;
	struct cfg_opt opts[] = {
		{ "text", CFG_STR, "x", 0, 0, CFG_REQUIRED, "text", &text_s },
		{ "path", CFG_PATH, NULL, 0, 0, 0, "path", &path_s },
		{ "secret", CFG_STR, NULL, 0, 0, CFG_SECRET, "secret", &secret_s },
		{ "num", CFG_INT, "5", -100, 100, 0, "number", &num },
		{ "wait", CFG_MS, "1s", 10, 3600000, 0, "duration", &ms },
		{ "size", CFG_SIZE, "1MiB", 1, 1LL << 40, 0, "size", &size },
		{ "flag", CFG_BOOL, "false", 0, 0, 0, "boolean", &flag },
	};
	size_t nopts = sizeof opts / sizeof *opts;
	size_t len;
	char *all = fz_rest(f, &len);
	char *argv[66];
	int argc = 0;
	argv[argc++] = "fuzz";
	for (size_t i = 0; i < len && argc < 64;) {
		argv[argc++] = all + i;
		i += strlen(all + i) + 1;
	}
	argv[argc] = NULL;
	char err[256];
	int rc = cfg_parse("FUZZ", opts, nopts, argc, argv, err, sizeof err);
	if (rc == CFG_RUN || rc == CFG_CHECK) {
		FUZZ_CHECK(num >= -100 && num <= 100, "num %lld out of range", num);
		FUZZ_CHECK(ms >= 10 && ms <= 3600000, "wait %lld out of range", ms);
		FUZZ_CHECK(size >= 1 && size <= (1LL << 40), "size %lld out of range", size);
		FUZZ_CHECK(flag == 0 || flag == 1, "flag %d", flag);
		FUZZ_CHECK(text_s != NULL && text_s[0] != '\0', "required option empty");
		char *printed = NULL;
		size_t plen = 0;
		FILE *m = open_memstream(&printed, &plen);
		FUZZ_CHECK(m != NULL, "open_memstream");
		cfg_print_values(m, opts, nopts);
		fclose(m);
		/* Lines are "name=value" (values unescaped: skip the check when
		 * the options printed before the secret hold newlines); the
		 * secret's line is masked. */
		if (strchr(text_s, '\n') == NULL && (path_s == NULL || strchr(path_s, '\n') == NULL)) {
			const char *line = strstr(printed, "\nsecret=");
			FUZZ_CHECK(line != NULL, "no secret line");
			line += strlen("\nsecret=");
			const char *want = secret_s != NULL && secret_s[0] ? "(set)\n" : "(empty)\n";
			FUZZ_CHECK(strncmp(line, want, strlen(want)) == 0, "the secret value was printed");
		}
		free(printed);
	} else if (rc != CFG_HELP) {
		FUZZ_CHECK(rc == SW_EINVAL && err[0] != '\0', "cfg_parse returned %d", rc);
	}
	cfg_free(opts, nopts);
	free(all);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fz f = { data, size };
	uint8_t mode = fz_u8(&f);
	if (mode % 2 == 0) {
		char *s = fz_rest(&f, NULL);
		mode_numbers(s);
		free(s);
	} else {
		mode_table(&f);
	}
	return 0;
}
