"""The REST server and the web page: ``create_app(detector, settings)`` -> a FastAPI app
(``src/serve.py`` runs it with uvicorn). See docs/serving.md."""

from frcnn.serving.app import create_app
from frcnn.serving.settings import ServeSettings

__all__ = ["ServeSettings", "create_app"]
