#!/usr/bin/env bash
# cli_help.sh - the CLI explains itself, and its exit codes mean one thing
# each. Walks every command that `slipway help` lists (so a new command is
# covered without touching this file): `--help`, `-h` and `slipway help
# GROUP COMMAND` exit 0 with a Usage line, every option the help lists is
# one the parser takes, and an unknown option exits 2 with the usage on
# stderr. Then the codes that need a service: 3 for NOT_FOUND and for a
# caller without a role, 4 for an address where nothing listens. Then the
# generated completion scripts. Run by tests/run (integration).
set -uo pipefail
top=$(cd "$(dirname "$0")/../.." && pwd)
sw="$top/build/bin/slipway"
tmp=$(mktemp -d "${SLIPWAY_TEST_TMP:-/tmp}/cli_help.XXXXXX")
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
    return 1
  fi
  return 0
}
has() { # NAME FILE TEXT
  checks=$((checks + 1))
  if grep -qF -- "$3" "$2"; then return 0; fi
  echo "FAIL $1: '$3' not in $2:"; sed 's/^/  /' "$2"; fails=$((fails + 1))
  return 1
}
# The names in the "Commands:" section of a help text on stdin.
commands_of() {
  awk '/^Commands:/ {on = 1; next} on && /^$/ {exit} on && /^  [a-z]/ {print $1}'
}
# One command: its help three ways, its options, an unknown option.
walk_cmd() { # WORDS...
  local path="slipway $*"
  check "$path --help" 0 "$sw" "$@" --help || return
  has "$path --help usage" "$tmp/out" "Usage: $path" || return
  has "$path --help lists --help" "$tmp/out" "-h, --help" || return
  cp "$tmp/out" "$tmp/help"
  check "$path -h" 0 "$sw" "$@" -h
  check "slipway help $*" 0 "$sw" help "$@" && cmp -s "$tmp/out" "$tmp/help" ||
    { echo "FAIL slipway help $*: differs from --help"; fails=$((fails + 1)); }
  # Every option the help lists is one the parser knows: with a value when it
  # takes one, followed by --help, it must still print the help.
  while read -r opt; do
    [ "$opt" = "--help" ] && continue
    if [ "${opt%=}" != "$opt" ]; then
      check "$path accepts ${opt%=}" 0 "$sw" "$@" "${opt}x" --help
    else
      check "$path accepts $opt" 0 "$sw" "$@" "$opt" --help
    fi
  done < <(awk '/^Options:/ {on = 1; next} on && /^$/ {exit}
               on && /^  --/ {o = $1; if (NF > 1 && $2 ~ /[A-Z|:]/) o = o "="; print o}' "$tmp/help")
  check "$path --no-such-option" 2 "$sw" "$@" --no-such-option
  has "$path --no-such-option usage" "$tmp/err" "Usage: $path"
}

check "slipway help" 0 "$sw" help
cp "$tmp/out" "$tmp/main"
has "help lists exit codes" "$tmp/main" "Exit codes:"
has "help documents exit 3" "$tmp/main" "3  not found, or not allowed"
has "help documents exit 4" "$tmp/main" "4  cannot reach the service"
check "slipway --help" 0 "$sw" --help
check "slipway (nothing) is a usage error" 2 "$sw"
check "unknown command" 2 "$sw" no-such-command

ncmds=0
for top_name in $(commands_of <"$tmp/main"); do
  case "$top_name" in help|completion|version) continue ;; esac
  check "slipway $top_name --help" 0 "$sw" "$top_name" --help || continue
  cp "$tmp/out" "$tmp/top"
  subs=$(commands_of <"$tmp/top")
  if [ -z "$subs" ]; then
    walk_cmd "$top_name"
    ncmds=$((ncmds + 1))
    continue
  fi
  has "slipway $top_name --help usage" "$tmp/top" "Usage: slipway $top_name COMMAND"
  check "slipway help $top_name" 0 "$sw" help "$top_name"
  check "slipway $top_name (no command)" 2 "$sw" "$top_name"
  check "slipway $top_name no-such-command" 2 "$sw" "$top_name" no-such-command
  for sub in $subs; do
    walk_cmd "$top_name" "$sub"
    ncmds=$((ncmds + 1))
  done
done
if [ "$ncmds" -lt 40 ]; then
  echo "FAIL walked only $ncmds commands: is \`slipway help\` still listing them?"
  fails=$((fails + 1))
else
  echo "ok   --help on all $ncmds commands"
fi

# Options still parse as before (the table is the same one).
check "deploy usage without arguments" 2 "$sw" deploy
check "artifact pull -O is still taken" 0 "$sw" artifact pull -O x --help

# Exit 3: not found, and a caller the policy gives no role.
check "deployment show of no deployment is 3" 3 "$sw" deployment show d-nonexistent-clihelp
has "NOT_FOUND says so" "$tmp/err" "NOT_FOUND"
"$sw" pki issue --dir "$SLIPWAY_PKI_DIR" --user clihelp-nobody --out "$tmp/nobody" >/dev/null
echo '{}' >"$tmp/empty.json"
check "a caller with no role is 3" 3 "$sw" --cert "$tmp/nobody.crt" --key "$tmp/nobody.key" \
  policy apply --dry-run "$tmp/empty.json"
