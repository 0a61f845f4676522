"""The Wanda, revert-to-pretrained and LoRA baselines, each checked for its own semantics on tiny
models built from configs (no files, no Ray)."""

import warnings

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from mft_search.core.architectures import module_names
from mft_search.core.baselines import l1_masks, random_masks
from mft_search.core.calibration import calibration_batches, input_feature_norms
from mft_search.core.lora import LoraSpec, attach_lora, lora_parameters, lora_target_modules, merge_lora
from mft_search.core.masking import MaskSpec, multiply_masks_in, spec_module_names
from mft_search.core.revert import revert_to_pretrained
from mft_search.core.wanda import row_quotas, wanda_masks, wanda_scores
from mft_search.demo.tiny import tiny_gpt2, tiny_llama
from mft_search.errors import ConfigError


class OneLayer(nn.Module):
    """A single linear layer called like a causal LM: `input_ids` carries its (B, T, in) inputs."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, input_ids, attention_mask=None, use_cache=None):
        return self.layer(input_ids)


# Two real tokens with inputs (3, 0, 0) and (4, 1, 2), then a padded one that must not count:
# ||X_j|| = (5, 1, 2).
INPUTS = torch.tensor([[[3.0, 0.0, 0.0], [4.0, 1.0, 2.0], [100.0, 100.0, 100.0]]])
BATCH = {"input_ids": INPUTS, "attention_mask": torch.tensor([[1, 1, 0]])}
WEIGHT = torch.tensor([[1.0, -2.0, 0.5], [-0.1, 3.0, 1.25]])  # scores [[5, 2, 1], [0.5, 3, 2.5]]


def _linear(weight: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(weight.size(1), weight.size(0), bias=False)
    with torch.no_grad():
        layer.weight.copy_(weight)
    return layer


def _token_batches(n: int = 6, seed: int = 0) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(3, 400, (int(torch.randint(5, 20, (1,), generator=gen)),), generator=gen).tolist()
            for _ in range(n)]
    return calibration_batches(rows, n=n, batch_size=3)


# ---------------------------------------------------------------- Wanda


def test_wanda_scores_are_abs_weight_times_input_norm_of_real_tokens():
    model = OneLayer(_linear(WEIGHT))
    norms = input_feature_norms(model, ["layer"], [BATCH])["layer"]
    assert torch.allclose(norms, torch.tensor([5.0, 1.0, 2.0]))
    assert torch.allclose(wanda_scores(WEIGHT, norms), torch.tensor([[5.0, 2.0, 1.0], [0.5, 3.0, 2.5]]))


def test_wanda_keeps_per_row_with_the_extra_weight_where_the_next_score_is_highest():
    model = OneLayer(_linear(WEIGHT))
    four = wanda_masks(model, {"layer": 4}, [BATCH])["layer"]  # 2 per row
    assert four.tolist() == [[True, True, False], [False, True, True]]
    # 3 = 1 per row + 1: row 1's second-best (2.5) beats row 0's (2), so row 1 keeps two.
    three = wanda_masks(model, {"layer": 3}, [BATCH])["layer"]
    assert three.tolist() == [[True, False, False], [False, True, True]]
    # |W| alone keeps 3, 2 and 1.25: the activations change the choice.
    assert not torch.equal(three, l1_masks({"layer": WEIGHT}, {"layer": 3})["layer"])
    assert torch.equal(model.layer.weight, WEIGHT)  # restored after the calibration's pruning


def test_row_quotas_sum_to_the_kept_count_and_differ_by_at_most_one():
    scores = torch.rand(7, 5, generator=torch.Generator().manual_seed(1))
    for kept in range(0, 36):
        quotas = row_quotas(scores, kept)
        assert int(quotas.sum()) == kept and int(quotas.max() - quotas.min()) <= 1
    with pytest.raises(ConfigError, match="kept count 36"):
        row_quotas(scores, 36)


def test_wanda_masks_keep_exact_counts_on_a_llama_and_leave_its_weights_alone():
    model = tiny_llama()
    names = spec_module_names(model, MaskSpec(blocks=(1, 2)))
    before = {n: p.clone() for n, p in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    kept = {n: int(torch.randint(1, model.get_submodule(n).weight.numel(), (1,), generator=gen)) for n in names}
    masks = wanda_masks(model, kept, _token_batches())
    for name in names:
        mask = masks[name]
        assert mask.dtype == torch.bool and mask.shape == model.get_submodule(name).weight.shape
        assert int(mask.sum()) == kept[name]
        per_row = mask.sum(1)
        assert int(per_row.max() - per_row.min()) <= 1
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


def test_wanda_calibrates_each_block_behind_the_earlier_blocks_pruned():
    model = tiny_llama()
    names = spec_module_names(model, MaskSpec(blocks=(0, 1), kinds=("down",)))
    kept = {n: model.get_submodule(n).weight.numel() // 2 for n in names}
    batches = _token_batches()
    masks = wanda_masks(model, kept, batches)
    first, second = names
    dense = input_feature_norms(model, [second], batches)[second]
    multiply_masks_in(model, {first: masks[first]})
    pruned = input_feature_norms(model, [second], batches)[second]
    assert not torch.allclose(dense, pruned)
    expected = wanda_masks(model, {second: kept[second]}, batches)[second]
    assert torch.equal(masks[second], expected)


@pytest.mark.parametrize("out_features, in_features", [(6, 4), (5, 5)])  # square: no shape error to hide behind
def test_wanda_on_conv1d_scores_output_rows_of_the_transposed_weight(out_features, in_features):
    weight = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(2))
    conv = Conv1D(out_features, in_features)  # stores (in, out)
    with torch.no_grad():
        conv.weight.copy_(weight.t())
        conv.bias.zero_()
    batch = {"input_ids": torch.randn(2, 5, in_features, generator=torch.Generator().manual_seed(3)),
             "attention_mask": torch.ones(2, 5, dtype=torch.long)}
    linear_mask = wanda_masks(OneLayer(_linear(weight)), {"layer": 13}, [batch])["layer"]
    conv_mask = wanda_masks(OneLayer(conv), {"layer": 13}, [batch])["layer"]
    assert conv_mask.shape == (in_features, out_features) and torch.equal(conv_mask, linear_mask.t())
    per_output = conv_mask.sum(0)  # an output row of Conv1D is a stored column
    assert int(per_output.max() - per_output.min()) <= 1


def test_wanda_masks_on_gpt2_keep_exact_counts_without_dropout_in_the_statistics():
    model = tiny_gpt2()
    names = spec_module_names(model, MaskSpec(blocks=(2,)))
    kept = {n: int(0.9 * model.get_submodule(n).weight.numel()) + 1 for n in names}
    batches = _token_batches()
    masks = wanda_masks(model, kept, batches)
    assert {n: int(m.sum()) for n, m in masks.items()} == kept
    model.train()  # GPT-2's dropout is 0.1: calibration must not see it
    again = wanda_masks(model, kept, batches)
    assert model.training and all(torch.equal(masks[n], again[n]) for n in names)


def test_calibration_batches_are_a_seeded_sample_cut_to_length():
    rows = [list(range(3, 3 + k)) for k in range(1, 41)]
    a = calibration_batches(rows, n=10, seed=5, max_length=12, batch_size=4)
    b = calibration_batches(rows, n=10, seed=5, max_length=12, batch_size=4)
    c = calibration_batches(rows, n=10, seed=6, max_length=12, batch_size=4)
    assert [len(x["input_ids"]) for x in a] == [4, 4, 2]
    assert all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, b))
    assert not all(torch.equal(x["input_ids"], y["input_ids"]) for x, y in zip(a, c))
    assert max(x["input_ids"].size(1) for x in a) <= 12
    assert sum(int(x["attention_mask"].sum()) for x in a) == sum(
        min(int(x["attention_mask"][i].sum()), 12) for x in a for i in range(len(x["input_ids"])))
    assert len(calibration_batches(rows[:3], n=128, batch_size=8)[0]["input_ids"]) == 3


# ---------------------------------------------------------------- revert


def _fine_tuned_pair():
    pretrained = tiny_llama(seed=0)
    fine_tuned = tiny_llama(seed=0)
    with torch.no_grad():
        for p in fine_tuned.parameters():
            p.add_(0.01 * torch.randn_like(p))
    names = spec_module_names(fine_tuned, MaskSpec(blocks=(1,)))
    shapes = {n: fine_tuned.get_submodule(n).weight.shape for n in names}
    masks = random_masks(shapes, {n: int(0.9 * s.numel()) for n, s in shapes.items()}, seed=0)
    return pretrained, fine_tuned, masks


@pytest.mark.parametrize("as_state_dict", [False, True])
def test_revert_restores_exactly_the_pruned_positions_and_nothing_else(as_state_dict):
    pretrained, model, masks = _fine_tuned_pair()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    revert_to_pretrained(model, pretrained.state_dict() if as_state_dict else pretrained, masks)
    pre = pretrained.state_dict()
    for key, value in model.state_dict().items():
        name = key.removesuffix(".weight")
        if name in masks:
            mask = masks[name]
            assert torch.equal(value[mask], before[key][mask])  # kept: bit-identical
            assert torch.equal(value[~mask], pre[key][~mask])  # removed: the pretrained weight
            assert not torch.equal(value[~mask], before[key][~mask])
        else:
            assert torch.equal(value, before[key])


def test_revert_refuses_mismatched_names_and_shapes_before_changing_anything():
    pretrained, model, masks = _fine_tuned_pair()
    before = {n: p.clone() for n, p in model.state_dict().items()}
    first = next(iter(masks))
    state = dict(pretrained.state_dict())
    del state[f"{first}.weight"]
    with pytest.raises(ConfigError, match=f"pretrained backbone has no weight '{first}.weight'"):
        revert_to_pretrained(model, state, masks)
    last = list(masks)[-1]
    with pytest.raises(ConfigError, match=f"{last}'s pretrained weight has shape"):
        revert_to_pretrained(model, {**pretrained.state_dict(), f"{last}.weight": torch.zeros(3, 3)}, masks)
    with pytest.raises(ConfigError, match=f"{last}'s mask has shape"):
        revert_to_pretrained(model, pretrained, {**masks, last: masks[last].t()})
    with pytest.raises(ConfigError, match="no module 'model.layers.9.mlp.up_proj'"):
        revert_to_pretrained(model, pretrained, {"model.layers.9.mlp.up_proj": masks[first]})
    assert all(torch.equal(p, before[n]) for n, p in model.state_dict().items())


# ---------------------------------------------------------------- LoRA


def test_lora_targets_every_block_s_maskable_modules_by_default():
    model = tiny_llama()
    assert lora_target_modules(model, LoraSpec()) == module_names(
        "llama", (0, 1, 2, 3), ("q", "k", "v", "o", "gate", "up", "down"))
    assert lora_target_modules(model, LoraSpec(blocks=(2,), kinds=("q", "v"))) == [
        "model.layers.2.self_attn.q_proj", "model.layers.2.self_attn.v_proj"]
    with pytest.raises(ConfigError, match="lora.rank"):
        LoraSpec(rank=0)


def test_lora_trains_only_the_adapters_and_merges_into_the_same_model():
    model = tiny_llama(layers=2)
    base = [(p, p.detach().clone()) for p in model.parameters()]
    peft_model = attach_lora(model, LoraSpec(rank=4, alpha=8, dropout=0.05))
    adapters = lora_parameters(peft_model)
    names = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert names and all("lora_" in n for n in names)
    assert len(names) == 2 * 14  # A and B of 7 modules in each of 2 blocks
    start = [p.detach().clone() for p in adapters]
    # No weight decay: A moves only by its gradient, which is zero until B has left 0 (step 2).
    optimizer = torch.optim.AdamW(adapters, lr=1e-2, weight_decay=0.0)
    ids = torch.randint(3, 400, (2, 12), generator=torch.Generator().manual_seed(0))
    peft_model.train()
    for _ in range(2):
        peft_model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert all(torch.equal(p, before) for p, before in base)
    assert all(not torch.equal(p, s) for p, s in zip(adapters, start))
    peft_model.eval()
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        plain = merge_lora(peft_model)
        merged = plain(input_ids=ids).logits
    assert type(plain.get_submodule("model.layers.0.self_attn.q_proj")) is nn.Linear
    assert torch.allclose(adapted, merged, atol=1e-5)
    assert not torch.allclose(merged, tiny_llama(layers=2)(input_ids=ids).logits, atol=1e-3)


def test_lora_on_gpt2_conv1d_merges_without_peft_flipping_the_layout():
    model = tiny_gpt2()
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*fan_in_fan_out.*")
        peft_model = attach_lora(model, LoraSpec(rank=2, alpha=2, dropout=0.0))
    with torch.no_grad():
        for p in lora_parameters(peft_model):
            p.add_(0.02)  # B = 0 at start: give the adapters something to merge
    peft_model.eval()  # get_peft_model sets training mode: GPT-2 has dropout
    ids = torch.randint(3, 400, (1, 8), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        adapted = peft_model(input_ids=ids).logits
        plain = merge_lora(peft_model)
        merged = plain(input_ids=ids).logits
    assert type(plain.get_submodule("transformer.h.0.attn.c_attn")) is Conv1D
    assert torch.allclose(adapted, merged, atol=1e-5)
    assert not torch.allclose(merged, tiny_gpt2()(input_ids=ids).logits, atol=1e-2)
