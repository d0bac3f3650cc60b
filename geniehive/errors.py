"""The exception tree of the client API; each error knows its HTTP status and OpenAI shape.

    GenieHiveError                      500 server_error / internal_error
    ├── InvalidRequest                  400 invalid_request_error / invalid_request
    │   ├── WrongOperation              400 ... / wrong_operation
    │   ├── ModelNotFound               404 ... / model_not_found
    │   ├── NotFound                    404 ... / not_found
    │   ├── MethodNotAllowed            405 ... / method_not_allowed
    │   ├── RequestTimeout              408 ... / request_timeout
    │   └── RequestTooLarge             413 ... / request_too_large
    ├── AuthenticationFailed            401 authentication_error / invalid_api_key
    ├── PermissionDenied                403 permission_error / insufficient_scope
    ├── Conflict                        409 invalid_request_error / conflict
    ├── RateLimited                     429 rate_limit_error / rate_limited
    │   ├── QueueFull                   429 ... / queue_full
    │   ├── QueueTimeout                429 ... / queue_timeout
    │   └── TooManyAuthFailures         429 ... / too_many_auth_failures
    ├── UpstreamStatus                  the upstream's 4xx, code upstream_<status>, or
    │                                   400 context_length_exceeded (upstream_error_code)
    ├── UpstreamFailed                  502 server_error / upstream_error
    ├── UpstreamTimeout                 504 server_error / upstream_timeout
    ├── LoopDetected                    508 server_error / loop_detected
    ├── NoHealthyUpstream               503 server_error / no_healthy_upstream
    ├── ModelLoadFailed                 503 server_error / model_load_failed
    ├── RegistryUnavailable             503 server_error / registry_unavailable
    └── ShuttingDown                    503 server_error / shutting_down

Routes raise; one handler renders `{"error": {message, type, param, code}}`.

A second tree stops the program instead of answering a request; `geniehive serve` and
`geniehive node` print each of its `problems` on a line of its own and exit:

    StartupError                        exit 1, "geniehive: <problem>"
    ├── ConfigError (config.py)         exit 2, "<config file>: <problem>"
    ├── PluginError (adapters/loader)   exit 2
    ├── LaunchError (launcher.py)       exit 2
    └── RegistryError (registry.py)     exit 1 (unreadable, or written by a newer geniehive)
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from geniehive.routing import RouteDecision


class GenieHiveError(Exception):
    status: ClassVar[int] = 500
    type: ClassVar[str] = "server_error"
    code: ClassVar[str | None] = "internal_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    @property
    def http_status(self) -> int:
        return self.status

    def error_object(self) -> dict[str, Any]:
        return render_error(self.message, self.type, self.code, self.param)

    def body(self) -> bytes:
        return json.dumps({"error": self.error_object()}).encode()


def render_error(
    message: str, type_: str, code: str | None, param: str | None = None
) -> dict[str, Any]:
    """The OpenAI error object."""
    return {"message": message, "type": type_, "param": param, "code": code}


class InvalidRequest(GenieHiveError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class WrongOperation(InvalidRequest):
    code = "wrong_operation"


class ModelNotFound(InvalidRequest):
    status = 404
    code = "model_not_found"


class NotFound(InvalidRequest):
    status = 404
    code = "not_found"


class UnknownHostError(NotFound):
    code = "unknown_host"


class MethodNotAllowed(InvalidRequest):
    status = 405
    code = "method_not_allowed"


class RequestTooLarge(InvalidRequest):
    status = 413
    code = "request_too_large"


class RequestTimeout(InvalidRequest):
    """The client stopped sending its request body (`server.body_timeout_s`)."""

    status = 408
    code = "request_timeout"


class AuthenticationFailed(GenieHiveError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GenieHiveError):
    status = 403
    type = "permission_error"
    code = "insufficient_scope"


class Conflict(GenieHiveError):
    status = 409
    type = "invalid_request_error"
    code = "conflict"


class RateLimited(GenieHiveError):
    """Too many requests now; `retry_after_s` (the `Retry-After` header) says when to retry."""

    status = 429
    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, *, retry_after_s: int | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class QueueFull(RateLimited):
    """Every candidate was full and `capacity.max_queue` requests were waiting already."""

    code = "queue_full"


class QueueTimeout(RateLimited):
    """No slot freed on a candidate within the request's longest wait."""

    code = "queue_timeout"


class TooManyAuthFailures(RateLimited):
    """One client address presented too many invalid keys."""

    code = "too_many_auth_failures"


