"""The peer: KServe's Python model server serving the same ONNX file through a minimal kserve.Model.

Runs in its own venv (.bench/kserve, `pip install kserve onnxruntime`), never imported by bnserve:
    .bench/kserve/bin/python benchmarks/kserve_peer.py --model-path artifacts/model.onnx --name NAME --port P

KServe's REST server hard-codes host 0.0.0.0; this script binds it to 127.0.0.1 (uvicorn.Config
is wrapped) and turns gRPC off, so nothing listens beyond loopback. The model runs onnxruntime with
one intra-op thread, as bnserve does, and `predict` is async (no threadpool hop), as bnserve's is.
"""

from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import onnxruntime as ort


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model-path", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--port", type=int, required=True)
    args, _ = p.parse_known_args()
    sys.argv = sys.argv[:1]  # kserve parses sys.argv at import

    import kserve
    import kserve.protocol.rest.server as rest
    import uvicorn

    config = uvicorn.Config

    def loopback_config(*a, **kw):  # type: ignore[no-untyped-def]
        kw["host"] = "127.0.0.1"
        kw["access_log"] = False
        return config(*a, **kw)

    rest.uvicorn.Config = loopback_config  # type: ignore[misc]

    class OnnxModel(kserve.Model):  # type: ignore[misc]
        def __init__(self, name: str, path: str) -> None:
            super().__init__(name)
            self.path = path
            self.load()

        def load(self) -> bool:
            options = ort.SessionOptions()
            options.intra_op_num_threads = 1
            options.inter_op_num_threads = 1
            self.session = ort.InferenceSession(self.path, sess_options=options, providers=["CPUExecutionProvider"])
            self.ready = True
            return True

        async def predict(self, payload, headers=None, response_headers=None):  # type: ignore[no-untyped-def]
            x = np.asarray(payload["instances"], dtype=np.float32)
            (probs,) = self.session.run(["probabilities"], {"input": x})
            return {"predictions": probs.tolist()}

    logging.getLogger("uvicorn.access").disabled = True
    kserve.ModelServer(http_port=args.port, enable_grpc=False, workers=1).start([OnnxModel(args.name, args.model_path)])


if __name__ == "__main__":
    main()
