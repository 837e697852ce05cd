#!/usr/bin/env bash
# Load comparison on one machine, all on 127.0.0.1: the same nginx upstream (a small body)
# reached directly, through nginx as a reverse proxy, through a bare pingora proxy (the
# framework baseline, examples/bare_pingora.rs), through Gatehouse on a public route, and
# through Gatehouse on a protected route with a session cookie from a real login at the test
# OP (tests/idp), in interleaved rounds so drift on a shared machine hits all of them alike.
# The authenticated case runs as a production login does: the connection provisions the user
# (JIT, `jit = true`, the default) and the signed identity header is on (the default, ES256);
# JIT=false or SIGNED_HEADER=false measure without them. The script prints the mode it ran in.
#
#   benches/load.sh                 # 3 rounds of 10 s each, 64 connections
#   ROUNDS=5 SECONDS_PER_ROUND=15 CONNECTIONS=128 benches/load.sh
#   PROFILE=/tmp/profiles benches/load.sh   # also perf profiles (needs Debian's linux-perf)
#   STORE=postgres benches/load.sh          # also Gatehouse on PostgreSQL, beside redb
#   CALLGRIND=/tmp/cg benches/load.sh       # instructions and allocations per request instead
#   SETTINGS=1 benches/load.sh              # pingora's own settings, one at a time, instead
#
# STORE=postgres (default STORE=redb) adds a third Gatehouse, `gatehouse_pg`, the same as
# `gatehouse` (access log off) but with `[store] backend = "postgres"`, measured in the same
# interleaved rounds on its public route (`gatehouse_pg`) and with a session from its own
# login (`gatehouse_pg_auth`); the summary gives postgres/redb authenticated req/s per round
# and the login's store time on both. The database: a fresh one on the server at
# GATEHOUSE_BENCH_PG_URL (an admin URL, a role that may CREATE DATABASE; dropped at the end),
# else on a throwaway cluster started here as the tests start theirs (initdb into a temp dir,
# fsync = on, synchronous_commit = on; stopped and removed at exit; needs Debian's postgresql).
#
# Gatehouse runs twice, with the access log off (`gatehouse`, `gatehouse_auth`) and on
# (`gatehouse_log`, `gatehouse_log_auth`, lines written to a file); nginx logs nothing.
#
# Prints one table (issue 14): for each target the peak req/s under wrk (median over rounds)
# and its ratio to nginx and to Gatehouse's public route, the proxy's CPU time per request
# (from /proc; user + system of every thread) and its ratio to nginx, and p50/p99 at one fixed
# rate for every target: half of the peak of Gatehouse with a session (hey -q; RATE=... sets
# it), interleaved over FIXED_ROUNDS rounds of FIXED_SECONDS.
# Needs wrk, hey and nginx (installed from Debian if missing). Every run is bounded in time.
#
# CALLGRIND=dir runs bare pingora and the Gatehouse without access log under valgrind's
# callgrind instead, and replaces the timed rounds: for bare pingora, Gatehouse's public route
# and Gatehouse with a session it counts the user-space instructions and the allocator calls
# (mimalloc's entry points) of CALLGRIND_REQUESTS requests (hey -n, 8 connections, after a
# warm-up), and prints them per request. Instruction counts do not depend on the machine's
# load, so they compare builds where timed runs on a shared machine cannot; the kernel's
# share (about half of a proxied request) is not in them. Each measured part is kept as a
# callgrind file in dir, for callgrind_annotate.
#
# SETTINGS=1 measures pingora's own settings instead of the usual targets (issue 14, target
# 2): for each setting in SETTINGS_LIST one more bare pingora runs with that one setting
# changed (examples/bare_pingora.rs reads them from its environment), and the timed rounds
# interleave nginx, the bare pingora with Gatehouse's settings, every variant and Gatehouse
# with a session. Settings: threads=N (worker threads), stealing (one work-stealing runtime),
# pool=N (idle upstream connections kept), listener_tasks=N (accept tasks per socket),
# l4=READ,WRITE (pingora's buffers of a client connection, bytes; 0 = none) and
# socket_buf=BYTES (the kernel's socket buffers); `same` changes nothing: a second default
# pingora, to show how far two identical proxies differ in one run. Printed per variant:
# req/s, CPU per request against nginx's and against the default pingora's in the same
# round (medians of the per-round ratios), and p50/p99 at a fixed rate.
set -euo pipefail
cd "$(dirname "$0")/.."

ROUNDS=${ROUNDS:-3}
SECONDS_PER_ROUND=${SECONDS_PER_ROUND:-10}
CONNECTIONS=${CONNECTIONS:-64}
WRK_THREADS=${WRK_THREADS:-1}
WORKERS=${WORKERS:-2}
JIT=${JIT:-true}
STORE=${STORE:-redb}
case $STORE in redb|postgres) ;; *) echo "STORE must be redb or postgres" >&2; exit 2 ;; esac
SIGNED_HEADER=${SIGNED_HEADER:-true}
for flag in JIT SIGNED_HEADER; do
  case ${!flag} in true|false) ;; *) echo "$flag must be true or false" >&2; exit 2 ;; esac
done

