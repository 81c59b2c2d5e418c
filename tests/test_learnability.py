"""Truth labels in the pseudo-label layout and the matched/swapped learnability probe (issue 13, item 2).

The full check (a pretrained miniature base, a few hundred steps) is ``benchmarks/bench_learnability.py``;
the guard that training reaches every tensor of the granularity module on these labels is
``test_training_reaches_every_tensor_of_the_granularity_module`` in ``test_finetune.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from unsamv2_engine.synth import generate_sample


@pytest.fixture(scope="module")
def sample():
    return generate_sample(3, modality="fluorescence", shape=(128, 128))


def test_truth_labels_nest_and_carry_the_generators_cell_granularity(sample):
    from unsamv2_engine.io.coco import decode_rle
    from unsamv2_engine.synth.truth_labels import truth_annotations

    anns = truth_annotations(sample, image_id=7)
    by_id = {o.id: o for o in sample.objects}
    cells = [a for a in anns if a["level"] == "cell"]
    assert cells and len(cells) == len({a["instance_id"] for a in anns})
    assert {a["level"] for a in anns} == {"cell", "nucleus", "nucleolus"}
    for a in anns:
        mask = decode_rle(a["segmentation"])
        assert mask.sum() == a["area"] and a["image_id"] == 7
        assert a["granularity"] == pytest.approx(by_id[a["object_id"]].granularity_cell, abs=1e-6)
        instance = next(c for c in cells if c["instance_id"] == a["instance_id"])
        assert (mask & decode_rle(instance["segmentation"])).sum() >= 0.99 * mask.sum()  # parts lie in their cell
        assert a["is_divide"] == (a is instance) and a["is_part"] == (a is not instance)
    assert all(c["granularity"] == 1.0 for c in cells)


def test_truth_labels_are_read_by_the_training_dataset(sample, tmp_path):
    import tifffile

    from unsamv2_engine.pseudo.pipeline import pseudo_label_document
    from unsamv2_engine.synth.truth_labels import truth_annotations
    from unsamv2_engine.train.dataset import PseudoLabelDataset

    (tmp_path / "img").mkdir()
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "img" / "a.tif", sample.image)
    anns = truth_annotations(sample)
    doc = pseudo_label_document(anns, file_name="a.tif", width=128, height=128, image_id=0)
    (tmp_path / "lab" / "a.json").write_text(json.dumps(doc))
    dataset = PseudoLabelDataset(tmp_path / "img", tmp_path / "lab", max_masks=64, image_size=128)
    assert len(dataset) == 1 and dataset.num_masks == len(anns)
    masks, granularities = dataset.read_masks(0)
    np.testing.assert_allclose(sorted(granularities), sorted(a["granularity"] for a in anns), atol=1e-6)


def test_probes_click_inside_the_nucleus_with_nested_granularities(sample):
    from unsamv2_engine.evaluate.learnability import nucleus_cell_pairs

    probes = nucleus_cell_pairs(sample)
    nucleus_labels = sample.labels["nucleus"]
    by_nucleus = [o for o in sample.objects if o.level_name == "nucleus" and (nucleus_labels == o.id).sum() >= 20]
    assert len(probes) == len(by_nucleus) > 0
    for p in probes:
        x, y = p.click
        assert p.nucleus[int(y), int(x)] and p.cell[int(y), int(x)]
        assert (p.nucleus & ~p.cell).sum() <= 0.01 * p.nucleus.sum()
        assert 0.1 <= p.g_nucleus < p.g_cell == 1.0


def test_scores_swap_the_same_two_masks(sample):
    """The swapped scores are the matched masks scored against the other object, for a real model and base."""
    from unsamv2_engine.evaluate.learnability import _iou, nucleus_cell_pairs, score_pairs
    from unsamv2_engine.model import build_model
    from unsamv2_engine.session import ImageSession

    tuned = ImageSession(build_model("tiny", seed=0, image_size=128))
    base = ImageSession(build_model("tiny", granularity=False, seed=0, image_size=128))
    probes = nucleus_cell_pairs(sample)[:3]
    result = score_pairs(tuned, sample.image, probes, base_session=base)
    assert result.n == 3 and set(result.per_probe) == {"matched_nucleus", "matched_cell", "swapped_nucleus",
                                                        "swapped_cell", "base_nucleus", "base_cell"}
    p = probes[0]
    sweep = tuned.sweep(np.array([p.click], np.float32), np.array([1]), [p.g_nucleus, p.g_cell])
    assert result.per_probe["matched_nucleus"][0] == _iou(sweep.masks[0], p.nucleus)
    assert result.per_probe["swapped_cell"][0] == _iou(sweep.masks[0], p.cell)
    assert result.per_probe["swapped_nucleus"][0] == _iou(sweep.masks[1], p.nucleus)
    summary = result.summary()
    assert summary["n"] == 3 and 0.0 <= summary["matched"] <= 1.0 and "base" in summary


def _soft_areas(model, seeds, shape):
    """Per nucleus probe of the images of ``seeds``: the summed foreground probability (pixels) of the
    mask decoded at the nucleus's g and at the cell's g, one click inside the nucleus. ``[n_probes, 2]``.
    """
    import torch

    from unsamv2_engine.evaluate.learnability import nucleus_cell_pairs
    from unsamv2_engine.model.decoding import upsample_logits
    from unsamv2_engine.session import ImageSession
    from unsamv2_engine.synth import generate_sample

    session, areas = ImageSession(model), []
    for seed in seeds:
        sample = generate_sample(seed, modality="fluorescence", shape=shape)
        session.set_image(sample.image)
        for probe in nucleus_cell_pairs(sample):
            sweep = session.sweep(np.array([probe.click], np.float32), np.array([1]), [probe.g_nucleus, probe.g_cell])
            logits = torch.from_numpy(sweep.low_res_logits[:, None])
            areas.append(torch.sigmoid(upsample_logits(logits, shape)[:, 0]).sum(dim=(1, 2)).numpy())
    return np.array(areas)


def test_a_few_dozen_steps_teach_the_dial_to_widen_the_mask_towards_the_cell(tmp_path):
    """The reduced learnability check: ``unsamv2 finetune --trainable granularity`` on truth labels
    (nucleus at its small sqrt-area g, cell at g = 1) must make the dial select the scale.

    What it can show: the base is a **random, frozen** 128-px SAM (no segmentation skill; a pretrained
    miniature takes an hour, see ``benchmarks/bench_learnability.py`` for the full matched/swapped check
    on it), so the masks' IoU stays near zero, but the only trainable part, the granularity module, can
    still learn the *direction* of the dial: for the same click in a nucleus, the mask at the cell's g must
    come out clearly larger than at the nucleus's g. A freshly initialised module makes no such difference
    (ratio 1.00), so this fails when gradients do not reach the module or the g of the labels is not what
    the model is conditioned on. 24 steps at lr 5e-3 on 2 images, first clicks only (no correction
    passes: a quarter of the work; the probes are these training images: this checks learning, not
    generalisation). Measured: median ratio 1.55, every probe above 1.44 (with the 3 correction passes
    1.72, in 20 s instead of 8 s). The fresh module is now drawn from ``--seed`` (before, from whatever the
    process's RNG held): seeds 1, 2 and 3 pass these floors, seed 0 ends at a median of 1.17 (clearly
    above 1.00, below the 1.25 floor, which is kept); the test uses seed 1.
    """
    import torch

    from unsamv2_engine.cli import main
    from unsamv2_engine.model import build_model
    from unsamv2_engine.model.checkpoint import load_checkpoint, save_checkpoint
    from unsamv2_engine.synth.truth_labels import write_truth_dataset

    shape, seeds = (128, 128), [51_000_000, 51_000_001]
    base = save_checkpoint(build_model("tiny", granularity=False, seed=0, image_size=128), tmp_path / "base.pt",
                           kind="sam2")
    images, labels, _ = write_truth_dataset(tmp_path / "truth", seeds, shape)
    adapter = tmp_path / "adapter.pt"
    code = main(["finetune", "--images", str(images), "--pseudo-labels", str(labels), "--base", str(base),
                 "-o", str(adapter), "--workdir", str(tmp_path / "run"), "--max-steps", "24",
                 "--trainable", "granularity", "--lr", "5e-3", "--max-masks", "16", "--batch-size", "1",
                 "--correction-clicks", "0",
                 "--val-fraction", "0", "--cache-embeddings", "--device", "cpu", "--seed", "1", "-q"])
    assert code == 0

    torch.manual_seed(0)
    untrained = load_checkpoint(base)
    untrained.add_granularity_module()
    before = _soft_areas(untrained, seeds, shape)
    after = _soft_areas(load_checkpoint(base, adapter=adapter), seeds, shape)
    assert len(after) >= 10
    ratio_before, ratio_after = before[:, 1] / before[:, 0], after[:, 1] / after[:, 0]
    assert np.median(np.abs(ratio_before - 1)) < 0.02  # an untrained dial changes nothing
    assert np.median(ratio_after) > 1.25, f"cell-g / nucleus-g mask area after training: {np.median(ratio_after):.2f}"
    assert np.mean(ratio_after > 1.05) >= 0.9
