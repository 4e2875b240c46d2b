/* Unit tests for lib/auditstate: the auditor's verifier state file (load of
 * v1 and v2, save, add, check, merge and its refusals). */
#include "auditstate.h"
#include "err.h"
#include "hash.h"
#include "note.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <unistd.h>
#include <cmocka.h>

struct fx {
	struct note_signer *s;
	struct note_verifier v;
	char key[256];
	char dir[512];
};

static int setup(void **state)
{
	struct fx *f = calloc(1, sizeof *f);
	char err[256];
	assert_non_null(f);
	assert_int_equal(note_signer_generate("test-audit", &f->s, err, sizeof err), 0);
	note_signer_verifier(f->s, &f->v);
	assert_int_equal(note_verifier_format(&f->v, f->key, sizeof f->key), 0);
	const char *tmp = getenv("TMPDIR");
	snprintf(f->dir, sizeof f->dir, "%s/auditstate.XXXXXX", tmp && *tmp ? tmp : "/tmp");
	assert_non_null(mkdtemp(f->dir));
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fx *f = *state;
	char cmd[600];
	snprintf(cmd, sizeof cmd, "rm -rf '%s'", f->dir);
	if (system(cmd) != 0)
		return -1;
	note_signer_free(f->s);
	free(f);
	return 0;
}

/* A signed checkpoint of origin "o.test/log" at size with root filled by b. */
static void cp(struct fx *f, uint64_t size, uint8_t b, uint8_t root[32], char note[NOTE_MAX])
{
	char body[NOTE_MAX];
	memset(root, b, 32);
	assert_int_equal(note_checkpoint_body("o.test/log", size, root, body, sizeof body), 0);
	assert_int_equal(note_sign(f->s, body, note, NOTE_MAX), 0);
}

static void test_save_load_round_trip_and_fingerprint(void **state)
{
	struct fx *f = *state;
	struct auditstate a, b;
	char err[512], path[600], note[NOTE_MAX], fp[65];
	uint8_t root[32];
	memset(&a, 0, sizeof a);
	snprintf(a.origin, sizeof a.origin, "o.test/log");
	snprintf(a.verifier, sizeof a.verifier, "%s", f->key);
	cp(f, 8, 0x08, root, note);
	assert_int_equal(auditstate_add(&a, 8, root, note, err, sizeof err), 0);
	cp(f, 5, 0x05, root, note);
	assert_int_equal(auditstate_add(&a, 5, root, note, err, sizeof err), 0);
	assert_int_equal(auditstate_add(&a, 5, root, note, err, sizeof err), 0); /* again: no-op */
	assert_int_equal(a.n, 2);
	assert_int_equal(a.cps[0].size, 5); /* kept in order */
	snprintf(path, sizeof path, "%s/sub/state.json", f->dir);
	assert_int_equal(auditstate_save(path, &a, err, sizeof err), 0);
	assert_int_equal(auditstate_load(path, &b, err, sizeof err), 0);
	assert_int_equal(b.n, 2);
	assert_int_equal(auditstate_latest(&b)->size, 8);
	assert_string_equal(b.verifier, f->key);
	assert_int_equal(auditstate_check(&b, &f->v, err, sizeof err), 0);
	/* the fingerprint is the SHA-256 of the key line */
	uint8_t h[32];
	char want[65];
	hash_sha256(f->key, strlen(f->key), NULL, 0, NULL, 0, h);
	hash_hex(h, 32, want);
	auditstate_fingerprint(f->key, fp);
	assert_string_equal(fp, want);
	auditstate_free(&a);
	auditstate_free(&b);
	/* a missing file is an empty state */
	snprintf(path, sizeof path, "%s/none.json", f->dir);
	assert_int_equal(auditstate_load(path, &b, err, sizeof err), 0);
	assert_int_equal(b.n, 0);
	auditstate_free(&b);
}

static void test_v1_file_still_loads(void **state)
{
	struct fx *f = *state;
	struct auditstate b;
	char err[512], path[600], note[NOTE_MAX], hex[65];
	uint8_t root[32];
	cp(f, 3, 0x03, root, note);
	hash_hex(root, 32, hex);
	json_t *j = json_pack("{s:s,s:s,s:{s:i,s:s,s:s}}", "origin", "o.test/log", "verifier_key",
			      f->key, "checkpoint", "size", 3, "root", hex, "note", note);
	snprintf(path, sizeof path, "%s/v1.json", f->dir);
	assert_int_equal(json_dump_file(j, path, 0), 0);
	json_decref(j);
	assert_int_equal(auditstate_load(path, &b, err, sizeof err), 0);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.cps[0].size, 3);
	assert_int_equal(auditstate_check(&b, &f->v, err, sizeof err), 0);
	auditstate_free(&b);
}

