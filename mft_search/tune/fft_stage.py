"""The fft stage (stages.fft): per study, full fine-tuning of the pretrained backbone on the
domain's SFT data before the search, as the paper's protocol starts (Fig. 1).

One FFT job writes a checkpoint at every evaluation point and scores each on the domain's
fft_selection benchmark (or, without one, the validation loss of train's carve-out). The best
point is the backbone the rest of the study masks; the last one is the Continued FFT row.

    record = run_fft_stage(study, log)       # fft.json written; runs once per study
    study = fine_tuned_study(study, record)  # the same study, masking the best checkpoint
"""

from __future__ import annotations

import dataclasses

from mft_search.experiment import layout
from mft_search.experiment.fft_record import FftRecord, save_fft_record
from mft_search.tune.evaluate import fft_record, fit, metric_name
from mft_search.tune.study import Study


def run_fft_stage(study: Study, log=print) -> FftRecord:
    """Fine-tune the study's (pretrained) backbone, record every point and the best; raises the job's error."""
    settings = study.cfg.stages.fft
    selection = study.domain.fft_selection
    job = study.job("fft", layout.run_name(study.slug, "fft"), data=study.domain.train, train=settings.train,
                    evaluation=selection)
    log(f"[{study.name}] fft: {settings.train.epochs:g} epoch(s) of full fine-tuning from the pretrained "
        f"backbone, each point scored on {metric_name(selection)}")
    study.prepare_data("refine")  # all of train, tokenised here once (the cache is keyed by content)
    record = fft_record(job, fit(study, job).history)
    save_fft_record(study.dir, record)
    best, final = record.best_point, record.final_point
    log(f"[{study.name}] fft: best point epoch {best.epoch:g} ({best.metric:.4g}), final epoch {final.epoch:g} "
        f"({final.metric:.4g}); MFT masks the best")
    return record


def fine_tuned_study(study: Study, record: FftRecord) -> Study:
    """The study with its backbone replaced by the best FFT checkpoint (same name, so outputs
    keep their paths); the pretrained backbone is kept for the baselines that need it."""
    pretrained = study.backbone
    best = pretrained.model_copy(update={"source": record.best_point.checkpoint, "gguf_file": None,
                                         "revision": None, "name": pretrained.label})
    return dataclasses.replace(study, backbone=best, pretrained=pretrained, fft=record)

