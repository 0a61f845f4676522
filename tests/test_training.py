"""The shared training step: loss reductions and FFT's fp32 master weights under bf16 compute."""

import copy

import pytest
import torch

from mft_search.demo.tiny import tiny_llama
from mft_search.train.objectives import token_weights
from mft_search.train.step import TrainSettings, make_optimizer, train_step

CPU = torch.device("cpu")


def _batch(rows, length, seed=0, prompt=3):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 400, (rows, length), generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def _step(model, batches, settings, compute_dtype=None):
    optimizer, scheduler = make_optimizer([p for p in model.parameters() if p.requires_grad], settings, 10)
    return train_step(model, batches, optimizer, scheduler, settings, CPU, compute_dtype)


def test_token_reduction_is_the_models_own_token_mean_loss():
    model, batch = tiny_llama(), _batch(4, 16)
    loss = _step(model, [batch], TrainSettings(lr=1e-9, warmup_ratio=0, loss_reduction="token"))
    with torch.no_grad():
        reference = tiny_llama()(**batch).loss
    assert loss == pytest.approx(float(reference), rel=1e-5)


def test_example_reduction_averages_each_examples_mean_loss_once():
    short, long = _batch(1, 8, seed=1), _batch(1, 24, seed=2)
    loss = _step(tiny_llama(), [short, long], TrainSettings(lr=1e-9, warmup_ratio=0, loss_reduction="example"))
    with torch.no_grad():
        model = tiny_llama()
        per_example = [float(model(**b).loss) for b in (short, long)]
    assert loss == pytest.approx(sum(per_example) / 2, rel=1e-5)


def test_example_weights_tell_packed_examples_apart_by_their_restarting_positions():
    labels = torch.tensor([[-100, 5, 5, -100, 5, 5, 5, 5, -100]])
    positions = torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4, 0]])  # two examples, then padding
    weights = token_weights({"labels": labels, "position_ids": positions}, "example")
    assert weights.tolist() == [[0.5, 0.5, 0.0, 0.25, 0.25, 0.25, 0.25, 0.0]]
    assert float(weights.sum()) == 2.0  # one per example: the normaliser counts examples


def test_fft_under_bf16_updates_fp32_masters_as_an_fp32_step_does():
    """At lr 2e-5 an AdamW update (~lr) is below bf16's resolution at weight scale 0.02."""
    settings = TrainSettings(lr=2e-5, warmup_ratio=0, max_grad_norm=None)
    batches = [_batch(4, 16)]
    start = tiny_llama()
    reference, masters, plain_bf16 = copy.deepcopy(start), copy.deepcopy(start), copy.deepcopy(start).bfloat16()
    _step(reference, batches, settings)
    _step(masters, batches, settings, compute_dtype=torch.bfloat16)
    _step(plain_bf16, batches, settings)

    name = "model.layers.1.mlp.up_proj.weight"
    before = start.get_parameter(name).detach()
    moved_ref = reference.get_parameter(name).detach() - before
    moved_masters = masters.get_parameter(name).detach() - before
    assert masters.get_parameter(name).dtype == torch.float32
    assert (moved_masters != 0).float().mean() > 0.99
    cosine = torch.nn.functional.cosine_similarity(moved_ref.flatten(), moved_masters.flatten(), dim=0)
    assert cosine > 0.95 and abs(float(moved_masters.norm() / moved_ref.norm()) - 1) < 0.05
    # What the masters are for: the same step on bf16 weights leaves most of them untouched.
    changed = plain_bf16.get_parameter(name).detach() != before.bfloat16()
    assert changed.float().mean() < 0.5


def _rates(schedule, total=10, warmup_ratio=0.2):
    settings = TrainSettings(lr=1.0, warmup_ratio=warmup_ratio, schedule=schedule)
    optimizer, scheduler = make_optimizer([torch.nn.Parameter(torch.zeros(1))], settings, total)
    rates = []
    for _ in range(total):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_schedules_warm_up_then_decay_linearly_by_cosine_or_not_at_all():
    # 10 steps, 2 of warm-up: 0.5, 1.0, then 8 steps of decay
    assert _rates("linear") == pytest.approx([0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125])
    cosine = _rates("cosine")
    assert cosine[:3] == pytest.approx([0.5, 1.0, 1.0]) and cosine[6] == pytest.approx(0.5)
    assert all(a > b for a, b in zip(cosine[2:], cosine[3:])) and cosine[-1] > 0
    assert _rates("constant") == pytest.approx([0.5] + [1.0] * 9)


def test_the_linear_schedule_is_the_default_the_authors_ran():
    assert TrainSettings().schedule == "linear"
    with pytest.raises(ValueError, match="schedule"):
        TrainSettings(schedule="step")