static void test_merge_and_its_refusals(void **state)
{
	struct fx *f = *state;
	struct auditstate a, b, c;
	char err[512], note[NOTE_MAX];
	uint8_t root[32];
	memset(&a, 0, sizeof a);
	memset(&b, 0, sizeof b);
	memset(&c, 0, sizeof c);
	snprintf(a.verifier, sizeof a.verifier, "%s", f->key);
	snprintf(b.verifier, sizeof b.verifier, "%s", f->key);
	cp(f, 5, 0x05, root, note);
	assert_int_equal(auditstate_add(&a, 5, root, note, err, sizeof err), 0);
	cp(f, 8, 0x08, root, note);
	assert_int_equal(auditstate_add(&b, 8, root, note, err, sizeof err), 0);
	assert_int_equal(auditstate_merge(&a, &b, &f->v, err, sizeof err), 0);
	assert_int_equal(a.n, 2);

	/* the same size signed with another root: a split view */
	cp(f, 8, 0x09, root, note);
	assert_int_equal(auditstate_add(&c, 8, root, note, err, sizeof err), 0);
	assert_int_equal(auditstate_merge(&a, &c, &f->v, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "two different signed checkpoints of size 8"));

	/* an edited root (the note no longer matches) */
	auditstate_free(&c);
	memset(&c, 0, sizeof c);
	cp(f, 9, 0x09, root, note);
	root[0] ^= 1;
	assert_int_equal(auditstate_add(&c, 9, root, note, err, sizeof err), 0);
	assert_int_equal(auditstate_merge(&a, &c, &f->v, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "edited"));

	/* another pinned key */
	snprintf(c.verifier, sizeof c.verifier, "other+00000000+AQ==");
	assert_int_equal(auditstate_merge(&a, &c, &f->v, err, sizeof err), SW_EINVAL);
	assert_non_null(strstr(err, "different keys"));

	/* a note signed by another key */
	struct note_signer *o = NULL;
	char body[NOTE_MAX];
	assert_int_equal(note_signer_generate("test-audit", &o, err, sizeof err), 0);
	memset(root, 0x0a, 32);
	assert_int_equal(note_checkpoint_body("o.test/log", 10, root, body, sizeof body), 0);
	assert_int_equal(note_sign(o, body, note, sizeof note), 0);
	auditstate_free(&c);
	memset(&c, 0, sizeof c);
	assert_int_equal(auditstate_add(&c, 10, root, note, err, sizeof err), 0);
	assert_int_equal(auditstate_check(&c, &f->v, err, sizeof err), SW_EINVAL);
	note_signer_free(o);
	auditstate_free(&a);
	auditstate_free(&b);
	auditstate_free(&c);
}

static void test_malformed_files(void **state)
{
	struct fx *f = *state;
	struct auditstate b;
	char err[512], path[600];
	static const char *const bad[] = {
		"[]",
		"{\"format\": \"slipway-audit-state/9\"}",
		"{\"checkpoints\": {}}",
		"{\"checkpoints\": [{\"size\": -1, \"root\": \"00\", \"note\": \"x\"}]}",
		"{\"checkpoint\": {\"size\": 1, \"root\": \"zz\", \"note\": \"x\"}}",
		"{\"verifier_key\": \"k\", \"verifier_fingerprint\": \"00\"}",
		"{\"origin\": \"a\", \"origin\": \"b\"}",
	};
	snprintf(path, sizeof path, "%s/bad.json", f->dir);
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		FILE *fp = fopen(path, "w");
		assert_non_null(fp);
		fputs(bad[i], fp);
		fclose(fp);
		assert_int_not_equal(auditstate_load(path, &b, err, sizeof err), 0);
		auditstate_free(&b);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_save_load_round_trip_and_fingerprint, setup, teardown),
		cmocka_unit_test_setup_teardown(test_v1_file_still_loads, setup, teardown),
		cmocka_unit_test_setup_teardown(test_merge_and_its_refusals, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed_files, setup, teardown),
	};
	return cmocka_run_group_tests_name("auditstate", tests, NULL, NULL);
}
