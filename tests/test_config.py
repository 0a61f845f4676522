"""The sweep YAML: every user mistake is one ConfigError/DataError line naming the field and the fix."""

import copy
import json
import shutil

import pytest
import yaml

from mft_search.config.schema import (
    SweepConfig,
    check_against_models,
    check_data,
    describe_plan,
    load_config_file,
    parse_config,
    resolve_storage,
)
from mft_search.errors import ConfigError, DataError
from mft_search.demo.tiny import tiny_gpt2, tiny_llama, tiny_tokenizer


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A 4-block Llama's config and tokenizer, no weights: all that check_against_models reads."""
    path = tmp_path_factory.mktemp("tiny")
    tiny_llama(layers=4).config.save_pretrained(path)
    tiny_tokenizer().save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"#### {i + 1}"}) + "\n" for i in range(8)))
    return path


def base(tiny_dir=".", train_file="train.jsonl"):
    return {
        "name": "demo",
        "storage": "~/mft_runs",
        "seed": 3,
        "backbones": [{"source": str(tiny_dir), "name": "tiny"}],
        "domains": [{
            "name": "math",
            "train": {"source": str(train_file), "prompt_field": "question", "response_field": "answer"},
            "validation": {"evaluator": "gsm8k", "source": "val.jsonl", "limit": 500},
            "test": {"evaluator": "gsm8k", "source": "test.jsonl"},
        }],
        "train": {"lr": 2e-5, "epochs": 2},
        "search": {
            "num_trials": 8,
            "enqueue": [{"layer_group": [0, 1], "mode": "local", "ratio": 0.1}],
            "space": {
                "layer_group": {"size": 2, "start": {"low": 0, "high": 2}},
                "mode": ["local", "global"],
                "ratio": {"low": 0.02, "high": 0.4, "log": True},
                "threshold": {"low": -0.06, "high": -0.01},
                "kinds": [["q", "k", "v", "o", "gate", "up", "down"]],
                "init": ["normal", "magnitude"],
                "lr": {"low": "1e-6", "high": 1e-4, "log": True},
            },
        },
    }


def merged(into, patch):
    """`into` with `patch` deep-merged; a None value deletes the key."""
    out = copy.deepcopy(into)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


