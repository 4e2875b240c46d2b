/*
 * metrics.c - the registry, the exposition format and the HTTP endpoint
 * of metrics.h.
 *
 * A family's children sit in two fixed arrays: slots, an open-addressing
 * hash table read without locks (a published slot never changes), and
 * order, the creation order used for output. A new child is filled in
 * completely under the family's mutex, then published with a release
 * store, so a reader that sees the pointer sees the child.
 *
 * Doubles are kept as their bit patterns in atomic 64-bit words: a set is
 * a store, an add a compare-and-swap loop. Histogram buckets hold
 * per-bucket counts (not cumulative: one increment per observation) and
 * are summed up when rendered.
 */
#include "metrics.h"
#include "err.h"
#include "log.h"

#include <arpa/inet.h>
#include <math.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#define NSLOTS 1024 /* > 2 * METRICS_MAX_CHILDREN: probes stay short */
#define MAX_FAMILIES 256
#define MAX_COLLECTORS 32
#define NAME_MAX_LEN 128

_Static_assert(NSLOTS >= 2 * METRICS_MAX_CHILDREN, "slots");

struct metrics_child {
	struct metrics_family *f;
	uint64_t hash;
	char *values[METRICS_MAX_LABELS];
	_Atomic uint64_t val;         /* counter/gauge: double bits; histogram: sum bits */
	_Atomic uint64_t count;       /* histogram only */
	_Atomic uint64_t *buckets;    /* histogram: nbuckets + 1 (the last is +Inf) */
};

struct metrics_family {
	struct metrics_registry *r;
	enum metrics_type type;
	char name[NAME_MAX_LEN];
	char *help;
	int nlabels;
	char labels[METRICS_MAX_LABELS][64];
	double *bounds;
	size_t nbounds;
	pthread_mutex_t mu;                     /* creating children */
	_Atomic(struct metrics_child *) slots[NSLOTS];
	struct metrics_child *order[METRICS_MAX_CHILDREN];
	atomic_int n;                           /* published entries of order */
};

struct collector {
	void (*fn)(void *);
	void *arg;
	int64_t interval_ms;
	int64_t last_ms;
};

struct metrics_registry {
	pthread_mutex_t mu;          /* families list */
	struct metrics_family *fam[MAX_FAMILIES];
	atomic_int nfam;
	pthread_mutex_t scrape_mu;   /* collectors and rendering, one scrape at a time */
	struct collector coll[MAX_COLLECTORS];
	int ncoll;
	struct metrics_family *dropped; /* slipway_metrics_dropped_total */
};

const double metrics_default_buckets[] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
					   0.25,  0.5,    1,     2.5,  5,     10,   30 };
const size_t metrics_default_nbuckets = sizeof metrics_default_buckets / sizeof(double);

/* ---- doubles in atomics ---- */

static uint64_t d2u(double d)
{
	uint64_t u;
	memcpy(&u, &d, sizeof u);
	return u;
}

static double u2d(uint64_t u)
{
	double d;
	memcpy(&d, &u, sizeof d);
	return d;
}

static void atomic_add_double(_Atomic uint64_t *p, double v)
{
	uint64_t old = atomic_load_explicit(p, memory_order_relaxed);
	while (!atomic_compare_exchange_weak_explicit(p, &old, d2u(u2d(old) + v),
						      memory_order_relaxed, memory_order_relaxed))
		;
}

static int64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- registry ---- */

int metrics_registry_new(struct metrics_registry **out)
{
	struct metrics_registry *r = calloc(1, sizeof *r);
	*out = NULL;
	if (r == NULL)
		return SW_ENOMEM;
	pthread_mutex_init(&r->mu, NULL);
	pthread_mutex_init(&r->scrape_mu, NULL);
	atomic_init(&r->nfam, 0);
	r->dropped = metrics_family_new(r, METRICS_COUNTER, "slipway_metrics_dropped_total",
					"Updates dropped because a family had no room for another "
					"label set.",
					"family", NULL, 0);
	*out = r;
	return 0;
}

static void family_free(struct metrics_family *f)
{
	if (f == NULL)
		return;
	int n = atomic_load(&f->n);
	for (int i = 0; i < n; i++) {
		struct metrics_child *c = f->order[i];
		for (int j = 0; j < f->nlabels; j++)
			free(c->values[j]);
		free(c->buckets);
		free(c);
	}
	pthread_mutex_destroy(&f->mu);
	free(f->bounds);
	free(f->help);
	free(f);
}

