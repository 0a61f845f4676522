"""The embedded demo: a tiny Llama fine-tuned past its peak on synthetic word problems, built offline.

    from mft_search.demo import build_demo
    assets = build_demo()        # cached under ~/.cache/mft_search/demo/v1
    assets.backbone, assets.train, assets.validation, assets.test, assets.facts()
"""

from .build import DemoAssets, DemoSize, build_demo, default_cache_dir
from .finetune import TEMPLATE, sft_data_spec
from .pretrain import PretrainSettings

__all__ = ["TEMPLATE", "DemoAssets", "DemoSize", "PretrainSettings", "build_demo", "default_cache_dir",
           "sft_data_spec"]
