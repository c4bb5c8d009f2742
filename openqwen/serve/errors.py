"""Errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}``.

400 for bad input (FastAPI's 422 is turned into a 400 that names the field), 401 for a wrong key, 404
for an unknown model or route, 413 for a body too large, 429 (with ``Retry-After``) when the queue is
full, 503 while draining, 504 past the request deadline, 500 for a bug (logged with its traceback).
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from . import protocol as P

CLIENT_CLOSED = 499
"""nginx's "client closed request": logged, never seen by the (gone) client."""


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = dict(headers or {})

    def body(self) -> P.ErrorResponse:
        return P.ErrorResponse(error=P.ErrorBody(message=self.message, type=self.type, param=self.param,
                                                 code=self.code))

    def response(self) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer", **self.headers} if self.status == 401 else self.headers
        return JSONResponse(self.body().model_dump(), status_code=self.status, headers=headers or None)


def validation_error(exc: RequestValidationError) -> APIError:
    """FastAPI's validation error (422) as OpenAI's 400, naming the first offending field."""
    errors = exc.errors()
    if not errors:
        return APIError(400, "invalid request body")
    err = errors[0]
    loc = [str(p) for p in err.get("loc", ()) if p != "body"]
    if err.get("type") == "json_invalid":
        return APIError(400, "We could not parse the JSON body of your request. Send valid JSON.")
    if not loc:
        return APIError(400, f"The request body must be a JSON object ({err.get('msg')}).")
    # pydantic names the union branch it tried (e.g. messages.0.content.str); keep the field path
    param = ".".join(p for p in loc if not p.startswith(("str", "list[", "int", "float", "bool")) or p.isdigit())
    if err.get("type") == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", param=param, code="missing_required_parameter")
    msg = err.get("msg", "invalid value")
    return APIError(400, f"Invalid value for '{param}': {msg}.", param=param, code="invalid_value")