BAD = [  # (YAML patch over the valid base, substring the one-line error must contain)
    ("nmae: x", "nmae: unknown key (did you mean 'name'?)"),
    ("search: {space: {ratoi: 0.1}}", "search.space.ratoi: unknown key (did you mean 'ratio'?)"),
    ("search: {space: {ratio: {low: 0.5, high: 0.1}}}", "search.space.ratio.high: 0.1 is below low 0.5"),
    ("search: {space: {ratio: {low: 0.1, high: 0.1}}}", "search.space.ratio.high: equals low (0.1): the range is empty"),
    ("search: {space: {ratio: {low: 0.0, high: 0.4, log: false}}}", "search.space.ratio.low: 0.0 is outside (0, 1)"),
    ("search: {space: {ratio: [0.1, 1.5]}}", "search.space.ratio[1]: 1.5 is outside (0, 1)"),
    ("search: {space: {ratio: {low: 0.1, high: 0.4, lo: 1}}}", "search.space.ratio.lo: unknown key (did you mean 'low'?)"),
    ("search: {space: {ratio: {low: -0.1, high: 0.4, log: true}}}", "search.space.ratio.low: -0.1: a log range needs low > 0"),
    ("search: {space: {ratio: {low: 0.1, high: 0.4, step: 0.05, log: true}}}", "search.space.ratio.log: log and step"),
    ("search: {space: {ratio: {low: 0.1, high: 0.4, step: 0.07, log: false}}}", "search.space.ratio.step: high - low = 0.3 is not a multiple"),
    ("search: {space: {mode: local, threshold: -0.03}}", "search.space.threshold: given but mode is only local"),
    ("search: {space: {mode: global, ratio: 0.1}, enqueue: []}", "search.space.ratio: given but mode is only global"),
    ("search: {space: {mode: [local, glbal]}}", "search.space.mode[1]: 'glbal' is not one of local, global (did you mean 'global'?)"),
    ("search: {space: {mode: {low: 0, high: 1}}}", "search.space.mode: give one value or a list of choices"),
    ("search: {space: {kinds: [[q, kk]]}}", "search.space.kinds[0]: 'kk' is not a module kind (did you mean 'k'?)"),
    ("search: {space: {kinds: [q, v]}}", "search.space.kinds: expects a list of choices, each a list: write [[q, v]]"),
    ("search: {space: {layer_group: [20, 21]}}", "search.space.layer_group: expects a list of choices, each a list: write [[20, 21]]"),
    ("search: {space: {layer_group: [[1, 1]]}}", "search.space.layer_group[0]: [1, 1] repeats an entry"),
    ("search: {space: {layer_group: {size: 0, start: 0}}}", "search.space.layer_group.size: Input should be greater than or equal to 1"),
    ("search: {space: {layer_group: {size: 2, start: {low: 0, high: 3, step: 2}}}}", "search.space.layer_group.start.step"),
    ("search: {space: {lr: {low: 0, high: 1e-4, log: false}}}", "search.space.lr.low: 0.0: Input should be greater than 0"),
    ("search: {space: {epochs: [1, 1]}}", "search.space.epochs: 1.0, 1.0 lists a choice twice"),
    ("search: {space: {layer_group: null}}", "search.space.layer_group: required"),
    ("search: {num_trials: 0}", "search.num_trials: Input should be greater than or equal to 1"),
    ("search: {algorithm: tpee}", "search.algorithm: 'tpee' is not one of tpe, gp, random, grid (did you mean 'tpe'?)"),
    ("search: {algorithm: grid}", "search.space.ratio: grid search needs choices or a step"),
    ("search: {enqueue: [{ratoi: 0.1}]}", "search.enqueue[0].ratoi: unknown parameter (did you mean 'ratio'?)"),
    ("search: {enqueue: [{mode: local, ratio: 0.9}]}", "search.enqueue[0].ratio: 0.9 is outside the range 0.02..0.4"),
    ("search: {enqueue: [{layer_group: [5, 6]}]}", "search.enqueue[0].layer_group: 5 is outside the range 0..2"),
    ("search: {enqueue: [{layer_group: [0, 2]}]}", "search.enqueue[0].layer_group: [0, 2] is not 2 contiguous"),
    ("search: {enqueue: [{threshold: -0.03}]}", "search.enqueue[0].threshold: used only when mode is global"),
    ("search: {num_trials: 1, enqueue: [{mode: local}, {mode: global}]}", "search.enqueue: 2 points but only 1 trials"),
    ("search: {asha: {reduction_factor: 1}}", "search.asha.reduction_factor: Input should be greater than or equal to 2"),
    ("domains: [{name: math, train: {source: t.jsonl, prompt_field: q, response_field: a}, validation: {evaluator: gsm8kk}}]",
     "domains[0].validation.evaluator: unknown 'gsm8kk' (did you mean 'gsm8k'?)"),
    ("domains: [{name: math, train: {source: t.jsonl, prompt_field: q}, validation: {evaluator: gsm8k}}]",
     "domains[0].train: set both prompt_field and response_field"),
    ("domains: [{name: math, train: {source: t.jsonl, prompt_field: q, response_field: a}}]",
     "domains[0].validation: null needs validation data from train"),
    ("domains: [{name: m, train: {source: t.jsonl, prompt_field: q, response_field: a}, validation: {evaluator: gsm8k, source: x.jsonl},"
     " test: {evaluator: gsm8k, source: x.jsonl}}]", "domains[0].test: reads the same problems as validation"),
    ("domains: [{name: m, train: {source: t.jsonl, prompt_field: q, response_field: a}, validation: {evaluator: gsm8k,"
     " source: ./v.jsonl}, test: {evaluator: gsm8k, source: v.jsonl}}]", "domains[0].test: reads the same problems as validation"),
    ("domains: [{name: m, train: {source: t.jsonl, prompt_field: q, response_field: a}, validation: {evaluator: gsm8k,"
     " source: openai/gsm8k}, test: {evaluator: gsm8k}}]", "domains[0].validation: reads openai/gsm8k's 'test' split"),
    ("domains: [{name: m, train: {source: t.jsonl, prompt_field: q, response_field: a}, validation: {evaluator: gsm8k}}]",
     "domains[0].validation: reads openai/gsm8k's 'test' split, the problems gsm8k reports as its test set"),
    ("domains: [{name: math, train: {source: t.jsonl, prompt_field: q, response_field: a, template: 'Q: {question}'},"
     " validation: {evaluator: gsm8k}}]", "domains[0].train.template: has fields ['question']"),
    ("domains: [{name: math/x, train: {source: t.jsonl, prompt_field: q, response_field: a}, validation: {evaluator: gsm8k}}]",
     "domains[0].name: 'math/x' is not usable as a directory name"),
    ("domains: []", "domains: List should have at least 1 item"),
    ("backbones: [{source: a, name: x}, {source: b, name: x}]", "backbones[1].name: 'x' repeats backbones[0]"),
    ("backbones: [{source: a, dtype: fp16}]", "backbones[0].dtype: 'fp16' is not one of auto, float32, bfloat16, float16"),
    ("train: {lr: -1}", "train.lr: Input should be greater than 0"),
    ("train: {learning_rate: 1}", "train.learning_rate: unknown key"),
    ("resources: {strategy: zero3}", "resources.strategy: 'zero3' is not one of ddp, fsdp"),
    ("baselines: [unmasked, l2]", "baselines[1]: 'l2' is not one of unmasked, random, l1, wanda, revert, lora, continued_fft (did you mean 'l1'?)"),
    ("baselines: [l1, l1]", "baselines: ['l1', 'l1'] lists a baseline twice"),
    ("stages: {refine: {top_k: 9}}", "stages.refine.top_k: 9 exceeds the 8 probe trials"),
    ("stages: {probe: {data_fraction: 0}}", "stages.probe.data_fraction: Input should be greater than 0"),
    ("retries: -1", "retries: Input should be greater than or equal to 0"),
    ("storage: hdfs://x/y", "storage: 'hdfs://x/y' is not a bucket URI this sweep writes to; give s3://BUCKET"),
    ("name: null", "name: required; add it"),
    ("domains: [{name: m, train: {source: t.jsonl, prompt_field: q, response_field: a}, validation: {evaluator: gsm8k,"
     " source: v.jsonl}, fft_selection: {evaluator: gsm8k, source: f.jsonl}}]",
     "domains[0].fft_selection: is only read by the fft stage; set stages.fft, or drop fft_selection"),
    ("{stages: {fft: {}}, domains: [{name: m, train: {source: t.jsonl, prompt_field: q, response_field: a,"
     " validation_fraction: 0.1}, validation: null}]}", "domains[0].fft_selection: null picks the FFT epoch on train's"),
    ("{stages: {fft: {}}, domains: [{name: m, train: {source: t.jsonl, prompt_field: q, response_field: a},"
     " validation: {evaluator: gsm8k, source: v.jsonl}, fft_selection: {evaluator: gsm8k, source: v.jsonl}}]}",
     "domains[0].fft_selection: reads the same problems as validation"),
    ("{stages: {fft: {}}, domains: [{name: m, train: {source: t.jsonl, prompt_field: q, response_field: a},"
     " validation: {evaluator: gsm8k, source: v.jsonl}, fft_selection: {evaluator: gsm8k}}]}",
     "domains[0].fft_selection: reads openai/gsm8k's 'test' split"),
    ("stages: {fft: {train: {lr: 0}}}", "stages.fft.train.lr: Input should be greater than 0"),
    ("stages: {fft: {}}", "domains[0].fft_selection: null picks the FFT epoch on train's validation loss, but train has no"),
    ("stages: {fft: {epochs: 3}}", "stages.fft.epochs: unknown key"),
    ("{baselines: [unmasked, lora], resources: {strategy: fsdp}}", "baselines: lora runs under ddp only"),
    ("lora: {rank: 0}", "lora.rank: Input should be greater than or equal to 1"),
    ("seeds: 0", "seeds: Input should be greater than or equal to 1"),
    ("{stages: {fft: {}}, backbones: [{source: a, pretrained: b}]}",
     "backbones[0].pretrained: with stages.fft the source is the pretrained model"),
]


