#!/usr/bin/env bash
# Behaviour fingerprint of a build: runs the demo (defaults: seed 42, 12 rounds) and a tiny experiment
# (small CNN, 16 px, federated-all and federated-head, 3 rounds) in-process and over MQTT, and prints
# the demo's per-round table (without wall times) and the SHA-256 of every global model's weights.
# Two builds that behave the same print the same lines: diff the outputs of two checkouts.
# usage: npm run build && scripts/determinism-check.sh OUT_DIR > fingerprint.txt
set -euo pipefail
out=$(realpath -m "${1:?usage: scripts/determinism-check.sh OUT_DIR}")
repo=$(cd "$(dirname "$0")/.." && pwd)
rm -rf "$out" && mkdir -p "$out"
cd "$repo"
node dist/cli/main.js demo --out "$out/demo" > "$out/demo.log" 2>&1
echo "# demo per-round table (wall time left out)"
sed -n '/per round:/,/^$/p' "$out/demo.log" | awk 'NF>1{NF=NF-1; print}'
echo "# demo models"
for v in "$out"/demo/state/aggregator/models/v*; do echo "demo $(basename "$v") $(sha256sum < "$v/weights.bin" | cut -c1-16)"; done | sort -V
for mode in in-process mqtt; do
  cat > "$out/exp-$mode.json" <<JSON
{
  "name": "determinism", "out": "$out/exp-$mode", "seed": 5, "mode": "$mode",
  "data": { "source": "synthetic", "size": 16, "scale": 0.25 },
  "model": { "architecture": "small-cnn", "inputShape": [16, 16, 3], "seed": 5 },
  "pretrained": null,
  "training": { "epochs": 1, "batchSize": 16, "learningRate": 0.002, "learningRateDecay": 0.9, "optimizer": "adam", "decoder": "js" },
  "rounds": 3, "targetAccuracy": 0.99,
  "arms": { "centralized": false, "local-only": false, "federated-all": {}, "federated-head": {}, "federated-random": false }
}
JSON
  node dist/cli/main.js experiment --config "$out/exp-$mode.json" > "$out/exp-$mode.log" 2>&1
  echo "# experiment ($mode) models"
  find "$out/exp-$mode" -name weights.bin -path '*models*' | sort | while read -r f; do echo "${f#"$out/exp-$mode/"} $(sha256sum < "$f" | cut -c1-16)"; done
done
