#!/usr/bin/env bash
# tests/faults/replica_freeze.sh - fault 5 of issue 11: SIGSTOP for 20 s
# (FAULT_DOWN) of the orchestrator replica the agents talk to, with a
# second replica running. The agents are given both addresses; they must
# move to the survivor within a heartbeat or two, the survivor takes the
# deployment over when its lease expires, in-flight tasks are not sent
# again under a new generation, no agent is marked lost, the deployment
# succeeds, and once the frozen replica is resumed every service is
# SERVING within 10 s and the frozen replica does not undo the survivor's
# work.
. "$(dirname "$0")/lib.sh"

down=${FAULT_DOWN:-20}
fault_up
p1=$(cat "$S/run/orchestrator.port")
setsid "$S/run/orchestrator.sh" --listen 127.0.0.1:0 --port-file "$T/orch2.port" --replica r2 --metrics-listen 127.0.0.1:0 \
  >>"$S/logs/orchestrator-r2.log" 2>&1 </dev/null &
r2=$!
echo "$r2" > "$S/run/orchestrator-r2.pid"   # stack down stops it too
for i in $(seq 1 100); do [ -s "$T/orch2.port" ] && break; sleep 0.1; done
[ -s "$T/orch2.port" ] || bail "the second replica did not start"
p2=$(cat "$T/orch2.port")
say "replicas: main on $p1, r2 on $p2"
push_bundles web
n=6
for i in $(seq 1 $n); do
  if [ "$i" -le 3 ]; then rh=eu/web$i; else rh=us/web$i; fi
  scripts/stack agent "$S" "$rh" --label app=web --label environment=prod \
    --orchestrator-addr "127.0.0.1:$p1,127.0.0.1:$p2" >/dev/null 2>"$T/agent.err" \
    || bail "agent $rh: $(cat "$T/agent.err")"
done
for i in $(seq 1 100); do
  [ "$(slipway -o json agents ls --app web | js 'j.filter(a=>a.health==="online").length')" = "$n" ] && break
  sleep 0.1
done
deploy web prod 1.0.0 --batch 6 --wait >/dev/null
ok "web 1.0.0 on 6 agents that know both replicas"

freeze() {
  local main; main=$(svc_pid orchestrator)
  say "SIGSTOP of the main replica (pid $main) for $down s"
  kill -STOP "$main"
  sleep "$down"
  kill -CONT "$main"
  FAULT_END_MS=$(now_ms); FAULT_WHAT="the frozen replica's resumption"
  say "main replica resumed"
}
# The deployment lives on the main replica (it admits what it is asked);
# freeze it once two targets are done.
KEEP_PIDS="audit policy secrets artifact orchestrator" rollout_with_fault web 4.0.0 SUCCEEDED freeze
check_versions web 4.0.0
tk=$(sql "select count(*) from orchestrator.timeline where deployment_id = '$DEP' and event = 'taken over'")
say "timeline 'taken over' lines: $tk"
check "the survivor kept r2's agents: no agent re-registered with a re-sent task" \
  "$([ "$(sql "select count(*) from orchestrator.timeline where deployment_id = '$DEP' and event = 'task re-sent'")" = 0 ] && echo 0 || echo 1)" \
  "$(sql "select detail from orchestrator.timeline where deployment_id = '$DEP' and event = 'task re-sent'")"
check_tasks_once
check_no_agent_lost
check_audit
kill "$r2" 2>/dev/null
finish
