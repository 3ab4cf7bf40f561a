"""Every request and response body, in one place.

Request bodies are validated by pydantic straight from the raw bytes
(`TypeAdapter.validate_json`, parsed in Rust), which is both strict (no "1.5"
strings, no booleans, no NaN or infinities) and faster than FastAPI's
parse-then-validate path.
"""

from __future__ import annotations

from typing import Annotated, Any, Union

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Strict, Tag, TypeAdapter
from typing_extensions import TypeAliasType

# A JSON number that is finite; ints are accepted, strings and booleans are not.
Number = Annotated[float, Strict(), Field(allow_inf_nan=False)]

FEATURES_HELP = (
    "expected a list of numbers in model order, an object mapping every feature name to a number, "
    "or (for an image model) a nested list such as 8x8"
)


def _features_form(value: Any) -> str | None:
    if isinstance(value, dict):
        return "named"
    if isinstance(value, list):
        if value and isinstance(value[0], list):
            return "image" if value[0] and isinstance(value[0][0], list) else "rows"
        return "flat"
    return None


# fail_fast: a list stops at its first bad element, so a 1 MiB body of bad values costs one error,
# not 250,000 of them (measured before: a 25 MB answer after 2.5 s of blocked event loop).
Numbers = Annotated[list[Number], Field(fail_fast=True)]
Features = Annotated[
    Annotated[Numbers, Tag("flat")]
    | Annotated[list[Numbers], Tag("rows")]
    | Annotated[list[list[Numbers]], Tag("image")]
    | Annotated[dict[str, Number], Tag("named")],
    Discriminator(_features_form, custom_error_type="features_type", custom_error_message=FEATURES_HELP),
]
FEATURE_FORMS = ("flat", "rows", "image", "named")  # union tags, dropped from error locations


class PredictRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    features: Features = Field(description="one sample: raw (unscaled) values, in model order or by feature name")


class BatchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    instances: list[Features] = Field(
        description="samples, each as /predict's `features`; at most BNSERVE_MAX_BATCH_SIZE", fail_fast=True
    )


class FeatureZ(BaseModel):
    name: str
    z: float = Field(description="(x - running_mean) / sqrt(running_var + eps) of the input BN layer")


class LayerEnergy(BaseModel):
    name: str
    mean_sq_z: float = Field(description="mean z**2 over the layer's channels; about 1 for training-like data")


class DriftComponents(BaseModel):
    layers: float = Field(description="the BN layers' energy statistic, over its calibration 90th percentile")
    features: float = Field(description="the most extreme input feature's |z| statistic, likewise")


class DriftReport(BaseModel):
    score: float = Field(description="out-of-distribution score combining every BN layer (README: Covariate shift)")
    p_value: float = Field(description="share of the calibration split scoring at least as high (empirical)")
    flagged: bool = Field(description="p_value <= alpha")
    alpha: float = Field(description="the false-positive rate the flag is set for (BNSERVE_DRIFT_ALPHA)")
    components: DriftComponents = Field(description="score = max(layers, features)")
    layers: list[LayerEnergy]
    top_features: list[FeatureZ] = Field(description="every input feature, by |z|, largest first")


class Prediction(BaseModel):
    label: str = Field(description="the most probable class")
    class_index: int = Field(description="index of `label` in the model's class_names")
    probabilities: dict[str, float] = Field(description="class name -> probability")
    model_version: str = Field(description="start of the model file's sha256")
    drift: DriftReport | None = Field(None, description="with ?drift=true: how unlike the training data it is")


class BatchPrediction(BaseModel):
    predictions: list[Prediction]
    model_version: str


class BNRecalibration(BaseModel):
    method: str
    count: int = Field(description="values per channel the exact statistics were computed over")
    moving_running_mean: list[float] = Field(description="what the moving average held")
    moving_running_var: list[float]
    mean_gap_sd_max: float = Field(description="largest |moving - exact| mean over channels, in exact SDs")
    mean_gap_sd_mean: float
    var_ratio_min: float = Field(description="smallest (moving var + eps) / (exact var + eps) over channels")
    var_ratio_max: float


