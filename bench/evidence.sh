# bench/evidence.sh - `bench/run evidence` (sourced by bench/run).
#
# A throwaway stack and bench/agent_sim.c's simulated agents (instantly
# healthy), three environments of 10, 100 and 1,000 targets, one rolling
# deployment on each (batches of 10, 50, 50); then, for each deployment:
#
#   - `slipway evidence export`: wall time (from the CLI's own clock) and
#     bundle size in bytes and audit entries;
#   - `slipway evidence verify` (offline, the log's public key only):
#     in-process time (the CLI's clock: read, parse, every proof, the
#     views) and wall time of the whole command, medians of BENCH_REPS;
#   - the baseline, measured in the same run: SHA-256 over the bundle's
#     bytes in one process (python3's hashlib, OpenSSL), so the ratio says
#     how many times hashing the file once verifying costs.
#
# Targets (bench/README.md): verify of 1,000 targets <= 1 s, bundle of
# 1,000 targets <= 2 MiB. BENCH_EVIDENCE_SIZES ("10 100 1000") changes the
# run.

bench_evidence() {
  local tmp; tmp=$(mktemp -d /tmp/slipway-bench.XXXXXX)
  chmod 755 "$tmp"
  local stack="$tmp/stack"
  trap 'scripts/stack down "$stack" >/dev/null 2>&1 || true; rm -rf "$tmp"' RETURN
  log "evidence: starting a stack"
  scripts/stack up "$stack" >/dev/null
  # shellcheck disable=SC1091
  ( . "$stack/env"
    set -euo pipefail
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
    local P=$SLIPWAY_PKI_DIR lines=$tmp/lines simpid="" opid pgpid
    local SIZES=${BENCH_EVIDENCE_SIZES:-10 100 1000}
    opid=$(cat "$stack/run/orchestrator.pid")
    pgpid=$(cat "$stack/run/postgres.pid")
    cleanup() {
      exec 7>&- 2>/dev/null || true
      [ -n "$simpid" ] && kill "$simpid" 2>/dev/null
      wait 2>/dev/null || true
      scripts/stack down "$stack" >/dev/null 2>&1 || true # also when a step failed
    }
    trap cleanup EXIT
    : > "$lines"
    fig() { echo "figure $1 $2" >> "$lines"; }
    rat() { echo "ratio $1 $2" >> "$lines"; }
    jf() { node -e "const j=JSON.parse(require('fs').readFileSync(0,'utf8')); console.log(j$1)"; }
    sql() { psql -X -At "$SLIPWAY_PGURL" -c "$1"; }
    mkdir -p "$tmp/certs"
    mkfifo "$tmp/sim.in"
    build/bench/bench-agent_sim --target "$SLIPWAY_ORCHESTRATOR_ADDR" --ca "$SLIPWAY_CA" --pki-dir "$P" \
      --cert-dir "$tmp/certs" --orch-pid "$opid" --pg-pid "$pgpid" \
      < "$tmp/sim.in" > "$tmp/sim.out" 2> "$tmp/sim.err" &
    simpid=$!
    exec 7>"$tmp/sim.in"
    sim_wait() { # EVENT TIMEOUT_S N-BEFORE
      local i line
      for i in $(seq 1 $(($2 * 20))); do
        line=$(grep "\"event\": \"$1\"" "$tmp/sim.out" | sed -n "$(($3 + 1))p" || true)
        [ -n "$line" ] && { echo "$line"; return 0; }
        sleep 0.05
      done
      log "evidence: no '$1' from the simulator"; tail -5 "$tmp/sim.err" >&2; return 1
    }
    local total=0 n k=0 v=0
    for n in $SIZES; do
      total=$((total + n))
      echo "grow $total ev$n prod" >&7
      sim_wait grow $((30 + n / 10)) "$k" >/dev/null
      k=$((k + 1))
      log "evidence: $n agents of app ev$n registered"
      v=$((v + 1))
      mkdir -p "$tmp/rel"; echo "release $n" > "$tmp/rel/VERSION"
      tar czf "$tmp/rel-$n.tar.gz" -C "$tmp/rel" VERSION
      build/bin/slipway artifact push "$tmp/rel-$n.tar.gz" --app "ev$n" --version 1.0.0 >/dev/null
    done
    for n in $SIZES; do
      local b=$((n < 50 ? n : 50)) id s i
      id=$(build/bin/slipway -o json deploy "ev$n" prod 1.0.0 --batch "$b" | jf .id)
      for i in $(seq 1 6000); do
        s=$(sql "SELECT state FROM orchestrator.deployments WHERE id = '$id'")
        case "$s" in 5|6|7|9) break ;; esac
        sleep 0.05
      done
      [ "$s" = 5 ] || { log "evidence: deployment $id of $n targets ended in state $s"; exit 1; }
      fig "rollout_${n}_targets_ms" "$(sql "SELECT finished_ms - created_ms FROM orchestrator.deployments WHERE id = '$id'")"
      local o ex bytes entries
      o=$(build/bin/slipway -o json evidence export "$id" --out "$tmp/ev$n.json" --wait 120)
      ex=$(printf "%.4f" "$(jf .seconds <<<"$o")"); bytes=$(jf .bytes <<<"$o"); entries=$(jf .entries <<<"$o")
      log "evidence: $n targets: exported $entries entries, $bytes bytes in $ex s"
      local vin="" vwall="" hs="" r t0 t1
      for r in $(seq 1 "$REPS"); do
        t0=$(date +%s%N)
        o=$(build/bin/slipway -o json evidence verify "$tmp/ev$n.json" --verifier-key "$SLIPWAY_AUDIT_VERIFIER_KEY")
        t1=$(date +%s%N)
        [ "$(jf .ok <<<"$o")" = true ] || { log "evidence: verify failed: $o"; exit 1; }
        vin+=" $(printf "%.6f" "$(jf .seconds <<<"$o")")"
        vwall+=" $(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.6f", (b - a) / 1e9 }')"
        hs+=" $(python3 -c 'import hashlib, sys, time
