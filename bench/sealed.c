/*
 * sealed.c - the cost of lib/sealed alone, no network and no database:
 * building (pack, Ed25519 sign, crypto_box_seal) and opening (unseal,
 * verify, unpack, check) one bundle of N secrets. It is the cryptographic
 * floor under every Fetch; `bench/run secrets` reports it next to the
 * end-to-end figures. Benchmarks only.
 *
 *   bench-sealed [--items N] [--value-bytes B] [--seconds S]
 */
#include "cfg.h"
#include "sealed.h"

#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int main(int argc, char **argv)
{
	long long items = 20, vbytes = 40, secs = 2;
	for (int i = 1; i + 1 < argc; i += 2) {
		long long *dst = !strcmp(argv[i], "--items")	     ? &items
				 : !strcmp(argv[i], "--value-bytes") ? &vbytes
				 : !strcmp(argv[i], "--seconds")     ? &secs
								     : NULL;
		if (dst == NULL || cfg_parse_ll(argv[i + 1], dst) != 0 || *dst < 1 ||
		    *dst > (dst == &items ? SEALED_MAX_ITEMS : 1 << 20)) {
			fprintf(stderr, "usage: bench-sealed [--items N] [--value-bytes B] [--seconds S]\n");
			return 2;
		}
	}
	if (sealed_init() != 0)
		return 1;
	uint8_t apk[32], spk[32], *ask = sodium_malloc(32), *ssk = sodium_malloc(64);
	uint8_t *values = sodium_malloc((size_t)(items * vbytes));
	struct sealed_item *it = calloc((size_t)items, sizeof *it);
	char (*names)[32] = calloc((size_t)items, sizeof *names), kid[SEALED_KEY_ID_MAX], err[256];
	crypto_box_keypair(apk, ask);
	crypto_sign_keypair(spk, ssk);
	sealed_key_id(spk, kid);
	randombytes_buf(values, (size_t)(items * vbytes));
	for (long long i = 0; i < items; i++) {
		snprintf(names[i], sizeof names[i], "SECRET_%02lld", i);
		it[i] = (struct sealed_item){ names[i], 1, values + i * vbytes, (size_t)vbytes };
	}
	struct sealed_build_req r = { .deployment_id = "bench-dep",
				      .agent = "spiffe://slipway/agent/r1/bench",
				      .expires_unix_ms = 4102444800000LL, .items = it,
				      .nitems = (size_t)items, .sign_sk = ssk, .key_id = kid,
				      .agent_pk = apk };
	size_t wl, ol, len = 0;
	if (sealed_build_size(&r, &wl, &ol, err, sizeof err) != 0) {
		fprintf(stderr, "bench-sealed: %s\n", err);
		return 1;
	}
	uint8_t *work = sodium_malloc(wl), *box = malloc(ol);
	long long builds = 0, opens = 0;
	int64_t t0 = now_ns(), end = t0 + secs * 1000000000LL;
	while (now_ns() < end) {
		if (sealed_build(&r, work, wl, box, ol, &len, err, sizeof err) != 0) {
			fprintf(stderr, "bench-sealed: %s\n", err);
			return 1;
		}
		builds++;
	}
	double build_us = (double)(now_ns() - t0) / 1000.0 / (double)builds;
	struct sealed_expect x = { .agent = r.agent, .deployment_id = r.deployment_id,
				   .sign_pk = spk };
	t0 = now_ns();
	end = t0 + secs * 1000000000LL;
	while (now_ns() < end) {
		struct sealed_bundle *b = NULL;
		if (sealed_open(box, len, apk, ask, &x, &b, err, sizeof err) != 0) {
			fprintf(stderr, "bench-sealed: %s\n", err);
			return 1;
		}
		sealed_bundle_free(b);
		opens++;
	}
	double open_us = (double)(now_ns() - t0) / 1000.0 / (double)opens;
	printf("{\"build_us\": %.1f, \"open_us\": %.1f, \"box_bytes\": %zu}\n", build_us, open_us,
	       len);
	sodium_free(work);
	sodium_free(values);
	sodium_free(ask);
	sodium_free(ssk);
	free(box);
	free(it);
	free(names);
	return 0;
}
