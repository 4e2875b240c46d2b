# bench/secrets.sh - `bench/run secrets`: Secrets/Fetch of a bundle of 20
# secrets sealed to an agent, calls/s and latency with 1 and 8 callers, next
# to the rpc echo baseline (slipway-testsvc Say) measured in the same run
# with the same load tool, PKI and machine. Sourced by bench/run.
#
# The secrets service runs in a full local stack (scripts/stack up:
# PostgreSQL with synchronous commit, the policy service answering
# Authorize, the audit service receiving every fetch's event), so each
# Fetch is the real one: grant lookup, authorization (cached), 20 data-key
# unwraps and value decryptions, pack + Ed25519 sign + crypto_box_seal, and
# the fetch's audit event committed before the answer. bench-sealed adds the
# cryptographic floor (build and open of the same bundle, no I/O).

# profile_run TMP PAYLOAD: see BENCH_PROFILE above. Runs inside
# bench_secrets' subshell (uses its load, pg_app, st and P).
profile_run() {
  local tmp=$1 payload=$2 prof pids comp perfs=() p
  command -v perf >/dev/null || { log "secrets: BENCH_PROFILE=1 needs perf"; return 0; }
  psql -X -q "$SLIPWAY_PGURL" -c "SELECT pg_stat_statements_reset()" >/dev/null 2>&1 || true
  for comp in secrets pg_secrets audit pg_audit; do
    case $comp in
      pg_secrets) pids=$(pg_app slipway-secrets) ;;
      pg_audit) pids=$(pg_app slipway-audit) ;;
      *) pids=$(cat "$st/run/$comp.pid") ;;
    esac
    pids=$(echo $pids | tr ' ' ',')
    [ -n "$pids" ] || continue
    perf record -q -e cpu-clock -F 2000 -g -p "$pids" -o "$tmp/perf-$comp.data" \
      -- sleep "$((SECS + 1))" >/dev/null 2>"$tmp/perf-$comp.log" &
    perfs+=($!)
  done
  sleep 0.2
  o=$(load "$SLIPWAY_SECRETS_ADDR" /slipway.v1.Secrets/Fetch 8 "$payload" "$tmp/agent")
  for p in "${perfs[@]}"; do wait "$p" || true; done
  local calls; calls=$(awk -v r="$(field rps "$o")" -v s="$SECS" 'BEGIN { printf "%d", r * (s + 1) }')
  for comp in secrets pg_secrets audit pg_audit; do
    [ -s "$tmp/perf-$comp.data" ] || continue
    prof=$out_dir/secrets-profile-$comp.txt
    {
      echo "# perf record -e cpu-clock -F 2000 -g: $comp during 8 callers, ${SECS}s + 1s warm-up, ~$calls fetches"
      echo "# self time by shared object"
      perf report -i "$tmp/perf-$comp.data" --no-children --sort dso --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | head -15 || true
      echo "# self time by symbol"
      perf report -i "$tmp/perf-$comp.data" --no-children --sort dso,sym --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -40 || true
      echo "# inclusive time by symbol (callers included)"
      perf report -i "$tmp/perf-$comp.data" --children --sort sym --stdio -g none 2>/dev/null \
        | grep -v '^#' | grep -v '^$' | head -40 || true
    } >"$prof"
    echo "--- profile: $comp (head of $prof)"
    sed -n '1,14p' "$prof"
  done
  if psql -X -At "$SLIPWAY_PGURL" -c "SELECT 1 FROM pg_stat_statements LIMIT 1" >/dev/null 2>&1; then
    prof=$out_dir/secrets-profile-sql.txt
    psql -X "$SLIPWAY_PGURL" -c "SELECT calls, round(total_exec_time::numeric, 1) AS total_ms,
        round((total_exec_time / calls * 1000)::numeric, 1) AS mean_us, rows,
        left(regexp_replace(query, '\s+', ' ', 'g'), 110) AS query
      FROM pg_stat_statements WHERE calls > 0 ORDER BY total_exec_time DESC LIMIT 15" >"$prof" 2>&1 || true
    echo "--- statements by time (pg_stat_statements, $prof)"
    cat "$prof"
  fi
}

