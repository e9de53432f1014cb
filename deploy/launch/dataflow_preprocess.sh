#!/usr/bin/env bash
# Runs `sketch-rnn preprocess` on Google Cloud Dataflow: all of Quick Draw's raw drawings
# (gs://quickdraw_dataset/full/raw/*.ndjson, 345 categories, ~50M drawings) -> stroke-5 TFRecords.
#
#   PROJECT=my-project REGION=us-central1 BUCKET=my-bucket bash deploy/launch/dataflow_preprocess.sh
#   ... bash deploy/launch/dataflow_preprocess.sh --categories cat,dog --max-seq-len 200   # extra flags
#   DRY_RUN=1 ... bash deploy/launch/dataflow_preprocess.sh      # print the command only
#
# Streaming (Pub/Sub topic of ndjson lines, scale factor from an earlier batch run's metadata):
#   MODE=streaming TOPIC=projects/my-project/topics/drawings PROJECT=... REGION=... BUCKET=... \
#     bash deploy/launch/dataflow_preprocess.sh
#
# Needs: `bash scripts/dev.sh test` run once (creates .venv), `gcloud auth application-default login`,
# the Dataflow API enabled, and a bucket for temp files and the output. Workers install this
# pipeline from ./setup_dataflow.py (--setup_file: Beam and NumPy, no TensorFlow). Every flag after the script name is passed on: the
# job's own flags (sketch-rnn preprocess --help) and Beam/Dataflow flags alike.
set -euo pipefail
cd "$(dirname "$0")/../.."

PROJECT=${PROJECT:-YOUR_GCP_PROJECT}
REGION=${REGION:-YOUR_REGION}            # e.g. us-central1
BUCKET=${BUCKET:-YOUR_BUCKET}            # without gs://
MODE=${MODE:-batch}                      # batch | streaming
INPUT=${INPUT:-gs://quickdraw_dataset/full/raw/*.ndjson}
OUTPUT=${OUTPUT:-gs://$BUCKET/sketch-rnn/quickdraw}
MAX_WORKERS=${MAX_WORKERS:-50}
SKETCH_RNN=${SKETCH_RNN:-.venv/bin/sketch-rnn}
JOB_NAME=${JOB_NAME:-sketch-rnn-preprocess-$MODE-$(date -u +%Y%m%d-%H%M%S)}

for name in PROJECT REGION BUCKET; do
  if [[ ${!name} == YOUR_* ]]; then
    echo "error: set $name (e.g. $name=... bash $0); see the comments at the top of $0" >&2
    exit 2
  fi
done

common=(
  --runner DataflowRunner
  --project "$PROJECT"
  --region "$REGION"
  --temp_location "gs://$BUCKET/tmp"
  --staging_location "gs://$BUCKET/staging"
  --setup_file ./setup_dataflow.py
  --job_name "$JOB_NAME"
  --max_num_workers "$MAX_WORKERS"
)

case "$MODE" in
  batch)
    cmd=("$SKETCH_RNN" preprocess --input "$INPUT" --output "$OUTPUT" "${common[@]}" "$@")
    ;;
  streaming)
    : "${TOPIC:?set TOPIC=projects/PROJECT/topics/NAME (a Pub/Sub topic of ndjson lines)}"
    METADATA_FROM=${METADATA_FROM:-gs://$BUCKET/sketch-rnn/quickdraw}
    STREAM_OUTPUT=${STREAM_OUTPUT:-gs://$BUCKET/sketch-rnn/stream}
    cmd=("$SKETCH_RNN" preprocess --streaming --pubsub-topic "$TOPIC" --metadata-from "$METADATA_FROM"
         --output "$STREAM_OUTPUT" --window-seconds "${WINDOW_SECONDS:-300}" "${common[@]}" "$@")
    ;;
  *)
    echo "error: MODE must be batch or streaming, got '$MODE'" >&2
    exit 2
    ;;
esac

echo "+ ${cmd[*]}"
if [[ -n ${DRY_RUN:-} ]]; then
  exit 0
fi
exec "${cmd[@]}"
