"""Request policy: layer precedence, system prompt placement, defaults and overrides, thinking."""

from __future__ import annotations

import copy
import json
from types import MappingProxyType

import pytest

from geniehive.models import Policy
from geniehive.policy import (
    apply_policy,
    apply_system_prompt,
    client_chose_thinking,
    deep_fill,
    deep_force,
    effective_policy,
    needs_thinking_off,
    wants_thinking_off,
)

SYS = {"role": "system", "content": "Be brief."}
USER = {"role": "user", "content": "hi"}
OLD_SYS = {"role": "system", "content": "old"}


# --- deep_fill / deep_force -------------------------------------------------------------


def test_deep_fill_adds_only_missing_keys_recursively():
    body = {"temperature": 0.2, "chat_template_kwargs": {"a": 1}}
    defaults = {"temperature": 0.7, "top_p": 0.9, "chat_template_kwargs": {"a": 2, "b": 3}}
    assert deep_fill(body, defaults) == {
        "temperature": 0.2,
        "top_p": 0.9,
        "chat_template_kwargs": {"a": 1, "b": 3},
    }


def test_deep_fill_treats_a_present_null_as_sent():
    assert deep_fill({"max_tokens": None}, {"max_tokens": 64}) == {"max_tokens": None}


def test_deep_fill_keeps_client_scalar_over_default_object():
    assert deep_fill({"stop": "x"}, {"stop": {"a": 1}}) == {"stop": "x"}


def test_deep_force_replaces_values_and_merges_objects():
    body = {"temperature": 0.2, "chat_template_kwargs": {"a": 1, "keep": True}, "n": 1}
    overrides = {"temperature": 0.0, "chat_template_kwargs": {"a": 9}, "stop": ["\n"]}
    assert deep_force(body, overrides) == {
        "temperature": 0.0,
        "chat_template_kwargs": {"a": 9, "keep": True},
        "n": 1,
        "stop": ["\n"],
    }


def test_deep_force_object_replaces_scalar_and_scalar_replaces_object():
    assert deep_force({"a": 1, "b": {"x": 1}}, {"a": {"y": 2}, "b": 3}) == {"a": {"y": 2}, "b": 3}


def test_merges_do_not_mutate_inputs_and_copy_policy_values():
    body = {"kw": {"a": 1}, "list": [1]}
    shared = {"deep": {"v": 1}}
    defaults = MappingProxyType({"kw": {"b": 2}, "new": shared, "seq": (1, 2)})
    before_body, before_defaults = copy.deepcopy(body), copy.deepcopy(dict(defaults))
    filled = deep_fill(body, defaults)
    forced = deep_force(body, defaults)
    assert body == before_body
    assert dict(defaults) == before_defaults
    for result in (filled, forced):
        assert result["new"] == shared and result["new"] is not shared
        assert result["seq"] == [1, 2]
        json.dumps(result)  # plain containers only


# --- effective_policy -------------------------------------------------------------------


def test_effective_policy_defaults_with_no_layers():
    assert effective_policy() == Policy(
        system_prompt=None,
        system_prompt_position="prepend",
        body_defaults={},
        body_overrides={},
        strip_reasoning=True,
    )
    assert effective_policy(None, None).strip_reasoning is True


def test_effective_policy_precedence_inferred_asset_role():
    inferred = Policy(
        system_prompt="inferred",
        body_defaults={"temperature": 0.6, "chat_template_kwargs": {"enable_thinking": False}},
        strip_reasoning=False,
    )
    asset = Policy(
        system_prompt="asset",
        system_prompt_position="append",
        body_defaults={"temperature": 0.7, "chat_template_kwargs": {"x": 1}},
        body_overrides={"max_tokens": 100, "kw": {"a": 1, "b": 1}},
    )
    role = Policy(
        system_prompt="role",
        system_prompt_position="replace",
        body_overrides={"kw": {"b": 2}},
        strip_reasoning=True,
    )
    result = effective_policy(inferred, asset, role)
    assert result.system_prompt == "role"
    assert result.system_prompt_position == "replace"
    assert result.body_defaults == {
        "temperature": 0.7,
        "chat_template_kwargs": {"enable_thinking": False, "x": 1},
    }
    assert result.body_overrides == {"max_tokens": 100, "kw": {"a": 1, "b": 2}}
    assert result.strip_reasoning is True


def test_effective_policy_unset_higher_layer_keeps_lower_prompt_and_position():
    asset = Policy(system_prompt="asset", system_prompt_position="append", strip_reasoning=False)
    role = Policy(system_prompt=None, system_prompt_position="replace")
    result = effective_policy(None, asset, role)
    assert (result.system_prompt, result.system_prompt_position) == ("asset", "append")
    assert result.strip_reasoning is False


def test_effective_policy_empty_prompt_hides_lower_prompt():
    result = effective_policy(Policy(system_prompt="asset"), Policy(system_prompt=""))
    assert result.system_prompt == ""
    body = {"messages": [USER]}
    assert apply_policy(body, "chat", result) == {"messages": [USER]}


