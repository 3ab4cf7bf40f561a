"""The loaded model: one onnxruntime session, its model card and BN layers' state.

No FastAPI import here. `ModelRuntime.load` validates the file completely and
raises `ModelLoadError` with one line a person can act on; `InputSpec` turns a
validated request's features into the float32 row the graph takes, naming the
field when a value does not fit.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import struct
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from service.answers import AnswerEncoder
from service.drift import DriftSpec, Window
from service.errors import BadRequest, InvalidInput, ModelLoadError
from service.onnx_ops import WireError, graph_bytes, op_types, without_outputs

logger = logging.getLogger(__name__)

CARD_KEY = "bnserve.card"
BN_KEY = "bnserve.bn_layers"
CARD_FORMAT = "bnserve.card/1"
FLOAT32_MAX = float(np.finfo(np.float32).max)
REQUIRED_CARD_FIELDS = ("name", "feature_names", "class_names", "input_shape", "inputs", "outputs")


def _loc(field: str, key: int | str) -> str:
    return f"{field}[{key}]" if isinstance(key, int) else f"{field}[{json.dumps(key)}]"


class InputSpec:
    """What one sample must look like: its feature names (model order) and shape."""

    def __init__(self, feature_names: Sequence[str], input_shape: Sequence[int]) -> None:
        self.feature_names = tuple(feature_names)
        self.input_shape = tuple(int(d) for d in input_shape)
        self.size = math.prod(self.input_shape)
        self.index = {n: i for i, n in enumerate(self.feature_names)}
        if len(self.feature_names) != self.size:
            raise ValueError(f"{len(self.feature_names)} feature names for an input of shape {self.input_shape}")
        # Nested forms accepted for an image: (C, H, W), and (H, W) when C is 1.
        self.nested_shapes = [self.input_shape] if len(self.input_shape) > 1 else []
        if len(self.input_shape) == 3 and self.input_shape[0] == 1:
            self.nested_shapes.append(self.input_shape[1:])

    def _describe(self) -> str:
        flat = f"a list of {self.size} numbers in model order or an object of all {self.size} feature names"
        if not self.nested_shapes:
            return flat
        shapes = " or ".join("x".join(map(str, s)) for s in self.nested_shapes)
        return f"{flat}, or a nested list of shape {shapes}"

    def row(self, features: Sequence[Any] | Mapping[str, float], field: str = "features") -> np.ndarray:
        """One sample as a flat float32 array of `size` values, in model order."""
        if isinstance(features, Mapping):
            missing = [n for n in self.feature_names if n not in features]
            unknown = [k for k in features if k not in self.index]
            if unknown:
                raise InvalidInput(
                    f"{field}: unknown feature name(s) {', '.join(map(json.dumps, unknown[:5]))}"
                    f"{' and more' if len(unknown) > 5 else ''}; the model's names are listed by GET /model"
                )
            if missing:
                raise InvalidInput(
                    f"{field}: missing {len(missing)} of {self.size} features: "
                    f"{', '.join(map(json.dumps, missing[:5]))}{' and more' if len(missing) > 5 else ''}"
                )
            values = [features[n] for n in self.feature_names]
            _check_float32(values, field, self.feature_names)
            return np.array(values, dtype=np.float32)
        if features and isinstance(features[0], list):
            if not self.nested_shapes:
                raise InvalidInput(f"{field}: expected a flat list of {self.size} numbers, got a nested list")
            try:
                arr = np.asarray(features, dtype=np.float64)
            except ValueError:
                raise InvalidInput(f"{field}: expected {self._describe()}; got a ragged nested list") from None
            if arr.shape not in self.nested_shapes:
                got = "x".join(map(str, arr.shape))
                raise InvalidInput(f"{field}: expected {self._describe()}; got shape {got}")
            flat = arr.reshape(-1)
            _check_float32(flat.tolist(), field)
            return flat.astype(np.float32)
        if len(features) != self.size:
            raise InvalidInput(f"{field}: expected {self._describe()}; got {len(features)} values")
        _check_float32(features, field)
        return np.array(features, dtype=np.float32)

    def plain_rows(self, value: Any, batch: bool) -> np.ndarray | None:
        """Numbers in nested lists (body.numbers_only's value) as (n, size) float32 rows: one sample,
        or with `batch` a list of them, each flat or in a nested shape. None when they do not form
        such rows or a value does not fit in float32: the schema's path then words the error."""
        if value is None:
            return None
        size = self.size
        try:
            if type(value) is np.ndarray:
                arr = value  # flat rows, read by simdjson
            elif batch and type(value) is list and all(type(r) is list and len(r) == size for r in value):
                arr = _packed(value, size)  # flat rows, the common batch
            else:
                arr = np.array(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError, struct.error):  # ragged, or a list or object among the numbers
            return None
        shape = arr.shape[1:] if batch else arr.shape
        if (shape != (size,) and shape not in self.nested_shapes) or not arr.size:
            return None
        # one sample as a flat list: Python's max over 30 numbers costs less than numpy's over an array
        largest = max(map(abs, value)) if not batch and arr.ndim == 1 else np.abs(arr).max()
        if largest > FLOAT32_MAX:
            return None
        return arr.astype(np.float32).reshape(-1, size)

    def rows(self, instances: Sequence[Any]) -> np.ndarray:
        """Several validated samples as a (n, size) float32 array. When they are plain rows (flat
        lists of the right length, or all of one nested shape), one array conversion serves them
        all (`plain_rows`); otherwise, and for the error messages, each goes through `row`."""
        arr = self.plain_rows(instances, batch=True)
        if arr is not None:
            return arr
        return np.stack([self.row(f, f"instances[{i}]") for i, f in enumerate(instances)])


def _packed(rows: Sequence[Sequence[Any]], size: int) -> np.ndarray:
    """Rows of `size` numbers as a (n, size) float64 array. struct packs them as C doubles: 35 us for
    64 x 30 here, against 44 us for np.fromiter and 79 us for np.array (which first works out the
    nesting). Raises struct.error for a value that is not a number."""
    packed = struct.pack(f"{len(rows) * size}d", *itertools.chain.from_iterable(rows))
    return np.frombuffer(packed, np.float64).reshape(len(rows), size)


def _check_float32(values: Sequence[float], field: str, names: Sequence[str] | None = None) -> None:
    """JSON numbers are float64 and the graph takes float32. Non-finite values were rejected by
    the schema; a finite float64 may still overflow float32."""
    if values and max(map(abs, values)) > FLOAT32_MAX:
        i = next(i for i, v in enumerate(values) if abs(v) > FLOAT32_MAX)
        raise InvalidInput(
            f"{_loc(field, names[i] if names else i)}: {values[i]:g} does not fit in float32 (|x| <= {FLOAT32_MAX:.4g})"
        )


class _Bound:
    """`rows` samples through an IOBinding whose input and output buffers are bound once. Measured
    on this machine with other work between the calls, as a server runs them: 15 us for one sample
    against 21 us by session.run, which converts the input and allocates the outputs each time, and
    32 against 42 us for 64 samples."""

    def __init__(self, session: ort.InferenceSession, input_shape: tuple[int, ...], outputs: Sequence[str],
                 rows: int) -> None:  # fmt: skip
        self.session, self.outputs, self.rows = session, list(outputs), rows
        shapes = {o.name: [rows, *o.shape[1:]] for o in session.get_outputs()}
        self.lock = threading.Lock()  # the buffers are shared: a second thread takes session.run
        if not all(isinstance(d, int) for name in self.outputs for d in shapes[name]):
            self.lock.acquire()  # an output of another symbolic size: session.run always
            return
        self.x = np.zeros((rows, *input_shape), np.float32)
        self.out = [np.zeros(shapes[name], np.float32) for name in self.outputs]
        self.binding = session.io_binding()
        self.binding.bind_cpu_input("input", self.x)
        for name, buffer in zip(self.outputs, self.out, strict=True):
            self.binding.bind_output(name, "cpu", 0, np.float32, list(buffer.shape), buffer.ctypes.data)

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        if not self.lock.acquire(blocking=False):
            return list(self.session.run(self.outputs, {"input": x}))
        try:
            self.x[...] = x
            self.session.run_with_iobinding(self.binding)
            return [buffer.copy() for buffer in self.out]
        finally:
            self.lock.release()


class _Runs:
    """How one graph is run for these outputs: one sample through buffers bound for one; a batch of
    n through buffers bound for n once n comes twice in a row (a client with a fixed batch size;
    varying sizes keep to session.run, so they never pay for a binding), up to BOUND_ROWS."""

    BOUND_ROWS = 256  # the bound buffers of a batch are kept: at most this many rows of them

    def __init__(self, session: ort.InferenceSession, input_shape: tuple[int, ...], outputs: Sequence[str]) -> None:
        self.session, self.input_shape, self.outputs = session, input_shape, list(outputs)
        self.one = _Bound(session, input_shape, outputs, 1)
        self.batch: _Bound | None = None
        self.last = 0

    def run(self, x: np.ndarray) -> list[np.ndarray]:
        n = len(x)
        if n == 1:
            return self.one.run(x)
        batch = self.batch
        if batch is not None and batch.rows == n:
            return batch.run(x)
        if n == self.last and n <= self.BOUND_ROWS:
            self.batch = _Bound(self.session, self.input_shape, self.outputs, n)
            return self.batch.run(x)
        self.last = n
        return list(self.session.run(self.outputs, {"input": x}))


@dataclass(frozen=True)
class ModelRuntime:
    path: Path
    sha256: str
    card: dict[str, Any]
    bn_layers: list[dict[str, Any]]
    session: ort.InferenceSession
    spec: InputSpec
    class_names: tuple[str, ...]
    observer: Callable[[float, int], None] | None = None  # told (seconds, samples) after each model run
    drift: DriftSpec | None = None  # the covariate-shift monitor's calibration (None: an older file)
    drift_alpha: float = 0.01  # flag a sample when its drift p-value is at most this
    drift_window: Window | None = None  # the drift window: it takes the samples of the requests it says are due
    lean: ort.InferenceSession | None = None  # the graph without its drift outputs, for runs that need none

    @cached_property
    def version(self) -> str:
        """The model's version: the start of the file's sha256."""
        return self.sha256[:12]

    @property
    def name(self) -> str:
        return str(self.card["name"])

    @classmethod
    def load(cls, path: Path, *, intra_op_threads: int = 1, expected_sha256: str | None = None) -> ModelRuntime:
        """Open the file and check everything that can be checked without running it.
        `expected_sha256` (BNSERVE_MODEL_SHA256) pins the file: the full hex digest or its start."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: no such model file (run `make model`, or set BNSERVE_MODEL_PATH)") from None
        except OSError as e:
            raise ModelLoadError(f"{path}: cannot read the model file: {e.strerror or e}") from None
        sha256 = hashlib.sha256(data).hexdigest()
        if expected_sha256 and not sha256.startswith(expected_sha256.lower()):
            raise ModelLoadError(
                f"{path}: sha256 {sha256} does not match BNSERVE_MODEL_SHA256={expected_sha256}; refusing to load it"
            )
        try:
            ops = op_types(data)
            graph_sha256 = hashlib.sha256(graph_bytes(data)).hexdigest()
        except (WireError, RecursionError):
            raise ModelLoadError(f"{path}: not an ONNX file (it does not parse as an ONNX model)") from None
        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        try:
            session = ort.InferenceSession(data, sess_options=options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = (str(e).strip().splitlines() or [""])[0][:300]
            raise ModelLoadError(f"{path}: onnxruntime cannot load it as an ONNX model: {first}") from None
        meta = session.get_modelmeta().custom_metadata_map
        if CARD_KEY not in meta:
            raise ModelLoadError(
                f"{path}: the ONNX file has no bnserve model card ({CARD_KEY!r} in metadata_props); "
                "export it with `python -m export CHECKPOINT`"
            )
        try:
            card = json.loads(meta[CARD_KEY])
            bn_doc = json.loads(meta.get(BN_KEY, "null"))
        except json.JSONDecodeError as e:
            raise ModelLoadError(f"{path}: the model card is not valid JSON: {e}") from None
        if not isinstance(card, dict) or card.get("format") != CARD_FORMAT:
            raise ModelLoadError(f"{path}: the model card is not in format {CARD_FORMAT!r}")
        missing = [k for k in REQUIRED_CARD_FIELDS if k not in card]
        if missing:
            raise ModelLoadError(f"{path}: the model card lacks {', '.join(missing)}")
        if card.get("graph_sha256") != graph_sha256:
            raise ModelLoadError(
                f"{path}: the graph does not match the model card's graph_sha256 "
                "(altered after export, or exported by an older bnserve); export it again"
            )
        if ops.get("BatchNormalization", 0) or not card.get("folded", False):
            raise ModelLoadError(
                f"{path}: the graph still has {ops.get('BatchNormalization', 0)} BatchNormalization node(s) "
                "(a --no-fold reference graph?); serve the folded export of `python -m export CHECKPOINT`"
            )
        if not isinstance(bn_doc, dict) or not isinstance(bn_doc.get("layers"), list):
            raise ModelLoadError(f"{path}: the metadata has no BN layer state ({BN_KEY!r})")
        try:
            spec = InputSpec(card["feature_names"], card["input_shape"])
        except (TypeError, ValueError) as e:
            raise ModelLoadError(f"{path}: the model card's input description is inconsistent: {e}") from None
        graph_inputs = {i.name: i.shape for i in session.get_inputs()}
        graph_outputs = {o.name for o in session.get_outputs()}
        if set(graph_inputs) != {"input"} or not {"probabilities", "logits"} <= graph_outputs:
            raise ModelLoadError(
                f"{path}: the graph's tensors ({sorted(graph_inputs)} -> {sorted(graph_outputs)}) "
                "are not the bnserve interface (input -> logits, probabilities)"
            )
        layers = bn_doc["layers"]
        if not layers or not all(isinstance(x, dict) and "name" in x for x in layers):
            raise ModelLoadError(f"{path}: the metadata's BN layer list is empty or malformed")
        classes = session.get_outputs()[[o.name for o in session.get_outputs()].index("probabilities")].shape[-1]
        if classes != len(card["class_names"]):
            raise ModelLoadError(f"{path}: the graph has {classes} outputs, the card names {len(card['class_names'])}")
        if list(graph_inputs["input"][1:]) != list(spec.input_shape):
            raise ModelLoadError(f"{path}: the graph takes {graph_inputs['input']}, the card says {spec.input_shape}")
        drift, lean = None, None
        if "drift" in card:
            try:
                drift = DriftSpec.from_card(card, layers)
            except (KeyError, TypeError, ValueError, IndexError) as e:
                raise ModelLoadError(
                    f"{path}: the model card's drift section is malformed ({e}); export it again"
                ) from None
            missing_outputs = [o for o in drift.outputs if o not in graph_outputs]
            if missing_outputs:
                raise ModelLoadError(f"{path}: the graph lacks the drift outputs {missing_outputs} its card names")
            lean = ort.InferenceSession(without_outputs(data, drift.outputs), sess_options=options,
                                        providers=["CPUExecutionProvider"])  # fmt: skip
        else:
            logger.warning("%s has no drift calibration (exported with --no-drift, or by an older bnserve): "
                           "drift=true is refused and GET /drift answers 409", path)  # fmt: skip
        runtime = cls(
            path=path,
            drift=drift,
            sha256=sha256,
            card=card,
            bn_layers=bn_doc["layers"],
            session=session,
            lean=lean,
            spec=spec,
            class_names=tuple(str(c) for c in card["class_names"]),
        )
        logger.info(
            "loaded %s: model %s version %s (%d features, %d classes, ops %s)",
            path,
            runtime.name,
            runtime.version,
            spec.size,
            len(runtime.class_names),
            dict(ops),
        )
        return runtime

    def probabilities(self, rows: np.ndarray, where: str = "features") -> np.ndarray:
        """Class probabilities for a (n, size) float array; each row is independent of the others.
        Inputs far outside the training scale can overflow inside the graph: such a row is refused,
        named `where` (or `where[i]` in a batch), rather than answered with NaN."""
        return self.infer(rows, where)[0]

    def infer(self, rows: np.ndarray, where: str = "features", drift: bool = False
              ) -> tuple[np.ndarray, list[dict[str, Any]] | None]:  # fmt: skip
        """Probabilities, and with `drift` each row's drift report. The drift window (when one is
        attached) takes the rows of the requests it says are due, whether or not they asked for drift."""
        spec = self.drift
        if drift and spec is None:
            raise BadRequest(
                f"drift: {self.path.name} has no drift calibration (exported with --no-drift, or by an older "
                "bnserve); export it again"
            )
        x = np.ascontiguousarray(rows, dtype=np.float32).reshape((-1, *self.spec.input_shape))
        window = self.drift_window
        watched = window is not None and window.due()
        taps = spec is not None and (drift or watched)
        started = time.perf_counter()
        outs = (self._tapped_runs if taps else self._runs).run(x)
        if self.observer is not None:
            self.observer(time.perf_counter() - started, len(x))
        probs = outs[0]
        # probabilities in [0, 1] sum to a finite number unless one is not finite: one reduction (and
        # for one row none: a numpy call on two numbers costs more than the Python sum)
        if not math.isfinite(sum(probs[0].tolist()) if len(probs) == 1 else probs.sum()):
            i = int(np.argmin(np.isfinite(probs).all(axis=1)))
            raise InvalidInput(
                f"{where if len(x) == 1 else f'{where}[{i}]'}: the values overflow inside the model (no finite "
                "answer); expected values nearer the training data's scale (GET /bn-stats/input_bn)"
            )
        if not taps or spec is None:
            return probs, None
        flat = x.reshape(len(x), -1)
        if watched and window is not None:
            window.observe(flat, outs[1:])
        return probs, spec.reports(spec.summaries(flat, outs[1:]), self.drift_alpha) if drift else None

    @cached_property
    def _runs(self) -> _Runs:
        """Runs that need no drift outputs: the graph without them (`lean`), which onnxruntime fuses."""
        return _Runs(self.lean or self.session, self.spec.input_shape, ["probabilities"])

    @cached_property
    def _tapped_runs(self) -> _Runs:
        return _Runs(self.session, self.spec.input_shape, self._with_taps)

    @cached_property
    def _with_taps(self) -> list[str]:
        return ["probabilities", *(self.drift.outputs if self.drift else [])]

    def warmup(self, runs: int) -> None:
        """Run the graph on batches of 1 and 8, with the drift outputs and without, so the first
        request pays no first-run cost."""
        try:
            for _ in range(runs):
                for n in (1, 8):
                    for drift in (False, True) if self.drift is not None else (False,):
                        self.infer(np.zeros((n, self.spec.size), np.float32), drift=drift)
        except InvalidInput:
            raise ModelLoadError(f"{self.path}: the graph gives non-finite outputs on a zero input") from None

    def self_test(self) -> None:
        """The readiness gate: the card's golden examples give the answers export recorded (within
        the parity tolerance), and each sample's answer alone equals its answer inside a batch."""
        examples = self.card.get("examples") or []
        if not examples:
            raise ModelLoadError(f"{self.path}: the model card has no golden examples; export it again")
        tolerance = float(self.card.get("parity", {}).get("tolerance", 1e-4))
        try:
            rows = self.spec.rows([e["features"] for e in examples])
            want = np.array([[e["probabilities"][c] for c in self.class_names] for e in examples])
            together = self.probabilities(np.concatenate([rows, rows[::-1]]))[: len(rows)]
            alone_all = [self.probabilities(rows[i : i + 1])[0] for i in range(len(rows))]
        except (KeyError, TypeError, ValueError, InvalidInput) as e:
            raise ModelLoadError(f"{self.path}: the card's golden examples do not fit the model ({e})") from None
        for i, alone in enumerate(alone_all):
            error = float(np.max(np.abs(alone - want[i])))
            if error > tolerance:
                raise ModelLoadError(
                    f"{self.path}: self-test failed: golden example {i} differs from export's answer by {error:.3g} "
                    f"(tolerance {tolerance:g})"
                )
            if not np.allclose(alone, together[i], rtol=1e-6, atol=1e-7):
                raise ModelLoadError(
                    f"{self.path}: self-test failed: golden example {i} alone differs from its answer in a batch"
                )

    @cached_property
    def answers(self) -> AnswerEncoder:
        """Answers from probabilities: as dicts, or as JSON bytes."""
        return AnswerEncoder(self.class_names, self.version)
