"""``unsamv2 pretrain-mini``: the miniature SAM's recipe, its resumable loop and its checkpoint file.

Runs a couple of steps at 64 px (the smallest input size) so that the suite stays fast; whether the
miniature learns to segment is measured by the benchmark in docs/fine-tuning.md, not here.
"""

from __future__ import annotations

import json

import pytest
import torch


def test_targets_are_objects_of_several_levels():
    from unsamv2_engine.minisam.samples import make_sample

    sample = make_sample(3, image_size=64, synth_shape=128, objects=6)
    assert sample is not None
    assert sample.pixels.shape == (1, 3, 64, 64) and sample.masks.shape[1:] == (64, 64)
    assert sample.masks.dtype == torch.bool and bool(sample.masks.flatten(1).any(1).all())
    assert len(set(sample.levels)) >= 2  # random hierarchy levels, not one


def test_recipe_supervises_the_best_of_three_and_reaches_every_weight():
    from unsamv2_engine.minisam.recipe import interaction_loss
    from unsamv2_engine.minisam.samples import make_sample
    from unsamv2_engine.model import build_model

    model = build_model("tiny", granularity=False, seed=0, image_size=64)
    model.sam.train()
    sample = make_sample(5, image_size=64, synth_shape=128, objects=3)
    out = interaction_loss(model.sam, sample.pixels, sample.masks, correction_clicks=1,
                           generator=torch.Generator().manual_seed(0), innermost=0.5)
    assert torch.isfinite(out["loss"]) and 0.0 <= out["iou_first"] <= 1.0
    out["loss"].backward()
    trunk = model.sam.image_encoder.trunk.patch_embed.proj.weight
    heads = model.sam.sam_mask_decoder.iou_prediction_head.layers[0].weight
    assert trunk.grad is not None and float(trunk.grad.abs().sum()) > 0  # the encoder is trained too
    assert heads.grad is not None and float(heads.grad.abs().sum()) > 0


