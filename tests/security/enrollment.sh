#!/usr/bin/env bash
# tests/security/enrollment.sh - hole 1: an agent's scope was self-asserted.
#
# The attacks: an agent enrolled for a sandbox re-registers as prod to
# become a prod target and receive prod's sealed secrets; an agent nobody
# enrolled registers as prod; an enrolled agent comes back with another
# sealing key; the orchestrator's database is edited to make a sandbox
# agent a prod target. Each must be refused (and audited), and prod's
# secret must reach only the agent enrolled for prod. Then an admin
# unenrolls a lost host and the next deployment no longer waits for it.
. "$(dirname "$0")/lib.sh"

app=encl
td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
id_of() { echo "spiffe://$td/agent/$1"; }
denied_registrations() { # AGENT-ID
  sql "select count(*) from audit.entries where action = 'agent.register' and resource = '$1' and outcome = 3"
}
grants_for() { # AGENT-ID
  psql -X -At "${SLIPWAY_PGURL}" -c "select count(*) from secrets.grants where agent = '$1'"
}
targets_of() { slipway -o json deployment show "$1" | js 'j.targets.map(t=>t.agent).sort().join(",")'; }
more_denied() { [ "$(denied_registrations "$1")" -gt "$2" ]; }
online_in() { [ "$(slipway -o json agents ls --app $app --env "$1" | js "j.filter(a=>a.id==='$2'&&a.health==='online').length")" = 1 ]; }
online() { [ "$(slipway -o json agents ls --app $app --env prod | js "j.filter(a=>a.id==='$1'&&a.health==='online').length")" = 1 ]; }
lost_count() { [ "$(slipway -o json agents ls --app $app --env prod | js "j.filter(a=>a.health==='lost').length")" = "$1" ]; }
prod_is() { [ "$(prod_agents)" = "$1" ]; }
wait_until() { # SECONDS CMD...: CMD succeeds within SECONDS (run again each time)
  local s=$1 i; shift
  for i in $(seq 1 $((s * 10))); do "$@" && return 0; sleep 0.1; done
  return 1
}
ended() { case "$(state "$1")" in FAILED|SUCCEEDED|ROLLED_BACK) return 0 ;; esac; return 1; }
prod_agents() { slipway -o json agents ls --app $app --env prod | js 'j.filter(a=>a.health!=="absent").map(a=>a.id).sort().join(",")'; }

bundles $app --secret db-password --versions "1.0.0 2.0.0 4.0.0"
for v in 1.0.0 2.0.0 4.0.0; do push $app $v "$T/bundles/$app-$v.tar.gz"; done
value="encl-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
printf '%s' "$value" | slipway secrets put db-password --scope $app/prod >/dev/null || fail "secrets put (prod)"
printf '%s' "sandbox-value" | slipway secrets put db-password --scope $app/sandbox >/dev/null || fail "secrets put (sandbox)"

P1=$(id_of eu/enc-p1) S1=$(id_of eu/enc-s1) X1=$(id_of eu/enc-x1)
agents $app prod eu/enc-p1
agents $app sandbox eu/enc-s1
[ "$(prod_agents)" = "$P1" ] || fail "prod should have exactly p1: $(prod_agents)"
ok "agents run only inside the scope they were enrolled for"

# ---- a tampered orchestrator database cannot redirect prod's secret ----
forge() {
  sql "update orchestrator.agents set environment = 'prod', labels = '{\"app\":\"$app\",\"environment\":\"prod\",\"region\":\"eu\"}' where id = '$S1'" >/dev/null \
    || fail "cannot edit the orchestrator's database"
}
# The orchestrator follows enrollment changes once a second: if it has not
# yet looked at s1's (its key was pinned a moment ago), it finds the forged
# row and drops it (a defence too, but not the one tested here); s1 then
# registers again as sandbox and the row is forged again.
for i in $(seq 1 20); do
  forge
  sleep 0.5
  prod_is "$P1,$S1" && { sleep 1.5; prod_is "$P1,$S1" && break; }
  wait_until 20 online_in sandbox "$S1" || fail "s1 did not register again"
done
[ "$(prod_agents)" = "$P1,$S1" ] || fail "the edit should make s1 look like a prod agent: $(prod_agents)"
id=$(deploy $app prod 1.0.0 --batch 2 --on-failure abort --progress-deadline 15s)
wait_until 90 ended "$id" || fail "the deployment with a forged target did not end"
[ "$(grants_for "$S1")" = 0 ] || fail "the secrets service granted prod's secret to the sandbox agent"
[ "$(grants_for "$P1")" -ge 1 ] || fail "the prod agent should have its grant"
[ "$(sql "select count(*) from audit.entries where action = 'secret.grant' and outcome = 3 and details::text like '%$S1%'")" -ge 1 ] \
  || fail "the refused grant should be audited"
