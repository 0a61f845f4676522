"""One trial's work on one rank, in plain torch: the train layer's entry without Ray.

`run_job` runs a `TrialJob` (train.spec) against a `Session` (train.session) that reports
metrics and checkpoints: Ray Train's or Tune's in a sweep, a local one in tests and the demo build.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict

import torch

from mft_search.core.backbone import load_model, load_tokenizer
from mft_search.core.lora import LoraSpec, attach_lora
from mft_search.core.maskfile import backbone_fingerprint
from mft_search.core.masking import attach_masks
from mft_search.train.evaluation import evaluate_variants
from mft_search.train.loop import TrainingLoop
from mft_search.train.session import Session
from mft_search.train.spec import ITEMS_FILE, WEIGHT_TRAINING, LoraAdapters, TrialJob


def run_job(job: TrialJob, session: Session) -> None:
    """Run `job` on this rank; every rank calls it, and rank 0's reports are the trial's."""
    started = time.perf_counter()
    torch.manual_seed(job.train.seed)
    tokenizer = load_tokenizer(job.backbone, job.cache_dir)  # a GGUF backbone's conversion is cached there too
    if job.kind == "evaluate":
        metrics, items = evaluate_variants(job, tokenizer, session.device)
        checkpoint = None
        if session.rank == 0:  # Ray Train keeps the metrics of checkpointed reports only
            checkpoint = session.new_checkpoint_dir()
            checkpoint.mkdir(parents=True, exist_ok=True)
            (checkpoint / "metrics.json").write_text(json.dumps(metrics))
            # Per-item scores travel with the checkpoint: a report's metrics are numbers only.
            (checkpoint / ITEMS_FILE).write_text(json.dumps({n: asdict(s) for n, s in items.items() if s}))
        session.report(metrics, checkpoint)
        return
    compute_dtype = job.backbone.torch_dtype(session.device.type == "cuda")
    # FFT trains the weights, LoRA adapters on them: fp32 masters, computed in the backbone's dtype
    # (mixed_precision).
    model = load_model(job.backbone, torch.float32 if job.kind in WEIGHT_TRAINING else compute_dtype, job.cache_dir)
    if job.kind == "lora":
        lora = job.lora or LoraAdapters()
        model = attach_lora(model, LoraSpec(rank=lora.rank, alpha=lora.alpha, dropout=lora.dropout))
    fingerprint = ""
    if job.kind == "mft":  # masked modules keep their weight, so the backbone's fingerprint holds
        fingerprint = backbone_fingerprint(model, list(attach_masks(model, job.mask)))
    TrainingLoop(job, session, model.to(session.device), tokenizer, fingerprint, started, compute_dtype).run()
