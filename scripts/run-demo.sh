#!/usr/bin/env bash
# Starts lmproxy on :PORT and two simulated replicas that register themselves with it, prints a curl
# to try, and stops all three on Ctrl-C.
set -euo pipefail
bin=${1:-bin/lmproxy}
port=${2:-8000}
proxy="http://127.0.0.1:${port}"

pids=()
cleanup() {
	# Replicas first, so they deregister from a proxy that is still up.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[i]}" 2>/dev/null || true; wait "${pids[i]}" 2>/dev/null || true; done
}
trap cleanup EXIT INT TERM

"$bin" serve --port "$port" --disable-cache-status &
pids+=($!)
"$bin" replica --port 0 --model sim-model --speed 1 --proxy-url "$proxy" --tokens 12 --itl 50ms &
pids+=($!)
"$bin" replica --port 0 --model sim-model --speed 2 --proxy-url "$proxy" --tokens 12 --itl 50ms &
pids+=($!)

# Wait (at most 5 s) until both replicas show in /nodes/status.
for _ in $(seq 50); do
	n=$(curl -fsS "$proxy/nodes/status" 2>/dev/null | grep -o '"role_name"' | wc -l || true)
	[[ ${n:-0} -ge 2 ]] && break
	sleep 0.1
done
cat <<MSG

lmproxy is up on ${proxy} with $(curl -fsS "$proxy/nodes/status" | grep -o '"role_name"' | wc -l) replicas. Try:

  curl -N ${proxy}/v1/chat/completions -H 'Content-Type: application/json' \\
    -d '{"model": "sim-model", "stream": true, "messages": [{"role": "user", "content": "Hello"}]}'

  curl ${proxy}/nodes/status

Ctrl-C stops the proxy and the replicas.
MSG
wait "${pids[0]}"
