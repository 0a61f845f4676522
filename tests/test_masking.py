"""The MFT core on tiny Llama and GPT-2 models built from configs: no Ray, no hub."""

import copy

import pytest
import torch
from torch import nn
from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
from transformers.pytorch_utils import Conv1D

from mft_search.core.architectures import module_names
from mft_search.core.baselines import kept_counts_for_ratio, l1_masks, random_masks
from mft_search.core.masking import (
    MaskedLinear,
    MaskSpec,
    attach_masks,
    current_masks,
    defer_score_grads,
    kept_fraction,
    masked_modules,
    materialize,
    refresh_masks,
    score_parameters,
)
from mft_search.core.topk import global_mask, kept_count, local_mask, top_k_mask
from mft_search.demo.tiny import tiny_gpt2, tiny_llama
from mft_search.errors import ArchitectureError, ConfigError

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


@pytest.fixture(params=sorted(MODELS))
def make_model(request):
    return MODELS[request.param]


def batch(seed=0, size=4, length=24):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, 400, (size, length), generator=g)


# --- exact selection -------------------------------------------------------------------------

def test_kept_count_is_exact_where_float_truncation_bites():
    assert kept_count(1000, 0.1) == 900
    assert int((1 - 0.9) * 1000) == 99  # what truncation would give
    assert kept_count(1000, 0.9) == 100
    scores = torch.randn(25, 40)
    assert int(local_mask(scores, 0.1).sum()) == 900
    assert int(local_mask(scores, 0.9).sum()) == 100


def test_ties_are_broken_by_index_and_counts_stay_exact():
    values = torch.zeros(10)
    values[7] = 1.0
    mask = top_k_mask(values, 4)
    assert mask.tolist() == [True, True, True, False, False, False, False, True, False, False]
    # a threshold `>=` count would keep all ten tied zeros
    assert int((values >= values.kthvalue(7).values).sum()) == 10


def test_top_k_matches_a_stable_sort_reference():
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        values = torch.randint(0, 5, (7, 13), generator=g).float()  # many ties
        k = int(torch.randint(0, 92, (1,), generator=g))
        order = torch.sort(-values.reshape(-1), stable=True).indices
        expected = torch.zeros(91, dtype=torch.bool)
        expected[order[:k]] = True
        assert torch.equal(top_k_mask(values, k).reshape(-1), expected)


@pytest.mark.parametrize("make", [
    lambda g: torch.randn(300_000, generator=g),
    lambda g: torch.randint(0, 50, (300_000,), generator=g).float(),  # heavy ties at the cut
    lambda g: torch.cat([torch.zeros(290_000), torch.randn(10_000, generator=g)]),  # sample misses the tail
    lambda g: torch.sort(torch.randn(300_000, generator=g)).values,  # sorted: a strided sample is biased
])
@pytest.mark.parametrize("ratio", [0.02, 0.1, 0.5, 0.97])
def test_large_tensors_select_exactly_what_a_stable_sort_selects(make, ratio):
    values = make(torch.Generator().manual_seed(0))
    k = kept_count(values.numel(), ratio)
    order = torch.sort(-values, stable=True).indices
    expected = torch.zeros(values.numel(), dtype=torch.bool)
    expected[order[:k]] = True
    assert torch.equal(top_k_mask(values, k), expected)


def test_local_mode_ranks_by_magnitude_and_global_by_raw_score():
    scores = torch.tensor([[-0.5, 0.1, 0.2, -0.01]])
    assert local_mask(scores, 0.5).tolist() == [[True, False, True, False]]
    assert global_mask(scores, -0.035).tolist() == [[False, True, True, True]]


# --- attaching -------------------------------------------------------------------------------

