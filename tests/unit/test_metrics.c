/* Unit tests for lib/metrics: the registry's rules, the exposition format
 * (escaping, number formatting, histogram buckets), the cap on label sets,
 * collectors, concurrent updates, and the HTTP endpoint's answers and its
 * refusal of non-loopback addresses. */
#include "err.h"
#include "metrics.h"

#include <arpa/inet.h>
#include <math.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <cmocka.h>

/* The text of a fresh registry before anything is added: its own family. */
#define DROPPED_HEAD                                                                             \
	"# HELP slipway_metrics_dropped_total Updates dropped because a family had no room for " \
	"another label set.\n"                                                                    \
	"# TYPE slipway_metrics_dropped_total counter\n"

static char *render(struct metrics_registry *r)
{
	char *text = NULL;
	size_t len = 0;
	assert_int_equal(metrics_render(r, &text, &len), 0);
	assert_non_null(text);
	assert_int_equal(strlen(text), len);
	return text;
}

static void test_register_rules(void **state)
{
	(void)state;
	struct metrics_registry *r = NULL;
	assert_int_equal(metrics_registry_new(&r), 0);
	struct metrics_family *a = metrics_family_new(r, METRICS_COUNTER, "a_total", "h", "x,y",
						      NULL, 0);
	assert_non_null(a);
	/* The same shape returns the same family; another shape nothing. */
	assert_ptr_equal(metrics_family_new(r, METRICS_COUNTER, "a_total", "other help", "x,y",
					    NULL, 0),
			 a);
	assert_null(metrics_family_new(r, METRICS_GAUGE, "a_total", "h", "x,y", NULL, 0));
	assert_null(metrics_family_new(r, METRICS_COUNTER, "a_total", "h", "x", NULL, 0));
	assert_null(metrics_family_new(r, METRICS_COUNTER, "a_total", "h", "y,x", NULL, 0));
	/* Names and labels. */
	assert_null(metrics_family_new(r, METRICS_GAUGE, "1abc", "h", NULL, NULL, 0));
	assert_null(metrics_family_new(r, METRICS_GAUGE, "a-b", "h", NULL, NULL, 0));
	assert_null(metrics_family_new(r, METRICS_GAUGE, "", "h", NULL, NULL, 0));
	assert_non_null(metrics_family_new(r, METRICS_GAUGE, "ns:sub_g", "h", NULL, NULL, 0));
	assert_null(metrics_family_new(r, METRICS_GAUGE, "g1", "h", "a:b", NULL, 0));
	assert_null(metrics_family_new(r, METRICS_GAUGE, "g2", "h", "__x", NULL, 0));
	assert_null(metrics_family_new(r, METRICS_GAUGE, "g3", "h", "a,a", NULL, 0));
	assert_null(metrics_family_new(r, METRICS_GAUGE, "g4", "h", "a,,b", NULL, 0));
	assert_null(metrics_family_new(r, METRICS_GAUGE, "g5", "h", "a,b,c,d,e", NULL, 0));
	assert_non_null(metrics_family_new(r, METRICS_GAUGE, "g6", "h", "a,b,c,d", NULL, 0));
	assert_non_null(metrics_family_new(r, METRICS_GAUGE, "g7", "h", "le", NULL, 0));
	assert_null(metrics_family_new(r, METRICS_HISTOGRAM, "h1", "h", "le", NULL, 0));
	/* Buckets: strictly increasing and finite. */
	double bad1[] = { 1, 1 }, bad2[] = { 2, 1 }, bad3[] = { 1, INFINITY }, good[] = { 1, 2 };
	assert_null(metrics_family_new(r, METRICS_HISTOGRAM, "h2", "h", NULL, bad1, 2));
	assert_null(metrics_family_new(r, METRICS_HISTOGRAM, "h3", "h", NULL, bad2, 2));
	assert_null(metrics_family_new(r, METRICS_HISTOGRAM, "h4", "h", NULL, bad3, 2));
	assert_non_null(metrics_family_new(r, METRICS_HISTOGRAM, "h5", "h", NULL, good, 2));
	assert_null(metrics_family_new(r, METRICS_HISTOGRAM, "h5", "h", NULL, NULL, 0));
	/* Children: as many values as labels, none NULL. */
	assert_null(metrics_withv(a, (const char *const[]){ "1", NULL }));
	assert_null(metrics_withv(NULL, NULL));
	assert_non_null(metrics_with(a, "1", "2"));
	assert_ptr_equal(metrics_with(a, "1", "2"), metrics_with(a, "1", "2"));
	/* ("ab","") and ("a","b") are different label sets. */
	assert_ptr_not_equal(metrics_with(a, "ab", ""), metrics_with(a, "a", "b"));
	metrics_registry_free(r);
}

