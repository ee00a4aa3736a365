"""Vendor the KServe InferenceService CRD's OpenAPI schema (v1beta1) that tests/test_kserve.py validates the
manifests in deploy/kserve/ against: the CRD YAML of a KServe release in, a gzipped JSON of its schema out, with
the descriptions (most of its 2 MB) dropped and the source recorded beside it.

    python scripts/vendor_kserve_schema.py serving.kserve.io_inferenceservices.yaml v0.20.0 COMMIT

The YAML is config/crd/full/serving.kserve.io_inferenceservices.yaml of the kserve/kserve repository at that tag
(Apache-2.0). The KServe Python SDK would validate too, but it pins protobuf<7 (Ray Serve needs 7) and brings pandas.
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import yaml

OUT = Path(__file__).resolve().parents[1] / "tests" / "data" / "kserve_inferenceservice_v1beta1.schema.json.gz"


def strip(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: strip(v) for k, v in node.items() if k != "description"}
    if isinstance(node, list):
        return [strip(v) for v in node]
    return node


def main(crd_path: str, version: str, commit: str) -> None:
    crd = yaml.safe_load(Path(crd_path).read_text())
    [served] = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    doc = {"source": "https://github.com/kserve/kserve/blob/"
                     f"{version}/config/crd/full/serving.kserve.io_inferenceservices.yaml",
           "kserve_version": version, "commit": commit, "license": "Apache-2.0",
           "crd": crd["metadata"]["name"], "api_version": f"{crd['spec']['group']}/v1beta1",
           "note": "openAPIV3Schema of the v1beta1 version, descriptions removed (scripts/vendor_kserve_schema.py)",
           "schema": strip(served["schema"]["openAPIV3Schema"])}
    OUT.write_bytes(gzip.compress(json.dumps(doc, sort_keys=True, separators=(",", ":")).encode(), mtime=0))
    print(f"{OUT}: {OUT.stat().st_size} bytes")


if __name__ == "__main__":
    main(*sys.argv[1:4])
