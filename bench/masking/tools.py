"""Tools for looking at masks: statistics, a gallery, and the body of `mimbench masks`.

    label_regions, mask_stats           ratio, 4-connected regions (pieces), single-patch regions,
                                        evenness over positions
    draw_gallery(rows, grid_hw, path)   one row of sample masks per strategy, saved as a PNG
    masks_command(...)                  what `mimbench masks` prints as one JSON line
    median_ms(fn, repeats, device)      the timer (also `mimbench bench masks`')

The per-sample reference generators are in bench.masking.reference, the batched-vs-reference
timing (`mimbench bench masks`) in bench.benchmarks.masks. Matplotlib is used through its object
API only, so importing this module leaves the backend alone.
"""
from __future__ import annotations

import statistics
import time

import numpy as np
import torch

from bench import masking
from bench.core.errors import ConfigError
from bench.core.files import atomic_savefig


def median_ms(fn, repeats: int, device: torch.device, min_seconds: float = 0.3) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call.

    At least `repeats` calls, and more until `min_seconds` have passed: fast generators get
    many samples, so one slow call (another process taking the core) does not move the median.
    """
    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn()
    sync()
    times = []
    while len(times) < repeats or sum(times) < min_seconds * 1000:
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


# ----------------------------------------------------------------------------- statistics

def label_regions(masks: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """4-connected components of the masked patches of every sample, all samples at once.

    Returns a long B×L tensor: 0 where visible, else the label of the patch's region, which is
    1 + the smallest index (row-major) of a patch in the region. Labels start as index + 1 and
    each pass takes the minimum over the 4-neighbours that are masked, then jumps every label
    to its label's label (pointer jumping, so long snakes converge in a few passes).
    """
    height, width = grid_hw
    batch, length = masks.shape
    masked = masks.bool().view(batch, height, width)
    visible = ~masked
    none = length + 1  # larger than any label: what visible patches offer their neighbours
    index = torch.arange(1, length + 1, device=masks.device).view(1, height, width)
    labels = index.expand(batch, -1, -1).masked_fill(visible, none)
    padded = torch.full((batch, height + 2, width + 2), none, dtype=torch.long, device=masks.device)
    inner = padded[:, 1:-1, 1:-1]
    while True:
        inner.copy_(labels)
        new = torch.minimum(labels, padded[:, :-2, 1:-1])  # up
        for neighbour in (padded[:, 2:, 1:-1], padded[:, 1:-1, :-2], padded[:, 1:-1, 2:]):  # down, left, right
            torch.minimum(new, neighbour, out=new)
        new.masked_fill_(visible, none)
        # pointer jumping: a label is 1 + the index of a patch of the same region; take that one's label
        flat = new.view(batch, length)
        torch.minimum(flat, flat.gather(1, (flat - 1).clamp_(max=length - 1)), out=flat)
        new.masked_fill_(visible, none)
        if torch.equal(new, labels):
            break
        labels = new
    return labels.masked_fill(visible, 0).view(batch, length)


def mask_stats(masks: torch.Tensor, grid_hw: tuple[int, int]) -> dict:
    """Summary statistics of a B×L (or B×T×L) boolean mask batch (True = masked).

    ratio_mean/min/max: masked fraction per sample. regions_mean: 4-connected regions (pieces) of
    masked patches per sample, averaged. single_patch_regions_mean: regions of one patch (a masked
    patch with no masked 4-neighbour) per sample, averaged. region_size_mean: masked patches per
    region, over all regions of the batch. position_evenness: max/min over positions of how many
    samples mask it (1 is perfectly even; inf when some position is never masked). For B×T×L the spatial statistics
    are those of frame 0, plus frames_identical: whether every frame equals frame 0.
    """
    out = {}
    if masks.dim() == 3:
        out["frames_identical"] = bool((masks == masks[:, :1]).all())
        masks = masks[:, 0]
    masks = masks.bool()
    length = masks.shape[1]
    ratio = masks.sum(1).double() / length
    labels = label_regions(masks, grid_hw)
    index = torch.arange(1, length + 1, device=masks.device)
    regions = (labels == index).sum(1)  # one root (label == own index + 1) per region
    singles = (masks & ~_has_masked_neighbour(masks, grid_hw)).sum(1)
    per_position = masks.sum(0)
    low = int(per_position.min())
    out.update({
        "ratio_mean": float(ratio.mean()),
        "ratio_min": float(ratio.min()),
        "ratio_max": float(ratio.max()),
        "regions_mean": float(regions.double().mean()),
        "single_patch_regions_mean": float(singles.double().mean()),
        "region_size_mean": float(masks.sum()) / max(int(regions.sum()), 1),
        "position_evenness": float(per_position.max()) / low if low > 0 else float("inf"),
    })
    return dict(sorted(out.items()))


def _has_masked_neighbour(masks: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """B×L: whether a patch has a masked 4-neighbour."""
    grid = masks.view(len(masks), *grid_hw)
    near = torch.zeros_like(grid)
    near[:, 1:] |= grid[:, :-1]
    near[:, :-1] |= grid[:, 1:]
    near[:, :, 1:] |= grid[:, :, :-1]
    near[:, :, :-1] |= grid[:, :, 1:]
    return near.view(len(masks), -1)


# ----------------------------------------------------------------------------- gallery

VISIBLE, MASKED = 0.88, 0.35  # gray levels, as MAE's Figure 6 masks


def draw_gallery(rows, grid_hw, path, n: int = 8) -> None:
    """One row per (label, masks) pair, its first `n` samples; masked patches dark gray.

    masks may be B×L or B×T×L (frame 0 is drawn). The PNG is written atomically (a reader never
    sees half a file).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    height, width = grid_hw
    n = max(1, min(n, max(len(masks) for _, masks in rows)))  # no empty columns when every batch is small
    cell = 1.0  # inches per mask (scaled for non-square grids)
    mask_w, mask_h = cell * width / max(height, width), cell * height / max(height, width)
    label_w = 0.3 + 0.08 * max(len(str(label)) for label, _ in rows)  # about 0.08 in a character at 10 pt
    fig = Figure(figsize=(label_w + n * (mask_w + 0.08), len(rows) * (mask_h + 0.1) + 0.1))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(rows), n + 1, width_ratios=[label_w] + [mask_w] * n,
                            left=0.005, right=0.995, top=1 - 0.05 / fig.get_figheight(),
                            bottom=0.05 / fig.get_figheight(), wspace=0.08, hspace=0.1)
    for i, (label, masks) in enumerate(rows):
        masks = masks.detach().bool().cpu()
        if masks.dim() == 3:
            masks = masks[:, 0]
        text_ax = fig.add_subplot(grid[i, 0])
        text_ax.axis("off")
        text_ax.text(0.95, 0.5, label, ha="right", va="center", fontsize=10, transform=text_ax.transAxes)
        for j in range(n):
            ax = fig.add_subplot(grid[i, j + 1])
            ax.set_xticks([])
            ax.set_yticks([])
            if j >= len(masks):
                ax.axis("off")
                continue
            image = np.where(masks[j].view(height, width).numpy(), MASKED, VISIBLE)
            ax.pcolormesh(image, cmap="gray", vmin=0, vmax=1, edgecolors="white", linewidth=0.3)
            ax.set_xlim(0, width)
            ax.set_ylim(height, 0)  # row 0 at the top
            ax.set_aspect("equal")
            for spine in ax.spines.values():
                spine.set_linewidth(0.5)
    atomic_savefig(fig, path, dpi=150)