static void test_counter_gauge_semantics(void **state)
{
	(void)state;
	struct metrics_registry *r = NULL;
	assert_int_equal(metrics_registry_new(&r), 0);
	struct metrics_child *c =
		metrics_with(metrics_family_new(r, METRICS_COUNTER, "c_total", "h", NULL, NULL, 0));
	struct metrics_child *g =
		metrics_with(metrics_family_new(r, METRICS_GAUGE, "g", "h", NULL, NULL, 0));
	metrics_add(c, 2);
	metrics_add(c, -5);  /* a counter never goes down */
	metrics_add(c, NAN); /* nor becomes NaN */
	metrics_set(c, 100); /* nor is set */
	assert_true(metrics_value(c) == 2);
	metrics_set(g, 10);
	metrics_add(g, -3.5);
	assert_true(metrics_value(g) == 6.5);
	metrics_observe(g, 1); /* not a histogram: ignored */
	assert_true(metrics_value(g) == 6.5);
	metrics_add(NULL, 1); /* no-ops */
	metrics_set(NULL, 1);
	metrics_observe(NULL, 1);
	assert_true(metrics_value(NULL) == 0);
	metrics_registry_free(r);
}

static void test_exposition_and_escaping(void **state)
{
	(void)state;
	struct metrics_registry *r = NULL;
	assert_int_equal(metrics_registry_new(&r), 0);
	struct metrics_family *f = metrics_family_new(r, METRICS_COUNTER, "req_total",
						      "Requests: a \\ and a\nnewline \"kept\".",
						      "path,code", NULL, 0);
	metrics_add(metrics_with(f, "/a", "OK"), 3);
	metrics_add(metrics_with(f, "q\"uote\\back\nline", "ERR"), 1);
	struct metrics_family *g = metrics_family_new(r, METRICS_GAUGE, "temp_celsius", "T.",
						      NULL, NULL, 0);
	metrics_set(metrics_with(g), -0.25);
	struct metrics_family *e = metrics_family_new(r, METRICS_GAUGE, "empty", "No series.",
						      "x", NULL, 0);
	(void)e;
	char *text = render(r);
	const char *want =
		DROPPED_HEAD
		"# HELP req_total Requests: a \\\\ and a\\nnewline \"kept\".\n"
		"# TYPE req_total counter\n"
		"req_total{path=\"/a\",code=\"OK\"} 3\n"
		"req_total{path=\"q\\\"uote\\\\back\\nline\",code=\"ERR\"} 1\n"
		"# HELP temp_celsius T.\n"
		"# TYPE temp_celsius gauge\n"
		"temp_celsius -0.25\n"
		"# HELP empty No series.\n"
		"# TYPE empty gauge\n";
	assert_string_equal(text, want);
	free(text);
	metrics_registry_free(r);
}

static void test_format_double(void **state)
{
	(void)state;
	char b[32];
	assert_string_equal(metrics_format_double(b, 0), "0");
	assert_string_equal(metrics_format_double(b, 1), "1");
	assert_string_equal(metrics_format_double(b, -42), "-42");
	assert_string_equal(metrics_format_double(b, 0.1), "0.1");
	assert_string_equal(metrics_format_double(b, 0.0025), "0.0025");
	assert_string_equal(metrics_format_double(b, 1.0 / 3), "0.3333333333333333");
	assert_string_equal(metrics_format_double(b, 1e20), "1e+20");
	assert_string_equal(metrics_format_double(b, 1234567890123.0), "1234567890123");
	assert_string_equal(metrics_format_double(b, INFINITY), "+Inf");
	assert_string_equal(metrics_format_double(b, -INFINITY), "-Inf");
	assert_string_equal(metrics_format_double(b, NAN), "NaN");
	/* Every formatted value reads back exactly. */
	double vals[] = { 0.1 + 0.2, 1e-9, 123.456, 2.5e-300, 9007199254740993.0 };
	for (size_t i = 0; i < sizeof vals / sizeof vals[0]; i++)
		assert_true(strtod(metrics_format_double(b, vals[i]), NULL) == vals[i]);
}

