"""GET /bn-stats and GET /bn-stats/{layer}: every BN layer's stored state."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.deps import RuntimeDep, json_response
from service.errors import NotFound
from service.schemas import BNLayer, BNStats, ErrorBody

router = APIRouter(prefix="/bn-stats", tags=["bn-stats"])


@router.get(
    "",
    response_model=BNStats,
    summary="Every BatchNorm layer's stored state",
    description="Running mean and variance, gamma (scale), beta (shift), eps, momentum, num_batches_tracked, "
    "placement and what each layer was folded into; the input layer names the feature of each channel.",
)
async def bn_stats(runtime: RuntimeDep) -> Response:
    return json_response(
        {
            "model_version": runtime.version,
            "conventions": runtime.card.get("conventions", {}),
            "layers": runtime.bn_layers,
        }
    )


@router.get(
    "/{layer}",
    response_model=BNLayer,
    responses={404: {"model": ErrorBody, "description": "no BN layer of that name"}},
    summary="One BatchNorm layer's stored state",
)
async def bn_layer(layer: str, runtime: RuntimeDep) -> Response:
    for state in runtime.bn_layers:
        if state["name"] == layer:
            return json_response({**state, "conventions": runtime.card.get("conventions", {})})
    known = ", ".join(s["name"] for s in runtime.bn_layers)
    raise NotFound(f"layer: no BN layer named {layer!r}; the model's BN layers are {known}")
