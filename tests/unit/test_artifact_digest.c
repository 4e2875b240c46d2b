/*
 * test_artifact_digest.c - lib/digest: known-answer SHA-256 and MD5
 * vectors (FIPS 180-2 / RFC 1321), streaming in odd pieces equals one shot,
 * the one spelling of a digest, hex, and hashing a file descriptor.
 */
#include "digest.h"
#include "err.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

static void hash_str(enum digest_alg alg, const char *s, char *hex)
{
	struct digest d;
	uint8_t out[32];
	assert_int_equal(digest_init(&d, alg), 0);
	digest_update(&d, s, strlen(s));
	int n = digest_final(&d, out);
	assert_int_equal(n, alg == DIGEST_SHA256 ? 32 : 16);
	digest_hex(out, (size_t)n, hex);
	digest_cleanup(&d);
	digest_cleanup(&d); /* twice is harmless */
}

static void test_known_answers(void **state)
{
	(void)state;
	char hex[65];
	hash_str(DIGEST_SHA256, "abc", hex);
	assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	hash_str(DIGEST_SHA256, "", hex);
	assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	hash_str(DIGEST_SHA256, "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", hex);
	assert_string_equal(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	hash_str(DIGEST_MD5, "", hex);
	assert_string_equal(hex, "d41d8cd98f00b204e9800998ecf8427e");
	hash_str(DIGEST_MD5, "message digest", hex);
	assert_string_equal(hex, "f96b697d7cb7938d525a2f31aaf161d0");
}

static void test_streaming_equals_one_shot(void **state)
{
	(void)state;
	size_t len = 3 * 1024 * 1024 + 17;
	uint8_t *buf = malloc(len), a[32], b[32];
	assert_non_null(buf);
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(i * 7 + (i >> 9));
	struct digest d;
	assert_int_equal(digest_init(&d, DIGEST_SHA256), 0);
	digest_update(&d, buf, len);
	digest_final(&d, a);
	digest_cleanup(&d);
	assert_int_equal(digest_init(&d, DIGEST_SHA256), 0);
	size_t off = 0, step = 1;
	while (off < len) {
		size_t n = step < len - off ? step : len - off;
		digest_update(&d, buf + off, n);
		off += n;
		step = step * 3 + 1; /* odd sizes across block boundaries */
	}
	digest_update(&d, buf, 0);
	digest_final(&d, b);
	digest_cleanup(&d);
	assert_memory_equal(a, b, 32);
	free(buf);
}

static void test_parse_is_strict(void **state)
{
	(void)state;
	uint8_t sha[32];
	char s[DIGEST_STR_LEN], good[] =
		"sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
	assert_int_equal(digest_parse(good, sha), 0);
	digest_format(sha, s);
	assert_string_equal(s, good);
	assert_int_equal(digest_parse(good, NULL), 0);
	/* Upper-case hex, another algorithm, short, long, junk, no prefix. */
	assert_int_equal(digest_parse("sha256:BA7816BF8F01CFEA414140DE5DAE2223B00361A396177A9CB410FF61F20015AD", sha), SW_EINVAL);
	assert_int_equal(digest_parse("sha512:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", sha), SW_EINVAL);
	assert_int_equal(digest_parse("sha256:ba7816bf", sha), SW_EINVAL);
	assert_int_equal(digest_parse("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad00", sha), SW_EINVAL);
	assert_int_equal(digest_parse("sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015az", sha), SW_EINVAL);
	assert_int_equal(digest_parse("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", sha), SW_EINVAL);
	assert_int_equal(digest_parse("", sha), SW_EINVAL);
	assert_int_equal(digest_parse(NULL, sha), SW_EINVAL);
	assert_int_equal(digest_parse("sha256:../../../../etc/passwd/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", sha), SW_EINVAL);
}

static void test_hex(void **state)
{
	(void)state;
	uint8_t in[3] = { 0x00, 0xab, 0xff }, out[3];
	char hex[7];
	digest_hex(in, 3, hex);
	assert_string_equal(hex, "00abff");
	assert_int_equal(digest_unhex("00ABff", out, 3), 0);
	assert_memory_equal(in, out, 3);
	assert_int_equal(digest_unhex("00abf", out, 3), SW_EINVAL);
	assert_int_equal(digest_unhex("00abfg", out, 3), SW_EINVAL);
}

static void test_fd(void **state)
{
	(void)state;
	char path[] = "/tmp/test_artifact_digest.XXXXXX";
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	assert_int_equal(write(fd, "abc", 3), 3);
	lseek(fd, 0, SEEK_SET);
	uint8_t sha[32];
	uint64_t n = 0;
	char err[128], hex[65];
	assert_int_equal(digest_sha256_fd(fd, 0, sha, &n, err, sizeof err), 0);
	assert_int_equal(n, 3);
	digest_hex(sha, 32, hex);
	assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	/* A limit smaller than the file is a clear error, not a short hash. */
	lseek(fd, 0, SEEK_SET);
	assert_int_equal(digest_sha256_fd(fd, 2, sha, &n, err, sizeof err), SW_ELIMIT);
	close(fd);
	assert_int_equal(digest_sha256_fd(fd, 0, sha, &n, err, sizeof err), SW_EIO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_known_answers),
		cmocka_unit_test(test_streaming_equals_one_shot),
		cmocka_unit_test(test_parse_is_strict),
		cmocka_unit_test(test_hex),
		cmocka_unit_test(test_fd),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
