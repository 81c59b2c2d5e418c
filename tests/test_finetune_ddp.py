"""DDP: ``torchrun`` with 2 gloo processes on the CPU gives the step of one process on the same global batch.

Both runs go through the real command line: ``python -m unsamv2_engine finetune`` under ``torchrun
--nproc_per_node 2`` (each rank takes 1 of the 2 images of the global batch), and the same arguments
given to ``unsamv2_engine.cli.main`` in this process as the single-process reference (one process start
fewer); both with one torch thread per process, so the arithmetic is the same. Augmentation, clicks
and dropout are seeded per sample, so the two runs see identical samples.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from .test_finetune import write_pseudo_labels


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _finetune_args(images: Path, labels: Path, base: Path, out: Path) -> list[str]:
    return ["-m", "unsamv2_engine", "finetune", "--images", str(images), "--pseudo-labels", str(labels),
            "--base", str(base), "-o", str(out), "--max-steps", "1", "--batch-size", "2", "--max-masks", "2",
            "--val-fraction", "0", "--device", "cpu", "--lr", "1e-3", "--correction-clicks", "1", "--json-progress"]


def _run(cmd: list[str], env: dict[str, str]) -> list[dict]:
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr[-4000:]}"
    return [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]


@pytest.mark.slow
def _run_here(args: list[str], capsys) -> list[dict]:
    """The command's arguments (after ``-m unsamv2_engine``) run in this process with one torch thread."""
    from unsamv2_engine.cli import main

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        capsys.readouterr()
        assert main(args[2:]) == 0
    finally:
        torch.set_num_threads(threads)
    return [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]


def test_two_gloo_processes_equal_one_process(tmp_path, tiny_model, capsys):
    from unsamv2_engine.model.checkpoint import read_adapter, save_checkpoint

    images, labels = write_pseudo_labels(tmp_path / "data", n_images=2, masks_per_image=2)
    base = save_checkpoint(tiny_model, tmp_path / "base.pt")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo",
           "PYTHONWARNINGS": "ignore"}
    env.pop("WORLD_SIZE", None)

    single = _run_here(_finetune_args(images, labels, base, tmp_path / "single.pt"), capsys)
    ddp = _run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2",
                "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
                *_finetune_args(images, labels, base, tmp_path / "ddp.pt")], env)

    step_single = next(e for e in single if e["event"] == "step")
    step_ddp = [e for e in ddp if e["event"] == "step"]
    assert len(step_ddp) == 1, "only rank 0 reports progress"
    assert step_ddp[0]["objects"] == step_single["objects"] == 4
    for key in ("loss", "loss_mask", "loss_dice", "loss_iou", "loss_class"):
        assert step_ddp[0][key] == pytest.approx(step_single[key], rel=1e-5, abs=1e-6), key
    a = read_adapter(tmp_path / "single.pt")
    b = read_adapter(tmp_path / "ddp.pt")
    assert b["metadata"]["finetune"]["processes"] == 2
    base_state = torch.load(base, weights_only=True)["model"]
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=1e-5, atol=1e-7)
        # lora_A has no gradient while lora_B is still 0 (its first step); every other tensor moved
        assert torch.equal(tensor, base_state[name]) == name.endswith("lora_A"), name