FIXED_ROUNDS=${FIXED_ROUNDS:-2}
FIXED_SECONDS=${FIXED_SECONDS:-8}
for tool in wrk hey nginx; do
  if ! command -v "$tool" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$tool" ]; then
    echo "installing $tool" >&2
    (apt-get update -qq && apt-get install -y -qq "$tool") >/dev/null
  fi
done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)

# GATEHOUSE_BIN and BARE_BIN measure binaries built elsewhere (e.g. before and after a change).
TARGET_DIR=${CARGO_TARGET_DIR:-target}
if [ -z "${GATEHOUSE_BIN:-}" ] || [ -z "${BARE_BIN:-}" ]; then
  cargo build --release --quiet --bin gatehouse --example bare_pingora
fi
BIN=${GATEHOUSE_BIN:-$TARGET_DIR/release/gatehouse}
BARE=${BARE_BIN:-$TARGET_DIR/release/examples/bare_pingora}
CALLGRIND=${CALLGRIND:-}
CALLGRIND_REQUESTS=${CALLGRIND_REQUESTS:-4000}
WRAP=()
WAIT_STEPS=50
if [ -n "$CALLGRIND" ]; then
  command -v valgrind >/dev/null || (apt-get update -qq && apt-get install -y -qq valgrind) >/dev/null
  mkdir -p "$CALLGRIND"
  CALLGRIND=$(cd "$CALLGRIND" && pwd)
  rm -f "$CALLGRIND"/callgrind.*
  # Dumps are taken by callgrind_control around each measured part (a dump zeroes the counts).
  WRAP=(valgrind --tool=callgrind --compress-strings=no --compress-pos=no "--callgrind-out-file=$CALLGRIND/callgrind.%p")
  WAIT_STEPS=600
fi

work=$(mktemp -d)
pids=()
variant_pids=()  # SETTINGS=1: bare pingoras with one setting changed (stopped with SIGINT)
declare -A VARIANT_PID=()
PG_DIR=""
PG_ADMIN=""
PG_DB=""
cleanup() {
  # Pingora takes SIGTERM as a graceful stop and waits out its 5-minute grace period; SIGINT
  # stops it at once (it must come first: after a SIGTERM, pingora no longer listens for it).
  [ -n "${BARE_PID:-}" ] && kill -INT "$BARE_PID" 2>/dev/null || true
  for pid in "${variant_pids[@]}"; do kill -INT "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for name in upstream proxy; do
    [ -f "$work/$name.pid" ] && kill "$(cat "$work/$name.pid")" 2>/dev/null || true
  done
  # A process still there after 5 s is killed, and named: a leftover proxy would spin on a
  # core and skew the next run's figures. (One bare pingora did, after its SIGINT: its accept
  # loop kept polling a listener whose runtime was shutting down, without a syscall.)
  for pid in "${pids[@]}" "${variant_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      stuck=$(tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null || echo "pid $pid")
      kill -KILL "$pid" 2>/dev/null || true
      echo "load.sh: $stuck did not stop within 5 s; killed" >&2
    fi
  done
  if [ -n "$PG_DB" ] && [ -n "${GATEHOUSE_BENCH_PG_URL:-}" ]; then
    psql -X -q -d "$PG_ADMIN" -c "DROP DATABASE IF EXISTS $PG_DB WITH (FORCE)" >/dev/null 2>&1 || true
  fi
  if [ -n "$PG_DIR" ]; then
    [ -f "$PG_DIR/data/postmaster.pid" ] && as_pg "$PG_BIN/pg_ctl" stop -m fast -w -t 30 -D "$PG_DIR/data" >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
  rm -rf "$work"
}
trap cleanup EXIT
# initdb refuses to run as root: as root, the cluster runs as Debian's `postgres` user.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
UPSTREAM=$(free_port); NGINX_PROXY=$(free_port); GATEHOUSE=$(free_port); ADMIN=$(free_port); BARE_PORT=$(free_port); OP=$(free_port)
GATEHOUSE_LOG=$(free_port); ADMIN_LOG=$(free_port)
GATEHOUSE_PG=$(free_port); ADMIN_PG=$(free_port)

# STORE=postgres: a fresh database, on GATEHOUSE_BENCH_PG_URL or on a throwaway cluster.
if [ "$STORE" = postgres ]; then
  if [ -n "${GATEHOUSE_BENCH_PG_URL:-}" ]; then
    PG_ADMIN=$GATEHOUSE_BENCH_PG_URL
  else
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1)
    [ -x "$PG_BIN/initdb" ] || { echo "STORE=postgres needs initdb (apt-get install postgresql) or GATEHOUSE_BENCH_PG_URL" >&2; exit 1; }
    PG_DIR=$(mktemp -d /tmp/gatehouse-bench-pg.XXXXXX)
    [ "$(id -u)" = 0 ] && chown postgres: "$PG_DIR"
    as_pg "$PG_BIN/initdb" -D "$PG_DIR/data" -U gatehouse --auth=trust --no-sync --encoding=UTF8 --locale=C >"$PG_DIR/initdb.log" 2>&1 \
      || { cat "$PG_DIR/initdb.log" >&2; exit 1; }
    PG_PORT=$(free_port)
    cat >>"$PG_DIR/data/postgresql.conf" <<CONF
