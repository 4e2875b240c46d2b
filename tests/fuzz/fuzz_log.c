/*
 * fuzz_log.c - the logfmt writer (lib/log.c). Every service logs values
 * that came from the network (names, paths, peers, error text); log.h
 * promises that such input "can neither break a line in two nor forge a
 * key".
 *
 * Input: the message, the request id, two string values, a precision and
 * a character, each taken from the input. log_emit formats
 *   msg=<msg> a=%s b=%.*s c=%c n=%d
 * into a sink, and the line is checked:
 *  - exactly one newline, at the end; no other control characters;
 *  - when not truncated, it parses (with a logfmt reader written here) into
 *    exactly the keys ts, level, service, [req,] msg, a, b, c, n, and the
 *    unescaped values are the inputs (b cut to its precision).
 */
#include "fuzz.h"

#include "log.h"

#include <ctype.h>

static char line[8193];
static size_t line_len;
static int lines;

static void sink(const char *l, size_t len, void *arg)
{
	(void)arg;
	if (len > sizeof line - 1)
		len = sizeof line - 1;
	memcpy(line, l, len);
	line_len = len;
	lines++;
}

/* Reads one value at *p (bare or quoted), unescaped into out[cap]. */
static int read_value(const char **p, char *out, size_t cap, size_t *olen)
{
	const char *s = *p;
	size_t o = 0;
	if (*s != '"') {
		while (*s && *s != ' ' && *s != '\n') {
			FUZZ_CHECK(*s != '"' && *s != '=', "bare value holds '%c'", *s);
			if (o < cap)
				out[o] = *s;
			o++;
			s++;
		}
	} else {
		s++;
		while (*s != '"') {
			if (*s == '\0' || *s == '\n')
				return -1;
			char c = *s++;
			if (c == '\\') {
				char e = *s++;
				if (e == 'n')
					c = '\n';
				else if (e == 'r')
					c = '\r';
				else if (e == 't')
					c = '\t';
				else if (e == '"' || e == '\\')
					c = e;
				else if (e == 'x' && isxdigit((unsigned char)s[0]) &&
					 isxdigit((unsigned char)s[1])) {
					char hx[3] = { s[0], s[1], 0 };
					c = (char)strtol(hx, NULL, 16);
					s += 2;
				} else
					return -1;
			}
			if (o < cap)
				out[o] = c;
			o++;
		}
		s++;
	}
	*olen = o;
	*p = s;
	return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int init;
	if (!init) {
		log_init("fuzz", LOG_DEBUG);
		log_set_sink(sink, NULL);
		init = 1;
	}
	struct fz f = { data, size };
	char msg[256], rid[256], a[1200], b[256];
	fz_str(&f, msg, 255);
	fz_str(&f, rid, 255);
	int prec = fz_u8(&f) % 40;
	char c = (char)fz_u8(&f);
	int num = (int)fz_u32(&f);
	size_t alen = 0;
	/* a: the rest, possibly long enough to truncate the line. */
	{
		size_t n = f.n < sizeof a - 1 ? f.n : sizeof a - 1;
		for (size_t i = 0; i < n && f.p[i]; i++)
			a[alen++] = (char)f.p[i];
		a[alen] = '\0';
	}
	snprintf(b, sizeof b, "%s", msg);
	log_set_request_id(rid[0] ? rid : NULL);
	lines = 0;
	log_info(msg, "a=%s b=%.*s c=%c n=%d", a, prec, b, c, num);
	log_set_request_id(NULL);
	FUZZ_CHECK(lines == 1, "%d lines written", lines);
	FUZZ_CHECK(line_len > 0 && line[line_len - 1] == '\n', "no final newline");
	for (size_t i = 0; i + 1 < line_len; i++)
		FUZZ_CHECK((unsigned char)line[i] >= 0x20 && line[i] != 0x7f,
			   "control byte 0x%02x at %zu", (unsigned char)line[i], i);
	line[line_len] = '\0';
	if (line_len >= 15 && memcmp(line + line_len - 15, " truncated=yes\n", 15) == 0)
		return 0;

	/* Parse key=value pairs. */
	static const char *const keys[] = { "ts", "level", "service", "req", "msg", "a", "b", "c",
					    "n" };
	const char *p = line;
	size_t k = 0;
	char val[4096];
	while (*p != '\n') {
		const char *eq = strchr(p, '=');
		FUZZ_CHECK(eq != NULL, "no '=' in '%s'", p);
		size_t kl = (size_t)(eq - p);
		if (k == 3 && rid[0] == '\0')
			k++; /* no req= without a request id */
		FUZZ_CHECK(k < sizeof keys / sizeof *keys, "extra key in '%s'", line);
		FUZZ_CHECK(kl == strlen(keys[k]) && strncmp(p, keys[k], kl) == 0,
			   "key %zu is '%.*s', want '%s'", k, (int)kl, p, keys[k]);
		p = eq + 1;
		size_t vl = 0;
		FUZZ_CHECK(read_value(&p, val, sizeof val, &vl) == 0, "unreadable value in '%s'", line);
		const char *want = NULL;
		size_t wl = 0;
		char cbuf[2] = { c, 0 };
		switch (k) {
		case 3: want = rid; wl = strlen(rid) > 63 ? 63 : strlen(rid); break;
		case 4: want = msg; wl = strlen(msg); break;
		case 5: want = a; wl = alen; break;
		case 6: want = b; wl = strnlen(b, (size_t)prec); break;
		case 7: want = cbuf; wl = 1; break;
		default: break;
		}
		if (want != NULL)
			FUZZ_CHECK(vl == wl && memcmp(val, want, wl) == 0,
				   "value of %s does not read back", keys[k]);
		k++;
		if (*p == ' ')
			p++;
		else
			FUZZ_CHECK(*p == '\n', "junk after a value: '%s'", p);
	}
	FUZZ_CHECK(k == sizeof keys / sizeof *keys, "%zu keys in '%s'", k, line);
	return 0;
}
