# tests/faults/lib.sh - sourced by every fault test in tests/faults/.
# shellcheck shell=bash
#
# Each fault test brings up its OWN stack (scripts/stack up) in its own
# temporary directory and always takes it down, so a fault cannot damage
# another suite. It injects the fault with real processes (PostgreSQL,
# the services, agents) and then checks the invariants of issue 11:
#
#   - the deployment reaches the outcome it would have reached without
#     the fault;
#   - no target receives a task twice for the same step (targets.attempts
#     is 1, and every agent's log shows each task id started once, at one
#     generation);
#   - no healthy agent is marked lost (orchestrator.agents.lost, no
#     agent.lost audit events, no "agent lost" timeline line);
#   - every service answers grpc.health.v1 SERVING within 10 s of the
#     dependency's return, without a restart (same pid);
#   - `slipway audit verify` passes, no event is recorded twice, and every
#     service's outbox table is empty at the end.
#
# A failed check prints "not ok N - ..." with its evidence and the test
# goes on, so one run shows every broken invariant; the test exits 1 if
# any check failed. Checks print "ok N - ...". Set KEEP_TMP=1 to keep the
# stack's directory (logs) even when everything passed.
set -uo pipefail

top=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$top" || exit 1
export PATH="$top/build/bin:$PATH"
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
FAULT=${FAULT:-$(basename "$0" .sh)}
T=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/fault-$FAULT.XXXXXX")
chmod 755 "$T"
S=$T/stack
checks=0
failures=0
_up=0

say() { echo "# $*"; }
ok() { checks=$((checks + 1)); echo "ok $checks - $*"; }
notok() { # WHAT [EVIDENCE...]: a failed check; the test goes on
  checks=$((checks + 1)); failures=$((failures + 1))
  echo "not ok $checks - $1"
  shift
  local l
  for l in "$@"; do printf '%s\n' "$l" | sed 's/^/#   /'; done
}
check() { # WHAT CONDITION-RESULT(0/1) [EVIDENCE...]
  local what=$1 rc=$2; shift 2
  if [ "$rc" = 0 ]; then ok "$what"; else notok "$what" "$@"; fi
}
bail() { echo "Bail out! $*"; exit 1; }

js() { node -e "const j=JSON.parse(require('fs').readFileSync(0,'utf8')); const r=($1); console.log(typeof r==='object'?JSON.stringify(r):r)"; }
sql() { psql -X -At "$SLIPWAY_PGURL" -c "$1"; }
pg_admin_url() { echo "postgresql:///slipway?host=$S/pg&port=5432&user=postgres"; }
as_pg() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }
now_ms() { date +%s%3N; }

teardown() {
  local rc=$? pf
  if [ $_up = 1 ]; then
    # Whatever the test left stopped must be able to die.
    for pf in "$S"/run/*.pid; do [ -e "$pf" ] && kill -CONT "$(cat "$pf")" 2>/dev/null; done
    if [ ! -f "$S/pg/data/postmaster.pid" ]; then pg_start >/dev/null 2>&1 || true; fi
    scripts/stack down "$S" >/dev/null 2>&1 || true
    # What a test started beside the stack (a second replica) goes too.
    for pf in "$S"/run/*.pid; do [ -e "$pf" ] && kill "$(cat "$pf")" 2>/dev/null; done
  fi
  # As tests/run does for the other suites: any sanitizer report fails.
  if grep -rlE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$T" --include='*.log' >/dev/null 2>&1; then
    echo "not ok - sanitizer reports in:"; grep -rlE "ERROR: (Address|Leak)Sanitizer|runtime error:" "$T" --include='*.log'
    [ "$rc" -eq 0 ] && rc=1
  fi
  if [ "$rc" -eq 0 ] && [ "$failures" -eq 0 ] && [ -z "${KEEP_TMP:-}" ]; then
    rm -rf "$T"
  else
    echo "# logs kept in $T/stack/logs"
  fi
  exit "$rc"
}
trap teardown EXIT
trap 'exit 130' INT TERM

# ---- the stack

fault_up() {
  scripts/stack up "$S" >"$T/stack-up.log" 2>&1 || { cat "$T/stack-up.log"; bail "stack up"; }
  _up=1
  # shellcheck disable=SC1091
  . "$S/env"
}

svc_pid() { cat "$S/run/$1.pid" 2>/dev/null; }

# PostgreSQL exactly as scripts/stack started it (same data dir, socket, flags).
pg_stop_immediate() {
  as_pg "$PGBIN/pg_ctl" -D "$S/pg/data" -m immediate -w -t 30 stop >>"$T/pg_ctl.log" 2>&1
}
pg_start() {
  as_pg "$PGBIN/pg_ctl" -D "$S/pg/data" -l "$S/pg/server.log" -w -t 60 \
    -o "-c listen_addresses= -c port=5432 -c unix_socket_directories=$S/pg -c synchronous_commit=on -c fsync=on -c max_connections=300" \
    start >>"$T/pg_ctl.log" 2>&1 || return 1
  head -1 "$S/pg/data/postmaster.pid" > "$S/run/postgres.pid"
}

# ---- releases and agents

push_bundles() { # APP [MAKE-BUNDLES ARGS]: the demo app's releases for APP (default 1.0.0..4.0.0)
  local app=$1 f v; shift
  scripts/make-bundles --app "$app" --out "$T/bundles/$app" "$@" >/dev/null 2>"$T/bundles.err" \
    || bail "make-bundles $app: $(cat "$T/bundles.err")"
  for f in "$T/bundles/$app/$app"-*.tar.gz; do
    v=${f##*/$app-}; v=${v%.tar.gz}
    slipway artifact push "$f" --app "$app" --version "$v" >/dev/null 2>"$T/push.err" \
      || bail "push $app@$v: $(cat "$T/push.err")"
  done
}

