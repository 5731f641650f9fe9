"""mpool's HTTP server: OpenAI- and Ollama-compatible routes over a ``Pool``.

    python -m mpool serve --model minilm=/models/all-MiniLM-L6-v2 --model llm=/models/qwen

or, in Python (any ASGI server runs the app)::

    from mpool.server import ServerConfig, create_app
    app = create_app(load_config("models.toml"))

Needs the ``serve`` extra: ``pip install 'mpool[serve]'`` (Starlette, uvicorn,
prometheus_client, python-multipart). docs/serving.md describes the routes.
"""

from __future__ import annotations

from .app import create_app, serve
from .config import Limits, ModelEntry, ServerConfig, load_config

__all__ = ["Limits", "ModelEntry", "ServerConfig", "create_app", "load_config", "serve"]