has "PERMISSION_DENIED says so" "$tmp/err" "PERMISSION_DENIED"
# Exit 4: nothing listens there.
check "unreachable orchestrator is 4" 4 env SLIPWAY_ORCHESTRATOR_ADDR=127.0.0.1:1 "$sw" deployments ls
check "unreachable policy service is 4" 4 env SLIPWAY_POLICY_ADDR=127.0.0.1:1 "$sw" policy revision
# Exit 1 stays for failures that are neither.
check "invalid policy document is still 1" 1 "$sw" policy apply --dry-run "$top/README.md"

# Tables align for any width: a name longer than any fixed column still
# leaves every column starting where its header does.
long=CLIHELP_A_NAME_LONGER_THAN_THE_OLD_COLUMN_$$
printf 'v' >"$tmp/v"
check "put a long-named secret" 0 "$sw" secrets put "$long" --scope clihelp/prod --file "$tmp/v"
check "put a short-named secret" 0 "$sw" secrets put S --scope clihelp/prod --file "$tmp/v"
check "secrets ls" 0 "$sw" secrets ls --scope clihelp/prod
checks=$((checks + 1))
if ! awk 'NR == 1 {col = index($0, "SCOPE"); next}
          {if (index($0, "clihelp/prod") != col) bad = 1; n++}
          END {exit !(col > 0 && n == 2 && !bad)}' "$tmp/out"; then
  echo "FAIL secrets ls columns do not line up:"; sed 's/^/  /' "$tmp/out"; fails=$((fails + 1))
fi

# A list says when more exist, and --all pages through them (JSON stays the
# same array; the note goes to stderr). Needs two deployments: the suite's
# earlier tests made them (run alone on a fresh stack, this part is skipped).
check "deployments ls --all" 0 "$sw" -o json deployments ls --all --limit 2
ndep=$(grep -c '"id": "d' "$tmp/out")
if [ "$ndep" -ge 3 ]; then
  check "deployments ls --limit 1" 0 "$sw" deployments ls --limit 1
  has "a page says more exist" "$tmp/out" "(more: --page-token "
  tok=$(sed -n 's/^(more: --page-token \([^ ,]*\), or --all)$/\1/p' "$tmp/out")
  first=$(sed -n 2p "$tmp/out" | awk '{print $1}')
  check "deployments ls --page-token" 0 "$sw" deployments ls --limit 1 --page-token "$tok"
  checks=$((checks + 1))
  if [ -z "$tok" ] || [ "$(sed -n 2p "$tmp/out" | awk '{print $1}')" = "$first" ]; then
    echo "FAIL the next page starts where the first did ($first, token '$tok')"; fails=$((fails + 1))
  fi
  check "deployments ls -o json --limit 1" 0 "$sw" -o json deployments ls --limit 1
  has "json: more exist, on stderr" "$tmp/err" "more deployments: --page-token"
  checks=$((checks + 1))
  if [ "$(grep -c '"id": "d' "$tmp/out")" -ne 1 ]; then echo "FAIL json page of 1"; fails=$((fails + 1)); fi
  check "deployments ls --all --limit 1 gets them all" 0 "$sw" -o json deployments ls --all --limit 1
  checks=$((checks + 1))
  if [ "$(grep -c '"id": "d' "$tmp/out")" -ne "$ndep" ]; then
    echo "FAIL --all --limit 1 found $(grep -c '"id": "d' "$tmp/out"), --all --limit 2 found $ndep"; fails=$((fails + 1))
  fi
else
  echo "skip paging: only $ndep deployments on this stack"
fi

# Completion scripts come from the same tables.
check "completion bash" 0 "$sw" completion bash
cp "$tmp/out" "$tmp/slipway.bash"
check "bash completion parses" 0 bash -n "$tmp/slipway.bash"
has "bash completion knows deploy --batch-percent" "$tmp/slipway.bash" "--batch-percent"
check "bash completion completes" 0 bash -c '
  . "$1"
  COMP_WORDS=(slipway secrets put --sc); COMP_CWORD=3; _slipway
  [ "${COMPREPLY[*]}" = "--scope" ] || { echo "got: ${COMPREPLY[*]}"; exit 1; }
  COMP_WORDS=(slipway deploym); COMP_CWORD=1; _slipway
  [ "${COMPREPLY[*]}" = "deployments deployment" ] || [ "${COMPREPLY[*]}" = "deployment deployments" ] ||
    { echo "got: ${COMPREPLY[*]}"; exit 1; }' _ "$tmp/slipway.bash"
check "completion zsh" 0 "$sw" completion zsh
has "zsh completion is a compdef" "$tmp/out" "#compdef slipway"
check "completion needs a shell" 2 "$sw" completion fish
for f in slipway.bash _slipway; do
  want="$tmp/$f.want"
  if [ "$f" = slipway.bash ]; then "$sw" completion bash >"$want"; else "$sw" completion zsh >"$want"; fi
  checks=$((checks + 1))
  if ! cmp -s "$want" "$top/cli/completion/$f"; then
    echo "FAIL cli/completion/$f is stale: regenerate with slipway completion"
    fails=$((fails + 1))
  fi
done

echo "$((checks - fails)) passed, $fails failed"
rm -rf "$tmp"
[ "$fails" -eq 0 ]
