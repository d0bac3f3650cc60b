"""The client commands' HTTP side: one synchronous httpx client, the gateway's error messages,
and the exit status a failed command returns (0 ok, 1 runtime or HTTP failure, 2 usage)."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8800"


class CommandError(Exception):
    """A command failed; `status` is the exit code (1 runtime/HTTP, 2 usage)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def open_client(args: argparse.Namespace, timeout: float = 30.0) -> httpx.Client:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    return httpx.Client(base_url=args.url, headers=headers, timeout=timeout, trust_env=False)


def server_message(response: httpx.Response) -> str:
    """The error message a gateway answer carries, else its status and text."""
    try:
        error = response.json().get("error")
        if isinstance(error, dict) and error.get("message"):
            return f"{response.status_code}: {error['message']}"
    except (ValueError, AttributeError):
        pass
    text = response.text.strip()[:200]
    return f"{response.status_code}: {text or response.reason_phrase}"


def call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> Any:
    """The JSON answer of one request. Raises CommandError with the server's message."""
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise CommandError(f"cannot reach the gateway at {client.base_url}: {exc}") from None
    if response.status_code >= 400:
        raise CommandError(server_message(response))
    try:
        return response.json()
    except ValueError:
        raise CommandError(f"the gateway answered {path} with something not JSON") from None


def run(fn: Callable[[argparse.Namespace], int], args: argparse.Namespace) -> int:
    """Run a command body, printing a CommandError to stderr as its exit status."""
    try:
        return fn(args)
    except CommandError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return exc.status


def client_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=os.environ.get("GENIEHIVE_URL", DEFAULT_URL),
        help="the gateway (env GENIEHIVE_URL)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("GENIEHIVE_API_KEY"),
        help="an API key (env GENIEHIVE_API_KEY)",
    )
