#!/usr/bin/env bash
# cli_config.sh - the CLI's config file ($XDG_CONFIG_HOME/slipway/config):
# contexts with one address per service or a single address, certificate
# paths, output and timeout; a flag wins over the environment, which wins
# over the file; `slipway config view|use-context`; a malformed file is a
# usage error that names the line. Against the stack's policy and
# orchestrator services. Run by tests/run (integration).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
sw="$top/build/bin/slipway"
tmp=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/cli_config.XXXXXX")
fails=0
checks=0
check() { # NAME WANT-EXIT CMD...
  local name=$1 want=$2; shift 2
  "$@" >"$tmp/out" 2>"$tmp/err"
  local got=$?
  checks=$((checks + 1))
  if [ "$got" -ne "$want" ]; then
    echo "FAIL $name: exit $got, want $want"; sed 's/^/  out: /' "$tmp/out"; sed 's/^/  err: /' "$tmp/err"
    fails=$((fails + 1))
  else
    echo "ok   $name"
  fi
}
has() { # NAME FILE TEXT
  checks=$((checks + 1))
  if grep -qF -- "$3" "$2"; then echo "ok   $1"; else echo "FAIL $1: '$3' not in $2:"; sed 's/^/  /' "$2"; fails=$((fails + 1)); fi
}

# The stack's settings, then none of them in the environment: from here on
# the CLI knows only what the file says (and what a test puts back).
admin_crt=$SLIPWAY_CERT admin_key=$SLIPWAY_KEY ca=$SLIPWAY_CA
pol=$SLIPWAY_POLICY_ADDR orch=$SLIPWAY_ORCHESTRATOR_ADDR
"$sw" pki issue --dir "$SLIPWAY_PKI_DIR" --user cfg-nobody --out "$tmp/nobody" >/dev/null
for v in $(env | sed -n 's/^\(SLIPWAY_[A-Z_]*\)=.*/\1/p'); do
  case "$v" in SLIPWAY_TEST_TMP) ;; *) unset "$v" ;; esac
done
export XDG_CONFIG_HOME="$tmp/xdg"
cfg="$XDG_CONFIG_HOME/slipway/config"

check "no file: no address, and it says where to put one" 1 "$sw" policy revision
has "no file: names the config file" "$tmp/err" "$cfg"
check "no file: view" 0 "$sw" config view
has "no file: view says none" "$tmp/out" "(none)"
check "no file: a named context is not found" 3 "$sw" --context stack policy revision

mkdir -p "$(dirname "$cfg")"
cat >"$cfg" <<EOF
# written by cli_config.sh
current-context = stack

[context stack]
policy = $pol
orchestrator = $orch
ca = $ca
cert = $admin_crt
key = $admin_key
output = json

[context dead]
address = 127.0.0.1:1
ca = $ca
cert = $admin_crt
key = $admin_key

[context nobody]
# one address for every service
address = $pol
ca = $ca
cert = $tmp/nobody.crt
key = $tmp/nobody.key
EOF
echo '{}' >"$tmp/empty.json"

check "current context" 0 "$sw" policy revision
has "output = json from the file" "$tmp/out" "{"
check "flag over file: -o table" 0 "$sw" -o table policy revision
checks=$((checks + 1))
if grep -qF "{" "$tmp/out"; then echo "FAIL -o table still printed JSON"; fails=$((fails + 1)); fi
check "env over file: SLIPWAY_OUTPUT=table" 0 env SLIPWAY_OUTPUT=table "$sw" policy revision
checks=$((checks + 1))
if grep -qF "{" "$tmp/out"; then echo "FAIL SLIPWAY_OUTPUT=table still printed JSON"; fails=$((fails + 1)); fi
check "orchestrator address from the file" 0 "$sw" deployments ls
check "--context dead: unreachable" 4 "$sw" --context dead policy revision
check "SLIPWAY_CONTEXT=dead: unreachable" 4 env SLIPWAY_CONTEXT=dead "$sw" policy revision
check "flag over env: --context stack" 0 env SLIPWAY_CONTEXT=dead "$sw" --context stack policy revision
check "env over file: SLIPWAY_POLICY_ADDR" 4 env SLIPWAY_POLICY_ADDR=127.0.0.1:1 "$sw" policy revision
check "a single address serves every service" 3 "$sw" --context nobody policy apply --dry-run "$tmp/empty.json"
has "the file's certificate was used (denied)" "$tmp/err" "PERMISSION_DENIED"
check "flag over file: --cert/--key" 0 "$sw" --context nobody --cert "$admin_crt" --key "$admin_key" policy revision
check "env over file: SLIPWAY_CERT/KEY" 3 env SLIPWAY_CERT="$tmp/nobody.crt" SLIPWAY_KEY="$tmp/nobody.key" \
  "$sw" policy apply --dry-run "$tmp/empty.json"
check "--context nope" 3 "$sw" --context nope policy revision
has "--context nope says so" "$tmp/err" "no context 'nope'"

check "view" 0 "$sw" -o table config view
has "view lists stack" "$tmp/out" "stack (in use)"
has "view lists dead" "$tmp/out" "context   dead"
has "view shows the address" "$tmp/out" "$pol"
check "view json" 0 "$sw" -o json config view
has "view json current" "$tmp/out" '"current_context": "stack"'

check "use-context dead" 0 "$sw" config use-context dead
check "now unreachable" 4 "$sw" policy revision
has "use-context keeps comments" "$cfg" "# one address for every service"
checks=$((checks + 1))
if [ "$(grep -c '^current-context' "$cfg")" -ne 1 ]; then echo "FAIL current-context twice:"; cat "$cfg"; fails=$((fails + 1)); fi
check "use-context nope" 3 "$sw" config use-context nope
has "use-context nope changed nothing" "$cfg" "current-context = dead"
check "use-context stack" 0 "$sw" config use-context stack
check "back to the stack" 0 "$sw" policy revision
checks=$((checks + 1))
if [ "$(stat -c %a "$cfg")" != 600 ]; then echo "FAIL the rewritten file is $(stat -c %a "$cfg"), want 600"; fails=$((fails + 1)); fi

cp "$cfg" "$tmp/good"
printf '[context stack]\nbogus = 1\n' >>"$cfg"
check "a duplicate context is a usage error" 2 "$sw" policy revision
has "names the file and line" "$tmp/err" "$cfg:$(($(wc -l <"$tmp/good") + 1)): context 'stack' twice"
cp "$tmp/good" "$cfg"
sed -i 's/^output = json$/colour = blue/' "$cfg"
check "an unknown key is a usage error" 2 "$sw" policy revision
has "names the key" "$tmp/err" "unknown key 'colour'"
cp "$tmp/good" "$cfg"
sed -i 's/^output = json$/output = yaml/' "$cfg"
check "a bad output is a usage error" 2 "$sw" policy revision
cp "$tmp/good" "$cfg"
sed -i 's/^output = json$/timeout = soon/' "$cfg"
check "a bad timeout is a usage error" 2 "$sw" policy revision
cp "$tmp/good" "$cfg"
check "help needs no good file" 0 env XDG_CONFIG_HOME=/nonexistent "$sw" help

echo "$((checks - fails)) passed, $fails failed"
rm -rf "$tmp"
[ "$fails" -eq 0 ]
