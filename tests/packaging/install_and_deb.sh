#!/usr/bin/env bash
# tests/packaging/install_and_deb.sh - `make install` and `make deb` produce a tree
# and a package whose systemd units systemd accepts.
#
# 1. `make install NOBUILD=1 DESTDIR=$tmp/root` (the binaries already in
#    build/bin; a test never relinks them): every binary, unit, man page,
#    document and example is where packaging/README.md says, and no
#    @PLACEHOLDER@ is left in a unit.
# 2. `systemd-analyze verify --root=$tmp/root` on every installed unit, with
#    a copy of the system's own units in the root (the units' dependencies:
#    sysinit.target, network-online.target, ...). It fails on a fatal
#    error (a missing or non-executable ExecStart=, a bad setting), and
#    this test fails on any line it prints at all (an unknown key or
#    section, an invalid value: systemd ignores those with a warning and
#    exits 0). First a unit broken on purpose (a misspelt directive) must
#    be refused, so that the check is known to catch one.
# 3. Each example configuration passes `slipway-<name> --check-config`
#    with the credential paths the unit sets.
# 3b. Shell completion: the installed bash and zsh files are what
#    `slipway completion bash|zsh` prints (make install generates them
#    from the binary, like the man pages), the bash one parses and
#    completes, and the copies checked in under cli/completion/ are not
#    stale.
# 4. `make deb NOBUILD=1`: dpkg-deb -I shows the package with the runtime
#    libraries in Depends and the maintainer scripts; dpkg-deb -c lists the
#    binaries under /usr/bin and /usr/sbin, the units under
#    /lib/systemd/system and the completion files under /usr/share; the
#    units extracted from the package verify too.
set -uo pipefail

top=$(cd "$(dirname "$0")/../.." && pwd)
cd "$top"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/slipway-packaging.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fails=0
ok() { echo "ok - $*"; }
bad() { echo "not ok - $*"; fails=$((fails + 1)); }
check() { if [ "$2" = 0 ]; then ok "$1"; else bad "$1"; fi; }
die() { echo "not ok - $*"; exit 1; }

command -v systemd-analyze >/dev/null || die "systemd-analyze missing (scripts/bootstrap installs systemd)"
command -v dpkg-deb >/dev/null && command -v dpkg-shlibdeps >/dev/null \
  || die "dpkg-deb or dpkg-shlibdeps missing (dpkg-dev)"
version=$(sed -n 's/^VERSION := //p' Makefile)
services=(artifact orchestrator policy audit secrets)
daemons=("${services[@]}" agent)

# ---- 1. make install ----
root=$tmp/root
make --no-print-directory install NOBUILD=1 PREFIX=/usr/local DESTDIR="$root" >"$tmp/install.log" 2>&1 \
  || die "make install failed: $(cat "$tmp/install.log")"
p=$root/usr/local
missing=()
want=("$p/bin/slipway" "$p/share/man/man1/slipway.1.gz" "$p/lib/systemd/system/slipway.target"
      "$p/lib/sysusers.d/slipway.conf" "$p/share/doc/slipway/LICENSE" "$p/share/doc/slipway/operations.md"
      "$p/share/doc/slipway/architecture.md" "$p/share/doc/slipway/README.md"
      "$p/share/bash-completion/completions/slipway" "$p/share/zsh/site-functions/_slipway")
for d in "${daemons[@]}"; do
  want+=("$p/sbin/slipway-$d" "$p/lib/systemd/system/slipway-$d.service"
         "$p/share/man/man8/slipway-$d.8.gz" "$p/share/doc/slipway/examples/$d.env"
         "$p/share/doc/slipway/README.$d.md")
