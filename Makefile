# Slipway: one non-recursive Makefile.
#
#   make               build every binary into build/bin (warnings are errors)
#   make SANITIZE=1    the same with AddressSanitizer + UndefinedBehaviorSanitizer
#   make test          install what is missing, build, run unit, integration and fault tests
#   make faults        only the fault-injection tests (tests/faults/README.md)
#   make demo          install what is missing, build, run the local stack demo
#   make bench         run every benchmark (bench/run all)
#   make fuzz          build the libFuzzer harnesses (clang); make fuzz-run FUZZ=<name> runs one
#   make bundles       the demo application's release bundles (build/demo/web-*.tar.gz)
#   make clean         remove build/
#   make install       binaries, systemd units, man pages, shell completion (PREFIX=/usr/local DESTDIR=...)
#   make deb           build/slipway_<version>_<arch>.deb (dpkg-deb)
#   make lint-proto    buf lint on proto/ (also part of the unit tests)
#   make compose-test  build the images, run the compose suite, deploy and roll
#                      back (tests/compose/run.sh; installs Docker when missing)
#   V=1                show the commands

SHELL := /bin/bash
.DEFAULT_GOAL := all
CC ?= cc
ifeq ($(origin CC),default)
CC := gcc
endif
V ?= 0
Q := $(if $(filter 1,$(V)),,@)
SANITIZE ?= 0

PKGS := grpc libprotobuf-c libpq libsodium libcrypto libarchive jansson libmicrohttpd
PKG_CFLAGS = $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS = $(shell pkg-config --libs $(PKGS) 2>/dev/null) -ls3 -lpthread -lm

WARN := -Wall -Wextra -Wshadow -Wstrict-prototypes -Wmissing-prototypes \
        -Wformat=2 -Wvla -Werror
OPT ?= -O2 -g
VERSION := 0.1.0
# Hardening (tests/security/hardening.sh checks the binaries): a canary on
# every function with arrays or address-taken locals, position-independent
# executables, the GOT read-only after relocation (full RELRO: -z now), and
# glibc's checked string and memory functions. _FORTIFY_SOURCE=3 (gcc 12,
# glibc 2.36 here) also checks sizes known only at run time; it needs the
# optimizer, so it is left out when OPT has no -O level. SANITIZE=1 builds
# leave it out too: ASan checks the same accesses and more, and the
# fortified wrappers would hide them from its interceptors.
HARDEN_CFLAGS := -fstack-protector-strong -fPIE
HARDEN_LDFLAGS := -pie -Wl,-z,relro,-z,now
ifneq ($(SANITIZE),1)
ifneq ($(filter -O1 -O2 -O3 -Os -Og -Ofast,$(OPT)),)
HARDEN_CFLAGS += -U_FORTIFY_SOURCE -D_FORTIFY_SOURCE=3
endif
endif

CFLAGS_BASE := -std=c11 -D_GNU_SOURCE -DSLIPWAY_VERSION=\"$(VERSION)\" $(OPT) -fno-strict-aliasing -MMD -MP \
               -Ilib -Ibuild/gen $(PKG_CFLAGS) $(HARDEN_CFLAGS)
LDFLAGS_BASE := $(HARDEN_LDFLAGS)

ifeq ($(SANITIZE),1)
OBJ := build/obj-san
SANFLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer
else
OBJ := build/obj
SANFLAGS :=
endif

CFLAGS_ALL = $(CFLAGS_BASE) $(SANFLAGS) $(CFLAGS)
LDFLAGS_ALL = $(LDFLAGS_BASE) $(SANFLAGS) $(LDFLAGS)

# Objects depend on the compiler flags: a change of flags (hardening, OPT)
# rebuilds them instead of linking stale objects.
FLAGS_STAMP := build/.flags-$(SANITIZE)-$(shell echo '$(CC) $(CFLAGS_ALL) $(WARN)' | md5sum | cut -c1-12)
$(FLAGS_STAMP):
	@mkdir -p build && rm -f build/.flags-$(SANITIZE)-* && touch $@

