"""Fine-tuning: pseudo-label dataset, augmentation, training loop, resume, adapter round trip, CLI.

Data: small synthetic fluorescence images with pseudo-label JSONs in the docs/model-reference.md §5.3 layout,
made from the generator's true masks and their sqrt-area granularities. The model is the seeded
random-weight hiera-tiny; embeddings are cached so that every run encodes each image once.
"""

from __future__ import annotations

import copy
import json
import logging
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

SIZE = (128, 128)


def write_pseudo_labels(root: Path, n_images: int = 2, masks_per_image: int = 2, *,
                        extra: bool = False) -> tuple[Path, Path]:
    """``root/images/img<i>.tif`` (uint16) and ``root/labels/img<i>.json`` (§5.4 layout); returns both folders.

    Masks: the first cells and nuclei of the synthetic sample, with their sqrt-area granularity.
    ``extra`` adds the cases the loader must handle: an empty mask, a missing, a NaN and a
    non-numeric granularity, and an image whose JSON holds no usable mask.
    """
    from unsamv2_engine.io.coco import encode_rle
    from unsamv2_engine.synth import generate_sample
    from unsamv2_engine.synth.annotations import coco_for_sample

    images, labels = root / "images", root / "labels"
    images.mkdir(parents=True, exist_ok=True)
    labels.mkdir(parents=True, exist_ok=True)
    for i in range(n_images):
        sample = generate_sample(i, modality="fluorescence", shape=SIZE)
        anns = [a for a in coco_for_sample(sample)["annotations"] if a["level_name"] in ("cell", "nucleus")]
        anns = anns[:masks_per_image]
        if extra and i == 0:
            empty = {"segmentation": encode_rle(np.zeros(SIZE, bool)), "granularity": 0.5}
            anns = [empty, *anns]
            anns[1] = {**anns[1], "granularity": float("nan")}
            anns.append({**anns[2], "granularity": "coarse"})
            no_g = {k: v for k, v in anns[2].items() if k != "granularity"}
            anns.append(no_g)
        tifffile.imwrite(images / f"img{i}.tif", sample.image)
        doc = {"info": {}, "licenses": [], "categories": [{"id": 1, "name": "fg"}],
               "image": {"id": i, "file_name": f"img{i}.tif", "width": SIZE[1], "height": SIZE[0]},
               "annotations": anns}
        (labels / f"img{i}.json").write_text(json.dumps(doc))
    if extra:
        tifffile.imwrite(images / "blank.tif", np.zeros(SIZE, np.uint16))
        (labels / "blank.json").write_text(json.dumps({"annotations": [
            {"segmentation": encode_rle(np.zeros(SIZE, bool)), "granularity": 1.0}]}))
        tifffile.imwrite(images / "unlabelled.tif", np.zeros(SIZE, np.uint16))
    return images, labels


def fast_config(**overrides):
    """A short CPU run: cached embeddings, 2 masks, 1 correction click, no validation, no periodic checkpoint."""
    from unsamv2_engine.train.trainer import FinetuneConfig

    values = dict(max_steps=4, batch_size=1, lr=1e-3, min_lr=1e-4, checkpoint_every=0, val_fraction=0.0,
                  val_every=0, num_correction_clicks=1, max_masks=2, cache_embeddings=True, augment=False)
    values.update(overrides)
    return FinetuneConfig(**values)


@pytest.fixture(scope="module")
def pl_data(tmp_path_factory) -> tuple[Path, Path]:
    return write_pseudo_labels(tmp_path_factory.mktemp("pl"))


@pytest.fixture(scope="module")
def base_file(tmp_path_factory, tiny_model) -> Path:
    """The seeded tiny UnSAMv2 model as a checkpoint file (the base of adapters and CLI runs)."""
    from unsamv2_engine.model.checkpoint import save_checkpoint

    return save_checkpoint(tiny_model, tmp_path_factory.mktemp("base") / "tiny.pt")


