"""Shared running and writing of benchmark reports: the runner (:func:`run_report`: single torch thread, a
progress bar, timing, one atomic write of results.json + report.md + figures), a safe, atomic output directory,
JSON, Markdown tables and matplotlib figures with a mean and a 95% confidence band over seeds.

Every benchmark writes into a temporary sibling of its output directory and moves it into place
only when everything is written (:func:`atomic_output_dir`), so an interrupted run leaves no
half-written report and never destroys the previous one. The directory it replaces must be a
previous report of the same kind (it carries a manifest, ``mdpalign-report.json``, listing every
file the report wrote, and holds nothing else); anything else is refused before the run starts
(:func:`check_output_dir`), or with ``force`` moved aside and announced, never deleted.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
from tqdm.auto import tqdm

from mdpalign.errors import MdpalignError

__all__ = [
    "Metric",
    "MeanCI",
    "Report",
    "BenchResult",
    "run_report",
    "plain",
    "format_mean_ci",
    "save_figure",
    "run_time_line",
    "ReportError",
    "MANIFEST",
    "check_output_dir",
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

logger = logging.getLogger(__name__)

#: The file that marks a directory as an mdpalign report: ``{"mdpalign_report": {"kind": ..., "version": 1},
#: "files": [every file the report wrote, relative POSIX paths, sorted]}``. Written last, so a directory that
#: has it holds a complete report; it has no timestamp, so identical reports have identical manifests.
MANIFEST = "mdpalign-report.json"
MANIFEST_VERSION = 1


class ReportError(MdpalignError, ValueError):
    """The output location cannot hold a report: a path that must never be replaced, a directory that is not a
    previous report of the same kind, a parent that is a file or cannot be written."""


class Metric(NamedTuple):
    """What a benchmark curve measures: its title in the report, which way is better, how to plot it."""

    title: str
    lower_is_better: bool
    log_scale: bool


@dataclass(frozen=True)
class MeanCI:
    """A final value over seeds: the mean, the half-width of its 95% t-interval (nan for one seed), every seed's."""

    mean: float
    ci95: float
    per_seed: list

    @classmethod
    def of(cls, values: np.ndarray) -> "MeanCI":
        mean, half = mean_ci(values)
        return cls(float(mean), float(half), np.asarray(values).tolist())


def plain(obj):
    """Dataclasses (and the mappings, lists and tuples holding them) as plain dicts and lists; every other value
    is kept as it is (numbers stay numbers: :func:`to_jsonable` makes the strict JSON when the file is written)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [plain(v) for v in obj]
    return obj


@dataclass(frozen=True)
class Report:
    """What an experiment hands :func:`run_report`: its ``results`` (plain data, published as results.json),
    how to draw its figures (``write_figures(folder, results) -> {key: file name}``), how to write its
    report.md (``markdown(results, figures)``, ``results["timing"]`` then set) and the text printed after a run
    (``summary``; the runner adds where the report is and how long it took)."""

    results: dict
    write_figures: Callable[[Path, dict], dict]
    markdown: Callable[[dict, dict], str]
    summary: str


@dataclass(frozen=True)
class BenchResult:
    """A finished report: where it is, its results (as in results.json, before JSON conversion), the text summary."""

    out: Path
    results: dict
    summary: str


def run_report(config, experiment: Callable[[tqdm], Report], *, total: int) -> BenchResult:
    """Run ``experiment(progress)`` and write its report into ``config.out`` atomically.

    ``config`` is a benchmark config (``out``, ``force``, ``quiet``, ``REPORT_KIND``). ``config.out`` must be new,
    empty or a previous report of the same kind, else :class:`ReportError` before any work (``config.force``
    moves anything else aside; :func:`check_output_dir`). torch runs single-threaded (tiny matrices: threads only
    add overhead) and the caller's thread count is restored afterwards. ``progress`` is a tqdm bar of ``total``
    units on stderr, shown only on a terminal and without ``config.quiet``. Timing (wall and process CPU) covers
    the experiment and the writing of its figures.
    """
    kind = config.REPORT_KIND
    check_output_dir(config.out, kind=kind, force=config.force)  # before any work
    with single_torch_thread():
        t0, cpu0 = time.perf_counter(), time.process_time()
        show = not config.quiet and _isatty(sys.stderr)
        progress = tqdm(total=total, desc=kind, unit="run", disable=not show, file=sys.stderr)
        try:
            report = experiment(progress)
        finally:
            progress.close()
        results = report.results
        with atomic_output_dir(config.out, kind=kind, force=config.force) as tmp:
            figures = report.write_figures(tmp, results)
            timing = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - cpu0}
            results["timing"] = timing
            write_json(tmp / "results.json", results)
            (tmp / "report.md").write_text(report.markdown(results, figures), encoding="utf-8")
    text = report.summary + f"\n\nreport: {Path(config.out) / 'report.md'} ({timing['wall_s']:.1f} s wall, " \
        f"{timing['cpu_s']:.1f} s CPU)"
    return BenchResult(Path(config.out), results, text)


def run_time_line(timing: Mapping[str, float]) -> str:
    """The report's last line."""
    return f"Run time: {timing['wall_s']:.1f} s wall, {timing['cpu_s']:.1f} s CPU (process)."


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


