"""Tools for looking at masks: statistics, per-sample reference generators, timing, a gallery.

    mask_stats(masks, grid_hw)          ratio, 4-connected regions, evenness over positions
    REFERENCES, reference_batch         straightforward per-sample versions (Python loops, numpy),
                                        written like BEiT's MaskingGenerator, to check the batched code
    bench_masks, format_bench_table     batched vs per-sample milliseconds per batch
    draw_gallery(rows, grid_hw, path)   one row of sample masks per strategy, saved as a PNG
    masks_command(...)                  what `mimbench masks` prints as one JSON line

Matplotlib is used through its object API only, so importing this module leaves the backend alone.
"""
from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from bench import masking
from bench.core.errors import ConfigError

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

    ratio_mean/min/max: masked fraction per sample. regions_mean: 4-connected regions of masked
    patches per sample, averaged. region_size_mean: masked patches per region, over all regions
    of the batch. position_evenness: max/min over positions of how many samples mask it (1 is
    perfectly even; inf when some position is never masked). For B×T×L the spatial statistics
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
    per_position = masks.sum(0)
    low = int(per_position.min())
    out.update({
        "ratio_mean": float(ratio.mean()),
        "ratio_min": float(ratio.min()),
        "ratio_max": float(ratio.max()),
        "regions_mean": float(regions.double().mean()),
        "region_size_mean": float(masks.sum()) / max(int(regions.sum()), 1),
        "position_evenness": float(per_position.max()) / low if low > 0 else float("inf"),
    })
    return dict(sorted(out.items()))


# ----------------------------------------------------------------------------- references