def load_base(path: Path):
    from unsamv2_engine.model.checkpoint import load_checkpoint
    from unsamv2_engine.weights import sha256_file

    model = load_checkpoint(path, merge_lora=False)
    model.info.base_sha256 = sha256_file(path)
    return model


# ============================================================================ dataset
def test_dataset_reads_the_pseudo_label_format(tmp_path, caplog):
    from unsamv2_engine.train.dataset import PseudoLabelDataset

    images, labels = write_pseudo_labels(tmp_path, n_images=2, masks_per_image=2, extra=True)
    with caplog.at_level(logging.WARNING):
        ds = PseudoLabelDataset(images, labels, max_masks=30, seed=3)
    assert ds.names == ["img0", "img1"]  # blank (no usable mask) and unlabelled (no JSON) are skipped
    assert any("blank" in r.message for r in caplog.records)
    assert any("without a JSON" in r.message for r in caplog.records)
    item0 = ds.items[0]
    assert len(item0.rles) == 4  # the empty mask is dropped; NaN, "coarse" and missing granularities kept
    assert item0.granularities[0] == 1.0 and item0.granularities[2] == 1.0 and item0.granularities[3] == 1.0
    assert 0.1 <= item0.granularities[1] <= 1.0
    sample = ds[0]
    assert sample.image.shape == (3, 1024, 1024) and sample.image.dtype == torch.float32
    assert sample.masks.shape == (4, 1024, 1024) and sample.masks.dtype == torch.bool
    assert bool(sample.masks.flatten(1).any(1).all())
    assert sample.granularities.dtype == torch.float32
    # preprocessed exactly as inference does
    from unsamv2_engine.intensity import to_uint8_rgb
    from unsamv2_engine.io import read_image
    from unsamv2_engine.preprocess import preprocess_image

    expected = preprocess_image(to_uint8_rgb(read_image(images / "img0.tif")))[0]
    assert torch.equal(sample.image, expected)


def test_dataset_samples_are_a_function_of_seed_epoch_index(tmp_path):
    from unsamv2_engine.train.augment import AugmentConfig
    from unsamv2_engine.train.dataset import PseudoLabelDataset

    images, labels = write_pseudo_labels(tmp_path, n_images=1, masks_per_image=6)
    a = PseudoLabelDataset(images, labels, max_masks=3, augment=AugmentConfig(), seed=7)
    b = PseudoLabelDataset(images, labels, max_masks=3, augment=AugmentConfig(), seed=7)
    s1, s2 = a.sample(0, epoch=2), b.sample(0, epoch=2)
    assert torch.equal(s1.image, s2.image) and torch.equal(s1.masks, s2.masks)
    assert torch.equal(s1.granularities, s2.granularities)
    assert s1.num_objects <= 3
    draws = {tuple(a.choose_masks(0, epoch)) for epoch in range(8)}
    assert len(draws) > 1  # another epoch, another subset of the 6 masks


def test_dataset_errors_are_actionable(tmp_path):
    from unsamv2_engine.train.dataset import PseudoLabelDataset

    images, _ = write_pseudo_labels(tmp_path / "a", n_images=1)
    empty_labels = tmp_path / "nolabels"
    empty_labels.mkdir()
    with pytest.raises(ValueError, match="no pseudo-label JSON"):
        PseudoLabelDataset(images, empty_labels)
    with pytest.raises(FileNotFoundError, match="not found"):
        PseudoLabelDataset(tmp_path / "missing", empty_labels)
    empty_images = tmp_path / "noimages"
    empty_images.mkdir()
    with pytest.raises(ValueError, match="no image"):
        PseudoLabelDataset(empty_images, empty_labels)


