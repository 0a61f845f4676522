"""The package top's public API: what the README's example uses, importable as `from mft_search import X`,
and what importing it costs."""

import subprocess
import sys

import pytest
import torch

import mft_search
from mft_search import MaskSpec, attach_masks, current_masks, materialize, refresh_masks, score_parameters
from mft_search.demo.tiny import tiny_llama


def test_every_public_name_is_importable_from_the_top():
    assert sorted(mft_search.__all__) == sorted(set(mft_search.__all__))
    for name in mft_search.__all__:
        assert getattr(mft_search, name) is not None


HEAVY = ("torch", "transformers", "datasets", "pydantic", "ray")


# Every Ray worker and command line imports mft_search first: its public names load on first
# use. The storage check's task runs on every node, in a worker that imports tune.cluster.
@pytest.mark.parametrize("module, needs", [("mft_search", ()), ("mft_search.tune.cluster", ("ray",))])
def test_these_modules_load_none_of_the_heavy_libraries_they_do_not_use(module, needs):
    code = f"import sys, {module}; print([m for m in {HEAVY!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split("\n")[0] == repr([m for m in HEAVY if m in needs])


def test_dir_lists_the_public_names():
    assert set(dir(mft_search)) >= set(mft_search.__all__)


def test_the_readme_example_trains_a_mask_and_leaves_a_plain_model():
    model = tiny_llama()
    attach_masks(model, MaskSpec(blocks=(1, 2), ratio=0.1))
    optimizer = torch.optim.AdamW(score_parameters(model), lr=1e-2, weight_decay=0.0)
    ids = torch.randint(3, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    before = {n: m.clone() for n, m in current_masks(model).items()}
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        refresh_masks(model)
    assert any(not torch.equal(before[n], m) for n, m in current_masks(model).items())
    masks = materialize(model)
    assert all(type(model.get_submodule(n)).__name__ == "Linear" for n in masks)
    up = model.get_submodule("model.layers.1.mlp.up_proj").weight
    assert int((up == 0).sum()) >= int((~masks["model.layers.1.mlp.up_proj"]).sum())
