# Shared by scripts/demo and scripts/api-check: start moto seeded with the demo
# organisation, and the function under `cargo lambda watch`, both on loopback,
# both stopped when the calling script exits.

LOCAL_DIR=.local
SENDER=offers@seller.example.com
mkdir -p "$LOCAL_DIR"
_pids=()
_cleanup() { for p in "${_pids[@]}"; do kill -- "-$p" 2>/dev/null || true; done; }
trap _cleanup EXIT

free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_for() { # URL SECONDS WHAT
  for _ in $(seq 1 $(( $2 * 10 ))); do curl -s -o /dev/null "$1" && return 0; sleep 0.1; done
  echo "$3 did not come up; see $LOCAL_DIR/*.log" >&2; exit 1
}

# start_moto PORT: moto on PORT, seeded (table notify-demo), URL in $MOTO.
start_moto() {
  MOTO="http://127.0.0.1:$1"
  setsid .venv/bin/moto_server -H 127.0.0.1 -p "$1" > "$LOCAL_DIR/moto.log" 2>&1 & _pids+=($!)
  wait_for "$MOTO/moto-api/data.json" 30 moto
  .venv/bin/python scripts/seed.py "$MOTO" notify-demo "$SENDER"
}

# start_function PORT [KEY=VALUE...]: the function under cargo lambda watch, talking to $MOTO.
start_function() {
  local port=$1; shift
  # WATCH_ARGS: more options for cargo lambda watch (e.g. --release --concurrency 2).
  local profile=(); [[ " ${WATCH_ARGS:-} " == *" --release "* ]] && profile=(--release)
  cargo build --quiet "${profile[@]}" --bin notify-offer-contacts   # so that no request waits for a compile
  { echo "TABLE_NAME=notify-demo"; echo "SENDER_EMAIL=$SENDER"; echo "AWS_ENDPOINT_URL=$MOTO"
    echo "AWS_REGION=us-east-1"; echo "AWS_ACCESS_KEY_ID=test"; echo "AWS_SECRET_ACCESS_KEY=test"
    # A local run: no API Gateway in front, so no authorizer (never set in the stack for the HTTP API).
    echo "ALLOW_WITHOUT_AUTHORIZER=http,direct"; echo "TOPIC_ARN_PREFIX=arn:aws:sns:us-east-1:123456789012:notify-"
    for kv in "$@"; do echo "$kv"; done; } > "$LOCAL_DIR/function.env"
  # --ignore-changes: no reloads mid-run (a file written in the tree must not restart the function).
  # shellcheck disable=SC2086
  PATH="$PWD/.venv/bin:$PATH" setsid cargo lambda watch --ignore-changes ${WATCH_ARGS:-} --env-file "$LOCAL_DIR/function.env" \
    -A 127.0.0.1 -P "$port" > "$LOCAL_DIR/lambda.log" 2>&1 & _pids+=($!)
  wait_for "http://127.0.0.1:$port/" 120 "cargo lambda watch"
  FUNCTION_URL="http://127.0.0.1:$port/lambda-url/notify-offer-contacts"
}
