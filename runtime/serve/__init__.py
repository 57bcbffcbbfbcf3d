"""edgeinfer.serve: the HTTP server (`edgeinfer serve`), an ASGI app on uvicorn; needs `edgeinfer[serve]`."""

from .app import ServeConfig, create_app

__all__ = ["ServeConfig", "create_app"]
