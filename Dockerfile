# bnserve runtime image: onnxruntime + FastAPI serving one folded ONNX file. No torch.
#
#   make model                          # writes artifacts/model.onnx (the image carries it)
#   docker build -t bnserve:latest .    # or: podman build --format docker -t bnserve:latest .
#   docker run --rm -p 8000:8000 bnserve:latest
#
# Serve another model by mounting it over the default one (readable by uid 10001; export writes 0644):
#   docker run --rm -p 8000:8000 -v "$PWD/my.onnx:/models/model.onnx:ro" bnserve:latest

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore

# The user the service runs as: no home, no shell, no write access to code or model.
RUN groupadd --system --gid 10001 bnserve \
    && useradd --system --uid 10001 --gid bnserve --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin bnserve

WORKDIR /src

# Dependencies first, pinned by constraints.txt: this layer is rebuilt only when
# pyproject.toml or constraints.txt change, not on every code edit. The list is the
# [project] dependencies of pyproject.toml (no extras: torch, onnx and scikit-learn
# are for training and export only).
COPY pyproject.toml constraints.txt ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > requirements.txt \
    && pip install --no-cache-dir -c constraints.txt -r requirements.txt

# The package itself. setuptools packages service*, model* and export*
# ([tool.setuptools.packages.find]) and pyproject.toml names README.md as the
# readme, so all of them are needed to build; only service/ is imported at run time.
COPY README.md ./
COPY service/ service/
COPY model/ model/
COPY export/ export/
RUN pip install --no-cache-dir -c constraints.txt .
WORKDIR /app
# outside the source tree: the installed package must import, and without torch
RUN ! pip show torch > /dev/null 2>&1 \
    && python -c "import sys, service; assert 'torch' not in sys.modules" \
    && rm -rf /src

COPY artifacts/model.onnx /models/model.onnx
# readable by the service's user whatever the mode of the file it was built from
RUN chmod 0444 /models/model.onnx

ENV BNSERVE_MODEL_PATH=/models/model.onnx \
    BNSERVE_HOST=0.0.0.0 \
    BNSERVE_PORT=8000

USER 10001:10001
EXPOSE 8000

# Healthy once the model is loaded and warmed up (/readyz answers 200; 503 or no
# answer raises, so the exit status is 1). Slim images have no curl: use urllib.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:' + os.environ.get('BNSERVE_PORT', '8000') + '/readyz', timeout=2)"]

# Exec form: Python is PID 1 and gets SIGTERM; uvicorn shuts down gracefully on it.
# No flags, so BNSERVE_* variables (docker run -e ...) decide everything.
CMD ["python", "-m", "service"]
