#!/usr/bin/env bash
# Lighthouse audit of the CalibPrompt page: accessibility and performance, desktop preset.
#
#     benchmarks/page_audit.sh                 # audit `python app.py --model demo`
#     RUNS=3 benchmarks/page_audit.sh          # three Lighthouse runs, medians of the figures
#     APP_CMD='python /tmp/themed.py --port $PORT' benchmarks/page_audit.sh   # audit another launcher
#     MIN_ACCESSIBILITY=95 MAX_CLS=0.1 benchmarks/page_audit.sh          # exit 3 below the targets
#     REPORT_DIR=/tmp/audit benchmarks/page_audit.sh   # keep the JSON (and HTML) reports
#
# Steps: installs Lighthouse (LIGHTHOUSE_VERSION, default 12.8.2: 13.x needs Node 22) into
# benchmarks/.lighthouse if it is not there yet; starts the app on a free port with a throwaway data
# dir (CALIBPROMPT_HOME=$(mktemp -d), HF_HUB_OFFLINE=1) from the repo root and waits until it
# answers; for each run starts a fresh headless Chromium (CHROME_PATH, default /usr/bin/chromium, with
# the flags that keep it off the network plus those Lighthouse's own launcher adds) and runs
# Lighthouse in it (categories accessibility and performance, desktop preset); prints the
# accessibility score, the cumulative layout shift, the largest contentful paint, the total transfer
# size and the failing accessibility audits with the elements that fail; stops Chromium and the app
# and removes their folders, also when it fails or is interrupted.
#
# Environment:
#   APP_CMD             the command that serves the app, run by bash from the repo root; $PORT (also
#                       exported as GRADIO_SERVER_PORT) and $CALIBPROMPT_HOME are set for it. Default:
#                       python app.py --model demo --port $PORT
#   PORT                the port (default: a free one)
#   RUNS                Lighthouse runs (default 1); figures are the medians, audits from every run
#   REPORT_DIR          where to keep the reports (default: a temporary folder, removed)
#   STARTUP_TIMEOUT     seconds to wait for the app to answer (default 180)
#   LIGHTHOUSE_TIMEOUT  seconds one Lighthouse run may take (default 300)
#   MIN_ACCESSIBILITY   fail (exit 3) if the median accessibility score (0-100) is below this
#   MAX_CLS             fail (exit 3) if the median cumulative layout shift is above this
#   PYTHON              the interpreter (default: .venv/bin/python of the repo if any, else python3)
#
# Exit status: 0 when everything ran (and the optional thresholds hold), 1 when something failed to
# run (install, app start-up, Lighthouse, report parsing), 3 when a threshold is missed.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LH_DIR="${LIGHTHOUSE_DIR:-$ROOT/benchmarks/.lighthouse}"
LH_VERSION="${LIGHTHOUSE_VERSION:-12.8.2}"
LH_BIN="$LH_DIR/node_modules/.bin/lighthouse"
export CHROME_PATH="${CHROME_PATH:-/usr/bin/chromium}"
CHROME_FLAGS="--headless --no-sandbox --disable-gpu --disable-background-networking --disable-component-update --no-first-run --disable-sync"
STARTUP_TIMEOUT="${STARTUP_TIMEOUT:-180}"
LIGHTHOUSE_TIMEOUT="${LIGHTHOUSE_TIMEOUT:-300}"
RUNS="${RUNS:-1}"

if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON="$(command -v python3)"; fi
fi
export PATH="$(dirname "$PYTHON"):$PATH"  # so that `python` in APP_CMD is the same interpreter

