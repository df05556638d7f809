"""The one error shape every response uses: ``{"error": {"code": ..., "message": ...}}``."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class ServiceError(Exception):
    """An error with its HTTP status and stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


_HTTP_CODES = {400: "bad_request", 404: "not_found", 405: "method_not_allowed", 413: "body_too_large", 415: "unsupported_media_type"}


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(request: Request, error: ServiceError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, error: StarletteHTTPException) -> JSONResponse:
        return error_response(error.status_code, _HTTP_CODES.get(error.status_code, "http_error"), str(error.detail),
                              getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, error: RequestValidationError) -> JSONResponse:
        details = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in error.errors())
        return error_response(422, "invalid_request", details or "invalid request")

    @app.exception_handler(Exception)
    async def _internal(request: Request, error: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal", "internal server error")


def responses(*statuses: int) -> dict[int | str, dict]:
    """OpenAPI ``responses=`` entries for the error statuses a route can give."""
    described = {400: "Malformed request", 401: "Missing or wrong X-API-Key (unauthorized)",
                 404: "Unknown map (unknown_map) or session (unknown_session)", 409: "Conflict",
                 413: "Body (body_too_large) or image (image_too_large) too large",
                 415: "Body is not image/jpeg, image/png or multipart/form-data (unsupported_media_type)",
                 422: "Undecodable image (bad_image) or invalid parameters (invalid_request)",
                 503: "Not ready (not_ready) or busy (overloaded, Retry-After set)",
                 504: "Localisation took longer than request_timeout_seconds (timeout)"}
    return {status: {"model": ErrorResponse, "description": described.get(status, "Error")} for status in statuses}
