#!/usr/bin/env bash
# Serves an export with the official TensorFlow Serving container (REST on port 8501, gRPC 8500 not
# published). The export base directory holds numeric versions, BASE/<version>/saved_model.pb, as
# `sketch-rnn train` / `sketch-rnn export` write them; TF Serving serves the highest version.
#
#   EXPORT_BASE=runs/pig/export bash deploy/launch/tf_serving.sh
#   DRY_RUN=1 EXPORT_BASE=runs/pig/export bash deploy/launch/tf_serving.sh     # print the command only
#   PORT=9000 MODEL_NAME=pig EXPORT_BASE=... bash deploy/launch/tf_serving.sh
#
# Then, e.g.:
#   curl -d '{"signature_name": "sample", "inputs": {"num": 2, "temperature": 0.5, "seed": 1}}' \
#     http://localhost:8501/v1/models/sketch_rnn:predict
# `sketch-rnn serve --model BASE` speaks the same REST API (and adds the demo page and input checks).
set -euo pipefail

EXPORT_BASE=${EXPORT_BASE:-${1:-}}
MODEL_NAME=${MODEL_NAME:-sketch_rnn}
PORT=${PORT:-8501}
IMAGE=${TF_SERVING_IMAGE:-tensorflow/serving}

if [[ -z $EXPORT_BASE ]]; then
  echo "error: set EXPORT_BASE to the export base directory (BASE/<version>/saved_model.pb)" >&2
  exit 2
fi
if [[ ! -d $EXPORT_BASE ]]; then
  echo "error: EXPORT_BASE=$EXPORT_BASE is not a directory" >&2
  exit 2
fi
EXPORT_BASE=$(cd "$EXPORT_BASE" && pwd)   # docker bind mounts need an absolute path
versions=()
for dir in "$EXPORT_BASE"/*/; do
  name=$(basename "$dir")
  if [[ $name =~ ^[0-9]+$ && -f $dir/saved_model.pb ]]; then
    versions+=("$name")
  fi
done
if [[ ${#versions[@]} -eq 0 ]]; then
  if [[ -f $EXPORT_BASE/saved_model.pb ]]; then
    echo "error: $EXPORT_BASE is a version directory; pass its parent (TF Serving wants BASE/<version>/)" >&2
  else
    echo "error: no version directory with a saved_model.pb in $EXPORT_BASE (expected BASE/<version>/saved_model.pb)" >&2
  fi
  exit 2
fi
if ! [[ $MODEL_NAME =~ ^[A-Za-z0-9_.-]+$ && $PORT =~ ^[0-9]+$ ]]; then
  echo "error: MODEL_NAME may hold letters, digits, _ . - only and PORT must be a number" >&2
  exit 2
fi

cmd=(docker run --rm -p "$PORT:8501"
     --mount "type=bind,source=$EXPORT_BASE,target=/models/$MODEL_NAME"
     -e "MODEL_NAME=$MODEL_NAME" "$IMAGE")
latest=$(printf '%s\n' "${versions[@]}" | sort -n | tail -1)
echo "serving version $latest of $EXPORT_BASE as http://localhost:$PORT/v1/models/$MODEL_NAME" >&2
echo "+ ${cmd[*]}"
if [[ -n ${DRY_RUN:-} ]]; then
  exit 0
fi
exec "${cmd[@]}"
