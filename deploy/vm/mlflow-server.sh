#!/bin/sh
# The at-scale MLflow server on one VM (deploy/vm/README.md): tracking + registry in PostgreSQL,
# artifacts in a local folder served (proxied) by the server, so clients need no file access.
#   MLFLOW_BACKEND_STORE_URI       postgresql+psycopg2://mlflow:<password>@127.0.0.1:5432/mlflow
#   MLFLOW_ARTIFACTS_DESTINATION   e.g. /var/lib/ml_platform/mlflow-artifacts (or s3://bucket/prefix)
#   MLFLOW_HOST, MLFLOW_PORT       default 127.0.0.1:5000
#   MLFLOW_WORKERS                 default 2
set -eu
: "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI (postgresql+psycopg2://...)}"
: "${MLFLOW_ARTIFACTS_DESTINATION:?set MLFLOW_ARTIFACTS_DESTINATION}"
exec "${PYTHON:-python}" -m mlflow server \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" \
  --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --serve-artifacts \
  --host "${MLFLOW_HOST:-127.0.0.1}" --port "${MLFLOW_PORT:-5000}" \
  --workers "${MLFLOW_WORKERS:-2}"
