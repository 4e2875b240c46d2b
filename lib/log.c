/*
 * log.c - the logfmt writer behind log.h. Each event is formatted into one
 * bounded stack buffer and written with a single write(2), so lines from
 * different threads never interleave.
 */
#include "log.h"
#include "err.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#define LINE_MAX_BYTES 4096

static enum log_level min_level = LOG_OFF;
static char service_name[32];
static log_sink_fn sink;
static void *sink_arg;
static _Thread_local char request_id[64];
static _Thread_local char trace_id[33];

static const char *const level_names[] = { "debug", "info", "warn", "error", "off" };

void log_init(const char *service, enum log_level min)
{
	snprintf(service_name, sizeof service_name, "%s", service ? service : "");
	min_level = min;
}

int log_level_parse(const char *s, enum log_level *out)
{
	for (int i = 0; i <= LOG_OFF; i++) {
		if (strcasecmp(s, level_names[i]) == 0) {
			*out = (enum log_level)i;
			return 0;
		}
	}
	return SW_EINVAL;
}

void log_set_sink(log_sink_fn fn, void *arg)
{
	sink = fn;
	sink_arg = arg;
}

void log_set_request_id(const char *rid)
{
	if (rid == NULL)
		request_id[0] = '\0';
	else
		snprintf(request_id, sizeof request_id, "%s", rid);
}

const char *log_request_id(void)
{
	return request_id;
}

void log_set_trace_id(const char *tid)
{
	if (tid == NULL)
		trace_id[0] = '\0';
	else
		snprintf(trace_id, sizeof trace_id, "%s", tid);
}

const char *log_trace_id(void)
{
	return trace_id;
}

int log_enabled(enum log_level lvl)
{
	return lvl >= min_level && min_level != LOG_OFF;
}

/* A bounded output buffer; writes past the end are dropped and noted. */
struct out {
	char *buf;
	size_t cap;
	size_t len;
	int truncated;
};

static void put(struct out *o, const char *s, size_t n)
{
	if (o->len + n > o->cap) {
		n = o->cap - o->len;
		o->truncated = 1;
	}
	memcpy(o->buf + o->len, s, n);
	o->len += n;
}

static void putc_(struct out *o, char c)
{
	put(o, &c, 1);
}

/* Appends `s` (length n) as a logfmt value: bare when it is a plain token,
 * otherwise double-quoted with \" \\ \n \r \t and \xNN escapes. */
static void put_value(struct out *o, const char *s, size_t n)
{
	int quote = (n == 0);
	for (size_t i = 0; i < n && !quote; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c >= 0x7f)
			quote = 1;
	}
	if (!quote) {
		put(o, s, n);
		return;
	}
	putc_(o, '"');
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];
		char esc[5];
		switch (c) {
		case '"': put(o, "\\\"", 2); break;
		case '\\': put(o, "\\\\", 2); break;
		case '\n': put(o, "\\n", 2); break;
		case '\r': put(o, "\\r", 2); break;
		case '\t': put(o, "\\t", 2); break;
		default:
			if (c < 0x20 || c == 0x7f) {
				snprintf(esc, sizeof esc, "\\x%02x", c);
				put(o, esc, 4);
			} else {
				putc_(o, (char)c);
			}
		}
	}
	putc_(o, '"');
}

/* Formats kvfmt/ap into o, escaping string and char conversions. Literal
 * text of the format is trusted (it is a constant in our source). */
