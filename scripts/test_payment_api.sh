#!/usr/bin/env bash
# Smoke test of the seed service's API, with curl, exactly as an old client calls it.
#
#   BASE_URL=http://localhost:8082 scripts/test_payment_api.sh     (make test-api)
#   TRIP_ID=1001 ...    try this trip first (the script moves on when it is already paid)
#   API_KEY=psk_... ... a key with the read, charge and refund scopes, for a service that
#                       requires one (`payment-service serve`; `make run` needs none)
#
# Needs a running service whose Trip service knows the seeded trips (`make run`
# starts both): trips 1001..1300 are COMPLETED and unpaid in seeds/rhfd_trips.csv.
# Prints one PASS/FAIL line per check and "N passed, M failed"; exits 1 on any failure.
set -euo pipefail

BASE_URL="${BASE_URL:-http://localhost:8082}"
BASE_URL="${BASE_URL%/}"
CURL_TIMEOUT="${CURL_TIMEOUT:-15}"
RUN_ID="$(date +%s)-$$"

passed=0
failed=0
workdir="$(mktemp -d)"
trap 'rm -rf "$workdir"' EXIT
body="$workdir/body"
headers="$workdir/headers"

pass() { passed=$((passed + 1)); printf 'PASS  %s\n' "$1"; }
fail() { failed=$((failed + 1)); printf 'FAIL  %s\n' "$1"; }

# request METHOD PATH [curl args...] -> prints the HTTP status ("000" when unreachable);
# the body is left in $body, the headers in $headers.
request() {
    local method="$1" path="$2"
    shift 2
    : >"$body"
    : >"$headers"
    local code
    local auth=()
    [[ -n "${API_KEY:-}" ]] && auth=(-H "Authorization: Bearer $API_KEY")
    code="$(curl -sS -o "$body" -D "$headers" -w '%{http_code}' --max-time "$CURL_TIMEOUT" \
        -X "$method" "${auth[@]}" "$@" "$BASE_URL$path" 2>"$workdir/curl.err")" || true
    printf '%s' "${code:-000}"
}

# check NAME EXPECTED_STATUSES ACTUAL_STATUS: EXPECTED is a space-separated list.
check() {
    local name="$1" expected="$2" actual="$3"
    if [[ " $expected " == *" $actual "* ]]; then
        pass "$name ($actual)"
    else
        local detail
        detail="$(head -c 300 "$body" 2>/dev/null | tr '\n' ' ')"
        [[ "$actual" == "000" ]] && detail="$(tr '\n' ' ' <"$workdir/curl.err")"
        fail "$name: expected $expected, got $actual ${detail}"
    fi
}

# json EXPR: evaluate a Python expression on the last body, bound to `d`; prints the result.
json() {
    python3 -c '
import json, sys
try:
    d = json.load(open(sys.argv[1]))
    value = eval(sys.argv[2], {"d": d})
except Exception:
    sys.exit(1)
print("" if value is None else value)
' "$body" "$1" 2>/dev/null || true
}

header() { # header NAME -> its value in the last response (case-insensitive), or nothing
    awk -v name="$(printf '%s' "$1" | tr '[:upper:]' '[:lower:]')" '
        { line = $0; sub(/\r$/, "", line); split(line, parts, ":") }
        tolower(parts[1]) == name { sub(/^[^:]*:[ \t]*/, "", line); value = line }
        END { print value }' "$headers"
}

# expect NAME CONDITION_EXPR: a check on the last JSON body (Python expression on `d`).
expect() {
    if [[ "$(json "bool($2)")" == "True" ]]; then pass "$1"; else fail "$1: $2 is not true"; fi
}

echo "Payment Service smoke test against $BASE_URL"

# 1. Health.
status="$(request GET /health)"
check "GET /health" "200" "$status"
expect "health says UP with the database UP" 'd["status"] == "UP" and d["database_status"] == "UP"'

# 2. Listing and filters.
status="$(request GET /v1/payments)"
check "GET /v1/payments" "200" "$status"
expect "list has payments, count and total" \
    'isinstance(d["payments"], list) and d["count"] == len(d["payments"]) and d["total"] >= d["count"]'

status="$(request GET '/v1/payments?status=SUCCESS&limit=10')"
check "GET /v1/payments?status=SUCCESS&limit=10" "200" "$status"
expect "at most 10 payments, all SUCCESS" \
    'len(d["payments"]) <= 10 and all(p["status"] == "SUCCESS" for p in d["payments"])'