static void test_histogram_buckets(void **state)
{
	(void)state;
	struct metrics_registry *r = NULL;
	assert_int_equal(metrics_registry_new(&r), 0);
	double bounds[] = { 1, 2, 5 };
	struct metrics_family *h = metrics_family_new(r, METRICS_HISTOGRAM, "lat_seconds", "L.",
						      "m", bounds, 3);
	struct metrics_child *c = metrics_with(h, "x");
	/* 0.5 and 1 (on the bound: le is "less or equal") in le=1; 1.5 in
	 * le=2; 5 in le=5; 7 only in +Inf. NaN is not observed. */
	double obs[] = { 0.5, 1, 1.5, 5, 7 };
	for (size_t i = 0; i < 5; i++)
		metrics_observe(c, obs[i]);
	metrics_observe(c, NAN);
	metrics_add(c, 1); /* not a counter: ignored */
	assert_true(metrics_value(c) == 5);
	char *text = render(r);
	const char *want = DROPPED_HEAD
		"# HELP lat_seconds L.\n"
		"# TYPE lat_seconds histogram\n"
		"lat_seconds_bucket{m=\"x\",le=\"1\"} 2\n"
		"lat_seconds_bucket{m=\"x\",le=\"2\"} 3\n"
		"lat_seconds_bucket{m=\"x\",le=\"5\"} 4\n"
		"lat_seconds_bucket{m=\"x\",le=\"+Inf\"} 5\n"
		"lat_seconds_sum{m=\"x\"} 15\n"
		"lat_seconds_count{m=\"x\"} 5\n";
	assert_string_equal(text, want);
	free(text);

	/* No labels, fractional bounds: le written as Prometheus reads them. */
	double fb[] = { 0.005, 0.25 };
	struct metrics_child *d = metrics_with(
		metrics_family_new(r, METRICS_HISTOGRAM, "nol_seconds", "N.", NULL, fb, 2));
	metrics_observe(d, 0.001);
	text = render(r);
	assert_non_null(strstr(text, "nol_seconds_bucket{le=\"0.005\"} 1\n"
				     "nol_seconds_bucket{le=\"0.25\"} 1\n"
				     "nol_seconds_bucket{le=\"+Inf\"} 1\n"
				     "nol_seconds_sum 0.001\n"
				     "nol_seconds_count 1\n"));
	free(text);
	metrics_registry_free(r);
}

static void test_label_sets_are_capped(void **state)
{
	(void)state;
	struct metrics_registry *r = NULL;
	assert_int_equal(metrics_registry_new(&r), 0);
	struct metrics_family *f = metrics_family_new(r, METRICS_COUNTER, "ids_total", "h", "id",
						      NULL, 0);
	char v[32];
	for (int i = 0; i < METRICS_MAX_CHILDREN; i++) {
		snprintf(v, sizeof v, "v%d", i);
		assert_non_null(metrics_with(f, v));
	}
	/* Past the cap: dropped and counted, existing ones still work. */
	assert_null(metrics_with(f, "one-too-many"));
	assert_null(metrics_with(f, "and-another"));
	assert_non_null(metrics_with(f, "v7"));
	char *text = render(r);
	assert_non_null(strstr(text, "slipway_metrics_dropped_total{family=\"ids_total\"} 2\n"));
	assert_null(strstr(text, "one-too-many"));
	free(text);

	/* Long values are cut at METRICS_LABEL_VALUE_MAX, on a UTF-8 boundary. */
	struct metrics_family *g = metrics_family_new(r, METRICS_GAUGE, "long", "h", "v", NULL, 0);
	char longv[400];
	memset(longv, 'a', METRICS_LABEL_VALUE_MAX - 1);
	/* a 2-byte character straddling the cut */
	longv[METRICS_LABEL_VALUE_MAX - 1] = (char)0xC3;
	longv[METRICS_LABEL_VALUE_MAX] = (char)0xA9;
	memset(longv + METRICS_LABEL_VALUE_MAX + 1, 'b', 100);
	longv[METRICS_LABEL_VALUE_MAX + 101] = '\0';
	metrics_set(metrics_with(g, longv), 1);
	text = render(r);
	char want[300];
	snprintf(want, sizeof want, "long{v=\"%.*s\"} 1\n", METRICS_LABEL_VALUE_MAX - 1, longv);
	assert_non_null(strstr(text, want));
	free(text);
	/* The same long value finds the same child. */
	assert_ptr_equal(metrics_with(g, longv), metrics_with(g, longv));
	metrics_registry_free(r);
}

static int calls;
static void collector(void *arg)
{
	calls++;
	metrics_set(arg, calls * 10);
}