def test_augmentation_moves_image_and_masks_together():
    from unsamv2_engine.train.augment import AugmentConfig, augment_sample

    rng = np.random.default_rng(0)
    masks = np.zeros((2, 60, 80), bool)
    masks[0, 10:30, 15:40] = True
    masks[1, 35:55, 50:70] = True
    image = np.repeat((masks[0] * 200 + masks[1] * 100).astype(np.uint8)[..., None], 3, axis=2)
    exact = AugmentConfig(hflip=1.0, vflip=1.0, rot90=1.0, affine=0.0, intensity=0.0)
    img, msk = augment_sample(image, masks, rng, exact)
    assert img.shape[:2] == msk.shape[1:]
    assert np.array_equal(img[..., 0] == 200, msk[0]) and np.array_equal(img[..., 0] == 100, msk[1])
    mild = AugmentConfig(hflip=0.0, vflip=0.0, rot90=0.0, affine=1.0, intensity=0.0)
    img, msk = augment_sample(image, masks, np.random.default_rng(1), mild)
    for k, value in ((0, 200), (1, 100)):
        from_image = np.abs(img[..., 0].astype(int) - value) < 30
        inter, union = np.count_nonzero(from_image & msk[k]), np.count_nonzero(from_image | msk[k])
        assert inter / union > 0.85
    jitter = AugmentConfig(hflip=0.0, vflip=0.0, rot90=0.0, affine=0.0, intensity=1.0)
    img, msk = augment_sample(image, masks, np.random.default_rng(2), jitter)
    assert np.array_equal(msk, masks) and not np.array_equal(img, image)


# ============================================================================ trainable sets
def test_trainable_sets(tiny_model):
    from unsamv2_engine.train.trainer import added_parameter_count, select_trainable

    gran = select_trainable(tiny_model, "granularity")
    assert sum(p.numel() for p in gran.values()) == 345_760 == added_parameter_count(8)
    assert len(gran) == 70
    dec = select_trainable(tiny_model, "decoder")
    assert set(gran) < set(dec)
    assert any(n.startswith("sam_mask_decoder.iou_prediction_head") for n in dec)
    assert not any(n.startswith(("sam_mask_decoder.conv_s0", "image_encoder", "sam_prompt_encoder.point"))
                   for n in dec)
    assert len(select_trainable(tiny_model, "all")) == len(list(tiny_model.sam.parameters()))


def test_mask_chunks_give_the_loss_and_gradient_of_all_masks_at_once(tmp_path):
    """Chunked masks with gradient accumulation (the memory bound of issue 13) change nothing: an object's
    click does not depend on its chunk, and loss and gradients equal those of one pass over all masks.
    """
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.decoding import encode_image
    from unsamv2_engine.train.dataset import PseudoLabelDataset
    from unsamv2_engine.train.trainer import InteractiveLoss, mask_chunks, select_trainable

    assert mask_chunks(5, 2) == [(0, 2), (2, 4), (4, 5)] and mask_chunks(5, 0) == [(0, 5)]
    images, labels = write_pseudo_labels(tmp_path, n_images=1, masks_per_image=3)
    model = build_model("tiny", seed=0, image_size=256)  # a reduced input size keeps the test fast
    model.sam.eval()
    trainable = select_trainable(model, "granularity")
    model.sam.requires_grad_(False)
    for p in trainable.values():
        p.requires_grad_(True)
    sample = PseudoLabelDataset(images, labels, max_masks=3, image_size=256).sample(0, 0)
    assert sample.num_objects == 3
    with torch.no_grad():
        f = encode_image(model.sam, sample.image[None])
    # The first pass only: a correction click is drawn uniformly over the error region, so one pixel that
    # flips with the float rounding of another batch size moves it (the same holds between any two runs).
    forward = InteractiveLoss(model.sam, num_correction_clicks=0)

    def run(chunk: int) -> tuple[float, dict[str, torch.Tensor]]:
        for p in trainable.values():
            p.grad = None
        total = 0.0
        for lo, hi in mask_chunks(sample.num_objects, chunk):
            out = forward(None, f.image_embed, *f.high_res, sample.masks[lo:hi], sample.granularities[lo:hi],
                          click_seed=11, num_objects=3.0, first_object=lo)
            out["loss"].backward()
            total += float(out["loss"].detach())
        return total, {k: p.grad.clone() for k, p in trainable.items() if p.grad is not None}

    loss_all, grad_all = run(0)
    loss_chunked, grad_chunked = run(1)
    assert grad_all and set(grad_all) == set(grad_chunked)
    assert loss_chunked == pytest.approx(loss_all, rel=1e-5)
    for name in grad_all:
        torch.testing.assert_close(grad_chunked[name], grad_all[name], rtol=1e-4, atol=1e-7)


