# tests/fuzz/rules.mk - included by the top Makefile: every fuzz harness
# tests/fuzz/fuzz_<name>.c is also built with the project's compiler and
# flags (SANITIZE=1 too) together with tests/fuzz/replay.c into
# build/tests/test_fuzz_<name>, which tests/run runs as a unit test: it
# replays tests/fuzz/corpus/<name>/ and tests/fuzz/crashes/<name>/.
#
# tests/fuzz/Makefile (the clang/libFuzzer build) reads the same table.

FUZZ_NAMES := $(patsubst tests/fuzz/fuzz_%.c,%,$(wildcard tests/fuzz/fuzz_*.c))

# The services whose code (everything but main.c, as an archive so that only
# what the harness uses is linked) each harness needs besides lib/.
FUZZ_SVC_auditlog := audit
FUZZ_SVC_digest := agent
FUZZ_SVC_manifest := agent
FUZZ_SVC_unpack := agent
FUZZ_SVC_policy := policy
FUZZ_SVC_policy_text := policy
FUZZ_SVC_secrets := secrets
FUZZ_SVC_artifact := artifact
FUZZ_SVC_orchestrator := orchestrator

ifdef OBJ
FUZZ_REPLAY_BINS := $(FUZZ_NAMES:%=build/tests/test_fuzz_%)
fuzz_svc_srcs = $(filter-out services/$(1)/main.c,$(wildcard services/$(1)/*.c))

define fuzz_svc_lib
$(OBJ)/tests/fuzz/svc-$(1).a: $$(patsubst %.c,$$(OBJ)/%.o,$$(call fuzz_svc_srcs,$(1)))
	@echo "  AR      $$@"
	$$(Q)rm -f $$@ && ar rcs $$@ $$^
endef
$(foreach s,$(SERVICES),$(eval $(call fuzz_svc_lib,$(s))))

define fuzz_replay_rule
build/tests/test_fuzz_$(1): $(OBJ)/tests/fuzz/fuzz_$(1).o $(OBJ)/tests/fuzz/replay.o $(FUZZ_SVC_$(1):%=$(OBJ)/tests/fuzz/svc-%.a) $$(LIBA) $$(MODE_STAMP)
	@mkdir -p build/tests
	@echo "  LINK    $$@"
	$$(Q)$$(CC) $$(LDFLAGS_ALL) -o $$@ $(OBJ)/tests/fuzz/fuzz_$(1).o $(OBJ)/tests/fuzz/replay.o $(FUZZ_SVC_$(1):%=$(OBJ)/tests/fuzz/svc-%.a) $$(LIBA) $$(PKG_LIBS)
endef
$(foreach n,$(FUZZ_NAMES),$(eval $(call fuzz_replay_rule,$(n))))
endif