# ----------------------------------------------------------------------------- the output directory

def _names(cli: bool) -> tuple[str, str]:
    # the same checks serve the command line and Python: name what the caller typed
    return ("--out", "--force") if cli else ("out", "force=True")


def _walk_files(root: Path) -> tuple[list[str], list[str]]:
    """(regular files, other entries: links, sockets, unreadable folders) under ``root``, as relative POSIX paths."""
    files, other = [], []

    def onerror(err: OSError) -> None:
        other.append(Path(os.path.relpath(err.filename, root)).as_posix() + " (unreadable)")

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = Path(os.path.relpath(full, root)).as_posix()
            if os.path.islink(full):
                other.append(rel)
            elif name in filenames:
                (files if os.path.isfile(full) else other).append(rel)
    return sorted(files), sorted(other)


def _read_manifest(path: Path) -> dict | None:
    try:
        data = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    mark, files = data.get("mdpalign_report"), data.get("files")
    if not (isinstance(mark, dict) and isinstance(mark.get("kind"), str) and isinstance(files, list)
            and all(isinstance(f, str) for f in files)):
        return None
    return {"kind": mark["kind"], "files": set(files)}


def _listing(names: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _classify(out: Path, kind: str) -> tuple[str, str]:
    """What is at ``out``: ("missing" | "empty" | "report" | "foreign", why it is foreign)."""
    if not os.path.lexists(out):
        return "missing", ""
    if out.is_symlink():
        return "foreign", f"is a symbolic link (to {os.readlink(out)})"
    if not out.is_dir():
        return "foreign", "exists and is not a directory"
    try:
        with os.scandir(out) as entries:
            top = sorted(e.name + ("/" if e.is_dir(follow_symlinks=False) else "") for e in entries)
    except OSError as exc:
        return "foreign", f"cannot be listed ({exc.strerror})"
    if not top:
        return "empty", ""
    manifest = _read_manifest(out)
    if manifest is None:  # the common refusal: say what is there without walking a possibly huge tree
        return "foreign", f"is not an mdpalign report (no valid {MANIFEST}); it holds {_listing(top)}"
    if manifest["kind"] != kind:
        return "foreign", f"holds a {manifest['kind']} report, not a {kind} report"
    files, other = _walk_files(out)
    extra = [f for f in files if f != MANIFEST and f not in manifest["files"]] + other
    if extra:
        return "foreign", f"holds a {kind} report and files it did not write: {_listing(extra)}"
    return "report", ""


def _forbidden(resolved: Path) -> str | None:
    """Why ``resolved`` must never be the report directory (it would swallow the working or home directory)."""
    cwd = Path.cwd().resolve()
    home = Path(os.path.expanduser("~")).resolve()
    if resolved == Path(resolved.anchor):
        return "is the root directory"
    if resolved == cwd:
        return "is the current directory"
    if resolved in cwd.parents:
        return "contains the current directory"
    if resolved == home:
        return "is the home directory"
    if resolved in home.parents:
        return "contains the home directory"
    return None


def _aside_name(out: Path) -> Path:
    """The first free ``<name>.replaced-N`` beside ``out``: where ``force`` moves what was there."""
    n = 1
    while os.path.lexists(out.with_name(f"{out.name}.replaced-{n}")):
        n += 1
    return out.with_name(f"{out.name}.replaced-{n}")


def check_output_dir(out: str | os.PathLike, *, kind: str, force: bool = False, cli: bool = False) -> Path:
    """Check, before any work, that a ``kind`` report can be written to ``out``; return it as a ``Path``.

    Accepted: a path that does not exist yet (its missing parents are created when the report is written), an
    empty directory, or a previous ``kind`` report (its manifest lists every file in it). Anything else at
    ``out`` — a file, a symbolic link, a directory of other files, a report of another kind or one beside which
    other files were put — raises :class:`ReportError`, unless ``force`` is set: then it is moved aside to
    ``<out>.replaced-N`` when the report is written (never deleted). Refused even with ``force``: the empty
    path, ``/``, the current directory or any directory containing it, the home directory or any directory
    containing it; a parent that is a file; a parent that cannot be written (checked by creating and removing a
    directory in it). ``cli`` only changes the names in the messages (``--out``/``--force`` instead of
    ``out``/``force=True``).
    """
    opt = _names(cli)[0]
    text = os.fspath(out)
    if not text.strip():
        raise ReportError(f"{opt} is empty: name a directory for the report, e.g. {opt} reports/{kind}")
    path = Path(text)
    try:
        resolved = path.resolve()
    except (OSError, RuntimeError) as exc:  # e.g. a symbolic link loop
        raise ReportError(f"{opt} {text!r}: cannot resolve it ({exc})") from None
    why = _forbidden(resolved)
    if why:
        raise ReportError(f"{opt} {text!r} {why}; a report needs a directory of its own, "
                          f"e.g. {opt} reports/{kind}")
    ancestor = path.absolute().parent
    while not os.path.lexists(ancestor):
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise ReportError(f"{opt} {text!r}: cannot create it: {ancestor} is a file, not a directory")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".mdpalign-write-check-", dir=ancestor))
    except OSError as exc:
        raise ReportError(f"{opt} {text!r}: cannot write into {ancestor} ({exc.strerror})") from None
    state, why = _classify(path, kind)
    if state == "foreign" and not force:
        raise _refusal(path, why, cli)
    return path


