#!/usr/bin/env bash
# tests/packaging/proto_lint.sh - `buf lint` passes on proto/ with the rules
# of buf.yaml (STANDARD and COMMENTS, with the exceptions proto/README.md
# explains), and would catch a missing comment.
#
# 1. `buf lint` on the tree prints nothing and exits 0.
# 2. The check must be able to fail: on a copy of proto/ and buf.yaml, an
#    RPC's leading comment removed (COMMENT_RPC), a field's removed
#    (COMMENT_FIELD), and a new file whose service breaks a rule that is
#    excepted only for today's files (SERVICE_SUFFIX) must each be refused.
#
# buf is the npm package @bufbuild/buf, pinned and installed into
# .deps/buf by scripts/bootstrap (run by `make test`). Runs in the unit
# phase of tests/run; needs no server and no network.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top" || exit 1
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slipway-protolint.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
export BUF_CACHE_DIR="$tmp/cache"
fails=0
ok() { echo "ok - $*"; }
bad() { echo "not ok - $*"; fails=$((fails + 1)); }
die() { echo "not ok - $*"; exit 1; }

buf=$top/.deps/buf/node_modules/.bin/buf
[ -x "$buf" ] || die "buf missing: $buf (run scripts/bootstrap)"
ok "buf $("$buf" --version 2>&1)"

# ---- 1. the tree ----
out=$("$buf" lint 2>&1)
rc=$?
if [ $rc = 0 ] && [ -z "$out" ]; then
  ok "buf lint passes on proto/"
else
  printf '    %s\n' "$out" | head -20
  bad "buf lint on proto/ (exit $rc, $(printf '%s\n' "$out" | grep -c .) finding(s))"
fi

# ---- 2. the check catches what it should ----
# lint_copy EDIT-FUNCTION RULE WHAT: in a fresh copy, EDIT-FUNCTION changes
# the copy; buf lint must then fail and name RULE.
lint_copy() {
  local edit=$1 rule=$2 what=$3 w=$tmp/copy out rc
  rm -rf "$w" && mkdir -p "$w" && cp -a buf.yaml proto "$w/" || die "cannot copy proto/"
  "$edit" "$w" || die "cannot edit the copy for: $what"
  out=$(cd "$w" && "$buf" lint --error-format=json 2>&1)
  rc=$?
  if [ $rc != 0 ] && grep -q "\"type\":\"$rule\"" <<<"$out"; then
    ok "refused: $what ($rule)"
  else
    printf '    %s\n' "$out" | head -5
    bad "not refused: $what (exit $rc, want $rule)"
  fi
}
# Drops the comment lines right above the first line matching a pattern.
drop_comment_above() { # FILE ERE
  awk -v re="$2" '
    /^[ \t]*\/\// { buf = buf $0 "\n"; next }
    { if (!done && $0 ~ re) { buf = ""; done = 1 } printf "%s", buf; buf = ""; print }
    END { printf "%s", buf; if (!done) exit 1 }' "$1" >"$1.new" && mv "$1.new" "$1"
}
no_rpc_comment() { drop_comment_above "$1/proto/slipway/v1/artifact.proto" '^  rpc Push\('; }
no_field_comment() { drop_comment_above "$1/proto/slipway/v1/orchestrator.proto" '^  string idempotency_key = 10;'; }
new_service() {
  cat >"$1/proto/slipway/v1/zz_lint_probe.proto" <<'EOF'
syntax = "proto3";

package slipway.v1;

// A probe request.
message ProbeCheckRequest {}

// A probe response.
message ProbeCheckResponse {}

// A service whose name lacks the Service suffix.
service Probe {
  // Checks nothing.
  rpc Check(ProbeCheckRequest) returns (ProbeCheckResponse);
}
EOF
}
lint_copy no_rpc_comment COMMENT_RPC "an RPC without its comment (Artifact.Push)"
lint_copy no_field_comment COMMENT_FIELD "a field without its comment (CreateDeploymentRequest.idempotency_key)"
lint_copy new_service SERVICE_SUFFIX "a new file's service named against the standard"

[ $fails = 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all proto lint checks passed"
