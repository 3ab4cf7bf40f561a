"""GET /ui: a page that draws every BN layer's stored statistics, a prediction and the drift
monitor, from this service's own API. Its script and Chart.js (vendored, pinned, MIT licence
beside it) come from the package: the page needs no network beyond the service.
Off with BNSERVE_UI=false."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

UI_DIR = Path(__file__).resolve().parent.parent / "ui"

router = APIRouter(tags=["ui"])


@router.get("/ui", response_class=HTMLResponse, summary="The page: BN statistics, a prediction, the drift monitor",
            responses={200: {"content": {"text/html": {}}, "description": "the page"}})  # fmt: skip
async def page() -> HTMLResponse:
    return HTMLResponse((UI_DIR / "index.html").read_text(encoding="utf-8"))


def static_files() -> StaticFiles:
    return StaticFiles(directory=UI_DIR)
