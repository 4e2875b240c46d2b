#!/usr/bin/env bash
# it_policy_cli.sh - `slipway policy apply|get|diff|explain|revision` and
# their exit codes (0 ok, 1 failed, 2 usage, 3 not found or denied) against the stack's policy
# service, as the stack admin (SLIPWAY_CERT). Run by tests/run.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
sw="$top/build/bin/slipway"
tmp=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/it_policy_cli.XXXXXX")
td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
fails=0
check() { # NAME WANT-EXIT CMD...
  local name=$1 want=$2; shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  if [ "$got" -ne "$want" ]; then
    echo "FAIL $name: exit $got, want $want"; sed 's/^/  out: /' "$tmp/out"; sed 's/^/  err: /' "$tmp/err"
    fails=$((fails + 1))
  else
    echo "ok   $name"
  fi
}
has() { # NAME FILE TEXT
  if grep -qF -- "$3" "$2"; then echo "ok   $1"; else echo "FAIL $1: '$3' not in $2:"; sed 's/^/  /' "$2"; fails=$((fails + 1)); fi
}

cat >"$tmp/p1.json" <<JSON
{"groups": {"sre": ["spiffe://$td/user/alice"]},
 "bindings": [{"role": "deployer", "group": "sre", "scope": {"app": "web"}}]}
JSON
check "apply" 0 "$sw" policy apply "$tmp/p1.json"
has "apply says the revision" "$tmp/out" "applied: revision"
rev=$("$sw" policy revision)
check "apply again" 0 "$sw" policy apply "$tmp/p1.json"
has "unchanged" "$tmp/out" "unchanged: revision $rev"
check "get" 0 "$sw" policy get
cp "$tmp/out" "$tmp/got.json"
has "get prints the document" "$tmp/got.json" "\"role\": \"deployer\""
check "get output applies back unchanged" 0 "$sw" policy apply "$tmp/got.json"
has "round trip" "$tmp/out" "unchanged"
check "get json" 0 "$sw" -o json policy get
has "get json revision" "$tmp/out" "\"revision\": $rev"
sed 's/"web"/"shop"/' "$tmp/p1.json" >"$tmp/p2.json"
check "dry run" 0 "$sw" policy apply --dry-run "$tmp/p2.json"
has "dry run changes nothing" "$tmp/out" "would create a new revision"
check "stale expected revision" 1 "$sw" policy apply --expected-revision $((rev - 1)) "$tmp/p2.json"
has "stale says why" "$tmp/err" "expected revision"
check "apply from stdin" 0 bash -c "\"$sw\" policy apply --expected-revision $rev - < \"$tmp/p2.json\""
check "diff" 0 "$sw" policy diff
has "diff shows the scope change" "$tmp/out" '+ $.bindings[0] {"group":"sre","role":"deployer","scope":{"app":"shop"}}'
check "diff json" 0 "$sw" -o json policy diff "$rev" $((rev + 1))
has "diff json lists changes" "$tmp/out" '"changes"'
check "explain allowed" 0 "$sw" policy explain --principal "spiffe://$td/user/alice" --action deploy --resource deployment/shop/prod
has "explain ALLOWED" "$tmp/out" "ALLOWED"
has "explain group" "$tmp/out" "sre"
check "explain denied" 0 "$sw" policy explain --principal "spiffe://$td/user/alice" --action deploy --resource deployment/web/prod
has "explain DENIED" "$tmp/out" "deny by default"
check "explain json" 0 "$sw" -o json policy explain --principal "spiffe://$td/user/alice" --action deploy --resource deployment/shop
has "explain json allowed" "$tmp/out" '"allowed": true'

echo '{"bindings": [{"role": "deployer", "principal": "alice"}]}' >"$tmp/bad.json"
check "invalid document" 1 "$sw" policy apply "$tmp/bad.json"
has "invalid names its path" "$tmp/err" '$.bindings[0].principal'
check "missing file" 1 "$sw" policy apply "$tmp/nope.json"
check "apply usage" 2 "$sw" policy apply
check "explain usage" 2 "$sw" policy explain --principal x
check "diff usage" 2 "$sw" policy diff a b
check "unknown command" 2 "$sw" policy frobnicate
check "approve usage" 2 "$sw" approve
check "reject needs a comment" 2 "$sw" reject dep-1
check "approve unknown deployment" 3 "$sw" approve no-such-deployment --comment ok
has "approve unknown says so" "$tmp/err" "no approval request"
check "revision" 0 "$sw" policy revision
check "leave an empty policy" 0 bash -c "echo '{}' | \"$sw\" policy apply -"

rm -rf "$tmp"
[ "$fails" -eq 0 ]