t = time.perf_counter(); d = open(sys.argv[1], "rb").read(); hashlib.sha256(d).digest(); print("%.6f" % (time.perf_counter() - t))' "$tmp/ev$n.json")"
      done
      local vm vw hm
      vm=$(median <<<"$vin"); vw=$(median <<<"$vwall"); hm=$(median <<<"$hs")
      fig "export_${n}_targets_s" "$ex"
      fig "bundle_${n}_targets_bytes" "$bytes"
      fig "bundle_${n}_targets_entries" "$entries"
      fig "verify_${n}_targets_s" "$vm"
      fig "verify_${n}_targets_wall_s" "$vw"
      fig "sha256_bundle_${n}_targets_s" "$hm"
      rat "verify_${n}_targets_vs_sha256_bundle" "$(ratio "$vm" "$hm")"
      log "evidence: $n targets: verify $vm s in process ($vw s wall), hashing the bytes $hm s"
      if [ "$n" = 1000 ]; then
        rat verify_1000_targets_s_vs_target_1s "$(ratio "$vm" 1)"
        rat verify_1000_targets_wall_s_vs_target_1s "$(ratio "$vw" 1)"
        rat bundle_1000_targets_bytes_vs_target_2MiB "$(ratio "$bytes" 2097152)"
      fi
    done
    echo quit >&7
    write_json "$out_dir/evidence.json" < "$lines"
    echo "evidence: export and offline verify of deployments of $SIZES simulated targets (medians of $REPS verifies)"
    printf "%-48s %14s\n" figure value
    awk '{ printf "%-48s %14s\n", $2, $3 }' "$lines"
    echo "written: $out_dir/evidence.json"
  )
}
