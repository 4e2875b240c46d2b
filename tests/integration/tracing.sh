#!/usr/bin/env bash
# tests/integration/tracing.sh - the access log, W3C trace propagation and
# certificate hot reload, over the real stack (run by tests/run, which
# exports the stack's environment):
#
#  (a) a deployment run through the CLI under a known trace (TRACEPARENT)
#      is followed by `grep trace_id=X` through the logs of the
#      orchestrator (the service the CLI called, and its engine), the
#      policy and audit services, the artifact service and the agent; every
#      call leaves one access line with method, peer, status, duration,
#      request id and trace id; health checks stay out of the info log.
#  (b) a service given a new certificate and SIGHUP serves the new one to
#      new connections (openssl s_client sees its serial) and keeps
#      answering; a bad certificate (key mismatch, another CA, missing file)
#      is refused with an error line and the old one stays in service. The
#      agent reloads too.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
S=$SLIPWAY_STACK_DIR
T=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/tracing.XXXXXX")
export PATH="$top/build/bin:$PATH"
L=$S/logs
checks=0

fail() { echo "FAIL: $*" >&2; exit 1; }
ok() { checks=$((checks + 1)); echo "ok $checks - $*"; }
js() { node -e "const j=JSON.parse(require('fs').readFileSync(0,'utf8')); const r=($1); console.log(typeof r==='object'?JSON.stringify(r):r)"; }

# ---------------------------------------------------------------- (a) tracing

app=trc
scripts/make-bundles --app $app --out "$T/bundles" >/dev/null || fail "make-bundles"
slipway artifact push "$T/bundles/$app-1.0.0.tar.gz" --app $app --version 1.0.0 >/dev/null 2>"$T/err" \
  || fail "push: $(cat "$T/err")"
scripts/stack agent "$S" trc/h1 --label app=$app --label environment=prod >/dev/null || fail "agent"
for i in $(seq 1 100); do
  [ "$(slipway -o json agents ls --app $app | js 'j.filter(a=>a.health==="online").length')" = 1 ] && break
  [ "$i" = 100 ] && fail "the agent did not register"
  sleep 0.1
done

tid=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
span=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
out=$(TRACEPARENT="00-$tid-$span-01" slipway -o json deploy $app prod 1.0.0 --wait 2>"$T/err") \
  || fail "deploy: $(cat "$T/err")"
id=$(js 'j.id' <<<"$out")
[ "$(slipway -o json deployment show "$id" | js 'j.state')" = SUCCEEDED ] || fail "deployment $id did not succeed"
ok "deployment $id ran under trace $tid"

# The audit relay and the agent's last report may trail the answer a bit.
has_trace() { grep -q "trace_id=$tid" "$L/$1.log"; }
for i in $(seq 1 100); do
  has_trace audit && has_trace agent-trc-h1 && break
  sleep 0.1
done
for f in orchestrator policy audit artifact agent-trc-h1; do
  has_trace "$f" || fail "no trace_id=$tid in $f.log"
done
ok "trace_id=$tid is in the orchestrator, policy, audit, artifact and agent logs"

# The CLI's own call: one access line with every field, the admin as peer.
td=$(cat "$S/pki/trust-domain")
line=$(grep "trace_id=$tid" "$L/orchestrator.log" | grep ' msg=access ' | grep 'method=/slipway.v1.Orchestrator/CreateDeployment ' | head -1)
[ -n "$line" ] || fail "no access line for CreateDeployment under the trace"
for want in " level=info " " req=" " peer=spiffe://$td/user/admin " " status=OK " " duration_ms="; do
  [[ "$line" == *"$want"* ]] || fail "access line lacks '$want': $line"
done
ok "CreateDeployment's access line: $line"

# Work done later on the orchestrator's own threads carries the trace too:
# its call to the policy service and the tasks' reports from the agent.
grep "trace_id=$tid" "$L/policy.log" | grep ' msg=access ' | grep -q "peer=spiffe://$td/service/orchestrator " \
  || fail "no access line in policy.log for the orchestrator's call under the trace"
