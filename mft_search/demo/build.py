"""Building the demo's assets offline: data splits, tokenizer, pre-trained base.

    assets = build_demo()            # minutes the first time, then instant (cached)
    assets.pretrained                # ~/.cache/mft_search/demo/v3/pretrained: what the fft stage fine-tunes

The sweep's fft stage (demo.yaml) fine-tunes the base with a decaying learning rate well past its
best epoch, picked on the FFT-selection split, so that "MFT beats the best FFT" is measured against
a real peak and not against an under-trained model (docs/design.md, "The embedded demo").
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from mft_search.core import files
from mft_search.core.backbone import BackboneSpec
from mft_search.demo.assets import COMPLETE, VERSION, DemoAssets, DemoSize, default_cache_dir
from mft_search.demo.domain import TEMPLATE, sft_data_spec
from mft_search.demo.pretrain import pack_documents, pretrain
from mft_search.demo.problems import Splits, WordProblem, make_splits, pretraining_corpus
from mft_search.demo.tiny import tiny_llama, tiny_tokenizer
from mft_search.train.job import run_job
from mft_search.train.session import LocalSession
from mft_search.train.spec import TrialJob, report_artifact
from mft_search.train.step import TrainSettings

Log = Callable[[str], None]


def build_demo(cache_dir: Path | None = None, *, size: DemoSize = DemoSize(), log: Log = print) -> DemoAssets:
    """The demo assets under `cache_dir`, built first unless a complete build is there.

    The build runs in a sibling temporary directory renamed into place only once complete, so a
    killed build never leaves a directory that looks finished; a directory without the marker
    is rebuilt.
    """
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    if (root / COMPLETE).exists():
        return DemoAssets(root)
    root.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(root)
    work = root.parent / f"{root.name}.building-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        log(f"Building the demo's pre-trained base and data in {root} (once; a few minutes on 2 CPU cores)")
        _build(work, size, log)
        (work / COMPLETE).write_text(VERSION + "\n", encoding="utf-8")
        _install(work, root)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return DemoAssets(root)


def _remove_abandoned_builds(root: Path) -> None:
    """Temporary build directories whose process is gone (a killed build) are deleted."""
    files.remove_abandoned(root.parent, f"{root.name}.building-")


def _install(work: Path, root: Path) -> None:
    """Move the finished build into place; a concurrent build that finished first wins."""
    if root.exists() and not (root / COMPLETE).exists():
        shutil.rmtree(root)
    try:
        work.rename(root)
    except OSError:
        if not (root / COMPLETE).exists():
            raise


def _build(work: Path, size: DemoSize, log: Log) -> None:
    start = time.perf_counter()
    work.mkdir(parents=True)
    assets = DemoAssets(work)
    splits = make_splits(size.seed, size.train, size.fft_selection, size.validation, size.test, size.instruct)
    _write_splits(assets, splits)
    facts: dict = {"version": VERSION, "seed": size.seed, "size": asdict(size),
                   "splits": {"train": "2-step problems, 4 of 8 phrasings",
                              "fft_selection_validation_and_test": "2- and 3-step problems, all 8 phrasings"}}
    facts["pretrain"] = _pretrain(assets, splits, size, log)
    if size.instruct:
        facts["splits"]["instruct"] = "1- to 3-step problems, all 8 phrasings"
        facts["instruct"] = _instruct(assets, work, size, log)
    facts["total_seconds"] = round(time.perf_counter() - start, 1)
    assets.facts_path.write_text(json.dumps(facts, indent=2) + "\n", encoding="utf-8")
    log(f"Demo base built in {facts['total_seconds']:.0f} s: pre-training loss {facts['pretrain']['final_loss']:.3f}")


def _write_splits(assets: DemoAssets, splits: Splits) -> None:
    written = [(assets.train, splits.train), (assets.fft_selection, splits.fft_selection),
               (assets.validation, splits.validation), (assets.test, splits.test)]
    if splits.instruct:  # only a build with instruction tuning has its problems
        written.append((assets.instruct, splits.instruct))
    for path, problems in written:
        path.write_text("".join(json.dumps(p.record()) + "\n" for p in problems), encoding="utf-8")


def _sft_text(problem: WordProblem) -> str:
    return TEMPLATE.format(prompt=problem.question) + problem.answer


def _pretrain(assets: DemoAssets, splits: Splits, size: DemoSize, log: Log) -> dict:
    start = time.perf_counter()
    documents = pretraining_corpus(size.seed + 1, size.documents)
    # The SFT format's words ("Question", "Answer", "####") become tokens too.
    tokenizer = tiny_tokenizer(documents[:5000] + [_sft_text(p) for p in splits.train], size.vocab_size)
    rows = pack_documents(tokenizer, documents, size.pretrain.seq_len)
    model = tiny_llama(vocab_size=len(tokenizer), hidden=size.hidden, layers=size.layers,
                       intermediate=size.intermediate, heads=4, kv_heads=2, seed=size.seed)
    params = sum(p.numel() for p in model.parameters())
    log(f"Pre-training a {params / 1e6:.2f}M-parameter Llama on {rows.numel() / 1e6:.1f}M tokens "
        f"({size.pretrain.steps} steps)")
    loss = pretrain(model, rows, size.pretrain, log)
    model.save_pretrained(assets.pretrained)
    tokenizer.save_pretrained(assets.pretrained)
    return {"parameters": params, "tokens": rows.numel(), "steps": size.pretrain.steps,
            "final_loss": round(loss, 4), "seconds": round(time.perf_counter() - start, 1)}


def _instruct(assets: DemoAssets, work: Path, size: DemoSize, log: Log) -> dict:
    """Fine-tune the pre-trained model on the broad instruction problems (the SFT machinery the
    fft stage uses, without Ray) and put the last epoch's weights in its place."""
    start = time.perf_counter()
    log(f"Instruction-tuning it on {size.instruct} broad problems ({size.instruct_epochs} epochs)")
    run = work / "instruct_run"
    job = TrialJob(name="instruct", kind="fft", backbone=BackboneSpec(source=str(assets.pretrained)),
                   data=sft_data_spec(assets.instruct),
                   train=TrainSettings(lr=size.instruct_lr, epochs=size.instruct_epochs, global_batch_size=16,
                                       micro_batch_size=16, warmup_ratio=0.05, seed=size.seed),
                   cache_dir=str(run / "cache"), artifact_dir=str(run / "artifacts"))
    session = _ProgressSession(run / "session", log, size.instruct_epochs)
    run_job(job, session)
    shutil.rmtree(assets.pretrained)
    shutil.copytree(report_artifact(job.artifact_dir, len(session.reports)), assets.pretrained)
    shutil.rmtree(run)
    loss = session.reports[-1]["train_loss"]
    log(f"  instruction-tuned: training loss {loss:.3f} in the last epoch")
    return {"problems": size.instruct, "epochs": size.instruct_epochs, "lr": size.instruct_lr,
            "final_train_loss": round(loss, 4), "seconds": round(time.perf_counter() - start, 1)}


class _ProgressSession(LocalSession):
    """A local session that logs each epoch's report: the build's progress while it tunes."""

    def __init__(self, directory: Path, log: Log, epochs: int) -> None:
        super().__init__(directory)
        self.log, self.epochs, self.started = log, epochs, time.perf_counter()

    def report(self, metrics: dict[str, float], checkpoint_dir: Path | None) -> None:
        super().report(metrics, checkpoint_dir)
        self.log(f"  instruction-tuning epoch {len(self.reports)}/{self.epochs}: training loss "
                 f"{metrics['train_loss']:.3f} ({time.perf_counter() - self.started:.0f} s)")
