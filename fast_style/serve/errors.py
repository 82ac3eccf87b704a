"""Errors of the API: one JSON shape, ``{"error": message, "detail": detail}``."""

from __future__ import annotations

from typing import Any

from fastapi.responses import JSONResponse


class ApiError(Exception):
    """An error answered as JSON ``{"error": message, "detail": detail}`` with ``status``."""

    def __init__(self, status: int, message: str, detail: Any = None):
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


def error_response(status: int, message: str, detail: Any = None, **headers: str) -> JSONResponse:
    """The JSON body of every error."""
    return JSONResponse({"error": message, "detail": detail}, status_code=status, headers=headers)


def human_size(n: int) -> str:
    """Bytes as a short readable size."""
    return f"{n / 2**20:.1f} MB" if n >= 2**20 else f"{n / 1024:.0f} KB" if n >= 1024 else f"{n} B"
