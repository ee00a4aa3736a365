#!/usr/bin/env bash
# Does Ray Serve's own gRPC proxy carry inference.GRPCInferenceService to stlpips-serve's deployment? Ray 2.60 binds
# that proxy to every interface ([::]:PORT, no option for the address), so this check runs it inside a new network
# namespace whose only interface is its own loopback (root needed: unshare --net), where nothing outside can reach
# it. It deploys the service with grpc_servicer_functions set to stlpips_rt.scale.oip_grpc.add_servicer_to_server
# (tritonclient's generated servicer) and calls it with tritonclient.grpc: health, metadata, a pair against
# Scorer.score (bit for bit), and an error's status code.
#   bash scripts/check_ray_grpc_proxy.sh [MODEL]       # default models/stlpips_alex_st.onnx (bash scripts/demo.sh)
# Not a test: it needs root and a fresh namespace; docs/serving.md reports what it printed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${STLPIPS_VENV:-$root/.venv}"
model="$(realpath "${1:-$root/models/stlpips_alex_st.onnx}")"
exec unshare --net bash -c '
set -euo pipefail
ip link set lo up
exec timeout 600 "$0" - "$1" <<"PY"
import sys

import numpy as np
import ray
import tritonclient.grpc as grpcclient
from ray import serve
from tritonclient.utils import InferenceServerException

from stlpips_rt import Scorer
from stlpips_rt.scale import service

model = sys.argv[1]
ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
try:
    serve.start(http_options={"host": "127.0.0.1", "port": 8000},
                grpc_options={"port": 9000, "grpc_servicer_functions": [
                    "stlpips_rt.scale.oip_grpc.add_servicer_to_server"]})
    serve.run(service.build_app(service.ServiceConfig(model=model, providers="cpu")), name=service.APP_NAME,
              route_prefix="/")
    client = grpcclient.InferenceServerClient("127.0.0.1:9000")
    print("live", client.is_server_live(), "ready", client.is_server_ready(), "model ready",
          client.is_model_ready("alex-st"))
    print("metadata", client.get_model_metadata("alex-st", as_json=True))
    rng = np.random.default_rng(0)
    a, b = (rng.integers(0, 256, (1, 67, 93, 3), dtype=np.uint8) for _ in range(2))
    inputs = []
    for name, data in (("in0", a), ("in1", b)):
        tensor = grpcclient.InferInput(name, list(data.shape), "UINT8")
        tensor.set_data_from_numpy(data)
        inputs.append(tensor)
    got = client.infer("alex-st", inputs).as_numpy("dist")
    expected = np.float32(Scorer(model, providers="cpu").score(a[0], b[0]))
    print("dist", got, "Scorer.score", expected, "bit-identical", got.tobytes() == expected.tobytes())
    try:
        client.get_model_metadata("vgg-st")
    except InferenceServerException as exc:
        print("unknown model ->", exc.status(), exc.message())
finally:
    serve.shutdown()
    ray.shutdown()
PY
' "$venv/bin/python" "$model"
