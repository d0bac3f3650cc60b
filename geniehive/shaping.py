"""What one attempt sends upstream: the client's body shaped for the chosen service.

Rule: pure (no I/O). The effective policy (the asset's, then the role's) is applied to the
body, model "thinking" is turned off in the adapter's terms when the client expressed no
choice, and the adapter builds the request. A client dialect (geniehive/dialects/) that the
upstream speaks itself is sent in that dialect instead, with the policy in its own fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from geniehive import policy as policy_mod
from geniehive.adapters import UpstreamRequest
from geniehive.models import Policy

if TYPE_CHECKING:
    from geniehive.attempts import Attempt
    from geniehive.dialects import Dialect


def effective_policy(attempt: Attempt) -> Policy:
    """The asset's policy merged under the role's, for the model the attempt sends."""
    asset = attempt.service.asset(attempt.model)
    return policy_mod.effective_policy(asset.policy if asset else None, attempt.role_policy)


def shape_body(attempt: Attempt) -> tuple[dict[str, Any], bool]:
    """The body to send upstream and whether reasoning is stripped from the answer."""
    inbound, model, adapter = attempt.inbound, attempt.model, attempt.adapter
    assert inbound.body is not None
    effective = effective_policy(attempt)
    body = inbound.body
    if effective.system_prompt is not None or effective.body_defaults or (
        effective.body_overrides
    ):
        body = policy_mod.apply_policy(body, inbound.operation, effective)
    if policy_mod.needs_thinking_off(body, model, inbound.operation):
        body = adapter.thinking_off(body)
    if inbound.operation == "embeddings" and body.get("encoding_format") == "base64":
        # Ask for floats and encode ourselves: upstreams that ignore or reject base64
        # then behave alike.
        body = {k: v for k, v in body.items() if k != "encoding_format"}
    strip = effective.strip_reasoning is not False
    return body, strip


def build_request(attempt: Attempt) -> None:
    """Fill the attempt's upstream request (and whether its answer is stripped); for a
    dialect request, tell its writer whether this attempt's answer comes natively."""
    inbound = attempt.inbound
    if inbound.answer is not None:
        dialect = inbound.dialect
        assert dialect is not None
        attempt.native = dialect.name in attempt.adapter.native_dialects
        inbound.answer.native = attempt.native
        if attempt.native:
            build_native(attempt, dialect)
            inbound.answer.strip = attempt.strip
            return
    if inbound.body is not None:
        body, attempt.strip = shape_body(attempt)
        attempt.request = attempt.adapter.build_request(
            inbound.endpoint, attempt.model, body=body
        )
    else:
        assert inbound.upload is not None
        attempt.request = attempt.adapter.build_request(
            inbound.endpoint, attempt.model, fields=inbound.upload.fields
        )


def build_native(attempt: Attempt, dialect: Dialect) -> None:
    """The client's own dialect body for an upstream that speaks it: the model rewritten
    and the effective policy put into the dialect's own fields."""
    inbound = attempt.inbound
    assert inbound.dialect_body is not None
    effective = effective_policy(attempt)
    attempt.strip = effective.strip_reasoning is not False
    body = dialect.native_body(inbound.dialect_body, attempt.model, effective)
    attempt.request = UpstreamRequest(
        "POST", dialect.native_path, body=body, headers=attempt.adapter.ctx.auth_headers
    )
