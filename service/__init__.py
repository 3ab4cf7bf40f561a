"""bnserve's inference service: onnxruntime + FastAPI over one folded ONNX file.

Importing this package never imports torch.
"""

from service._version import __version__
from service.app import create_app
from service.config import Settings

__all__ = ["Settings", "__version__", "create_app"]