done
for f in "${want[@]}"; do [ -s "$f" ] || missing+=("${f#"$root"}"); done
check "make install put ${#want[@]} files in place${missing[*]:+ (missing: ${missing[*]})}" "${#missing[@]}"
n=0
for d in "${daemons[@]}"; do [ -x "$p/sbin/slipway-$d" ] || n=$((n + 1)); done
check "the daemons are executable in sbin/" "$n"
left=$(grep -l '@[A-Z]*@' "$p"/lib/systemd/system/* 2>/dev/null)
check "no placeholder left in the installed units${left:+: $left}" "$([ -z "$left" ] && echo 0 || echo 1)"
n=$(grep -c "^ExecStart=/usr/local/sbin/slipway-" "$p"/lib/systemd/system/*.service | awk -F: '{s+=$2} END {print s}')
check "each service unit starts its binary from /usr/local/sbin ($n of ${#daemons[@]})" \
  "$([ "$n" = "${#daemons[@]}" ] && echo 0 || echo 1)"
# Man pages: made from each binary's --help, so they list its options.
n=0
for d in "${services[@]}"; do
  zcat "$p/share/man/man8/slipway-$d.8.gz" | grep -q -- '--pg-url' || n=$((n + 1))
done
zcat "$p/share/man/man8/slipway-agent.8.gz" | grep -q -- '--orchestrator-addr' || n=$((n + 1))
zcat "$p/share/man/man1/slipway.1.gz" | grep -q '^\.SH NAME' || n=$((n + 1))
check "the man pages carry each binary's options" "$n"

# ---- 2. systemd-analyze verify ----
# The root needs the units ours depend on; systemd looks for them in
# <root>/usr/lib/systemd/system (and /lib, a link to it on Debian 12).
mkdir -p "$root/usr/lib/systemd"
cp -a /usr/lib/systemd/system "$root/usr/lib/systemd/" || die "cannot copy the system's units"
verify() { # ROOT UNIT-PATH-IN-ROOT: 0 only when systemd says nothing at all
  local out rc
  out=$(systemd-analyze verify --man=no --root="$1" "$2" 2>&1)
  rc=$?
  if [ $rc != 0 ] || [ -n "$out" ]; then
    printf '    %s\n' "$out" | head -5
    return 1
  fi
  return 0
}
# The check must catch a broken unit: a misspelt directive (systemd
# ignores it with a warning) and an ExecStart= that does not exist.
u=/usr/local/lib/systemd/system/slipway-policy.service
cp "$root$u" "$tmp/policy.service.orig"
sed -i 's/^ProtectSystem=strict/ProtectSystm=strict/' "$root$u"
verify "$root" "$u" >/dev/null
check "a unit with a misspelt directive is refused" "$([ $? != 0 ] && echo 0 || echo 1)"
cp "$tmp/policy.service.orig" "$root$u"
sed -i 's|^ExecStart=/usr/local/sbin/slipway-policy|ExecStart=/usr/local/sbin/slipway-nope|' "$root$u"
verify "$root" "$u" >/dev/null
check "a unit whose ExecStart= does not exist is refused" "$([ $? != 0 ] && echo 0 || echo 1)"
cp "$tmp/policy.service.orig" "$root$u"
for f in "$p"/lib/systemd/system/*; do
  verify "$root" "${f#"$root"}"
  rc=$? # before the message's $(basename): it would reset $?
  check "systemd-analyze verify ${f##*/}" $rc
done

