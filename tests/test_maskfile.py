"""Mask files: bit-packed, integrity-checked, bound to the backbone; and `apply` end to end."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from mft_search.errors import MaskFileError
from mft_search.core.maskfile import backbone_fingerprint, load_mask_file, save_mask_file, verify_for_model
from mft_search.core.masking import MaskSpec, attach_masks, current_masks, score_parameters
from mft_search.demo.tiny import tiny_gpt2, tiny_llama, tiny_tokenizer

MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}


def learned_mask(model, steps=2, **spec):
    attach_masks(model, MaskSpec(blocks=(1, 2), **spec))
    opt = torch.optim.AdamW(score_parameters(model), lr=1e-2, weight_decay=0.0)
    x = torch.randint(3, 400, (2, 16), generator=torch.Generator().manual_seed(0))
    for _ in range(steps):
        opt.zero_grad()
        model(x, labels=x).loss.backward()
        opt.step()
    return current_masks(model)


def write(model, masks, path, mode="local"):
    fp = backbone_fingerprint(model, list(masks))
    return save_mask_file(path, masks, fingerprint=fp, model_type=model.config.model_type,
                          dtype=torch.float32, mode=mode, ratio=0.1 if mode == "local" else None,
                          threshold=-0.035 if mode == "global" else None)


@pytest.fixture(params=sorted(MODELS))
def model_and_file(request, tmp_path):
    model = MODELS[request.param]()
    masks = learned_mask(model)
    return model, masks, write(model, masks, tmp_path / "mask.safetensors")


def test_round_trip_preserves_every_bit_and_the_metadata(model_and_file):
    model, masks, path = model_and_file
    loaded = load_mask_file(path)
    assert list(loaded.masks) == list(masks)
    for name, mask in masks.items():
        assert torch.equal(loaded.masks[name], mask)
        assert loaded.kept[name] == int(mask.sum())
    assert loaded.meta["mode"] == "local" and loaded.meta["ratio"] == 0.1
    assert loaded.meta["model_type"] == model.config.model_type
    verify_for_model(loaded, model)


def test_size_is_one_bit_a_weight_plus_at_most_4_kib(model_and_file):
    _, masks, path = model_and_file
    numel = sum(m.numel() for m in masks.values())
    assert path.stat().st_size <= numel / 8 + 4096


def test_a_paper_sized_group_stays_within_the_bound(tmp_path):
    # 4 blocks x 7 kinds, with Llama-length names: the metadata must still fit in 4 KiB.
    names = [f"model.layers.{b}.{k}" for b in range(20, 24) for k in
             ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
              "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")]
    masks = {n: torch.rand(64, 96) > 0.1 for n in names}
    path = save_mask_file(tmp_path / "m.safetensors", masks, fingerprint="f" * 64, model_type="llama",
                          dtype=torch.bfloat16, mode="local", ratio=0.1)
    assert path.stat().st_size <= 28 * 64 * 96 / 8 + 4096


def test_global_masks_round_trip_with_their_threshold(tmp_path):
    model = tiny_llama()
    masks = learned_mask(model, mode="global", threshold=-0.035)
    loaded = load_mask_file(write(model, masks, tmp_path / "g.safetensors", mode="global"))
    assert loaded.meta["threshold"] == -0.035 and "ratio" not in loaded.meta
    assert all(torch.equal(loaded.masks[n], m) for n, m in masks.items())


def test_a_mask_for_another_backbone_is_refused(model_and_file):
    model, _, path = model_and_file
    other = type(model)(model.config)  # same architecture, other weights
    with pytest.raises(MaskFileError, match="another backbone"):
        verify_for_model(load_mask_file(path), other)


def test_a_mask_for_other_shapes_is_refused(tmp_path):
    model = tiny_llama()
    path = write(model, learned_mask(model), tmp_path / "m.safetensors")
    with pytest.raises(MaskFileError, match="in the mask"):
        verify_for_model(load_mask_file(path), tiny_llama(hidden=32))


def test_a_truncated_file_is_refused(model_and_file):
    _, _, path = model_and_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 10])
    with pytest.raises(MaskFileError, match="truncated or corrupt"):
        load_mask_file(path)


def test_a_tampered_header_is_refused(model_and_file):
    _, masks, path = model_and_file
    data = path.read_bytes()
    name = next(iter(masks))
    kept = int(masks[name].sum())
    before = f'\\"{name}\\", [{", ".join(map(str, masks[name].shape))}], {kept}]'.encode()
    after = f'\\"{name}\\", [{", ".join(map(str, masks[name].shape))}], {kept - 1}]'.encode()
    assert before in data
    forged = data.replace(before, after.ljust(len(before)))  # same length: still parses
    path.write_bytes(forged)
    with pytest.raises(MaskFileError, match="digest"):
        load_mask_file(path)


def test_a_flipped_bit_in_the_body_is_refused(model_and_file):
    _, _, path = model_and_file
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(MaskFileError, match="digest"):
        load_mask_file(path)


def test_missing_and_foreign_files_are_refused(tmp_path):
    with pytest.raises(MaskFileError, match="no file"):
        load_mask_file(tmp_path / "absent.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, tmp_path / "weights.safetensors")
    with pytest.raises(MaskFileError, match="not an mft_search mask"):
        load_mask_file(tmp_path / "weights.safetensors")


def test_no_temp_file_is_left_behind(model_and_file):
    _, _, path = model_and_file
    assert [p.name for p in path.parent.iterdir()] == [path.name]


# --- apply end to end ----------------------------------------------------------------------------

CHECK_WITHOUT_MFT_SEARCH = """
import sys, torch
sys.modules["mft_search"] = None  # plain transformers only: importing mft_search would fail
from transformers import AutoModelForCausalLM, AutoTokenizer
model = AutoModelForCausalLM.from_pretrained(sys.argv[1]).eval()
AutoTokenizer.from_pretrained(sys.argv[1])
x = torch.load(sys.argv[2], weights_only=True)
expected = torch.load(sys.argv[3], weights_only=True)
with torch.no_grad():
    # allclose, not equal: another process may reduce in another order; a mask changes far more
    assert torch.allclose(model(x).logits, expected, rtol=1e-5, atol=1e-6), "logits differ"
