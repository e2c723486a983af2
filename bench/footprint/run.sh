#!/usr/bin/env bash
# Footprint of one real attestation over MQTT, and the server's memory per pending session.
#
# Sets up one world from scratch in a temp dir: a per-run swtpm_localca CA, one swtpm
# (RSA-2048 EK with its certificate from that CA, made by swtpm_setup), the SVID CA
# (ekattestctl ca create), mosquitto on a free loopback port, ekattest-server trusting the
# swtpm CA, and byte-counting TCP proxies (tcp_count.py) in front of the broker for the
# server and for the agent. Then:
#  1. agent peak RSS: `ekattest-agent run --once` under /usr/bin/time -v, once per agent
#     binary given (the fleet and agent profiles), each a full attestation with the EK cert;
#  2. bytes on the wire of those attestations: every TCP byte of the agent's connection and
#     of the server's connection (proxies), and the four messages as published (sniff.py),
#     from which the MQTT packets are computed exactly;
#  3. with SESSIONS > 0: flood.py sends SESSIONS copies of the agent's own Login frame
#     (captured by sniff.py) from distinct agent ids, nobody answers, then the daemon's VmRSS
#     is read from /proc before and after. Since wire version 2 sessions are one per EK, so
#     this shows the replay flood opening one session (memory per session: the sessions
#     bench, `cargo bench -p ekattest-server --bench sessions`).
#
# Usage: bench/footprint/run.sh
# Env:   SERVER_BIN, CTL_BIN (default target/fleet/...), AGENT_BINS (space separated, default
#        "target/fleet/ekattest-agent target/agent/ekattest-agent"), SESSIONS (default 0),
#        SIGNER=1: the server signs with an intermediate from `ekattestctl ca issue-signer`
#        (the agents keep the root as trust bundle, so the first Challenge carries the
#        signer's certificate); default: the server signs with the root.
#        Build them first: cargo build --profile fleet -p ekattest-server -p ekattest-agent &&
#        cargo build --profile agent -p ekattest-agent
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
HERE="$ROOT/bench/footprint"
SERVER_BIN=${SERVER_BIN:-$ROOT/target/fleet/ekattest-server}
CTL_BIN=${CTL_BIN:-$ROOT/target/fleet/ekattestctl}
AGENT_BINS=${AGENT_BINS:-"$ROOT/target/fleet/ekattest-agent $ROOT/target/agent/ekattest-agent"}
SESSIONS=${SESSIONS:-0}
SIGNER=${SIGNER:-0}
CLUSTER=bench
die() { echo "error: $*" >&2; exit 1; }

for b in "$SERVER_BIN" "$CTL_BIN" $AGENT_BINS; do
    [ -x "$b" ] || die "$b is missing: cargo build --profile fleet -p ekattest-server -p ekattest-agent; cargo build --profile agent -p ekattest-agent"
done
for t in swtpm swtpm_setup swtpm_localca mosquitto python3 /usr/bin/time; do
    command -v "$t" >/dev/null || die "$t is missing: apt-get install -y swtpm swtpm-tools mosquitto python3 time"
done

T=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$T/swtpm.pid" ] && kill "$(cat "$T/swtpm.pid")" 2>/dev/null || true
    sleep 0.3
    [ -n "${KEEP:-}" ] && echo "kept $T" || rm -rf "$T"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; die "nothing listens on $1"; }

# --- swtpm with an RSA-2048 EK certificate from a per-run CA -------------------------------
mkdir -p "$T/ca" "$T/tpm"
printf 'statedir = %s\nsigningkey = %s/signkey.pem\nissuercert = %s/issuercert.pem\ncertserial = %s/certserial\n' \
    "$T/ca" "$T/ca" "$T/ca" "$T/ca" > "$T/localca.conf"
printf -- '--platform-manufacturer ekattest\n--platform-version 2.1\n--platform-model swtpm\n' > "$T/localca.options"
printf 'create_certs_tool = swtpm_localca\ncreate_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n' \
    "$T/localca.conf" "$T/localca.options" > "$T/setup.conf"
swtpm_setup --tpm2 --tpm-state "$T/tpm" --create-ek-cert --create-platform-cert --config "$T/setup.conf" \
    --overwrite > "$T/setup.log" 2>&1 || { cat "$T/setup.log"; die "swtpm_setup failed"; }
