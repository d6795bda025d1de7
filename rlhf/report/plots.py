"""Figures for the report: matplotlib (Agg, no display) rendered to base64 PNG so the HTML needs no other file.

Every function takes plain numbers (no run-folder knowledge) and returns a base64 string, or None when there is
nothing to draw."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # no display: must be set before pyplot is imported
import matplotlib.pyplot as plt  # noqa: E402

Points = tuple[Sequence[float], Sequence[float]]  # (x, y)

PROXY, GOLD, OTHER, EVAL = "#1f77b4", "#d62728", "#7f7f7f", "#2ca02c"
DPI = 100


def to_png(fig: plt.Figure) -> str:
    buf = io.BytesIO()
    # no bbox_inches="tight": it draws the figure twice (callers use tight_layout); light zlib compression is
    # several times faster than the default and these flat plots compress well anyway
    fig.savefig(buf, format="png", dpi=DPI, pil_kwargs={"compress_level": 3})
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def curves(panels: list[tuple[str, list[tuple[str, Points]]]], xlabel: str, ncols: int = 3) -> str | None:
    """A grid of small line plots: panels = [(title, [(label, (x, y)), ...]), ...]. Non-finite values are dropped
    from the lines (the doctor reports them)."""
    panels = [(t, [(lab, _finite(p)) for lab, p in lines]) for t, lines in panels]
    panels = [(t, [(lab, p) for lab, p in lines if len(p[0])]) for t, lines in panels]
    panels = [(t, lines) for t, lines in panels if lines]
    if not panels:
        return None
    ncols = min(ncols, len(panels))
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 2.9 * nrows), squeeze=False)
    for ax, (title, lines) in zip(axes.flat, panels):
        for i, (label, (x, y)) in enumerate(lines):
            ax.plot(x, y, marker="o" if len(x) <= 30 else None, markersize=3, linewidth=1.5, label=label,
                    color=(PROXY, GOLD, OTHER, EVAL)[i % 4])
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(xlabel, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    return to_png(fig)


def frontier(kl: Sequence[float], score: Sequence[float], steps: Sequence[int],
             eval_points: list[tuple[str, float, float]]) -> str | None:
    """Reward vs KL: one point per update coloured by update, plus labelled evaluation points (name, kl, reward)."""
    (kl, score), steps = _finite((kl, score)), [s for s, a, b in zip(steps, kl, score) if _ok(a) and _ok(b)]
    if not len(kl) and not eval_points:
        return None
    fig, ax = plt.subplots(figsize=(5.6, 3.8))
    if len(kl):
        ax.plot(kl, score, color=OTHER, linewidth=0.8, alpha=0.5)
        sc = ax.scatter(kl, score, c=steps, cmap="viridis", s=22, zorder=3)
        fig.colorbar(sc, ax=ax, label="update")
    for _name, x, y in eval_points:
        ax.scatter([x], [y], marker="*", s=160, color=EVAL, edgecolor="black", zorder=4)
    ax.margins(0.15)  # room for the labels inside the axes
    lo, hi = ax.get_xlim()
    for name, x, y in eval_points:  # labels point inward, so none runs into the colour bar
        right = x > (lo + hi) / 2
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(-6 if right else 6, 6), fontsize=8,
                    ha="right" if right else "left")
    ax.set_xlabel("KL(policy || reference), nats per response  [objective/kl]")
    ax.set_ylabel("reward-model score  [objective/scores]")
    ax.set_title("Reward vs KL frontier", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return to_png(fig)


def proxy_vs_gold(steps: Sequence[float], proxy: Sequence[float], gold: Sequence[float],
                  kl: Sequence[float] | None) -> str | None:
    """Over-optimisation: proxy (reward model) and gold score against update, and against KL when it is known
    (Gao et al. 2022 plot gold against KL distance: over-optimisation shows as gold turning down while the
    proxy keeps rising)."""
    rows = [(s, p, g, k) for s, p, g, k in zip(steps, proxy, gold, kl if kl is not None else [math.nan] * len(steps))
            if _ok(p) and _ok(g)]
    if not rows:
        return None
    s, p, g, k = zip(*rows)
    with_kl = kl is not None and all(_ok(v) for v in k)
    fig, axes = plt.subplots(1, 2 if with_kl else 1, figsize=(10 if with_kl else 5.6, 3.6), squeeze=False)
    panels = [(axes[0][0], s, "PPO update")]
    if with_kl:
        panels.append((axes[0][1], k, "KL(policy || reference), nats  [objective/kl]"))
    for ax, x, xlabel in panels:
        # against KL the points are not ordered in x: markers, with a faint line in update order
        style = {"linewidth": 1.5} if xlabel == "PPO update" else {"linewidth": 0.6, "alpha": 0.6}
        ax.plot(x, p, marker="o", markersize=3, color=PROXY, label="proxy: reward model", **style)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("proxy score  [objective/scores]", color=PROXY)
        ax.grid(alpha=0.3)
        ax2 = ax.twinx()
        ax2.plot(x, g, marker="s", markersize=3, color=GOLD, label="gold judge", **style)
        ax2.set_ylabel("gold score  [objective/gold]", color=GOLD)
        lines = ax.get_lines() + ax2.get_lines()
        ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7, loc="best")
    axes[0][0].set_title("Proxy vs gold over training", fontsize=10)
    if with_kl:
        axes[0][1].set_title("Proxy vs gold against KL", fontsize=10)
    fig.tight_layout()
    return to_png(fig)


def bars(title: str, items: list[tuple[str, float]], ylabel: str, reference: tuple[str, float] | None = None,
         ylim: tuple[float, float] | None = None) -> str | None:
    """Labelled bars with their values written on top, and an optional dashed reference line (e.g. chance)."""
    items = [(k, v) for k, v in items if _ok(v)]
    if not items:
        return None
    fig, ax = plt.subplots(figsize=(4.8, 3.2))
    names, values = zip(*items)
    colours = [(PROXY, EVAL, GOLD, OTHER)[i % 4] for i in range(len(values))]
    rects = ax.bar(names, values, color=colours, width=0.6)
    for r, v in zip(rects, values):
        ax.annotate(f"{v:.3f}", (r.get_x() + r.get_width() / 2, r.get_height()), ha="center", va="bottom",
                    fontsize=8, xytext=(0, 2), textcoords="offset points")
    if reference is not None:
        ax.axhline(reference[1], linestyle="--", color="black", linewidth=1)
        ax.annotate(reference[0], (0, reference[1]), xytext=(2, 3), textcoords="offset points", fontsize=7,
                    xycoords=("axes fraction", "data"))
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return to_png(fig)


def _ok(v: float) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


def _finite(p: Points) -> Points:
    keep = [(a, b) for a, b in zip(*p) if _ok(a) and _ok(b)]
    return (tuple(a for a, _ in keep), tuple(b for _, b in keep))