bench_secrets() {
  local tmp; tmp=$(mktemp -d /tmp/slipway-bench-secrets.XXXXXX)
  chmod 755 "$tmp" # PostgreSQL (another user) must reach the stack inside
  local rc=0
  # Not `( ... ) || rc=$?`: that would switch errexit off inside the
  # subshell. bench/run runs with set -e; the subshell sets its own.
  set +e
  (
    set -euo pipefail
    st="$tmp/stack"
    tpid=""
    cleanup() {
      [ -n "$tpid" ] && kill "$tpid" 2>/dev/null && wait "$tpid" 2>/dev/null
      scripts/stack down "$st" >/dev/null 2>&1 || true
    }
    trap cleanup EXIT
    [ "${BENCH_PROFILE:-0}" = 1 ] && export SLIPWAY_STACK_PG_STATEMENTS=1
    scripts/stack up "$st" >"$tmp/stack.log" 2>&1 || { cat "$tmp/stack.log" >&2; log "secrets: the stack did not start"; exit 1; }
    # shellcheck disable=SC1091
    . "$st/env"
    sw=build/bin/slipway
    P=$SLIPWAY_PKI_DIR
    td=$(cat "$P/trust-domain")
    agent="spiffe://$td/agent/r1/bench-host"
    $sw pki issue --dir "$P" --service orchestrator --out "$tmp/orch" >/dev/null
    $sw pki issue --dir "$P" --agent r1/bench-host --out "$tmp/agent" >/dev/null
    $sw pki issue --dir "$P" --service testsvc --out "$tmp/testsvc" >/dev/null
    $sw secrets keygen --out "$tmp/agentkey" >/dev/null
    $sw secrets keys --out "$tmp" >/dev/null

    # 20 secrets of 40 bytes (a typical password or API token), one grant.
    local names=() i
    umask 077
    for i in $(seq -w 0 19); do
      od -An -N20 -tx1 /dev/urandom | tr -d ' \n' >"$tmp/v"
      $sw secrets put "SECRET_$i" --scope bench/prod --file "$tmp/v" >/dev/null
      names+=("SECRET_$i")
    done
    rm -f "$tmp/v"
    # Grants go only to an agent enrolled for the scope, with its key pinned.
    $sw agents enroll "$agent" --app bench --env prod --sealing-key "$tmp/agentkey.pub" >/dev/null
    $sw --cert "$tmp/orch.crt" --key "$tmp/orch.key" secrets grant --deployment bench-dep \
      --agent "$agent" --agent-pub "$tmp/agentkey.pub" --scope bench/prod --ttl 24h "${names[@]}" >/dev/null
    # The agent opens what it gets: the bundle is the real one.
    $sw --cert "$tmp/agent.crt" --key "$tmp/agent.key" -o json secrets fetch-check --deployment bench-dep \
      --agent "$agent" --agent-key "$tmp/agentkey.key" --pin "$tmp/secrets-sign.pub" >"$tmp/check.json"
    [ "$(grep -c '"name"' "$tmp/check.json")" -eq 20 ] || { log "secrets: the bundle does not hold 20 secrets"; exit 1; }

    build/tests/slipway-testsvc --ca "$P/ca.crt" --cert "$tmp/testsvc.crt" --key "$tmp/testsvc.key" \
      --port-file "$tmp/t.port" --log-level warn 2>"$tmp/testsvc.log" &
    tpid=$!
    tport=$(wait_port "$tmp/t.port") || { log "secrets: testsvc did not start"; exit 1; }

    load() { # TARGET METHOD CONC PAYLOAD CERT
      build/bench/bench-load --target "$1" --ca "$P/ca.crt" --cert "$5.crt" --key "$5.key" \
        --method "$2" --concurrency "$3" --seconds "$SECS" --warmup 1 --payload-hex "$4" || true
    }
    # EchoRequest{text: "hello"}; FetchRequest{deployment_id: "bench-dep"}
    local echo_payload=0a0568656c6c6f fetch_payload=0a0962656e63682d646570
    # CPU (ticks of 10 ms) used by the stack's processes, to split a fetch's
    # cost between the secrets service, PostgreSQL, the audit and policy
    # services; and by the echo server.
    ticks() { # PID...
      local t=0 p
      for p in "$@"; do
        [ -r "/proc/$p/stat" ] && t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat")))
      done
      echo "$t"
    }
    pg_pids() { local pm; pm=$(cat "$st/run/postgres.pid"); echo "$pm" $(ps -o pid= --ppid "$pm"); }
    pg_app() { # APPLICATION_NAME: the backends serving that client
      psql -X -At "$SLIPWAY_PGURL" -c "SELECT pid FROM pg_stat_activity WHERE application_name = '$1'" | tr '\n' ' '
    }
    declare -A cpu
    local comps="secrets audit policy"
    declare -A rps p50 p99
    local c r o k errs t0 t1 comp
    for c in 1 8; do
      for r in $(seq 1 "$REPS"); do
        # Interleaved, so drift in machine load hits both.
        o=$(load "127.0.0.1:$tport" /slipway.test.v1.Echo/Say "$c" "$echo_payload" "$P/admin"); k="e_$c"
        rps[$k]+=" $(field rps "$o")"; p50[$k]+=" $(field p50_us "$o")"; p99[$k]+=" $(field p99_us "$o")"
        for comp in $comps; do cpu[b_$comp]=$(ticks "$(cat "$st/run/$comp.pid")"); done
        cpu[b_pg]=$(ticks $(pg_pids))
        local pgs pga
        pgs=$(pg_app slipway-secrets); pga=$(pg_app slipway-audit)
        cpu[b_pgs]=$(ticks $pgs); cpu[b_pga]=$(ticks $pga)
        o=$(load "$SLIPWAY_SECRETS_ADDR" /slipway.v1.Secrets/Fetch "$c" "$fetch_payload" "$tmp/agent"); k="f_$c"
        for comp in $comps; do cpu[${c}_$comp]=$(( ${cpu[${c}_$comp]:-0} + $(ticks "$(cat "$st/run/$comp.pid")") - cpu[b_$comp] )); done
        cpu[${c}_pg]=$(( ${cpu[${c}_pg]:-0} + $(ticks $(pg_pids)) - cpu[b_pg] ))
        cpu[${c}_pgs]=$(( ${cpu[${c}_pgs]:-0} + $(ticks $pgs) - cpu[b_pgs] ))
        cpu[${c}_pga]=$(( ${cpu[${c}_pga]:-0} + $(ticks $pga) - cpu[b_pga] ))
        cpu[${c}_calls]=$(awk -v a="${cpu[${c}_calls]:-0}" -v r="$(field rps "$o")" -v s="$SECS" 'BEGIN { printf "%d", a + r * (s + 1) }')
        errs=$(field errors "$o")
        [ "$errs" = 0 ] || { log "secrets: $errs failed fetches: $o"; exit 1; }
        rps[$k]+=" $(field rps "$o")"; p50[$k]+=" $(field p50_us "$o")"; p99[$k]+=" $(field p99_us "$o")"
        log "secrets: $c caller(s), round $r done"
      done
    done
    # BENCH_PROFILE=1: one more 8-caller run under `perf record` (software
    # cpu-clock sampling, call graphs), one profile per process group: the
    # secrets service, PostgreSQL's backends serving it, the audit service
    # and PostgreSQL's backends serving that; plus the statements PostgreSQL
    # spent its time on (pg_stat_statements, loaded by the stack when
    # SLIPWAY_STACK_PG_STATEMENTS=1). Reports land in
    # build/bench/secrets-profile-*.txt and their heads are printed.
    if [ "${BENCH_PROFILE:-0}" = 1 ]; then
      profile_run "$tmp" "$fetch_payload"
    fi
    o=$(build/bench/bench-sealed --items 20 --value-bytes 40 --seconds 2)
    # Every fetch was audited: wait for the relay, then count what arrived.
    for _ in $(seq 1 300); do
      [ "$(psql -X -At "$SLIPWAY_PGURL" -c 'SELECT count(*) FROM secrets.outbox')" = 0 ] && break
      sleep 0.2
    done
    fetched=$(psql -X -At "$SLIPWAY_PGURL" -c "SELECT count(*) FROM audit.entries WHERE service = 'secrets' AND action = 'secret.fetch'" 2>/dev/null || echo 0)

    {
      for c in 1 8; do
        local fr fp50 fp99 er ep50 ep99
        fr=$(median <<<"${rps[f_$c]}"); fp50=$(median <<<"${p50[f_$c]}"); fp99=$(median <<<"${p99[f_$c]}")
        er=$(median <<<"${rps[e_$c]}"); ep50=$(median <<<"${p50[e_$c]}"); ep99=$(median <<<"${p99[e_$c]}")
        echo "figure fetch_rps_$c $fr"
        echo "figure fetch_p50_us_$c $fp50"
        echo "figure fetch_p99_us_$c $fp99"
        echo "figure echo_rps_$c $er"
        echo "figure echo_p50_us_$c $ep50"
        echo "figure echo_p99_us_$c $ep99"
        local label
        for comp in $comps pg pgs pga; do
          case $comp in pg) label=postgres_all ;; pgs) label=postgres_secrets ;; pga) label=postgres_audit ;; *) label=$comp ;; esac
          echo "figure cpu_us_per_fetch_${c}_$label $(awk -v t="${cpu[${c}_$comp]}" -v n="${cpu[${c}_calls]}" 'BEGIN { if (n == 0) print 0; else printf "%.1f", t * 10000 / n }')"
        done
        echo "ratio fetch_rps_${c}_vs_echo $(ratio "$fr" "$er")"
        echo "ratio fetch_p99_us_${c}_vs_echo $(ratio "$fp99" "$ep99")"
      done
      echo "figure bundle_secrets 20"
      echo "figure bundle_value_bytes 40"
      echo "figure sealed_box_bytes $(field box_bytes "$o")"
      echo "figure sealed_build_us $(field build_us "$o")"
      echo "figure sealed_open_us $(field open_us "$o")"
      echo "figure fetch_audit_events $fetched"
    } >"$tmp/lines"
    write_json "$out/secrets.json" <"$tmp/lines"
    echo "secrets: Secrets/Fetch of a 20-secret bundle sealed to an agent vs rpc echo (testsvc Say), medians of $REPS x ${SECS}s"
    echo "targets: fetch_rps_*_vs_echo >= 0.5, fetch_p99_us_* <= 5000"
    printf "%-34s %12s\n" figure value
    awk '{ printf "%-34s %12s\n", $2, $3 }' "$tmp/lines"
    echo "written: $out/secrets.json"
  )
  rc=$?
  set -e
  rm -rf "$tmp"
  return $rc
}