static void format_kv(struct out *o, const char *fmt, va_list ap)
{
	const char *p = fmt;
	while (*p) {
		if (*p != '%') {
			const char *q = strchr(p, '%');
			size_t n = q ? (size_t)(q - p) : strlen(p);
			put(o, p, n);
			p += n;
			continue;
		}
		if (p[1] == '%') {
			putc_(o, '%');
			p += 2;
			continue;
		}
		/* Parse one conversion spec into spec[]. */
		char spec[32];
		size_t sl = 0;
		const char *start = p++;
		int star_w = 0, star_p = 0;
		while (*p && strchr("-+ 0#", *p))
			p++;
		if (*p == '*') {
			star_w = 1;
			p++;
		}
		while (*p >= '0' && *p <= '9')
			p++;
		long lit_p = -1; /* literal precision, -1 when none */
		if (*p == '.') {
			p++;
			lit_p = 0;
			if (*p == '*') {
				star_p = 1;
				p++;
			}
			while (*p >= '0' && *p <= '9')
				lit_p = lit_p * 10 + (*p++ - '0');
		}
		int lmod = 0; /* 0 int, 1 h, 2 hh, 3 l, 4 ll, 5 z, 6 j, 7 t */
		if (*p == 'h') {
			lmod = 1;
			if (*++p == 'h') {
				lmod = 2;
				p++;
			}
		} else if (*p == 'l') {
			lmod = 3;
			if (*++p == 'l') {
				lmod = 4;
				p++;
			}
		} else if (*p == 'z') {
			lmod = 5;
			p++;
		} else if (*p == 'j') {
			lmod = 6;
			p++;
		} else if (*p == 't') {
			lmod = 7;
			p++;
		}
		char conv = *p ? *p++ : '\0';
		sl = (size_t)(p - start);
		if (sl >= sizeof spec || conv == '\0') {
			put(o, "<badfmt>", 8);
			return;
		}
		memcpy(spec, start, sl);
		spec[sl] = '\0';
		int w = star_w ? va_arg(ap, int) : 0;
		int pr = star_p ? va_arg(ap, int) : 0;
		char tmp[512];
		int n = 0;
#define FMT1(v)                                                                  \
	do {                                                                         \
		if (star_w && star_p)                                                    \
			n = snprintf(tmp, sizeof tmp, spec, w, pr, v);                       \
		else if (star_w)                                                         \
			n = snprintf(tmp, sizeof tmp, spec, w, v);                           \
		else if (star_p)                                                         \
			n = snprintf(tmp, sizeof tmp, spec, pr, v);                          \
		else                                                                     \
			n = snprintf(tmp, sizeof tmp, spec, v);                              \
	} while (0)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
		switch (conv) {
		case 'd': case 'i':
			switch (lmod) {
			case 3: FMT1(va_arg(ap, long)); break;
			case 4: FMT1(va_arg(ap, long long)); break;
			case 5: FMT1(va_arg(ap, ssize_t)); break;
			case 6: FMT1(va_arg(ap, intmax_t)); break;
			case 7: FMT1(va_arg(ap, ptrdiff_t)); break;
			default: FMT1(va_arg(ap, int)); break;
			}
			break;
		case 'u': case 'x': case 'X': case 'o':
			switch (lmod) {
			case 3: FMT1(va_arg(ap, unsigned long)); break;
			case 4: FMT1(va_arg(ap, unsigned long long)); break;
			case 5: FMT1(va_arg(ap, size_t)); break;
			case 6: FMT1(va_arg(ap, uintmax_t)); break;
			case 7: FMT1(va_arg(ap, ptrdiff_t)); break;
			default: FMT1(va_arg(ap, unsigned)); break;
			}
			break;
		case 'f': case 'g': case 'e':
			FMT1(va_arg(ap, double));
			break;
		case 'p':
			FMT1(va_arg(ap, void *));
			break;
		case 'c':
			FMT1(va_arg(ap, int));
			break;
		case 's': {
			/* Strings go straight to the escaper (widths are ignored), so
			 * long values are cut only by the line limit, visibly. */
			const char *s = va_arg(ap, const char *);
			if (s == NULL)
				s = "(null)";
			long maxlen = star_p ? pr : lit_p;
			size_t len = maxlen >= 0 ? strnlen(s, (size_t)maxlen) : strlen(s);
			put_value(o, s, len);
			continue;
		}
		default:
			put(o, "<badfmt>", 8);
			return;
		}
#pragma GCC diagnostic pop
#undef FMT1
		if (n < 0)
			n = 0;
		size_t len = (size_t)n < sizeof tmp ? (size_t)n : sizeof tmp - 1;
		if (conv == 's' || conv == 'c')
			put_value(o, tmp, len);
		else
			put(o, tmp, len);
	}
}

void log_emit(enum log_level lvl, const char *msg, const char *kvfmt, ...)
{
	if (!log_enabled(lvl))
		return;
	char buf[LINE_MAX_BYTES];
	struct out o = { buf, sizeof buf - 1, 0, 0 };

	struct timespec ts;
	struct tm tm;
	clock_gettime(CLOCK_REALTIME, &ts);
	gmtime_r(&ts.tv_sec, &tm);
	char head[96];
	int hn = snprintf(head, sizeof head,
			  "ts=%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ level=%s service=",
			  tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
			  tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000L, level_names[lvl]);
	put(&o, head, (size_t)hn);
	put_value(&o, service_name, strlen(service_name));
	if (request_id[0]) {
		put(&o, " req=", 5);
		put_value(&o, request_id, strlen(request_id));
	}
	if (trace_id[0]) {
		put(&o, " trace_id=", 10);
		put_value(&o, trace_id, strlen(trace_id));
	}
	put(&o, " msg=", 5);
	put_value(&o, msg, strlen(msg));
	if (kvfmt != NULL && kvfmt[0] != '\0') {
		putc_(&o, ' ');
		va_list ap;
		va_start(ap, kvfmt);
		format_kv(&o, kvfmt, ap);
		va_end(ap);
	}
	if (o.truncated && o.len >= 14)
		memcpy(o.buf + o.len - 14, " truncated=yes", 14);
	o.buf[o.len++] = '\n';

	if (sink != NULL) {
		sink(o.buf, o.len, sink_arg);
		return;
	}
	/* One write per line; a short write on stderr is not worth retrying. */
	ssize_t r = write(STDERR_FILENO, o.buf, o.len);
	(void)r;
}
