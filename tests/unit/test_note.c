/* Unit tests for lib/note: signed notes, key formats, checkpoints. */
#include "err.h"
#include "note.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

static void test_sign_and_verify_checkpoint(void **state)
{
	(void)state;
	struct note_signer *s = NULL;
	struct note_verifier v;
	char err[256], body[NOTE_MAX], note[NOTE_MAX], got[NOTE_MAX], origin[64];
	uint8_t root[32], root2[32];
	uint64_t size;
	assert_int_equal(note_signer_generate("example.com/log", &s, err, sizeof err), 0);
	note_signer_verifier(s, &v);
	memset(root, 0xab, sizeof root);
	assert_int_equal(note_checkpoint_body("example.com/log", 42, root, body, sizeof body), 0);
	assert_int_equal(note_sign(s, body, note, sizeof note), 0);
	/* the C2SP shape: body, blank line, em-dash signature line */
	assert_non_null(strstr(note, "\n\n\xe2\x80\x94 example.com/log "));
	assert_int_equal(note_verify(&v, note, got, sizeof got, err, sizeof err), 0);
	assert_string_equal(got, body);
	assert_int_equal(note_checkpoint_parse(got, origin, sizeof origin, &size, root2, err, sizeof err), 0);
	assert_string_equal(origin, "example.com/log");
	assert_int_equal(size, 42);
	assert_memory_equal(root, root2, 32);
	/* any change to the body breaks the signature */
	char bad[NOTE_MAX];
	snprintf(bad, sizeof bad, "%s", note);
	bad[strlen("example.com/log\n")] = '5';
	assert_int_not_equal(note_verify(&v, bad, got, sizeof got, err, sizeof err), 0);
	/* another key does not verify it */
	struct note_signer *other = NULL;
	struct note_verifier ov;
	assert_int_equal(note_signer_generate("example.com/log", &other, err, sizeof err), 0);
	note_signer_verifier(other, &ov);
	assert_int_not_equal(note_verify(&ov, note, got, sizeof got, err, sizeof err), 0);
	note_signer_free(other);
	note_signer_free(s);
}

/* Regression: base64 key material may contain '+', the field separator. */
static void test_key_strings_round_trip_even_with_plus_in_base64(void **state)
{
	(void)state;
	int saw_plus = 0;
	for (int i = 0; i < 200; i++) {
		struct note_signer *s = NULL, *back = NULL;
		struct note_verifier v, v2;
		char err[256], text[512], vtext[256];
		assert_int_equal(note_signer_generate("slipway-audit", &s, err, sizeof err), 0);
		assert_int_equal(note_signer_format(s, text, sizeof text), 0);
		note_signer_verifier(s, &v);
		assert_int_equal(note_verifier_format(&v, vtext, sizeof vtext), 0);
		if (strchr(text + strlen("PRIVATE+KEY+slipway-audit+12345678+"), '+') != NULL ||
		    strchr(vtext + strlen("slipway-audit+12345678+"), '+') != NULL)
			saw_plus = 1;
		assert_int_equal(note_signer_parse(text, &back, err, sizeof err), 0);
		assert_int_equal(note_verifier_parse(vtext, &v2, err, sizeof err), 0);
		assert_memory_equal(v.pub, v2.pub, 32);
		assert_memory_equal(v.key_id, v2.key_id, 4);
		note_signer_verifier(back, &v2);
		assert_memory_equal(v.pub, v2.pub, 32);
		note_signer_free(back);
		note_signer_free(s);
	}
	assert_true(saw_plus);
}

static void test_malformed_inputs(void **state)
{
	(void)state;
	struct note_verifier v;
	struct note_signer *s = NULL;
	char err[256], origin[64], got[NOTE_MAX];
	uint64_t size;
	uint8_t root[32];
	assert_int_not_equal(note_verifier_parse("nope", &v, err, sizeof err), 0);
	assert_int_not_equal(note_verifier_parse("a+zzzzzzzz+AQ==", &v, err, sizeof err), 0);
	assert_int_not_equal(note_signer_parse("PRIVATE+KEY+a+00000000+AQ==", &s, err, sizeof err), 0);
	assert_null(s);
	assert_int_not_equal(note_checkpoint_parse("o\n01\nAAAA\n", origin, sizeof origin, &size, root,
						   err, sizeof err),
			     0);
	assert_int_not_equal(note_checkpoint_parse("o\n1\n", origin, sizeof origin, &size, root, err,
						   sizeof err),
			     0);
	assert_int_not_equal(note_checkpoint_parse("o\n99999999999999999999999\nAAAA\n", origin,
						   sizeof origin, &size, root, err, sizeof err),
			     0);
	assert_int_equal(note_signer_generate("x", &s, err, sizeof err), 0);
	note_signer_verifier(s, &v);
	assert_int_not_equal(note_verify(&v, "body\n", got, sizeof got, err, sizeof err), 0);
	assert_int_not_equal(note_verify(&v, "body\n\n- x abc\n", got, sizeof got, err, sizeof err), 0);
	assert_int_equal(note_name_ok("has space"), 0);
	assert_int_equal(note_name_ok("has+plus"), 0);
	note_signer_free(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sign_and_verify_checkpoint),
		cmocka_unit_test(test_key_strings_round_trip_even_with_plus_in_base64),
		cmocka_unit_test(test_malformed_inputs),
	};
	return cmocka_run_group_tests_name("note", tests, NULL, NULL);
}