# 3. One payment.
status="$(request GET /v1/payments/1)"
check "GET /v1/payments/1" "200" "$status"
expect "payment 1 has the seed's fields" \
    'd["payment_id"] == 1 and {"trip_id", "amount", "method", "status", "reference", "created_at"} <= set(d)'

# 4. Charge an unpaid completed trip (1001..1300); on 409 (already paid) try another one.
key="smoke-charge-$RUN_ID"
start=$(( $(date +%s) % 300 ))
trip_id=""
payment_id=""
for attempt in $(seq 0 20); do
    if [[ "$attempt" -eq 0 ]]; then
        [[ -n "${TRIP_ID:-}" ]] || continue
        candidate="$TRIP_ID"
    else
        candidate=$(( 1001 + (start + attempt * 37) % 300 ))
    fi
    status="$(request POST /v1/payments/charge -H 'Content-Type: application/json' \
        -d "{\"idempotency_key\": \"$key-$candidate\", \"trip_id\": $candidate, \"method\": \"CARD\"}")"
    if [[ "$status" != "409" ]]; then
        trip_id="$candidate"
        break
    fi
done
check "POST /v1/payments/charge (trip ${trip_id:-none})" "201" "$status"
if [[ "$status" == "201" ]]; then
    payment_id="$(json 'd["payment_id"]')"
    charged_body="$(cat "$body")"
    expect "charge is SUCCESS for trip $trip_id" \
        "d['status'] == 'SUCCESS' and d['trip_id'] == $trip_id and d['amount'] > 0"

    # 5. Replay: same key, same body -> the same payment, flagged as replayed.
    status="$(request POST /v1/payments/charge -H 'Content-Type: application/json' \
        -d "{\"idempotency_key\": \"$key-$trip_id\", \"trip_id\": $trip_id, \"method\": \"CARD\"}")"
    check "POST /v1/payments/charge replay" "201" "$status"
    if [[ "$(json 'd["payment_id"]')" == "$payment_id" && "$(cat "$body")" == "$charged_body" ]]; then
        pass "replay returns the same payment ($payment_id)"
    else
        fail "replay returns the same payment: got $(head -c 200 "$body")"
    fi
    replayed="$(header Idempotent-Replayed)"
    if [[ "$replayed" == "true" ]]; then
        pass "replay has Idempotent-Replayed: true"
    else
        fail "replay has Idempotent-Replayed: true (got '${replayed}')"
    fi

    # 6. Partial refund.
    status="$(request POST "/v1/payments/$payment_id/refund" -H 'Content-Type: application/json' \
        -d "{\"idempotency_key\": \"smoke-refund-$RUN_ID\", \"amount\": 1.00, \"reason\": \"smoke test\"}")"
    check "POST /v1/payments/$payment_id/refund (partial)" "200" "$status"
    expect "refund leaves the payment PARTIALLY_REFUNDED" \
        "d['payment_id'] == $payment_id and d['refund_amount'] == 1 and d['status'] == 'PARTIALLY_REFUNDED'"

    # 7. Receipt, JSON and HTML.
    status="$(request GET "/v1/payments/$payment_id/receipt")"
    check "GET /v1/payments/$payment_id/receipt" "200" "$status"
    expect "receipt names the payment and its refund" \
        "d['receipt_id'].startswith('RCP-') and len(d['refunds']) == 1"

    status="$(request GET "/v1/payments/$payment_id/receipt" -H 'Accept: text/html')"
    check "GET /v1/payments/$payment_id/receipt (Accept: text/html)" "200" "$status"
    if [[ "$(header Content-Type)" == text/html* ]] && grep -qi '<html' "$body"; then
        pass "HTML receipt is an HTML page"
    else
        fail "HTML receipt is an HTML page (Content-Type '$(header Content-Type)')"
    fi
else
    for skipped in "charge replay" "refund" "receipt JSON" "receipt HTML"; do
        fail "$skipped: skipped, no payment was charged"
    done
fi

# 8. Metrics.
status="$(request GET /metrics)"
check "GET /metrics" "200" "$status"
if grep -q '^payments_total' "$body"; then
    pass "metrics expose payments_total"
else
    fail "metrics expose payments_total"
fi

echo "$passed passed, $failed failed"
[[ "$failed" -eq 0 ]]
