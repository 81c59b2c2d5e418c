"""What the benchmark scripts share: the results table, the machine header, memory and timing helpers.

Imported as ``_report`` by the scripts in this folder (run as ``python benchmarks/<script>.py``).
"""

from __future__ import annotations

import os
import platform
import resource
import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

RANDOM_WEIGHTS = "RANDOM WEIGHTS: timings are those of the architecture; the masks are meaningless."


@dataclass
class Row:
    """One line of the results table: a time (ms), a ratio, a count or a memory size.

    best: the fastest repeat (ms), for timings only; a large gap to the median means the machine
    was busy with something else.
    """

    name: str
    value: float
    unit: str  # "ms", "x", "MiB", "" (count / plain number)
    note: str = ""
    verdict: str = ""
    best: float | None = None


@dataclass
class Report:
    """Everything a benchmark prints (and writes with ``--json``)."""

    machine: dict[str, str]
    settings: dict[str, object]
    rows: list[Row] = field(default_factory=list)

    def add(self, name: str, value: float, unit: str, note: str = "", verdict: str = "",
            best: float | None = None) -> None:
        self.rows.append(Row(name, value, unit, note, verdict, best))


def cpu_model() -> str:
    """The CPU's marketing name, from /proc/cpuinfo where there is one."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> str:
    """The 1-minute load average: above the thread count, other processes competed for the CPU."""
    try:
        return f"{os.getloadavg()[0]:.2f}"
    except OSError:
        return "n/a"


def machine_info(device: torch.device) -> dict[str, str]:
    info = {"cpu": cpu_model(), "cores": str(os.cpu_count()), "threads": str(torch.get_num_threads()),
            "torch": torch.__version__, "python": platform.python_version(), "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    info["load_at_start"] = load_average()
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def peak_rss_mib() -> float:
    """Peak resident memory of this process (MiB); ru_maxrss is KiB on Linux, bytes on macOS."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def format_value(row: Row) -> str:
    if row.unit == "x":
        return f"{row.value:.2f}x"
    if row.unit == "":
        return f"{row.value:g}" if float(row.value).is_integer() else f"{row.value:.7g}"
    return f"{row.value:.1f} {row.unit}"


def table_lines(report: Report, markdown: bool, value_header: str = "value") -> list[str]:
    header = ("measurement", value_header, "fastest", "verdict", "note")
    cells = [(r.name, format_value(r), "" if r.best is None else f"{r.best:.1f} ms", r.verdict, r.note)
             for r in report.rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---", "---:", "---:", ":---:", "---"]) + "|"]
        return lines + ["| " + " | ".join(c) + " |" for c in cells]
    widths = [max(len(str(x)) for x in col) for col in zip(header, *cells)]
    fmt = "  ".join(f"{{:{'>' if i in (1, 2) else '<'}{w}}}" for i, w in enumerate(widths))
    return [fmt.format(*header), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in cells]


def print_report(report: Report, markdown: bool, value_header: str = "value") -> None:
    machine = ", ".join(f"{k}: {v}" for k, v in report.machine.items())
    settings = ", ".join(f"{k}={v}" for k, v in report.settings.items())
    print(f"\nMachine: {machine}")
    print(f"Settings: {settings}")
    print(RANDOM_WEIGHTS + "\n")
    print("\n".join(table_lines(report, markdown, value_header)))