# gatehouse load bench: durable commits, as in production
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
fsync = on
synchronous_commit = on
logging_collector = off
CONF
    as_pg "$PG_BIN/pg_ctl" start -w -t 60 -D "$PG_DIR/data" -l "$PG_DIR/postgres.log" >/dev/null \
      || { tail "$PG_DIR/postgres.log" >&2; exit 1; }
    PG_ADMIN="postgres://gatehouse@127.0.0.1:$PG_PORT/postgres"
  fi
  PG_DB="gh_bench_$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')"
  psql -X -q -v ON_ERROR_STOP=1 -d "$PG_ADMIN" -c "CREATE DATABASE $PG_DB" >/dev/null
  PG_URL=$(python3 -c 'import sys, urllib.parse as u; p = u.urlsplit(sys.argv[1]); print(u.urlunsplit(p._replace(path="/" + sys.argv[2])))' "$PG_ADMIN" "$PG_DB")
  echo "PostgreSQL for gatehouse_pg: fsync = $(psql -X -A -t -d "$PG_URL" -c 'SHOW fsync'), synchronous_commit = $(psql -X -A -t -d "$PG_URL" -c 'SHOW synchronous_commit')" >&2
fi

# The test OpenID provider, for the authenticated case (a session cookie from a real login).
[ -d tests/idp/node_modules/oidc-provider ] || npm ci --silent --prefix tests/idp
cat >"$work/op.json" <<CONF
{"port": $OP, "exit_on_stdin_eof": false, "clients": [{"client_id": "gatehouse", "client_secret": "bench-secret",
 "redirect_uris": ["http://127.0.0.1:$GATEHOUSE/oauth2/callback", "http://127.0.0.1:$GATEHOUSE_LOG/oauth2/callback", "http://127.0.0.1:$GATEHOUSE_PG/oauth2/callback"], "grant_types": ["authorization_code", "refresh_token"],
 "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic"}]}
CONF
node tests/idp/server.mjs "$work/op.json" >"$work/op.out" 2>"$work/op.log" &
pids+=($!)

# Two nginx instances, so the proxy's CPU time can be measured apart from the upstream's.
nginx_conf() { # name body
  cat >"$work/$1.conf" <<CONF
worker_processes $WORKERS;
pid $work/$1.pid;
error_log $work/$1-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $work/$1-body; proxy_temp_path $work/$1-proxy;
  fastcgi_temp_path $work/$1-fcgi; uwsgi_temp_path $work/$1-uwsgi; scgi_temp_path $work/$1-scgi;
  $2
}
CONF
  "$NGINX" -c "$work/$1.conf" -p "$work"
}
nginx_conf upstream "server { listen 127.0.0.1:$UPSTREAM; location / { default_type text/plain; return 200 'hello from the upstream\n'; } }"
nginx_conf proxy "upstream app { server 127.0.0.1:$UPSTREAM; keepalive 128; }
  server {
    listen 127.0.0.1:$NGINX_PROXY;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }"

gatehouse_conf() { # name port admin-port access-log log-level [store-lines]
  cat >"$work/$1.toml" <<CONF
[server]
listen = ["127.0.0.1:$2"]
admin_listen = "127.0.0.1:$3"
ready_requires_idp = true
worker_threads = $WORKERS
[log]
level = "$5"
access_log = $4
[store]
data_dir = "$work/$1-data"
${6:-}
[session]
cookie_secure = false
[identity]
signed_header = $SIGNED_HEADER
[[upstreams]]
url = "http://127.0.0.1:$UPSTREAM"
[[public]]
path = "/public"
match = "prefix"
[[connections]]
id = "bench"
issuer = "http://127.0.0.1:$OP"
client_id = "gatehouse"
client_secret = "bench-secret"
jit = $JIT
CONF
}
gatehouse_conf gatehouse "$GATEHOUSE" "$ADMIN" false warn
gatehouse_conf gatehouse_log "$GATEHOUSE_LOG" "$ADMIN_LOG" true "warn,gatehouse::access=info"
"${WRAP[@]}" "$BIN" serve --config "$work/gatehouse.toml" 2>"$work/gatehouse.log" &
pids+=($!)
GATEHOUSE_PID=$!
# The access log at info goes to stderr, into a file, as a service manager would keep it.
"$BIN" serve --config "$work/gatehouse_log.toml" 2>"$work/gatehouse_log.log" &
pids+=($!)
GATEHOUSE_LOG_PID=$!
if [ "$STORE" = postgres ]; then
  gatehouse_conf gatehouse_pg "$GATEHOUSE_PG" "$ADMIN_PG" false warn "backend = \"postgres\"
url = \"$PG_URL\""
  "$BIN" serve --config "$work/gatehouse_pg.toml" 2>"$work/gatehouse_pg.log" &
  pids+=($!)
  GATEHOUSE_PG_PID=$!
fi
"${WRAP[@]}" "$BARE" "127.0.0.1:$BARE_PORT" "127.0.0.1:$UPSTREAM" "$WORKERS" 2>"$work/bare.log" &
pids+=($!)
BARE_PID=$!

