#!/usr/bin/env bash
# A highly available Agora on loopback, to try failover by hand: one etcd,
# three masters (one leads), one agent and the batch framework, all given
# the list of masters. Kill the leader (`kill -9 <pid>`, pids below) and
# watch another take over: `curl -s 127.0.0.1:5051/api/v1/leader`.
# Needs Debian's etcd-server. Ctrl-C stops everything.
set -euo pipefail
AGORA=${AGORA:-agora}
DATA=${DATA:-./agora-ha-data}
mkdir -p "$DATA"
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

etcd --data-dir "$DATA/etcd" --listen-client-urls http://127.0.0.1:2379 \
     --advertise-client-urls http://127.0.0.1:2379 \
     --election-timeout 500 --heartbeat-interval 50 >"$DATA/etcd.log" 2>&1 &
pids+=($!)
until curl -s -X POST http://127.0.0.1:2379/v3/kv/range -d '{"key":"AA=="}' >/dev/null; do sleep 0.2; done

# One auth file for the three masters: an operator, the agents' join
# token and the batch framework (no [acls]: each may do everything).
token() { head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
OPS=$(token) JOIN=$(token) BATCH=$(token)
cat >"$DATA/auth.toml" <<AUTH
[[principals]]
name = "ops"
token = "$OPS"
[[principals]]
name = "agents"
token = "$JOIN"
[[principals]]
name = "batch"
token = "$BATCH"
AUTH
chmod 600 "$DATA/auth.toml"

MASTERS=http://127.0.0.1:5051,http://127.0.0.1:5052,http://127.0.0.1:5053
for port in 5051 5052 5053; do
    "$AGORA" master --listen 127.0.0.1:$port --etcd http://127.0.0.1:2379 --leader-lease 1s \
        --auth "$DATA/auth.toml" >"$DATA/master-$port.log" 2>&1 &
    pids+=($!)
    echo "master on :$port  pid $!  log $DATA/master-$port.log"
done
AGORA_TOKEN=$JOIN "$AGORA" agent --master "$MASTERS" --listen 127.0.0.1:5061 --data-dir "$DATA/agent" \
    >"$DATA/agent.log" 2>&1 &
pids+=($!)
AGORA_TOKEN=$BATCH "$AGORA" batch --master "$MASTERS" --listen 127.0.0.1:5060 --etcd http://127.0.0.1:2379 \
    --data-dir "$DATA/batch" >"$DATA/batch.log" 2>&1 &
pids+=($!)
sleep 2
echo "leader: $(curl -s 127.0.0.1:5051/api/v1/leader)"
echo "try:    AGORA_TOKEN=$OPS AGORA_MASTER=$MASTERS $AGORA state"
wait