def test_training_reaches_every_tensor_of_the_granularity_module(tmp_path):
    """The reduced learnability guard (issue 13): a few steps of the authors' recipe (trainable
    ``granularity``) on ground-truth labels move each of the 70 added tensors (granularity encoder,
    gra token and MLP, LoRA A and B) and nothing else; it fails if gradients stop reaching any of them.
    """
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.build import is_added_parameter
    from unsamv2_engine.train.trainer import finetune

    images, labels = write_pseudo_labels(tmp_path / "data", n_images=2, masks_per_image=2)
    model = build_model("tiny", seed=0, image_size=128)  # a reduced input size keeps the test fast
    before = {k: v.clone() for k, v in model.sam.state_dict().items()}
    result = finetune(model, (images, labels), fast_config(max_steps=3, lr=1e-3), workdir=tmp_path / "work")
    assert result.steps == 3 and all(math.isfinite(x) for x in result.losses)
    after = model.sam.state_dict()
    added = [k for k in after if is_added_parameter(k)]
    assert len(added) == 70
    unchanged = [k for k in added if torch.equal(before[k], after[k])]
    assert not unchanged, f"no gradient reached: {unchanged}"
    assert all(torch.equal(before[k], after[k]) for k in after if not is_added_parameter(k))


# ============================================================================ training
@pytest.mark.slow
def test_overfit_halves_the_loss(tiny_model, pl_data, tmp_path):
    """A handful of images is overfitted: the loss falls by at least half in 10 steps.

    The ``decoder`` set is used: on random weights the granularity module alone (LoRA starts at the
    identity) moves the loss only slowly; on a trained SAM it is the set the authors train.
    """
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import apply_adapter, read_checkpoint
    from unsamv2_engine.train.trainer import finetune

    model = copy.deepcopy(tiny_model)
    model.sam.requires_grad_(False)
    result = finetune(model, pl_data, fast_config(max_steps=10, trainable="decoder"), workdir=tmp_path / "work")
    assert result.steps == 10 and len(result.losses) == 10 and not result.cancelled
    assert np.mean(result.losses[-3:]) <= 0.5 * result.losses[0], result.losses
    assert not model.sam.training and not any(p.requires_grad for p in model.sam.parameters())  # as it came
    # decoder training writes an adapter that also carries the changed decoder tensors (format version 2):
    # applied on a fresh copy of the base it reproduces the trained model exactly
    assert result.output == tmp_path / "work" / "adapter.pt"
    adapter = read_checkpoint(result.output)
    assert adapter["format_version"] == 2
    assert adapter["extra_state_dict"] and all(k.startswith("sam_mask_decoder.") for k in adapter["extra_state_dict"])
    rebuilt = build_model("tiny", seed=0, image_size=tiny_model.image_size)
    apply_adapter(rebuilt, result.output)
    trained, restored = model.sam.state_dict(), rebuilt.sam.state_dict()
    assert set(trained) == set(restored) and all(torch.equal(restored[k], trained[k]) for k in trained)
    log = [json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 11))
    assert set(log[0]) >= {"loss", "loss_mask", "loss_dice", "loss_iou", "loss_class", "lr", "seconds"}
    assert (tmp_path / "work" / "loss.png").stat().st_size > 1000
    assert (tmp_path / "work" / "checkpoints" / "step_10.pt").exists()


