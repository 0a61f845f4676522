"""Apply a mask file to its backbone and save a plain, masked Hugging Face checkpoint.

    python -m mft_search.apply --backbone PATH_OR_ID --mask best/mask.safetensors --out masked/

The output needs no mft_search to load (mft_search.core.masked_checkpoint says how it is written).
"""

from __future__ import annotations

import argparse
import sys

from mft_search import cli
from mft_search.core.masked_checkpoint import apply_mask


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mft_search.apply", description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", required=True, help="the backbone the mask was learned on (path, hub id, .gguf file or pkg:PACKAGE/PATH)")
    parser.add_argument("--mask", required=True, help="mask file written by a sweep")
    parser.add_argument("--out", required=True, help="new directory for the masked checkpoint")
    parser.add_argument("--revision", default=None, help="hub revision of the backbone")
    parser.add_argument("--trust-remote-code", action="store_true", help="run the backbone's own code (off by default)")
    args = parser.parse_args(argv)
    out = apply_mask(args.backbone, args.mask, args.out, revision=args.revision, trust_remote_code=args.trust_remote_code)
    print(f"masked checkpoint written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main))
