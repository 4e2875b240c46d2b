# bench/orchestrator.sh - `bench/run orchestrator` (sourced by bench/run).
#
# A throwaway stack whose orchestrator is told a heartbeat interval of one
# second (SLIPWAY_ORCHESTRATOR_HEARTBEAT_INTERVAL=1s, so that its agents
# heartbeat once a second), and bench/agent_sim.c: many simulated agents,
# each with its own certificate and connection, that speak AgentControl and
# are instantly healthy. Measured:
#
#   1. a rolling deployment over 1,000 targets in batches of 50, from
#      CreateDeployment to SUCCEEDED (the deployment's own timestamps);
#   2. rollback dispatch: from the FAILED report of one target to the
#      rollback task being received by every touched target (the
#      simulator's clock), with the failure in the first and in the last
#      batch (50 and 1,000 touched targets);
#   3. the orchestrator's CPU (/proc/<pid>/stat) while N agents heartbeat
#      once a second, at each N of BENCH_ORCH_AGENTS, next to the same
#      shape of load (N connections, one call a second each) against the
#      rpc echo (slipway-testsvc Say) measured in the same run, and the
#      number of agents one orchestrator sustains under half a core,
#      derived from the measured cost;
#   4. how long the orchestrator takes to mark an agent lost once its
#      heartbeats stop, in heartbeat intervals.
#
# BENCH_ORCH_AGENTS ("1000 2000 4000"), BENCH_ORCH_WINDOW (seconds per CPU
# window, 10), BENCH_ORCH_TARGETS (1000), BENCH_ORCH_BATCH (50) and
# BENCH_REPS change the run.

