"""The framework's ceiling on this machine: FastAPI answering a constant JSON without reading the body.

Served by the same uvicorn (httptools, uvloop, no access log) as bnserve:
    python -m uvicorn benchmarks.bare_app:app --host 127.0.0.1 --port P --no-access-log
"""

from fastapi import FastAPI
from fastapi.responses import Response

app = FastAPI()
BODY = b'{"label":"benign","class_index":1,"probabilities":{"malignant":0.01,"benign":0.99},"model_version":"0"}'


@app.post("/predict")
async def predict() -> Response:
    return Response(BODY, media_type="application/json")
