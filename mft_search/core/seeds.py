"""Per-module seeds, so that every worker (and every run) draws the same numbers for a module."""

import zlib


def module_seed(seed: int, name: str) -> int:
    """A generator seed for module `name` under sweep seed `seed`: stable across processes
    (unlike hash()), distinct across modules, and within torch's seed range."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)
