"""Export selected masks for the Hugging Face Hub: the mask file, its metadata, the exact config and a model card.

    python -m mft_search.export ~/mft_runs/NAME --out hub/                   # every study with a selected mask
    python -m mft_search.export ~/mft_runs/NAME --out hub/ --backbone B --domain D --license apache-2.0
    hf upload USER/REPO hub/ .            # older huggingface_hub: huggingface-cli upload USER/REPO hub/ .

The folder holds one study's files, or <backbone>/<domain>/ of each when several are exported. It
is filled as a staging directory beside it and renamed into place, so an error leaves no folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mft_search import cli
from mft_search.core import files
from mft_search.errors import ConfigError, did_you_mean
from mft_search.report.card import model_card
from mft_search.report.experiment import StudyRecord, load_experiment
from mft_search.report.selected import FILES, SelectedMask, load_selected, why_none

README = "README.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mft_search.export", description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=files.location,
                        help="the experiment directory a sweep wrote (<storage>/<name>), or its bucket URI")
    parser.add_argument("--out", type=Path, required=True, help="new folder to upload (an empty one is fine)")
    parser.add_argument("--backbone", help="export only this backbone's studies (its name in the experiment)")
    parser.add_argument("--domain", help="export only this domain's studies")
    parser.add_argument("--license", help="the Hub license id the card declares, e.g. apache-2.0: the backbone's; "
                        "none is declared without it (the sweep records none)")
    parser.add_argument("--force", action="store_true", help="replace --out when it exists and is not empty")
    args = parser.parse_args(argv)
    studies = _matching(load_experiment(args.experiment).studies, args.backbone, args.domain)
    chosen = [(s, load_selected(args.experiment, s)) for s in _with_selection(studies)]
    _check_out(args.out, args.experiment, args.force)
    for reason in filter(None, map(why_none, studies)):
        print(f"skipped: {reason}")
    for study, folder in zip((s for s, _ in chosen), export(chosen, args.out, args.license)):
        print(f"{study.name}: {folder} ({README}, {', '.join(FILES)})")
        print(f"  upload: hf upload <user>/<repo> {folder} .")
    return 0


def export(chosen: list[tuple[StudyRecord, SelectedMask]], out: Path, license: str | None = None) -> list[Path]:
    """Write each study's files and model card into `out` (one study) or `out/<backbone>/<domain>/`
    (several), all at once: `out` appears whole or not at all. Returns each study's folder."""
    folders = [Path() if len(chosen) == 1 else Path(s.backbone, s.domain) for s, _ in chosen]
    try:
        with files.atomic_directory(out) as staging:
            for (study, selected), folder in zip(chosen, folders):
                _write(staging / folder, study, selected, license)
    except OSError as exc:
        raise ConfigError(f"--out: cannot write {out} ({exc.strerror or exc}); name a writable folder") from exc
    return [out / folder for folder in folders]


def _write(folder: Path, study: StudyRecord, selected: SelectedMask, license: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name in FILES:  # copied byte for byte: the Hub gets the very file the sweep selected
        (folder / name).write_bytes((selected.directory / name).read_bytes())
    (folder / README).write_text(model_card(study, selected, license))


def _matching(studies: tuple[StudyRecord, ...], backbone: str | None, domain: str | None) -> list[StudyRecord]:
    """The studies --backbone and --domain name (all of them when neither is given)."""
    for flag, value, names in (("--backbone", backbone, {s.backbone for s in studies}),
                               ("--domain", domain, {s.domain for s in studies})):
        if value is not None and value not in names:
            choices = ", ".join(sorted(names)) or "none: the experiment has no study yet"
            raise ConfigError(f"{flag}: no study has '{value}'{did_you_mean(value, names)}; choose one of {choices}")
    matched = [s for s in studies if backbone in (None, s.backbone) and domain in (None, s.domain)]
    if not matched:
        raise ConfigError(f"--backbone {backbone} --domain {domain}: no such study; the experiment has "
                          f"{', '.join(s.name for s in studies) or 'none yet'}")
    return matched


def _with_selection(studies: list[StudyRecord]) -> list[StudyRecord]:
    """The studies with a selected mask; ConfigError saying why when none has one."""
    chosen = [s for s in studies if why_none(s) is None]
    if not chosen:
        reasons = [why_none(s) for s in studies]
        raise ConfigError(reasons[0] if len(reasons) == 1 else f"nothing to export: {'; '.join(reasons)}")
    return chosen


def _check_out(out: Path, exp_dir: files.Location, force: bool) -> None:
    """Refuse an --out that would destroy something: a file, a non-empty folder without --force, the experiment."""
    here, experiment = out.resolve(), Path(exp_dir.path).resolve()
    if exp_dir.is_local and (here == experiment or here in experiment.parents):
        raise ConfigError(f"--out: {out} holds the experiment, which replacing it would delete; name another folder")
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out: {out} is a file; name a new folder")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out: {out} exists and is not empty; name a new folder, or pass --force to replace it")


if __name__ == "__main__":
    sys.exit(cli.run(main))