def test_pretrain_writes_a_marked_plain_sam_file_and_resumes(tmp_path):
    from unsamv2_engine.minisam.pretrain import PretrainConfig, pretrain
    from unsamv2_engine.model.checkpoint import checkpoint_kind, describe_checkpoint, load_checkpoint, read_checkpoint

    config = PretrainConfig(steps=2, max_minutes=30, image_size=64, synth_shape=96, objects=2, warmup=1,
                            correction_clicks=1)
    events = []
    result = pretrain(config, tmp_path / "mini.pt", workdir=tmp_path / "work", progress=events.append)
    assert result["steps"] == 2
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2] and all("eta_min" in e and "seconds" in e for e in steps)
    obj = read_checkpoint(tmp_path / "mini.pt")
    assert checkpoint_kind(obj) == "sam2" and obj["image_size"] == 64
    meta = obj["metadata"]
    assert meta["synthetic_miniature"] is True and "NOT a real SAM" in meta["warning"] and meta["steps"] == 2
    info = describe_checkpoint(tmp_path / "mini.pt")
    assert info["image_size"] == 64 and info["metadata"]["kind"] == "synthetic-miniature-sam2.1"
    model = load_checkpoint(tmp_path / "mini.pt")
    assert model.image_size == 64 and not model.has_granularity and model.info.extra["synthetic_miniature"]
    # a longer budget on the same work folder continues from step 2
    config.steps = 3
    result = pretrain(config, tmp_path / "mini.pt", workdir=tmp_path / "work", progress=events.append)
    assert result["steps"] == 3
    assert any("resuming at step 2" in e.get("message", "") for e in events)
    log = [json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    with pytest.raises(ValueError, match="other settings"):
        pretrain(PretrainConfig(steps=4, image_size=96, synth_shape=96), tmp_path / "x.pt", workdir=tmp_path / "work")


def test_cli_pretrain_mini_caches_under_a_telling_name(tmp_path, monkeypatch, capsys):
    from unsamv2_engine.cli import main

    monkeypatch.setenv("UNSAMV2_CACHE", str(tmp_path / "cache"))
    code = main(["pretrain-mini", "-o", str(tmp_path / "m.pt"), "--steps", "1", "--image-size", "64",
                 "--synth-shape", "96", "--objects", "2", "--device", "cpu", "-q"])
    assert code == 0
    cached = tmp_path / "cache" / "minisam-synthetic-tiny-64px-seed0.pt"
    assert cached.exists() and cached.read_bytes() == (tmp_path / "m.pt").read_bytes()
    assert "not a real SAM" in capsys.readouterr().out
    assert main(["pretrain-mini", "-o", str(tmp_path / "m2.pt"), "--image-size", "100"]) == 2


def test_image_size_is_validated():
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import CheckpointError, checkpoint_image_size

    with pytest.raises(ValueError, match="multiple of 32"):
        build_model("tiny", image_size=100)
    assert checkpoint_image_size({}) is None and checkpoint_image_size({"image_size": 256}) == 256
    with pytest.raises(CheckpointError, match="image_size"):
        checkpoint_image_size({"image_size": 250})


def _click_attention_peaks(sam, clicks) -> list[bool]:
    """Whether each click's first cross-attention peaks on the image-embedding cell that holds it.

    Clicks are (x, y) in model pixels; the image content is zero, so only positional encodings count.
    """
    pe = sam.sam_prompt_encoder
    attention = sam.sam_mask_decoder.transformer.layers[0].cross_attn_token_to_image
    grid = pe.get_dense_pe()  # [1, C, h, w]
    h, w = grid.shape[-2:]
    keys = attention.k_proj(grid.flatten(2).transpose(1, 2))  # [1, h*w, c]
    stride = sam.image_size / w
    hits = []
    for x, y in clicks:
        sparse, _ = pe(points=(torch.tensor([[[x, y]]], dtype=torch.float32), torch.tensor([[1]])), boxes=None,
                       masks=None)
        query = attention.q_proj(sparse[:, :1])  # the click's token
        heads = attention.num_heads
        q = query.reshape(1, 1, heads, -1).transpose(1, 2)
        k = keys.reshape(1, h * w, heads, -1).transpose(1, 2)
        logits = (q @ k.transpose(-1, -2)).sum(1)[0, 0]  # summed over heads, [h*w]
        row, col = divmod(int(logits.argmax()), w)
        hits.append(abs(row - y // stride) <= 1 and abs(col - x // stride) <= 1)
    return hits


def test_positional_init_makes_the_click_visible_to_the_decoder():
    """With the tied query/key projections the click's token attends to its own neighbourhood from step 0;
    with PyTorch's default initialisation it attends almost anywhere (why pretraining stalled at IoU 0.15).
    """
    from unsamv2_engine.minisam.init import positional_attention_init
    from unsamv2_engine.model import build_model

    sam = build_model("tiny", granularity=False, seed=0, image_size=128).sam.eval()
    points = torch.randint(4, 124, (24, 2), generator=torch.Generator().manual_seed(0))
    clicks = [(float(x), float(y)) for x, y in points]
    with torch.no_grad():
        default_hits = sum(_click_attention_peaks(sam, clicks))
        assert positional_attention_init(sam, gain=1.5) == 5
        tied_hits = sum(_click_attention_peaks(sam, clicks))
    assert tied_hits >= 22, tied_hits
    assert default_hits <= 6, default_hits  # 1-2 of 24 for seeds 0-2
    t = sam.sam_mask_decoder.transformer
    assert torch.equal(t.final_attn_token_to_image.q_proj.weight, t.final_attn_token_to_image.k_proj.weight)


def test_innermost_clicks_follow_the_evaluators_rule():
    """``--innermost-clicks F``: the chosen targets are clicked where the RITM evaluator clicks (the innermost
    pixel first, then the deepest error), the others keep SAM's uniform clicks.
    """
    import numpy as np

    from unsamv2_engine.evaluate.clicker import next_click
    from unsamv2_engine.minisam.pretrain import PretrainConfig
    from unsamv2_engine.minisam.recipe import _innermost_clicks

    masks = torch.zeros(2, 32, 32, dtype=torch.bool)
    masks[0, 4:20, 6:14] = True
    masks[1, 10:30, 10:30] = True
    uniform = torch.tensor([[[7.0, 5.0]], [[11.0, 11.0]]])
    labels = torch.ones(2, 1, dtype=torch.int32)
    coords, new_labels = _innermost_clicks(uniform, labels, masks, None, torch.tensor([True, False]))
    first = next_click(masks[0].numpy(), np.zeros((32, 32), bool))
    assert coords[0, 0].tolist() == [first.col, first.row] and new_labels[0, 0] == 1
    assert torch.equal(coords[1], uniform[1])  # not chosen: unchanged
    pred = masks.clone()
    pred[0, 4:20, 6:10] = False  # a missed left half: the correction is positive, inside the miss
    coords, new_labels = _innermost_clicks(uniform, labels, masks, pred, torch.tensor([True, False]))
    x, y = coords[0, 0].tolist()
    assert new_labels[0, 0] == 1 and 6 <= x < 10 and 4 <= y < 20
    with pytest.raises(ValueError, match="innermost_clicks"):
        PretrainConfig(innermost_clicks=1.5).validate()
