#!/bin/bash
# Idle CPU of a switchyard daemon at N Services (files of 100), iptables mode, in a throwaway netns.
# As root; nothing outside its own network namespace is touched.
# usage: proxy-daemon/benches/idle_cpu.sh BIN [SERVICES=5000] [SECONDS=60]
set -u
BIN=$1; N=${2:-5000}; SECS=${3:-60}
NS=swy-idle-$$
DIR=$(mktemp -d)
cleanup() { [ -n "${PID:-}" ] && kill $PID 2>/dev/null; wait $PID 2>/dev/null; ip netns del $NS 2>/dev/null; rm -rf "$DIR"; }
trap cleanup EXIT
python3 - "$DIR" "$N" <<'PY'
import sys
d, n = sys.argv[1], int(sys.argv[2])
def ip(b, i):
    v = b + i
    return f"{v>>24}.{(v>>16)&255}.{(v>>8)&255}.{v&255}"
for f in range(n // 100):
    out = []
    for j in range(100):
        i = f * 100 + j
        out.append(f"""---
apiVersion: v1
kind: Service
metadata: {{name: svc-{i}, namespace: bench}}
spec:
  clusterIP: {ip(0x0a600000, i)}
  ports: [{{name: http, port: 80, protocol: TCP}}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: svc-{i}-abc
  namespace: bench
  labels: {{kubernetes.io/service-name: svc-{i}}}
addressType: IPv4
ports: [{{name: http, port: 8080, protocol: TCP}}]
endpoints:
- addresses: [{ip(0x0af00000, 2*i)}]
  conditions: {{ready: true}}
  nodeName: node-b
- addresses: [{ip(0x0af00000, 2*i+1)}]
  conditions: {{ready: true}}
  nodeName: node-b
""")
    open(f"{d}/f{f:03}.yaml", "w").write("".join(out))
open(f"{d}/node.yaml", "w").write("apiVersion: v1\nkind: Node\nmetadata: {name: node-a}\nstatus:\n  addresses: [{type: InternalIP, address: 192.168.0.10}]\n")
PY
ip netns add $NS && ip -n $NS link set lo up
ip netns exec $NS "$BIN" --proxy-mode iptables --source "file:$DIR" --hostname-override node-a \
  --metrics-bind-address 127.0.0.1:19249 --healthz-bind-address 127.0.0.1:19256 2>"$DIR.log" &
PID=$!
for i in $(seq 1 600); do
  code=$(ip netns exec $NS curl -s -o /dev/null -w '%{http_code}' http://127.0.0.1:19249/readyz)
  [ "$code" = 200 ] && break; sleep 0.5
done
[ "$code" = 200 ] || { echo "not ready"; tail "$DIR.log"; exit 1; }
sleep 5
tck=$(getconf CLK_TCK)
read u0 s0 < <(awk '{print $14, $15}' /proc/$PID/stat); t0=$(date +%s.%N)
sleep "$SECS"
read u1 s1 < <(awk '{print $14, $15}' /proc/$PID/stat); t1=$(date +%s.%N)
python3 -c "import sys; u0,s0,u1,s1,t0,t1,tck=map(float,sys.argv[1:]); print(f'idle CPU: {((u1+s1)-(u0+s0))/tck/(t1-t0):.4f} CPU-s/s over {t1-t0:.0f} s (utime {(u1-u0)/tck:.2f} s, stime {(s1-s0)/tck:.2f} s)')" $u0 $s0 $u1 $s1 $t0 $t1 $tck
rm -f "$DIR.log"