void metrics_registry_free(struct metrics_registry *r)
{
	if (r == NULL)
		return;
	int n = atomic_load(&r->nfam);
	for (int i = 0; i < n; i++)
		family_free(r->fam[i]);
	pthread_mutex_destroy(&r->mu);
	pthread_mutex_destroy(&r->scrape_mu);
	free(r);
}

static pthread_once_t default_once = PTHREAD_ONCE_INIT;
static struct metrics_registry *default_reg;

static void default_init(void)
{
	if (metrics_registry_new(&default_reg) != 0)
		default_reg = NULL;
}

struct metrics_registry *metrics_default(void)
{
	pthread_once(&default_once, default_init);
	return default_reg;
}

static int name_ok(const char *s, int colon)
{
	size_t n = strlen(s);
	if (n == 0 || n >= NAME_MAX_LEN)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
			 (colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
		if (!ok)
			return 0;
	}
	return 1;
}

/* Splits "a,b" into f->labels. Returns 0 or -1. */
static int parse_labels(struct metrics_family *f, const char *labels)
{
	f->nlabels = 0;
	if (labels == NULL || labels[0] == '\0')
		return 0;
	const char *p = labels;
	for (;;) {
		size_t len = strcspn(p, ",");
		if (f->nlabels == METRICS_MAX_LABELS || len == 0 || len >= sizeof f->labels[0])
			return -1;
		memcpy(f->labels[f->nlabels], p, len);
		f->labels[f->nlabels][len] = '\0';
		const char *l = f->labels[f->nlabels];
		if (!name_ok(l, 0) || strncmp(l, "__", 2) == 0 ||
		    (f->type == METRICS_HISTOGRAM && strcmp(l, "le") == 0))
			return -1;
		for (int i = 0; i < f->nlabels; i++)
			if (strcmp(f->labels[i], l) == 0)
				return -1;
		f->nlabels++;
		if (p[len] == '\0')
			return 0;
		p += len + 1;
	}
}

/* Whether f (registered) has the shape asked for. */
static int same_shape(const struct metrics_family *f, const struct metrics_family *want)
{
	if (f->type != want->type || f->nlabels != want->nlabels)
		return 0;
	for (int i = 0; i < f->nlabels; i++)
		if (strcmp(f->labels[i], want->labels[i]) != 0)
			return 0;
	if (f->type == METRICS_HISTOGRAM) {
		if (f->nbounds != want->nbounds)
			return 0;
		for (size_t i = 0; i < f->nbounds; i++)
			if (f->bounds[i] != want->bounds[i])
				return 0;
	}
	return 1;
}

struct metrics_family *metrics_family_new(struct metrics_registry *r, enum metrics_type type,
					  const char *name, const char *help, const char *labels,
					  const double *buckets, size_t nbuckets)
{
	struct metrics_family *f = NULL, *found = NULL;
	if (r == NULL || name == NULL || !name_ok(name, 1) ||
	    (type != METRICS_COUNTER && type != METRICS_GAUGE && type != METRICS_HISTOGRAM))
		return NULL;
	f = calloc(1, sizeof *f);
	if (f == NULL)
		return NULL;
	f->r = r;
	f->type = type;
	snprintf(f->name, sizeof f->name, "%s", name);
	pthread_mutex_init(&f->mu, NULL);
	atomic_init(&f->n, 0);
	for (size_t i = 0; i < NSLOTS; i++)
		atomic_init(&f->slots[i], NULL);
	f->help = strdup(help != NULL ? help : "");
	if (f->help == NULL || parse_labels(f, labels) != 0)
		goto fail;
	if (type == METRICS_HISTOGRAM) {
		if (buckets == NULL) {
			buckets = metrics_default_buckets;
			nbuckets = metrics_default_nbuckets;
		}
		if (nbuckets == 0 || nbuckets > METRICS_MAX_BUCKETS)
			goto fail;
		for (size_t i = 0; i < nbuckets; i++)
			if (!isfinite(buckets[i]) || (i > 0 && !(buckets[i] > buckets[i - 1])))
				goto fail;
		f->bounds = malloc(nbuckets * sizeof(double));
		if (f->bounds == NULL)
			goto fail;
		memcpy(f->bounds, buckets, nbuckets * sizeof(double));
		f->nbounds = nbuckets;
	}

	pthread_mutex_lock(&r->mu);
	int n = atomic_load(&r->nfam);
	for (int i = 0; i < n && found == NULL; i++)
		if (strcmp(r->fam[i]->name, name) == 0)
			found = r->fam[i];
	if (found != NULL) {
		pthread_mutex_unlock(&r->mu);
		int same = same_shape(found, f);
		family_free(f);
		return same ? found : NULL;
	}
	if (n == MAX_FAMILIES) {
		pthread_mutex_unlock(&r->mu);
		goto fail;
	}
	r->fam[n] = f;
	atomic_store_explicit(&r->nfam, n + 1, memory_order_release);
	pthread_mutex_unlock(&r->mu);
	return f;
fail:
	family_free(f);
	return NULL;
}

