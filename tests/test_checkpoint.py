"""Checkpoint kinds: official SAM 2.1, published UnSAMv2 layout, adapter files; strict loading."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from unsamv2_engine.model import build_model
from unsamv2_engine.model.checkpoint import (
    AdapterBaseMismatchError,
    CheckpointError,
    checkpoint_kind,
    describe_checkpoint,
    load_checkpoint,
    read_checkpoint,
    save_adapter,
    save_checkpoint,
)
from unsamv2_engine.session import ImageSession
from unsamv2_engine.weights import sha256_file

G = [0.1, 0.5, 1.0]
POINT = [[40, 40]]


def _randomise_added(model, seed=1):
    """Nonzero LoRA B and gra parameters, so that every added tensor matters."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.granularity_parameters().items():
            p.copy_(torch.randn(p.shape, generator=gen) * (0.02 if "lora_" in name else 0.5))
    return model


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    unsamv2 = _randomise_added(build_model("tiny", seed=0, image_size=256))
    paths = {"unsamv2": save_checkpoint(unsamv2, d / "unsamv2_tiny.pt", kind="unsamv2"),
             "sam2": save_checkpoint(unsamv2, d / "sam2.1_tiny.pt", kind="sam2")}
    paths["adapter"] = save_adapter(unsamv2, d / "adapter.pt", base_sha256=sha256_file(paths["sam2"]),
                                    base_source="sam2.1_tiny.pt", metadata={"note": "test"})
    return d, paths


@pytest.fixture(scope="module")
def features(files, cells_image_module):
    """One image embedding, shared: every model compared here has the same image encoder weights."""
    session = ImageSession(load_checkpoint(files[1]["sam2"]))
    session.set_image(cells_image_module)
    return session.features, session.image_hw


@pytest.fixture(scope="module")
def cells_image_module():
    from tests.conftest import make_cells_image

    return make_cells_image()


def _sweep(model, features):
    session = ImageSession(model)
    session.set_features(*features)
    return session.sweep(POINT, [1], G)


def _assert_same_weights(a, b):
    sa, sb = a.sam.state_dict(), b.sam.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_kinds_are_detected(files):
    _, paths = files
    assert {k: checkpoint_kind(read_checkpoint(p)) for k, p in paths.items()} == \
        {"unsamv2": "unsamv2", "sam2": "sam2", "adapter": "adapter"}


def test_published_layout_on_disk(files):
    _, paths = files
    state = read_checkpoint(paths["unsamv2"])["model"]
    assert sum("lora_" in k for k in state) == 56
    assert sum(".original_layer." in k for k in state) == 56
    plain = read_checkpoint(paths["sam2"])["model"]
    assert not any("lora_" in k or "original_layer" in k or "gra" in k for k in plain)


def test_unsamv2_round_trip_is_exact(files, features):
    _, paths = files
    original = _randomise_added(build_model("tiny", seed=0, image_size=256))
    loaded = load_checkpoint(paths["unsamv2"], merge_lora=False)
    assert loaded.has_granularity and loaded.info.family == "unsamv2" and loaded.info.size == "tiny"
    _assert_same_weights(original, loaded)
    ref, got = _sweep(original, features), _sweep(loaded, features)
    np.testing.assert_array_equal(got.masks, ref.masks)
    np.testing.assert_allclose(got.low_res_logits, ref.low_res_logits, atol=1e-5)


def test_sam2_checkpoint_loads_as_plain_sam(files):
    _, paths = files
    model = load_checkpoint(paths["sam2"])
    assert not model.has_granularity and model.info.family == "sam2.1"


def test_adapter_on_sam2_base_equals_full_checkpoint(files, features):
    _, paths = files
    full = load_checkpoint(paths["unsamv2"], merge_lora=False)
    composed = load_checkpoint(paths["sam2"], adapter=paths["adapter"], merge_lora=False)
    assert composed.has_granularity and composed.info.adapter == str(paths["adapter"])
    _assert_same_weights(full, composed)
    a, b = _sweep(full, features), _sweep(composed, features)
    np.testing.assert_array_equal(a.masks, b.masks)
    np.testing.assert_allclose(a.scores, b.scores, atol=1e-6)


def test_adapter_on_unsamv2_base_replaces_the_module(files, tmp_path, features):
    _, paths = files
    other = _randomise_added(build_model("tiny", seed=0, image_size=256), seed=7)
    other_adapter = save_adapter(other, tmp_path / "other.pt", base_sha256=sha256_file(paths["unsamv2"]))
    model = load_checkpoint(paths["unsamv2"], adapter=other_adapter)
    expected = _sweep(other, features)
    np.testing.assert_allclose(_sweep(model, features).low_res_logits, expected.low_res_logits, atol=1e-5)


def test_adapter_base_hash_is_checked(files, tmp_path):
    _, paths = files
    other_base = save_checkpoint(build_model("tiny", granularity=False, seed=5), tmp_path / "other_base.pt",
                                 kind="sam2")
    with pytest.raises(AdapterBaseMismatchError, match="--allow-base-mismatch"):
        load_checkpoint(other_base, adapter=paths["adapter"])
    model = load_checkpoint(other_base, adapter=paths["adapter"], allow_base_mismatch=True)
    assert model.has_granularity