print("ok")
"""


@pytest.mark.parametrize("arch", sorted(MODELS))
def test_apply_writes_a_checkpoint_plain_transformers_loads_with_equal_logits(arch, tmp_path):
    backbone = tmp_path / "backbone"
    model = MODELS[arch]()
    model.save_pretrained(backbone)
    tiny_tokenizer().save_pretrained(backbone)
    masks = learned_mask(model)
    write(model, masks, tmp_path / "mask.safetensors")
    x = torch.randint(3, 400, (2, 12))
    model.eval()
    with torch.no_grad():
        torch.save(model(x).logits, tmp_path / "logits.pt")
    torch.save(x, tmp_path / "x.pt")

    out = tmp_path / "masked"
    cmd = [sys.executable, "-m", "mft_search.apply", "--backbone", str(backbone),
           "--mask", str(tmp_path / "mask.safetensors"), "--out", str(out)]
    assert subprocess.run(cmd, capture_output=True, text=True).returncode == 0
    assert any(out.glob("*.safetensors")) and not any(out.glob("*.bin"))
    assert "mft_search" not in (out / "config.json").read_text()
    check = subprocess.run([sys.executable, "-c", CHECK_WITHOUT_MFT_SEARCH, str(out),
                            str(tmp_path / "x.pt"), str(tmp_path / "logits.pt")], capture_output=True, text=True)
    assert check.stdout.strip() == "ok", check.stderr
    # Readable by others on a shared volume, as an ordinary file is: the umask decides (was 0600/0700).
    ordinary = 0o666 & ~_umask()
    assert (tmp_path / "mask.safetensors").stat().st_mode & 0o777 == ordinary
    assert {p.stat().st_mode & 0o777 for p in out.iterdir()} == {ordinary}
    assert out.stat().st_mode & 0o777 == 0o777 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


def _tamper(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _foreign(path: Path) -> None:
    save_file({"weight": torch.zeros(4)}, str(path))  # a safetensors file, but no mask file


@pytest.mark.parametrize("damage, expected", [
    (None, "mask: this mask was learned on another backbone"),
    (_truncate, "mask: "),
    (_tamper, "mask: "),
    (_foreign, "mask: "),
    (Path.unlink, "mask: "),
])
def test_apply_refuses_a_bad_mask_file_in_one_line_with_exit_2_and_writes_nothing(tmp_path, damage, expected, capsys):
    # In this process, as `python -m mft_search.apply` runs it (cli.run of its main): a new
    # interpreter's imports cost ~3 s a case; the command itself runs in the test above.
    from mft_search import apply, cli

    model = tiny_llama()
    mask = tmp_path / "mask.safetensors"
    write(model, learned_mask(model), mask)
    backbone = tmp_path / "backbone"
    (tiny_llama(seed=1) if damage is None else model).save_pretrained(backbone)
    if damage is not None:
        damage(mask)
    out = tmp_path / "masked"
    capsys.readouterr()
    returncode = cli.run(apply.main, ["--backbone", str(backbone), "--mask", str(mask), "--out", str(out)])
    stderr = capsys.readouterr().err
    assert returncode == 2, stderr
    # transformers may draw progress bars above it; the error itself is one line, last
    assert stderr.strip().splitlines()[-1].startswith(f"error: {expected}")
    assert "Traceback" not in stderr
    assert not out.exists() and not list(tmp_path.glob(".masked*"))
