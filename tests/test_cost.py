"""The dry run's cost plan against hand computations, its JSON and options, and the probe's budgets.

Model configs are built offline (the search_spaces' hub ids cannot be downloaded here)."""

import json
import pickle

import pytest
import yaml
from transformers import LlamaConfig

from mft_search import cli
from mft_search.config.cost import ACCELERATORS, DataSizes, cost_plan
from mft_search.config.schema import load_config_file
from mft_search.core import cost_model as cm
from mft_search.core.cost_model import ModelShape, TrainShape
from mft_search.sweep import main
from mft_search.tune.budget import Budget, budget_stop

TINY = dict(vocab_size=500, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
            num_key_value_heads=2)
LLAMA_8B = LlamaConfig(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8)


def test_parameters_and_scores_are_counted_exactly():
    from transformers import LlamaForCausalLM

    from mft_search.core.masking import MaskSpec, attach_masks, score_parameters

    config = LlamaConfig(**TINY)
    model = LlamaForCausalLM(config)
    shape = ModelShape.of(config)
    assert shape.params() == sum(p.numel() for p in model.parameters())
    attach_masks(model, MaskSpec(blocks=(1, 2), kinds=("q", "v", "down")))
    masked = shape.masked_params((1, 2), ("q", "v", "down"))
    assert masked == sum(s.numel() for s in score_parameters(model)) == 2 * (64 * 64 + 64 * 32 + 128 * 64)
    step = TrainShape(micro_batch=2, seq=16, checkpointing=False)
    memory = cm.train_memory(shape, masked, backward_blocks=3, step=step, dtype_bytes=2)
    assert memory.weights == shape.params() * 2  # frozen, in their dtype
    assert memory.trainable == masked * (4 + 1 + 2 * 2)  # fp32 scores; the step's bool mask, W*M, W*sign(S)
    assert memory.gradients == masked * 4 and memory.optimizer == masked * 8  # AdamW's two fp32 moments
    sharded = cm.train_memory(shape, masked, 3, step, 2, shards=4)
    assert sharded.weights == memory.weights / 4 and sharded.optimizer == memory.optimizer / 4
    fft = cm.train_memory(shape, None, 4, step, 2)
    assert fft.trainable + fft.gradients + fft.optimizer == shape.params() * 16  # fp32 masters, grads, moments


def test_flops_follow_the_stated_model():
    shape = ModelShape.of(LlamaConfig(**TINY))
    seq, n = 16, shape.matmul_params()
    attn = 4 * (seq / 2) * 64  # scores and weighted sum, causal: half the sequence on average
    assert cm.forward_flops_per_token(shape, seq) == 2 * n + 4 * attn
    fft = cm.train_flops_per_token(shape, None, None, False, seq)
    assert fft == 3 * 2 * n + 3 * 4 * attn  # forward, input grads, weight grads (attention: 2x backward)
    blocks = (0, 1)
    mft = cm.train_flops_per_token(shape, blocks, None, False, seq)
    assert mft == 2 * n + 4 * attn + 2 * n + 2 * 4 * attn + 2 * shape.masked_params(blocks, None)
    deep = cm.train_flops_per_token(shape, (2, 3), None, False, seq)
    assert deep < mft < fft  # no backward below the lowest masked block
    assert cm.train_flops_per_token(shape, blocks, None, True, seq) == mft + 4 * (2 * shape.block_linear() + attn)


def test_lora_adapters_and_flops_are_counted_exactly():
    from transformers import LlamaForCausalLM

    from mft_search.core.lora import LoraSpec, attach_lora, lora_parameters

    config = LlamaConfig(**TINY)
    shape = ModelShape.of(config)
    adapted = attach_lora(LlamaForCausalLM(config), LoraSpec(rank=4))
    assert shape.adapter_params(4) == sum(p.numel() for p in lora_parameters(adapted))
    seq, fft = 16, cm.train_flops_per_token(shape, None, None, False, 16)
    # FFT's input-gradient backward, no base weight gradients, the adapters' forward and backward
    assert cm.lora_flops_per_token(shape, 4, False, seq) == fft - 2 * shape.matmul_params() + 6 * shape.adapter_params(4)