def _exact_count(mask: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Top up (random unmasked patches) or trim (random masked ones) to exactly `count`."""
    mask = mask.copy()
    have = int(mask.sum())
    if have < count:
        mask[rng.choice(np.flatnonzero(~mask), count - have, replace=False)] = True
    elif have > count:
        mask[rng.choice(np.flatnonzero(mask), have - count, replace=False)] = False
    return mask


def reference_random(grid_hw, ratio, params, rng):
    """A uniformly random subset of exactly k = num_masked(L, ratio) patches."""
    length = grid_hw[0] * grid_hw[1]
    mask = np.zeros(length, dtype=bool)
    mask[rng.choice(length, masking.num_masked(length, ratio), replace=False)] = True
    return mask


def reference_block(grid_hw, ratio, params, rng):
    """BEiT's MaskingGenerator: rectangles of random area and aspect until k, then top up."""
    params = masking.resolve_params("block", params, ratio, grid_hw)
    height, width = grid_hw
    target = masking.num_masked(height * width, ratio)
    min_patches = params["min_patches"]
    max_patches = params["max_patches"] or target
    min_aspect = params["min_aspect"]
    max_aspect = params["max_aspect"] or 1 / min_aspect
    log_aspect = (math.log(min_aspect), math.log(max_aspect))
    mask = np.zeros((height, width), dtype=bool)
    count = 0
    while count < target:
        max_mask = min(target - count, max_patches)
        delta = 0
        for _ in range(params["attempts"]):
            area = min_patches + (max_mask - min_patches) * rng.random()  # random.uniform: low may exceed high
            aspect = math.exp(rng.uniform(*log_aspect))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if h < height and w < width:
                top = int(rng.integers(0, height - h + 1))
                left = int(rng.integers(0, width - w + 1))
                new = h * w - int(mask[top:top + h, left:left + w].sum())
                if 0 < new <= max_mask:
                    mask[top:top + h, left:left + w] = True
                    delta = new
                    break
        if delta == 0:
            break
        count += delta
    return _exact_count(mask.ravel(), target, rng)


def reference_grid(grid_hw, ratio, params, rng):
    """Keep one patch of every a×b cell (row % a == 0 and col % b == 0), then exactly k."""
    params = masking.resolve_params("grid", params, ratio, grid_hw)
    height, width = grid_hw
    a, b = params["cell"] or masking.grid_cell(ratio)
    off_r, off_c = (int(rng.random() * a), int(rng.random() * b)) if params["random_offset"] else (0, 0)
    mask = np.ones((height, width), dtype=bool)
    for r in range(height):
        for c in range(width):
            if (r - off_r) % a == 0 and (c - off_c) % b == 0:
                mask[r, c] = False
    return _exact_count(mask.ravel(), masking.num_masked(height * width, ratio), rng)


def reference_walker(grid_hw, ratio, params, rng):
    """A random walk masking what it visits; after `restart_after` idle steps, jump to an unmasked patch."""
    params = masking.resolve_params("walker", params, ratio, grid_hw)
    height, width = grid_hw
    length = height * width
    target = masking.num_masked(length, ratio)
    mask = np.zeros(length, dtype=bool)
    pos = int(rng.integers(length))
    mask[pos] = True
    count, stalled = 1, 0
    while count < target:
        dr, dc = ((-1, 0), (1, 0), (0, -1), (0, 1))[rng.integers(4)]
        r, c = pos // width + dr, pos % width + dc
        if 0 <= r < height and 0 <= c < width:
            pos = r * width + c
        if not mask[pos]:
            mask[pos] = True
            count += 1
            stalled = 0
            continue
        stalled += 1
        if stalled >= params["restart_after"]:
            pos = int(rng.choice(np.flatnonzero(~mask)))
            mask[pos] = True
            count += 1
            stalled = 0
    return mask


def reference_coarse(grid_hw, ratio, params, rng):
    """SimMIM: random cells of `scale`×`scale` patches on the coarse grid, cropped, then exactly k."""
    params = masking.resolve_params("coarse", params, ratio, grid_hw)
    height, width = grid_hw
    scale = params["scale"]
    coarse_h, coarse_w = math.ceil(height / scale), math.ceil(width / scale)
    cells = reference_random((coarse_h, coarse_w), ratio, {}, rng).reshape(coarse_h, coarse_w)
    mask = np.zeros((height, width), dtype=bool)
    for r in range(height):
        for c in range(width):
            mask[r, c] = cells[r // scale, c // scale]
    return _exact_count(mask.ravel(), masking.num_masked(height * width, ratio), rng)


REFERENCES = {
    "random": reference_random,
    "block": reference_block,
    "grid": reference_grid,
    "walker": reference_walker,
    "coarse": reference_coarse,
}


def reference_batch(name: str, batch: int, grid_hw, ratio: float, params: dict, seed: int) -> torch.Tensor:
    """`batch` samples of the reference generator `name`, one at a time: a bool B×L tensor."""
    rng = np.random.default_rng(seed)
    make = REFERENCES[name]
    return torch.from_numpy(np.stack([make(tuple(grid_hw), ratio, params, rng) for _ in range(batch)]))


# ----------------------------------------------------------------------------- timing


def _median_ms(fn, repeats: int, device: torch.device, min_seconds: float = 0.3) -> float:
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


def bench_masks(batch: int = 256, grid_hw=(14, 14), ratio: float = 0.75, repeats: int = 5,
                device: str = "cpu") -> list[dict]:
    """Per strategy: ms per batch of masking.generate, of reference_batch (None without one), speed-up.

    Strategies whose default parameters are invalid at `ratio` (grid at most ratios) are left out.
    """
    device = torch.device(device)
    rows = []
    for name in masking.STRATEGIES:
        try:
            params = masking.resolve_params(name, {}, ratio, grid_hw)
        except ConfigError:
            continue
        generator = torch.Generator(device).manual_seed(0)
        batched = _median_ms(lambda: masking.generate(name, batch, grid_hw, ratio, params, generator, device),
                             repeats, device)
        reference = None
        if name in REFERENCES:
            reference = _median_ms(lambda: reference_batch(name, batch, grid_hw, ratio, params, 0),
                                   repeats, torch.device("cpu"))
        rows.append({"strategy": name, "batched_ms": batched, "reference_ms": reference,
                     "speedup": reference / batched if reference is not None else None})
    return rows


def _sig(x: float) -> str:
    """2 significant digits below 10, whole numbers above: 0.04, 3.5, 74."""
    return f"{x:.2g}" if x < 10 else f"{x:.0f}"


def format_bench_table(rows: list[dict]) -> str:
    """A Markdown table of bench_masks' rows."""
    lines = ["| strategy | batched ms | per-sample ms | speed-up |", "|---|---:|---:|---:|"]
    for row in rows:
        ref = "—" if row["reference_ms"] is None else f"{row['reference_ms']:.2f}"
        speedup = "—" if row["speedup"] is None else f"{_sig(row['speedup'])}×"
        lines.append(f"| {row['strategy']} | {row['batched_ms']:.2f} | {ref} | {speedup} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- gallery

VISIBLE, MASKED = 0.88, 0.35  # gray levels, as MAE's Figure 6 masks


def draw_gallery(rows, grid_hw, path, n: int = 8) -> None:
    """One row per (label, masks) pair, its first `n` samples; masked patches dark gray.

    masks may be B×L or B×T×L (frame 0 is drawn). The PNG is written to a temporary file
    beside `path` and moved into place, so a reader never sees half a file.
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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=150)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a gallery is for reading
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- the command


def _one(strategy, ratio, grid_hw, batch, frames, params, seed, stats, device):
    """Masks of one strategy, their ms per batch (median of 5) and statistics if asked, a gallery label."""
    resolved = masking.resolve_params(strategy, params or {}, ratio, grid_hw)
    make = lambda: masking.generate(strategy, batch, grid_hw, ratio, resolved,  # noqa: E731
                                    torch.Generator(device).manual_seed(seed), device, frames)
    masks = make()
    ms = _median_ms(make, 5, device)
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
            if name not in masking.STRATEGIES:
                raise ConfigError(f"masking.params.{name}", f"not a strategy; allowed: {', '.join(masking.STRATEGIES)}")
        rows, results, skipped = [], {}, {}
        for name in masking.STRATEGIES:
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