def test_attach_maps_kinds_onto_real_modules(make_model):
    model = make_model()
    masked = attach_masks(model, MaskSpec(blocks=(1, 2)))
    expected = 14 if model.config.model_type == "llama" else 8  # GPT-2: c_attn, c_proj, c_fc, c_proj
    assert len(masked) == expected
    assert set(masked) == set(masked_modules(model))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"{n}.scores" for n in masked}
    for module in masked.values():
        assert module.scores.dtype == torch.float32


def test_embeddings_norms_head_and_biases_are_never_masked():
    model = tiny_gpt2()
    attach_masks(model, MaskSpec(blocks=(0, 1, 2, 3)))
    for name, module in model.named_modules():
        if isinstance(module, (nn.Embedding, nn.LayerNorm)) or name == "lm_head":
            assert not isinstance(module, MaskedLinear)
    for module in masked_modules(model).values():
        assert module.bias is not None and not module.bias.requires_grad


def test_scores_are_fp32_on_a_bf16_model():
    model = tiny_llama().to(torch.bfloat16)
    attach_masks(model, MaskSpec(blocks=(0,)))
    x = batch()
    model(x, labels=x).loss.backward()
    for p in score_parameters(model):
        assert p.dtype == torch.float32 and p.grad.dtype == torch.float32


def test_unknown_architecture_is_refused_clearly():
    cfg = GPTNeoXConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    with pytest.raises(ArchitectureError, match="gpt_neox.*supported"):
        attach_masks(GPTNeoXForCausalLM(cfg), MaskSpec(blocks=(0,)))


@pytest.mark.parametrize(
    "spec, match",
    [
        (MaskSpec(blocks=(0,), kinds=("gate",)), "gate.*not a module kind of gpt2"),
        (MaskSpec(blocks=(0,), kinds=("q",)), "fuses q/k/v"),
        (MaskSpec(blocks=(3, 4)), r"block\(s\) \[4\] outside"),
    ],
)
def test_bad_specs_name_the_field(spec, match):
    with pytest.raises(ConfigError, match=match):
        attach_masks(tiny_gpt2(), spec)


def test_spec_validates_ratio_and_blocks():
    with pytest.raises(ConfigError, match="mask.ratio"):
        MaskSpec(blocks=(0,), ratio=1.0)
    with pytest.raises(ConfigError, match="mask.blocks"):
        MaskSpec(blocks=())


# --- forward and backward --------------------------------------------------------------------

def test_masked_forward_equals_weights_zeroed_by_hand(make_model):
    model = make_model()
    reference = copy.deepcopy(model)
    attach_masks(model, MaskSpec(blocks=(0, 3), ratio=0.3))
    with torch.no_grad():
        for name, mask in current_masks(model).items():
            reference.get_submodule(name).weight.mul_(mask)
    x = batch()
    torch.testing.assert_close(model(x).logits, reference(x).logits, rtol=0, atol=1e-6)


@pytest.mark.parametrize("mode", ["local", "global"])
@pytest.mark.parametrize("transposed", [False, True])
def test_straight_through_gradient_matches_an_independent_computation(transposed, mode):
    torch.manual_seed(0)
    base = Conv1D(6, 5) if transposed else nn.Linear(5, 6)
    base.requires_grad_(False)
    module = MaskedLinear(base, mode, 0.3, 0.0)
    with torch.no_grad():
        module.scores.normal_()
    x = torch.randn(3, 5)
    target = torch.randn(3, 6)
    ((module(x) - target) ** 2).sum().backward()

    # Independent: treat W*M as a free leaf, take its gradient, multiply by W (and by d|S|/dS
    # where the mask ranks |S|).
    wm = (base.weight * module.mask()).detach().requires_grad_(True)
    y = x @ wm + base.bias if transposed else x @ wm.T + base.bias
    ((y - target) ** 2).sum().backward()
    through_abs = module.scores.detach().sign() if mode == "local" else 1.0
    torch.testing.assert_close(module.scores.grad, wm.grad * base.weight * through_abs)


