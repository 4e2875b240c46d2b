/*
 * diff.c - a structural diff of two policy documents, one change per line:
 *
 *   + $.bindings[...] {"group":"sre","role":"deployer"}
 *   - $.roles[name=web-deployer] {...}
 *   ~ $.approval_policies[name=prod].required: 1 -> 2
 *
 * Arrays whose elements all carry a "name" are matched by name (roles,
 * guardrails, approval policies); other arrays (bindings, member lists) by
 * value, so reordering them is no change. Object keys are sorted.
 */
#include "policy.h"
#include "err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct out {
	char *buf;
	size_t len, cap, max;
	int over;
};

static void emit(struct out *o, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void emit(struct out *o, const char *fmt, ...)
{
	if (o->over)
		return;
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0 || o->len + (size_t)n + 1 > o->max) {
		o->over = 1;
		return;
	}
	if (o->len + (size_t)n + 1 > o->cap) {
		size_t nc = o->cap ? o->cap : 4096;
		while (nc < o->len + (size_t)n + 1)
			nc *= 2;
		char *nb = realloc(o->buf, nc);
		if (nb == NULL) {
			o->over = 1;
			return;
		}
		o->buf = nb;
		o->cap = nc;
	}
	va_start(ap, fmt);
	vsnprintf(o->buf + o->len, o->cap - o->len, fmt, ap);
	va_end(ap);
	o->len += (size_t)n;
}

static void value(struct out *o, char sign, const char *path, json_t *v)
{
	char *s = json_dumps(v, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
	emit(o, "%c %s %s\n", sign, path, s ? s : "?");
	free(s);
}

static const char *name_of(json_t *e);

/* A whole section added or removed: one line per element or key. */
static void value_expand(struct out *o, char sign, const char *path, json_t *v)
{
	char p[1024];
	const char *k;
	json_t *e;
	size_t i;
	if (json_is_object(v) && json_object_size(v) > 0) {
		json_object_foreach(v, k, e) {
			snprintf(p, sizeof p, "%s.%s", path, k);
			value(o, sign, p, e);
		}
	} else if (json_is_array(v) && json_array_size(v) > 0) {
		json_array_foreach(v, i, e) {
			if (name_of(e) != NULL)
				snprintf(p, sizeof p, "%s[name=%s]", path, name_of(e));
			else
				snprintf(p, sizeof p, "%s[%zu]", path, i);
			value(o, sign, p, e);
		}
	} else {
		value(o, sign, path, v);
	}
}

static const char *name_of(json_t *e)
{
	json_t *n = json_object_get(e, "name");
	return json_is_string(n) ? json_string_value(n) : NULL;
}

static int all_named(json_t *a)
{
	size_t i;
	json_t *e;
	json_array_foreach(a, i, e) if (name_of(e) == NULL) return 0;
	return 1;
}

static json_t *find_named(json_t *a, const char *name)
{
	size_t i;
	json_t *e;
	json_array_foreach(a, i, e) if (strcmp(name_of(e), name) == 0) return e;
	return NULL;
}

static void walk(struct out *o, const char *path, json_t *a, json_t *b);

static int cmpstr(const void *x, const void *y)
{
	return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static void walk_object(struct out *o, const char *path, json_t *a, json_t *b)
{
	size_t n = json_object_size(a) + json_object_size(b), k = 0;
	const char **keys = calloc(n ? n : 1, sizeof *keys);
	const char *key;
	json_t *v;
	if (keys == NULL) {
		o->over = 1;
		return;
	}
	json_object_foreach(a, key, v) keys[k++] = key;
	json_object_foreach(b, key, v) if (json_object_get(a, key) == NULL) keys[k++] = key;
	qsort(keys, k, sizeof *keys, cmpstr);
	for (size_t i = 0; i < k; i++) {
		char p[1024];
		snprintf(p, sizeof p, "%s.%s", path, keys[i]);
		json_t *x = json_object_get(a, keys[i]), *y = json_object_get(b, keys[i]);
		if (x == NULL)
			value_expand(o, '+', p, y);
		else if (y == NULL)
			value_expand(o, '-', p, x);
		else
			walk(o, p, x, y);
	}
	free(keys);
}

static void walk_array(struct out *o, const char *path, json_t *a, json_t *b)
{
	size_t i, k;
	json_t *e, *f;
	char p[1024];
	if (all_named(a) && all_named(b)) {
		json_array_foreach(a, i, e) {
			snprintf(p, sizeof p, "%s[name=%s]", path, name_of(e));
			f = find_named(b, name_of(e));
			if (f == NULL)
				value(o, '-', p, e);
			else
				walk(o, p, e, f);
		}
		json_array_foreach(b, i, e) {
			if (find_named(a, name_of(e)) == NULL) {
				snprintf(p, sizeof p, "%s[name=%s]", path, name_of(e));
				value(o, '+', p, e);
			}
		}
		/* Order matters for approval policies (the first match wins). */
		int reordered = 0;
		size_t ia = 0;
		json_array_foreach(b, i, e) {
			if (find_named(a, name_of(e)) == NULL)
				continue;
			while (ia < json_array_size(a) &&
			       find_named(b, name_of(json_array_get(a, ia))) == NULL)
				ia++;
			if (ia < json_array_size(a) &&
			    strcmp(name_of(json_array_get(a, ia)), name_of(e)) != 0)
				reordered = 1;
			ia++;
		}
		if (reordered)
			emit(o, "~ %s: order changed\n", path);
		return;
	}
	/* By value: what is in a and not in b was removed, and so on. */
	json_array_foreach(a, i, e) {
		int found = 0;
		json_array_foreach(b, k, f) if (json_equal(e, f)) { found = 1; break; }
		if (!found) {
			snprintf(p, sizeof p, "%s[%zu]", path, i);
			value(o, '-', p, e);
		}
	}
	json_array_foreach(b, i, e) {
		int found = 0;
		json_array_foreach(a, k, f) if (json_equal(e, f)) { found = 1; break; }
		if (!found) {
			snprintf(p, sizeof p, "%s[%zu]", path, i);
			value(o, '+', p, e);
		}
	}
}

static void walk(struct out *o, const char *path, json_t *a, json_t *b)
{
	if (o->over || json_equal(a, b))
		return;
	if (json_is_object(a) && json_is_object(b)) {
		walk_object(o, path, a, b);
	} else if (json_is_array(a) && json_is_array(b)) {
		walk_array(o, path, a, b);
	} else {
		char *x = json_dumps(a, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
		char *y = json_dumps(b, JSON_COMPACT | JSON_SORT_KEYS | JSON_ENCODE_ANY);
		emit(o, "~ %s: %s -> %s\n", path, x ? x : "?", y ? y : "?");
		free(x);
		free(y);
	}
}

int pol_diff(json_t *from, json_t *to, size_t max, char **out)
{
	struct out o = { .max = max };
	*out = NULL;
	walk(&o, "$", from, to);
	if (o.over) {
		free(o.buf);
		return SW_ELIMIT;
	}
	if (o.buf == NULL) {
		o.buf = strdup("");
		if (o.buf == NULL)
			return SW_ENOMEM;
	}
	*out = o.buf;
	return 0;
}