log() { printf '[page_audit] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

WORK="$(mktemp -d -t page_audit.XXXXXX)"
DATA_HOME="$(mktemp -d -t calibprompt_home.XXXXXX)"
APP_PID=""      # the app's process group (setsid)
CHROME_PID=""   # Chromium's process group (setsid): started here, so that it is always stopped here
LH_PID=""       # the running `timeout lighthouse` (timeout puts it in a process group of its own)
APP_LOG="$WORK/app.log"

stop_group() {  # stop_group PID: TERM to the process group led by PID, KILL after 5 s
    local pid=$1
    [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL -- "-$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local status=$?
    trap - EXIT INT TERM
    if [[ -n "$LH_PID" ]] && kill -0 "$LH_PID" 2>/dev/null; then
        kill -TERM -- "-$LH_PID" 2>/dev/null || kill -TERM "$LH_PID" 2>/dev/null || true
        wait "$LH_PID" 2>/dev/null || true
    fi
    stop_group "$CHROME_PID"
    stop_group "$APP_PID"
    if [[ $status -ne 0 && $status -ne 3 && -s "$APP_LOG" ]]; then
        log "last lines of the app's log:"; tail -n 30 "$APP_LOG" >&2 || true
    fi
    rm -rf "$DATA_HOME" "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

for tool in node npm curl "$CHROME_PATH" "$PYTHON"; do
    command -v "$tool" >/dev/null 2>&1 || die "$tool not found"
done
[[ "$RUNS" =~ ^[1-9][0-9]*$ ]] || die "RUNS must be a positive whole number, got '$RUNS'"

# (a) Lighthouse
if [[ ! -x "$LH_BIN" ]]; then
    log "installing lighthouse@$LH_VERSION into $LH_DIR"
    mkdir -p "$LH_DIR"
    timeout 600 npm install --prefix "$LH_DIR" --no-audit --no-fund --loglevel=error "lighthouse@$LH_VERSION" >&2 \
        || die "npm install lighthouse@$LH_VERSION failed"
    [[ -x "$LH_BIN" ]] || die "lighthouse is not in $LH_BIN after the install"
fi
log "lighthouse $("$LH_BIN" --version), $("$CHROME_PATH" --version 2>/dev/null | tail -n 1)"

# (b) the app
if [[ -z "${PORT:-}" ]]; then
    PORT="$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi
export PORT GRADIO_SERVER_PORT="$PORT" CALIBPROMPT_HOME="$DATA_HOME" HF_HUB_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
APP_CMD="${APP_CMD:-python app.py --model demo --port \$PORT}"
URL="http://127.0.0.1:$PORT/"
if curl -fs -o /dev/null --max-time 5 "$URL"; then die "something already answers on $URL: choose another PORT"; fi
log "starting: $APP_CMD  (port $PORT, data dir $DATA_HOME)"
cd "$ROOT"
setsid bash -c "$APP_CMD" >"$APP_LOG" 2>&1 </dev/null &
APP_PID=$!

deadline=$((SECONDS + STARTUP_TIMEOUT))
until curl -fs -o /dev/null --max-time 5 "$URL"; do
    kill -0 "$APP_PID" 2>/dev/null || die "the app exited before it answered on $URL"
    (( SECONDS < deadline )) || die "the app did not answer on $URL within ${STARTUP_TIMEOUT}s"
    sleep 1
done
log "the app answers on $URL"

# (c) Lighthouse runs, each in a fresh Chromium started here (Lighthouse's own launcher detaches
# Chromium, which then outlives a Lighthouse that is stopped or times out), with the flags that
# Lighthouse's launcher would add to ours
LAUNCHER_FLAGS="$(cd "$LH_DIR" && node -e 'console.log(require("chrome-launcher").Launcher.defaultFlags().join(" "))')" \
    || die "could not read chrome-launcher's default flags"

start_chrome() {  # start_chrome RUN: sets CHROME_PID and CDP_PORT
    local profile="$WORK/chrome-$1"
    mkdir -p "$profile"
    # shellcheck disable=SC2086  # the flag lists are meant to be split
    setsid "$CHROME_PATH" $CHROME_FLAGS $LAUNCHER_FLAGS --remote-debugging-port=0 --user-data-dir="$profile" \
        about:blank >"$WORK/chrome-$1.log" 2>&1 </dev/null &
    CHROME_PID=$!
    local deadline=$((SECONDS + 60))
    CDP_PORT=""
    until [[ -n "$CDP_PORT" ]] && curl -fs -o /dev/null --max-time 5 "http://127.0.0.1:$CDP_PORT/json/version"; do
        kill -0 "$CHROME_PID" 2>/dev/null || { tail -n 20 "$WORK/chrome-$1.log" >&2; die "Chromium exited at start-up"; }
        (( SECONDS < deadline )) || die "Chromium did not open its debugging port within 60s"
        sleep 0.5
        [[ -s "$profile/DevToolsActivePort" ]] && CDP_PORT="$(head -n 1 "$profile/DevToolsActivePort")"
    done
}

REPORTS=()
for run in $(seq 1 "$RUNS"); do
    out="$WORK/report-$run"
    log "lighthouse run $run/$RUNS"
    start_chrome "$run"
    timeout --kill-after=10 "$LIGHTHOUSE_TIMEOUT" "$LH_BIN" "$URL" --port="$CDP_PORT" \
        --only-categories=accessibility,performance --preset=desktop \
        --output=json --output=html --output-path="$out" \
        --quiet >"$WORK/lighthouse-$run.log" 2>&1 &
    LH_PID=$!
    if ! wait "$LH_PID"; then
        LH_PID=""
        tail -n 30 "$WORK/lighthouse-$run.log" >&2
        die "lighthouse run $run failed (or ran past ${LIGHTHOUSE_TIMEOUT}s)"
    fi
    LH_PID=""
    stop_group "$CHROME_PID"
    CHROME_PID=""
    kill -0 "$APP_PID" 2>/dev/null || die "the app exited during lighthouse run $run"
    [[ -s "$out.report.json" ]] || die "lighthouse run $run wrote no report"
    REPORTS+=("$out.report.json")
done

# (d) the figures
set +e
"$PYTHON" - "${MIN_ACCESSIBILITY:-}" "${MAX_CLS:-}" "${REPORTS[@]}" <<'EOF'
import json
import statistics
import sys

min_a11y, max_cls, paths = sys.argv[1], sys.argv[2], sys.argv[3:]
rows, failing = [], {}
for path in paths:
    with open(path) as f:
        report = json.load(f)
    if report.get("runtimeError"):
        print(f"Lighthouse runtime error: {report['runtimeError']}", file=sys.stderr)
        sys.exit(1)
    cats, audits = report["categories"], report["audits"]
    a11y = cats["accessibility"]["score"]
    perf = cats["performance"]["score"]
    values = {key: audits[key].get("numericValue") for key in
              ("cumulative-layout-shift", "largest-contentful-paint", "total-byte-weight")}
    if a11y is None or any(v is None for v in values.values()):
        print(f"{path}: a score or metric is missing (the page may not have loaded)", file=sys.stderr)
        sys.exit(1)
    rows.append({"accessibility": 100 * a11y, "performance": 100 * (perf or 0),
                 "cls": values["cumulative-layout-shift"], "lcp": values["largest-contentful-paint"] / 1000,
                 "bytes": values["total-byte-weight"]})
    for ref in cats["accessibility"]["auditRefs"]:
        audit = audits[ref["id"]]
        if audit.get("scoreDisplayMode") in ("binary", "numeric") and audit.get("score") is not None \
                and audit["score"] < 1:
            items = (audit.get("details") or {}).get("items") or []
            entry = failing.setdefault(ref["id"], {"title": audit["title"], "weight": ref.get("weight", 0),
                                                   "runs": 0, "items": []})
            entry["runs"] += 1
            for item in items:
                node = item.get("node") or {}
                text = node.get("selector") or node.get("snippet") or ""
                label = node.get("nodeLabel") or ""
                line = f"{text}  [{label[:60]}]" if label else text
                if line and line not in entry["items"]:
                    entry["items"].append(line)

med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
print(f"URL audited: {report['finalDisplayedUrl']}  (Lighthouse {report['lighthouseVersion']}, "
      f"desktop preset, {len(rows)} run(s){', medians' if len(rows) > 1 else ''})")
if len(rows) > 1:
    for i, r in enumerate(rows, 1):
        print(f"  run {i}: accessibility {r['accessibility']:.0f}, CLS {r['cls']:.3f}, LCP {r['lcp']:.1f} s, "
              f"{r['bytes'] / 1024:.0f} KiB")
print(f"accessibility score        {med['accessibility']:.0f}")
print(f"performance score          {med['performance']:.0f}")
print(f"cumulative layout shift    {med['cls']:.3f}")
print(f"largest contentful paint   {med['lcp']:.1f} s")
print(f"total transfer size        {med['bytes'] / 1024:.0f} KiB")
print(f"failing accessibility audits: {len(failing)}")
for audit_id, entry in sorted(failing.items(), key=lambda kv: -kv[1]["weight"]):
    runs = f", in {entry['runs']}/{len(rows)} runs" if len(rows) > 1 else ""
    weight = f"weight {entry['weight']}" if entry["weight"] else "weight 0, not scored"
    print(f"  - {audit_id} ({weight}{runs}): {entry['title']}")
    for line in entry["items"][:12]:
        print(f"      {line}")
    if len(entry["items"]) > 12:
        print(f"      … and {len(entry['items']) - 12} more")
missed = []
if min_a11y and med["accessibility"] < float(min_a11y):
    missed.append(f"accessibility {med['accessibility']:.0f} < {min_a11y}")
if max_cls and med["cls"] > float(max_cls):
    missed.append(f"CLS {med['cls']:.3f} > {max_cls}")
if missed:
    print("THRESHOLD MISSED: " + "; ".join(missed))
    sys.exit(3)
EOF
status=$?
set -e
if [[ -n "${REPORT_DIR:-}" ]]; then
    mkdir -p "$REPORT_DIR" && cp "$WORK"/report-* "$REPORT_DIR"/ && log "reports kept in $REPORT_DIR"
fi
exit "$status"
