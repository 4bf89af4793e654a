"""Auto-PruMUX plots: heat maps of each task's accuracy surface and of the speedup model (needs matplotlib)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from ..atomic import atomic_file, check_file_target
from ..errors import PruMuxError
from .models import DEFAULT_N, DEFAULT_S, AutoModel


# ----------------------------------------------------------------------------------------------- plot


def plot(model: AutoModel, path: str | os.PathLike, force: bool = False) -> Path:
    """Draw each task's accuracy surface and the speedup surface (heat maps, measured points marked)."""
    try:
        import matplotlib
    except ImportError:
        raise PruMuxError("auto plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    path = check_file_target(path, force)  # refuse before drawing
    fmt = path.suffix.lstrip(".").lower() or "png"
    if fmt not in plt.figure().canvas.get_supported_filetypes():
        plt.close("all")
        raise PruMuxError(f"{path}: matplotlib cannot write .{fmt} files; use .png, .pdf or .svg")
    plt.close("all")

    panels = len(model.tasks) + 1
    cols = min(3, panels)
    rows = math.ceil(panels / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.8 * rows), squeeze=False)
    axes = axes.ravel()
    for ax, task in zip(axes, model.tasks):
        surface = model.accuracy[task]
        n_lo, n_hi = surface.Ns[0], surface.Ns[-1]
        s_lo, s_hi = surface.ss[0], surface.ss[-1]
        n_hi, s_hi = (n_hi if n_hi > n_lo else n_lo + 1), (s_hi if s_hi > s_lo else min(s_lo + 0.1, 0.99))
        n, s = np.meshgrid(np.linspace(n_lo, n_hi, 80), np.linspace(s_lo, s_hi, 80))
        mesh = ax.contourf(n, s, surface(n, s), levels=20, cmap="viridis")
        fig.colorbar(mesh, ax=ax, label="accuracy (%)")
        pts = np.array(surface.points)
        ax.scatter(pts[:, 0], pts[:, 1], c="white", edgecolors="black", s=18, clip_on=False, zorder=3)
        ax.set(title=f"{task}: accuracy (baseline {surface.baseline:.1f})", xlabel="N", ylabel="sparsity s")
    ax = axes[len(model.tasks)]
    pts = np.array(model.speedup.points)
    n_hi = max(max(DEFAULT_N), pts[:, 0].max())
    n, s = np.meshgrid(np.linspace(1, n_hi, 80), np.linspace(0, max(DEFAULT_S), 80))
    mesh = ax.contourf(n, s, np.log10(model.speedup(n, s)), levels=20, cmap="magma")
    fig.colorbar(mesh, ax=ax, label="log10 speedup")
    ax.scatter(pts[:, 0], pts[:, 1], c="white", edgecolors="black", s=18, clip_on=False, zorder=3)
    ax.set(title=f"speedup over BERT-base (fit on {model.speedup.task})", xlabel="N", ylabel="sparsity s")
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.tight_layout()

    try:
        with atomic_file(path, force) as tmp:
            fig.savefig(tmp, format=fmt, dpi=120)
    finally:
        plt.close(fig)
    return path
