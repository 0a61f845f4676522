"""`python -m mft_search.demo [CACHE_DIR] [--instruct N]`: build the demo assets (or find them
cached) and list them. `--instruct N` instruction-tunes the pre-trained base on N broad problems
(DemoSize.instruct, 2000 by default; 0: the pre-trained base alone): give another N a CACHE_DIR of
its own, since the default cache holds the demo's build."""

import argparse
import json
import sys
from pathlib import Path

from mft_search import cli
from mft_search.demo.assets import COMPLETE, DemoAssets, DemoSize, default_cache_dir
from mft_search.demo.build import build_demo
from mft_search.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mft_search.demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("cache_dir", nargs="?", type=Path, help="where to build (default: the demo's cache)")
    demo = DemoSize().instruct
    parser.add_argument("--instruct", type=int, default=demo, metavar="N",
                        help=f"instruction-tune the base on N broad problems after pre-training (default {demo}, "
                             "the demo's; 0: none)")
    args = parser.parse_args(argv)
    if args.instruct < 0:
        raise ConfigError(f"--instruct {args.instruct}: a number of problems, 0 or more")
    root = args.cache_dir.expanduser() if args.cache_dir else default_cache_dir()
    if (root / COMPLETE).exists():  # a finished build is reused as it is: it must be the one asked for
        built = DemoAssets(root).facts()["size"].get("instruct", 0)
        if built != args.instruct:
            raise ConfigError(f"--instruct {args.instruct}: {root} holds a build instruction-tuned on {built} "
                              "problems; give another CACHE_DIR")
    assets = build_demo(root, size=DemoSize(instruct=args.instruct))
    for label in ("pretrained", "train", "fft_selection", "validation", "test", "facts_path"):
        print(f"{label:>13}: {getattr(assets, label)}")
    facts = assets.facts()
    print(json.dumps({key: facts[key] for key in ("pretrain", "instruct") if key in facts}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
