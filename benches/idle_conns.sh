#!/usr/bin/env bash
# Memory per idle client connection, and how many idle connections the default config holds
# before it refuses new ones (the default max_connections follows the open-files limit).
#
#   benches/idle_conns.sh            # uses target/release/gatehouse, else target/debug/gatehouse
#   BIN=path/to/gatehouse N=2000 benches/idle_conns.sh
#
# Each idle connection has made one request (GET /ping, answered by Gatehouse itself) and
# then sits in keep-alive (closed after client_idle_timeout, 60 s by default). Everything
# else is the default config. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-}
if [[ -z "$BIN" ]]; then
    if [[ -x target/release/gatehouse ]]; then BIN=target/release/gatehouse; else BIN=target/debug/gatehouse; fi
fi
N=${N:-2000}
work=$(mktemp -d)
trap 'kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$work"' EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
proxy=$(free_port)
admin=$(free_port)
cat >"$work/gatehouse.toml" <<EOF
[server]
listen = ["127.0.0.1:$proxy"]
admin_listen = "127.0.0.1:$admin"
[log]
level = "warn"
access_log = false
[[upstreams]]
id = "app"
url = "http://127.0.0.1:9"
EOF

"$BIN" serve --config "$work/gatehouse.toml" >"$work/log" 2>&1 &
pid=$!
for _ in $(seq 100); do
    curl -fs "http://127.0.0.1:$admin/ping" >/dev/null 2>&1 && break
    sleep 0.1
done

echo "binary: $BIN; open-files limit (soft): $(ulimit -n)"
python3 - "$pid" "$proxy" "$admin" "$N" <<'EOF'
import socket, sys, time, urllib.request

pid, proxy, admin, n = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])

def rss_kib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])

def metric(name):
    text = urllib.request.urlopen(f"http://127.0.0.1:{admin}/metrics").read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0

def idle_connection():
    s = socket.create_connection(("127.0.0.1", proxy))
    s.sendall(b"GET /ping HTTP/1.1\r\nHost: bench\r\n\r\n")
    s.settimeout(2)
    data = b""
    while b"OK\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    return s

held = []
time.sleep(0.5)
before = rss_kib()
for _ in range(n):
    held.append(idle_connection())
time.sleep(1)
after = rss_kib()
per = (after - before) * 1024 / n
print(f"RSS: {before} KiB before, {after} KiB with {n} idle keep-alive connections: "
      f"{per / 1024:.1f} KiB per idle connection")

# Keep opening until the proxy refuses (closes a new connection at once).
rejected = 'gatehouse_connections_rejected_total{listener="proxy",reason="max_connections"}'
start = time.time()
while metric(rejected) == 0 and time.time() - start < 50:
    for _ in range(200):
        try:
            held.append(idle_connection())
        except (ConnectionError, OSError, socket.timeout):
            break
opened = metric('gatehouse_connections_open{listener="proxy"}')
print(f"held {opened:.0f} idle connections before refusing "
      f"(rejected so far: {metric(rejected):.0f}); RSS then {rss_kib()} KiB")
EOF