def _refusal(path: Path, why: str, cli: bool) -> ReportError:
    opt, force_opt = _names(cli)
    return ReportError(f"{opt} {os.fspath(path)!r} {why}; refusing to replace it. Choose another {opt}, or use "
                       f"{force_opt} to move it aside to {_aside_name(path).name} and write the report there")


def _make_parents(parent: Path) -> list[Path]:
    """``mkdir -p parent``; the directories it created, deepest first (removed again if the write fails)."""
    missing = []
    p = parent
    while not os.path.lexists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir()
    return missing


def _write_manifest(tmp: Path, kind: str) -> None:
    files, other = _walk_files(tmp)
    if other:
        raise ReportError(f"the {kind} report wrote entries that are not regular files: {_listing(other)}")
    manifest = {"mdpalign_report": {"kind": kind, "version": MANIFEST_VERSION}, "files": sorted(files + [MANIFEST])}
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n", encoding="utf-8")


@contextlib.contextmanager
def atomic_output_dir(out: str | os.PathLike, *, kind: str, force: bool = False, cli: bool = False) -> Iterator[Path]:
    """Yield a fresh temporary directory that becomes the ``kind`` report ``out`` only if the block succeeds.

    ``out`` is checked first (:func:`check_output_dir`, same rules, checked again because the directory may
    have changed while the experiment ran). The temporary directory is a sibling of ``out`` (same file system,
    so the final move is a ``rename``). On success the manifest is written, an existing ``out`` is renamed
    aside, the new report renamed into place, and only then is the old one removed — if it was a previous
    report of this kind (or an empty directory); anything else (accepted with ``force`` only) is kept as
    ``<out>.replaced-N`` and announced on the ``mdpalign.bench.report`` logger. On any failure, including
    ``KeyboardInterrupt`` in the block or during the moves, the temporary directory and any parent directory
    this call created are removed and ``out`` is left exactly as it was.
    """
    out = check_output_dir(out, kind=kind, force=force, cli=cli)
    parent = out.absolute().parent
    created = _make_parents(parent)
    tmp = None
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
        # mkdtemp makes the directory private (0700); a report is an ordinary directory.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        yield tmp
        _write_manifest(tmp, kind)
        _commit(tmp, out, kind, force, cli)
        tmp = None
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for d in created:  # deepest first; rmdir removes only what is still empty
            with contextlib.suppress(OSError):
                d.rmdir()
        raise