def test_frozen_weights_stay_bit_identical_and_scores_learn(make_model):
    model = make_model()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    attach_masks(model, MaskSpec(blocks=(1, 2), init="magnitude", ratio=0.2))
    scores_before = [p.detach().clone() for p in score_parameters(model)]
    opt = torch.optim.AdamW(score_parameters(model), lr=1e-2, weight_decay=0.0)
    x = batch()
    for _ in range(3):
        opt.zero_grad()
        model(x, labels=x).loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        if name.endswith(".scores"):
            continue
        assert torch.equal(p, before[name]), name
        assert p.grad is None, name
    assert any(not torch.equal(a, b) for a, b in zip(scores_before, score_parameters(model)))


def test_score_only_steps_lower_the_training_loss(make_model):
    model = make_model()
    attach_masks(model, MaskSpec(blocks=(0, 1, 2, 3), init="magnitude", ratio=0.1))
    opt = torch.optim.AdamW(score_parameters(model), lr=5e-3, weight_decay=0.0)
    x = batch(size=8)
    losses = []
    for _ in range(15):
        opt.zero_grad()
        loss = model(x, labels=x).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses


def test_mask_is_computed_once_per_optimiser_step_not_per_forward():
    model = tiny_llama()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    masked = attach_masks(model, MaskSpec(blocks=(1,)))
    opt = torch.optim.AdamW(score_parameters(model), lr=1e-3, weight_decay=0.0)
    module = next(iter(masked.values()))
    for step in range(2):
        opt.zero_grad()
        for micro in range(4):  # gradient accumulation, with checkpoint recomputes in backward
            x = batch(seed=micro)
            model(x, labels=x).loss.backward()
        assert module.mask_computations == step + 1
        opt.step()


