"""Shared writing of benchmark reports: an atomic output directory, JSON, Markdown tables and
matplotlib figures with a mean and a 95% confidence band over seeds.

Every benchmark writes into a temporary sibling of its output directory and moves it into place
only when everything is written (:func:`atomic_output_dir`), so an interrupted run leaves no
half-written report and never destroys the previous one.
"""
from __future__ import annotations

from mdpalign.errors import MdpalignError
import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Iterator, Mapping, Sequence

import numpy as np

__all__ = [
    "atomic_output_dir",
    "environment_versions",
    "to_jsonable",
    "write_json",
    "mean_ci",
    "markdown_table",
    "format_number",
    "plot_curves",
    "rank",
]


class ReportError(MdpalignError, ValueError):
    """The output location cannot hold a report (e.g. it is an existing file)."""


@contextlib.contextmanager
def single_torch_thread():
    """Run torch single-threaded inside the block (the benchmarks' matrices are tiny: threads only add
    overhead and make timings noisy), restoring the caller's thread count afterwards."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes ``out`` only if the block succeeds.

    The temporary directory is a sibling of ``out`` (same file system, so the final move is a
    ``rename``). On success an existing ``out`` is first renamed aside, the new one renamed into
    place and only then is the old one deleted; on failure the temporary directory is removed
    and ``out`` is left exactly as it was.
    """
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ReportError(f"output path {out} exists and is not a directory")
    parent = out.parent if str(out.parent) else Path(".")
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    # mkdtemp makes the directory private (0700); a report is an ordinary directory.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    # rename(2) cannot replace a non-empty directory: move the old report aside first.
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
        os.replace(out, old / out.name)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def environment_versions() -> dict[str, str]:
    """Versions of Python and of the libraries whose numerics the results depend on."""
    import importlib.metadata as md

    versions = {"python": platform.python_version(), "platform": platform.platform()}
    for name in ("mdpalign", "numpy", "scipy", "torch", "gymnasium", "matplotlib", "networkx"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:  # pragma: no cover - every one is a dependency
            versions[name] = "not installed"
    return versions


def to_jsonable(obj):
    """Recursively convert numpy/torch scalars and arrays, tuples and paths to JSON types.

    Non-finite floats become the strings ``"nan"``, ``"inf"``, ``"-inf"`` so the file stays
    strict JSON.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "detach") and hasattr(obj, "cpu"):  # torch tensor
        obj = obj.detach().cpu().numpy()
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer, int)):
        return int(obj)
    if isinstance(obj, (np.floating, float)):
        x = float(obj)
        if math.isnan(x):
            return "nan"
        if math.isinf(x):
            return "inf" if x > 0 else "-inf"
        return x
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot write {type(obj).__name__} to JSON: {obj!r}")


def write_json(path: str | os.PathLike, obj) -> None:
    """Write ``obj`` as indented, key-sorted JSON (byte-identical for identical inputs)."""
    text = json.dumps(to_jsonable(obj), indent=1, sort_keys=True, allow_nan=False)
    Path(path).write_text(text + "\n", encoding="utf-8")


def mean_ci(values: np.ndarray, level: float = 0.95, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the two-sided Student-t confidence interval along ``axis``.

    half = t_{(1+level)/2, n-1} * s / sqrt(n), with s the sample standard deviation (ddof = 1).
    With a single sample the half-width is NaN (no interval can be stated).
    """
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    sd = values.std(axis=axis, ddof=1)
    half = stats.t.ppf(0.5 + level / 2.0, n - 1) * sd / math.sqrt(n)
    return mean, half


def format_number(x: float, digits: int = 3) -> str:
    """Compact scientific-or-fixed notation for tables."""
    x = float(x)
    if not math.isfinite(x):
        return str(x)
    if x == 0.0:
        return "0"
    if 1e-3 <= abs(x) < 1e4:
        return f"{x:.{digits}g}"
    return f"{x:.{digits - 1}e}"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(str(h) for h in headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(c) for c in row) + " |")
    return "\n".join(lines)


def rank(values: Mapping[str, float], higher_is_better: bool = False) -> list[str]:
    """Keys ordered best first; ties keep the given order (stable sort)."""
    sign = -1.0 if higher_is_better else 1.0
    return sorted(values, key=lambda k: sign * float(values[k]))


def plot_curves(
    path: str | os.PathLike,
    steps: Sequence[int],
    curves: Mapping[str, np.ndarray],
    *,
    title: str,
    ylabel: str,
    logy: bool = False,
    xlabel: str = "training step",
    ax=None,
) -> None:
    """Plot mean and 95% t-interval band over seeds for each curve.

    ``curves[name]`` has shape ``(n_seeds, len(steps))``. With ``ax`` given, draw into it and
    write nothing; otherwise save a PNG at ``path``.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(6.0, 4.0), dpi=100)
    steps = np.asarray(steps)
    for i, (name, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != steps.shape[0]:
            raise ValueError(f"curve {name!r} has shape {values.shape}; expected (seeds, {steps.shape[0]})")
        mean, half = mean_ci(values)
        color = f"C{i % 10}"
        ax.plot(steps, mean, label=name, color=color, lw=1.6)
        if np.all(np.isfinite(half)):
            lo, hi = mean - half, mean + half
            if logy:
                lo = np.maximum(lo, np.where(mean > 0, mean * 1e-3, np.nan))
            ax.fill_between(steps, lo, hi, color=color, alpha=0.2, lw=0)
    if logy:
        ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if own:
        fig.tight_layout()
        # A fixed metadata set keeps the PNG free of timestamps.
        fig.savefig(path, metadata={"Software": None})
        plt.close(fig)


def _isatty(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
