"""The llama.cpp launcher's command line becomes the server's parameters (no model loaded)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from geniehive.launch.llamacpp import build_params, parse_args


class FakeParams:
    """The few `xllamacpp.CommonParams` fields the launcher sets, at llama.cpp's defaults."""

    def __init__(self) -> None:
        self.model = SimpleNamespace(path="")
        self.cpuparams = SimpleNamespace(n_threads=-1)
        self.cpuparams_batch = SimpleNamespace(n_threads=-1)
        self.n_predict = -1  # llama.cpp's "no limit"
        self.sampling = SimpleNamespace(temp=0.8)


FAKE_XLLAMACPP = SimpleNamespace(CommonParams=FakeParams)


def params_for(*argv: str) -> FakeParams:
    args = parse_args(["--model", "m.gguf", *argv])
    return build_params(FAKE_XLLAMACPP, args, Path("m.gguf"))


def test_predict_caps_every_answer_at_that_many_tokens() -> None:
    assert params_for("--predict", "64").n_predict == 64


def test_without_predict_the_server_keeps_its_own_default() -> None:
    assert params_for().n_predict == -1


def test_temperature_sets_the_default_of_requests_that_name_none() -> None:
    assert params_for("--temperature", "0").sampling.temp == 0.0
    assert params_for().sampling.temp == 0.8