GATEHOUSES="$GATEHOUSE $GATEHOUSE_LOG"; ADMINS="$ADMIN $ADMIN_LOG"
[ "$STORE" = postgres ] && GATEHOUSES="$GATEHOUSES $GATEHOUSE_PG" && ADMINS="$ADMINS $ADMIN_PG"
for port in $UPSTREAM $NGINX_PROXY $GATEHOUSES $BARE_PORT; do
  for _ in $(seq "$WAIT_STEPS"); do curl -sf "http://127.0.0.1:$port/public/" >/dev/null && break; sleep 0.1; done
done
for admin in $ADMINS; do
  for _ in $(seq $((WAIT_STEPS * 2))); do curl -sf "http://127.0.0.1:$admin/ready" >/dev/null && break; sleep 0.1; done
done

# Sign in once as alice through the OP's login form, and keep the session cookie.
session_cookie() { # gatehouse-port -> "Cookie: _gatehouse=..."
  local jar="$work/jar-$1" action session
  curl -s -L -c "$jar" -b "$jar" -H 'Accept: text/html' "http://127.0.0.1:$1/" -o "$work/form.html"
  action=$(grep -o 'action="[^"]*"' "$work/form.html" | head -1 | cut -d'"' -f2)
  curl -s -L -c "$jar" -b "$jar" -H 'Accept: text/html' -d 'login=alice&password=alice-pw' "http://127.0.0.1:$OP$action" -o /dev/null
  session=$(awk '$6 == "_gatehouse" {print $7}' "$jar")
  [ -n "$session" ] || { echo "login at port $1 failed: no session cookie" >&2; exit 1; }
  echo "Cookie: _gatehouse=$session"
}
COOKIE=$(session_cookie "$GATEHOUSE")
COOKIE_LOG=$(session_cookie "$GATEHOUSE_LOG")
[ "$STORE" = postgres ] && COOKIE_PG=$(session_cookie "$GATEHOUSE_PG")

metric() { # name label-regex [admin-port] -> the value of the first sample that matches, else 0
  # The scrape goes to a file first: awk stopping early would break curl's pipe (exit 23).
  curl -s -o "$work/metrics.txt" "http://127.0.0.1:${3:-$ADMIN}/metrics"
  awk -v m="$1" -v l="$2" '
    !found && index($1, m) == 1 && (substr($1, length(m) + 1, 1) == "{" || length($1) == length(m)) && $1 ~ l { print $2; found = 1 }
    END { if (!found) print 0 }' "$work/metrics.txt"
}
# Check the mode on the running server, not only in the config: the first login must have
# created alice's account exactly when JIT is on, and the JWKS is served only when the signed
# identity header is on.
created=$(metric gatehouse_jit_provisions_total 'action="created"')
jwks=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$GATEHOUSE/.well-known/gatehouse/jwks.json")
if [ "$JIT" = true ] && [ "${created%.*}" != 1 ]; then
  echo "JIT is configured on but the login created no account (created=$created)" >&2; exit 1
fi
if [ "$JIT" = false ] && [ "${created%.*}" != 0 ]; then
  echo "JIT is configured off but the login created an account" >&2; exit 1
fi
if { [ "$SIGNED_HEADER" = true ] && [ "$jwks" != 200 ]; } || { [ "$SIGNED_HEADER" = false ] && [ "$jwks" = 200 ]; }; then
  echo "signed identity header is $SIGNED_HEADER in the config, but the JWKS answered $jwks" >&2; exit 1
fi
MODE="gatehouse_auth mode: JIT $([ "$JIT" = true ] && echo on || echo off) (accounts created by the first login: ${created%.*}), signed identity header $([ "$SIGNED_HEADER" = true ] && echo "on (JWKS $jwks)" || echo off)"
echo "$MODE" >&2

# CALLGRIND=dir: instructions and allocator calls per request, then stop.
if [ -n "$CALLGRIND" ]; then
  counted() { # name pid port [path] [header]
    local path=${4:-/public/bench?x=1} header=${5:-X-Bench: 1} file
    hey -n 400 -c 8 -H "$header" "http://127.0.0.1:$3$path" >/dev/null
    callgrind_control -d "$2" >/dev/null
    hey -n "$CALLGRIND_REQUESTS" -c 8 -H "$header" "http://127.0.0.1:$3$path" >"$work/hey.out"
    awk -v want="$CALLGRIND_REQUESTS" '$1 == "[200]" && $2 == want {ok = 1} END {exit !ok}' "$work/hey.out" \
      || { echo "$1: not every request answered 200" >&2; cat "$work/hey.out" >&2; exit 1; }
    callgrind_control -d "$2" >/dev/null
    file=$(ls -t "$CALLGRIND"/callgrind."$2".* | head -1)
    mv "$file" "$CALLGRIND/$1.callgrind"
    echo "$1 $CALLGRIND/$1.callgrind" >>"$work/counted"
    echo "  counted $1" >&2
  }
  counted pingora "$BARE_PID" "$BARE_PORT"
  counted gatehouse "$GATEHOUSE_PID" "$GATEHOUSE"
  counted gatehouse_auth "$GATEHOUSE_PID" "$GATEHOUSE" "/bench/path?x=1" "$COOKIE"
  python3 - "$work/counted" "$CALLGRIND_REQUESTS" <<'PY'