class BNLayer(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    type: str
    placement: str = Field(description="input, before_activation or after_activation")
    fold: str = Field(description="backward (into the layer before), forward (into the layer after) or affine")
    folded_into: str
    num_features: int
    eps: float
    momentum: float | None = Field(description="PyTorch convention; null = cumulative average")
    num_batches_tracked: int | None
    running_mean: list[float]
    running_var: list[float] = Field(description="moving average of unbiased batch variances")
    gamma: list[float] = Field(description="the learned scale (PyTorch weight)")
    beta: list[float] = Field(description="the learned shift (PyTorch bias)")
    feature_names: list[str] | None = Field(None, description="input layer only: the feature of each channel")
    conventions: dict[str, str] | None = Field(None, description="GET /bn-stats/{layer} only: what the fields mean")
    recalibration: BNRecalibration | None = Field(
        None, description="trained with --recalibrate-bn: the moving averages the exact statistics replaced"
    )


class BNStats(BaseModel):
    model_version: str
    conventions: dict[str, str]
    layers: list[BNLayer]


class ModelInfo(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str
    model_version: str
    sha256: str
    feature_names: list[str]
    class_names: list[str]
    input_shape: list[int]
    card: dict[str, Any]


class Health(BaseModel):
    status: str
    model_version: str | None = None


class ReloadAnswer(BaseModel):
    name: str
    model_version: str
    previous_version: str | None


class ErrorBody(BaseModel):
    detail: str = Field(description="what was wrong, naming the field and what was expected")
    errors: list[dict[str, Any]] | None = Field(None, description="one entry per problem, when there are several")


# ----------------------------------------------------------------- Open Inference Protocol v2

NestedNumbers = TypeAliasType(  # type: ignore[misc]
    "NestedNumbers",
    Annotated[list[Union[Number, "NestedNumbers"]], Field(fail_fast=True)],  # type: ignore[misc]
)


class V2InputTensor(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="the model's input: `input`")
    shape: list[Annotated[int, Strict()]] = Field(description="[N, *input_shape]; N is the batch")
    datatype: str = Field(description="FP32, FP64, FP16 or an integer type (coerced to FP32)")
    parameters: dict[str, Any] | None = Field(None, description="`binary_data_size` with the binary extension")
    data: NestedNumbers | None = Field(None, description="row-major values, flat or nested")


class V2RequestedOutput(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(description="probabilities, class_index or label")
    parameters: dict[str, Any] | None = Field(None, description="`binary_data: true` for the binary extension")


class V2InferRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = Field(None, description="echoed back")
    parameters: dict[str, Any] | None = Field(None, description="`binary_data_output: true` for binary outputs")
    inputs: list[V2InputTensor] = Field(min_length=1)
    outputs: list[V2RequestedOutput] | None = Field(None, description="the outputs to return (default: all)")


class V2OutputTensor(BaseModel):
    name: str
    datatype: str
    shape: list[int]
    data: list[Any] | None = None
    parameters: dict[str, Any] | None = None


class V2InferResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = None
    outputs: list[V2OutputTensor]


class V2TensorMetadata(BaseModel):
    name: str
    datatype: str
    shape: list[int] = Field(description="-1 for the batch axis")


class V2ModelMetadata(BaseModel):
    name: str
    versions: list[str]
    platform: str
    inputs: list[V2TensorMetadata]
    outputs: list[V2TensorMetadata]


class V2ServerMetadata(BaseModel):
    name: str
    version: str
    extensions: list[str]


class V2Live(BaseModel):
    live: bool


class V2Ready(BaseModel):
    ready: bool


class V2ModelReady(BaseModel):
    name: str
    ready: bool


class V2Error(BaseModel):
    error: str


# ----------------------------------------------------------------- KServe V1


class DriftWindowInfo(BaseModel):
    count: int = Field(description="samples in the window")
    start: str = Field(description="when the window opened (UTC)")
    seconds: float | None = Field(description="the window's length in seconds (BNSERVE_DRIFT_WINDOW_SECONDS)")
    samples: int | None = Field(description="the most samples a worker's window holds (BNSERVE_DRIFT_WINDOW_SAMPLES)")
    workers: int = Field(description="processes whose samples the window adds up")
    requests_per_sample: int = Field(description="the window takes one answered request in this many")


class DriftLayer(BaseModel):
    name: str
    channels: int
    mean_shift: float = Field(description="root mean square over channels of the window's mean z (in running SDs)")
    variance_ratio: float = Field(description="mean over channels of the window's variance / running_var")
    score: float = Field(description="mean over channels of the window's mean z**2 (1 for training-like data)")


class DriftFeature(BaseModel):
    name: str
    mean_shift: float = Field(description="the window's mean z of this input feature (in running SDs)")
    variance_ratio: float = Field(description="the window's variance of the feature / running_var")


class DriftWindow(BaseModel):
    window: DriftWindowInfo
    layers: list[DriftLayer]
    top_features: list[DriftFeature] = Field(description="input features by |mean_shift|, largest first")


class V1Model(BaseModel):
    name: str
    ready: bool


class V1Models(BaseModel):
    models: list[str]


class V1PredictResponse(BaseModel):
    predictions: list[Prediction]


PREDICT_REQUEST = TypeAdapter(PredictRequest)
BATCH_REQUEST = TypeAdapter(BatchRequest)
V2_INFER_REQUEST = TypeAdapter(V2InferRequest)