start_agents() { # APP N: N agents labelled app=APP, environment=prod, half in eu, half in us
  local app=$1 n=$2 i rh
  for i in $(seq 1 "$n"); do
    if [ "$i" -le $(((n + 1) / 2)) ]; then rh=eu/$app$i; else rh=us/$app$i; fi
    scripts/stack agent "$S" "$rh" --label app="$app" --label environment=prod >/dev/null 2>"$T/agent.err" \
      || bail "agent $rh: $(cat "$T/agent.err")"
  done
  for i in $(seq 1 100); do
    [ "$(slipway -o json agents ls --app "$app" | js 'j.filter(a=>a.health==="online").length')" = "$n" ] && return 0
    sleep 0.1
  done
  bail "the $app agents did not register"
}

# ---- deployments

deploy() { # ARGS... ; prints the id
  local out
  out=$(slipway -o json deploy "$@" 2>"$T/deploy.err") || bail "deploy $*: $(cat "$T/deploy.err")"
  js 'j.id' <<<"$out"
}
show() { slipway -o json --timeout 5s deployment show "$1" 2>/dev/null; }
state() { show "$1" | js 'j.state' 2>/dev/null; }
terminal() { case "$1" in SUCCEEDED|FAILED|CANCELLED|ROLLED_BACK) return 0 ;; esac; return 1; }
# Waits until ID is in STATE or any final state; prints the state reached.
wait_state() { # ID STATE SECONDS
  local i s=""
  for i in $(seq 1 $(($3 * 5))); do
    s=$(state "$1")
    { [ "$s" = "$2" ] || terminal "$s"; } && break
    sleep 0.2
  done
  echo "$s"
}
# Waits (bounded) until at least N targets of ID succeeded.
wait_succeeded_targets() { # ID N SECONDS
  local i
  for i in $(seq 1 $(($3 * 5))); do
    [ "$(show "$1" | js 'j.targets.filter(t=>t.state==="succeeded").length' 2>/dev/null)" -ge "$2" ] 2>/dev/null && return 0
    terminal "$(state "$1")" && return 1
    sleep 0.2
  done
  return 1
}
timeline() { show "$1" | js 'j.timeline.map(e=>e.event+(e.detail?": "+e.detail:"")).join("\n")'; }
versions_of() { # APP -> the versions its agents run, sorted, unique
  slipway -o json agents ls --app "$1" | js 'j.map(a=>a.version).sort().filter((v,i,a)=>a.indexOf(v)===i).join(",")'
}
# Checks that every agent of APP runs VERSION, waiting (bounded: the registry
# learns it from heartbeats) up to 15 s.
check_versions() { # APP VERSION [WHAT]
  local i vs=""
  for i in $(seq 1 75); do
    vs=$(versions_of "$1")
    [ "$vs" = "$2" ] && break
    sleep 0.2
  done
  check "${3:+$3: }every $1 agent runs $2" "$([ "$vs" = "$2" ] && echo 0 || echo 1)" "agents run: $vs"
}

# Every instance of APP answers that it holds its secret (the demo app
# reports "present" when its DEMO_SECRET is set).
check_secret_present() { # APP WHAT
  local eps ep got bad=""
  eps=$(slipway -o json agents ls --app "$1" | js 'j.map(a=>a.endpoint).filter(e=>e).join(" ")')
  for ep in $eps; do
    got=$(node -e "fetch('http://$ep/').then(r=>r.json()).then(j=>console.log(j.secret))" 2>&1)
    [ "$got" = present ] || bad="$bad $ep:$got"
  done
  check "$2" "$([ -z "$bad" ] && [ -n "$eps" ] && echo 0 || echo 1)" "endpoints: '$eps'; missing:$bad"
}

