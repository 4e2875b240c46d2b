/*
 * trace.c - traceparent parsing and formatting, and the thread's current
 * trace context (trace.h).
 */
#include "trace.h"
#include "err.h"
#include "log.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

static _Thread_local struct trace_ctx current;

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1; /* upper case is invalid in a traceparent */
}

/* Decodes 2*n lower-case hex digits of s into out[n]. Returns 0 or -1. */
static int unhex(const char *s, uint8_t *out, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int hi = hexval(s[2 * i]), lo = hexval(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		out[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

static int all_zero(const uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != 0)
			return 0;
	return 1;
}

static void put_hex(char *out, const uint8_t *p, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex[p[i] >> 4];
		out[2 * i + 1] = hex[p[i] & 15];
	}
}

int trace_parse(const char *s, size_t n, struct trace_ctx *out)
{
	struct trace_ctx t;
	uint8_t ver;
	memset(out, 0, sizeof *out);
	memset(&t, 0, sizeof t);
	if (s == NULL || n < TRACE_PARENT_LEN)
		return SW_EINVAL;
	if (unhex(s, &ver, 1) != 0 || ver == 0xff)
		return SW_EINVAL;
	if (ver == 0 && n != TRACE_PARENT_LEN)
		return SW_EINVAL;
	if (ver != 0 && n > TRACE_PARENT_LEN && s[TRACE_PARENT_LEN] != '-')
		return SW_EINVAL;
	if (s[2] != '-' || s[35] != '-' || s[52] != '-')
		return SW_EINVAL;
	if (unhex(s + 3, t.trace_id, 16) != 0 || unhex(s + 36, t.span_id, 8) != 0 ||
	    unhex(s + 53, &t.flags, 1) != 0)
		return SW_EINVAL;
	if (all_zero(t.trace_id, 16) || all_zero(t.span_id, 8))
		return SW_EINVAL;
	t.valid = 1;
	*out = t;
	return 0;
}

int trace_format(const struct trace_ctx *t, char out[TRACE_PARENT_LEN + 1])
{
	out[0] = '\0';
	if (t == NULL || !t->valid)
		return SW_EINVAL;
	memcpy(out, "00-", 3);
	put_hex(out + 3, t->trace_id, 16);
	out[35] = '-';
	put_hex(out + 36, t->span_id, 8);
	out[52] = '-';
	put_hex(out + 53, &t->flags, 1);
	out[TRACE_PARENT_LEN] = '\0';
	return 0;
}

void trace_id_hex(const struct trace_ctx *t, char out[TRACE_ID_HEX + 1])
{
	out[0] = '\0';
	if (t == NULL || !t->valid)
		return;
	put_hex(out, t->trace_id, 16);
	out[TRACE_ID_HEX] = '\0';
}

/* Fills p[n] with random bytes, never all zeros. */
static void random_id(uint8_t *p, size_t n)
{
	do {
		if (getrandom(p, n, 0) != (ssize_t)n) {
			/* getrandom does not fail for small requests once the
			 * pool is seeded; fall back to the clock rather than abort
			 * (these are correlation ids, not secrets). */
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uintptr_t)p;
			for (size_t i = 0; i < n; i++)
				p[i] = (uint8_t)(x >> (8 * (i % 8))) ^ (uint8_t)i;
		}
	} while (all_zero(p, n));
}

void trace_new(struct trace_ctx *out)
{
	memset(out, 0, sizeof *out);
	random_id(out->trace_id, sizeof out->trace_id);
	random_id(out->span_id, sizeof out->span_id);
	out->flags = 0x01;
	out->valid = 1;
}

void trace_child(const struct trace_ctx *parent, struct trace_ctx *out)
{
	if (parent == NULL || !parent->valid) {
		trace_new(out);
		return;
	}
	struct trace_ctx t = *parent;
	random_id(t.span_id, sizeof t.span_id);
	*out = t;
}

void trace_set_current(const struct trace_ctx *t)
{
	if (t == NULL || !t->valid) {
		memset(&current, 0, sizeof current);
		log_set_trace_id(NULL);
		return;
	}
	current = *t;
	char hex[TRACE_ID_HEX + 1];
	trace_id_hex(t, hex);
	log_set_trace_id(hex);
}

const struct trace_ctx *trace_current(void)
{
	return &current;
}

int trace_enter_id(const char *hex)
{
	struct trace_ctx t;
	memset(&t, 0, sizeof t);
	if (hex == NULL || strlen(hex) != TRACE_ID_HEX || unhex(hex, t.trace_id, 16) != 0 ||
	    all_zero(t.trace_id, 16)) {
		trace_set_current(NULL);
		return SW_EINVAL;
	}
	random_id(t.span_id, sizeof t.span_id);
	t.flags = 0x01;
	t.valid = 1;
	trace_set_current(&t);
	return 0;
}
