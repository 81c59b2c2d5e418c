"""Model structure: published key layout, parameter counts, LoRA, size detection."""

from __future__ import annotations

import json

import pytest
import torch

from unsamv2_engine.model import SIZES, build_model, detect_size, normalise_size
from unsamv2_engine.model.lora import LoRALinear, lora_layers


@pytest.fixture(scope="module")
def small_model():
    return build_model("small", seed=0)


def test_state_dict_is_the_published_layout(small_model, parity_dir):
    """Names, shapes and order of every tensor equal the authors' hiera-small model (589 entries)."""
    published = json.loads((parity_dir / "keys.json").read_text())["unsamv2_full"]
    ours = {k: list(v.shape) for k, v in small_model.sam.state_dict().items()}
    assert list(ours) == list(published)
    assert ours == published


def test_plain_sam2_layout_matches_upstream(parity_dir):
    published = json.loads((parity_dir / "keys.json").read_text())["sam2.1_hiera_small"]
    plain = build_model("small", granularity=False, seed=0)
    assert {k: list(v.shape) for k, v in plain.sam.state_dict().items()} == published
    assert not plain.has_granularity and not plain.has_lora


def test_parameter_counts(small_model):
    """345,760 added parameters on 46,060,610 of SAM 2.1-S (docs/model-reference.md §1.5)."""
    added = small_model.granularity_parameters()
    assert sum(p.numel() for p in added.values()) == 345_760
    assert len(added) == 70
    assert sum(p.numel() for p in small_model.sam.state_dict().values()) == 46_406_370
    lora = sum(p.numel() for n, p in added.items() if "lora_" in n)
    assert lora == 94_208


def test_lora_on_the_28_decoder_linears_only(small_model):
    layers = lora_layers(small_model.sam)
    assert len(layers) == 28
    assert all(layer.scale == 2.0 and layer.rank == 8 for layer in layers)
    assert not lora_layers(small_model.sam.image_encoder)
    assert not lora_layers(small_model.sam.memory_attention)


def test_lora_fold_is_exact_and_training_unfolds():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(16, 8))
    torch.nn.init.normal_(layer.lora_B, std=0.5)
    layer.eval()
    x = torch.randn(4, 16)
    separate = layer(x)
    assert not torch.allclose(separate, layer.original_layer(x))  # the update does something
    layer.merge()
    torch.testing.assert_close(layer(x), separate, atol=1e-6, rtol=0)
    layer.train()
    assert not layer.merged
    assert "_merged_weight" not in dict(layer.state_dict())


def test_lora_dropout_only_in_training():
    torch.manual_seed(0)
    layer = LoRALinear(torch.nn.Linear(64, 64), dropout=0.5)
    torch.nn.init.normal_(layer.lora_B, std=1.0)
    x = torch.randn(2, 64)
    layer.eval()
    assert torch.equal(layer(x), layer(x))
    layer.train()
    assert not torch.equal(layer(x), layer(x))


@pytest.mark.parametrize("size", list(SIZES))
def test_detect_size_from_shapes(size):
    spec = SIZES[size]
    state = {"image_encoder.trunk.patch_embed.proj.weight": torch.empty(spec.embed_dim, 3, 7, 7)}
    state.update({f"image_encoder.trunk.blocks.{i}.norm1.weight": torch.empty(1) for i in range(spec.num_blocks)})
    assert detect_size(state) == size


def test_detect_size_on_real_models(tiny_model, small_model):
    assert detect_size(tiny_model.sam.state_dict()) == "tiny"
    assert detect_size(small_model.sam.state_dict()) == "small"


def test_detect_size_errors():
    with pytest.raises(ValueError, match="adapter"):
        detect_size({"sam_mask_decoder.gra_token.weight": torch.empty(1, 256)})
    with pytest.raises(ValueError, match="matches no SAM 2.1 size"):
        detect_size({"image_encoder.trunk.patch_embed.proj.weight": torch.empty(100, 3, 7, 7)})


def test_size_aliases():
    assert normalise_size("b+") == "base_plus" and normalise_size("Large") == "large"
    with pytest.raises(ValueError, match="tiny, small, base_plus, large"):
        normalise_size("huge")


def test_unsamv2_config_flags(tiny_model, tiny_sam2_model):
    """unsamv2_small.yaml turns off three multimask flags that SAM 2.1 has on."""
    for flag in ("multimask_output_in_sam", "multimask_output_for_tracking", "use_multimask_token_for_obj_ptr"):
        assert getattr(tiny_model.sam, flag) is False
        assert getattr(tiny_sam2_model.sam, flag) is True


@pytest.mark.slow
@pytest.mark.parametrize("size", ["tiny", "base_plus", "large"])
def test_every_sam21_size_builds_with_the_same_granularity_module(size):
    """The granularity module lives in the 256-d decoder, so it is the same for every image-encoder size."""
    model = build_model(size, seed=0)
    state = model.sam.state_dict()
    assert detect_size(state) == size
    assert sum(p.numel() for p in model.granularity_parameters().values()) == 345_760
    assert len(lora_layers(model.sam)) == 28


def test_the_builder_equals_upstream_build_sam2():
    """The cached-config builder gives what ``sam2.build_sam.build_sam2`` gives: same weights from the same
    seed, same decoder settings (the post-processing flags build_sam2 adds), same input size.
    """
    from sam2.build_sam import build_sam2

    ours = build_model("tiny", granularity=False, seed=3, image_size=256).sam
    build_model("tiny", granularity=False, seed=1, image_size=256)  # a second build reuses the cached config
    torch.manual_seed(3)
    theirs = build_sam2(SIZES["tiny"].config, ckpt_path=None, device="cpu", mode="eval",
                        hydra_overrides_extra=["++model.image_size=256"])
    assert type(ours) is type(theirs) and not ours.training and ours.image_size == theirs.image_size == 256
    a, b = ours.state_dict(), theirs.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    for name in ("dynamic_multimask_via_stability", "dynamic_multimask_stability_delta",
                 "dynamic_multimask_stability_thresh"):
        assert getattr(ours.sam_mask_decoder, name) == getattr(theirs.sam_mask_decoder, name)
    assert ours.sam_mask_decoder.dynamic_multimask_via_stability is True


def test_skipping_random_init_is_for_loading_only_and_this_thread_only():
    """``random_init=False`` leaves SAM's weights unfilled but still initialises the granularity module
    (LoRA is the identity), and the skipping mode does not reach another thread.
    """
    import threading

    from unsamv2_engine.model.build import _SkipRandomInit

    model = build_model("tiny", seed=0, image_size=256, random_init=False)
    b = [p for n, p in model.sam.named_parameters() if "lora_B" in n]
    assert b and all(float(p.abs().max()) == 0 for p in b)
    assert float(model.granularity_parameters()["sam_prompt_encoder.granularity_embedding.weight"].std()) > 0

    filled = []
    with _SkipRandomInit():
        skipped = torch.zeros(64).uniform_(1.0, 2.0)
        thread = threading.Thread(target=lambda: filled.append(torch.zeros(64).uniform_(1.0, 2.0)))
        thread.start()
        thread.join()
    assert float(skipped.abs().max()) == 0  # the fill was skipped here
    assert float(filled[0].min()) >= 1.0  # and done in the other thread
