"""The Quart app: probes, the model listing and the operator API; the ASGI composition.

Rule: the only module (with api_* modules) that touches `quart.request`. Every error under
`/v1` leaves in the OpenAI shape; nothing answers a plain-text 500 or a stack trace.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import TYPE_CHECKING, Any, cast

from quart import Response, jsonify, request
from quart_trio import QuartTrio
from werkzeug.datastructures import Headers
from werkzeug.exceptions import HTTPException

from geniehive import catalog, dialects, ws
from geniehive.api_cluster import register_cluster_routes
from geniehive.api_nodes import register_routes as register_node_routes
from geniehive.api_responses import register_response_routes
from geniehive.asgi import ASGIApp, log_unrouted, new_request_id, render_error_answer
from geniehive.errors import (
    GenieHiveError,
    MethodNotAllowed,
    NotFound,
    RequestTooLarge,
    render_error,
)
from geniehive.metrics import CONTENT_TYPE_LATEST
from geniehive.proxy import ProxyApp

if TYPE_CHECKING:
    from geniehive.gateway import Gateway

log = logging.getLogger("geniehive.app")

TASKS = ("registry", "plugins", "launcher", "heartbeats", "discovery", "prober", "proxy")


def create_app(gateway: Gateway) -> QuartTrio:
    app = QuartTrio("geniehive")
    app.config["RESPONSE_TIMEOUT"] = None  # long streams must never be cut (see PITFALLS 1)
    app.config["BODY_TIMEOUT"] = None
    app.config["MAX_CONTENT_LENGTH"] = gateway.config.server.max_body_bytes
    app.config["JSON_SORT_KEYS"] = False
    # We run no Quart background tasks, so there is nothing to wait for at shutdown.
    app.config["BACKGROUND_TASK_SHUTDOWN_TIMEOUT"] = 0
    app.extensions["gateway"] = gateway

    @app.errorhandler(GenieHiveError)
    async def on_error(exc: GenieHiveError) -> Response:
        return error_response(exc)

    @app.errorhandler(HTTPException)
    async def on_http(exc: HTTPException) -> Response:
        if exc.code == 404 and request.url_rule is None:
            user_agent = request.headers.get("User-Agent")
            return error_response(unrouted(request.method, request.path, user_agent))
        return error_response(framework_error(exc))

    @app.errorhandler(Exception)
    async def on_crash(exc: Exception) -> Response:
        log.exception("unexpected error on %s %s", request.method, request.path)
        return error_response(GenieHiveError("internal error"))

    @app.after_request
    async def request_id(response: Response) -> Response:
        if "X-Request-Id" not in response.headers:  # an error answer carries it already
            response.headers["X-Request-Id"] = request.headers.get("X-Request-Id") or (
                new_request_id()
            )
        return response

    @app.get("/")
    async def root() -> Response:
        # No key, no data: clients (Claude Code) try `HEAD /` before their first call.
        return jsonify({"status": "ok", "api": "/v1"})

    @app.get("/healthz")
    async def healthz() -> Response:
        if gateway.worker is None:
            return jsonify({"status": "ok"})
        return jsonify({"status": "ok", "worker": gateway.worker})

    @app.get("/readyz")
    async def readyz() -> Any:
        pending = [t for t in TASKS if t not in gateway.started]
        body = {"status": "ready" if not pending else "starting", "pending": pending}
        return jsonify(body), (200 if gateway.ready else 503)

    @app.get("/metrics")
    async def metrics() -> Response:
        gateway.auth.authorize(request.headers, "read")
        return Response(gateway.metrics.render(), content_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models")
    async def list_models() -> Response:
        gateway.auth.authorize(request.headers, "inference")
        entries = catalog.model_entries(
            gateway.snapshot, gateway.routing_context(), gateway.created
        )
        return jsonify({"object": "list", "data": list(entries.values())})

    @app.get("/v1/models/<path:model_id>")
    async def get_model(model_id: str) -> Response:
        gateway.auth.authorize(request.headers, "inference")
        snapshot = gateway.snapshot
        ctx = gateway.routing_context()
        if model_id.startswith("role/") and model_id[5:] in snapshot.roles:
            return jsonify(catalog.role_entry(snapshot, model_id[5:], ctx, gateway.created))
        entries = catalog.model_entries(snapshot, ctx, gateway.created)
        if model_id not in entries:
            raise NotFound(f"no model or role named '{model_id}'", param="model")
        return jsonify(entries[model_id])

    register_node_routes(app, gateway)
    register_cluster_routes(app, gateway)
    register_response_routes(app, gateway)
    ws.register_playground(app, gateway)
    register_console(app)
    return app


def register_console(app: QuartTrio) -> None:
    """Serve the operator console (one self-contained page, docs/console.md) at GET /console.

    Like the playground it holds no data and loads without a key; its calls (the event
    stream, the cluster and key routes) are authorized as usual.
    """
    page = resources.files("geniehive").joinpath("console.html").read_bytes()

    @app.get("/console")
    async def console() -> Response:
        response = Response(page, content_type="text/html; charset=utf-8")
        response.headers["Content-Security-Policy"] = ws.PLAYGROUND_CSP
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Cache-Control"] = "no-cache"
        return response


def error_response(exc: GenieHiveError) -> Response:
    """`exc` as a Quart response, rendered by the edge toolkit's one error writer."""
    request_id = request.headers.get("X-Request-Id") or new_request_id()
    status, headers, body = render_error_answer(exc, request_id)
    return Response(body, status=status, headers=Headers(
        [(name.decode("latin-1"), value.decode("latin-1")) for name, value in headers]
    ))


MESSAGE_PATH_CHARS = 200  # of the path named in a 404's message


def unrouted(method: str, path: str, user_agent: str | None) -> NotFound:
    """The 404 `not_found` of a request no route serves, naming its method and path (cut to
    MESSAGE_PATH_CHARS); logged by `log_unrouted`."""
    log_unrouted(method, path, user_agent)
    shown = path if len(path) <= MESSAGE_PATH_CHARS else path[:MESSAGE_PATH_CHARS] + "..."
    return NotFound(f"no route for {method} {shown}")


class _FrameworkError(GenieHiveError):
    """An HTTP error Quart or werkzeug raised itself (no route, a bad method, ...)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.framework_status = status

    @property
    def http_status(self) -> int:
        return self.framework_status

    def error_object(self) -> dict[str, Any]:
        status = self.framework_status
        type_ = "invalid_request_error" if status < 500 else "server_error"
        return render_error(self.message, type_, f"http_{status}", self.param)


def framework_error(exc: HTTPException) -> GenieHiveError:
    """The GenieHiveError of an HTTP error raised by Quart or werkzeug."""
    message = exc.description or exc.name
    known = {404: NotFound, 405: MethodNotAllowed, 413: RequestTooLarge}.get(exc.code or 500)
    return known(message) if known is not None else _FrameworkError(exc.code or 500, message)


def create_asgi(gateway: Gateway) -> ProxyApp:
    """The ASGI app hypercorn serves: the lean proxy routes in front of the Quart app."""
    # Quart types its ASGI callable with hypercorn's TypedDict scopes; the contract is the
    # one ASGIApp names.
    proxy = ProxyApp(gateway, cast(ASGIApp, create_app(gateway)))
    ws.register_websocket(proxy, gateway)
    proxy.dialects.update(dialects.served(gateway))
    return proxy
