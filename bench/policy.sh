# bench/policy.sh - the `policy` benchmark (sourced by bench/run).
#
# Authorize decisions per second and latency over mTLS, 1 and 32 calls in
# flight, against the real policy service of a throwaway stack holding a
# policy of 1,000 bindings and 50 roles (plus 20 groups), called directly
# (no lib/authz cache), next to the rpc echo baseline (slipway-testsvc
# Say) measured in the same run with the same PKI and load client.

# Encodes a protobuf length-delimited field: FIELD HEXBYTES -> hex.
pb_field() {
  local f=$1 hex=$2 n=$(( ${#2} / 2 ))
  [ "$n" -lt 128 ] || { echo "pb_field: too long" >&2; return 1; }
  printf '%02x%02x%s' $(( f << 3 | 2 )) "$n" "$hex"
}
pb_str() { pb_field "$1" "$(printf '%s' "$2" | od -An -tx1 -v | tr -d ' \n')"; }

# AuthorizeRequest{principal, action, resource{kind, app, environment, name}} as hex.
authorize_hex() { # PRINCIPAL ACTION KIND APP ENV
  local res
  res=$(pb_str 1 "$3")$(pb_str 2 "$4")$( [ -n "$5" ] && pb_str 3 "$5")
  echo "$(pb_str 1 "$1")$(pb_str 2 "$2")$(pb_field 3 "$res")"
}

# The benchmark policy: 50 roles, 20 groups of 10, 1,000 bindings.
policy_doc() { # TRUST-DOMAIN
  local td=$1 i j sep
  printf '{"description": "bench: 50 roles, 1000 bindings", "groups": {'
  for ((i = 0; i < 20; i++)); do
    sep=""; [ $i -gt 0 ] && sep=","
    printf '%s"team-%d": [' "$sep" "$i"
    for ((j = 0; j < 10; j++)); do
      [ $j -gt 0 ] && printf ','
      printf '"spiffe://%s/user/member-%d-%d"' "$td" "$i" "$j"
    done
    printf ']'
  done
  printf '}, "roles": ['
  for ((i = 0; i < 50; i++)); do
    [ $i -gt 0 ] && printf ','
    printf '{"name": "role-%d", "rules": [{"actions": ["push", "read"], "kinds": ["release"], "apps": ["app-*"]},' "$i"
    printf '{"actions": ["deploy", "read", "rollback"], "kinds": ["deployment"], "environments": ["env-%d", "staging"]},' "$i"
    printf '{"actions": ["read"], "kinds": ["secret"], "names": ["SVC_%d_*"]}]}' "$i"
  done
  printf '], "bindings": ['
  for ((i = 0; i < 1000; i++)); do
    [ $i -gt 0 ] && printf ','
    if [ $((i % 10)) -eq 9 ]; then
      printf '{"role": "role-%d", "group": "team-%d", "scope": {"app": "app-%d"}}' $((i % 50)) $((i % 20)) $((i % 100))
    else
      printf '{"role": "role-%d", "principal": "spiffe://%s/user/u-%d", "scope": {"app": "app-%d"}}' $((i % 50)) "$td" "$i" $((i % 100))
    fi
  done
  printf '], "guardrails": [{"name": "no-prod-for-interns", "groups": ["team-19"],'
  printf ' "forbid": {"actions": ["deploy"], "kinds": ["deployment"], "environments": ["prod"]}}]}\n'
}

bench_policy() {
  local tmp; tmp=$(mktemp -d /tmp/slipway-bench-policy.XXXXXX)
  chmod 755 "$tmp" # PostgreSQL runs as its own user
  local st="$tmp/stack" tpid=""
  trap 'kill $tpid 2>/dev/null || true; wait 2>/dev/null || true; scripts/stack down "$st" >/dev/null 2>&1 || true; rm -rf "$tmp"' RETURN
  scripts/stack up "$st" >/dev/null || { log "policy: stack did not start"; return 1; }
  local td; td=$(cat "$st/pki/trust-domain")
  local P="$st/pki"
  build/bin/slipway pki issue --dir "$P" --service bench --out "$tmp/bench" >/dev/null
  build/bin/slipway pki issue --dir "$P" --service testsvc --out "$tmp/testsvc" >/dev/null
  policy_doc "$td" > "$tmp/policy.json"
  # shellcheck disable=SC1091
  (. "$st/env"; build/bin/slipway policy apply "$tmp/policy.json" >/dev/null) || { log "policy: apply failed"; return 1; }
  build/tests/slipway-testsvc --ca "$P/ca.crt" --cert "$tmp/testsvc.crt" --key "$tmp/testsvc.key" \
    --port-file "$tmp/t.port" --log-level warn 2>"$tmp/t.log" &
  tpid=$!
  local tport; tport=$(wait_port "$tmp/t.port") || { log "policy: testsvc did not start"; return 1; }
  local paddr; paddr=$(. "$st/env"; echo "$SLIPWAY_POLICY_ADDR")

  # The hot path: an allowed decision (user u-777 holds role-27 at app-77)
  # that is not recorded; and, for information, a recorded one (deploy).
  local allow_hex deploy_hex echo_hex=0a0568656c6c6f
  allow_hex=$(authorize_hex "spiffe://$td/user/u-777" push release app-77 "")
  deploy_hex=$(authorize_hex "spiffe://$td/user/u-778" deploy deployment app-78 env-28)
  load() { # ADDR METHOD CONC HEX
    build/bench/bench-load --target "$1" --ca "$P/ca.crt" --cert "$tmp/bench.crt" --key "$tmp/bench.key" \
      --method "$2" --concurrency "$3" --seconds "$SECS" --warmup 1 --payload-hex "$4"
  }
  # Check the answers once, so that the figures are about real decisions.
  local check
  check=$(. "$st/env"; build/bin/slipway -o json policy explain \
    --principal "spiffe://$td/user/u-777" --action push --resource release/app-77) || return 1
  grep -q '"allowed": true' <<<"$check" || { log "policy: the benchmark decision is not an allow"; return 1; }

  declare -A rps p50 p99
  local c r o k
  for c in 1 32; do
    for r in $(seq 1 "$REPS"); do
      o=$(load "127.0.0.1:$tport" /slipway.test.v1.Echo/Say "$c" "$echo_hex"); k="e_$c"
      rps[$k]+=" $(field rps "$o")"; p50[$k]+=" $(field p50_us "$o")"; p99[$k]+=" $(field p99_us "$o")"
      o=$(load "$paddr" /slipway.v1.Policy/Authorize "$c" "$allow_hex"); k="a_$c"
      rps[$k]+=" $(field rps "$o")"; p50[$k]+=" $(field p50_us "$o")"; p99[$k]+=" $(field p99_us "$o")"
      log "policy: concurrency $c round $r done"
    done
  done
  # Recorded decisions (group-committed to PostgreSQL before answering).
  for r in $(seq 1 "$REPS"); do
    o=$(load "$paddr" /slipway.v1.Policy/Authorize 32 "$deploy_hex"); k="d_32"
    rps[$k]+=" $(field rps "$o")"; p50[$k]+=" $(field p50_us "$o")"; p99[$k]+=" $(field p99_us "$o")"
  done
  {
    for c in 1 32; do
      local ar er ap50 ep50 ap99 ep99
      ar=$(median <<<"${rps[a_$c]}"); er=$(median <<<"${rps[e_$c]}")
      ap50=$(median <<<"${p50[a_$c]}"); ep50=$(median <<<"${p50[e_$c]}")
      ap99=$(median <<<"${p99[a_$c]}"); ep99=$(median <<<"${p99[e_$c]}")
      echo "figure authorize_rps_${c}_mtls $ar"
      echo "figure authorize_p50_us_${c}_mtls $ap50"
      echo "figure authorize_p99_us_${c}_mtls $ap99"
      echo "figure echo_rps_${c}_mtls $er"
      echo "figure echo_p50_us_${c}_mtls $ep50"
      echo "figure echo_p99_us_${c}_mtls $ep99"
      echo "ratio authorize_rps_${c}_mtls_vs_echo $(ratio "$ar" "$er")"
      echo "ratio authorize_p99_us_${c}_mtls_vs_echo $(ratio "$ap99" "$ep99")"
    done
    echo "figure recorded_rps_32_mtls $(median <<<"${rps[d_32]}")"
    echo "figure recorded_p50_us_32_mtls $(median <<<"${p50[d_32]}")"
    echo "figure recorded_p99_us_32_mtls $(median <<<"${p99[d_32]}")"
    echo "figure policy_bindings 1000"
    echo "figure policy_roles 50"
    echo "ratio recorded_rps_32_mtls_vs_echo $(ratio "$(median <<<"${rps[d_32]}")" "$(median <<<"${rps[e_32]}")")"
  } > "$tmp/lines"
  write_json "$out/policy.json" < "$tmp/lines"
  echo "policy: Authorize over mTLS (1,000 bindings, 50 roles, no client cache) vs rpc echo, medians of $REPS x ${SECS}s"
  printf "%-38s %12s\n" figure value
  awk '{ printf "%-38s %12s\n", $2, $3 }' "$tmp/lines"
  echo "written: $out/policy.json"
}