def test_adapter_size_is_checked(files, tmp_path):
    _, paths = files
    small_adapter = save_adapter(build_model("small", seed=0), tmp_path / "small_adapter.pt")
    with pytest.raises(AdapterBaseMismatchError, match="small model"):
        load_checkpoint(paths["sam2"], adapter=small_adapter)


def test_adapter_given_as_checkpoint_is_explained(files):
    _, paths = files
    with pytest.raises(CheckpointError, match="--adapter"):
        load_checkpoint(paths["adapter"])


def test_adapter_metadata_and_description(files):
    _, paths = files
    info = describe_checkpoint(paths["adapter"])
    assert info["kind"] == "adapter" and info["tensors"] == 70
    assert info["base"]["sha256"] == sha256_file(paths["sam2"])
    assert info["metadata"]["note"] == "test" and info["config"]["lora_rank"] == 8
    full = describe_checkpoint(paths["unsamv2"])
    assert full["kind"] == "unsamv2" and full["size"] == "tiny"


def test_missing_and_unexpected_keys_are_named(files, tmp_path):
    _, paths = files
    state = dict(read_checkpoint(paths["unsamv2"])["model"])
    del state["sam_mask_decoder.gra_token.weight"]
    state["sam_mask_decoder.extra.weight"] = torch.zeros(1)
    torch.save({"model": state}, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "bad.pt")
    assert "sam_mask_decoder.gra_token.weight" in str(err.value)
    assert "sam_mask_decoder.extra.weight" in str(err.value)


def test_partial_lora_is_an_error_but_no_lora_is_identity(files, tmp_path, caplog):
    _, paths = files
    state = dict(read_checkpoint(paths["unsamv2"])["model"])
    one_lora = next(k for k in state if "lora_B" in k)
    partial = {k: v for k, v in state.items() if k != one_lora}
    torch.save({"model": partial}, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match="lora_B"):
        load_checkpoint(tmp_path / "partial.pt")
    no_lora = {k: v for k, v in state.items() if "lora_" not in k}
    torch.save({"model": no_lora}, tmp_path / "nolora.pt")
    with caplog.at_level(logging.WARNING):
        model = load_checkpoint(tmp_path / "nolora.pt", merge_lora=False)
    assert "no LoRA tensors" in caplog.text
    assert all(torch.count_nonzero(m.lora_B) == 0 for m in model.sam.modules() if hasattr(m, "lora_B"))


def test_wrong_shape_is_reported(files, tmp_path):
    _, paths = files
    state = dict(read_checkpoint(paths["unsamv2"])["model"])
    state["sam_mask_decoder.gra_token.weight"] = torch.zeros(2, 256)
    torch.save({"model": state}, tmp_path / "shape.pt")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_checkpoint(tmp_path / "shape.pt")


def test_truncated_file_is_explained(files, tmp_path):
    _, paths = files
    data = paths["unsamv2"].read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "trunc.pt")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing.pt")
    (tmp_path / "image.pt").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    with pytest.raises(CheckpointError, match="not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "image.pt")


def test_save_unsamv2_needs_granularity(tiny_sam2_model, tmp_path):
    with pytest.raises(CheckpointError, match="no granularity module"):
        save_checkpoint(tiny_sam2_model, tmp_path / "x.pt", kind="unsamv2")


def test_adapter_with_changed_base_tensors_restores_them(files, tmp_path):
    """Format version 2: an adapter from decoder fine-tuning also replaces the base tensors it changed."""
    import torch

    from unsamv2_engine.model.checkpoint import read_adapter

    _, paths = files
    tuned = load_checkpoint(paths["unsamv2"])
    with torch.no_grad():
        tuned.sam.sam_mask_decoder.iou_token.weight.add_(0.5)
    path = save_adapter(tuned, tmp_path / "decoder_adapter.pt", extra_keys=["sam_mask_decoder.iou_token.weight"])
    obj = read_adapter(path)
    assert obj["format_version"] == 2 and list(obj["extra_state_dict"]) == ["sam_mask_decoder.iou_token.weight"]
    restored = load_checkpoint(paths["unsamv2"], adapter=path)
    assert torch.equal(restored.sam.sam_mask_decoder.iou_token.weight, tuned.sam.sam_mask_decoder.iou_token.weight)
    plain = save_adapter(tuned, tmp_path / "plain_adapter.pt")
    assert read_adapter(plain)["format_version"] == 1 and "extra_state_dict" not in read_adapter(plain)
    with pytest.raises(KeyError, match="not tensors of this model"):
        save_adapter(tuned, tmp_path / "bad.pt", extra_keys=["no.such.tensor"])
    bad = read_adapter(path)
    bad["extra_state_dict"]["sam_mask_decoder.iou_token.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad_shape.pt")
    with pytest.raises(CheckpointError, match="other shapes"):
        load_checkpoint(paths["unsamv2"], adapter=tmp_path / "bad_shape.pt")