# ----------------------------------------------------------------------------- the command


def _one(strategy, ratio, grid_hw, batch, frames, params, seed, stats, device):
    """Masks of one strategy, their ms per batch (median of 5) and statistics if asked, a gallery label."""
    resolved = masking.resolve_params(strategy, params or {}, ratio, grid_hw)
    make = lambda: masking.generate(strategy, batch, grid_hw, ratio, resolved,  # noqa: E731
                                    torch.Generator(device).manual_seed(seed), device, frames)
    masks = make()
    ms = median_ms(make, 5, device)
    out = {"ms_per_batch": round(ms, 4)}
    if stats:
        out.update(mask_stats(masks, grid_hw))
    label = f"tube ({resolved['spatial']}, frame 0)" if strategy == "tube" else strategy
    return masks, out, label


def masks_command(strategy: str, ratio: float, grid_hw, batch: int, frames: int | None = None,
                  params: dict | None = None, seed: int = 0, stats: bool = True, png: str | None = None,
                  device: str = "cpu") -> dict:
    """Generate, time and summarise one batch of masks; the dict `mimbench masks` prints as JSON.

    strategy "all" runs every registered strategy (params then maps strategy -> its params) and
    returns their results under "strategies"; those whose defaults are invalid at this ratio are
    listed under "skipped". With `png`, a gallery is drawn (one row per strategy for "all";
    video masks show frame 0). Bad strategy names or params raise ConfigError.
    """
    grid_hw = tuple(grid_hw)
    device = torch.device(device)
    head = {"strategy": strategy, "ratio": ratio, "grid": f"{grid_hw[0]}x{grid_hw[1]}", "batch": batch,
            "frames": frames}
    if strategy != "all":
        masks, out, label = _one(strategy, ratio, grid_hw, batch, frames, params, seed, stats, device)
        rows = [(label, masks)]
        result = {**head, **out}
    else:
        params = params or {}
        for name in params:
            if name not in masking.list_strategies():
                raise ConfigError(f"masking.params.{name}",
                                  f"not a strategy; allowed: {', '.join(masking.list_strategies())}")
        rows, results, skipped = [], {}, {}
        for name in masking.list_strategies():
            try:
                masks, out, label = _one(name, ratio, grid_hw, batch, frames, params.get(name), seed, stats, device)
            except ConfigError as err:  # defaults that cannot work here (grid at 60%): skip; bad user params: raise
                if params.get(name):
                    raise
                skipped[name] = str(err)
                continue
            results[name] = out
            rows.append((label, masks))
        result = {**head, "strategies": results, "skipped": skipped}
    if png:
        draw_gallery(rows, grid_hw, png)
        result["png"] = str(png)
    return result