static void test_collectors(void **state)
{
	(void)state;
	struct metrics_registry *r = NULL;
	assert_int_equal(metrics_registry_new(&r), 0);
	struct metrics_family *g = metrics_family_new(r, METRICS_GAUGE, "rows", "h", "s", NULL, 0);
	struct metrics_child *c = metrics_with(g, "a");
	calls = 0;
	assert_int_equal(metrics_collector_add(r, collector, c, 0), 0);
	char *text = render(r);
	assert_non_null(strstr(text, "rows{s=\"a\"} 10\n"));
	free(text);
	free(render(r));
	assert_int_equal(calls, 2); /* interval 0: every scrape */
	metrics_collector_remove(r, collector, c);
	free(render(r));
	assert_int_equal(calls, 2);
	/* A long interval: once, however often scraped. */
	assert_int_equal(metrics_collector_add(r, collector, c, 3600000), 0);
	free(render(r));
	free(render(r));
	assert_int_equal(calls, 3);
	metrics_collector_remove(r, collector, c);
	/* metrics_family_zero: label sets that vanished read 0. */
	metrics_set(metrics_with(g, "b"), 5);
	metrics_family_zero(g);
	assert_true(metrics_value(c) == 0 && metrics_value(metrics_with(g, "b")) == 0);
	metrics_registry_free(r);
}

#define THREADS 4
#define PER_THREAD 100000
static struct metrics_family *conc_c, *conc_h;

static void *hammer(void *arg)
{
	(void)arg;
	char v[8];
	for (int i = 0; i < PER_THREAD; i++) {
		snprintf(v, sizeof v, "k%d", i % 7);
		metrics_add(metrics_with(conc_c, v), 1);
		metrics_observe(metrics_with(conc_h, v), 0.5);
	}
	return NULL;
}

static void test_concurrent_updates(void **state)
{
	(void)state;
	struct metrics_registry *r = NULL;
	assert_int_equal(metrics_registry_new(&r), 0);
	conc_c = metrics_family_new(r, METRICS_COUNTER, "n_total", "h", "k", NULL, 0);
	conc_h = metrics_family_new(r, METRICS_HISTOGRAM, "d_seconds", "h", "k", NULL, 0);
	pthread_t t[THREADS];
	for (int i = 0; i < THREADS; i++)
		assert_int_equal(pthread_create(&t[i], NULL, hammer, NULL), 0);
	for (int i = 0; i < THREADS; i++)
		pthread_join(t[i], NULL);
	double total = 0, count = 0;
	char v[8];
	for (int k = 0; k < 7; k++) {
		snprintf(v, sizeof v, "k%d", k);
		total += metrics_value(metrics_with(conc_c, v));
		count += metrics_value(metrics_with(conc_h, v));
	}
	assert_true(total == (double)THREADS * PER_THREAD);
	assert_true(count == (double)THREADS * PER_THREAD);
	char *text = render(r);
	/* exactly 7 label sets each */
	int n = 0;
	for (const char *p = text; (p = strstr(p, "\nn_total{")) != NULL; p++)
		n++;
	assert_int_equal(n, 7);
	free(text);
	metrics_registry_free(r);
}

static void test_rpc_observe_labels(void **state)
{
	(void)state;
	metrics_rpc_observe("/slipway.v1.Audit/Append", "OK", 0.002);
	metrics_rpc_observe("/slipway.v1.Audit/Append", "OK", 0.004);
	metrics_rpc_observe(NULL, "UNIMPLEMENTED", 0.0001);
	metrics_rpc_observe("garbage-without-slash", "UNIMPLEMENTED", 0.0001);
	char *text = render(metrics_default());
	assert_non_null(strstr(text, "slipway_rpc_server_handled_total{service=\"slipway.v1.Audit\","
				     "method=\"Append\",code=\"OK\"} 2\n"));
	assert_non_null(strstr(text, "slipway_rpc_server_handled_total{service=\"unknown\","
				     "method=\"unknown\",code=\"UNIMPLEMENTED\"} 2\n"));
	assert_non_null(strstr(text, "slipway_rpc_server_handling_seconds_bucket{service=\"slipway."
				     "v1.Audit\",method=\"Append\",le=\"0.0025\"} 1\n"));
	assert_non_null(strstr(text, "slipway_rpc_server_handling_seconds_count{service=\"slipway."
				     "v1.Audit\",method=\"Append\"} 2\n"));
	assert_null(strstr(text, "garbage"));
	free(text);
}

/* ---- HTTP ---- */

/* Sends req to 127.0.0.1:port and reads the whole answer into out. */
static void http(int port, const char *req, char *out, size_t cap)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons((uint16_t)port) };
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&a, sizeof a), 0);
	size_t len = strlen(req);
	assert_int_equal(write(fd, req, len), (ssize_t)len);
	size_t got = 0;
	ssize_t n;
	while (got + 1 < cap && (n = read(fd, out + got, cap - 1 - got)) > 0)
		got += (size_t)n;
	out[got] = '\0';
	close(fd);
}

