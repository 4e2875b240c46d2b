# bench/artifact.sh - the artifact benchmark (sourced by bench/run).
#
# Brings up its own stack (scripts/stack up in a temp dir) and a dedicated
# artifact instance on it, then, interleaving so machine noise hits all of
# them alike, for BENCH_REPS rounds on a BENCH_ARTIFACT_MIB (256) MiB file
# with fresh bytes each round:
#   - direct S3 PUT of the file with libs3 (lib/s3, Content-MD5 computed from
#     the file first, as any integrity-checking client must), new key;
#   - `slipway artifact push` of the same bytes through the service (which
#     hashes them, streams them to S3 and records the release);
#   - direct S3 GET of the stored object with libs3, SHA-256 verified and
#     written to a file;
#   - `slipway artifact pull` of the release (service re-hashes, CLI
#     verifies and writes the file).
# Plus lib/digest's SHA-256 alone, and the service's peak RSS (VmHWM, reset
# through /proc/PID/clear_refs) during the pushes and during the pulls.
#
# The body runs in a subshell, so the stack's environment stays inside.
bench_artifact() (
  tmp=$(mktemp -d /tmp/slipway-bench-artifact.XXXXXX)
  chmod 755 "$tmp"
  stack=$tmp/stack apid= mib=${BENCH_ARTIFACT_MIB:-256}
  cleanup() {
    if [ -n "$apid" ]; then kill "$apid" 2>/dev/null; wait "$apid" 2>/dev/null; fi
    scripts/stack down "$stack" >/dev/null 2>&1
    rm -rf "$tmp"
  }
  trap cleanup EXIT
  scripts/stack up "$stack" >/dev/null || { log "artifact: stack up failed"; return 1; }
  # shellcheck disable=SC1091
  . "$stack/env"
  build/bin/slipway pki issue --dir "$SLIPWAY_PKI_DIR" --service artifact --out "$tmp/svc" >/dev/null
  SLIPWAY_ARTIFACT_PG_URL="postgresql:///slipway?host=$stack/pg&port=5432&user=slipway_artifact" \
  SLIPWAY_ARTIFACT_S3_HOST=$SLIPWAY_S3_HOST SLIPWAY_ARTIFACT_S3_BUCKET=$SLIPWAY_S3_BUCKET \
  SLIPWAY_ARTIFACT_S3_ACCESS_KEY=$SLIPWAY_S3_ACCESS_KEY SLIPWAY_ARTIFACT_S3_SECRET_KEY=$SLIPWAY_S3_SECRET_KEY \
    build/bin/slipway-artifact --ca "$SLIPWAY_CA" --cert "$tmp/svc.crt" --key "$tmp/svc.key" \
      --port-file "$tmp/a.port" --state-dir "$tmp/state" --log-level warn \
      --policy-addr "$SLIPWAY_POLICY_ADDR" ${SLIPWAY_AUDIT_ADDR:+--audit-addr "$SLIPWAY_AUDIT_ADDR"} \
      2>"$tmp/artifact.log" &
  apid=$!
  port=$(wait_port "$tmp/a.port") || { log "artifact: service did not start"; return 1; }
  addr=127.0.0.1:$port
  cli="build/bin/slipway"
  log "artifact: writing a $mib MiB file"
  head -c $((mib * 1024 * 1024)) /dev/urandom > "$tmp/blob"

  now() { date +%s.%N; }
  elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.4f", b - a }'; }
  hwm() { awk '/^VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$apid/status"; }
  reset_hwm() { echo 5 > "/proc/$apid/clear_refs" 2>/dev/null || true; }

  put="" put_only="" push="" get="" pull="" push_rss=0 pull_rss=0
  # A warm-up round (connections, page cache, first-time S3 directories).
  dd if=/dev/urandom of="$tmp/blob" bs=16 count=1 conv=notrunc status=none
  "$cli" artifact push "$tmp/blob" --app bench --version warmup --addr "$addr" >/dev/null
  "$cli" artifact pull bench@warmup --out "$tmp/out" --addr "$addr" >/dev/null
  for r in $(seq 1 "$REPS"); do
    dd if=/dev/urandom of="$tmp/blob" bs=16 count=1 conv=notrunc status=none
    o=$(build/bench/bench-artifact_s3 put "$tmp/blob" "bench/put-$r")
    put+=" $(field seconds "$o")"
    put_only+=" $(awk -v a="$(field seconds "$o")" -v b="$(field md5_seconds "$o")" 'BEGIN { printf "%.4f", a - b }')"
    reset_hwm
    t0=$(now); "$cli" artifact push "$tmp/blob" --app bench --version "r$r" --addr "$addr" >/dev/null || { log "push failed"; return 1; }
    t1=$(now); push+=" $(elapsed "$t0" "$t1")"
    push_rss=$(awk -v a="$push_rss" -v b="$(hwm)" 'BEGIN { print (b > a ? b : a) }')
    hex=$(sha256sum "$tmp/blob" | cut -d' ' -f1)
    rm -f "$tmp/out"
    o=$(build/bench/bench-artifact_s3 get "blobs/sha256/$hex" "$tmp/out")
    get+=" $(field seconds "$o")"
    rm -f "$tmp/out"
    reset_hwm
    t0=$(now); "$cli" artifact pull "bench@r$r" --out "$tmp/out" --addr "$addr" >/dev/null || { log "pull failed"; return 1; }
    t1=$(now); pull+=" $(elapsed "$t0" "$t1")"
    pull_rss=$(awk -v a="$pull_rss" -v b="$(hwm)" 'BEGIN { print (b > a ? b : a) }')
    cmp -s "$tmp/blob" "$tmp/out" || { log "artifact: pulled bytes differ"; return 1; }
    log "artifact: round $r: put ${put##* }s push ${push##* }s get ${get##* }s pull ${pull##* }s"
  done
  sha=""
  for r in $(seq 1 "$REPS"); do sha+=" $(field mb_per_s "$(build/bench/bench-artifact_s3 sha256 256)")"; done

  mput=$(median <<<"$put"); mputo=$(median <<<"$put_only"); mpush=$(median <<<"$push")
  mget=$(median <<<"$get"); mpull=$(median <<<"$pull"); msha=$(median <<<"$sha")
  bytes=$((mib * 1024 * 1024))
  mbs() { awk -v b="$bytes" -v s="$1" 'BEGIN { if (s > 0) printf "%.1f", b / s / 1e6; else print 0 }'; }
  {
    echo "figure artifact_mib $mib"
    echo "figure push_s $mpush"
    echo "figure push_mb_per_s $(mbs "$mpush")"
    echo "figure direct_put_s $mput"
    echo "figure direct_put_mb_per_s $(mbs "$mput")"
    echo "figure direct_put_without_md5_s $mputo"
    echo "figure pull_s $mpull"
    echo "figure pull_mb_per_s $(mbs "$mpull")"
    echo "figure direct_get_s $mget"
    echo "figure direct_get_mb_per_s $(mbs "$mget")"
    echo "figure sha256_mb_per_s $msha"
    echo "figure push_peak_rss_mib $push_rss"
    echo "figure pull_peak_rss_mib $pull_rss"
    echo "ratio push_vs_direct_put $(ratio "$mput" "$mpush")"
    echo "ratio push_vs_direct_put_without_md5 $(ratio "$mputo" "$mpush")"
    echo "ratio pull_vs_direct_get $(ratio "$mget" "$mpull")"
    echo "ratio sha256_vs_1gbps $(ratio "$msha" 1000)"
    echo "ratio peak_rss_vs_64mib $(ratio "$(awk -v a="$push_rss" -v b="$pull_rss" 'BEGIN { print (a > b ? a : b) }')" 64)"
  } > "$tmp/lines"
  write_json "$out/artifact.json" < "$tmp/lines"
  echo "artifact: $mib MiB through the service vs direct libs3 on the same s3rver, medians of $REPS"
  echo "(ratios: direct time / service time, so higher is better; targets push, pull >= 0.8,"
  echo " sha256 >= 1 GB/s, peak RSS < 64 MiB)"
  printf "%-36s %12s\n" figure value
  awk '{ printf "%-36s %12s\n", $2, $3 }' "$tmp/lines"
  echo "written: $out/artifact.json"
)