def _commit(tmp: Path, out: Path, kind: str, force: bool, cli: bool) -> None:
    """Move the finished report ``tmp`` to ``out`` (see :func:`atomic_output_dir`)."""
    state, why = _classify(out, kind)
    if state == "foreign" and not force:  # appeared while the experiment ran
        raise _refusal(out, why, cli)
    if state == "missing":
        os.rename(tmp, out)
        return
    # rename(2) cannot replace a non-empty directory: move the old one aside into a fresh hidden folder first.
    holder = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.absolute().parent))
    old = holder / out.name
    try:
        os.rename(out, old)
    except BaseException:
        holder.rmdir()
        raise
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        holder.rmdir()
        raise
    # The new report is in place; the old one is ours to delete only if it still is a report (or empty).
    if _classify(old, kind)[0] in ("report", "empty"):
        try:
            shutil.rmtree(holder)
            return
        except OSError:  # e.g. a read-only old report: keep what is left of it in sight
            pass
        except BaseException:  # interrupted while deleting our own old report: finish, then stop
            shutil.rmtree(holder, ignore_errors=True)
            raise
    aside = _aside_name(out)
    os.rename(old, aside)
    holder.rmdir()
    logger.warning("%s %s: moved it aside to %s (nothing was deleted)", out,
                   why or "held a previous report that could not be deleted", aside)


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
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return to_jsonable(plain(obj))
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


def format_mean_ci(entry: Mapping[str, float], fixed_digits: int | None = None) -> str:
    """``mean ± half`` for a table (``entry`` has "mean" and "ci95"); "—" for a mean that is not finite (nothing
    was measured), no "±" without an interval (one seed). ``fixed_digits``: the mean in fixed notation with that
    many decimals (probabilities near 1 need more digits than 3 significant ones)."""
    mean, half = entry["mean"], entry["ci95"]
    if not math.isfinite(mean):
        return "—"
    head = f"{mean:.{fixed_digits}f}" if fixed_digits is not None else format_number(mean)
    return head + ("" if not math.isfinite(half) else f" ± {format_number(half, 2)}")


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
    x = np.asarray(steps)
    for i, (name, values) in enumerate(curves.items()):
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != x.shape[0]:
            raise ValueError(f"curve {name!r} has shape {values.shape}; expected (seeds, {x.shape[0]})")
        mean, half = mean_ci(values)
        color = f"C{i % 10}"
        ax.plot(x, mean, label=name, color=color, lw=1.6)
        if np.all(np.isfinite(half)):
            lo, hi = mean - half, mean + half
            if logy:
                lo = np.maximum(lo, np.where(mean > 0, mean * 1e-3, np.nan))
            ax.fill_between(x, lo, hi, color=color, alpha=0.2, lw=0)
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


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (imported when a report draws: it is slow to import)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | os.PathLike) -> None:
    """Lay out, save (fixed metadata: no timestamp, so identical runs give identical PNGs) and close ``fig``."""
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    pyplot().close(fig)


def _isatty(stream=None) -> bool:
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
