"""The demo's full fine-tuning: past its peak, with the best epoch kept as the backbone.

FFT goes through the same `run_job` the sweep's continued-FFT control uses, on one process
(LocalSession, no Ray), with TrainSettings' linear decay: a constant rate never converged and
made MFT's "gain" mere extra training (docs/design.md).
"""

from __future__ import annotations

import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from mft_search.core.backbone import BackboneSpec, load_model, load_tokenizer
from mft_search.core.data import DataSpec
from mft_search.core.evaluation.spec import EvalSpec
from mft_search.train.job import run_job
from mft_search.train.session import LocalSession
from mft_search.train.spec import TrialJob
from mft_search.train.step import TrainSettings

if TYPE_CHECKING:
    from mft_search.demo.assets import DemoAssets, DemoSize

Log = Callable[[str], None]
TEMPLATE = "Question: {prompt}\nAnswer:"  # the GSM8K evaluator's prompt, so SFT and evaluation agree
WARMUP = 0.05


def sft_data_spec(train_file: Path) -> DataSpec:
    """The SFT data of the demo domain: what FFT trained on, and what MFT trains on (demo.yaml)."""
    return DataSpec(source=str(train_file), prompt_field="question", response_field="answer", template=TEMPLATE,
                    use_chat_template=False, max_length=256)


def eval_spec(source: str, max_new_tokens: int) -> EvalSpec:
    """GSM8K-style strict accuracy ("#### N") on a split of the demo domain, 0-shot as demo.yaml."""
    return EvalSpec(evaluator="gsm8k", source=source, num_fewshot=0, max_new_tokens=max_new_tokens, batch_size=64,
                    use_chat_template=False)


def fine_tune(assets: DemoAssets, size: DemoSize, log: Log) -> dict:
    """FFT for `size.fft_epochs` epochs; copies the best epoch (validation accuracy) to `backbone/`."""
    start = time.perf_counter()
    work = assets.root / "fft"
    settings = TrainSettings(lr=size.fft_lr, epochs=size.fft_epochs, global_batch_size=size.fft_batch,
                             micro_batch_size=size.fft_batch, warmup_ratio=WARMUP, weight_decay=0.0, seed=size.seed)
    job = TrialJob(name="demo-fft", kind="fft", backbone=BackboneSpec(source=str(assets.pretrained)),
                   data=sft_data_spec(assets.train), evaluation=eval_spec(str(assets.validation), size.max_new_tokens),
                   train=settings, cache_dir=str(work / "cache"), artifact_dir=str(work / "epochs"))
    log(f"Fine-tuning (FFT) for {size.fft_epochs} epochs at peak lr {size.fft_lr:g}, linear decay; "
        f"validation accuracy each epoch:")
    session = _LoggingSession(work / "session", log)
    run_job(job, session)
    accuracies = [r["metric"] for r in session.reports]
    best = max(range(len(accuracies)), key=lambda i: (accuracies[i], -i))  # earliest of equal epochs
    shutil.copytree(work / "epochs" / f"report_{best + 1:03d}", assets.backbone)
    test = _test_accuracies(assets, work / "epochs", best + 1, len(accuracies), size.max_new_tokens)
    shutil.rmtree(work)
    facts = _facts(session.reports, best, size, test)
    facts["seconds"] = round(time.perf_counter() - start, 1)
    if not facts["peak_before_last_epoch"]:
        log("  warning: the last FFT epoch is within one standard error of the best: no overfitting peak")
    return facts


class _LoggingSession(LocalSession):
    def __init__(self, directory, log: Log) -> None:
        super().__init__(directory)
        self.log, self.start = log, time.perf_counter()

    def report(self, metrics: dict[str, float], checkpoint_dir) -> None:
        super().report(metrics, checkpoint_dir)
        self.log(f"  FFT epoch {metrics['epoch']:.0f}: validation accuracy {metrics['metric']:.3f}, "
                 f"train loss {metrics['train_loss']:.3f} ({time.perf_counter() - self.start:.0f} s)")


def _test_accuracies(assets: DemoAssets, epochs_dir: Path, best: int, last: int, max_new_tokens: int) -> dict:
    """Test accuracy of the best and the last epoch: the peak is real on unseen problems too."""
    spec = eval_spec(str(assets.test), max_new_tokens)
    evaluator = spec.make_evaluator()
    problems = evaluator.load(spec.source)
    out = {}
    for label, epoch in (("best_epoch", best), ("last_epoch", last)):
        backbone = BackboneSpec(source=str(epochs_dir / f"report_{epoch:03d}"))
        model = load_model(backbone, torch.float32)
        out[label] = evaluator.evaluate(model, load_tokenizer(backbone), problems, spec.generation()).metrics["accuracy"]
    return out


def _facts(reports: list[dict[str, float]], best: int, size: DemoSize, test: dict) -> dict:
    accuracies = [round(r["metric"], 4) for r in reports]
    steps_per_epoch, total = int(reports[0]["step"]), int(reports[-1]["step"])
    warmup = math.ceil(total * WARMUP)  # TrainSettings' schedule: the rate the best epoch ended at
    lr_at_best = size.fft_lr * (total - (best + 1) * steps_per_epoch) / (total - warmup)
    return {
        "lr": size.fft_lr,
        "schedule": f"linear warm-up ({WARMUP:.0%}) then linear decay to 0",
        "epochs": len(reports),
        "validation_accuracy_per_epoch": accuracies,
        "train_loss_per_epoch": [round(r["train_loss"], 4) for r in reports],
        "best_epoch": best + 1,
        "best_validation_accuracy": accuracies[best],
        "last_validation_accuracy": accuracies[-1],
        # A drop within one standard error of the best is noise, not an overfitting peak.
        "peak_before_last_epoch": accuracies[-1] < accuracies[best] - _standard_error(accuracies[best], size.validation),
        "lr_at_best_epoch": lr_at_best,
        "test_accuracy_best_epoch": round(test["best_epoch"], 4),
        "test_accuracy_last_epoch": round(test["last_epoch"], 4),
    }


def _standard_error(accuracy: float, problems: int) -> float:
    return math.sqrt(accuracy * (1 - accuracy) / max(1, problems))
