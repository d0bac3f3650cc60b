"""Pure benchmark workloads: the built-in ones and the TOML file format of more.

A case passes when the answer contains any of its expected strings (case-insensitive).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Case:
    case_id: str
    messages: tuple[Mapping[str, str], ...]
    expect: tuple[str, ...]  # passes when the answer contains any of these (case-insensitive)
    max_tokens: int = 64

    def passed(self, text: str) -> bool:
        lowered = text.lower()
        return any(e.lower() in lowered for e in self.expect)


@dataclass(frozen=True)
class Workload:
    workload_id: str
    description: str
    cases: tuple[Case, ...]


BRIEF = "Answer in one short sentence or less. Do not explain your reasoning."


def _case(case_id: str, prompt: str, expect: Sequence[str], max_tokens: int = 48) -> Case:
    messages = ({"role": "system", "content": BRIEF}, {"role": "user", "content": prompt})
    return Case(case_id, messages, tuple(expect), max_tokens)


# Thinking off: the bench sends no thinking field, so the gateway's inferred default turns
# thinking off in the form each upstream honours; the prompts ask for short answers.
BUILTIN_WORKLOADS: Mapping[str, Workload] = {
    "chat.short_reasoning": Workload(
        "chat.short_reasoning",
        "Small arithmetic and time reasoning with a one-token answer",
        (
            _case("sum", "What is 17 + 25? Reply with the number only.", ["42"]),
            _case(
                "train",
                "A train leaves at 3 PM and travels for 2 hours. At what hour "
                "does it arrive? Reply with the time only.",
                ["5"],
            ),
        ),
    ),
    "chat.concise_support": Workload(
        "chat.concise_support",
        "One-sentence customer support answers",
        (
            _case(
                "password",
                "A customer forgot their account password. What is the first "
                "step you advise, in one sentence?",
                ["reset"],
            ),
            _case(
                "router",
                "A customer's home internet stopped working. What is the first "
                "thing they should try with the router, in one sentence?",
                ["restart", "reboot", "unplug", "power", "turn it off", "switch it off"],
            ),
        ),
    ),
}


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise ValueError(f"{path}: expected a string or a non-empty list of strings")
    return tuple(value)


def _parse_messages(case: Mapping[str, Any], path: str) -> tuple[Mapping[str, str], ...]:
    if "prompt" in case:
        prompt = case["prompt"]
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{path}.prompt: expected a non-empty string")
        system = case.get("system", BRIEF)
        if not isinstance(system, str):
            raise ValueError(f"{path}.system: expected a string")
        return ({"role": "system", "content": system}, {"role": "user", "content": prompt})
    messages = case.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{path}: expected `prompt` or a non-empty `messages` list")
    for index, message in enumerate(messages):
        if not (
            isinstance(message, dict)
            and isinstance(message.get("role"), str)
            and isinstance(message.get("content"), str)
        ):
            raise ValueError(f"{path}.messages[{index}]: expected {{role, content}} strings")
    return tuple(messages)


def parse_case(case: Any, path: str) -> Case:
    if not isinstance(case, dict):
        raise ValueError(f"{path}: expected a table")
    unknown = sorted(set(case) - {"id", "prompt", "system", "messages", "expect", "max_tokens"})
    if unknown:
        raise ValueError(f"{path}.{unknown[0]}: unknown key")
    case_id = case.get("id")
    if not isinstance(case_id, str) or not case_id:
        raise ValueError(f"{path}.id: expected a non-empty string")
    max_tokens = case.get("max_tokens", 64)
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise ValueError(f"{path}.max_tokens: expected a positive integer")
    expect = _strings(case.get("expect"), f"{path}.expect")
    return Case(case_id, _parse_messages(case, path), expect, max_tokens)


def parse_workloads(data: Mapping[str, Any]) -> dict[str, Workload]:
    """Workloads from a TOML document `[workloads.<id>]` with `[[workloads.<id>.cases]]`.

    Raises ValueError naming the dotted path of the first problem.
    """
    unknown = sorted(set(data) - {"workloads"})
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key")
    tables = data.get("workloads")
    if not isinstance(tables, dict) or not tables:
        raise ValueError("workloads: expected at least one [workloads.<id>] table")
    found: dict[str, Workload] = {}
    for workload_id, table in tables.items():
        path = f"workloads.{workload_id}"
        if not isinstance(table, dict):
            raise ValueError(f"{path}: expected a table")
        unknown = sorted(set(table) - {"description", "cases"})
        if unknown:
            raise ValueError(f"{path}.{unknown[0]}: unknown key")
        cases = table.get("cases")
        if not isinstance(cases, list) or not cases:
            raise ValueError(f"{path}.cases: expected at least one [[{path}.cases]]")
        parsed = tuple(parse_case(c, f"{path}.cases[{i}]") for i, c in enumerate(cases))
        found[workload_id] = Workload(workload_id, str(table.get("description", "")), parsed)
    return found