def test_the_plan_counts_the_fft_stage_and_lora_in_place_of_a_continued_fft_run():
    plan = _plan("h100", "stages.fft={train: {epochs: 3}}", "baselines=[unmasked, random, revert, lora, continued_fft]",
                 "domains.0.fft_selection={evaluator: gsm8k, source: fft.jsonl}", "seeds=2")
    runs = {r.kind: r for r in plan.studies[0].runs}
    assert set(runs) == {"probe trial", "refine trial", "seed re-run", "evaluations", "fft stage", "lora"}
    assert runs["fft stage"].count == 1  # Continued FFT is the stage's last point: one run, not re-seeded
    assert runs["lora"].count == 2  # once per seed
    assert runs["lora"].flops < runs["fft stage"].flops  # same data; LoRA forms no base weight gradient
    assert runs["lora"].memory.total() < runs["fft stage"].memory.total()  # no fp32 masters and moments
    # both splits: unmasked, the pretrained model, continued FFT, and per seed (2) the learned mask,
    # random, revert, best and continued LoRA
    assert "validation x13 models, test x13" in runs["evaluations"].detail


def _plan(gpu, *sets, sizes=DataSizes(60000, 1200, 0, 1319)):
    cfg = load_config_file("search_spaces/llama3_1_8b_math.yaml", None, list(sets))
    return cost_plan(cfg, {"llama3_1_8b_math_fft": LLAMA_8B}, {"math": sizes}, gpu)


def test_an_8b_trial_on_a_24gb_gpu_without_fsdp_does_not_fit_and_the_plan_names_the_fix():
    plan = _plan("l4", "resources.workers_per_trial=1")
    probe = plan.studies[0].runs[0]
    assert probe.kind == "probe trial" and probe.fits is False
    assert any("resources.strategy: fsdp" in fix for fix in probe.fixes)
    text = "\n".join(plan.lines())
    assert "DOES NOT FIT in 24 GB of l4" in text and "to fit:" in text
    roomy = _plan("h200").studies[0].runs[0]
    assert roomy.fits and roomy.memory.total() < probe.memory.total() * 2
    # time: FLOPs over peak x utilisation x the trial's GPUs; GPU-hours x those GPUs
    rate = ACCELERATORS["h200"].peak_flops * 0.4 * 4
    assert roomy.seconds == pytest.approx(roomy.flops / rate) and roomy.gpu_hours == pytest.approx(roomy.seconds * 4 / 3600)


def test_budgets_are_estimated_and_a_gpu_budget_without_gpus_never_binds():
    plan = _plan("h100", "search.max_gpu_hours=5", "search.time_budget_s=3600")
    assert any("search.max_gpu_hours 5" in line and "trials start within it" in line for line in plan.budget)
    cpu = _plan(None, "resources.gpus_per_worker=0", "search.max_gpu_hours=5")
    assert cpu.accelerator.name == "cpu" and cpu.totals()["gpu_hours"] == 0
    assert any("never binds" in line for line in cpu.budget)
    unknown = _plan("h100", sizes=DataSizes(None, None, 0, 1319))
    assert unknown.totals()["tokens_trained"] is None and "unknown" in "\n".join(unknown.lines())