@pytest.mark.parametrize("defer", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", ["local", "global"])
def test_the_step_cache_gives_the_straightforward_gradient_and_update(mode, dtype, defer):
    """W*M and the backward's factor are formed once per optimiser step and shared by its
    micro-batches: the scores' gradient and AdamW update must be, to the bit, those of the
    per-micro-batch formula sum_i dL_i/d(W*M).float() * W.float() (* sign(S) in local mode),
    over two steps (the second after the mask changed). With the sum deferred (kept in the
    cache by fused multiply-adds, handed over with the last micro-batch) autograd sees no score
    gradient before the last, and the sum is the same up to float summation order."""
    torch.manual_seed(0)
    model = tiny_llama().to(dtype)
    reference = copy.deepcopy(model).requires_grad_(False)
    masked = attach_masks(model, MaskSpec(blocks=(0, 2), mode=mode, ratio=0.3, threshold=0.0))
    scores = {n: m.scores.detach().clone().requires_grad_(True) for n, m in masked.items()}
    opt = torch.optim.AdamW(score_parameters(model), lr=1e-2, weight_decay=0.0)
    ref_opt = torch.optim.AdamW(list(scores.values()), lr=1e-2, weight_decay=0.0)
    masks_seen = []
    for step in range(2):
        masks = current_masks(model)
        masks_seen.append(masks)
        leaves = {}
        for name, mask in masks.items():  # the straightforward path: W*M as a free leaf per module
            leaves[name] = nn.Parameter(masked[name].weight * mask)
            reference.get_submodule(name).weight = leaves[name]
        expected = {n: torch.zeros_like(s) for n, s in scores.items()}
        for micro in range(3):
            x = batch(seed=10 * step + micro)
            if defer:
                defer_score_grads(model, micro < 2)
            model(x, labels=x).loss.backward()
            reference(x, labels=x).loss.backward()
            if defer and micro < 2:
                assert all(m.scores.grad is None for m in masked.values())
            for name, leaf in leaves.items():
                through_abs = scores[name].detach().sign() if mode == "local" else 1.0
                expected[name] += leaf.grad.float() * masked[name].weight.float() * through_abs
                leaf.grad = None
        for name, module in masked.items():
            if defer:
                torch.testing.assert_close(module.scores.grad, expected[name], rtol=1e-6, atol=1e-9)
                expected[name] = module.scores.grad.clone()  # the same update from here on
            else:
                assert torch.equal(module.scores.grad, expected[name]), (step, name)
            scores[name].grad = expected[name]
        opt.step()
        ref_opt.step()
        opt.zero_grad(set_to_none=True)
        for name, module in masked.items():
            assert torch.equal(module.scores.detach(), scores[name].detach()), (step, name)
    assert any(not torch.equal(a, b) for a, b in zip(masks_seen[0].values(), masks_seen[1].values()))


def test_a_deferred_score_gradient_never_handed_over_is_an_error_not_a_lost_step():
    model = tiny_llama()
    attach_masks(model, MaskSpec(blocks=(0,)))
    x = batch(seed=0)
    defer_score_grads(model, True)
    model(x, labels=x).loss.backward()
    with pytest.raises(RuntimeError, match="never handed"):
        refresh_masks(model)


def test_an_in_place_change_of_the_weight_is_seen_by_the_next_forward():
    model = tiny_llama()
    masked = attach_masks(model, MaskSpec(blocks=(1,)))
    module = next(iter(masked.values()))
    x = torch.randn(2, module.weight.shape[1])
    module(x).sum().backward()  # forms the step's W*M
    with torch.no_grad():
        module.weight.mul_(2)  # e.g. a revert baseline editing the backbone
    torch.testing.assert_close(module(x), x @ (module.weight * module.mask()).T, rtol=0, atol=1e-6)


def test_initialisations_are_seeded_and_distinct():
    def scores(init, seed):
        model = tiny_llama()
        attach_masks(model, MaskSpec(blocks=(0,), init=init, seed=seed))
        return score_parameters(model)[0].detach().clone()

    assert torch.equal(scores("normal", 1), scores("normal", 1))
    assert not torch.equal(scores("normal", 1), scores("normal", 2))
    assert abs(scores("normal", 0).std().item() - 0.02) < 0.002
    model = tiny_llama()
    attach_masks(model, MaskSpec(blocks=(0,), init="magnitude"))
    module = next(iter(masked_modules(model).values()))
    assert torch.equal(module.scores, module.weight.abs())
    bound = 1 / module.weight.shape[1] ** 0.5
    assert scores("kaiming", 0).abs().max() <= bound


def test_kaiming_bound_follows_fan_in_for_transposed_conv1d():
    # GPT-2's Conv1D stores (in, out): nn.Linear's bound 1/sqrt(fan_in) reads shape[0] there.
    model = tiny_gpt2()
    masked = attach_masks(model, MaskSpec(blocks=(0,), init="kaiming"))
    for name, module in masked.items():
        bound = 1 / module.weight.shape[0] ** 0.5
        assert 0.95 * bound < module.scores.abs().max() <= bound, name


def test_global_mode_learns_its_kept_fraction():
    model = tiny_llama()
    attach_masks(model, MaskSpec(blocks=(0,), mode="global", threshold=-0.035))
    # N(0, 0.02) scores: P(S >= -0.035) = Phi(1.75) ~ 0.96
    assert 0.94 < kept_fraction(model) < 0.98


# --- baselines and materialising ---------------------------------------------------------------

def test_random_and_l1_baselines_keep_exact_counts(make_model):
    model = make_model()
    names = module_names(model.config.model_type, (1, 2), ("q", "k", "v", "o", "up", "down"))
    shapes = {n: model.get_submodule(n).weight.shape for n in names}
    kept = kept_counts_for_ratio(shapes, 0.1)
    rand = random_masks(shapes, kept, seed=3)
    assert all(int(rand[n].sum()) == kept[n] for n in names)
    assert all(torch.equal(rand[n], random_masks(shapes, kept, seed=3)[n]) for n in names)
    assert any(not torch.equal(rand[n], random_masks(shapes, kept, seed=4)[n]) for n in names)
    weights = {n: model.get_submodule(n).weight for n in names}
    l1 = l1_masks(weights, kept)
    for n in names:
        w = weights[n].abs()
        assert int(l1[n].sum()) == kept[n]
        assert w[~l1[n]].max() <= w[l1[n]].min()


def test_baselines_match_a_global_masks_per_module_counts():
    model = tiny_llama()
    attach_masks(model, MaskSpec(blocks=(2,), mode="global", threshold=0.0))
    masks = current_masks(model)
    kept = {n: int(m.sum()) for n, m in masks.items()}
    assert len(set(kept.values())) > 1
    shapes = {n: m.shape for n, m in masks.items()}
    assert {n: int(m.sum()) for n, m in random_masks(shapes, kept, 0).items()} == kept
    weights = {n: model.get_submodule(n).weight for n in masks}
    assert {n: int(m.sum()) for n, m in l1_masks(weights, kept).items()} == kept


def test_materialize_restores_plain_modules_with_equal_logits(make_model):
    model = make_model()
    attach_masks(model, MaskSpec(blocks=(0, 2)))
    x = batch()
    with torch.no_grad():
        masked_logits = model(x).logits
    masks = materialize(model)
    assert not masked_modules(model)
    for name, mask in masks.items():
        module = model.get_submodule(name)
        assert type(module) in (nn.Linear, Conv1D)
        assert torch.all(module.weight[~mask] == 0)
    with torch.no_grad():
        assert torch.equal(model(x).logits, masked_logits)


# --- the straight-through gradient and what it learns -----------------------------------------

def _single_module(mode, n=48, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = nn.Linear(n, n, bias=False)
    base.weight.data = torch.randn(n, n, generator=g)
    base.weight.requires_grad_(False)
    module = MaskedLinear(base, mode, 0.1, -0.035)
    module.scores.data = torch.randn(n, n, generator=g) * 0.02  # the authors' N(0, 0.02) init
    return module, g


@pytest.mark.parametrize("mode", ["local", "global"])
def test_straight_through_gradient_matches_autograd_through_the_selected_quantity(mode):
    module, g = _single_module(mode)
    x = torch.randn(8, 48, generator=g)
    module(x).pow(2).sum().backward()
    # Reference: the authors' form, the STE applied to |S| (local) or to raw S (global), so
    # autograd differentiates the abs() itself.
    scores = module.scores.detach().clone().requires_grad_(True)
    ranked = scores.abs() if mode == "local" else scores
    ste = module.mask().float() + ranked - ranked.detach()
    torch.nn.functional.linear(x, module.weight * ste).pow(2).sum().backward()
    torch.testing.assert_close(module.scores.grad, scores.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mode,min_recall", [("local", 0.95), ("global", 0.9)])
def test_mft_recovers_a_planted_mask_from_normal_scores(mode, min_recall):
    """A teacher W * M_true with 10% pruned: the learned mask must find M_true's pruned weights.

    Chance recall is 0.10; local mode without sign(S) in the gradient reached only ~0.45 here.
    """
    module, g = _single_module(mode)
    n = module.weight.shape[0]
    planted = torch.ones(n * n, dtype=torch.bool)
    planted[torch.randperm(n * n, generator=g)[: n * n - kept_count(n * n, 0.1)]] = False
    planted = planted.view(n, n)
    teacher = module.weight * planted
    optimizer = torch.optim.Adam([module.scores], lr=1e-3)
    for _ in range(200):
        x = torch.randn(64, n, generator=g)
        loss = (module(x) - x @ teacher.T).pow(2).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    mask = module.mask()
    recall = float((~mask & ~planted).sum() / (~planted).sum())
    kept_kept = float((mask & planted).sum() / planted.sum())
    assert recall >= min_recall, f"{mode}: recall of planted pruned weights {recall:.3f}"
    assert kept_kept >= 0.99, f"{mode}: only {kept_kept:.3f} of the planted kept weights kept"
