#!/usr/bin/env bash
# tests/integration/cert_reload.sh - certificate hot reload on SIGHUP over
# the real stack (run by tests/run): a service given a new certificate and
# SIGHUP serves it to new connections (openssl s_client sees its serial),
# switches its own clients, and keeps answering; a bad set (a key that is
# not the certificate's, a certificate of another CA, a missing file) is
# refused with an error line and the old certificate stays in service. An
# agent given a new certificate and SIGHUP reloads it and keeps deploying.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
S=$SLIPWAY_STACK_DIR
T=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/cert_reload.XXXXXX")
export PATH="$top/build/bin:$PATH"
L=$S/logs
checks=0

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { checks=$((checks + 1)); echo "ok $checks - $*"; }
js() { node -e "const j=JSON.parse(require('fs').readFileSync(0,'utf8')); const r=($1); console.log(typeof r==='object'?JSON.stringify(r):r)"; }

svc=policy
pid=$(cat "$S/run/$svc.pid")
port=$(cat "$S/run/$svc.port")
served_serial() {
  openssl s_client -connect "127.0.0.1:$port" -CAfile "$S/pki/ca.crt" \
    -cert "$S/pki/admin.crt" -key "$S/pki/admin.key" </dev/null 2>/dev/null \
    | openssl x509 -noout -serial 2>/dev/null | sed 's/^serial=//'
}
file_serial() { openssl x509 -noout -serial -in "$1" | sed 's/^serial=//'; }
count() { grep -c "$1" "$L/$svc.log" || true; }
hup_and_wait() { # PATTERN: SIGHUP the service, wait for one more line matching it
  local n0; n0=$(count "$1")
  kill -HUP "$pid" || fail "cannot signal $svc"
  for i in $(seq 1 100); do
    [ "$(count "$1")" -gt "$n0" ] && return 0
    sleep 0.1
  done
  fail "no new '$1' line in $svc.log after SIGHUP"
}
answers() { slipway health $svc >/dev/null 2>"$T/err" || fail "$svc stopped answering: $(cat "$T/err")"; }

old=$(served_serial)
[ -n "$old" ] && [ "$old" = "$(file_serial "$S/pki/$svc.crt")" ] || fail "s_client sees '$old', not the file's serial"
cp -p "$S/pki/$svc.crt" "$T/orig.crt"; cp -p "$S/pki/$svc.key" "$T/orig.key"
slipway pki issue --dir "$S/pki" --service $svc --out "$T/new" >/dev/null || fail "pki issue"
new=$(file_serial "$T/new.crt")
[ "$new" != "$old" ] || fail "the new certificate has the old serial"
install -m 600 "$T/new.key" "$S/pki/$svc.key"; install -m 644 "$T/new.crt" "$S/pki/$svc.crt"
hup_and_wait 'msg="certificate reloaded"'
grep 'msg="certificate reloaded"' "$L/$svc.log" | tail -1 | grep -q "serial=$new not_after=" \
  || fail "the reload line does not name serial $new: $(grep 'certificate reloaded' "$L/$svc.log" | tail -1)"
[ "$(served_serial)" = "$new" ] || fail "a new connection still sees serial $(served_serial), not $new"
answers
# The service's own client (its audit relay) switched too, and works.
grep 'msg="certificate reloaded"' "$L/$svc.log" | tail -1 | grep -q " clients=[1-9]" || fail "its clients were not switched"
slipway policy revision >/dev/null 2>"$T/err" || fail "policy revision after the reload: $(cat "$T/err")"
ok "$svc reloaded on SIGHUP: new connections see serial $new (was $old), and it answers"

refused() { # WHAT: a bad set is refused, the good one stays
  hup_and_wait 'msg="certificate reload refused; the old certificate stays in service"'
  [ "$(served_serial)" = "$new" ] || fail "$1: the served serial changed to $(served_serial)"
  answers
  ok "$1: refused (\"$(grep 'certificate reload refused' "$L/$svc.log" | tail -1 | sed 's/.* error=//')\"), serial $new still served"
}
# A key that is not the certificate's.
slipway pki issue --dir "$S/pki" --service $svc --out "$T/other" >/dev/null || fail "pki issue"
install -m 600 "$T/other.key" "$S/pki/$svc.key"
refused "a key that does not match"
install -m 600 "$T/new.key" "$S/pki/$svc.key"
# A certificate from another CA.
slipway pki init --dir "$T/rogue" >/dev/null || fail "rogue pki init"
slipway pki issue --dir "$T/rogue" --service $svc --out "$T/rogue/$svc" >/dev/null || fail "rogue issue"
install -m 600 "$T/rogue/$svc.key" "$S/pki/$svc.key"; install -m 644 "$T/rogue/$svc.crt" "$S/pki/$svc.crt"
refused "a certificate of another CA"
# An unreadable (missing) certificate file.
rm -f "$S/pki/$svc.crt"
refused "a missing certificate file"
# Put the new good set back (later tests share this stack).
install -m 600 "$T/new.key" "$S/pki/$svc.key"; install -m 644 "$T/new.crt" "$S/pki/$svc.crt"
hup_and_wait 'msg="certificate reloaded"'
answers

# The agent reloads its own certificate and keeps working with it.
app=crl
scripts/make-bundles --app $app --out "$T/bundles" --versions "1.0.0 2.0.0" >/dev/null || fail "make-bundles"
for v in 1.0.0 2.0.0; do
  slipway artifact push "$T/bundles/$app-$v.tar.gz" --app $app --version $v >/dev/null 2>"$T/err" \
    || fail "push $v: $(cat "$T/err")"
done
scripts/stack agent "$S" crl/h1 --label app=$app --label environment=prod >/dev/null || fail "agent"
for i in $(seq 1 100); do
  [ "$(slipway -o json agents ls --app $app | js 'j.filter(a=>a.health==="online").length')" = 1 ] && break
  [ "$i" = 100 ] && fail "the agent did not register"
  sleep 0.1
done
slipway -o json deploy $app prod 1.0.0 --wait >/dev/null 2>"$T/err" || fail "deploy 1.0.0: $(cat "$T/err")"
ag=agent-crl-h1
apid=$(cat "$S/run/$ag.pid")
n0=$(grep -c 'msg="certificate reloaded"' "$L/$ag.log" || true)
slipway pki issue --dir "$S/pki" --agent crl/h1 --out "$T/agent" >/dev/null || fail "pki issue agent"
install -m 600 "$T/agent.key" "$S/pki/$ag.key"; install -m 644 "$T/agent.crt" "$S/pki/$ag.crt"
kill -HUP "$apid"
for i in $(seq 1 100); do
  [ "$(grep -c 'msg="certificate reloaded"' "$L/$ag.log" || true)" -gt "$n0" ] && break
  [ "$i" = 100 ] && fail "the agent did not reload"
  sleep 0.1
done
grep 'msg="certificate reloaded"' "$L/$ag.log" | tail -1 | grep -q "serial=$(file_serial "$T/agent.crt") " \
  || fail "the agent's reload line does not name the new serial"
out=$(slipway -o json deploy $app prod 2.0.0 --wait 2>"$T/err") || fail "deploy after the agent's reload: $(cat "$T/err")"
ok "the agent reloaded on SIGHUP and deploys with its new certificate"

scripts/stack stop "$S" crl/h1 >/dev/null 2>&1 || true
echo "cert_reload: $checks checks passed"
