"""The web page and JSON API (``fast-style serve``): app, limits, model registry, jobs, page.

Needs the ``serve`` extra (FastAPI, uvicorn, python-multipart).
"""

try:
    import fastapi  # noqa: F401
    import multipart  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the installed extras
    raise ImportError(
        "fast_style.serve needs FastAPI: pip install 'fast_style[serve]'", name=e.name
    ) from e
