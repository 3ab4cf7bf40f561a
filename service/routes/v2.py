"""Open Inference Protocol v2 (KServe v2 / Triton REST), with the binary tensor data extension.

Every route exists twice, as the protocol asks: under /v2/models/{model} and
under /v2/models/{model}/versions/{version} for the loaded version. Errors
are `{"error": "..."}` (app.py renders them so for every /v2 path).
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import __version__
from service.config import Settings
from service.deps import RuntimeDep, SettingsDep, json_response
from service.errors import NotFound, NotReady
from service.inference import v2_infer
from service.routes.docs import json_body
from service.runtime import ModelRuntime
from service.schemas import (
    V2Error,
    V2InferRequest,
    V2InferResponse,
    V2Live,
    V2ModelMetadata,
    V2ModelReady,
    V2Ready,
    V2ServerMetadata,
)
from service.v2 import INPUT_NAME

router = APIRouter(prefix="/v2", tags=["open-inference-v2"])
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": V2Error, "description": "bad input: name, shape, datatype, data"},
    404: {"model": V2Error, "description": "unknown model or version"},
    503: {"model": V2Error, "description": "not ready"},
}
EXTENSIONS = ["binary_tensor_data"]


def resolve(runtime: ModelRuntime, model: str, version: str | None = None) -> None:
    if model != runtime.name:
        raise NotFound(f"unknown model {model!r}; this server serves {runtime.name!r}")
    if version is not None and version != runtime.version:
        raise NotFound(f"model {model!r} has no version {version!r}; the loaded version is {runtime.version!r}")


def ready_or_503(request: Request) -> None:
    if not request.app.state.ready:
        raise NotReady("not ready: the model is not loaded and warmed up", headers={"Retry-After": "1"})


@router.get("", response_model=V2ServerMetadata, summary="Server metadata")
async def server_metadata() -> Response:
    return json_response({"name": "bnserve", "version": __version__, "extensions": EXTENSIONS})


@router.get("/health/live", response_model=V2Live, summary="Server liveness")
async def live() -> Response:
    return json_response({"live": True})


@router.get("/health/ready", response_model=V2Ready, responses={503: ERRORS[503]}, summary="Server readiness")
async def ready(request: Request) -> Response:
    ready_or_503(request)
    return json_response({"ready": True})


def _metadata(runtime: ModelRuntime) -> dict[str, object]:
    card, classes = runtime.card, len(runtime.class_names)
    return {
        "name": runtime.name,
        "versions": [runtime.version],
        "platform": "onnx_onnxv1",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *card["input_shape"]]}],
        "outputs": [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "class_index", "datatype": "INT64", "shape": [-1]},
            {"name": "label", "datatype": "BYTES", "shape": [-1]},
        ],
    }


@router.get("/models/{model}", response_model=V2ModelMetadata, responses=ERRORS, summary="Model metadata")
async def model_metadata(model: str, runtime: RuntimeDep) -> Response:
    resolve(runtime, model)
    return json_response(_metadata(runtime))


@router.get("/models/{model}/versions/{version}", response_model=V2ModelMetadata, responses=ERRORS,
            summary="Model metadata (one version)")  # fmt: skip
async def version_metadata(model: str, version: str, runtime: RuntimeDep) -> Response:
    resolve(runtime, model, version)
    return json_response(_metadata(runtime))


@router.get("/models/{model}/ready", response_model=V2ModelReady, responses=ERRORS, summary="Model readiness")
async def model_ready(model: str, request: Request, runtime: RuntimeDep) -> Response:
    resolve(runtime, model)
    ready_or_503(request)
    return json_response({"name": runtime.name, "ready": True})


@router.get("/models/{model}/versions/{version}/ready", response_model=V2ModelReady, responses=ERRORS,
            summary="Model readiness (one version)")  # fmt: skip
async def version_ready(model: str, version: str, request: Request, runtime: RuntimeDep) -> Response:
    resolve(runtime, model, version)
    ready_or_503(request)
    return json_response({"name": runtime.name, "ready": True})


INFER_DOC = {
    "response_model": V2InferResponse,
    "responses": ERRORS
    | {
        413: {"model": V2Error, "description": "the body is larger than BNSERVE_MAX_BODY_BYTES"},
        415: {"model": V2Error, "description": "an unsupported Content-Encoding"},
    },
    "description": "JSON, or the binary tensor data extension: a JSON header of `Inference-Header-Content-Length` "
    "bytes followed by the raw little-endian input tensor (its `parameters.binary_data_size`). Ask for binary "
    "outputs with `parameters.binary_data_output` or an output's `parameters.binary_data`.",
    "openapi_extra": json_body(V2InferRequest),
}


async def _infer(request: Request, runtime: ModelRuntime, settings: Settings) -> Response:
    h = request.headers
    s = settings
    encoded = v2_infer(runtime, await request.body(), h.get("inference-header-content-length"),
                       h.get("content-encoding"), s.max_body_bytes, s.max_batch_size, s.max_json_depth)  # fmt: skip
    return Response(encoded.body, media_type=encoded.media_type, headers=encoded.headers)


@router.post("/models/{model}/infer", summary="Inference", **INFER_DOC)  # type: ignore[arg-type]
async def infer(model: str, request: Request, runtime: RuntimeDep, settings: SettingsDep) -> Response:
    resolve(runtime, model)
    return await _infer(request, runtime, settings)


@router.post("/models/{model}/versions/{version}/infer", summary="Inference (one version)", **INFER_DOC)  # type: ignore[arg-type]
async def infer_version(model: str, version: str, request: Request, runtime: RuntimeDep,
                        settings: SettingsDep) -> Response:  # fmt: skip
    resolve(runtime, model, version)
    return await _infer(request, runtime, settings)