TPM_PORT=$(port); CTRL_PORT=$(port)
swtpm socket --tpm2 --tpmstate dir="$T/tpm" --server type=tcp,port="$TPM_PORT",bindaddr=127.0.0.1 \
    --ctrl type=tcp,port="$CTRL_PORT",bindaddr=127.0.0.1 --flags not-need-init,startup-clear \
    --pid file="$T/swtpm.pid" -d
wait_port "$TPM_PORT"

# --- broker, proxies, SVID CA, server -----------------------------------------------------
B=$(port); SP=$(port); AP=$(port); MP=$(port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\n' "$B" > "$T/mosquitto.conf"
mosquitto -c "$T/mosquitto.conf" > "$T/mosquitto.log" 2>&1 & PIDS+=($!)
wait_port "$B"
python3 "$HERE/tcp_count.py" "$SP" "$B" "$T/server.bytes" & PIDS+=($!)
python3 "$HERE/tcp_count.py" "$AP" "$B" "$T/agent.bytes" & PIDS+=($!)
wait_port "$SP"; wait_port "$AP"
"$CTL_BIN" ca create --trust-domain example.org --cert "$T/svid-ca.pem" --key "$T/svid-ca.key" >/dev/null
SIGN_CERT=$T/svid-ca.pem; SIGN_KEY=$T/svid-ca.key
if [ "$SIGNER" = 1 ]; then
    "$CTL_BIN" ca issue-signer --ca-cert "$T/svid-ca.pem" --ca-key "$T/svid-ca.key" \
        --cert "$T/signer.pem" --key "$T/signer.key" >/dev/null
    SIGN_CERT=$T/signer.pem; SIGN_KEY=$T/signer.key
    echo "server signer: intermediate $(stat -c %s "$T/signer.pem") B PEM (ekattestctl ca issue-signer)"
fi

{
    echo "section: AgentAttestation"; echo "schema: v1"; echo "spec:"; echo "  policies:"
    echo "    - name: bench"
    echo "      spiffeIdTemplate: /agents/tpm/{{tpm_ek.public_hash}}"
    echo "      requiredAttestors:"; echo "        - type: tpm_ek"; echo "          config:"
    echo "            caCerts: |"; sed 's/^/              /' "$T/ca/swtpm-localca-rootca-cert.pem"
    echo "            intermediateCerts: |"; sed 's/^/              /' "$T/ca/issuercert.pem"
} > "$T/policy.yaml"
cat > "$T/server.yaml" <<EOF
broker: mqtt://127.0.0.1:$SP
cluster-id: $CLUSTER
node-id: node-1
trust-domain: example.org
ca-cert: $SIGN_CERT
ca-key: $SIGN_KEY
# The bench's agents use agent-1, agent-2 ... and the flood replays one Login.
agent-id-from-ek: false
login-burst: 0
session-ttl: 1h
max-sessions: $((SESSIONS + 1000))
metrics-address: 127.0.0.1:$MP
policy-files: [$T/policy.yaml]
log-level: warn
EOF
"$SERVER_BIN" --config "$T/server.yaml" > "$T/server.log" 2>&1 & SERVER_PID=$!; PIDS+=($SERVER_PID)
wait_port "$MP"
sleep 0.5

# --- 1 + 2: agent runs -----------------------------------------------------------------------
python3 "$HERE/sniff.py" "$B" "$T/frames.jsonl" 1000000 & PIDS+=($!)
for _ in $(seq 100); do [ -f "$T/frames.jsonl.ready" ] && break; sleep 0.1; done
[ -f "$T/frames.jsonl.ready" ] || die "sniff.py did not subscribe"
echo "Agent peak RSS, one attestation each (ekattest-agent run --once, RSA-2048 EK + cert):"
i=0
for agent in $AGENT_BINS; do
    i=$((i + 1))
    mkdir -p "$T/agent$i"
    cat > "$T/agent$i.yaml" <<EOF
cluster-id: $CLUSTER
disable-kubernetes-attestation: true
agent-attestors:
- type: tpm_ek
broker: mqtt://127.0.0.1:$AP
tpm: swtpm:127.0.0.1:$TPM_PORT
ek: rsa2048
trust-bundle: $T/svid-ca.pem
data-dir: $T/agent$i
agent-id: agent-$i
log-level: warn
EOF
    /usr/bin/time -v "$agent" run --config "$T/agent$i.yaml" --once --timeout 60s > "$T/agent$i.log" 2>&1 ||
        { cat "$T/agent$i.log"; die "$agent did not attest"; }
    rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$T/agent$i.log")
    wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$T/agent$i.log")
    printf '  %-50s peak RSS %6s KB (%s MB), wall %s, size %s bytes\n' "$agent" "$rss" \
        "$(echo "scale=2; $rss / 1024" | bc)" "$wall" "$(stat -c %s "$agent")"
done
sleep 0.5
kill "${PIDS[-1]}" 2>/dev/null || true  # sniff.py
kill -USR1 "${PIDS[1]}" 2>/dev/null || true  # server proxy: snapshot its open connection
sleep 0.5

python3 - "$T" "$CLUSTER" <<'EOF'
import json, sys
t, cluster = sys.argv[1], sys.argv[2]
frames = [json.loads(l) for l in open(f"{t}/frames.jsonl")]
def vlen(n):
    return 1 if n < 128 else 2 if n < 16384 else 3 if n < 2097152 else 4
def publish(topic, payload, qos=1):  # MQTT 3.1.1 PUBLISH packet bytes
    rem = 2 + len(topic) + (2 if qos else 0) + payload
    return 1 + vlen(rem) + rem
print("\nMessages of agent-1's attestation (payload = ekattest frame, exact):")
total_agent = total_server = 0
for f in frames:
    if "agent-1" not in f["topic"].split("/"):
        continue
    kind = "answer" if "/answer/" in f["topic"] else f["topic"].rsplit("/", 1)[-1]
    if kind == "down":
        kind = "challenge" if f["hex"].startswith("0200") else "result"  # version 2, variant
    p = publish(f["topic"].encode(), f["len"])
    # Each message crosses the broker: one PUBLISH on the sender's connection, one on the
    # receiver's, and a 4-byte PUBACK (QoS 1) on each.
    total_agent += p + 4
    total_server += p + 4
    print(f"  {kind:9s} payload {f['len']:5d} B, topic {len(f['topic']):3d} B, PUBLISH packet {p:5d} B")
print(f"  per leg (PUBLISH + PUBACK, 4 messages): agent<->broker {total_agent} B, "
      f"broker<->server {total_server} B; both legs {total_agent + total_server} B")
def conns(path):
    return [json.loads(l) for l in open(path)]
print("\nTCP payload bytes counted by the proxies (whole connections, incl. CONNECT/SUBSCRIBE/"
      "DISCONNECT/PING):")
for c in [c for c in conns(f"{t}/agent.bytes") if c["up"] + c["down"]]:
    print(f"  agent connection {c['conn']}: up {c['up']} B, down {c['down']} B, total {c['up'] + c['down']} B")
for c in [c for c in conns(f"{t}/server.bytes") if c["up"] + c["down"]]:
    print(f"  server connection {c['conn']} (all attestations so far): up {c['up']} B, down {c['down']} B")
hexes = [f for f in frames if f["topic"].endswith("/agent-1/login")]
open(f"{t}/login.hex", "w").write(hexes[0]["hex"] if hexes else "")
EOF

# --- 3: pending sessions -------------------------------------------------------------------
# The flood goes straight into the broker; the server stays behind its proxy.
[ "$SESSIONS" -gt 0 ] || exit 0
[ -s "$T/login.hex" ] || die "no Login frame captured"
rss() { sed -n "s/^$2:[[:space:]]*//p" "/proc/$1/status"; }
before=$(rss "$SERVER_PID" VmRSS)
echo
echo "Server pending sessions: $SESSIONS Logins (EK cert chain checked, MakeCredential) from distinct agent ids, no answers"
echo "  server VmRSS before: $before"
python3 "$HERE/flood.py" "$B" ekattest/v1 "$CLUSTER" "$(cat "$T/login.hex")" "$SESSIONS" "http://127.0.0.1:$MP/metrics" |
    sed 's/^/  /'
after=$(rss "$SERVER_PID" VmRSS)
active=$(curl -s "http://127.0.0.1:$MP/metrics" 2>/dev/null | sed -n 's/^attestation_sessions_active //p' ||
    python3 -c 'import urllib.request,sys; print([l.split()[1] for l in urllib.request.urlopen(sys.argv[1]).read().decode().splitlines() if l.startswith("attestation_sessions_active ")][0])' "http://127.0.0.1:$MP/metrics")
echo "  server VmRSS after: $after, VmHWM $(rss "$SERVER_PID" VmHWM), sessions active $active"
b=${before% kB}; a=${after% kB}
echo "  => $(( (a - b) )) KB for $active sessions = $(echo "scale=1; ($a - $b) * 1024 / $active" | bc) B/session, $(echo "scale=1; ($a - $b) * 100000 / $active / 1024" | bc) MB per 100k"
