"""KServe InferenceService manifests (CPU and GPU) and the server image for an exported repository.

Written, not run here: no Kubernetes cluster or GPU is reachable from this project's machines. The
manifests serve the repository with KServe's Triton runtime (Open Inference Protocol v2, the protocol
`edgeres triton check` and tritonclient speak); the image adds edgeres to NVIDIA's Triton image, because
the repository's preprocessing (and a Python-backend artifact) runs edgeres' own code.
"""

from __future__ import annotations

import re
from pathlib import Path

TRITON_IMAGE = "nvcr.io/nvidia/tritonserver:25.01-py3"  # Triton 2.54, Python 3.12, ONNX Runtime and OpenVINO
EXTRA = {"onnxruntime": "onnx", "openvino": "x86", "python": "onnx,x86,rpi"}


def write_manifests(folder: Path, exported) -> None:
    folder.mkdir(parents=True)
    service = _service_name(exported.name)
    (folder / "Dockerfile").write_text(_dockerfile(exported))
    for device in ("cpu", "gpu"):
        (folder / f"inferenceservice-{device}.yaml").write_text(_manifest(service, device))


def _service_name(name: str) -> str:
    """A Kubernetes name (DNS-1035 label): lower case letters, digits and '-', starting with a letter."""
    label = re.sub(r"[^a-z0-9-]", "-", name.lower()).strip("-")
    return ("m-" + label if not label[:1].isalpha() else label)[:53].rstrip("-")


def _dockerfile(exported) -> str:
    from ..version import __version__

    wheel = f"edgeres-{__version__}-py3-none-any.whl"
    return (f"# The server image: NVIDIA's Triton with edgeres, whose preprocessing runs in the repository's\n"
            f"# Python-backend steps ({exported.backend} runs the artifact). edgeres is installed from its wheel\n"
            "# (it is not on PyPI): put it beside this file first, e.g. from edgeres' repository:\n"
            "#   pip wheel --no-deps -w kserve/ /path/to/edgeres\n"
            "# then build and push the image, and set the manifests' image to it:\n"
            "#   docker build -t YOUR-REGISTRY/edgeres-triton:1 kserve/\n"
            f"FROM {TRITON_IMAGE}\n"
            f"COPY {wheel} /tmp/\n"
            f'RUN pip install --no-cache-dir "/tmp/{wheel}[{EXTRA[exported.backend]}]" && rm /tmp/{wheel}\n')


def _manifest(service: str, device: str) -> str:
    resources = ('          cpu: "2"\n          memory: 4Gi\n' if device == "cpu" else
                 '          cpu: "4"\n          memory: 8Gi\n          nvidia.com/gpu: "1"\n')
    return f"""# KServe InferenceService: the repository served by Triton on {device.upper()}, scaled out by replicas.
# Copy model_repository/ to object storage KServe can read, and set storageUri to it; set image to the
# image built from the Dockerfile beside this file (edgeres installed in Triton's).
apiVersion: serving.kserve.io/v1beta1
kind: InferenceService
metadata:
  name: {service}-{device}
spec:
  predictor:
    minReplicas: 1
    maxReplicas: 4
    scaleMetric: concurrency
    scaleTarget: 8
    model:
      modelFormat:
        name: triton
      protocolVersion: v2
      storageUri: s3://YOUR-BUCKET/{service}/model_repository
      image: YOUR-REGISTRY/edgeres-triton:1
      args:
        - --model-control-mode=none
      resources:
        requests:
{resources}        limits:
{resources}"""