@pytest.mark.parametrize("patch, expected", BAD, ids=[p for p, _ in BAD])
def test_bad_input_is_one_line_naming_the_field(patch, expected):
    with pytest.raises(ConfigError) as info:
        parse_config(merged(base(), yaml.safe_load(patch)))
    message = str(info.value)
    assert expected in message
    assert "\n" not in message


def test_valid_config_round_trips():
    cfg = parse_config(base())
    again = SweepConfig.model_validate(json.loads(cfg.model_dump_json()))
    assert again == cfg
    assert cfg.train.seed == 3 and cfg.search.seed == 3  # the top-level seed is their default
    assert cfg.baselines[0] == "unmasked" and cfg.search.trials == 8


def test_unmasked_reference_always_runs():
    assert parse_config(merged(base(), {"baselines": ["l1"]})).baselines == ["unmasked", "l1"]


@pytest.mark.parametrize("text, expected", [
    ("", "empty"),
    ("name: [unclosed\n", ":2:1: invalid YAML"),
    ("- a\n- b\n", "the top level is a list; it must be a mapping"),
    ("name: a\nseed: 1\nname: b\n", ":3:1: invalid YAML (key 'name' given twice in one mapping; keep one)"),
    ("name: demo\nsearch: {algorithm: tpe, space: {layer_group: [[0]]}}\n", "backbones: required"),
])
def test_file_errors_name_the_file(tmp_path, text, expected):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="sweep.yaml") as info:
        load_config_file(path)
    assert expected in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="--config: cannot read .*nope.yaml"):
        load_config_file("/nonexistent/nope.yaml")