# ---- health after the dependency's return

# Records the pids of the services that must not be restarted.
remember_pids() { # SVC...
  local s
  _pids=""
  for s in "$@"; do _pids="$_pids $s=$(svc_pid "$s")"; done
}

# Polls every service's grpc.health.v1 until all answer SERVING, for at
# most 10 s after the moment the dependency returned (T0_MS, epoch ms).
check_serving_within_10s() { # T0_MS WHAT
  local t0=$1 what=$2 out="" all="" left
  while :; do
    out=$(slipway -o json --timeout 2s health 2>&1)
    all=$(js 'Object.values(j).every(s=>s.status==="SERVING")' <<<"$out" 2>/dev/null)
    [ "$all" = true ] && break
    left=$((t0 + 10000 - $(now_ms)))
    [ "$left" -le 0 ] && break
    sleep 0.2
  done
  local took=$(( $(now_ms) - t0 ))
  if [ "$all" = true ]; then
    ok "every service SERVING $((took / 1000)).$(((took % 1000) / 100)) s after $what"
  else
    notok "every service SERVING within 10 s of $what" \
      "$(js 'Object.entries(j).map(([k,v])=>k+": "+v.status+(v.error?" ("+v.error+")":"")).join("\n")' <<<"$out" 2>/dev/null || echo "$out")"
    # Tell whether it comes back at all, later (for the record; not a check).
    local i
    for i in $(seq 1 60); do
      [ "$(slipway -o json --timeout 2s health 2>/dev/null | js 'Object.values(j).every(s=>s.status==="SERVING")' 2>/dev/null)" = true ] \
        && { say "(every service SERVING $(( ($(now_ms) - t0) / 1000 )) s after $what)"; return; }
      sleep 0.5
    done
    say "(still not every service SERVING $(( ($(now_ms) - t0) / 1000 )) s after $what)"
  fi
  local s p bad=""
  for p in $_pids; do
    s=${p%%=*}
    [ "$(svc_pid "$s")" = "${p#*=}" ] && kill -0 "${p#*=}" 2>/dev/null || bad="$bad $s"
  done
  check "no service restarted (same pids)" "$([ -z "$bad" ] && echo 0 || echo 1)" "restarted or gone:$bad"
}

# ---- the invariants at the end

# The deployment reached WANT.
check_outcome() { # ID WANT WHAT
  local s; s=$(state "$1")
  check "$3: deployment $1 is $2" "$([ "$s" = "$2" ] && echo 0 || echo 1)" \
    "state: $s; reason: $(show "$1" | js 'j.reason')" "timeline:" "$(timeline "$1")"
}

# targets.attempts is 1 (a deploy without retries) for every target that
# was sent a task (all but those "skipped", which were never reached).
check_attempts() { # ID
  local d; d=$(show "$1")
  check "every target of $1 that ran has attempts=1" \
    "$([ "$(js 'j.targets.every(t=>t.state==="skipped" ? t.attempts===0 : t.attempts===1)' <<<"$d")" = true ] && echo 0 || echo 1)" \
    "$(js 'j.targets.map(t=>t.agent+" "+t.state+" attempts="+t.attempts+" "+t.message).join("\n")' <<<"$d")"
}

# Every task id (optionally only those matching PATTERN) was started once
# by its agent, and reached it at one generation only.
check_tasks_once() { # [PATTERN]
  local pat=${1:-} bad
  bad=$(for f in "$S"/logs/agent-*.log; do
    grep -o 'msg="[^"]*" task=[^ ]* generation=[0-9]*' "$f" | grep -F -- "$pat" \
      | sed -E 's/^msg="([^"]*)" task=([^ ]*) generation=([0-9]*)$/\2|\3|\1/' \
      | awk -F'|' -v f="$(basename "$f" .log)" '
          { if (!(($1 SUBSEP $2) in g)) { g[$1 SUBSEP $2] = 1; ng[$1]++; gens[$1] = gens[$1] " " $2 }
            if ($3 == "task started") started[$1]++; seen[$1] = 1 }
          END { for (t in seen) if (ng[t] != 1 || started[t] != 1)
                  printf "%s: %s started %d times, generations:%s\n", f, t, started[t], gens[t] }'
  done)
  check "each task${pat:+ ($pat)} started once by its agent, at one generation" \
    "$([ -z "$bad" ] && echo 0 || echo 1)" "$bad"
}