import re, sys
ALLOC = re.compile(r"^(mi_malloc|mi_zalloc|mi_calloc|mi_realloc|mi_malloc_aligned|mi_zalloc_aligned|mi_realloc_aligned)")
FREE = re.compile(r"^mi_free")
def count(path):
    total, allocs, frees, callee = 0, 0, 0, None
    for line in open(path, errors="replace"):
        if line.startswith("summary:") or line.startswith("totals:"):
            total = max(total, int(line.split()[1]))
        elif line.startswith("cfn="):
            callee = line[4:].strip()
        elif line.startswith("calls=") and callee is not None:
            n = int(line[6:].split()[0])
            if ALLOC.match(callee):
                allocs += n
            elif FREE.match(callee):
                frees += n
            callee = None
    return total, allocs, frees
n = int(sys.argv[2])
rows = {}
for line in open(sys.argv[1]):
    name, path = line.split()
    rows[name] = count(path)
print(f"\nuser-space instructions and allocator calls per request (callgrind, {n} requests each, hey -c8)")
print("| target | instructions/req | x bare pingora | allocations/req | frees/req |")
print("|---|---:|---:|---:|---:|")
base = rows["pingora"][0] / n
for name, (total, allocs, frees) in rows.items():
    print(f"| {name} | {total / n:,.0f} | {total / n / base:.2f} | {allocs / n:.1f} | {frees / n:.1f} |")
pub, auth = rows["gatehouse"][0], rows["gatehouse_auth"][0]
print(f"\nwith a session / public route, instructions: {auth / pub:.2f}")
PY
  echo "callgrind files: $CALLGRIND (callgrind_annotate --inclusive=yes FILE)"
  echo "$MODE"
  exit 0
fi

# wrk's --latency output in ms, whatever unit it printed.
to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; printf "%.3f", v}'; }

# CPU time (user+system, in clock ticks) of a process and its children's threads.
cpu_ticks() { # pids...
  local total=0 pid
  for pid in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$pid/stat")))
  done
  echo "$total"
}
proxy_pids() { # name -> the pids whose CPU counts for that target
  case $1 in
    nginx) echo "$(cat "$work/proxy.pid") $(pgrep -P "$(cat "$work/proxy.pid")" | tr '\n' ' ')" ;;
    gatehouse|gatehouse_auth) echo "$GATEHOUSE_PID" ;;
    gatehouse_log|gatehouse_log_auth) echo "$GATEHOUSE_LOG_PID" ;;
    gatehouse_pg|gatehouse_pg_auth) echo "$GATEHOUSE_PG_PID" ;;
    pingora) echo "$BARE_PID" ;;
    pingora:*) echo "${VARIANT_PID[$1]}" ;;
    *) echo "" ;;
  esac
}
TICK_US=$((1000000 / $(getconf CLK_TCK)))

