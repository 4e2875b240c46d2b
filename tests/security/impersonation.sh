#!/usr/bin/env bash
# impersonation: a holder of an agent's key (a compromised target host)
# poses as a control-plane service. Clients must refuse a server whose
# certificate does not carry the SPIFFE ID of the service they meant to
# reach, before they send it anything, even when the CA, the host name and
# the extended key usage all check out; agent and user certificates are
# client-only; and a principal may only call the RPCs meant for its kind.
. "$(dirname "$0")/lib.sh"

td=$(cat "$SLIPWAY_PKI_DIR/trust-domain")
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done; }
trap cleanup EXIT
free_port() { node -e 'const s=require("net").createServer();s.listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }

# An impostor TLS server (openssl s_server, speaking h2 as ALPN) on a free
# port with CERT/KEY; whatever a client sends after the handshake lands in
# $T/NAME.out. Sets $port.
impostor() { # NAME CERT KEY
  port=$(free_port)
  # stdin: a FIFO opened read-write never reaches EOF (s_server stops at
  # EOF); stdout unbuffered, so what arrives is in the file at once.
  mkfifo "$T/$1.in"
  stdbuf -o0 openssl s_server -accept "127.0.0.1:$port" -cert "$2" -key "$3" -CAfile "$SLIPWAY_CA" \
    -Verify 1 -alpn h2 >"$T/$1.out" 2>"$T/$1.err" <>"$T/$1.in" &
  pids+=($!)
  local i
  for i in $(seq 1 100); do grep -q ACCEPT "$T/$1.out" 2>/dev/null && return 0; sleep 0.1; done
  fail "openssl s_server did not start: $(cat "$T/$1.err")"
}
# Fails when the impostor NAME received the HTTP/2 connection preface, i.e.
# a client finished the handshake and started sending requests to it.
got_nothing() { # NAME WHO
  if grep -aq 'PRI \* HTTP/2.0' "$T/$1.out"; then fail "$2 sent its request to the impostor"; fi
}

# --- the agent's certificate as `slipway pki issue --agent` makes it
slipway pki issue --dir "$SLIPWAY_PKI_DIR" --agent imp/host1 --out "$T/agent" >/dev/null \
  || fail "cannot issue an agent certificate"
agent_id="spiffe://$td/agent/imp/host1"

# 1. The CLI, sent to an impostor orchestrator holding the agent's key.
impostor orch "$T/agent.crt" "$T/agent.key"
if SLIPWAY_ORCHESTRATOR_ADDR="127.0.0.1:$port" timeout 60 slipway --timeout 5s deployments ls \
  >"$T/out" 2>"$T/err"; then fail "the CLI accepted an impostor orchestrator"; fi
got_nothing orch "the CLI"
grep -q "spiffe://$td/service/orchestrator" "$T/err" \
  || fail "the CLI's error does not name the service it expected: $(cat "$T/err")"
ok "the CLI refuses an agent's certificate posing as the orchestrator, before sending anything"

# 2. The certificate itself is client-only: no serverAuth, no server names.
ext=$(openssl x509 -in "$T/agent.crt" -noout -ext extendedKeyUsage,subjectAltName)
grep -q "TLS Web Client Authentication" <<<"$ext" || fail "agent certificate lacks clientAuth: $ext"
if grep -q "TLS Web Server Authentication" <<<"$ext"; then fail "agent certificate may serve TLS: $ext"; fi
if grep -qE "DNS:|IP Address:" <<<"$ext"; then fail "agent certificate names a host: $ext"; fi
grep -q "URI:$agent_id" <<<"$ext" || fail "agent certificate lost its SPIFFE ID: $ext"
slipway pki issue --dir "$SLIPWAY_PKI_DIR" --user imp-user --out "$T/user" >/dev/null || fail "issue user"
ext=$(openssl x509 -in "$T/user.crt" -noout -ext extendedKeyUsage)
if grep -q "TLS Web Server Authentication" <<<"$ext"; then fail "user certificate may serve TLS: $ext"; fi
ok "agent and user certificates are client-only (clientAuth, no serverAuth, no DNS/IP names)"

# 3. Pinning holds when everything else matches: an agent certificate as
# older releases issued it (serverAuth, localhost and 127.0.0.1, signed by
# the deployment CA; still valid until it expires) in a real artifact
# service, which answers. Only the SPIFFE ID tells it apart.
cat >"$T/legacy.ext" <<EOF
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature,keyAgreement
extendedKeyUsage=serverAuth,clientAuth
subjectAltName=URI:spiffe://$td/agent/imp/host2,DNS:localhost,IP:127.0.0.1
EOF
openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$T/legacy.key" \
  -subj "/O=Slipway/CN=imp-host2" -out "$T/legacy.csr" 2>/dev/null || fail "legacy csr"
chmod 600 "$T/legacy.key"
openssl x509 -req -in "$T/legacy.csr" -CA "$SLIPWAY_PKI_DIR/ca.crt" -CAkey "$SLIPWAY_PKI_DIR/ca.key" \
  -set_serial "0x$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')" -days 1 -extfile "$T/legacy.ext" \
  -out "$T/legacy.crt" 2>/dev/null || fail "cannot sign the legacy agent certificate"
sed -e "s|'$S/pki/artifact.crt'|'$T/legacy.crt'|; s|'$S/pki/artifact.key'|'$T/legacy.key'|" \
  -e "s|--listen 127.0.0.1:[0-9]*|--listen 127.0.0.1:0|; s|--port-file '[^']*'|--port-file '$T/art.port'|" \
  -e "s|--metrics-listen 127.0.0.1:[0-9]*|--metrics-listen 127.0.0.1:0|" \
  "$S/run/artifact.sh" >"$T/artifact.sh"
grep -q "$T/legacy.crt" "$T/artifact.sh" || fail "cannot rewrite the artifact launcher"
bash "$T/artifact.sh" >"$T/artifact.log" 2>&1 </dev/null &
pids+=($!)
for i in $(seq 1 100); do [ -s "$T/art.port" ] && break; sleep 0.1; done
[ -s "$T/art.port" ] || fail "the impostor artifact service did not start: $(tail -5 "$T/artifact.log")"
if SLIPWAY_ARTIFACT_ADDR="127.0.0.1:$(cat "$T/art.port")" timeout 60 slipway --timeout 5s artifact ls \
  >"$T/out" 2>"$T/err"; then fail "the CLI listed releases from an agent posing as the artifact service"; fi
grep -q "spiffe://$td/service/artifact" "$T/err" \
  || fail "the CLI's error does not name the service it expected: $(cat "$T/err")"
grep -q "spiffe://$td/agent/imp/host2" "$T/err" \
  || fail "the CLI's error does not name the identity it met: $(cat "$T/err")"
ok "the CLI refuses a CA-signed server certificate for the right host with the wrong SPIFFE ID"

# 4. An agent sent to an impostor orchestrator (the legacy certificate: the
# handshake alone would succeed) refuses it and says whom it expected.
impostor orch2 "$T/legacy.crt" "$T/legacy.key"
mkdir -p "$T/agentroot" && chmod 700 "$T/agentroot"
SLIPWAY_AGENT_ORCHESTRATOR_ADDR="127.0.0.1:$port" SLIPWAY_AGENT_ARTIFACT_ADDR="$SLIPWAY_ARTIFACT_ADDR" \
  slipway-agent --root "$T/agentroot" --ca "$SLIPWAY_CA" --cert "$T/agent.crt" --key "$T/agent.key" \
  --hostname host1 --label app=imp --label environment=prod --label region=imp \
  >"$T/agent.log" 2>&1 </dev/null &
pids+=($!)
for i in $(seq 1 100); do
  grep -q "spiffe://$td/service/orchestrator" "$T/agent.log" && break
  grep -aq 'PRI \* HTTP/2.0' "$T/orch2.out" && break
  sleep 0.1
done
got_nothing orch2 "the agent"
grep -q "spiffe://$td/service/orchestrator" "$T/agent.log" \
  || fail "the agent does not say it expected the orchestrator: $(tail -5 "$T/agent.log")"
ok "an agent refuses an impostor orchestrator before sending anything"

# 5. Kinds of principal are fixed by the certificate, not by policy: a user
# may not call a service-only RPC, and an agent's key only opens the agent
# RPCs (it cannot browse releases, although policy lets agents read them).
slipway secrets keygen --out "$T/agentkey" >/dev/null || fail "secrets keygen"
expect_denied "user CreateGrant" as_user imp-user slipway secrets grant --deployment d-imp \
  --agent "$agent_id" --agent-pub "$T/agentkey.pub" --scope imp/prod DB_URL
expect_denied "agent ListApps" env SLIPWAY_CERT="$T/agent.crt" SLIPWAY_KEY="$T/agent.key" slipway artifact ls
grep -q "agent" "$T/err" || fail "the denial does not say why: $(cat "$T/err")"
ok "a user cannot call a service-only RPC, nor an agent a user RPC"

done_checks