grep "trace_id=$tid" "$L/audit.log" | grep ' msg=access ' | grep -q 'method=/slipway.v1.Audit/AppendBatch ' \
  || fail "no AppendBatch access line in audit.log under the trace"
grep "trace_id=$tid" "$L/orchestrator.log" | grep ' msg=access ' | grep -q "method=/slipway.v1.Orchestrator/ReportTask .*peer=spiffe://$td/agent/trc/h1 " \
  || fail "no ReportTask access line from the agent under the trace"
ok "policy, audit and the agent's reports carry the deployment's trace"

# Every access line has the fields, and no request body or secret leaks.
n=$(grep -h ' msg=access ' "$L"/*.log | wc -l)
bad=$(grep -h ' msg=access ' "$L"/*.log | grep -v -E ' req=[^ ]+ trace_id=[0-9a-f]{32} msg=access method=/[^ ]+ peer=[^ ]+ status=[A-Z_]+ duration_ms=[0-9.]+' | head -3)
[ "$n" -gt 0 ] && [ -z "$bad" ] || fail "access lines without their fields ($n lines): $bad"
grep -h ' msg=access ' "$L"/*.log | grep -q -i "SECRET_KEY\|PRIVATE KEY" && fail "an access line holds key material"
ok "$n access lines, each with req, trace_id, method, peer, status and duration"

# Health checks (the stack polls them) are at debug only.
grep -h ' msg=access ' "$L"/*.log | grep -q 'method=/grpc.health.v1.Health/' && fail "health checks in the info access log"
slipway health policy >/dev/null || fail "health"
grep -h ' msg=access ' "$L/policy.log" | grep -q 'method=/grpc.health.v1.Health/' && fail "health check logged at info"
ok "health checks are not in the info access log"

# A malformed TRACEPARENT is ignored: the command works under a new trace.
TRACEPARENT="00-$tid-0000000000000000-01" slipway -o json deployment show "$id" >/dev/null 2>"$T/err" \
  || fail "a bad TRACEPARENT broke the CLI: $(cat "$T/err")"
c1=$(grep -c "trace_id=$tid.*method=/slipway.v1.Orchestrator/GetDeployment" "$L/orchestrator.log")
[ "$c1" = 0 ] || fail "an invalid traceparent was used"
ok "an invalid traceparent starts a new trace"

# ------------------------------------------------------- (b) certificate reload

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
ag=agent-trc-h1
apid=$(cat "$S/run/$ag.pid")
n0=$(grep -c 'msg="certificate reloaded"' "$L/$ag.log" || true)
slipway pki issue --dir "$S/pki" --agent trc/h1 --out "$T/agent" >/dev/null || fail "pki issue agent"
install -m 600 "$T/agent.key" "$S/pki/$ag.key"; install -m 644 "$T/agent.crt" "$S/pki/$ag.crt"
kill -HUP "$apid"
for i in $(seq 1 100); do
  [ "$(grep -c 'msg="certificate reloaded"' "$L/$ag.log" || true)" -gt "$n0" ] && break
  [ "$i" = 100 ] && fail "the agent did not reload"
  sleep 0.1
done
grep 'msg="certificate reloaded"' "$L/$ag.log" | tail -1 | grep -q "serial=$(file_serial "$T/agent.crt") " \
  || fail "the agent's reload line does not name the new serial"
scripts/make-bundles --app $app --out "$T/bundles2" --versions "2.0.0" >/dev/null || fail "make-bundles 2"
slipway artifact push "$T/bundles2/$app-2.0.0.tar.gz" --app $app --version 2.0.0 >/dev/null 2>"$T/err" \
  || fail "push 2.0.0: $(cat "$T/err")"
out=$(slipway -o json deploy $app prod 2.0.0 --wait 2>"$T/err") || fail "deploy after the agent's reload: $(cat "$T/err")"
ok "the agent reloaded on SIGHUP and deploys with its new certificate"

scripts/stack stop "$S" trc/h1 >/dev/null 2>&1 || true
echo "tracing: $checks checks passed"