run() { # name port [path] [header] -> appends "name rps p50 p99 cpu_us_per_request" to results
  local out pids before after path=${3:-/public/bench?x=1} header=${4:-X-Bench: 1}
  pids=$(proxy_pids "$1")
  before=$(cpu_ticks $pids)
  out=$(timeout $((SECONDS_PER_ROUND + 20)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_ROUND}s" --latency -H "$header" "http://127.0.0.1:$2$path")
  local rps p50 p99
  rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
  p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
  p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
  after=$(cpu_ticks $pids)
  local requests cpu_us
  requests=$(awk '/requests in/ {print $1}' <<<"$out")
  cpu_us=$(awk -v t=$((after - before)) -v us="$TICK_US" -v n="$requests" 'BEGIN { printf "%.1f", (n > 0 ? t * us / n : 0) }')
  echo "$1 $rps $p50 $p99 $cpu_us" >>"$work/results"
  printf '  round %s  %-10s %10s req/s  p50 %7s ms  p99 %7s ms  proxy CPU %6s us/req\n' "$round" "$1" "$rps" "$p50" "$p99" "$cpu_us" >&2
}

# The fixed rate: RATE if given, else half of the target's peak (median of the rounds run so
# far), spread over FIXED_CONNECTIONS with hey's rate limit (-q is per connection).
FIXED_CONNECTIONS=${FIXED_CONNECTIONS:-32}
set_rate() { # target
  RATE=${RATE:-$(awk -v t="$1" '$1 == t {print $2}' "$work/results" | sort -n | awk '{v[NR]=$1} END {printf "%d", v[int((NR+1)/2)] / 2}')}
  PER_CONN=$(( (RATE + FIXED_CONNECTIONS - 1) / FIXED_CONNECTIONS ))
}
fixed() { # name port [path] [header] -> appends "name p50_ms p99_ms rps" to fixed
  local out path=${3:-/public/bench?x=1} header=${4:-X-Bench: 1}
  out=$(timeout $((FIXED_SECONDS + 20)) hey -z "${FIXED_SECONDS}s" -c "$FIXED_CONNECTIONS" -q "$PER_CONN" -H "$header" "http://127.0.0.1:$2$path")
  local p50 p99 rps
  p50=$(awk '$1 == "50%" {printf "%.3f", $3 * 1000}' <<<"$out")
  p99=$(awk '$1 == "99%" {printf "%.3f", $3 * 1000}' <<<"$out")
  rps=$(awk '$1 == "Requests/sec:" {print $2}' <<<"$out")
  echo "$1 $p50 $p99 $rps" >>"$work/fixed"
  printf '  fixed %s  %-18s %8s req/s  p50 %7s ms  p99 %7s ms\n' "$round" "$1" "$rps" "$p50" "$p99" >&2
}

# SETTINGS=1: one bare pingora per changed setting, measured beside the default one, then stop.
if [ -n "${SETTINGS:-}" ]; then
  SETTINGS_LIST=${SETTINGS_LIST:-"same threads=1 threads=4 stealing pool=16 pool=1024 listener_tasks=2 l4=0,0 l4=4096,1460 l4=65536,16384 socket_buf=262144"}
  for setting in $SETTINGS_LIST; do
    threads=$WORKERS
    envs=()
    case $setting in
      same) ;;
      threads=*) threads=${setting#*=} ;;
      stealing) envs=(BARE_STEALING=1) ;;
      pool=*) envs=("BARE_POOL=${setting#*=}") ;;
      listener_tasks=*) envs=("BARE_LISTENER_TASKS=${setting#*=}") ;;
      l4=*,*) sizes=${setting#*=}; envs=("BARE_L4_READ=${sizes%,*}" "BARE_L4_WRITE=${sizes#*,}") ;;
      socket_buf=*) envs=("BARE_SOCKET_BUF=${setting#*=}") ;;
      *) echo "unknown setting in SETTINGS_LIST: $setting" >&2; exit 2 ;;
    esac
    port=$(free_port)
    env "${envs[@]}" "$BARE" "127.0.0.1:$port" "127.0.0.1:$UPSTREAM" "$threads" 2>"$work/bare-$setting.log" &
    variant_pids+=($!)
    VARIANT_PID["pingora:$setting"]=$!
    answered=false
    for _ in $(seq "$WAIT_STEPS"); do
      curl -sf "http://127.0.0.1:$port/public/" >/dev/null && { answered=true; break; }
      sleep 0.1
    done
    $answered || { echo "bare pingora with $setting did not answer" >&2; tail "$work/bare-$setting.log" >&2; exit 1; }
    echo "pingora:$setting $port" >>"$work/variants"
  done
  for warm in $NGINX_PROXY $BARE_PORT $GATEHOUSE $(awk '{print $2}' "$work/variants"); do  # warm-up
    timeout 10 wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$warm/public/" >/dev/null
  done
  for round in $(seq "$ROUNDS"); do
    run nginx "$NGINX_PROXY"
    run pingora "$BARE_PORT"
    while read -r name port; do run "$name" "$port"; done <"$work/variants"
    run gatehouse_auth "$GATEHOUSE" "/bench/path?x=1" "$COOKIE"
  done
  set_rate pingora
  for round in $(seq "$FIXED_ROUNDS"); do
    fixed nginx "$NGINX_PROXY"
    fixed pingora "$BARE_PORT"
    while read -r name port; do fixed "$name" "$port"; done <"$work/variants"
  done
  python3 - "$work/results" "$work/fixed" "$ROUNDS" "$RATE" "$CONNECTIONS" "$WORKERS" <<'PY'
import statistics, sys
results, fixed_path, rounds, rate, conns, workers = sys.argv[1], sys.argv[2], int(sys.argv[3]), *sys.argv[4:]
runs, order = {}, []
for line in open(results):
    name, rps, p50, p99, cpu = line.split()
    if name not in runs:
        order.append(name)
    runs.setdefault(name, []).append((float(rps), float(cpu)))
fixed = {}
for line in open(fixed_path):
    name, p50, p99, _ = line.split()
    fixed.setdefault(name, []).append((float(p50), float(p99)))
med = statistics.median
def per_round(name, base, i):  # median over rounds of name's value / base's, same round
    return med(a[i] / b[i] for a, b in zip(runs[name], runs[base]))
print(f"\npingora's settings, one at a time (wrk -c{conns}, {rounds} interleaved rounds; {workers} worker "
      f"threads unless named; CPU: the proxy's user+system time per request; ratios are medians of "
      f"same-round ratios; p50/p99 in ms at {rate} req/s, hey -q)")