def test_config_file_loads(tmp_path, tiny_dir, train_file):
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(base(tiny_dir, train_file)))
    assert load_config_file(path).search.space.lr.low == 1e-6


# ---------------------------------------------------------------- against models, data and storage


def test_groups_and_kinds_fit_the_model(tiny_dir):
    configs = check_against_models(parse_config(base(tiny_dir)))
    assert configs["tiny"].num_hidden_layers == 4


@pytest.mark.parametrize("space, expected", [
    ({"layer_group": {"size": 2, "start": {"low": 0, "high": 4, "step": 2}}},
     "search.space.layer_group: start 4 + size 2 exceeds tiny's llama depth 4 (blocks 0..3); lower start to at most 2"),
    ({"layer_group": [[0, 1], [3, 4]]}, "search.space.layer_group[1]: block 4 exceeds tiny's llama depth 4"),
])
def test_layer_group_beyond_depth(tiny_dir, space, expected):
    cfg = parse_config(merged(base(tiny_dir), {"search": {"enqueue": [], "space": space}}))
    with pytest.raises(ConfigError) as info:
        check_against_models(cfg)
    assert expected in str(info.value)


def test_kinds_the_architecture_lacks(tmp_path):
    tiny_gpt2(layers=4).config.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    cfg = parse_config(merged(base(tmp_path), {"search": {"space": {"kinds": [["q", "k", "v"], ["gate"]]}}}))
    with pytest.raises(ConfigError, match=r"search.space.kinds\[1\]: 'gate' is not a module kind of gpt2"):
        check_against_models(cfg)


