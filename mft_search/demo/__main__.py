"""`python -m mft_search.demo [CACHE_DIR]`: build the demo assets (or find them cached) and list them."""

import json
import sys
from pathlib import Path

from mft_search.demo.build import build_demo


def main(argv: list[str]) -> None:
    assets = build_demo(Path(argv[0]) if argv else None)
    for label in ("pretrained", "train", "fft_selection", "validation", "test", "facts_path"):
        print(f"{label:>13}: {getattr(assets, label)}")
    print(json.dumps(assets.facts()["pretrain"], indent=2))


if __name__ == "__main__":
    main(sys.argv[1:])
