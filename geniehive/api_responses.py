"""The stored responses of the Responses API: `GET /v1/responses/{id}` (and its
`/input_items`), `DELETE /v1/responses/{id}`, with the `inference` scope, as the requests
that made them.

An unknown or expired id is a 404 in the OpenAI shape (`not_found`). `POST /v1/responses`
itself is the proxy's (geniehive/dialects/responses.py); the store is
geniehive/registry_responses.py.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from geniehive.errors import NotFound

if TYPE_CHECKING:
    from quart import Response
    from quart_trio import QuartTrio

    from geniehive.gateway import Gateway
    from geniehive.registry_responses import StoredResponse


def register_response_routes(app: QuartTrio, gateway: Gateway) -> None:
    from quart import jsonify, request

    async def stored(response_id: str) -> StoredResponse:
        gateway.auth.authorize(request.headers, "inference")
        found = await gateway.responses.get(response_id)
        if found is None:
            raise NotFound(f"no stored response '{response_id}'", param="response_id")
        return found

    @app.get("/v1/responses/<response_id>")
    async def get_response(response_id: str) -> Response:
        return jsonify((await stored(response_id)).response)

    @app.get("/v1/responses/<response_id>/input_items")
    async def get_input_items(response_id: str) -> Response:
        items = (await stored(response_id)).input
        ids = [i.get("id") for i in items if isinstance(i, dict)]
        return jsonify({"object": "list", "data": items, "has_more": False,
                        "first_id": ids[0] if ids else None,
                        "last_id": ids[-1] if ids else None})

    @app.delete("/v1/responses/<response_id>")
    async def delete_response(response_id: str) -> Response:
        gateway.auth.authorize(request.headers, "inference")
        if not await gateway.responses.delete(response_id):
            raise NotFound(f"no stored response '{response_id}'", param="response_id")
        return jsonify({"id": response_id, "object": "response", "deleted": True})
