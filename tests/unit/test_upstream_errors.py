"""Which upstream error answers become an OpenAI code a client acts on (errors.py)."""

from __future__ import annotations

import json

import pytest

from geniehive.adapters import openai_error_message
from geniehive.errors import UpstreamStatus, upstream_error_code

LLAMACPP = {"error": {"code": 400, "message": "request (631 tokens) exceeds the available "
                      "context size (256 tokens), try increasing it",
                      "type": "exceed_context_size_error", "n_prompt_tokens": 631, "n_ctx": 256}}
LLAMACPP_OLDER = {"error": {"code": 400, "type": "invalid_request_error", "message":
                            "the request exceeds the available context size, try increasing it"}}
VLLM = {"object": "error", "type": "BadRequestError", "param": None, "code": 400, "message":
        "This model's maximum context length is 4096 tokens. However, you requested 5000 "
        "tokens (4000 in the messages, 1000 in the completion). Please reduce the length of "
        "the messages or completion."}
VLLM_MAX_TOKENS = {"error": {"type": "BadRequestError", "code": 400, "message":
                             "'max_tokens' or 'max_completion_tokens' is too large: 8000. This "
                             "model's maximum context length is 4096 tokens and your request "
                             "has 2778 input tokens (8000 > 4096 - 2778)."}}
VLLM_DECODER = {"error": {"type": "BadRequestError", "code": 400, "message":
                          "The decoder prompt (length 9254) is longer than the maximum model "
                          "length of 4096. Make sure that `max_model_len` is no smaller."}}
OLLAMA = {"error": "the input length exceeds the context length"}
OLLAMA_OLDER = {"error": "input length exceeds maximum context length"}
OPENAI = {"error": {"message": "Your input exceeds the context window of this model.",
                    "type": "invalid_request_error", "param": "messages",
                    "code": "context_length_exceeded"}}


def classify(payload: dict) -> str | None:
    body = json.dumps(payload).encode()
    return upstream_error_code(body, openai_error_message(400, body))


@pytest.mark.parametrize("payload", [LLAMACPP, LLAMACPP_OLDER, VLLM, VLLM_MAX_TOKENS,
                                     VLLM_DECODER, OLLAMA, OLLAMA_OLDER, OPENAI],
                         ids=["llamacpp", "llamacpp-older", "vllm", "vllm-max-tokens",
                              "vllm-decoder", "ollama", "ollama-older", "openai"])
def test_a_context_overflow_is_context_length_exceeded(payload: dict) -> None:
    assert classify(payload) == "context_length_exceeded"


@pytest.mark.parametrize("payload", [
    {"error": {"message": "context too long", "type": "invalid_request_error"}},
    {"error": {"message": "model 'x' not found", "code": "model_not_found"}},
    {"detail": "The encoder prompt is longer than the cache"},
    {"error": "unknown field 'foo'"},
])
def test_other_client_errors_keep_their_upstream_code(payload: dict) -> None:
    assert classify(payload) is None
    assert upstream_error_code(b"not json", "maximum context") is None


def test_a_recognised_code_answers_400_invalid_request_error_whatever_the_upstream_status() -> None:
    error = UpstreamStatus(413, "the input length exceeds the context length",
                           upstream_code="context_length_exceeded")
    assert error.http_status == 400
    assert error.error_object() == {
        "message": "the input length exceeds the context length",
        "type": "invalid_request_error", "param": None, "code": "context_length_exceeded",
    }
    plain = UpstreamStatus(413, "too big", upstream_code="not_a_known_code")
    assert (plain.http_status, plain.error_object()["code"]) == (413, "upstream_413")
