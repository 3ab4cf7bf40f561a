"""Prediction answers, as dicts or straight as JSON bytes.

`array` writes a batch's answers without building a dict per answer: the per-class fragments are
made once, orjson writes every probability in one call, and list slicing puts the numbers between
the fragments, so there is no Python-level work per answer. Measured on this machine (2 cores,
AMD EPYC under KVM) for 64 answers of the default MLP: dicts then orjson.dumps 76 to 107 us, this
39 us, for the same bytes (a test compares them byte for byte). For a single answer the dict is
quicker (4.9 against 7.6 us), so `one` builds it; so do answers that carry a drift report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson


class AnswerEncoder:
    """`{"label": ..., "class_index": k, "probabilities": {class: p, ...}, "model_version": ...}` per row
    of probabilities, keys in that order; each probability is the float64 equal to the graph's float32."""

    def __init__(self, class_names: Sequence[str], version: str) -> None:
        self.class_names, self.version = tuple(class_names), version
        names = [orjson.dumps(n) for n in self.class_names]
        self._version = orjson.dumps(version)
        # a row is: head[k], p[0], sep[0], p[1], ..., sep[C-2], p[C-1], tail
        self._heads = [b'{"label":%s,"class_index":%d,"probabilities":{%s:' % (names[k], k, names[0])
                       for k in range(len(names))]  # fmt: skip
        self._seps = [b",%s:" % n for n in names[1:]]
        self._tail = b'},"model_version":' + self._version + b"}"

    def dicts(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """One answer per row of (n, classes) probabilities."""
        names, version = self.class_names, self.version
        # strict=False: ModelRuntime.load checked that the graph has exactly len(class_names) outputs
        return [
            {"label": names[k], "class_index": k, "probabilities": dict(zip(names, p, strict=False)),
             "model_version": version}
            for k, p in zip(probs.argmax(axis=1).tolist(), probs.tolist(), strict=True)
        ]  # fmt: skip

    def one(self, probs: np.ndarray) -> bytes:
        """The JSON answer for a (1, classes) array, as /predict gives it."""
        return orjson.dumps(self.dicts(probs)[0])

    def array(self, probs: np.ndarray) -> bytes:
        """A JSON array of the answers for (n, classes) finite probabilities: `dicts`, serialised."""
        n, c = probs.shape
        if c != len(self.class_names):
            raise ValueError(f"{c} probabilities per row for {len(self.class_names)} classes")
        step = 2 * c + 1
        values = orjson.dumps(probs.ravel().tolist())[1:-1].split(b",")
        heads = self._heads
        parts: list[bytes] = [b""] * (n * step)
        parts[0::step] = [heads[k] for k in probs.argmax(axis=1).tolist()]
        for j in range(c):
            parts[1 + 2 * j :: step] = values[j::c]
            if j + 1 < c:
                parts[2 + 2 * j :: step] = [self._seps[j]] * n
        parts[step - 1 :: step] = [self._tail + b","] * n
        parts[-1] = self._tail
        return b"[" + b"".join(parts) + b"]"

    def batch(self, answers: bytes) -> bytes:
        """/predict/batch's body around a JSON array of answers."""
        return b'{"predictions":' + answers + b',"model_version":' + self._version + b"}"

    @staticmethod
    def v1(answers: bytes) -> bytes:
        """KServe V1 :predict's body around a JSON array of answers."""
        return b'{"predictions":' + answers + b"}"