@pytest.mark.slow
def test_resume_equals_uninterrupted_and_adapter_round_trip(base_file, pl_data, tmp_path):
    """Cancel after 2 of 4 steps, resume: same losses and parameters as one uninterrupted run; its adapter
    loaded on the base file predicts bit-identically to the trained in-memory model.
    """
    from unsamv2_engine.model.checkpoint import load_checkpoint
    from unsamv2_engine.session import ImageSession
    from unsamv2_engine.train.trainer import finetune

    config = fast_config(max_steps=4, checkpoint_every=1, lr=3e-3)
    full_model = load_base(base_file)
    full = finetune(full_model, pl_data, config, workdir=tmp_path / "full", output=tmp_path / "full.pt")

    cancel = threading.Event()
    events = []

    def stop_after_two(event):
        events.append(event)
        if event["event"] == "step" and event["step"] == 2:
            cancel.set()

    part = finetune(load_base(base_file), pl_data, config, workdir=tmp_path / "part", cancel=cancel,
                    progress=stop_after_two)
    assert part.cancelled and part.steps == 2 and part.output is None
    assert (tmp_path / "part" / "checkpoints" / "last.pt").exists()
    assert {"stage", "step", "checkpoint"} <= {e["event"] for e in events}
    with pytest.raises(ValueError, match="resume"):
        finetune(load_base(base_file), pl_data, config, workdir=tmp_path / "part")
    resumed_model = load_base(base_file)
    resumed = finetune(resumed_model, pl_data, config, workdir=tmp_path / "part", resume=True,
                       output=tmp_path / "resumed.pt")
    assert resumed.steps == 4 and not resumed.cancelled
    np.testing.assert_allclose(resumed.losses, full.losses, rtol=1e-6, atol=1e-6)
    a, b = full_model.granularity_parameters(), resumed_model.granularity_parameters()
    assert max(float((a[k] - b[k]).detach().abs().max()) for k in a) < 1e-6
    assert any(float(p.detach().abs().max()) > 0 for k, p in a.items() if "lora_B" in k)  # LoRA moved off the identity

    loaded = load_checkpoint(base_file, adapter=tmp_path / "full.pt")
    image = tifffile.imread(pl_data[0] / "img0.tif")
    points, labels = np.array([[60.0, 64.0]]), np.array([1])
    ours, theirs = ImageSession(full_model), ImageSession(loaded)
    ours.set_image(image)
    theirs.set_image(image)
    for g in (0.2, 0.9):
        p, q = ours.predict(points, labels, g), theirs.predict(points, labels, g)
        assert np.array_equal(p.low_res_logits, q.low_res_logits) and np.array_equal(p.mask, q.mask)


