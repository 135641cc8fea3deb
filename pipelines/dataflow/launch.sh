#!/usr/bin/env bash
# Launch `detrec preprocess` on Dataflow from a laptop (run from the repository root).
#
#   PROJECT=my-proj REGION=europe-west4 BUCKET=my-bucket \
#   INPUT=gs://my-bucket/ILSVRC OUTPUT=gs://my-bucket/datasets/det-v1 \
#   [MODE=setup|image] [IMAGE=REGION-docker.pkg.dev/PROJ/REPO/detrec-beam:0.1.0] \
#   [MACHINE_TYPE=n2-standard-4] [MAX_WORKERS=20] \
#   pipelines/dataflow/launch.sh [more detrec or Beam flags, e.g. --num-shards train=1024,val=64 --dry_run]
#
# MODE=setup (default) stages this checkout as an sdist (--setup_file) and has workers pip-install
# pipelines/dataflow/requirements.txt at start-up: nothing to build, slower worker start.
# MODE=image runs workers in the custom SDK container built from docker/beam.Dockerfile: fast,
# reproducible start-up, no PyPI access needed on workers.
# `--dry_run` builds and validates the job graph without credentials and submits nothing.
# See pipelines/dataflow/README.md (commands) and runbook.md (costs, quotas, failures).
set -euo pipefail

: "${PROJECT:?set PROJECT to the Google Cloud project id}"
: "${REGION:?set REGION, e.g. europe-west4}"
: "${BUCKET:?set BUCKET to a Cloud Storage bucket name (without gs://)}"
: "${INPUT:?set INPUT to the gs:// folder holding Annotations/ and Data/}"
: "${OUTPUT:?set OUTPUT to a new gs:// folder for the dataset}"
MODE="${MODE:-setup}"
MACHINE_TYPE="${MACHINE_TYPE:-n2-standard-4}"
MAX_WORKERS="${MAX_WORKERS:-20}"
PYTHON="${PYTHON:-python3}"
JOB_NAME="${JOB_NAME:-detrec-preprocess-$(date -u +%Y%m%d-%H%M%S)}"

case "$MODE" in
  setup)
    packaging=(--setup_file ./setup.py
               --requirements_file pipelines/dataflow/requirements.txt
               --requirements_cache=skip) ;;
  image)
    : "${IMAGE:?MODE=image needs IMAGE, the pushed docker/beam.Dockerfile image}"
    packaging=(--sdk_container_image "$IMAGE") ;;
  *)
    echo "launch.sh: MODE must be setup or image, got '$MODE'" >&2
    exit 2 ;;
esac

exec "$PYTHON" -m detrec.pipelines.cli preprocess \
  --input "$INPUT" --output "$OUTPUT" \
  --runner DataflowRunner \
  --project "$PROJECT" --region "$REGION" \
  --temp_location "gs://$BUCKET/tmp" --staging_location "gs://$BUCKET/staging" \
  --job_name "$JOB_NAME" \
  --worker_machine_type "$MACHINE_TYPE" \
  --autoscaling_algorithm THROUGHPUT_BASED --max_num_workers "$MAX_WORKERS" \
  "${packaging[@]}" \
  "$@"
