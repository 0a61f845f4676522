"""The embedded demo: a tiny Llama fine-tuned (best epoch kept) on synthetic word problems, built offline.

    from mft_search.demo import build_demo
    assets = build_demo()        # cached under ~/.cache/mft_search/demo/v1
    assets.backbone, assets.train, assets.validation, assets.test, assets.facts()
"""

from mft_search.demo.assets import DemoAssets, DemoSize, default_cache_dir
from mft_search.demo.build import build_demo
from mft_search.demo.finetune import TEMPLATE, sft_data_spec
from mft_search.demo.pretrain import PretrainSettings

__all__ = ["TEMPLATE", "DemoAssets", "DemoSize", "PretrainSettings", "build_demo", "default_cache_dir",
           "sft_data_spec"]