struct metrics_family *metrics_counter(const char *name, const char *help, const char *labels)
{
	return metrics_family_new(metrics_default(), METRICS_COUNTER, name, help, labels, NULL, 0);
}

struct metrics_family *metrics_gauge(const char *name, const char *help, const char *labels)
{
	return metrics_family_new(metrics_default(), METRICS_GAUGE, name, help, labels, NULL, 0);
}

struct metrics_family *metrics_histogram(const char *name, const char *help, const char *labels,
					 const double *buckets, size_t nbuckets)
{
	return metrics_family_new(metrics_default(), METRICS_HISTOGRAM, name, help, labels,
				  buckets, nbuckets);
}

/* ---- children ---- */

/* Length of v cut to METRICS_LABEL_VALUE_MAX bytes without splitting a
 * UTF-8 sequence. */
static size_t cut_len(const char *v)
{
	size_t n = strnlen(v, METRICS_LABEL_VALUE_MAX + 1);
	if (n <= METRICS_LABEL_VALUE_MAX)
		return n;
	n = METRICS_LABEL_VALUE_MAX;
	while (n > 0 && ((unsigned char)v[n] & 0xC0) == 0x80)
		n--;
	return n;
}

static uint64_t hash_values(int n, const char *const *values)
{
	uint64_t h = 1469598103934665603ULL; /* FNV-1a */
	for (int i = 0; i < n; i++) {
		size_t len = cut_len(values[i]);
		for (size_t j = 0; j < len; j++) {
			h ^= (unsigned char)values[i][j];
			h *= 1099511628211ULL;
		}
		h ^= 0xff; /* separator: ("ab","") differs from ("a","b") */
		h *= 1099511628211ULL;
	}
	return h;
}

static int child_matches(const struct metrics_child *c, uint64_t h, int n,
			 const char *const *values)
{
	if (c->hash != h)
		return 0;
	for (int i = 0; i < n; i++) {
		size_t len = cut_len(values[i]);
		if (strncmp(c->values[i], values[i], len) != 0 || c->values[i][len] != '\0')
			return 0;
	}
	return 1;
}

static void count_dropped(struct metrics_family *f)
{
	struct metrics_registry *r = f->r;
	if (r->dropped == NULL || f == r->dropped)
		return;
	const char *v[1] = { f->name };
	metrics_add(metrics_withv(r->dropped, v), 1);
}

/* Creates the child under f->mu (re-checking first). */
static struct metrics_child *child_create(struct metrics_family *f, uint64_t h,
					  const char *const *values)
{
	struct metrics_child *c = NULL;
	int full = 0;
	pthread_mutex_lock(&f->mu);
	size_t i = (size_t)(h % NSLOTS);
	for (;; i = (i + 1) % NSLOTS) {
		struct metrics_child *s = atomic_load_explicit(&f->slots[i], memory_order_acquire);
		if (s == NULL)
			break;
		if (child_matches(s, h, f->nlabels, values)) {
			c = s;
			goto out;
		}
	}
	int n = atomic_load(&f->n);
	if (n == METRICS_MAX_CHILDREN) {
		full = 1;
		goto out;
	}
	c = calloc(1, sizeof *c);
	if (c == NULL)
		goto out;
	c->f = f;
	c->hash = h;
	atomic_init(&c->val, d2u(0.0));
	atomic_init(&c->count, 0);
	for (int j = 0; j < f->nlabels; j++) {
		size_t len = cut_len(values[j]);
		c->values[j] = malloc(len + 1);
		if (c->values[j] == NULL)
			goto nomem;
		memcpy(c->values[j], values[j], len);
		c->values[j][len] = '\0';
	}
	if (f->type == METRICS_HISTOGRAM) {
		c->buckets = calloc(f->nbounds + 1, sizeof *c->buckets);
		if (c->buckets == NULL)
			goto nomem;
	}
	f->order[n] = c;
	atomic_store_explicit(&f->n, n + 1, memory_order_release);
	atomic_store_explicit(&f->slots[i], c, memory_order_release);
	goto out;
nomem:
	for (int j = 0; j < f->nlabels; j++)
		free(c->values[j]);
	free(c->buckets);
	free(c);
	c = NULL;
out:
	pthread_mutex_unlock(&f->mu);
	if (full)
		count_dropped(f);
	return c;
}

