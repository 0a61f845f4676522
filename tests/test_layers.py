"""The layer rule, checked: import-linter's contracts in pyproject.toml, and no ray.tune in train."""

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_import_linter_contract_is_kept():
    # lint-imports sits beside the interpreter in the environment the suite runs in.
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "0 broken" in result.stdout


def test_the_train_layer_imports_nothing_of_tune():
    # import-linter forbids only top-level external packages, and train needs ray.train.
    offenders = []
    for path in sorted((ROOT / "mft_search" / "train").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            offenders += [f"{path.name}:{node.lineno} {n}" for n in names if n == "ray.tune" or n.startswith("ray.tune.")]
    assert not offenders, offenders