! grep -rqF "$value" "$S/agents/eu-enc-s1" 2>/dev/null || fail "prod's secret reached the sandbox agent's disk"
ok "a sandbox agent made a prod target in the orchestrator's database gets no grant (the secrets service checks the enrollment)"
sql "update orchestrator.agents set environment = 'sandbox', labels = '{\"app\":\"$app\",\"environment\":\"sandbox\",\"region\":\"eu\"}' where id = '$S1'" >/dev/null

# ---- the sandbox agent claims prod ----
scripts/stack stop "$S" agent-eu-enc-s1 >/dev/null || fail "stop s1"
sed -i 's/environment=sandbox/environment=prod/' "$S/run/agent-eu-enc-s1.sh"
before=$(denied_registrations "$S1")
scripts/stack start "$S" agent-eu-enc-s1 >/dev/null || fail "start s1 as prod"
wait_until 20 more_denied "$S1" "$before" || fail "the out-of-scope registration was not refused and audited"
grep -q "outside this agent's enrollment" "$S/logs/agent-eu-enc-s1.log" || fail "the agent was not told why it was refused"
id=$(deploy $app prod 2.0.0 --batch 2 --wait)
[ "$(targets_of "$id")" = "$P1" ] || fail "a prod deployment targeted $(targets_of "$id")"
! grep -rqF "$value" "$S/agents/eu-enc-s1" 2>/dev/null || fail "prod's secret reached the sandbox agent's disk"
ok "an agent enrolled for sandbox that registers as prod is refused (audited), never targeted, never sealed to"

# ---- an agent nobody enrolled ----
scripts/stack agent "$S" eu/enc-x1 --label app=$app --label environment=prod --no-enroll >/dev/null || fail "start x1"
wait_until 20 more_denied "$X1" 0 || fail "the unenrolled agent's registration was not refused and audited"
grep -q "is not enrolled" "$S/logs/agent-eu-enc-x1.log" || fail "the unenrolled agent was not told why"
[ "$(prod_agents)" = "$P1" ] || fail "an unenrolled agent became a prod agent: $(prod_agents)"
ok "an agent nobody enrolled cannot register"

# ---- another sealing key needs a new enrollment ----
scripts/stack stop "$S" agent-eu-enc-p1 >/dev/null || fail "stop p1"
key=$(find "$S/agents/eu-enc-p1" -name seal.key | head -1)
[ -n "$key" ] || fail "no sealing key under p1's root"
rm -f "$key"
before=$(denied_registrations "$P1")
scripts/stack start "$S" agent-eu-enc-p1 >/dev/null || fail "start p1 with a new key"
wait_until 20 more_denied "$P1" "$before" || fail "a new sealing key was accepted without a new enrollment"
grep -q "another sealing key" "$S/logs/agent-eu-enc-p1.log" || fail "p1 was not told why"
slipway agents enroll "$P1" --app $app --env prod --reason "host rebuilt" >/dev/null || fail "re-enroll p1"
wait_until 30 online "$P1" || fail "p1 did not register after its re-enrollment"
[ "$(sql "select count(*) from audit.entries where action = 'agent.enroll' and resource = '$P1'")" -ge 2 ] \
  || fail "the re-enrollment should be audited"
ok "an enrolled agent with another sealing key is refused until an admin enrolls it again (audited)"

# ---- a lost host is unenrolled and stops failing deployments ----
agents $app prod us/enc-p2
scripts/stack kill "$S" agent-us-enc-p2 >/dev/null
wait_until 30 lost_count 1 || fail "p2 was not seen lost"
slipway agents unenroll "$(id_of us/enc-p2)" --reason "host decommissioned" >/dev/null || fail "unenroll p2"
wait_until 20 prod_is "$P1" || fail "the unenrolled host is still an agent of prod: $(prod_agents)"
id=$(deploy $app prod 4.0.0 --batch 2 --wait)
[ "$(state "$id")" = SUCCEEDED ] || fail "the deployment after unenrolling the lost host should succeed"
[ "$(targets_of "$id")" = "$P1" ] || fail "the unenrolled host is still targeted"
ok "an unenrolled lost host is no target of later deployments"

# ---- ls shows enrolled agents that are absent; only admins enroll ----
slipway agents enroll "$(id_of ap/enc-never)" --app $app --env prod >/dev/null || fail "enroll an absent agent"
absent=$(slipway -o json agents ls --app $app | js "j.filter(a=>a.health==='absent').map(a=>a.id).join(',')")
[[ ",$absent," == *",$(id_of ap/enc-never),"* && ",$absent," != *",$P1,"* ]] \
  || fail "ls should show the enrolled agent that never registered as absent (and no registered one): $absent"
expect_denied "a deployer enrolls an agent" as_user mallory slipway agents enroll "$(id_of eu/enc-evil)" --app $app --env prod
ok "agents ls lists enrolled absent agents; enrolling needs the enroll permission"
done_checks