CONTEXT_LENGTH_EXCEEDED = "context_length_exceeded"
# The status each code `upstream_error_code` recognises is answered with, whatever the
# upstream's own 4xx was.
KNOWN_UPSTREAM_CODES = {CONTEXT_LENGTH_EXCEEDED: 400}
# llama.cpp names an overflow by its error type; OpenAI by its code; vLLM, Ollama and older
# llama.cpp builds only in the message.
_OVERFLOW_TYPES = frozenset({"exceed_context_size_error"})
_OVERFLOW_MESSAGE = re.compile(
    r"exceeds the available context size"  # llama.cpp
    r"|maximum context length is \d+"  # vLLM, OpenAI: "This model's maximum context length is N"
    r"|decoder prompt \(length \d+\) is longer than the maximum model length"  # vLLM
    r"|input length exceeds (?:the|maximum) context length",  # Ollama
    re.IGNORECASE,
)


def upstream_error_code(body: bytes, message: str) -> str | None:
    """The OpenAI code of an upstream's error answer that clients act on, or None.

    Rule: a request longer than the model's context is `context_length_exceeded` (the code
    LangChain and other clients recognise, to trim the history and retry), recognised by
    OpenAI's own code, llama.cpp's `exceed_context_size_error` type, or the messages of
    llama.cpp, vLLM and Ollama (`message`, as the adapter's `parse_error` read it).
    """
    error = _error_field(body)
    if error.get("code") == CONTEXT_LENGTH_EXCEEDED or error.get("type") in _OVERFLOW_TYPES:
        return CONTEXT_LENGTH_EXCEEDED
    if _OVERFLOW_MESSAGE.search(message):
        return CONTEXT_LENGTH_EXCEEDED
    return None


def _error_field(body: bytes) -> dict[str, Any]:
    """The `error` object of a JSON error body; empty for any other body."""
    try:
        data = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return {}
    error = data.get("error") if isinstance(data, dict) else None
    return error if isinstance(error, dict) else {}


class UpstreamStatus(GenieHiveError):
    """An upstream 4xx, passed on with its status and message; with a `upstream_code` from
    KNOWN_UPSTREAM_CODES (see upstream_error_code), with that code and its status instead."""

    type = "invalid_request_error"

    def __init__(self, upstream_status: int, message: str, *,
                 upstream_code: str | None = None) -> None:
        super().__init__(message)
        self.upstream_status = upstream_status
        self.upstream_code = upstream_code if upstream_code in KNOWN_UPSTREAM_CODES else None

    @property
    def http_status(self) -> int:
        if self.upstream_code is not None:
            return KNOWN_UPSTREAM_CODES[self.upstream_code]
        return self.upstream_status

    def error_object(self) -> dict[str, Any]:
        if self.upstream_code is not None:
            return render_error(self.message, self.type, self.upstream_code, self.param)
        if self.upstream_status == 429:
            type_ = "rate_limit_error"
        elif self.upstream_status >= 500:
            type_ = "server_error"
        else:
            type_ = self.type
        return render_error(self.message, type_, f"upstream_{self.upstream_status}", self.param)


class UpstreamFailed(GenieHiveError):
    status = 502
    code = "upstream_error"


class UpstreamTimeout(GenieHiveError):
    status = 504
    code = "upstream_timeout"


class LoopDetected(GenieHiveError):
    """A request came back to the gateway that sent it (the hop header names us)."""

    status = 508
    code = "loop_detected"


class NoHealthyUpstream(GenieHiveError):
    status = 503
    code = "no_healthy_upstream"


class ModelLoadFailed(GenieHiveError):
    """A cold candidate could not be started or its model loaded, and no other served."""

    status = 503
    code = "model_load_failed"


class RegistryUnavailable(GenieHiveError):
    """A write the registry could not store (its database is unreachable): nothing changed;
    routing goes on from the last snapshot."""

    status = 503
    code = "registry_unavailable"


class ShuttingDown(GenieHiveError):
    """The gateway is stopping: new work is refused, and work cut at the grace's end."""

    status = 503
    code = "shutting_down"


def raise_for_decision(decision: RouteDecision) -> None:
    """Raise the client error a route decision carries (`decision.error`); nothing if none.

    `model_not_found` and `wrong_operation` name the `model` parameter; any other error
    means the model exists but no upstream can serve it now.
    """
    if decision.error is None:
        return
    if decision.error == "model_not_found":
        raise ModelNotFound(decision.message, param="model")
    if decision.error == "wrong_operation":
        raise WrongOperation(decision.message, param="model")
    raise NoHealthyUpstream(decision.message)


class StartupError(Exception):
    """The program cannot go on as configured; `problems` lists each reason, one line each.

    `in_config` says the configuration is at fault (exit status 2, each problem shown with the
    file's name) rather than the machine or the stored state (exit status 1).
    """

    in_config: ClassVar[bool] = False

    def __init__(self, problems: str | Sequence[str]) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))

    @property
    def exit_status(self) -> int:
        return 2 if self.in_config else 1
