"""The KServe manifests (deploy/kserve/) against the InferenceService CRD's own OpenAPI schema (KServe v0.20.0,
vendored by scripts/vendor_kserve_schema.py: tests/data/), validated as a strict apply would: every field must be
one the schema knows (Kubernetes prunes unknown ones silently, so a misspelt field would be lost), and the schema's
types, enums and required fields hold. The stlpips-serve container's arguments (in the manifest and the Dockerfile)
parse with stlpips-serve's own options. Nothing here is applied to a cluster or built (no Kubernetes, no Docker)."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from typing import Any

import pytest

yaml = pytest.importorskip("yaml")
jsonschema = pytest.importorskip("jsonschema")

ROOT = Path(__file__).resolve().parents[1]
SCHEMA = ROOT / "tests" / "data" / "kserve_inferenceservice_v1beta1.schema.json.gz"
MANIFESTS = sorted((ROOT / "deploy" / "kserve").glob("*.yaml"))


@pytest.fixture(scope="module")
def vendored() -> dict[str, Any]:
    return json.loads(gzip.decompress(SCHEMA.read_bytes()))


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields of ``value`` that the structural schema does not declare (what Kubernetes would prune)."""
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    found = []
    if isinstance(value, dict) and schema.get("type") == "object":
        properties, extra = schema.get("properties", {}), schema.get("additionalProperties")
        for key, item in value.items():
            if key in properties:
                found += unknown_fields(item, properties[key], f"{path}.{key}")
            elif isinstance(extra, dict):
                found += unknown_fields(item, extra, f"{path}.{key}")
            elif not extra:
                found.append(f"{path}.{key}")
    elif isinstance(value, list) and "items" in schema:
        for i, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{i}]")
    return found


def int_or_string(schema: Any) -> Any:
    """The schema with Kubernetes' x-kubernetes-int-or-string spelt as JSON Schema."""
    if isinstance(schema, dict):
        out = {k: int_or_string(v) for k, v in schema.items()}
        if schema.get("x-kubernetes-int-or-string"):
            out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
            out.pop("type", None)
        return out
    if isinstance(schema, list):
        return [int_or_string(v) for v in schema]
    return schema


DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def validate(manifest: dict[str, Any], vendored: dict[str, Any]) -> list[str]:
    schema = vendored["schema"]
    problems = [f"{'.'.join(str(p) for p in e.absolute_path)}: {e.message}"
                for e in jsonschema.Draft7Validator(int_or_string(schema)).iter_errors(manifest)]
    # metadata is Kubernetes' ObjectMeta, checked by the API server rather than the CRD's schema: its name must be
    # a DNS-1035 label for an InferenceService
    body = {k: v for k, v in manifest.items() if k != "metadata"}
    problems += [f"{p}: not in the schema (Kubernetes would drop it)" for p in unknown_fields(body, schema)]
    if not DNS_1035.match(str(manifest.get("metadata", {}).get("name", ""))):
        problems.append(f"metadata.name {manifest.get('metadata', {}).get('name')!r} is not a DNS-1035 label")
    if manifest.get("apiVersion") != vendored["api_version"] or manifest.get("kind") != "InferenceService":
        problems.append(f"apiVersion/kind {manifest.get('apiVersion')}/{manifest.get('kind')} is not "
                        f"{vendored['api_version']}/InferenceService")
    return problems


def test_the_vendored_schema_says_where_it_came_from(vendored: dict[str, Any]) -> None:
    assert vendored["kserve_version"] == "v0.20.0" and vendored["license"] == "Apache-2.0"
    assert vendored["source"].startswith("https://github.com/kserve/kserve/blob/v0.20.0/config/crd/full/")
    spec = vendored["schema"]["properties"]["spec"]
    assert {"predictor", "transformer", "explainer"} <= set(spec["properties"]) and spec["required"] == ["predictor"]


@pytest.mark.parametrize("path", MANIFESTS, ids=[p.name for p in MANIFESTS])
def test_manifests_fit_the_inferenceservice_schema(path: Path, vendored: dict[str, Any]) -> None:
    [manifest] = list(yaml.safe_load_all(path.read_text()))
    assert validate(manifest, vendored) == []


def test_the_check_catches_what_an_apply_would_refuse_or_drop(vendored: dict[str, Any]) -> None:
    [manifest] = list(yaml.safe_load_all((ROOT / "deploy" / "kserve" / "triton.yaml").read_text()))
    typo = json.loads(json.dumps(manifest))
    typo["spec"]["predictor"]["model"]["storageURI"] = typo["spec"]["predictor"]["model"].pop("storageUri")
    assert validate(typo, vendored) == [".spec.predictor.model.storageURI: not in the schema (Kubernetes would "
                                        "drop it)"]
    wrong_type = json.loads(json.dumps(manifest))
    wrong_type["spec"]["predictor"]["minReplicas"] = "one"
    assert any("minReplicas" in p and "not of type 'integer'" in p for p in validate(wrong_type, vendored))
    no_predictor = json.loads(json.dumps(manifest))
    del no_predictor["spec"]["predictor"]
    assert any("'predictor' is a required property" in p for p in validate(no_predictor, vendored))


def test_triton_manifest_serves_the_generated_repository() -> None:
    [manifest] = list(yaml.safe_load_all((ROOT / "deploy" / "kserve" / "triton.yaml").read_text()))
    model = manifest["spec"]["predictor"]["model"]
    assert model["modelFormat"]["name"] == "triton" and model["runtime"] == "kserve-tritonserver"
    assert model["protocolVersion"] == "v2" and model["storageUri"]


def serve_args_parse(args: list[str]) -> dict[str, Any]:
    """stlpips-serve's options parsed from ``args`` (nothing runs)."""
    pytest.importorskip("ray", reason="ray is not installed: pip install 'stlpips-deploy[ray]'")
    from stlpips_rt.cli.serve import main

    with main.make_context("stlpips-serve", list(args)) as ctx:
        return dict(ctx.params)


def test_the_custom_container_runs_stlpips_serve_with_valid_arguments() -> None:
    [manifest] = list(yaml.safe_load_all((ROOT / "deploy" / "kserve" / "stlpips-serve.yaml").read_text()))
    [container] = manifest["spec"]["predictor"]["containers"]
    assert container["name"] == "kserve-container"  # the name KServe routes to
    params = serve_args_parse(container["args"])
    assert params["host"] == "0.0.0.0" and params["port"] == container["ports"][0]["containerPort"] == 8080
    assert params["grpc_port"] == 8081
    assert container["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": 8080}
    assert {e["name"]: e["value"] for e in container["env"]}["STORAGE_URI"]
    assert params["model"].startswith("/mnt/models/")  # where KServe's storage initializer puts storageUri


def test_the_dockerfile_starts_stlpips_serve_with_valid_arguments() -> None:
    lines = (ROOT / "deploy" / "docker" / "Dockerfile.serve").read_text().splitlines()
    entrypoint = json.loads(next(line for line in lines if line.startswith("ENTRYPOINT")).split(" ", 1)[1])
    cmd = json.loads(next(line for line in lines if line.startswith("CMD")).split(" ", 1)[1])
    assert entrypoint == ["stlpips-serve"]
    params = serve_args_parse(cmd)
    assert (params["host"], params["port"], params["grpc_port"]) == ("0.0.0.0", 8080, 8081)
    assert any(line.startswith("RUN pip install") and "'.[ray,grpc]'" in line for line in lines)