bench_orchestrator() {
  local tmp; tmp=$(mktemp -d /tmp/slipway-bench.XXXXXX)
  chmod 755 "$tmp"
  local stack="$tmp/stack"
  trap 'scripts/stack down "$stack" >/dev/null 2>&1 || true; rm -rf "$tmp"' RETURN
  log "orchestrator: starting a stack (heartbeat interval ${BENCH_ORCH_INTERVAL:-1s})"
  SLIPWAY_ORCHESTRATOR_HEARTBEAT_INTERVAL=${BENCH_ORCH_INTERVAL:-1s} scripts/stack up "$stack" >/dev/null
  # shellcheck disable=SC1091
  ( . "$stack/env"
    set -euo pipefail
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    local P=$SLIPWAY_PKI_DIR lines=$tmp/lines
    local NT=${BENCH_ORCH_TARGETS:-1000} B=${BENCH_ORCH_BATCH:-50} W=${BENCH_ORCH_WINDOW:-10}
    local NS=${BENCH_ORCH_AGENTS:-1000 2000 4000}
    local opid pgpid tpid="" simpid="" epid=""
    opid=$(cat "$stack/run/orchestrator.pid")
    pgpid=$(cat "$stack/run/postgres.pid")
    grep -q '^slipway-orchest' "/proc/$opid/comm" || { log "orchestrator: pid $opid is not the orchestrator"; exit 1; }
    cleanup() {
      exec 7>&- 8>&- 2>/dev/null || true
      for p in $simpid $epid $tpid; do kill "$p" 2>/dev/null || true; done
      wait 2>/dev/null || true
    }
    trap cleanup EXIT
    : > "$lines"
    fig() { echo "figure $1 $2" >> "$lines"; }
    rat() { echo "ratio $1 $2" >> "$lines"; }
    mkdir -p "$tmp/certs"

    # ---- the simulators: commands on a FIFO, one JSON line per answer
    # sim_start NAME FD TARGET PID [FLAGS...]: its pid in $started
    local started=""
    sim_start() {
      local name=$1 fd=$2 target=$3 pid=$4; shift 4
      mkfifo "$tmp/$name.in"
      build/bench/bench-agent_sim --target "$target" --ca "$SLIPWAY_CA" --pki-dir "$P" \
        --cert-dir "$tmp/certs" --orch-pid "$pid" --pg-pid "$pgpid" "$@" \
        < "$tmp/$name.in" > "$tmp/$name.out" 2> "$tmp/$name.err" &
      started=$!
      eval "exec $fd>\"$tmp/$name.in\""
    }
    # sim NAME FD EVENT TIMEOUT_S COMMAND...: prints the answer
    sim() {
      local name=$1 fd=$2 ev=$3 to=$4 n i line; shift 4
      n=$(grep -c "\"event\": \"$ev\"" "$tmp/$name.out" || true)
      [ -n "$*" ] && echo "$*" >&"$fd"
      for i in $(seq 1 $((to * 20))); do
        line=$(grep "\"event\": \"$ev\"" "$tmp/$name.out" | sed -n "$((n + 1))p" || true)
        [ -n "$line" ] && { echo "$line"; return 0; }
        sleep 0.05
      done
      log "orchestrator: $name: no '$ev' answer to '$*' within ${to}s"; tail -5 "$tmp/$name.err" >&2
      return 1
    }

    # ---- 0. the baseline: the rpc echo with the same shape of load
    build/bin/slipway pki issue --dir "$P" --service testsvc --out "$tmp/testsvc" >/dev/null
    build/tests/slipway-testsvc --ca "$SLIPWAY_CA" --cert "$tmp/testsvc.crt" --key "$tmp/testsvc.key" \
      --port-file "$tmp/t.port" --log-level warn 2>"$tmp/t.log" &
    tpid=$!
    local tport; tport=$(wait_port "$tmp/t.port") || { log "orchestrator: testsvc did not start"; exit 1; }
    # Saturated: 32 calls in flight on one connection (bench-load), server CPU per call.
    local t0 t1 o rps
    t0=$(awk '{print $14 + $15}' "/proc/$tpid/stat")
    o=$(build/bench/bench-load --target "127.0.0.1:$tport" --ca "$SLIPWAY_CA" --cert "$SLIPWAY_CERT" \
        --key "$SLIPWAY_KEY" --method /slipway.test.v1.Echo/Say --concurrency 32 --seconds "$SECS" \
        --warmup 0 --payload-hex 0a0568656c6c6f)
    t1=$(awk '{print $14 + $15}' "/proc/$tpid/stat")
    rps=$(field rps "$o")
    fig echo_saturated_rps_32 "$rps"
    fig echo_saturated_server_us_per_call "$(awk -v a="$t0" -v b="$t1" -v r="$rps" -v s="$SECS" -v hz="$(getconf CLK_TCK)" \
      'BEGIN { printf "%.1f", (b - a) / hz * 1e6 / (r * s) }')"
    # Same shape as the heartbeats: N connections, one call a second each.
    sim_start echo 8 "127.0.0.1:$tport" "$tpid" --echo --interval-ms 1000
    epid=$started
    local n r
    declare -A echo_us echo_frac
    for n in $NS; do
      o=$(sim echo 8 grow $((30 + n / 20)) grow "$n" x x)
      log "orchestrator: echo baseline: $n connections up ($(field seconds "$o") s)"
      sleep 3
      local us="" fr="" cps=""
      for r in $(seq 1 "$REPS"); do
        o=$(sim echo 8 measure $((W + 30)) measure "$W")
        us+=" $(field orch_us_per_call "$o")"; fr+=" $(field orch_cpu_frac "$o")"
        cps+=" $(field calls_per_s "$o")"
      done
      echo_us[$n]=$(median <<<"$us"); echo_frac[$n]=$(median <<<"$fr")
      fig "echo_same_shape_calls_per_s_$n" "$(median <<<"$cps")"
      fig "echo_same_shape_cpu_frac_$n" "${echo_frac[$n]}"
      fig "echo_same_shape_server_us_per_call_$n" "${echo_us[$n]}"
      log "orchestrator: echo baseline at $n: ${echo_frac[$n]} core, ${echo_us[$n]} us per call"
    done
    exec 8>&-
    wait "$epid" 2>/dev/null || true
    epid=""
    kill "$tpid" 2>/dev/null || true
    wait "$tpid" 2>/dev/null || true
    tpid=""

    # ---- the orchestrator and its agents
    sim_start sim 7 "$SLIPWAY_ORCHESTRATOR_ADDR" "$opid"
    simpid=$started
    sleep 3
    o=$(sim sim 7 measure $((W + 30)) measure "$W")
    local idle; idle=$(field orch_cpu_frac "$o")
    fig orch_idle_cpu_frac "$idle"
    o=$(sim sim 7 grow $((30 + NT / 20)) grow "$NT" bench prod)
    local interval; interval=$(field interval_ms "$o")
    fig heartbeat_interval_ms "$interval"
    log "orchestrator: $NT agents registered in $(field seconds "$o") s (heartbeat every $interval ms)"

    # Releases: distinct bytes, so each version has its own digest.
    local nrel=$((REPS * 3)) v
    mkdir -p "$tmp/rel"
    for v in $(seq 1 "$nrel"); do
      echo "release $v" > "$tmp/rel/VERSION"
      tar czf "$tmp/rel-$v.tar.gz" -C "$tmp/rel" VERSION
      build/bin/slipway artifact push "$tmp/rel-$v.tar.gz" --app bench --version "$v.0.0" >/dev/null
    done
    local next=1
    sql() { psql -X -At "$SLIPWAY_PGURL" -c "$1"; }
    # deploy VERSION -> "id t_cli_start_ms"
    deploy() {
      local t id
      t=$(date +%s%3N)
      id=$(build/bin/slipway -o json deploy bench prod "$1" --batch "$B" | node -e \
        'console.log(JSON.parse(require("fs").readFileSync(0, "utf8")).id)')
      echo "$id $t"
    }
    # wait_done ID TIMEOUT_S -> the final state number (5 SUCCEEDED, 9 ROLLED_BACK)
    wait_done() {
      local s i
      for i in $(seq 1 $(($2 * 20))); do
        s=$(sql "SELECT state FROM orchestrator.deployments WHERE id = '$1'")
        case "$s" in 5|6|7|9) echo "$s"; return 0 ;; esac
        sleep 0.05
      done
      echo "$s"
    }

    # ---- 1. rolling deployment over NT targets
    local roll="" wall="" id ts st batches
    for r in $(seq 1 "$REPS"); do
      read -r id ts < <(deploy "$next.0.0"); next=$((next + 1))
      st=$(wait_done "$id" 300)
      [ "$st" = 5 ] || { log "orchestrator: rollout $id ended in state $st"; build/bin/slipway deployment show "$id" | head -20 >&2; exit 1; }
      read -r cms wms batches < <(sql "SELECT finished_ms - created_ms, finished_ms - $ts, total_batches
        FROM orchestrator.deployments WHERE id = '$id'" | tr '|' ' ')
      roll+=" $cms"; wall+=" $wms"
      log "orchestrator: rollout $r: $NT targets in $batches batches: $cms ms (from the CLI: $wms ms)"
    done
    local roll_ms; roll_ms=$(median <<<"$roll")
    fig "rollout_${NT}_targets_ms" "$roll_ms"
    fig "rollout_${NT}_targets_from_cli_ms" "$(median <<<"$wall")"
    fig rollout_batches "$batches"
    rat "rollout_${NT}_targets_ms_vs_target_10000ms" "$(ratio "$roll_ms" 10000)"

    # ---- 2. rollback dispatch, failing the first target of batch 1 and the last target
    local where idx
    for where in first last; do
      [ "$where" = first ] && idx=0 || idx=$((NT - 1))
      local mx="" p50="" touched="" done_ms=""
      for r in $(seq 1 "$REPS"); do
        v="$next.0.0"; next=$((next + 1))
        sim sim 7 armed 10 fail "$v" "$idx" >/dev/null
        read -r id ts < <(deploy "$v")
        o=$(sim sim 7 rollback 400)
        st=$(wait_done "$id" 300)
        [ "$st" = 9 ] || log "orchestrator: deployment $id ended in state $st, not ROLLED_BACK"
        grep -q '"complete": true' <<<"$o" || log "orchestrator: not every touched target got its rollback task: $o"
        mx+=" $(field max_ms "$o")"; p50+=" $(field p50_ms "$o")"; touched=$(field touched "$o")
        done_ms+=" $(sql "SELECT rollback_duration_ms FROM orchestrator.deployments WHERE id = '$id'")"
        log "orchestrator: rollback ($where batch fails, $touched touched): all tasks received $(field max_ms "$o") ms after the FAILED report"
      done
      local m; m=$(median <<<"$mx")
      fig "rollback_dispatch_ms_${where}_batch_fails" "$m"
      fig "rollback_dispatch_p50_ms_${where}_batch_fails" "$(median <<<"$p50")"
      fig "rollback_touched_targets_${where}_batch_fails" "$touched"
      fig "rollback_completed_ms_${where}_batch_fails" "$(median <<<"$done_ms")"
      rat "rollback_dispatch_ms_${where}_batch_fails_vs_target_500ms" "$(ratio "$m" 500)"
    done

    # ---- 4. loss detection: stop one agent's heartbeats at a time (before
    # the heartbeat phase, while the machine has room: an overloaded
    # simulator sends heartbeats late and blurs what is measured here)
    local fs="" fl="" fms=""
    for r in $(seq 1 "$REPS"); do
      o=$(sim sim 7 lost 60 stop $((NT - r)))
      fs+=" $(field from_stop_intervals "$o")"; fl+=" $(field from_last_heartbeat_intervals "$o")"
      fms+=" $(field from_stop_ms "$o")"
      log "orchestrator: agent $((NT - r)) marked lost $(field from_stop_intervals "$o") intervals after its heartbeats stopped"
    done
    local lost; lost=$(median <<<"$fs")
    fig loss_detect_ms_from_stop "$(median <<<"$fms")"
    fig loss_detect_intervals_from_stop "$lost"
    fig loss_detect_intervals_from_last_heartbeat "$(median <<<"$fl")"
    rat loss_detect_intervals_from_stop_vs_target_3 "$(ratio "$lost" 3)"

    # ---- 3. heartbeats: the orchestrator's CPU at N agents
    local fit=""
    fit+="0 $idle"$'\n'
    for n in $NS; do
      if [ "$n" -gt "$NT" ]; then
        o=$(sim sim 7 grow $((30 + n / 20)) grow "$n" idle prod)
        log "orchestrator: $n agents registered ($(field seconds "$o") s)"
      fi
      sleep 5 # registrations' audit events, heartbeats settle
      local fr="" us="" pg="" p99="" hbs="" sc=""
      for r in $(seq 1 "$REPS"); do
        o=$(sim sim 7 measure $((W + 30)) measure "$W")
        fr+=" $(field orch_cpu_frac "$o")"; us+=" $(field orch_us_per_call "$o")"
        pg+=" $(field pg_cpu_frac "$o")"; p99+=" $(field p99_us "$o")"; hbs+=" $(field calls_per_s "$o")"
        sc+=" $(field sim_cpu_frac "$o")"
        [ "$(field errors "$o")" = 0 ] || log "orchestrator: heartbeat errors at $n: $o"
      done
      local f u h; f=$(median <<<"$fr"); u=$(median <<<"$us"); h=$(median <<<"$hbs")
      # The line is fitted to the heartbeats actually answered per second
      # (agents at one a second), in case the simulator fell behind.
      fit+="$h $f"$'\n'
      awk -v h="$h" -v n="$n" 'BEGIN { exit !(h < 0.95 * n) }' &&
        log "orchestrator: at $n agents only $h heartbeats/s were sent: the machine is the limit here"
      fig "heartbeats_per_s_$n" "$h"
      fig "sim_cpu_frac_$n" "$(median <<<"$sc")"
      fig "orch_cpu_frac_$n" "$f"
      fig "orch_us_per_heartbeat_$n" "$u"
      fig "pg_cpu_frac_$n" "$(median <<<"$pg")"
      fig "heartbeat_p99_us_$n" "$(median <<<"$p99")"
      [ -n "${echo_us[$n]:-}" ] && rat "heartbeat_us_vs_echo_same_shape_$n" "$(ratio "$u" "${echo_us[$n]}")"
      log "orchestrator: $n agents heartbeating: $f core, $u us per heartbeat"
    done
    # Least squares over (agents, core) including the idle point: fixed + marginal cost.
    local ab slope icpt derived nmax fmax conservative
    ab=$(awk 'NF == 2 { n++; sx += $1; sy += $2; sxx += $1 * $1; sxy += $1 * $2 }
      END { b = (n * sxy - sx * sy) / (n * sxx - sx * sx); a = (sy - b * sx) / n; printf "%.9f %.5f", b, a }' <<<"$fit")
    read -r slope icpt <<<"$ab"
    derived=$(awk -v b="$slope" -v a="$icpt" 'BEGIN { printf "%d", (0.5 - a) / b }')
    # The point with the most heartbeats: every bit of CPU charged to them.
    read -r nmax fmax < <(sort -g <<<"$fit" | tail -1)
    conservative=$(awk -v n="$nmax" -v f="$fmax" 'BEGIN { printf "%d", 0.5 * n / f }')
    fig heartbeat_marginal_us "$(awk -v b="$slope" -v i="$interval" 'BEGIN { printf "%.1f", b * 1e6 * i / 1000 }')"
    fig heartbeat_fixed_cpu_frac "$icpt"
    fig agents_at_half_core_derived "$derived"
    fig agents_at_half_core_all_cost_per_agent "$conservative"
    rat agents_at_half_core_derived_vs_target_10000 "$(ratio "$derived" 10000)"

    exec 7>&-
    wait "$simpid" 2>/dev/null || true
    simpid=""
    write_json "$out_dir/orchestrator.json" < "$lines"
    echo "orchestrator: $NT targets in batches of $B; rollback dispatch; heartbeats at $NS agents (derived: $derived at 0.5 core); loss detection"
    printf "%-52s %14s\n" figure value
    awk '{ printf "%-52s %14s\n", $2, $3 }' "$lines"
    echo "written: $out_dir/orchestrator.json"
  )
}