struct metrics_child *metrics_withv(struct metrics_family *f, const char *const *values)
{
	if (f == NULL)
		return NULL;
	for (int i = 0; i < f->nlabels; i++)
		if (values == NULL || values[i] == NULL)
			return NULL;
	uint64_t h = hash_values(f->nlabels, values);
	for (size_t i = (size_t)(h % NSLOTS);; i = (i + 1) % NSLOTS) {
		struct metrics_child *s = atomic_load_explicit(&f->slots[i], memory_order_acquire);
		if (s == NULL)
			break;
		if (child_matches(s, h, f->nlabels, values))
			return s;
	}
	return child_create(f, h, values);
}

struct metrics_child *metrics_with(struct metrics_family *f, ...)
{
	if (f == NULL)
		return NULL;
	const char *v[METRICS_MAX_LABELS] = { 0 };
	va_list ap;
	va_start(ap, f);
	for (int i = 0; i < f->nlabels; i++)
		v[i] = va_arg(ap, const char *);
	va_end(ap);
	return metrics_withv(f, v);
}

void metrics_add(struct metrics_child *c, double v)
{
	if (c == NULL || c->f->type == METRICS_HISTOGRAM)
		return;
	if (c->f->type == METRICS_COUNTER && !(v >= 0))
		return;
	atomic_add_double(&c->val, v);
}

void metrics_set(struct metrics_child *c, double v)
{
	if (c == NULL || c->f->type != METRICS_GAUGE)
		return;
	atomic_store_explicit(&c->val, d2u(v), memory_order_relaxed);
}

void metrics_observe(struct metrics_child *c, double v)
{
	if (c == NULL || c->f->type != METRICS_HISTOGRAM || isnan(v))
		return;
	const struct metrics_family *f = c->f;
	size_t b = 0;
	while (b < f->nbounds && v > f->bounds[b]) /* le: a value on a bound is in it */
		b++;
	atomic_fetch_add_explicit(&c->buckets[b], 1, memory_order_relaxed);
	atomic_add_double(&c->val, v);
	atomic_fetch_add_explicit(&c->count, 1, memory_order_relaxed);
}

double metrics_value(const struct metrics_child *c)
{
	if (c == NULL)
		return 0;
	if (c->f->type == METRICS_HISTOGRAM)
		return (double)atomic_load(&((struct metrics_child *)c)->count);
	return u2d(atomic_load(&((struct metrics_child *)c)->val));
}

void metrics_family_zero(struct metrics_family *f)
{
	if (f == NULL || f->type != METRICS_GAUGE)
		return;
	int n = atomic_load_explicit(&f->n, memory_order_acquire);
	for (int i = 0; i < n; i++)
		atomic_store(&f->order[i]->val, d2u(0.0));
}

/* ---- collectors ---- */

int metrics_collector_add(struct metrics_registry *r, void (*fn)(void *), void *arg,
			  int64_t interval_ms)
{
	if (r == NULL || fn == NULL)
		return SW_EINVAL;
	pthread_mutex_lock(&r->scrape_mu);
	if (r->ncoll == MAX_COLLECTORS) {
		pthread_mutex_unlock(&r->scrape_mu);
		return SW_ELIMIT;
	}
	r->coll[r->ncoll++] = (struct collector){ fn, arg, interval_ms, 0 };
	pthread_mutex_unlock(&r->scrape_mu);
	return 0;
}

void metrics_collector_remove(struct metrics_registry *r, void (*fn)(void *), void *arg)
{
	if (r == NULL)
		return;
	pthread_mutex_lock(&r->scrape_mu); /* waits for a running scrape */
	for (int i = 0; i < r->ncoll; i++)
		if (r->coll[i].fn == fn && r->coll[i].arg == arg) {
			memmove(&r->coll[i], &r->coll[i + 1], (size_t)(r->ncoll - i - 1) * sizeof r->coll[0]);
			r->ncoll--;
			i--;
		}
	pthread_mutex_unlock(&r->scrape_mu);
}

/* ---- exposition ---- */

struct buf {
	char *p;
	size_t len, cap;
	int err;
};

