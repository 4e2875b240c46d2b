# bench/metrics.sh - sourced by bench/run: `bench/run metrics` (README.md).

bench_metrics() {
  make -s -j2 build/bench/bench-metrics >/dev/null
  local t=${BENCH_THREADS:-4} r o
  local -a o1 f1 os oo fn
  for r in $(seq 1 "$REPS"); do
    o=$(build/bench/bench-metrics --seconds "$SECS" --threads "$t")
    o1+=("$(field observe_ns_1 "$o")"); f1+=("$(field floor_ns_1 "$o")")
    os+=("$(field "observe_ns_${t}_same" "$o")"); oo+=("$(field "observe_ns_${t}_own" "$o")")
    fn+=("$(field "floor_ns_$t" "$o")")
    log "metrics: round $r done"
  done
  local mo1 mf1 mos moo mfn
  mo1=$(median <<<"${o1[*]}"); mf1=$(median <<<"${f1[*]}")
  mos=$(median <<<"${os[*]}"); moo=$(median <<<"${oo[*]}"); mfn=$(median <<<"${fn[*]}")
  {
    echo "figure observe_ns_1 $mo1"
    echo "figure floor_ns_1 $mf1"
    echo "figure observe_ns_${t}_same $mos"
    echo "figure observe_ns_${t}_own $moo"
    echo "figure floor_ns_$t $mfn"
    echo "ratio observe_1_vs_floor $(ratio "$mo1" "$mf1")"
    echo "ratio observe_${t}_same_vs_floor $(ratio "$mos" "$mfn")"
    echo "ratio observe_${t}_own_vs_floor $(ratio "$moo" "$mfn")"
  } > "$out/metrics.lines"
  write_json "$out/metrics.json" < "$out/metrics.lines"
  echo "metrics: ns per metrics_rpc_observe (lib/rpc's hook) vs one shared atomic increment, medians of $REPS x ${SECS}s"
  printf "%-34s %12s\n" figure value
  awk '{ printf "%-34s %12s\n", $2, $3 }' "$out/metrics.lines"
  rm -f "$out/metrics.lines"
  echo "written: $out/metrics.json"
}