# systemd ignores an unknown capability name without a word: check the
# names against its own list.
known=" $(systemd-analyze capability | awk 'NR > 1 {print toupper($1)}' | tr '\n' ' ') "
n=0
for c in $(sed -n 's/^\(CapabilityBoundingSet\|AmbientCapabilities\)=//p' "$p"/lib/systemd/system/*.service); do
  [[ "$known" == *" ${c#\~} "* ]] || { echo "    unknown capability $c"; n=$((n + 1)); }
done
check "every capability the units name is one systemd knows" "$n"

# ---- 3. the example configuration ----
cred=$tmp/cred
mkdir -m 0700 "$cred"
for f in ca.pem cert.pem key.pem pgpass s3-secret-key; do echo x >"$cred/$f"; chmod 0600 "$cred/$f"; done
for d in "${daemons[@]}"; do
  U=$(echo "$d" | tr a-z A-Z)
  out=$(
    set -a
    # shellcheck disable=SC1090
    . "$p/share/doc/slipway/examples/$d.env"
    set +a
    export "SLIPWAY_${U}_CA=$cred/ca.pem" "SLIPWAY_${U}_CERT=$cred/cert.pem" "SLIPWAY_${U}_KEY=$cred/key.pem"
    export PGPASSFILE=$cred/pgpass
    grep -q "S3_SECRET_KEY_FILE" "$p/lib/systemd/system/slipway-$d.service" \
      && export "SLIPWAY_${U}_S3_SECRET_KEY_FILE=$cred/s3-secret-key"
    args=()
    [ "$d" = agent ] && args=(--root "$tmp/agent-root")
    "$p/sbin/slipway-$d" "${args[@]}" --check-config 2>&1
  )
  rc=$?
  [ $rc = 0 ] || printf '    %s\n' "$out" | tail -3
  check "examples/$d.env with the unit's credentials passes --check-config" $rc
done

# ---- 3b. shell completion ----
# What the binary prints is the reference: the installed files must be it,
# and so must the copies in cli/completion/ (regenerate them with
# `build/bin/slipway completion bash > cli/completion/slipway.bash` and
# `... zsh > cli/completion/_slipway` after changing a command table).
bashc=$p/share/bash-completion/completions/slipway
zshc=$p/share/zsh/site-functions/_slipway
build/bin/slipway completion bash >"$tmp/want.bash" 2>&1 || die "slipway completion bash failed"
build/bin/slipway completion zsh >"$tmp/want.zsh" 2>&1 || die "slipway completion zsh failed"
check "the installed bash completion is what slipway completion bash prints" \
  "$(cmp -s "$tmp/want.bash" "$bashc" && echo 0 || echo 1)"
check "the installed zsh completion is what slipway completion zsh prints" \
  "$(cmp -s "$tmp/want.zsh" "$zshc" && echo 0 || echo 1)"
n=0
for f in "$bashc" "$zshc"; do
  m=$(stat -c %a "$f" 2>/dev/null)
  [ "$m" = 644 ] || { echo "    ${f#"$root"}: mode ${m:-missing}"; n=$((n + 1)); }
done
check "the completion files are mode 0644" "$n"
head -1 "$zshc" | grep -qx '#compdef slipway'
check "the zsh file starts with #compdef slipway (zsh's compinit needs it)" $?
out=$(bash -c '
  . "$1" || exit 1
  COMP_WORDS=(slipway deploym); COMP_CWORD=1; _slipway
  [ "${COMPREPLY[*]}" = "deployments deployment" ] || [ "${COMPREPLY[*]}" = "deployment deployments" ] ||
    { echo "got: ${COMPREPLY[*]}"; exit 1; }
  complete -p slipway' _ "$bashc" 2>&1)
rc=$?
[ $rc = 0 ] || printf '    %s\n' "$out" | head -3
check "the installed bash completion loads and completes 'slipway deploym'" $rc
for f in slipway.bash _slipway; do
  w=$tmp/want.bash; [ "$f" = _slipway ] && w=$tmp/want.zsh
  cmp -s "$w" "cli/completion/$f"
  check "cli/completion/$f is what slipway completion prints (else regenerate it)" $?
done

# ---- 4. make deb ----
make --no-print-directory deb NOBUILD=1 DEB_OUT="$tmp/out" DEB_WORK="$tmp/debwork" >"$tmp/deb.log" 2>&1 \
  || die "make deb failed: $(cat "$tmp/deb.log")"
deb=$(ls "$tmp"/out/slipway_"$version"_*.deb 2>/dev/null | head -1)
[ -n "$deb" ] || die "make deb wrote no $tmp/out/slipway_${version}_<arch>.deb"
ok "make deb wrote $(basename "$deb")"
info=$(dpkg-deb -I "$deb")
check "the package is slipway $version" \
  "$(grep -q "^ Package: slipway$" <<<"$info" && grep -q "^ Version: $version$" <<<"$info" && echo 0 || echo 1)"
deps=$(sed -n 's/^ Depends: //p' <<<"$info")
n=0
for lib in libgrpc libprotobuf-c libpq5 libsodium libs3 libssl libarchive libjansson libc6 adduser; do
  [[ "$deps" == *"$lib"* ]] || { echo "    Depends lacks $lib: $deps"; n=$((n + 1)); }
done
check "Depends names the runtime libraries and adduser" "$n"
check "the package has its postinst and postrm" \
  "$(grep -q ' postinst ' <<<"$info" && grep -q ' postrm ' <<<"$info" && echo 0 || echo 1)"
list=$(dpkg-deb -c "$deb" | awk '{print $6}')
n=0
for f in ./usr/bin/slipway ./lib/systemd/system/slipway.target ./usr/lib/sysusers.d/slipway.conf \
         ./usr/share/doc/slipway/operations.md ./usr/share/man/man1/slipway.1.gz \
         ./usr/share/bash-completion/completions/slipway ./usr/share/zsh/vendor-completions/_slipway; do
  grep -qx -- "$f" <<<"$list" || { echo "    missing $f"; n=$((n + 1)); }
done
for d in "${daemons[@]}"; do
  for f in "./usr/sbin/slipway-$d" "./lib/systemd/system/slipway-$d.service" "./usr/share/man/man8/slipway-$d.8.gz"; do
    grep -qx -- "$f" <<<"$list" || { echo "    missing $f"; n=$((n + 1)); }
  done
done
check "dpkg-deb -c lists the binaries, units, man pages and completion files" "$n"
n=$(grep -c '^\./etc/' <<<"$list")
check "the package writes nothing under /etc (configuration is the operator's)" "$n"
droot=$tmp/deb-root
dpkg-deb -x "$deb" "$droot" || die "dpkg-deb -x failed"
mkdir -p "$droot/usr/lib/systemd"
cp -a /usr/lib/systemd/system/. "$droot/usr/lib/systemd/system/"
n=0
for f in "$droot"/lib/systemd/system/slipway*; do
  grep -q '^ExecStart=/usr/local' "$f" && { echo "    $f starts from /usr/local"; n=$((n + 1)); }
  verify "$droot" "${f#"$droot"}" || n=$((n + 1))
done
check "the package's units start from /usr/sbin and verify" "$n"

[ $fails = 0 ] || { echo "$fails check(s) failed"; exit 1; }
echo "all packaging checks passed"
