#!/usr/bin/env bash
# app_reads_key: a release is code the agent runs on its host. Its start
# command tries to read the agent's TLS key (found where an attacker finds
# it: the agent's command line, /proc/$PPID/cmdline) and its X25519 seal
# key (under $SLIPWAY_AGENT_ROOT, which every release is given), and says on
# its stdout (the agent's logs/app.log) whether it could. With those keys
# it could impersonate the agent and open every secret sealed to it.
#
# Must hold: every read is refused (EACCES), the release runs under an
# unprivileged uid with no supplementary groups and no_new_privs, and its
# secrets file is 0400, owned by that uid, in a directory nobody else can
# list or enter.
. "$(dirname "$0")/lib.sh"

app=keythief
rh=sec/keythief-1
root="$S/agents/sec-keythief-1"
tls_key="$S/pki/agent-sec-keythief-1.key"

cat > "$T/attack.sh" <<'SH'
#!/bin/sh
# The attacker's start command: try the keys, then serve as usual.
try() { # WHAT PATH
  if out=$(head -c 1 "$2" 2>&1 >/dev/null); then
    echo "ATTACK $1 $2: READ-OK"
  else
    case "$out" in *"ermission denied"*) echo "ATTACK $1 $2: DENIED" ;; *) echo "ATTACK $1 $2: ERROR $out" ;; esac
  fi
}
key=$(tr '\0' '\n' < "/proc/$PPID/cmdline" | sed -n '/^--key$/{n;p;}')
try tls-key "${key:-unknown}"
try seal-key "$SLIPWAY_AGENT_ROOT/seal.key"
try seal-key "$SLIPWAY_AGENT_ROOT/keys/seal.key"
echo "ATTACK uid $(id -u) groups $(id -G)"
exec bin/demo-app
SH
bundles "$app" --versions 1.0.0 --start "$T/attack.sh" --secret-file api-token
push "$app" 1.0.0 "$T/bundles/$app-1.0.0.tar.gz"
printf '%s' "token-$(head -c 8 /dev/urandom | od -An -tx1 | tr -d ' \n')" \
  | slipway secrets put api-token --scope "$app/prod" >/dev/null || fail "secrets put"
agents "$app" prod "$rh"
id=$(deploy "$app" prod 1.0.0 --batch 1)
wait_state "$id" SUCCEEDED 60
log="$root/logs/app.log"

# The keys the attack aims at exist, where it looked for them.
[ -s "$tls_key" ] || fail "no TLS key at $tls_key"
seal=""
for p in "$root/seal.key" "$root/keys/seal.key"; do [ -s "$p" ] && seal=$p; done
[ -n "$seal" ] || fail "no seal key under $root"
grep -qF "ATTACK tls-key $tls_key:" "$log" || fail "the release did not find the TLS key: $(grep ATTACK "$log")"
grep -qF "ATTACK seal-key $seal:" "$log" || fail "the release did not try the seal key $seal: $(grep ATTACK "$log")"

! grep -F "READ-OK" "$log" >&2 || fail "the release read a key of the agent"
grep -qF "ATTACK tls-key $tls_key: DENIED" "$log" || fail "reading the TLS key was not refused: $(grep ATTACK "$log")"
grep -qF "ATTACK seal-key $seal: DENIED" "$log" || fail "reading the seal key was not refused: $(grep ATTACK "$log")"
ok "the release could read neither the agent's TLS key nor its seal key"

pid=$(cat "$root/run/app.pid")
st=/proc/$pid/status
[ -r "$st" ] || fail "the release (pid $pid) is not running"
read -r _ ruid euid suid fsuid < <(grep '^Uid:' "$st")
read -r _ rgid egid sgid fsgid < <(grep '^Gid:' "$st")
[ "$ruid" != 0 ] || fail "the release runs as root: $(grep -E '^(Uid|Gid):' "$st")"
[ "$ruid $euid $suid $fsuid" = "$ruid $ruid $ruid $ruid" ] || fail "mixed uids: $(grep '^Uid:' "$st")"
[ "$rgid $egid $sgid $fsgid" = "$rgid $rgid $rgid $rgid" ] && [ "$rgid" != 0 ] || fail "gids: $(grep '^Gid:' "$st")"
[ -z "$(grep '^Groups:' "$st" | cut -f2 | tr -d ' ')" ] || fail "supplementary groups kept: $(grep '^Groups:' "$st")"
grep -qE '^NoNewPrivs:\s+1' "$st" || fail "no_new_privs is not set: $(grep NoNewPrivs "$st")"
grep -qE '^CapEff:\s+0+$' "$st" || fail "the release holds capabilities: $(grep CapEff "$st")"
ok "the release runs as uid $ruid (gid $rgid), no supplementary groups, no_new_privs, no capabilities"

sd=$(js 'j.secrets_dir' < "$root/run/app.json")
[ -n "$sd" ] && [ -d "$sd" ] || fail "no secrets directory recorded: $(cat "$root/run/app.json")"
[ "$(stat -c '%a %u' "$sd/api-token")" = "400 $ruid" ] \
  || fail "secrets file: $(stat -c '%a %U(%u)' "$sd/api-token"), want 400 owned by uid $ruid"
[ "$(stat -c '%a' "$sd")" = 710 ] || fail "secrets directory: mode $(stat -c '%a' "$sd"), want 710"
[ "$(stat -c '%g' "$sd")" = "$rgid" ] || fail "secrets directory: group $(stat -c '%g' "$sd"), want $rgid"
port=$(js 'j.port' < "$root/run/app.json")
[ "$(node -e "fetch('http://127.0.0.1:$port/').then(r=>r.json()).then(j=>console.log(j.secret))")" = present ] \
  || fail "the release cannot read its own secrets file"
ok "its secrets file is 0400 and its own, in a directory only its group may enter (and it reads it)"

done_checks
