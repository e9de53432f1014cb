#!/usr/bin/env bash
# Launches multi-worker training on Kubernetes: renders deploy/launch/train_multiworker.yaml and
# pipes it to `kubectl apply`.
#
#   IMAGE=gcr.io/my-project/sketch-rnn:latest DATA=gs://my-bucket/sketch-rnn/quickdraw \
#     MODEL_DIR=gs://my-bucket/runs/quickdraw NUM_WORKERS=4 STEPS=100000 bash deploy/launch/k8s_train.sh
#   DRY_RUN=1 IMAGE=... DATA=... MODEL_DIR=... bash deploy/launch/k8s_train.sh   # print the manifest only
#
# Build and push the image first (from the repository root):
#   docker build -f deploy/launch/Dockerfile -t gcr.io/my-project/sketch-rnn:latest . && docker push ...
# Needs kubectl pointed at the cluster, and pods allowed to read DATA and write MODEL_DIR.
# Follow it: kubectl logs -f job/sketch-rnn-train; rerun after `kubectl delete job sketch-rnn-train`.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${IMAGE:-YOUR_IMAGE}
DATA=${DATA:-YOUR_DATA}
MODEL_DIR=${MODEL_DIR:-YOUR_MODEL_DIR}
NUM_WORKERS=${NUM_WORKERS:-2}
STEPS=${STEPS:-100000}

for name in IMAGE DATA MODEL_DIR; do
  if [[ ${!name} == YOUR_* ]]; then
    echo "error: set $name (e.g. $name=... bash $0); see the comments at the top of $0" >&2
    exit 2
  fi
done
for name in NUM_WORKERS STEPS; do
  if ! [[ ${!name} =~ ^[1-9][0-9]*$ ]]; then
    echo "error: $name must be a positive integer, got '${!name}'" >&2
    exit 2
  fi
done
for name in IMAGE DATA MODEL_DIR; do
  if [[ ${!name} == *[\|\"\\\ ]* ]]; then
    echo "error: $name must not contain spaces, quotes, backslashes or '|', got '${!name}'" >&2
    exit 2
  fi
done

manifest=$(sed -e "s|__IMAGE__|$IMAGE|g" -e "s|__DATA__|$DATA|g" -e "s|__MODEL_DIR__|$MODEL_DIR|g" \
               -e "s|__NUM_WORKERS__|$NUM_WORKERS|g" -e "s|__STEPS__|$STEPS|g" deploy/launch/train_multiworker.yaml)

if [[ -n ${DRY_RUN:-} ]]; then
  echo "+ kubectl apply -f - <<EOF" >&2
  printf '%s\n' "$manifest"
  exit 0
fi
printf '%s\n' "$manifest" | kubectl apply -f -