# ---- protobuf ----
PROTOS := $(wildcard proto/slipway/v1/*.proto) proto/grpc/health/v1/health.proto
TEST_PROTOS := $(wildcard tests/proto/slipway/test/v1/*.proto)
GEN_C := $(patsubst proto/%.proto,build/gen/%.pb-c.c,$(PROTOS)) \
         $(patsubst tests/proto/%.proto,build/gen/%.pb-c.c,$(TEST_PROTOS))
GEN_H := $(GEN_C:.c=.h)

build/gen/%.pb-c.c build/gen/%.pb-c.h: proto/%.proto
	@mkdir -p build/gen
	@echo "  PROTOC  $<"
	$(Q)protoc-c --proto_path=proto --c_out=build/gen $<

build/gen/slipway/test/%.pb-c.c build/gen/slipway/test/%.pb-c.h: tests/proto/slipway/test/%.proto
	@mkdir -p build/gen
	@echo "  PROTOC  $<"
	$(Q)protoc-c --proto_path=tests/proto --c_out=build/gen $<

# Generated sources are kept (never deleted as intermediates). Only they:
# a bare .SECONDARY would make every target secondary, and then a missing
# sanitized object or mode stamp would not relink build/bin.
.SECONDARY: $(GEN_C) $(GEN_H)

# ---- objects ----
# Generated code is compiled without our warning set (it is not ours).
$(OBJ)/gen/%.o: build/gen/%.c $(FLAGS_STAMP) | $(GEN_H)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS_ALL) -w -c -o $@ $<

$(OBJ)/%.o: %.c $(FLAGS_STAMP) | $(GEN_H)
	@mkdir -p $(dir $@)
	@echo "  CC      $<"
	$(Q)$(CC) $(CFLAGS_ALL) $(WARN) -c -o $@ $<

PROTO_OBJS := $(patsubst build/gen/%.c,$(OBJ)/gen/%.o,$(filter-out build/gen/slipway/test/%,$(GEN_C)))
TEST_PROTO_OBJS := $(patsubst build/gen/%.c,$(OBJ)/gen/%.o,$(filter build/gen/slipway/test/%,$(GEN_C)))

LIB_SRCS := $(wildcard lib/*.c)
LIB_OBJS := $(LIB_SRCS:%.c=$(OBJ)/%.o)
LIBA := $(OBJ)/libslipway.a

$(LIBA): $(LIB_OBJS) $(PROTO_OBJS)
	@echo "  AR      $@"
	$(Q)rm -f $@ && ar rcs $@ $^

# The mode (sanitized or not) of the binaries in build/bin: relink on change.
MODE_STAMP := build/.mode-$(SANITIZE)
$(MODE_STAMP):
	@mkdir -p build && rm -f build/.mode-* && touch $@

# ---- binaries ----
SERVICES := $(notdir $(wildcard services/*))
SERVICE_BINS := $(SERVICES:%=build/bin/slipway-%)
CLI_SRCS := $(wildcard cli/*.c)
CLI_OBJS := $(CLI_SRCS:%.c=$(OBJ)/%.o)

build/bin/slipway: $(CLI_OBJS) $(LIBA) $(MODE_STAMP)
	@mkdir -p build/bin
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $(CLI_OBJS) $(LIBA) $(PKG_LIBS)

define service_rule
build/bin/slipway-$(1): $$(patsubst %.c,$$(OBJ)/%.o,$$(wildcard services/$(1)/*.c)) $$(LIBA) $$(MODE_STAMP)
	@mkdir -p build/bin
	@echo "  LINK    $$@"
	$$(Q)$$(CC) $$(LDFLAGS_ALL) -o $$@ $$(patsubst %.c,$$(OBJ)/%.o,$$(wildcard services/$(1)/*.c)) $$(LIBA) $$(PKG_LIBS)
endef
$(foreach s,$(SERVICES),$(eval $(call service_rule,$(s))))

# ---- the demo application and its release bundles ----
DEMO_BUNDLES := build/demo/web-1.0.0.tar.gz build/demo/web-2.0.0.tar.gz build/demo/web-3.0.0.tar.gz build/demo/web-4.0.0.tar.gz

build/demo/demo-app: $(OBJ)/compose/demo-app/main.o $(MODE_STAMP)
	@mkdir -p build/demo
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $<

$(DEMO_BUNDLES) &: build/demo/demo-app scripts/make-bundles
	$(Q)scripts/make-bundles

# ---- tests ----
UNIT_SRCS := $(wildcard tests/unit/test_*.c)
UNIT_BINS := $(patsubst tests/unit/%.c,build/tests/%,$(UNIT_SRCS))
IT_SRCS := $(wildcard tests/integration/it_*.c)
IT_BINS := $(patsubst tests/integration/%.c,build/tests/%,$(IT_SRCS))
IT_COMMON := $(filter-out tests/integration/it_%,$(wildcard tests/integration/*.c))
IT_COMMON_OBJS := $(IT_COMMON:%.c=$(OBJ)/%.o)
TESTSVC_SRCS := $(wildcard tests/testsvc/*.c)
TESTSVC_OBJS := $(TESTSVC_SRCS:%.c=$(OBJ)/%.o)

build/tests/test_%: $(OBJ)/tests/unit/test_%.o $(LIBA) $(MODE_STAMP)
	@mkdir -p build/tests
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(LIBA) $(PKG_LIBS) -lcmocka

build/tests/it_%: $(OBJ)/tests/integration/it_%.o $(IT_COMMON_OBJS) $(TEST_PROTO_OBJS) $(LIBA) $(MODE_STAMP)
	@mkdir -p build/tests
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(IT_COMMON_OBJS) $(TEST_PROTO_OBJS) $(LIBA) $(PKG_LIBS) -lssl -lcmocka

build/tests/slipway-testsvc: $(TESTSVC_OBJS) $(TEST_PROTO_OBJS) $(LIBA) $(MODE_STAMP)
	@mkdir -p build/tests
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $(TESTSVC_OBJS) $(TEST_PROTO_OBJS) $(LIBA) $(PKG_LIBS)

# The stream-flood client of tests/security/stream_flood.sh.
FLOOD_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(wildcard tests/flood/*.c))

build/tests/slipway-flood: $(FLOOD_OBJS) $(LIBA) $(MODE_STAMP)
	@mkdir -p build/tests
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $(FLOOD_OBJS) $(LIBA) $(PKG_LIBS)

# The one-call client of tests/security/auditor_read_only.sh (write RPCs
# the CLI has no command for).
RPCCALL_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(wildcard tests/rpccall/*.c))

build/tests/slipway-rpc: $(RPCCALL_OBJS) $(LIBA) $(MODE_STAMP)
	@mkdir -p build/tests
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $(RPCCALL_OBJS) $(LIBA) $(PKG_LIBS)

TEST_BINS := $(UNIT_BINS) $(IT_BINS) $(if $(TESTSVC_SRCS),build/tests/slipway-testsvc) \
             $(if $(FLOOD_OBJS),build/tests/slipway-flood) \
             $(if $(RPCCALL_OBJS),build/tests/slipway-rpc)
# Every fuzz harness also replays its corpus as a unit test (tests/fuzz/rules.mk).
include tests/fuzz/rules.mk
TEST_BINS += $(FUZZ_REPLAY_BINS)

# The agent's tests link its domain code (everything but main.c) as a library.
$(OBJ)/tests/unit/test_agent_%.o $(OBJ)/tests/integration/it_agent_%.o: CFLAGS_ALL += -Iservices/agent
AGENT_OBJS := $(patsubst %.c,$(OBJ)/%.o,$(filter-out services/agent/main.c,$(wildcard services/agent/*.c)))

build/tests/test_agent_%: $(OBJ)/tests/unit/test_agent_%.o $(AGENT_OBJS) $(LIBA) $(MODE_STAMP)
	@mkdir -p build/tests
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(AGENT_OBJS) $(LIBA) $(PKG_LIBS) -lcmocka

build/tests/it_agent_%: $(OBJ)/tests/integration/it_agent_%.o $(AGENT_OBJS) $(IT_COMMON_OBJS) $(TEST_PROTO_OBJS) $(LIBA) $(MODE_STAMP)
	@mkdir -p build/tests
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(AGENT_OBJS) $(IT_COMMON_OBJS) $(TEST_PROTO_OBJS) $(LIBA) $(PKG_LIBS) -lssl -lcmocka

# ---- top-level targets ----
.PHONY: all bins tests test unit integration faults demo bench fuzz fuzz-run clean bootstrap bundles \
        lint-proto compose-test

all: bins tests bundles

bundles: $(DEMO_BUNDLES)

bins: build/bin/slipway $(SERVICE_BINS)

tests: $(TEST_BINS)

bootstrap:
	$(Q)scripts/bootstrap

# make lint-proto: buf lint on proto/ with buf.yaml (proto/README.md); the
# unit tests run it too (tests/packaging/proto_lint.sh).
lint-proto: bootstrap
	$(Q).deps/buf/node_modules/.bin/buf lint

# `make test` installs what is missing first, so a new machine needs nothing else.
test: bootstrap
	$(Q)$(MAKE) --no-print-directory all
	$(Q)SANITIZE=$(SANITIZE) tests/run

unit: all
	$(Q)SANITIZE=$(SANITIZE) tests/run unit

integration: all
	$(Q)SANITIZE=$(SANITIZE) tests/run integration

faults: all
	$(Q)SANITIZE=$(SANITIZE) tests/run faults

# The images build the project themselves (compose/Dockerfile): nothing
# from build/ is needed. Docker, docker-compose and debootstrap are
# installed here only, never by `make test`.
compose-test:
	$(Q)scripts/bootstrap --containers
	$(Q)tests/compose/run.sh

demo: bootstrap
	$(Q)$(MAKE) --no-print-directory all
	$(Q)scripts/demo

bench: bootstrap
	$(Q)$(MAKE) --no-print-directory all
	$(Q)bench/run all

fuzz:
	$(Q)$(MAKE) --no-print-directory -f tests/fuzz/Makefile

# make fuzz-run FUZZ=<name> [FUZZ_TIME=60]: run one harness (tests/fuzz/README.md)
fuzz-run:
	$(Q)$(MAKE) --no-print-directory -f tests/fuzz/Makefile fuzz-run

clean:
	rm -rf build

# ---- install and the Debian package (packaging/README.md) ----
# make install [PREFIX=/usr/local] [DESTDIR=...]: the CLI to bin/, the
# daemons (services and agent) to sbin/ (they are started by systemd, not
# typed), systemd units, the sysusers.d file, man pages made from each
# binary's --help, bash and zsh completion made by `slipway completion`,
# the docs and example configuration. /etc is never
# written: configuration is the operator's (docs/operations.md).
# make deb: build/slipway_$(VERSION)_<arch>.deb with dpkg-deb (PREFIX=/usr).
# NOBUILD=1 installs or packages what build/bin holds without building
# (tests/packaging/install_and_deb.sh uses it, so a test run never relinks build/bin).
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
DOCDIR ?= $(PREFIX)/share/doc/slipway
MANDIR ?= $(PREFIX)/share/man
# Completion files go where the shells look for them: bash-completion
# searches <dir>/bash-completion/completions for each dir of XDG_DATA_DIRS
# (/usr/local/share:/usr/share by default); Debian's zsh has
# /usr/share/zsh/vendor-completions (packages) and
# /usr/local/share/zsh/site-functions (local installs) on its fpath.
BASHCOMPDIR ?= $(PREFIX)/share/bash-completion/completions
ZSHCOMPDIR ?= $(if $(filter /usr,$(PREFIX)),/usr/share/zsh/vendor-completions,$(PREFIX)/share/zsh/site-functions)
# Units go where systemd looks for them: /lib/systemd/system for the
# distribution's prefix (Debian 12 packages ship there), else under PREFIX
# (/usr/local/lib/systemd/system is on systemd's search path).
UNITDIR ?= $(if $(filter /usr,$(PREFIX)),/lib/systemd/system,$(PREFIX)/lib/systemd/system)
SYSUSERSDIR ?= $(PREFIX)/lib/sysusers.d
DEB_ARCH := $(shell dpkg --print-architecture 2>/dev/null || echo unknown)
DEB_OUT ?= build
DEB_WORK ?= build/deb
DEB_MAINTAINER ?= Slipway maintainers <slipway@localhost>
UNITS := $(wildcard packaging/systemd/*.service packaging/systemd/*.target)
MAN8 := $(SERVICES:%=slipway-%)
INSTALL_DEPS := $(if $(filter 1,$(NOBUILD)),,bins)

.PHONY: install deb
install: $(INSTALL_DEPS)
	$(Q)if [ "$(NOBUILD)" != 1 ] && [ "$(SANITIZE)" = 1 ]; then \
		echo "make install: installs the plain build; drop SANITIZE=1" >&2; exit 2; fi
	$(Q)for b in build/bin/slipway $(SERVICE_BINS); do \
		[ -x $$b ] || { echo "make install: $$b missing (run make)" >&2; exit 1; }; done
	@echo "  INSTALL $(DESTDIR)$(PREFIX)"
	$(Q)install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(SBINDIR) $(DESTDIR)$(UNITDIR) \
		$(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(MANDIR)/man1 $(DESTDIR)$(MANDIR)/man8 \
		$(DESTDIR)$(DOCDIR)/examples $(DESTDIR)$(BASHCOMPDIR) $(DESTDIR)$(ZSHCOMPDIR)
	$(Q)install -m 0755 build/bin/slipway $(DESTDIR)$(BINDIR)/slipway
	$(Q)install -m 0755 $(SERVICE_BINS) $(DESTDIR)$(SBINDIR)/
	$(Q)for u in $(UNITS); do \
		sed -e 's|@SBINDIR@|$(SBINDIR)|g' -e 's|@DOCDIR@|$(DOCDIR)|g' $$u \
		> $(DESTDIR)$(UNITDIR)/$$(basename $$u) && chmod 0644 $(DESTDIR)$(UNITDIR)/$$(basename $$u) \
		|| exit 1; done
	$(Q)install -m 0644 packaging/sysusers/slipway.conf $(DESTDIR)$(SYSUSERSDIR)/slipway.conf
	$(Q)install -m 0644 packaging/env/*.env $(DESTDIR)$(DOCDIR)/examples/
	$(Q)install -m 0644 README.md LICENSE docs/operations.md docs/architecture.md $(DESTDIR)$(DOCDIR)/
	$(Q)for s in $(SERVICES); do install -m 0644 services/$$s/README.md \
		$(DESTDIR)$(DOCDIR)/README.$$s.md || exit 1; done
	$(Q)DOCDIR=$(DOCDIR) VERSION=$(VERSION) packaging/man/mkman build/bin/slipway 1 \
		"deploy, approve, roll back and audit with Slipway" | gzip -9n > $(DESTDIR)$(MANDIR)/man1/slipway.1.gz
	$(Q)for b in $(MAN8); do DOCDIR=$(DOCDIR) VERSION=$(VERSION) packaging/man/mkman build/bin/$$b 8 \
		"the Slipway $${b#slipway-} $$([ $$b = slipway-agent ] && echo daemon || echo service)" \
		| gzip -9n > $(DESTDIR)$(MANDIR)/man8/$$b.8.gz || exit 1; done
	$(Q)build/bin/slipway completion bash > $(DESTDIR)$(BASHCOMPDIR)/slipway \
		&& chmod 0644 $(DESTDIR)$(BASHCOMPDIR)/slipway
	$(Q)build/bin/slipway completion zsh > $(DESTDIR)$(ZSHCOMPDIR)/_slipway \
		&& chmod 0644 $(DESTDIR)$(ZSHCOMPDIR)/_slipway

deb: $(INSTALL_DEPS)
	$(Q)rm -rf $(DEB_WORK) && mkdir -p $(DEB_WORK)/debian/slipway/DEBIAN $(DEB_OUT)
	$(Q)$(MAKE) --no-print-directory install NOBUILD=1 PREFIX=/usr DESTDIR=$(abspath $(DEB_WORK))/debian/slipway
	@echo "  DEB     $(DEB_OUT)/slipway_$(VERSION)_$(DEB_ARCH).deb"
	$(Q)printf 'Source: slipway\n\nPackage: slipway\nArchitecture: any\n' > $(DEB_WORK)/debian/control
	$(Q)deps=$$(cd $(DEB_WORK) && dpkg-shlibdeps -O $(patsubst %,-edebian/slipway/usr/sbin/%,$(MAN8)) \
		-edebian/slipway/usr/bin/slipway 2>/dev/null | sed -n 's/^shlibs:Depends=//p'); \
	[ -n "$$deps" ] || { echo "make deb: dpkg-shlibdeps found no dependencies" >&2; exit 1; }; \
	sed -e 's|@VERSION@|$(VERSION)|' -e 's|@ARCH@|$(DEB_ARCH)|' -e "s|@DEPENDS@|$$deps, adduser|" \
		-e 's|@MAINTAINER@|$(DEB_MAINTAINER)|' \
		-e "s|@SIZE@|$$(du -sk $(DEB_WORK)/debian/slipway | cut -f1)|" \
		packaging/deb/control > $(DEB_WORK)/debian/slipway/DEBIAN/control
	$(Q)install -m 0755 packaging/deb/postinst packaging/deb/postrm $(DEB_WORK)/debian/slipway/DEBIAN/
	$(Q)dpkg-deb --root-owner-group -Zxz --build $(DEB_WORK)/debian/slipway \
		$(DEB_OUT)/slipway_$(VERSION)_$(DEB_ARCH).deb >/dev/null

-include $(shell find build/obj build/obj-san -name '*.d' 2>/dev/null)

# ---- benchmarks (built by bench/run, not by `all`) ----
BENCH_C_SRCS := $(wildcard bench/*.c)
BENCH_C_BINS := $(patsubst bench/%.c,build/bench/bench-%,$(BENCH_C_SRCS))

build/bench/bench-%: $(OBJ)/bench/%.o $(TEST_PROTO_OBJS) $(LIBA) $(MODE_STAMP)
	@mkdir -p build/bench
	@echo "  LINK    $@"
	$(Q)$(CC) $(LDFLAGS_ALL) -o $@ $< $(TEST_PROTO_OBJS) $(LIBA) $(PKG_LIBS)

CXX ?= g++
build/bench/cxx/slipway/test/v1/echo.grpc.pb.cc: tests/proto/slipway/test/v1/echo.proto
	@mkdir -p build/bench/cxx
	@echo "  PROTOC  $< (C++)"
	$(Q)protoc --proto_path=tests/proto --cpp_out=build/bench/cxx --grpc_out=build/bench/cxx \
		--plugin=protoc-gen-grpc=$$(command -v grpc_cpp_plugin) $<

build/bench/echo_server_cxx: bench/cxx/echo_server.cc build/bench/cxx/slipway/test/v1/echo.grpc.pb.cc
	@echo "  CXX     $@"
	$(Q)$(CXX) -std=c++17 -O2 -Ibuild/bench/cxx -o $@ bench/cxx/echo_server.cc \
		build/bench/cxx/slipway/test/v1/echo.pb.cc build/bench/cxx/slipway/test/v1/echo.grpc.pb.cc \
		$$(pkg-config --cflags --libs grpc++ protobuf) -lpthread

.PHONY: bench-bins
bench-bins: all $(BENCH_C_BINS) build/bench/echo_server_cxx
