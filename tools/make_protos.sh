#!/usr/bin/env bash
# Regenerate the Python of the gRPC messages (classifier/serving/protos/*_pb2.py) from their .proto files.
# grpcio-tools is needed only here, so it is not in requirements: this script installs it into a folder of its own.
# 1.80.0 writes protobuf 6.31 code, which the pinned runtime (protobuf 6.33, requirements.txt) loads.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=$(mktemp -d)
trap 'rm -rf "$tools"' EXIT
python3 -m pip install -q --disable-pip-version-check --no-deps --target "$tools" grpcio-tools==1.80.0
# Named by their path from the project root, so the names they take in protobuf's global pool are ours alone.
PYTHONPATH="$tools" python3 -m grpc_tools.protoc -I . --python_out=. classifier/serving/protos/*.proto