static void test_http_endpoint(void **state)
{
	(void)state;
	static char buf[1 << 20];
	struct metrics_http *h = NULL;
	char err[256];
	metrics_process_init("unit");
	assert_int_equal(metrics_http_start("127.0.0.1:0", 0, &h, err, sizeof err), 0);
	int port = metrics_http_port(h);
	assert_true(port > 0);

	http(port, "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf);
	assert_non_null(strstr(buf, "HTTP/1.1 200"));
	assert_non_null(strstr(buf, "text/plain; version=0.0.4"));
	assert_non_null(strstr(buf, "# TYPE slipway_build_info gauge\n"));
	assert_non_null(strstr(buf, "slipway_build_info{service=\"unit\",version=\"" SLIPWAY_VERSION
				    "\"} 1\n"));
	assert_non_null(strstr(buf, "\nprocess_start_time_seconds "));

	http(port, "GET /other HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf, sizeof buf);
	assert_non_null(strstr(buf, "HTTP/1.1 404"));
	http(port, "GET /metrics/x HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf,
	     sizeof buf);
	assert_non_null(strstr(buf, "HTTP/1.1 404"));
	http(port,
	     "POST /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 3\r\n\r\nabc",
	     buf, sizeof buf);
	assert_non_null(strstr(buf, "HTTP/1.1 405"));
	assert_non_null(strstr(buf, "Allow: GET, HEAD"));
	http(port, "DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", buf,
	     sizeof buf);
	assert_non_null(strstr(buf, "HTTP/1.1 405"));
	metrics_http_stop(h);
	metrics_http_stop(NULL);
}

static void test_http_refuses_remote_by_default(void **state)
{
	(void)state;
	struct metrics_http *h = NULL;
	char err[256];
	assert_int_equal(metrics_http_start("0.0.0.0:0", 0, &h, err, sizeof err), SW_EPERM);
	assert_null(h);
	assert_non_null(strstr(err, "--metrics-allow-remote"));
	assert_int_equal(metrics_http_start("192.0.2.1:9100", 0, &h, err, sizeof err), SW_EPERM);
	assert_int_equal(metrics_http_start("[::]:0", 0, &h, err, sizeof err), SW_EPERM);
	/* Bad addresses. */
	assert_int_equal(metrics_http_start("127.0.0.1", 0, &h, err, sizeof err), SW_EINVAL);
	assert_int_equal(metrics_http_start("127.0.0.1:99999", 0, &h, err, sizeof err), SW_EINVAL);
	assert_int_equal(metrics_http_start("127.0.0.1:-1", 0, &h, err, sizeof err), SW_EINVAL);
	assert_int_equal(metrics_http_start("127.0.0.1:80x", 0, &h, err, sizeof err), SW_EINVAL);
	assert_int_equal(metrics_http_start("example.com:80", 0, &h, err, sizeof err), SW_EINVAL);
	assert_int_equal(metrics_http_start("::1:80", 0, &h, err, sizeof err), SW_EINVAL);
	assert_int_equal(metrics_http_start("", 0, &h, err, sizeof err), SW_EINVAL);
	/* What counts as loopback. */
	assert_int_equal(metrics_listen_is_loopback("127.0.0.1:1"), 1);
	assert_int_equal(metrics_listen_is_loopback("127.3.2.1:1"), 1);
	assert_int_equal(metrics_listen_is_loopback("localhost:1"), 1);
	assert_int_equal(metrics_listen_is_loopback("[::1]:1"), 1);
	assert_int_equal(metrics_listen_is_loopback("[::ffff:127.0.0.1]:1"), 1);
	assert_int_equal(metrics_listen_is_loopback("[::ffff:10.0.0.1]:1"), 0);
	assert_int_equal(metrics_listen_is_loopback("10.0.0.1:1"), 0);
	assert_int_equal(metrics_listen_is_loopback("128.0.0.1:1"), 0);
	assert_int_equal(metrics_listen_is_loopback("nonsense"), SW_EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_register_rules),
		cmocka_unit_test(test_counter_gauge_semantics),
		cmocka_unit_test(test_exposition_and_escaping),
		cmocka_unit_test(test_format_double),
		cmocka_unit_test(test_histogram_buckets),
		cmocka_unit_test(test_label_sets_are_capped),
		cmocka_unit_test(test_collectors),
		cmocka_unit_test(test_concurrent_updates),
		cmocka_unit_test(test_rpc_observe_labels),
		cmocka_unit_test(test_http_endpoint),
		cmocka_unit_test(test_http_refuses_remote_by_default),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
