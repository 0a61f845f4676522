"""The embedded demo: a tiny Llama pre-trained on synthetic text, and word problems to fine-tune
and judge it on, built offline. The sweep's fft stage fine-tunes it (demo.yaml).

    from mft_search.demo import build_demo
    assets = build_demo()        # cached under ~/.cache/mft_search/demo/v3
    assets.pretrained, assets.train, assets.fft_selection, assets.validation, assets.test, assets.facts()
"""

from mft_search.demo.assets import DemoAssets, DemoSize, default_cache_dir
from mft_search.demo.build import build_demo
from mft_search.demo.domain import TEMPLATE, sft_data_spec
from mft_search.demo.pretrain import PretrainSettings

__all__ = ["TEMPLATE", "DemoAssets", "DemoSize", "PretrainSettings", "build_demo", "default_cache_dir",
           "sft_data_spec"]
