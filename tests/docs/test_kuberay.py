"""docs/kuberay/rayjob.yaml is a RayJob that KubeRay accepts, and its entrypoint is an `actindex index` that
parses: checked against the RayJob CRD's OpenAPI schema (KubeRay v1.7.0, vendored: see README.md here)
without a Kubernetes cluster.

Kubernetes drops the fields a structural schema does not list (and `kubectl apply` refuses them: its field
validation is strict by default), so an object schema that lists properties is closed here too: a
misspelled field is an error, not a silently ignored one. CEL rules (x-kubernetes-validations) are not
checked.
"""

from __future__ import annotations

import copy
import json
import shlex
from pathlib import Path

import jsonschema
import pytest
import typer
import yaml

from actindex.jobs.cli import app

REPO = Path(__file__).parents[2]
MANIFEST = REPO / "docs" / "kuberay" / "rayjob.yaml"
SCHEMA = Path(__file__).parent / "rayjob-v1.schema.json"


def closed(schema):
    """The schema with additionalProperties: false wherever it lists properties and allows no others."""
    if isinstance(schema, list):
        return [closed(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = {key: closed(value) for key, value in schema.items()}
    open_ = "additionalProperties" in schema or schema.get("x-kubernetes-preserve-unknown-fields")
    if "properties" in schema and not open_:
        schema["additionalProperties"] = False
    return schema


@pytest.fixture(scope="module")
def validator():
    return jsonschema.Draft4Validator(closed(json.loads(SCHEMA.read_text())))


@pytest.fixture(scope="module")
def manifest() -> dict:
    return yaml.safe_load(MANIFEST.read_text())


def errors(validator, document) -> list[str]:
    return sorted(
        f"{'.'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(document)
    )


def test_the_manifest_is_a_valid_rayjob(validator, manifest):
    assert (manifest["apiVersion"], manifest["kind"]) == ("ray.io/v1", "RayJob")
    assert errors(validator, manifest) == []
    cluster = manifest["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]] + cluster["workerGroupSpecs"]
    images = {c["image"] for pod in pods for c in pod["template"]["spec"]["containers"]}
    assert all(image.startswith(f"rayproject/ray:{cluster['rayVersion']}-") for image in images), images


def test_its_entrypoint_is_an_index_command_whose_options_parse(manifest):
    args = shlex.split(manifest["spec"]["entrypoint"])
    assert args[:4] == ["python", "-m", "actindex", "index"]
    index = typer.main.get_command(app).commands["index"]
    params = index.make_context("index", args[4:]).params  # raises on an unknown option or a bad value
    assert params["executor"].value == "ray" and params["address"] is None  # the cluster's RAY_ADDRESS


def test_images_and_index_are_on_a_volume_every_pod_mounts(manifest):
    cluster = manifest["spec"]["rayClusterSpec"]
    pods = [cluster["headGroupSpec"]["template"]["spec"]]
    pods += [group["template"]["spec"] for group in cluster["workerGroupSpecs"]]
    params = (
        typer.main.get_command(app)
        .commands["index"]
        .make_context("index", shlex.split(manifest["spec"]["entrypoint"])[4:])
        .params
    )
    for pod in pods:
        claims = {v["name"]: v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]}
        mounts = {m["mountPath"]: claims[m["name"]] for c in pod["containers"] for m in c["volumeMounts"]}
        for path in (params["source"], str(params["out"])):
            assert any(path.startswith(mount.rstrip("/") + "/") for mount in mounts), (path, mounts)
        assert set(mounts.values()) == {"actindex-data"}
    gpus = [
        group["template"]["spec"]["containers"][0]["resources"]["limits"]
        for group in cluster["workerGroupSpecs"]
    ]
    assert all(limits.get("nvidia.com/gpu", 0) >= 1 for limits in gpus)
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"  # no model actor on the head
    assert cluster["authOptions"]["mode"] == "token"


def _broken(manifest: dict, path: str, change) -> dict:
    document = copy.deepcopy(manifest)
    *parents, last = [int(key) if key.isdigit() else key for key in path.split(".")]
    node = document
    for key in parents:
        node = node[key]
    change(node, last)
    return document


def _rename(new: str):
    def change(node, key):
        node[new] = node.pop(key)

    return change


@pytest.mark.parametrize(
    ("path", "change", "expected"),
    [
        # a required field misspelled: missing, and the misspelling is not a field
        (
            "spec.rayClusterSpec.workerGroupSpecs.0.groupName",
            _rename("groupname"),
            [
                "spec.rayClusterSpec.workerGroupSpecs.0: 'groupName' is a required property",
                "spec.rayClusterSpec.workerGroupSpecs.0: Additional properties are not allowed "
                "('groupname' was unexpected)",
            ],
        ),
        (
            "spec.rayClusterSpec.headGroupSpec.template",
            lambda node, key: node.pop(key),
            ["spec.rayClusterSpec.headGroupSpec: 'template' is a required property"],
        ),
        # wrong types
        (
            "spec.rayClusterSpec.workerGroupSpecs.0.replicas",
            lambda node, key: node.__setitem__(key, "two"),
            ["spec.rayClusterSpec.workerGroupSpecs.0.replicas: 'two' is not of type 'integer'"],
        ),
        (
            "spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus",
            lambda node, key: node.__setitem__(key, 0),
            ["spec.rayClusterSpec.headGroupSpec.rayStartParams.num-cpus: 0 is not of type 'string'"],
        ),
        # an optional field misspelled: Kubernetes would drop it without a word
        (
            "spec.shutdownAfterJobFinishes",
            _rename("shutdownAfterJobFinish"),
            ["spec: Additional properties are not allowed ('shutdownAfterJobFinish' was unexpected)"],
        ),
        (
            "spec.rayClusterSpec.authOptions.mode",
            lambda node, key: node.__setitem__(key, "tokens"),
            ["spec.rayClusterSpec.authOptions.mode: 'tokens' is not one of ['disabled', 'token']"],
        ),
    ],
)
def test_a_broken_manifest_is_refused(validator, manifest, path, change, expected):
    assert errors(validator, _broken(manifest, path, change)) == sorted(expected)


def test_a_misspelled_entrypoint_option_is_refused(manifest):
    args = shlex.split(manifest["spec"]["entrypoint"].replace("--layers", "--layer"))
    with pytest.raises(Exception, match="No such option: --layer"):  # typer's own click's UsageError
        typer.main.get_command(app).commands["index"].make_context("index", args[4:])
