# tests/security/lib.sh - sourced by every test in tests/security/. Each
# test is an attack on the real stack that tests/run brings up (its
# environment is exported: SLIPWAY_STACK_DIR, the admin's certificate, the
# services' addresses): it does what an insider would do and checks that
# the system refuses, records it, and changed nothing.
set -uo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$top"
S=$SLIPWAY_STACK_DIR
T=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/$(basename "$0" .sh).XXXXXX")
chmod 755 "$T"  # agents rooted below it run applications as another user
export PATH="$top/build/bin:$PATH"
checks=0

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { checks=$((checks + 1)); echo "ok $checks - $*"; }
done_checks() { echo "$checks checks"; }
js() { node -e "const j=JSON.parse(require('fs').readFileSync(0,'utf8')); const r=($1); console.log(typeof r==='object'?JSON.stringify(r):r)"; }
sql() { psql -X -At "$SLIPWAY_PGURL" -c "$1"; }

# user NAME: issues (once) a user certificate NAME under $T; as_user NAME
# CMD... runs CMD with it in place of the admin's.
user() {
  [ -s "$T/$1.crt" ] || slipway pki issue --dir "$SLIPWAY_PKI_DIR" --user "$1" --out "$T/$1" >/dev/null \
    || fail "cannot issue a certificate for user $1"
}
as_user() { local u=$1; shift; user "$u"; SLIPWAY_CERT="$T/$u.crt" SLIPWAY_KEY="$T/$u.key" "$@"; }

# expect_denied WHAT CMD...: CMD must fail and say it was denied.
expect_denied() {
  local what=$1; shift
  if "$@" >"$T/out" 2>"$T/err"; then fail "$what: succeeded ($(cat "$T/out"))"; fi
  grep -qiE "denied|permission|not allowed|forbidden|escalat" "$T/err" || fail "$what: failed without a denial: $(cat "$T/err")"
}

push() { # APP VERSION BUNDLE [PUSH FLAGS]
  local app=$1 v=$2 b=$3; shift 3
  slipway artifact push "$b" --app "$app" --version "$v" "$@" >/dev/null 2>"$T/push.err" \
    || fail "push $app@$v: $(cat "$T/push.err")"
}
bundles() { # APP [MAKE-BUNDLES ARGS]: the demo app's releases under $T/bundles
  local app=$1; shift
  scripts/make-bundles --app "$app" --out "$T/bundles" "$@" >/dev/null || fail "make-bundles $app"
}
agents() { # APP ENV REGION/HOST...: starts (enrolled) agents and waits until all are online
  local app=$1 env=$2 i want="" td; shift 2
  td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
  for rh in "$@"; do
    scripts/stack agent "$S" "$rh" --label app="$app" --label environment="$env" >/dev/null \
      || fail "cannot start agent $rh"
    want="$want,spiffe://$td/agent/$rh"
  done
  for i in $(seq 1 100); do
    [ "$(slipway -o json agents ls --app "$app" | js "'$want'.split(',').filter(x=>x).every(x=>j.some(a=>a.id===x&&a.health==='online'&&a.labels.environment==='$env'))")" = true ] && return 0
    sleep 0.1
  done
  fail "the $app agents did not register"
}
deploy() { # ARGS... ; prints the id
  local out
  out=$(slipway -o json deploy "$@" 2>"$T/deploy.err") || fail "deploy $*: $(cat "$T/deploy.err")"
  js 'j.id' <<<"$out"
}
state() { slipway -o json deployment show "$1" | js 'j.state'; }
wait_state() { # ID STATE SECONDS
  local i s=""
  for i in $(seq 1 $(($3 * 10))); do
    s=$(state "$1")
    [ "$s" = "$2" ] && return 0
    case "$s" in SUCCEEDED|FAILED|CANCELLED|ROLLED_BACK) [ "$s" != "$2" ] && break ;; esac
    sleep 0.1
  done
  slipway deployment show "$1" >&2
  fail "deployment $1 is $s, wanted $2"
}
# audited PATTERN [AUDIT LOG FILTERS]: the audit log holds an event whose JSON matches.
audited() { slipway -o json audit log --limit 1000 "${@:2}" 2>/dev/null | grep -qE "$1"; }

# keep_policy: the policy document as it is now is applied again when the
# test exits (tests that change the policy leave it as they found it).
keep_policy() {
  slipway policy get >"$T/policy-before.json" 2>/dev/null || echo '{}' >"$T/policy-before.json"
  trap 'slipway policy apply "$T/policy-before.json" >/dev/null 2>&1' EXIT
}
