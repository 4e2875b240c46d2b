#!/usr/bin/env bash
# it_secrets_cli.sh - every `slipway secrets` command and its exit codes
# (0 ok, 1 failed, 2 usage, 3 not found or denied) against the stack's secrets service: as the
# stack admin for puts and the lifecycle, as an orchestrator for a grant,
# as an agent for fetch-check; and no command ever prints the value.
# Run by tests/run.
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
sw="$top/build/bin/slipway"
tmp=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/it_secrets_cli.XXXXXX")
td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
app="cli$(od -An -N3 -tx1 /dev/urandom | tr -d ' \n')"
value="swval-cli-$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')"
fails=0
check() { # NAME WANT-EXIT CMD...
  local name=$1 want=$2; shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  cat "$tmp/out" "$tmp/err" >>"$tmp/all.log"
  if [ "$got" -ne "$want" ]; then
    echo "FAIL $name: exit $got, want $want"; sed 's/^/  out: /' "$tmp/out"; sed 's/^/  err: /' "$tmp/err"
    fails=$((fails + 1))
  else
    echo "ok   $name"
  fi
}
has() { # NAME FILE TEXT
  if grep -qF -- "$3" "$2"; then echo "ok   $1"; else echo "FAIL $1: '$3' not in $2:"; sed 's/^/  /' "$2"; fails=$((fails + 1)); fi
}

check "keys" 0 "$sw" secrets keys --out "$tmp"
has "keys prints the key id" "$tmp/out" "sign key id:                ed25519:"
has "pin file" "$tmp/secrets-sign.pub" "slipway-key ed25519-public"

# put: the value from stdin or a file, never from the command line
check "put from stdin" 0 bash -c "printf '%s' '$value' | '$sw' secrets put DB_URL --scope $app/prod"
has "put says the version" "$tmp/out" "stored DB_URL version 1 in $app/prod"
umask 077; printf '%s\n' "$value-2" >"$tmp/value2.txt"
check "put from a file" 0 "$sw" secrets put DB_URL --scope "$app/prod" --file "$tmp/value2.txt" --strip-newline --cas 1
has "second version" "$tmp/out" "version 2"
check "stale cas" 1 "$sw" secrets put DB_URL --scope "$app/prod" --file "$tmp/value2.txt" --cas 1
has "cas says why" "$tmp/err" "check-and-set failed"
check "put needs a scope" 2 "$sw" secrets put DB_URL --file "$tmp/value2.txt"
check "no value on the command line" 2 "$sw" secrets put DB_URL --scope "$app/prod" --value "$value"
check "put missing file" 1 "$sw" secrets put DB_URL --scope "$app/prod" --file "$tmp/nope"
check "put bad name" 2 "$sw" secrets put ../x --scope "$app/prod" --file "$tmp/value2.txt"
check "put bad scope" 2 "$sw" secrets put X --scope "$app/prod/x" --file "$tmp/value2.txt"

# listing: metadata only
check "ls" 0 "$sw" secrets ls --scope "$app"
has "ls shows the secret" "$tmp/out" "DB_URL"
check "ls json" 0 "$sw" -o json secrets ls --scope "$app/prod"
has "ls json" "$tmp/out" "\"name\": \"DB_URL\""
check "versions" 0 "$sw" secrets versions DB_URL --scope "$app/prod"
has "versions lists both" "$tmp/out" "spiffe://$td/user/admin"
check "versions of nothing" 3 "$sw" secrets versions NOPE --scope "$app/prod"
has "not found" "$tmp/err" "NOT_FOUND"

# lifecycle
check "disable current" 1 "$sw" secrets disable DB_URL --scope "$app/prod" --version 2
has "disable says why" "$tmp/err" "current version"
check "set-current 1" 0 "$sw" secrets set-current DB_URL --scope "$app/prod" --version 1
check "disable 2" 0 "$sw" secrets disable DB_URL --scope "$app/prod" --version 2
has "disabled" "$tmp/out" "now disabled"
check "enable 2" 0 "$sw" secrets enable DB_URL --scope "$app/prod" --version 2
check "destroy needs --yes" 2 "$sw" secrets destroy DB_URL --scope "$app/prod" --version 2
check "destroy" 0 "$sw" secrets destroy DB_URL --scope "$app/prod" --version 2 --yes
has "destroyed" "$tmp/out" "now destroyed"
check "enable destroyed" 1 "$sw" secrets enable DB_URL --scope "$app/prod" --version 2
check "version needed" 2 "$sw" secrets disable DB_URL --scope "$app/prod"