@pytest.mark.slow
def test_validation_and_plain_sam_base(tiny_sam2_model, tmp_path):
    """A plain SAM 2.1 base gets a fresh granularity module; validation reports 1-click IoU and NoC."""
    from unsamv2_engine.train.trainer import finetune

    data = write_pseudo_labels(tmp_path / "data", n_images=3, masks_per_image=2)
    model = copy.deepcopy(tiny_sam2_model)
    config = fast_config(max_steps=2, val_fraction=0.34, val_every=1, val_max_clicks=2, num_correction_clicks=0)
    result = finetune(model, data, config, workdir=tmp_path / "work")
    assert model.has_granularity and result.output.name == "adapter.pt"
    assert [v["step"] for v in result.val] == [0, 1, 2]
    for record in result.val:
        assert record["images"] == 1 and record["objects"] == 2
        assert 0.0 <= record["iou_1click"] <= 1.0 and 1.0 <= record["noc85"] <= 2.0
    log = [json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert sum(r["event"] == "val" for r in log) == 3
    assert math.isfinite(result.final_loss)


# ============================================================================ CLI
@pytest.mark.slow
def test_cli_finetune_end_to_end(base_file, pl_data, tmp_path, capsys):
    from unsamv2_engine.cli import main
    from unsamv2_engine.model.checkpoint import read_adapter

    out = tmp_path / "lab.pt"
    code = main(["finetune", "--images", str(pl_data[0]), "--pseudo-labels", str(pl_data[1]), "--base",
                 str(base_file), "-o", str(out), "--max-steps", "2", "--device", "cpu", "--cache-embeddings",
                 "--max-masks", "2", "--val-fraction", "0", "--batch-size", "1", "--correction-clicks", "1",
                 "--json-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    events = [json.loads(line) for line in captured.out.splitlines()]
    kinds = [e["event"] for e in events]
    assert set(kinds) <= {"stage", "step", "val", "checkpoint", "done", "error"}
    steps = [e for e in events if e["event"] == "step"]
    assert [e["step"] for e in steps] == [1, 2]
    assert all({"step", "max_steps", "loss", "lr", "seconds"} <= set(e) for e in steps)
    assert kinds[-1] == "done" and events[-1]["output"] == str(out)
    adapter = read_adapter(out)
    assert adapter["metadata"]["finetune"]["steps"] == 2
    assert adapter["base"]["source"] == str(base_file)
    assert (tmp_path / "lab_work" / "checkpoints" / "last.pt").exists()

    # a finished run resumes to nothing new, and an unfinished --resume without checkpoints starts afresh
    code = main(["finetune", "--images", str(pl_data[0]), "--pseudo-labels", str(pl_data[1]), "--base",
                 str(base_file), "-o", str(out), "--max-steps", "2", "--device", "cpu", "--cache-embeddings",
                 "--max-masks", "2", "--val-fraction", "0", "--batch-size", "1", "--correction-clicks", "1",
                 "--resume", "-q"])
    assert code == 0


@pytest.mark.slow
def test_cli_finetune_makes_pseudo_labels_first(base_file, pl_data, tmp_path, capsys):
    """Without --pseudo-labels the command labels the images itself (classical backbone), then trains."""
    from unsamv2_engine.cli import main
    from unsamv2_engine.model.checkpoint import read_adapter

    out = tmp_path / "lab.pt"
    code = main(["finetune", "--images", str(pl_data[0]), "--base", str(base_file), "-o", str(out),
                 "--backbone", "classical", "--max-steps", "1", "--device", "cpu", "--cache-embeddings",
                 "--max-masks", "2", "--val-fraction", "0", "--batch-size", "1", "--correction-clicks", "1",
                 "--json-progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    labels = sorted((tmp_path / "lab_work" / "pseudo-labels").glob("*.json"))
    assert [p.stem for p in labels] == sorted(p.stem for p in pl_data[0].iterdir() if p.is_file())
    assert all(json.loads(p.read_text())["annotations"] for p in labels)
    events = [json.loads(line) for line in captured.out.splitlines()]
    assert any(e["event"] == "stage" and e.get("stage") == "pseudo-labels" for e in events)
    assert [e["step"] for e in events if e["event"] == "step"] == [1]
    assert read_adapter(out)["metadata"]["finetune"]["steps"] == 1


def test_cli_bad_images_dir_exits_2(tmp_path, capsys):
    from unsamv2_engine.cli import main

    code = main(["finetune", "--images", str(tmp_path / "nope"), "--base", "x.pt", "-o", str(tmp_path / "a.pt")])
    assert code == 2
    assert "--images" in capsys.readouterr().err
    code = main(["finetune", "--images", str(tmp_path), "--pseudo-labels", str(tmp_path), "--base", "x.pt",
                 "-o", str(tmp_path / "a.pt"), "--json-progress"])
    captured = capsys.readouterr()
    assert code == 2
    error = json.loads(captured.out.splitlines()[-1])
    assert error["event"] == "error" and "x.pt" in error["message"]


def test_finetune_help_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys\nfrom unsamv2_engine.cli import main\ntry:\n    main(['finetune', '--help'])\n"
            "except SystemExit:\n    pass\nprint(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', "
            "'numpy')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "--pseudo-labels" in result.stdout and "--json-progress" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]"


# ============================================================================ CUDA (lent GPU only)
@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_training_runs_under_bf16_autocast(pl_data, tmp_path):
    """Two steps on CUDA (amp auto = bf16 autocast): finite losses, an adapter that loads on the CPU."""
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import apply_adapter
    from unsamv2_engine.train.trainer import finetune

    model = build_model("tiny", seed=0, device="cuda")
    result = finetune(model, pl_data, fast_config(max_steps=2), workdir=tmp_path / "work")
    assert result.steps == 2 and all(np.isfinite(result.losses))
    apply_adapter(build_model("tiny", seed=0, image_size=256), result.output)