@pytest.mark.parametrize("damage", ["corrupt", "missing"])
def test_an_unreadable_tokenizer_is_refused_before_any_trial(tiny_dir, tmp_path, damage):
    backbone = tmp_path / "backbone"
    shutil.copytree(tiny_dir, backbone)
    if damage == "corrupt":
        (backbone / "tokenizer.json").write_text('{"model": "not a tokenizer"}')
    else:
        for name in ("tokenizer.json", "tokenizer_config.json"):
            (backbone / name).unlink()
    with pytest.raises(ConfigError, match=r"backbones\[0\].source: cannot read a tokenizer from .*; the backbone "
                                          "directory must hold its tokenizer"):
        check_against_models(parse_config(base(backbone)))


def test_unreadable_backbone(tmp_path):
    with pytest.raises(ConfigError, match=r"backbones\[0\].source: cannot read a model config"):
        check_against_models(parse_config(base(tmp_path)))


def test_local_data_is_checked(train_file):
    good = base(train_file=train_file)
    good["domains"][0]["validation"]["source"] = str(train_file)  # same columns as GSM8K's
    good["domains"][0]["test"]["source"] = None  # the evaluator's default on the hub: not read here
    check_data(parse_config(good))
    bad = copy.deepcopy(good)
    bad["domains"][0]["train"]["prompt_field"] = "qestion"
    with pytest.raises(DataError, match=r"domains\[0\].train.prompt_field: column 'qestion' not in"):
        check_data(parse_config(bad))
    bad["domains"][0]["train"]["source"] = str(train_file.parent / "missing.jsonl")
    with pytest.raises(DataError, match=r"domains\[0\].train.source: .*does not exist"):
        check_data(parse_config(bad))


def test_local_benchmark_is_checked(train_file):
    cfg = base(train_file=train_file)
    cfg["domains"][0]["validation"]["source"] = str(train_file)
    cfg["domains"][0]["test"]["source"] = str(train_file.parent / "absent.jsonl")
    with pytest.raises(DataError, match=r"domains\[0\].test.source: .*absent.jsonl"):
        check_data(parse_config(cfg))


def test_storage(tmp_path, s3):
    assert resolve_storage(parse_config(merged(base(), {"storage": str(tmp_path / "a" / "b")}))) == str(tmp_path / "a" / "b")
    assert not (tmp_path / "a").exists()  # a dry run creates nothing
    with pytest.raises(ConfigError, match="storage: 'ftp://host/runs' is not a bucket URI this sweep writes to; give s3://"):
        parse_config(merged(base(), {"storage": "ftp://host/runs"}))
    bucket = s3.new_bucket()  # a bucket is checked by writing (and removing) one object: it exists, the credentials work
    assert resolve_storage(parse_config(merged(base(), {"storage": f"s3://{bucket}/runs/"}))) == f"s3://{bucket}/runs"
    assert s3.keys(bucket) in ([], ["runs/"])  # pyarrow keeps an emptied prefix as an empty directory marker
    with pytest.raises(ConfigError, match="storage: cannot write to s3://no-such-bucket/runs .*check that the bucket exists"):
        resolve_storage(parse_config(merged(base(), {"storage": "s3://no-such-bucket/runs"})))
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="storage: .*file is a file"):
        resolve_storage(parse_config(merged(base(), {"storage": str(tmp_path / "file" / "runs")})))


def test_a_gs_storage_uri_keeps_its_options_and_refuses_a_secret(gcs, tiny_dir):
    # the emulator is reached through the URI's own options: they must survive the check, and the
    # experiment's name goes into the path, before them
    bucket = gcs.new_bucket()
    cfg = parse_config(merged(base(tiny_dir), {"storage": gcs.uri(bucket, "runs/")}))
    assert resolve_storage(cfg) == gcs.uri(bucket, "runs")
    assert gcs.keys(bucket) == []  # the probe object is gone
    assert f"outputs in {gcs.uri(bucket, 'runs/demo/')}\n" in describe_plan(cfg, {})
    with pytest.raises(ConfigError, match=r"storage: cannot write to gs://anonymous@no-such-bucket/runs\?.*check that the bucket"):
        resolve_storage(parse_config(merged(base(tiny_dir), {"storage": gcs.uri("no-such-bucket", "runs")})))
    with pytest.raises(ConfigError, match="storage: .*has a secret before '@'.*GOOGLE_APPLICATION_CREDENTIALS"):
        parse_config(merged(base(tiny_dir), {"storage": "gs://KEY:SECRET@bucket/runs"}))


