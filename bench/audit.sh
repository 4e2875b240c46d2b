# bench/audit.sh - `bench/run audit` (sourced by bench/run).
#
# Durable appends per second over mTLS with 1, 8 and 32 clients, against
# the single-row INSERT commit rate of the same PostgreSQL; `slipway audit
# verify` on a 1,000,000-entry log, split into fetching and recomputing;
# inclusion-proof latency on that log.

bench_audit() {
  local tmp; tmp=$(mktemp -d /tmp/slipway-bench.XXXXXX)
  chmod 755 "$tmp"
  local stack="$tmp/stack"
  trap 'scripts/stack down "$stack" >/dev/null 2>&1 || true; rm -rf "$tmp"' RETURN
  scripts/stack up "$stack" >/dev/null
  # shellcheck disable=SC1091
  ( . "$stack/env"
    P=$SLIPWAY_PKI_DIR
    build/bin/slipway pki issue --dir "$P" --service bench --out "$tmp/bench" >/dev/null
    FILL=${BENCH_AUDIT_ENTRIES:-1000000}
    lines=$tmp/lines
    : > "$lines"
    local base rps
    for c in 1 8 32; do
      base=$(build/bench/bench-pg_insert --url "$SLIPWAY_PGURL" --seconds "$SECS" | sed -E 's/.*: ([0-9.]+).*/\1/')
      out=$(build/bench/bench-audit_append --target "$SLIPWAY_AUDIT_ADDR" --ca "$SLIPWAY_CA" \
            --cert "$tmp/bench.crt" --key "$tmp/bench.key" --service bench --clients "$c" --seconds "$SECS")
      rps=$(field rps "$out")
      echo "figure appends_per_s_${c}_clients $rps" >> "$lines"
      echo "figure append_p99_us_${c}_clients $(field p99_us "$out")" >> "$lines"
      echo "figure pg_single_row_commits_per_s_at_${c} $base" >> "$lines"
      echo "ratio appends_${c}_clients_vs_single_row_commits $(ratio "$rps" "$base")" >> "$lines"
      log "audit: $c clients: $rps appends/s, single-row commits $base/s"
    done
    have=$(psql -X -At "$SLIPWAY_PGURL" -c "SELECT size FROM audit.head")
    need=$((FILL - have))
    if [ "$need" -gt 0 ]; then
      out=$(build/bench/bench-audit_append --target "$SLIPWAY_AUDIT_ADDR" --ca "$SLIPWAY_CA" \
            --cert "$tmp/bench.crt" --key "$tmp/bench.key" --service bench --fill "$need")
      log "audit: filled to $FILL entries ($out)"
      # The same storage path fed in batches of 1,000 events by one client:
      # what the log sustains when the per-call cost is amortized.
      fill_rate=$(awk -v o="$out" 'BEGIN { match(o, /"filled": [0-9]+/); n = substr(o, RSTART + 10, RLENGTH - 10);
                                          match(o, /"seconds": [0-9.]+/); s = substr(o, RSTART + 11, RLENGTH - 11);
                                          if (s > 0) printf "%.1f", n / s }')
      if [ -n "$fill_rate" ]; then
        echo "figure appends_per_s_batches_of_1000 $fill_rate" >> "$lines"
        echo "ratio appends_batches_of_1000_vs_single_row_commits $(ratio "$fill_rate" "$base")" >> "$lines"
      fi
    fi
    build/bin/slipway audit checkpoint --sign >/dev/null
    size=$(psql -X -At "$SLIPWAY_PGURL" -c "SELECT size FROM audit.head")
    echo "figure log_entries $size" >> "$lines"
    t0=$(date +%s.%N)
    vout=$(build/bin/slipway -o json --timeout 1h audit verify --state "$tmp/state.json")
    t1=$(date +%s.%N)
    total=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
    fetch=$(sed -nE 's/.*"fetch_seconds": ([0-9.eE+-]+).*/\1/p' <<<"$vout")
    comp=$(sed -nE 's/.*"compute_seconds": ([0-9.eE+-]+).*/\1/p' <<<"$vout")
    grep -q '"ok": true' <<<"$vout" || log "audit: verify did not pass: $vout"
    echo "figure verify_total_s $total" >> "$lines"
    echo "figure verify_fetch_s $fetch" >> "$lines"
    echo "figure verify_recompute_s $comp" >> "$lines"
    echo "ratio verify_recompute_s_vs_target_2s $(ratio "$comp" 2)" >> "$lines"
    echo "ratio verify_total_s_vs_target_10s $(ratio "$total" 10)" >> "$lines"
    # GetInclusionProofRequest{seq: size/2, tree_size: 0 (latest)} as protobuf hex
    seq=$((size / 2))
    hex=$(printf '08%s' "$(node -e 'let v=BigInt(process.argv[1]),o="";do{let b=Number(v&127n);v>>=7n;if(v>0n)b|=128;o+=b.toString(16).padStart(2,"0")}while(v>0n);console.log(o)' "$seq")")
    for c in 1 8; do
      out=$(build/bench/bench-load --target "$SLIPWAY_AUDIT_ADDR" --ca "$SLIPWAY_CA" --cert "$SLIPWAY_CERT" \
            --key "$SLIPWAY_KEY" --method /slipway.v1.Audit/GetInclusionProof --concurrency "$c" \
            --seconds "$SECS" --warmup 1 --payload-hex "$hex")
      echo "figure inclusion_proof_p50_us_${c} $(field p50_us "$out")" >> "$lines"
      echo "figure inclusion_proof_p99_us_${c} $(field p99_us "$out")" >> "$lines"
      echo "figure inclusion_proofs_per_s_${c} $(field rps "$out")" >> "$lines"
    done
    echo "ratio inclusion_proof_p99_us_1_vs_target_2000us $(ratio "$(grep 'inclusion_proof_p99_us_1 ' "$lines" | awk '{print $3}')" 2000)" >> "$lines"
    write_json "$out_dir/audit.json" < "$lines"
    echo "audit: appends vs single-row commits; verify on $size entries; inclusion proofs"
    printf "%-48s %14s\n" figure value
    awk '{ printf "%-48s %14s\n", $2, $3 }' "$lines"
    echo "written: $out_dir/audit.json"
  )
}