# the way out: an agent key, a grant as the orchestrator, a fetch as the agent
"$sw" pki issue --dir "$SLIPWAY_PKI_DIR" --service orchestrator --out "$tmp/orch" >/dev/null
"$sw" pki issue --dir "$SLIPWAY_PKI_DIR" --agent r9/cli-host --out "$tmp/agent" >/dev/null
agent="spiffe://$td/agent/r9/cli-host"
check "keygen" 0 "$sw" secrets keygen --out "$tmp/agentkey"
has "keygen wrote the secret key" "$tmp/agentkey.key" "slipway-key x25519-secret"
[ "$(stat -c %a "$tmp/agentkey.key")" = 600 ] && echo "ok   key is 0600" || { echo "FAIL key mode"; fails=$((fails + 1)); }
# the secrets service grants only to an agent enrolled for the scope, with
# the key its enrollment pins
check "enroll" 0 "$sw" agents enroll "$agent" --app "$app" --env prod --sealing-key "$tmp/agentkey.pub"
check "grant as admin" 3 "$sw" secrets grant --deployment d-cli --agent "$agent" --agent-pub "$tmp/agentkey.pub" --scope "$app/prod" DB_URL
has "only the orchestrator" "$tmp/err" "PERMISSION_DENIED"
check "grant" 0 "$sw" --cert "$tmp/orch.crt" --key "$tmp/orch.key" secrets grant --deployment d-cli \
  --agent "$agent" --agent-pub "$tmp/agentkey.pub" --scope "$app/prod" --ttl 10m DB_URL@1
has "grant id" "$tmp/out" "1 secrets of $app/prod"
check "grant unknown" 3 "$sw" --cert "$tmp/orch.crt" --key "$tmp/orch.key" secrets grant --deployment d-cli \
  --agent "$agent" --agent-pub "$tmp/agentkey.pub" --scope "$app/prod" NOPE
check "fetch-check" 0 "$sw" --cert "$tmp/agent.crt" --key "$tmp/agent.key" secrets fetch-check \
  --deployment d-cli --agent "$agent" --agent-key "$tmp/agentkey.key" --pin "$tmp/secrets-sign.pub"
has "signature ok" "$tmp/out" "signature ok"
has "names and sizes" "$tmp/out" "DB_URL"
check "fetch-check json" 0 "$sw" -o json --cert "$tmp/agent.crt" --key "$tmp/agent.key" secrets fetch-check \
  --deployment d-cli --agent "$agent" --agent-key "$tmp/agentkey.key" --pin "$tmp/secrets-sign.pub"
has "json size" "$tmp/out" "\"size_bytes\": ${#value}"
check "fetch-check another deployment" 3 "$sw" --cert "$tmp/agent.crt" --key "$tmp/agent.key" secrets fetch-check \
  --deployment d-other --agent "$agent" --agent-key "$tmp/agentkey.key" --pin "$tmp/secrets-sign.pub"
check "fetch-check as another agent id" 1 "$sw" --cert "$tmp/agent.crt" --key "$tmp/agent.key" secrets fetch-check \
  --deployment d-cli --agent "spiffe://$td/agent/r9/other" --agent-key "$tmp/agentkey.key" --pin "$tmp/secrets-sign.pub"
has "not for that agent" "$tmp/err" "not for spiffe://$td/agent/r9/other"
check "fetch-check wrong pin file" 1 "$sw" --cert "$tmp/agent.crt" --key "$tmp/agent.key" secrets fetch-check \
  --deployment d-cli --agent "$agent" --agent-key "$tmp/agentkey.key" --pin "$tmp/agentkey.pub"
chmod 644 "$tmp/agentkey.key"
check "exposed agent key refused" 1 "$sw" --cert "$tmp/agent.crt" --key "$tmp/agent.key" secrets fetch-check \
  --deployment d-cli --agent "$agent" --agent-key "$tmp/agentkey.key" --pin "$tmp/secrets-sign.pub"
chmod 600 "$tmp/agentkey.key"

# master key rotation keeps every value reachable
check "rotate-master" 0 "$sw" secrets rotate-master
has "rewrapped" "$tmp/out" "data keys rewrapped"
check "rotate-master --retire" 0 "$sw" -o json secrets rotate-master --retire
has "retired" "$tmp/out" "\"retired_old\": true"
check "fetch-check after retirement" 0 "$sw" --cert "$tmp/agent.crt" --key "$tmp/agent.key" secrets fetch-check \
  --deployment d-cli --agent "$agent" --agent-key "$tmp/agentkey.key" --pin "$tmp/secrets-sign.pub"
check "usage" 2 "$sw" secrets
check "unknown command" 2 "$sw" secrets frobnicate

# no command printed the value, in any form
if grep -qF -e "$value" -e "$(printf '%s' "$value" | od -An -tx1 | tr -d ' \n')" "$tmp/all.log"; then
  echo "FAIL a command printed the value"; fails=$((fails + 1))
else
  echo "ok   the value was never printed"
fi

[ "$fails" -eq 0 ]
