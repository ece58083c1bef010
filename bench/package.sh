#!/usr/bin/env bash
# The package as a new user gets it: a fresh virtual environment, `pip install ".[app,pyterrier,hub,peft]"` from a
# copy of the repository, then every `atlas` subcommand run from another working directory on the real data of
# ../shared (the job on 1 query, its report, the app started, answering /_stcore/health, and stopped).
#
#   bash bench/package.sh            # a venv that sees the machine's packages (installs only the package: seconds)
#   FRESH=1 bash bench/package.sh    # a venv with nothing in it (downloads torch and the rest: minutes, network)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${SHARED:-$REPO/../shared}
WORK=$(mktemp -d /tmp/atlas-package.XXXX)
trap 'kill "${APP_PID:-0}" 2>/dev/null || true; rm -rf "$WORK"' EXIT
uptime
python -m venv ${FRESH:+--clear} $([ -z "${FRESH:-}" ] && echo --system-site-packages) "$WORK/venv"
cp -r "$REPO" "$WORK/src" && rm -rf "$WORK/src/.git" "$WORK/src/data/store" "$WORK/src/data/cache"
time "$WORK/venv/bin/pip" install -q "$WORK/src[app,pyterrier,hub,peft]"
rm -rf "$WORK/src"  # the installed package only from here on
cd "$WORK"
ATLAS="$WORK/venv/bin/atlas"
"$ATLAS" --help
time "$ATLAS" precompute --dataset "$SHARED/data/trec-dl-2020" --model "$SHARED/models/minilm-l6-msmarco-ce" \
    --max-queries 1 --store "$WORK/store" --cache "$WORK/cache" --no-progress
RUN=$(ls -d "$WORK"/store/*/ | head -1)
"$ATLAS" report "$RUN" | head -30
"$ATLAS" app --store "$WORK/store" --server.port 8597 > "$WORK/app.log" 2>&1 &
APP_PID=$!
for _ in $(seq 60); do
    if curl -fsS http://localhost:8597/_stcore/health 2>/dev/null; then echo " <- atlas app answers"; break; fi
    sleep 1
done
kill "$APP_PID" && wait "$APP_PID" 2>/dev/null || true
echo "atlas app stopped"