print("| target | req/s | x default pingora req/s | CPU us/req | CPU x nginx | CPU x default pingora | p50 @rate | p99 @rate |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for name in order:
    rps = med(r for r, _ in runs[name])
    cpu = med(c for _, c in runs[name])
    x_rps = "-" if name == "nginx" else f"{per_round(name, 'pingora', 0):.2f}"
    x_nginx = "-" if name == "nginx" else f"{per_round(name, 'nginx', 1):.2f}"
    x_bare = "-" if name == "nginx" else f"{per_round(name, 'pingora', 1):.2f}"
    p50, p99 = (f"{med(v[i] for v in fixed[name]):.3f}" if name in fixed else "-" for i in (0, 1))
    print(f"| {name} | {rps:,.0f} | {x_rps} | {cpu:.1f} | {x_nginx} | {x_bare} | {p50} | {p99} |")
PY
  echo "$MODE"
  exit 0
fi

for warm in $UPSTREAM $NGINX_PROXY $GATEHOUSES $BARE_PORT; do  # warm-up, not measured
  timeout 10 wrk -t1 -c"$CONNECTIONS" -d2s "http://127.0.0.1:$warm/public/" >/dev/null
done
for round in $(seq "$ROUNDS"); do
  run direct "$UPSTREAM"
  run nginx "$NGINX_PROXY"
  run pingora "$BARE_PORT"
  run gatehouse "$GATEHOUSE"
  run gatehouse_auth "$GATEHOUSE" "/bench/path?x=1" "$COOKIE"
  run gatehouse_log "$GATEHOUSE_LOG"
  run gatehouse_log_auth "$GATEHOUSE_LOG" "/bench/path?x=1" "$COOKIE_LOG"
  if [ "$STORE" = postgres ]; then
    run gatehouse_pg "$GATEHOUSE_PG"
    run gatehouse_pg_auth "$GATEHOUSE_PG" "/bench/path?x=1" "$COOKIE_PG"
  fi
done

# PROFILE=dir: perf profiles (call graphs) of bare pingora, Gatehouse public and Gatehouse
# with a session under the same wrk load, then `perf report` summaries, into dir.
if [ -n "${PROFILE:-}" ]; then
  mkdir -p "$PROFILE"
  profile() { # name pid port [path] [header]
    local path=${4:-/public/bench?x=1} header=${5:-X-Bench: 1}
    perf record -F 1999 -g -o "$PROFILE/$1.data" -p "$2" -- sleep "$SECONDS_PER_ROUND" 2>/dev/null &
    local perf_pid=$!
    timeout $((SECONDS_PER_ROUND + 20)) wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_ROUND}s" -H "$header" "http://127.0.0.1:$3$path" >/dev/null
    wait "$perf_pid" || true
    perf report -i "$PROFILE/$1.data" --no-children -g none --sort dso,symbol --stdio 2>/dev/null | grep -v '^$' | head -120 >"$PROFILE/$1.txt" || true
    perf report -i "$PROFILE/$1.data" --no-children --sort dso --stdio 2>/dev/null | grep '%' | head -20 >"$PROFILE/$1-dso.txt" || true
    echo "  profile $1: $PROFILE/$1.txt" >&2
  }
  profile pingora "$BARE_PID" "$BARE_PORT"
  profile gatehouse "$GATEHOUSE_PID" "$GATEHOUSE"
  profile gatehouse_auth "$GATEHOUSE_PID" "$GATEHOUSE" "/bench/path?x=1" "$COOKIE"
fi

# Latency at one fixed rate for every target: half of the peak of Gatehouse with a session.
set_rate gatehouse_auth
for round in $(seq "$FIXED_ROUNDS"); do
  fixed direct "$UPSTREAM"
  fixed nginx "$NGINX_PROXY"
  fixed pingora "$BARE_PORT"
  fixed gatehouse "$GATEHOUSE"
  fixed gatehouse_auth "$GATEHOUSE" "/bench/path?x=1" "$COOKIE"
  fixed gatehouse_log "$GATEHOUSE_LOG"
  fixed gatehouse_log_auth "$GATEHOUSE_LOG" "/bench/path?x=1" "$COOKIE_LOG"
  if [ "$STORE" = postgres ]; then
    fixed gatehouse_pg "$GATEHOUSE_PG"
    fixed gatehouse_pg_auth "$GATEHOUSE_PG" "/bench/path?x=1" "$COOKIE_PG"
  fi
done

# Logins: LOGINS sequential sign-ins (new browser each: start, IdP form, callback) with curl,
# on the redb Gatehouse and (STORE=postgres) on the PostgreSQL one.
LOGINS=${LOGINS:-40}
login_once() { # gatehouse-port
  local jar="$work/login-jar" action
  rm -f "$jar"
  curl -s -L -c "$jar" -b "$jar" -H 'Accept: text/html' "http://127.0.0.1:$1/" -o "$work/form.html"
  action=$(grep -o 'action="[^"]*"' "$work/form.html" | head -1 | cut -d'"' -f2)
  curl -s -L -c "$jar" -b "$jar" -H 'Accept: text/html' -d 'login=alice&password=alice-pw' "http://127.0.0.1:$OP$action" -o /dev/null
}
logins_on() { # gatehouse-port admin-port label -> appends its summary to $work/logins
  local sum_before count_before jit_sum_before jit_count_before start_ns elapsed_ns
  local sum_after count_after jit_sum_after jit_count_after
  sum_before=$(metric gatehouse_login_duration_seconds_sum 'connection="bench"' "$2")
  count_before=$(metric gatehouse_login_duration_seconds_count 'connection="bench"' "$2")
  jit_sum_before=$(metric gatehouse_jit_duration_seconds_sum '' "$2")
  jit_count_before=$(metric gatehouse_jit_duration_seconds_count '' "$2")
  start_ns=$(date +%s%N)
  for _ in $(seq "$LOGINS"); do login_once "$1"; done
  elapsed_ns=$(( $(date +%s%N) - start_ns ))
  sum_after=$(metric gatehouse_login_duration_seconds_sum 'connection="bench"' "$2")
  count_after=$(metric gatehouse_login_duration_seconds_count 'connection="bench"' "$2")
  jit_sum_after=$(metric gatehouse_jit_duration_seconds_sum '' "$2")
  jit_count_after=$(metric gatehouse_jit_duration_seconds_count '' "$2")
  python3 - "$LOGINS" "$elapsed_ns" "$sum_before" "$sum_after" "$count_before" "$count_after" \
    "$jit_sum_before" "$jit_sum_after" "$jit_count_before" "$jit_count_after" "$3" >>"$work/logins" <<'PY'
import sys
n, ns, s0, s1, c0, c1, j0, j1, k0, k1 = int(sys.argv[1]), int(sys.argv[2]), *map(float, sys.argv[3:11])
label = sys.argv[11]
total = ns / 1e9
callback = (s1 - s0) / max(c1 - c0, 1)
print(f"\nlogins ({label}): {n} sequential in {total:.2f} s = {n / total:.1f} logins/s "
      f"({1000 * total / n:.1f} ms each; {c1 - c0:.0f} counted by gatehouse_logins)")
print(f"  of which the callback (code exchange at the OP + ID token checks + session write): "
      f"{1000 * callback:.1f} ms; the rest is the OP's authorize/login pages and the redirects")
if k1 > k0:
    print(f"  of which the store transaction (JIT provisioning + session, durable commit): "
          f"{1000 * (j1 - j0) / (k1 - k0):.2f} ms")
PY
}
logins_on "$GATEHOUSE" "$ADMIN" redb
[ "$STORE" = postgres ] && logins_on "$GATEHOUSE_PG" "$ADMIN_PG" postgres