# No agent marked lost: the registry, the audit log, the timeline, the log.
check_no_agent_lost() {
  local lost ev tl lines
  lost=$(sql "select string_agg(id, ' ') from orchestrator.agents where lost")
  check "no agent marked lost in orchestrator.agents" "$([ -z "$lost" ] && echo 0 || echo 1)" "lost: $lost"
  ev=$(sql "select count(*) from audit.entries where action = 'agent.lost'")
  check "no agent.lost audit event" "$([ "$ev" = 0 ] && echo 0 || echo 1)" \
    "$(sql "select resource from audit.entries where action = 'agent.lost'")"
  tl=$(sql "select count(*) from orchestrator.timeline where event = 'agent lost' or detail like 'agent lost%'")
  lines=$(grep -h 'msg="agent lost"' "$S"/logs/orchestrator*.log 2>/dev/null | head -6)
  check "no \"agent lost\" timeline line" "$([ "$tl" = 0 ] && echo 0 || echo 1)" \
    "$(sql "select deployment_id || ' ' || event || ': ' || detail from orchestrator.timeline where event = 'agent lost' or detail like 'agent lost%'")" \
    "orchestrator.log:" "$lines"
}

# Waits (bounded) for every outbox to drain, then checks the audit log.
check_audit() {
  local i n="" schemas
  schemas=$(sql "select table_schema from information_schema.tables where table_name = 'outbox' order by 1")
  for i in $(seq 1 150); do
    n=$(for s in $schemas; do echo "$s=$(sql "select count(*) from $s.outbox")"; done | grep -v '=0$' | tr '\n' ' ')
    [ -z "$n" ] && break
    sleep 0.2
  done
  check "every outbox empty ($(echo $schemas | tr ' ' ','))" "$([ -z "$n" ] && echo 0 || echo 1)" "not empty: $n"
  local v; v=$(slipway audit verify --state "$T/audit-state.json" 2>&1)
  check "slipway audit verify" $? "$v"
  # The log as the audit service serves it: no event id twice.
  local dup
  dup=$(slipway -o json audit log --limit 1000000 2>/dev/null | js 'j.map(e=>e.event_id).filter((x,i,a)=>a.indexOf(x)!==i).join(" ")' 2>&1)
  check "no duplicate event id in the audit log" "$([ -z "$dup" ] && echo 0 || echo 1)" "duplicates: $dup"
  # entries.event_id is UNIQUE, so an event re-sent under a NEW id is what
  # a double delivery looks like there: the same event (service, action,
  # resource, outcome, request id, time and details) recorded twice.
  dup=$(sql "select service || ' ' || action || ' ' || resource || ' x' || count(*) from audit.entries
             group by service, action, resource, outcome, request_id, time_ms, details::text having count(*) > 1")
  check "no audit event recorded twice under different ids" "$([ -z "$dup" ] && echo 0 || echo 1)" "$dup"
}

finish() {
  if [ "$failures" -eq 0 ]; then
    echo "$FAULT: $checks checks passed"
    exit 0
  fi
  echo "$FAULT: $failures of $checks checks failed"
  exit 1
}

# ---- the common shape: a rolling deploy with a fault in the middle

# Deploys APP VERSION to its targets in batches of 2 with a pause between
# batches; once MID targets have succeeded, records every service's pid and
# calls INJECT, which injects the fault, ends it and sets FAULT_END_MS (the
# moment the dependency was back) and FAULT_WHAT. Then checks SERVING within
# 10 s, the deployment's outcome (WANT) and attempts. Sets DEP to the id.
# The services whose pids must not change are those in KEEP_PIDS (default:
# every service).
rollout_with_fault() { # APP VERSION WANT INJECT [MID]
  local app=$1 v=$2 want=$3 inject=$4 mid=${5:-2} s
  DEP=$(deploy "$app" prod "$v" --batch 2 --pause "${FAULT_PAUSE:-3s}")
  say "deployment $DEP: $app@$v, batches of 2, pause ${FAULT_PAUSE:-3s}"
  wait_succeeded_targets "$DEP" "$mid" 60 || { notok "the deployment did not reach $mid succeeded targets before the fault" "$(timeline "$DEP")"; return; }
  say "fault in the middle: $(show "$DEP" | js '"batch "+j.current_batch+"/"+j.total_batches+", "+j.targets.filter(t=>t.state==="succeeded").length+" of "+j.targets.length+" targets done"')"
  remember_pids ${KEEP_PIDS:-audit policy secrets artifact orchestrator}
  FAULT_END_MS=0; FAULT_WHAT=""
  "$inject"
  check_serving_within_10s "$FAULT_END_MS" "$FAULT_WHAT"
  s=$(wait_state "$DEP" "$want" "${FAULT_WAIT:-120}")
  check_outcome "$DEP" "$want" "after $FAULT_WHAT"
  check_attempts "$DEP"
}
