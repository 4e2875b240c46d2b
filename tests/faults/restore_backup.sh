#!/usr/bin/env bash
# tests/faults/restore_backup.sh - fault 8 of issue 11: the orchestrator's
# database restored from a backup taken before the last deployments. The
# agents have since seen task generations the restored database never
# issued; new tasks must still be numbered above them (an agent ignores a
# task below the highest generation it has seen), so the next deployment
# succeeds, and the operator is warned in the orchestrator's log.
. "$(dirname "$0")/lib.sh"

fault_up
push_bundles web
start_agents web 3
deploy web prod 1.0.0 --batch 3 --wait >/dev/null
pg_dump -Fc -n orchestrator "$SLIPWAY_PGURL" -f "$T/orchestrator.dump" 2>"$T/dump.err" \
  || bail "pg_dump: $(cat "$T/dump.err")"
ok "web 1.0.0 on 3 agents; backup of the orchestrator's schema taken"
for v in 2.0.0 1.0.0 2.0.0; do deploy web prod "$v" --batch 1 --wait >/dev/null; done
gens=$(sql "select string_agg(id || '=' || next_generation, ' ' order by id) from orchestrator.agents")
say "three more deployments after the backup; generations now: $gens"

scripts/stack kill "$S" orchestrator
psql -X -q -v ON_ERROR_STOP=1 "$SLIPWAY_PGURL" -c "DROP SCHEMA orchestrator CASCADE" >/dev/null \
  || bail "drop schema"
pg_restore -d "$SLIPWAY_PGURL" "$T/orchestrator.dump" 2>"$T/restore.err" || bail "pg_restore: $(cat "$T/restore.err")"
gens=$(sql "select string_agg(id || '=' || next_generation, ' ' order by id) from orchestrator.agents")
say "restored; generations in the database: $gens"
remember_pids audit policy secrets artifact
t0=$(now_ms)
scripts/stack start "$S" orchestrator >"$T/start.log" 2>&1 || bail "the orchestrator did not start: $(cat "$T/start.log")"
check_serving_within_10s "$t0" "the orchestrator's restart on the restored database"

DEP=$(deploy web prod 4.0.0 --batch 3)
s=$(wait_state "$DEP" SUCCEEDED 90)
check_outcome "$DEP" SUCCEEDED "the first deployment after the restore"
check_versions web 4.0.0
w=$(grep -c "restored from an older backup" "$S"/logs/orchestrator.log)
check "the operator is warned that the database is behind the agents ($w log lines)" \
  "$([ "$w" -ge 1 ] && echo 0 || echo 1)"
n=$(cat "$S"/logs/agent-*.log | grep -c "msg=\"task started\" task=$DEP:")
check "each of the 3 targets started its task once ($n task started lines)" "$([ "$n" = 3 ] && echo 0 || echo 1)"
check_no_agent_lost
check_audit
finish