python3 - "$work/results" "$work/fixed" "$RATE" "$CONNECTIONS" "$WORKERS" <<'PY'
import statistics, sys
def medians(path, width):
    rows = {}
    for line in open(path):
        name, *values = line.split()
        rows.setdefault(name, []).append(tuple(float(v) for v in values))
    return {k: tuple(statistics.median(x[i] for x in v) for i in range(width)) for k, v in rows.items()}
med = medians(sys.argv[1], 4)
fixed = medians(sys.argv[2], 3)
rate, conns, workers = sys.argv[3], sys.argv[4], sys.argv[5]
print(f"\npeak: wrk -c{conns}, median of rounds; CPU: the proxy's user+system time per request (/proc); "
      f"fixed rate: {rate} req/s for every target (hey -q), p50/p99 in ms; {workers} worker threads each")
print("| target | req/s | x nginx | x public | CPU us/req | CPU x nginx | p50 @rate | p99 @rate | p99 over nginx |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
names = ("direct", "nginx", "pingora", "gatehouse", "gatehouse_auth", "gatehouse_log", "gatehouse_log_auth",
         "gatehouse_pg", "gatehouse_pg_auth")
for name in (n for n in names if n in med):
    rps, _, _, cpu = med[name]
    public = med["gatehouse_log" if "log" in name else "gatehouse_pg" if "pg" in name else "gatehouse"][0]
    x_public = f"{rps / public:.2f}" if name.startswith("gatehouse") else "-"
    cpu_text = "-" if name == "direct" else f"{cpu:.1f}"
    cpu_x = "-" if name == "direct" else f"{cpu / med['nginx'][3]:.2f}"
    p50, p99, _ = fixed.get(name, (float("nan"),) * 3)
    over = "-" if name in ("direct", "nginx") else f"{p99 - fixed['nginx'][1]:+.3f}"
    print(f"| {name} | {rps:,.0f} | {rps / med['nginx'][0]:.2f} | {x_public} | {cpu_text} | {cpu_x} | {p50:.3f} | {p99:.3f} | {over} |")
print(f"\nauthenticated / public route, req/s (target >= 0.95): {med['gatehouse_auth'][0] / med['gatehouse'][0]:.2f}"
      f" (access log on: {med['gatehouse_log_auth'][0] / med['gatehouse_log'][0]:.2f})")
print(f"CPU per authenticated request / nginx's (target <= 2.5): {med['gatehouse_auth'][3] / med['nginx'][3]:.2f}")
print(f"gatehouse public / bare pingora, req/s: {med['gatehouse'][0] / med['pingora'][0]:.2f};"
      f" bare pingora / nginx: {med['pingora'][0] / med['nginx'][0]:.2f}")
print(f"p99 at {rate} req/s over nginx (target <= 0.5 ms): public {fixed['gatehouse'][1] - fixed['nginx'][1]:+.3f} ms,"
      f" with a session {fixed['gatehouse_auth'][1] - fixed['nginx'][1]:+.3f} ms")
if "gatehouse_pg_auth" in med:
    by_round = {}
    for line in open(sys.argv[1]):
        name, rps, *_ = line.split()
        by_round.setdefault(name, []).append(float(rps))
    ratios = [pg / redb for pg, redb in zip(by_round["gatehouse_pg_auth"], by_round["gatehouse_auth"])]
    print(f"postgres / redb, authenticated req/s (target >= 0.95): {med['gatehouse_pg_auth'][0] / med['gatehouse_auth'][0]:.2f}"
          f" (medians; by round: {', '.join(f'{r:.2f}' for r in ratios)});"
          f" public route: {med['gatehouse_pg'][0] / med['gatehouse'][0]:.2f}")
PY
cat "$work/logins"
if [ "$JIT" = true ]; then
  echo "  JIT actions over the whole run: created $(metric gatehouse_jit_provisions_total 'action="created"'), unchanged $(metric gatehouse_jit_provisions_total 'action="unchanged"'), updated $(metric gatehouse_jit_provisions_total 'action="updated"')"
fi
echo
echo "$MODE"