static void buf_put(struct buf *b, const char *s, size_t n)
{
	if (b->err)
		return;
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + n + 1)
			cap *= 2;
		if (cap > METRICS_MAX_OUTPUT) {
			if (b->len + n + 1 > METRICS_MAX_OUTPUT) {
				b->err = SW_ELIMIT;
				return;
			}
			cap = METRICS_MAX_OUTPUT;
		}
		char *p = realloc(b->p, cap);
		if (p == NULL) {
			b->err = SW_ENOMEM;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void buf_str(struct buf *b, const char *s)
{
	buf_put(b, s, strlen(s));
}

/* HELP text escapes \ and newline; label values also ". */
static void buf_escaped(struct buf *b, const char *s, int quote)
{
	const char *run = s;
	for (; *s != '\0'; s++) {
		const char *esc = *s == '\\' ? "\\\\" : *s == '\n' ? "\\n"
						      : (quote && *s == '"') ? "\\\""
									     : NULL;
		if (esc == NULL)
			continue;
		buf_put(b, run, (size_t)(s - run));
		buf_str(b, esc);
		run = s + 1;
	}
	buf_put(b, run, (size_t)(s - run));
}

const char *metrics_format_double(char buf[32], double v)
{
	if (isnan(v) || isinf(v) || v == 0) {
		snprintf(buf, 32, "%s", isnan(v) ? "NaN" : v == 0 ? "0" : v > 0 ? "+Inf" : "-Inf");
		return buf;
	}
	/* Integers that a double holds exactly print as integers. */
	if (v == floor(v) && fabs(v) < 1e15) {
		snprintf(buf, 32, "%.0f", v);
		return buf;
	}
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(buf, 32, "%.*g", prec, v);
		if (strtod(buf, NULL) == v)
			break;
	}
	return buf;
}

/* name{l1="v1",...,extra="x"} for child c (c NULL: no labels). */
static void buf_series(struct buf *b, const struct metrics_family *f, const char *suffix,
		       const struct metrics_child *c, const char *extra_name, const char *extra_val)
{
	buf_str(b, f->name);
	buf_str(b, suffix);
	int n = c != NULL ? f->nlabels : 0;
	if (n == 0 && extra_name == NULL)
		return;
	buf_str(b, "{");
	for (int i = 0; i < n; i++) {
		if (i > 0)
			buf_str(b, ",");
		buf_str(b, f->labels[i]);
		buf_str(b, "=\"");
		buf_escaped(b, c->values[i], 1);
		buf_str(b, "\"");
	}
	if (extra_name != NULL) {
		if (n > 0)
			buf_str(b, ",");
		buf_str(b, extra_name);
		buf_str(b, "=\"");
		buf_str(b, extra_val);
		buf_str(b, "\"");
	}
	buf_str(b, "}");
}

static void buf_value_line(struct buf *b, double v)
{
	char num[32];
	buf_str(b, " ");
	buf_str(b, metrics_format_double(num, v));
	buf_str(b, "\n");
}

static void render_family(struct buf *b, struct metrics_family *f)
{
	static const char *const types[] = { "counter", "gauge", "histogram" };
	int n = atomic_load_explicit(&f->n, memory_order_acquire);
	buf_str(b, "# HELP ");
	buf_str(b, f->name);
	buf_str(b, " ");
	buf_escaped(b, f->help, 0);
	buf_str(b, "\n# TYPE ");
	buf_str(b, f->name);
	buf_str(b, " ");
	buf_str(b, types[f->type]);
	buf_str(b, "\n");
	for (int i = 0; i < n; i++) {
		struct metrics_child *c = f->order[i];
		if (f->type != METRICS_HISTOGRAM) {
			buf_series(b, f, "", c, NULL, NULL);
			buf_value_line(b, u2d(atomic_load(&c->val)));
			continue;
		}
		/* Read the buckets first and derive the count from them, so the
		 * +Inf bucket and _count agree even while observations land. */
		uint64_t cum = 0;
		char le[32];
		for (size_t k = 0; k <= f->nbounds; k++) {
			cum += atomic_load(&c->buckets[k]);
			if (k < f->nbounds)
				metrics_format_double(le, f->bounds[k]);
			else
				snprintf(le, sizeof le, "+Inf");
			buf_series(b, f, "_bucket", c, "le", le);
			buf_value_line(b, (double)cum);
		}
		buf_series(b, f, "_sum", c, NULL, NULL);
		buf_value_line(b, u2d(atomic_load(&c->val)));
		buf_series(b, f, "_count", c, NULL, NULL);
		buf_value_line(b, (double)cum);
	}
}