def _tiny_config(tmp_path, backbone, data_dir) -> str:
    cfg = {"name": "cost", "storage": str(tmp_path / "runs"), "backbones": [{"source": backbone.source, "name": "tiny"}],
           "domains": [{"name": "gsm", "train": {"source": str(data_dir / "train.jsonl"), "prompt_field": "question",
                                                  "response_field": "answer", "validation_fraction": 0.25,
                                                  "max_length": 128},
                        "validation": None,
                        "test": {"evaluator": "gsm8k", "source": str(data_dir / "test.jsonl"), "limit": 8}}],
           "train": {"global_batch_size": 16, "micro_batch_size": 8},
           "search": {"num_trials": 4, "space": {"layer_group": [[0, 1], [2, 3]], "ratio": [0.1, 0.2]}},
           "resources": {"gpus_per_worker": 1}}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def test_dry_run_json_holds_the_cost_per_run_and_in_total(tmp_path, tiny_backbone, problems_dir, capsys):
    config = _tiny_config(tmp_path, tiny_backbone, problems_dir)
    assert main(["--config", config, "--dry-run", "--json", "--gpu", "a100-40gb"]) == 0
    plan = json.loads(capsys.readouterr().out)
    cost = plan["cost"]
    assert cost["accelerator"]["name"] == "a100-40gb" and "studies (backbone x domain): 1 x 1 = 1" in plan["plan"]
    runs = {r["kind"]: r for r in cost["studies"][0]["runs"]}
    assert set(runs) == {"probe trial", "refine trial", "seed re-run", "evaluations", "continued_fft"}
    # seeds: 3 by default: the selected point twice more, the continued FFT three times in all
    assert runs["seed re-run"]["runs_per_study"] == 2 and runs["continued_fft"]["runs_per_study"] == 3
    for run in runs.values():
        assert {"memory_per_worker_gb", "gpu_hours", "tokens_trained", "tokens_generated", "flops"} <= set(run)
    # 320 rows: 80 carved out for validation, 240 train; the probe's 10% is 24 rows, one global batch of 16
    assert cost["studies"][0]["train_examples"] == 240
    assert runs["probe trial"]["tokens_trained"] == 2 * 16 * 128 and runs["probe trial"]["fits"]
    # 8 problems x lm-eval's budget x 11 models: unmasked, random, l1, MFT, continued FFT, and for
    # each of the 2 extra seeds MFT, random and continued FFT again
    assert runs["evaluations"]["tokens_generated"] == 8 * 11 * 256
    totals = cost["totals"]
    assert totals["gpu_hours"] == pytest.approx(sum(r["gpu_hours"] * r["runs_per_study"] for r in runs.values()))
    assert {"memory_per_worker_gb", "tokens_trained", "tokens_generated", "flops", "wall_s"} <= set(totals)
    # the text plan prints the same after the existing lines
    assert main(["--config", config, "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert text.index("concurrency:") < text.index("cost on h100") and "probe trial x4" in text


@pytest.mark.parametrize("argv, option", [
    (["--gpu", "h1000"], "--gpu: unknown accelerator 'h1000' (did you mean 'h100'?); choose one of h100,"),
    (["--json"], "--json: prints the dry run's plan; add --dry-run"),
    (["--utilisation", "1.5"], "--utilisation: 1.5 is outside (0, 1]"),
])
def test_bad_cost_options_exit_2_naming_the_option(argv, option, capsys):
    assert cli.run(main, [*argv, "--dry-run"] if argv != ["--json"] else argv) == 2
    assert capsys.readouterr().err.startswith(f"error: {option}")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_budget_is_spent_by_wall_time_or_gpu_hours_and_survives_a_restart(tmp_path):
    clock = Clock()
    budget = Budget(time_budget_s=60, max_gpu_hours=None, gpus_per_trial=0, note_path=tmp_path / "stop.json",
                    clock=clock)
    budget.start()
    clock.now += 59
    assert budget.spent() is None
    restored = pickle.loads(pickle.dumps(budget))  # as Tune saves the searcher, and a new driver reads it
    restored.clock = clock
    clock.now += 1000  # the driver was down: not counted
    restored.start()
    clock.now += 1
    assert restored.elapsed() == pytest.approx(60) and "search.time_budget_s 60 s spent" in restored.spent()
    restored.record_stop(restored.spent())
    restored.record_stop("another reason")  # the first reason stays
    assert json.loads((tmp_path / "stop.json").read_text())["reason"].startswith("search.time_budget_s")

    gpus = Budget(time_budget_s=None, max_gpu_hours=1.0, gpus_per_trial=4)
    gpus.note("a", {"time_total_s": 600.0})
    gpus.note("a", {"time_total_s": 300.0})  # an older report never lowers a trial's time
    gpus.note("b", {"time_total_s": 299.0})
    assert gpus.gpu_hours() == pytest.approx(899 * 4 / 3600) and gpus.spent() is None
    gpus.note("b", {"time_total_s": 300.0})
    assert "search.max_gpu_hours 1 spent" in gpus.spent()
    cpu = Budget(time_budget_s=None, max_gpu_hours=0.001, gpus_per_trial=0)
    cpu.note("a", {"time_total_s": 1e6})
    assert cpu.spent() is None and not cpu.active  # no GPUs: the GPU budget never binds
    assert budget_stop(tmp_path) is None