# --- apply_system_prompt ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("messages", "position", "expected"),
    [
        ([USER], "prepend", [SYS, USER]),
        ([OLD_SYS, USER], "prepend", [SYS, OLD_SYS, USER]),
        ([USER], "append", [USER, SYS]),
        ([OLD_SYS, USER, OLD_SYS], "replace", [SYS, USER, OLD_SYS]),
        ([USER, OLD_SYS], "replace", [USER, SYS]),
        ([USER], "replace", [SYS, USER]),
        ([], "prepend", [SYS]),
        ([], "append", [SYS]),
    ],
)
def test_system_prompt_positions(messages, position, expected):
    before = copy.deepcopy(messages)
    result = apply_system_prompt(messages, "Be brief.", position)
    assert result == expected
    assert messages == before
    assert result is not messages


@pytest.mark.parametrize("position", ["prepend", "append", "replace"])
def test_identical_system_message_anywhere_is_not_added_again(position):
    messages = [OLD_SYS, USER, dict(SYS)]
    assert apply_system_prompt(messages, "Be brief.", position) == messages


def test_same_content_with_another_role_does_not_count_as_present():
    messages = [{"role": "user", "content": "Be brief."}]
    assert apply_system_prompt(messages, "Be brief.", "prepend") == [SYS, *messages]


def test_no_prompt_returns_a_copy():
    messages = [USER]
    result = apply_system_prompt(messages, None, "prepend")
    assert result == [USER] and result is not messages


def test_unknown_position_is_rejected():
    with pytest.raises(ValueError, match="middle"):
        apply_system_prompt([USER], "x", "middle")


# --- thinking ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "operation", "expected"),
    [
        ("Qwen3.5-9B", "chat", True),
        ("qwen3:8b", "chat", True),
        ("Qwen/Qwen3-8B", "chat", True),
        ("hf.co/Qwen/Qwen3-8B-GGUF:Q4_K_M", "completion", True),
        ("QWEN3", "chat", True),
        ("qwen2.5:7b", "chat", False),
        ("Qwen/Qwen2.5-7B-Instruct", "chat", False),
        ("qwen3/llama-3-8b", "chat", False),
        ("my-qwen3", "chat", False),
        ("Qwen3-Embedding-0.6B", "embeddings", False),
        ("qwen3:8b", "transcription", False),
        ("", "chat", False),
    ],
)
def test_wants_thinking_off(model, operation, expected):
    assert wants_thinking_off(model, operation) is expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({}, False),
        ({"chat_template_kwargs": {"enable_thinking": False}}, True),
        ({"chat_template_kwargs": {"enable_thinking": True}}, True),
        ({"chat_template_kwargs": {"other": 1}}, False),
        ({"chat_template_kwargs": {"enable_thinking": None}}, False),
        ({"reasoning_effort": "none"}, True),
        ({"reasoning": {"effort": "low"}}, True),
        ({"think": False}, True),
        ({"enable_thinking": True}, True),
        ({"reasoning_effort": None}, False),
        ({"chat_template_kwargs": "bad"}, False),
    ],
)
def test_client_chose_thinking(body, expected):
    assert client_chose_thinking(body) is expected


def test_needs_thinking_off_only_without_a_choice():
    assert needs_thinking_off({}, "qwen3:8b", "chat") is True
    assert needs_thinking_off({"think": True}, "qwen3:8b", "chat") is False
    assert needs_thinking_off({}, "llama3:8b", "chat") is False


# --- apply_policy -----------------------------------------------------------------------


def test_apply_policy_chat_prompt_then_defaults_then_overrides():
    body = {"model": "m", "messages": [USER], "temperature": 1.0, "kw": {"a": 1}}
    policy = Policy(
        system_prompt="Be brief.",
        body_defaults={"temperature": 0.2, "top_p": 0.9, "kw": {"b": 2}},
        body_overrides={"max_tokens": 50, "kw": {"a": 3}},
    )
    assert apply_policy(body, "chat", policy) == {
        "model": "m",
        "messages": [SYS, USER],
        "temperature": 1.0,
        "top_p": 0.9,
        "kw": {"a": 3, "b": 2},
        "max_tokens": 50,
    }


def test_apply_policy_does_not_mutate_the_body():
    body = {"messages": [OLD_SYS, USER], "kw": {"a": 1}}
    before = copy.deepcopy(body)
    policy = Policy(
        system_prompt="Be brief.",
        system_prompt_position="replace",
        body_defaults={"kw": {"b": 2}},
        body_overrides={"kw": {"a": 2}},
    )
    result = apply_policy(body, "chat", policy)
    assert body == before
    assert result["messages"] == [SYS, USER]


def test_apply_policy_completion_gets_no_system_prompt_but_gets_defaults():
    body = {"prompt": "Once", "messages": [USER]}
    policy = Policy(system_prompt="Be brief.", body_defaults={"max_tokens": 8})
    assert apply_policy(body, "completion", policy) == {
        "prompt": "Once",
        "messages": [USER],
        "max_tokens": 8,
    }


def test_apply_policy_leaves_missing_or_malformed_messages_alone():
    policy = Policy(system_prompt="Be brief.")
    assert apply_policy({"model": "m"}, "chat", policy) == {"model": "m"}
    assert apply_policy({"messages": "x"}, "chat", policy) == {"messages": "x"}


def test_apply_policy_with_empty_policy_returns_equal_copy():
    body = {"messages": [USER]}
    result = apply_policy(body, "chat", Policy())
    assert result == body and result is not body