def test_plan_names_studies_trials_resources_and_outputs(tiny_dir, tmp_path):
    cfg = parse_config(merged(base(tiny_dir), {
        "storage": str(tmp_path), "backbones": [{"source": str(tiny_dir), "name": "a"}, {"source": str(tiny_dir), "name": "b"}],
        "resources": {"workers_per_trial": 2, "gpus_per_worker": 1}}))
    plan = describe_plan(cfg, check_against_models(cfg))
    for expected in (f"outputs in {tmp_path}/demo/", "2 x 1 = 2", "backbone a: llama, 4 blocks",
                     "probe 8 trials on 10%", "refine the top 2", "10 per study, 20 in all",
                     "2 worker(s) x (1 CPU, 1 GPU), ddp", "at most 2 trial(s) per study, needing 4 CPU and 4 GPU",
                     "unmasked, random, l1, continued_fft", "ratio: 0.02..0.4 log (when local)"):
        assert expected in plan


def test_a_finite_space_caps_the_probe_at_its_points_and_the_plan_says_why(tiny_dir, tmp_path):
    # No point runs twice (tune.duplicates), so a 4-point space runs 4 probe trials, not 8
    space = {"layer_group": [[0, 1], [2, 3]], "mode": ["local"], "ratio": [0.1], "init": ["magnitude", "normal"],
             "threshold": None, "lr": None}
    cfg = parse_config(merged(base(tiny_dir), {"storage": str(tmp_path), "search": {"num_trials": 8, "space": space},
                                               "stages": {"refine": {"top_k": 6}}}))  # refines what there is
    assert (cfg.search.trials, cfg.search.asked_trials) == (4, 8)
    plan = describe_plan(cfg, {})
    assert "probe 4 trials (the space's 4 points: num_trials asks 8, and no point runs twice)" in plan
    assert cfg.refine_trials == 4 and "refine the top 4 on" in plan and "trials: 8 per study" in plan
    continuous = parse_config(merged(base(tiny_dir), {"storage": str(tmp_path), "search": {"num_trials": 8}}))
    assert continuous.search.trials == 8 and "probe 8 trials on" in describe_plan(continuous, {})


def test_the_plan_flags_selection_on_a_carve_out_of_the_fine_tuning_data(tiny_dir, tmp_path):
    carved = {"domains": [{"name": "math", "validation": None,
                           "train": {"source": "train.jsonl", "prompt_field": "question", "response_field": "answer",
                                     "validation_fraction": 0.1}}]}
    plan = describe_plan(parse_config(merged(base(tiny_dir), carved)), {})
    (caveat,) = [line for line in plan.splitlines() if "caveat" in line]
    assert "domain math: selection is on 10% carved out of train.source" in caveat
    assert "domains[].validation" in caveat  # how to avoid it
    assert "caveat" not in describe_plan(parse_config(base(tiny_dir)), {})  # a validation benchmark selects


def test_the_fft_stage_starts_from_the_top_level_train_and_says_what_it_selects_on(tiny_dir):
    fft_stage = {"stages": {"fft": {"train": {"lr": 1e-3, "epochs": 8}}}, "train": {"micro_batch_size": 2},
                 "domains": [{**base()["domains"][0], "train": {**base()["domains"][0]["train"], "validation_fraction": 0.1}}]}
    cfg = parse_config(merged(base(tiny_dir), fft_stage))
    fft = cfg.stages.fft.train
    assert (fft.lr, fft.epochs, fft.micro_batch_size, fft.seed) == (1e-3, 8, 2, 3)  # own, own, inherited, top-level
    assert cfg.train.lr == 2e-5 and cfg.train.epochs == 2  # MFT's own schedule is untouched
    plan = describe_plan(cfg, {})
    assert "fft stage per study: full fine-tuning of the pretrained backbone, 8 epoch(s) at lr 0.001" in plan
    assert "math on validation loss" in plan


