"""GET /model: the model card and the input/output schema."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import RuntimeDep, json_response
from service.schemas import ModelInfo

router = APIRouter(tags=["model"])


@router.get("/model", response_model=ModelInfo, summary="The model card and its input/output schema")
async def model_info(runtime: RuntimeDep) -> Response:
    card = runtime.card
    return json_response(
        {
            "name": runtime.name,
            "model_version": runtime.version,
            "sha256": runtime.sha256,
            "feature_names": card["feature_names"],
            "class_names": card["class_names"],
            "input_shape": card["input_shape"],
            "inputs": card["inputs"],
            "outputs": card["outputs"],
            "card": card,
        }
    )