int metrics_render(struct metrics_registry *r, char **out, size_t *len)
{
	struct buf b = { 0 };
	*out = NULL;
	*len = 0;
	if (r == NULL)
		return SW_EINVAL;
	pthread_mutex_lock(&r->scrape_mu);
	int64_t now = mono_ms();
	for (int i = 0; i < r->ncoll; i++) {
		struct collector *c = &r->coll[i];
		if (c->last_ms != 0 && c->interval_ms > 0 && now - c->last_ms < c->interval_ms)
			continue;
		c->fn(c->arg);
		c->last_ms = mono_ms();
	}
	int n = atomic_load_explicit(&r->nfam, memory_order_acquire);
	for (int i = 0; i < n; i++)
		render_family(&b, r->fam[i]);
	pthread_mutex_unlock(&r->scrape_mu);
	if (b.err == 0 && b.p == NULL)
		buf_put(&b, "", 0);
	if (b.err != 0) {
		free(b.p);
		return b.err;
	}
	*out = b.p;
	*len = b.len;
	return 0;
}

/* ---- standard families ---- */

void metrics_process_init(const char *service)
{
	metrics_set(metrics_with(metrics_gauge("slipway_build_info",
					       "Always 1: the service and version of this binary.",
					       "service,version"),
				 service, SLIPWAY_VERSION),
		    1);
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	metrics_set(metrics_with(metrics_gauge("process_start_time_seconds",
					       "Start time of the process since the Unix epoch in "
					       "seconds.",
					       NULL)),
		    (double)ts.tv_sec + (double)ts.tv_nsec / 1e9);
}

/* Splits "/pkg.Service/Method" into its two names (cut to fit). Returns 0
 * or -1 when path is not of that shape. */
static int split_path(const char *path, char *svc, size_t svclen, char *method, size_t mlen)
{
	if (path == NULL || path[0] != '/')
		return -1;
	const char *slash = strchr(path + 1, '/');
	if (slash == NULL || slash == path + 1 || slash[1] == '\0')
		return -1;
	snprintf(svc, svclen, "%.*s", (int)(slash - path - 1), path + 1);
	snprintf(method, mlen, "%s", slash + 1);
	return 0;
}

static struct metrics_family *rpc_handled[2], *rpc_seconds[2];
static pthread_once_t rpc_once = PTHREAD_ONCE_INIT;

static void rpc_families(void)
{
	rpc_handled[0] = metrics_counter("slipway_rpc_server_handled_total",
					 "RPCs completed on the server, by method and gRPC status.",
					 "service,method,code");
	rpc_seconds[0] = metrics_histogram("slipway_rpc_server_handling_seconds",
					   "Time from a call's arrival to its final status, by method "
					   "(streams: the stream's whole life).",
					   "service,method", NULL, 0);
	rpc_handled[1] = metrics_counter("slipway_rpc_client_handled_total",
					 "RPCs completed by this process as a client, by method and "
					 "gRPC status.",
					 "service,method,code");
	rpc_seconds[1] = metrics_histogram("slipway_rpc_client_handling_seconds",
					   "Time from a client call's start to its final status.",
					   "service,method", NULL, 0);
}

/*
 * The hot path's cache: (path, code) -> the two children, so that a
 * finished call costs one hash of its path and two string compares instead
 * of splitting the path and looking both label sets up. Lock-free reads
 * as for children (entries are published once, never changed or freed);
 * at most RPC_CACHE_MAX entries per side, past which calls take the slow
 * path (the label sets are bounded anyway: a server's own methods, the
 * status names, and "unknown").
 */
#define RPC_CACHE_SLOTS 1024
#define RPC_CACHE_MAX 400

struct rpc_entry {
	uint64_t h;
	char path[128];
	char code[32];
	struct metrics_child *handled, *seconds;
};

static _Atomic(struct rpc_entry *) rpc_cache[2][RPC_CACHE_SLOTS];
static int rpc_cache_n[2];
static pthread_mutex_t rpc_cache_mu = PTHREAD_MUTEX_INITIALIZER;

