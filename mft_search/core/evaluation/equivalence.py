"""MATH answer equivalence backends: the string normaliser, or math-verify's symbolic check.

`math-verify` (HuggingFace; the verifier behind lm-eval's `math` extra) parses LaTeX with
latex2sympy2's ANTLR grammar and compares with sympy, so it accepts answers the normaliser cannot
(2\\sqrt{2} == \\sqrt{8}, (x+1)^2 == x^2+2x+1, \\{1,2\\} == \\{2,1\\}); tests/test_eval_math.py
keeps the set of equivalent answers on which it beats the normaliser. Only its LaTeX extraction is
used: its plain-expression extraction calls sympy's `parse_expr`, which evaluates Python, and model
output is never evaluated. Its timeouts use SIGALRM, which works only in the main thread; in
another thread (Ray Train runs the training function in one) it runs without a time limit.
"""

from __future__ import annotations

import threading

from mft_search.errors import ConfigError


def require_math_verify() -> None:
    """Fail early, with the fix, when math-verify is not installed."""
    try:
        import math_verify  # noqa: F401
    except ImportError:
        raise ConfigError("evaluation equivalence: math-verify is not installed; "
                          "`pip install math-verify` or use equivalence: normaliser") from None


def math_verify_equivalent(prediction: str | None, reference: str) -> bool:
    """math-verify's verdict on two \\boxed{} contents (LaTeX only; no Python evaluated)."""
    if prediction is None:
        return False
    from math_verify import LatexExtractionConfig, parse, verify

    main = threading.current_thread() is threading.main_thread()
    limit = 5 if main else None
    config = [LatexExtractionConfig()]
    try:
        gold = parse(f"${reference}$", extraction_config=config, parsing_timeout=limit)
        pred = parse(f"${prediction}$", extraction_config=config, parsing_timeout=limit)
        return bool(gold and pred and verify(gold, pred, timeout_seconds=limit))
    except Exception:  # a parse or comparison failure is a wrong answer, as math-verify itself treats it
        return False