def test_the_plan_says_which_rows_run_again_with_more_seeds(tiny_dir):
    cfg = parse_config(merged(base(tiny_dir), {"baselines": ["unmasked", "random", "continued_fft"]}))
    assert cfg.seeds == 3  # the default, as the paper's mean ± std over runs
    assert ("seeds: 3 (3..5) for the selected configuration, the random mask, the continued-FFT control: 2 more "
            "run(s) of each after selection") in describe_plan(cfg, {})
    once = parse_config(merged(base(tiny_dir), {"seeds": 1}))
    assert "seeds: 1 (no re-runs" in describe_plan(once, {})


def test_a_carve_out_is_no_caveat_when_the_sweep_fine_tuned_the_backbone(tiny_dir):
    carved = {"stages": {"fft": {}},
              "domains": [{"name": "math", "validation": None,
                           "fft_selection": {"evaluator": "gsm8k", "source": "f.jsonl"},
                           "train": {"source": "train.jsonl", "prompt_field": "question", "response_field": "answer",
                                     "validation_fraction": 0.1}}]}
    cfg = parse_config(merged(base(tiny_dir), carved))
    assert cfg.caveats(cfg.domains[0]) == [] and "caveat" not in describe_plan(cfg, {})


def test_the_lora_baseline_trains_on_the_ffts_schedule_unless_it_sets_its_own(tiny_dir):
    cfg = parse_config(merged(base(tiny_dir), {"lora": {"rank": 8, "train": {"lr": 1e-3}}, "train": {"epochs": 3}}))
    assert (cfg.lora.rank, cfg.lora.train.lr, cfg.lora.train.epochs, cfg.lora.train.seed) == (8, 1e-3, 3, 3)
    carved = {**base()["domains"][0], "train": {**base()["domains"][0]["train"], "validation_fraction": 0.1}}
    staged = parse_config(merged(base(tiny_dir), {"stages": {"fft": {"train": {"epochs": 7}}}, "domains": [carved]}))
    assert staged.lora.train.epochs == 7 and staged.lora.train.lr == 2e-5  # the fft stage's schedule
    both = parse_config(merged(base(tiny_dir), {"baselines": ["unmasked", "revert", "lora"]}))
    assert "revert and lora skipped for tiny: they need the pretrained model" in both.pretrained_missing(both.backbones[0])


def test_revert_without_a_pretrained_model_is_skipped_and_said_so_and_a_wrong_one_refused(tiny_dir, tmp_path):
    cfg = parse_config(merged(base(tiny_dir), {"baselines": ["unmasked", "revert"]}))
    (line,) = [l for l in describe_plan(cfg, {}).splitlines() if "revert skipped" in l]
    assert "set backbones[].pretrained, or start from the pretrained model with stages.fft" in line
    wider = tmp_path / "wider"
    tiny_llama(layers=4, hidden=32).config.save_pretrained(wider)
    with_pretrained = parse_config(merged(base(tiny_dir), {"baselines": ["unmasked", "revert"],
                                                           "backbones": [{"source": str(tiny_dir), "name": "tiny",
                                                                          "pretrained": str(wider)}]}))
    assert with_pretrained.pretrained_missing(with_pretrained.backbones[0]) is None
    with pytest.raises(ConfigError, match=r"backbones\[0\]\.pretrained: a llama of 4 blocks, width 32"):
        check_against_models(with_pretrained)


def test_a_hub_validation_at_another_split_is_accepted():
    patch = ("domains: [{name: m, train: {source: t.jsonl, prompt_field: q, response_field: a}, validation: {evaluator: "
             "gsm8k, source: openai/gsm8k, split: train, limit: 500, num_fewshot: 0}, test: {evaluator: gsm8k}}]")
    cfg = parse_config(merged(base(), yaml.safe_load(patch)))
    assert cfg.domains[0].validation.split == "train" and cfg.domains[0].test.split is None