static uint64_t rpc_key(const char *path, const char *code)
{
	uint64_t h = 1469598103934665603ULL;
	for (const char *p = path; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	h = (h ^ 0xff) * 1099511628211ULL;
	for (const char *p = code; *p != '\0'; p++)
		h = (h ^ (unsigned char)*p) * 1099511628211ULL;
	return h;
}

/* The children for (path, code), from the labels (slow path). */
static void rpc_children(int side, const char *path, const char *code,
			 struct metrics_child **handled, struct metrics_child **seconds)
{
	char svc[128], method[128];
	if (split_path(path, svc, sizeof svc, method, sizeof method) != 0) {
		snprintf(svc, sizeof svc, "unknown");
		snprintf(method, sizeof method, "unknown");
	}
	*handled = metrics_with(rpc_handled[side], svc, method, code);
	*seconds = metrics_with(rpc_seconds[side], svc, method);
}

static void rpc_observe(int side, const char *path, const char *code, double seconds)
{
	pthread_once(&rpc_once, rpc_families);
	if (path == NULL || path[0] != '/' || strlen(path) >= sizeof((struct rpc_entry *)0)->path)
		path = ""; /* "unknown": never a caller's made-up name */
	if (code == NULL || strlen(code) >= sizeof((struct rpc_entry *)0)->code)
		code = "UNKNOWN";
	uint64_t h = rpc_key(path, code);
	size_t i = (size_t)(h % RPC_CACHE_SLOTS);
	struct rpc_entry *e;
	for (;; i = (i + 1) % RPC_CACHE_SLOTS) {
		e = atomic_load_explicit(&rpc_cache[side][i], memory_order_acquire);
		if (e == NULL || (e->h == h && strcmp(e->path, path) == 0 && strcmp(e->code, code) == 0))
			break;
	}
	if (e == NULL) {
		pthread_mutex_lock(&rpc_cache_mu);
		for (;; i = (i + 1) % RPC_CACHE_SLOTS) { /* again: another thread may have added it */
			e = atomic_load_explicit(&rpc_cache[side][i], memory_order_acquire);
			if (e == NULL || (e->h == h && strcmp(e->path, path) == 0 &&
					  strcmp(e->code, code) == 0))
				break;
		}
		if (e == NULL && rpc_cache_n[side] < RPC_CACHE_MAX && (e = calloc(1, sizeof *e)) != NULL) {
			e->h = h;
			snprintf(e->path, sizeof e->path, "%s", path);
			snprintf(e->code, sizeof e->code, "%s", code);
			rpc_children(side, path, code, &e->handled, &e->seconds);
			rpc_cache_n[side]++;
			atomic_store_explicit(&rpc_cache[side][i], e, memory_order_release);
		}
		pthread_mutex_unlock(&rpc_cache_mu);
		if (e == NULL) { /* cache full: the slow path */
			struct metrics_child *hc, *sc;
			rpc_children(side, path, code, &hc, &sc);
			metrics_add(hc, 1);
			metrics_observe(sc, seconds);
			return;
		}
	}
	metrics_add(e->handled, 1);
	metrics_observe(e->seconds, seconds);
}

void metrics_rpc_observe(const char *path, const char *code, double seconds)
{
	rpc_observe(0, path, code, seconds);
}

void metrics_rpc_client_observe(const char *path, const char *code, double seconds)
{
	rpc_observe(1, path, code, seconds);
}

/* ---- HTTP ---- */

struct metrics_http {
	struct MHD_Daemon *d;
	int port;
};

/* Parses "HOST:PORT" into ss. Returns 0 or SW_EINVAL. */
static int parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *sslen,
			char *err, size_t errlen)
{
	char host[256];
	const char *port;
	if (listen == NULL || listen[0] == '\0')
		return sw_errf(err, errlen, SW_EINVAL, "metrics: no address");
	if (listen[0] == '[') {
		const char *end = strchr(listen, ']');
		if (end == NULL || end[1] != ':' || (size_t)(end - listen - 1) >= sizeof host)
			return sw_errf(err, errlen, SW_EINVAL, "metrics: bad address '%s'", listen);
		snprintf(host, sizeof host, "%.*s", (int)(end - listen - 1), listen + 1);
		port = end + 2;
	} else {
		const char *colon = strrchr(listen, ':');
		if (colon == NULL || (size_t)(colon - listen) >= sizeof host ||
		    strchr(listen, ':') != colon)
			return sw_errf(err, errlen, SW_EINVAL, "metrics: '%s' is not HOST:PORT", listen);
		snprintf(host, sizeof host, "%.*s", (int)(colon - listen), listen);
		port = colon + 1;
	}
	char *end = NULL;
	long p = (*port >= '0' && *port <= '9') ? strtol(port, &end, 10) : -1;
	if (end == NULL || *end != '\0' || p < 0 || p > 65535 || strlen(port) > 5)
		return sw_errf(err, errlen, SW_EINVAL, "metrics: bad port in '%s'", listen);
	if (strcmp(host, "localhost") == 0)
		snprintf(host, sizeof host, "127.0.0.1");
	memset(ss, 0, sizeof *ss);
	struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
	struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
	if (inet_pton(AF_INET, host, &in4->sin_addr) == 1) {
		in4->sin_family = AF_INET;
		in4->sin_port = htons((uint16_t)p);
		*sslen = sizeof *in4;
	} else if (inet_pton(AF_INET6, host, &in6->sin6_addr) == 1) {
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)p);
		*sslen = sizeof *in6;
	} else {
		return sw_errf(err, errlen, SW_EINVAL,
			       "metrics: host '%s' is not an IP address or localhost", host);
	}
	return 0;
}

