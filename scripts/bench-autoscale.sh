#!/usr/bin/env bash
# Reactive against predictive autoscaling on two request-rate traces, in one
# process per trace (examples/examples/autoscale_simulate.rs):
#
# 1. a generated diurnal week with random spikes (seeded; the generator is
#    in examples/src/autoscale_sim.rs), with three weeks before it as the
#    forecaster's history;
# 2. the half-hourly England and Wales electricity demand of June–August
#    2000 that pmdarima ships as `load_taylor` (4,032 points), scaled to a
#    request rate. It is exported here at run time from a throwaway
#    virtualenv and deleted afterwards: the data is not part of the
#    repository.
#
# Prints each run's table (replica-minutes, minutes over target, scaling
# events, and the predictive/reactive ratios).
#
# usage: scripts/bench-autoscale.sh [SEED]
# Needs python3 with venv and pip, and network access to PyPI.
set -euo pipefail
SEED=${1:-7}
WORK=$(mktemp -d /var/tmp/atlas-bench-autoscale.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
cd "$(dirname "$0")/.."

echo "== exporting load_taylor from pmdarima in a throwaway virtualenv" >&2
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install --quiet --disable-pip-version-check pmdarima
"$WORK/venv/bin/python" - "$WORK/taylor.csv" <<'PY'
import sys
from pmdarima.datasets import load_taylor
y = load_taylor()
assert len(y) == 4032, len(y)
with open(sys.argv[1], "w") as f:
    f.write("\n".join(repr(float(v)) for v in y) + "\n")
PY
rm -rf "$WORK/venv"

cargo build --release --example autoscale_simulate >&2
BIN=${CARGO_TARGET_DIR:-target}/release/examples/autoscale_simulate
echo "== diurnal week, seed $SEED"
"$BIN" diurnal --seed "$SEED"
echo
echo "== load_taylor"
"$BIN" file "$WORK/taylor.csv" --step 30m
