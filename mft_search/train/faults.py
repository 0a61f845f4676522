"""Fault injection for the tests that really break a trial: test hooks, not a feature.

A job config may carry a `fault` dict; `inject` wraps the worker's session with it:
- {"kill_after_reports": N, "marker": PATH}: rank 0 SIGKILLs its own process right after its
  N-th report, once (the marker file records that it happened), so the restarted attempt must
  resume from the checkpoint that report saved.
- {"nan_at_step": N}: from optimiser step N on (1-based), the embeddings' output is multiplied by
  NaN, so the forward pass really computes a NaN loss.
- {"oom_at_step": N}: at step N and after, the step first makes an allocation no machine can
  serve, so the allocator really raises its out-of-memory error.

A sweep aims faults at trials through the driver's environment: MFT_SEARCH_FAULTS holds a JSON
list of {"match": {param: value, ...}, <fault>...}; a trial whose sampled parameters equal every
`match` value gets that fault (`for_params`). Only the driver reads it, so Ray workers need not
inherit the variable.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import torch

from mft_search.core.distributed import unwrap

ENV = "MFT_SEARCH_FAULTS"
IMPOSSIBLE_BYTES = 1 << 50  # a petabyte: refused by any allocator, CPU or GPU


def from_environment() -> list[dict[str, Any]]:
    """The faults the driver's environment asks for (none when the variable is unset)."""
    text = os.environ.get(ENV)
    return json.loads(text) if text else []


def for_params(faults: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any] | None:
    """The first fault whose `match` the trial's parameters satisfy, without its `match`."""
    for fault in faults:
        if all(params.get(k) == v for k, v in fault.get("match", {}).items()):
            return {k: v for k, v in fault.items() if k != "match"}
    return None


class _Wrapped:
    """A session that behaves like the one it wraps, apart from what a subclass overrides."""

    def __init__(self, session) -> None:
        self._session = session

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


class KillAfterReports(_Wrapped):
    def __init__(self, session, kill_after_reports: int, marker: str) -> None:
        super().__init__(session)
        self._n, self._marker = kill_after_reports, Path(marker)
        self._reports = 0

    def report(self, metrics, checkpoint_dir) -> None:
        self._session.report(metrics, checkpoint_dir)
        self._reports += 1
        if self._session.rank == 0 and self._reports == self._n and not self._marker.exists():
            self._marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


class NanAtStep(_Wrapped):
    def __init__(self, session, nan_at_step: int) -> None:
        super().__init__(session)
        self._step, self._hooked = nan_at_step, False

    def before_step(self, step: int, model) -> None:
        if step + 1 >= self._step and not self._hooked:
            embeddings = unwrap(model).get_input_embeddings()
            embeddings.register_forward_hook(lambda module, args, out: out * float("nan"))
            self._hooked = True


class OomAtStep(_Wrapped):
    def __init__(self, session, oom_at_step: int) -> None:
        super().__init__(session)
        self._step = oom_at_step

    def before_step(self, step: int, model) -> None:
        if step + 1 >= self._step:
            torch.empty(IMPOSSIBLE_BYTES, dtype=torch.uint8, device=self._session.device)


def inject(session, fault: dict[str, Any] | None):
    if not fault:
        return session
    if "kill_after_reports" in fault:
        return KillAfterReports(session, **fault)
    if "nan_at_step" in fault:
        return NanAtStep(session, **fault)
    if "oom_at_step" in fault:
        return OomAtStep(session, **fault)
    raise ValueError(f"unknown fault {fault}")