static int loopback(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
	const struct in6_addr *a = &((const struct sockaddr_in6 *)ss)->sin6_addr;
	if (IN6_IS_ADDR_LOOPBACK(a))
		return 1;
	return IN6_IS_ADDR_V4MAPPED(a) && a->s6_addr[12] == 127;
}

int metrics_listen_is_loopback(const char *listen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	if (parse_listen(listen, &ss, &len, NULL, 0) != 0)
		return SW_EINVAL;
	return loopback(&ss);
}

static enum MHD_Result reply(struct MHD_Connection *conn, unsigned status, const char *text,
			     size_t len, int mode, const char *ctype)
{
	struct MHD_Response *r =
		MHD_create_response_from_buffer(len, (void *)text, (enum MHD_ResponseMemoryMode)mode);
	if (r == NULL)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", ctype);
	MHD_add_response_header(r, "Cache-Control", "no-store");
	MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
	if (status == MHD_HTTP_METHOD_NOT_ALLOWED)
		MHD_add_response_header(r, "Allow", "GET, HEAD");
	enum MHD_Result rc = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return rc;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *conn, const char *url,
			      const char *method, const char *version, const char *upload,
			      size_t *upload_len, void **con_cls)
{
	(void)cls;
	(void)version;
	(void)upload;
	(void)con_cls;
	static const char *const plain = "text/plain; charset=utf-8";
	*upload_len = 0; /* a body is never read */
	if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
		return reply(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "method not allowed\n", 19,
			     MHD_RESPMEM_PERSISTENT, plain);
	if (strcmp(url, "/metrics") != 0)
		return reply(conn, MHD_HTTP_NOT_FOUND, "not found: try /metrics\n", 24,
			     MHD_RESPMEM_PERSISTENT, plain);
	char *text = NULL;
	size_t len = 0;
	int rc = metrics_render(metrics_default(), &text, &len);
	if (rc != 0) {
		log_warn("metrics: cannot render", "error=%s", sw_strerror(rc));
		return reply(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "cannot render metrics\n", 22,
			     MHD_RESPMEM_PERSISTENT, plain);
	}
	return reply(conn, MHD_HTTP_OK, text, len, MHD_RESPMEM_MUST_FREE,
		     "text/plain; version=0.0.4; charset=utf-8");
}

static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	(void)cls;
	char msg[256];
	vsnprintf(msg, sizeof msg, fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	log_warn("metrics http", "detail=%s", msg);
}

int metrics_http_start(const char *listen, int allow_remote, struct metrics_http **out,
		       char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	*out = NULL;
	int rc = parse_listen(listen, &ss, &sslen, err, errlen);
	if (rc != 0)
		return rc;
	if (!loopback(&ss) && !allow_remote)
		return sw_errf(err, errlen, SW_EPERM,
			       "metrics: %s is not a loopback address; pass --metrics-allow-remote "
			       "to serve metrics beyond this host",
			       listen);
	struct metrics_http *h = calloc(1, sizeof *h);
	if (h == NULL)
		return sw_errf(err, errlen, SW_ENOMEM, "out of memory");
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	/* One thread, a few connections, short timeouts: a scraper or two,
	 * never a crowd; a slow client cannot hold the endpoint. */
	h->d = MHD_start_daemon(flags, 0, NULL, NULL, handle, NULL, MHD_OPTION_SOCK_ADDR,
				(struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, (unsigned)16,
				MHD_OPTION_PER_IP_CONNECTION_LIMIT, (unsigned)8,
				MHD_OPTION_CONNECTION_TIMEOUT, (unsigned)10,
				MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)32768,
				MHD_OPTION_EXTERNAL_LOGGER, mhd_log, NULL, MHD_OPTION_END);
	if (h->d == NULL) {
		free(h);
		return sw_errf(err, errlen, SW_EUNAVAIL, "metrics: cannot listen on %s", listen);
	}
	const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->d, MHD_DAEMON_INFO_BIND_PORT);
	h->port = info != NULL ? (int)info->port : 0;
	(void)sslen;
	*out = h;
	return 0;
}

int metrics_http_port(const struct metrics_http *h)
{
	return h != NULL ? h->port : 0;
}

void metrics_http_stop(struct metrics_http *h)
{
	if (h == NULL)
		return;
	MHD_stop_daemon(h->d);
	free(h);
}
