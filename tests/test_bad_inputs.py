"""Nothing wrong is accepted: a corpus of bad specs and bad data files, each stopped before anything
runs with exactly one line — the file, the key as written there (base., grid.…[i], profiles.…),
what is allowed — and, through the real command line (`python3 -m bench plan`), exit code 2 and no
traceback. Good specs still load: every committed spec at every profile, and the quickstart.
"""
from __future__ import annotations

import gzip
import os
import pickle
import struct
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import yaml

from bench.core.errors import ConfigError
from bench.core.yamlio import load_text
from bench.study.spec import MAX_RUNS, check_data, load_study

REPO = Path(__file__).resolve().parents[1]

SECTIONS = {  # the base of every spec below: synthetic data, a tiny model (resolving needs no data)
    "data": "{name: synthetic, img_size: 16}",
    "model": "{preset: mae_vit_tiny_patch4}",
    "masking": "{strategy: random, ratio: 0.75}",
    "pretrain": "{epochs: 2, warmup_epochs: 1, blr: 1.5e-3}",
}


def spec(extra: str = "", **sections: str | None) -> str:
    """A small valid spec's text, with base sections replaced (None: left out) and `extra` appended."""
    merged = {**SECTIONS, **sections}
    lines = ["name: bad", "base:"] + [f"  {k}: {v}" for k, v in merged.items() if v is not None]
    return "\n".join(lines) + "\n" + extra + ("\n" if extra else "")


# ----------------------------------------------------------------------------- data files
def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    data = header + array.astype(np.uint8).tobytes()
    if gz:
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def fashion(root: Path, gz: bool = True, n: tuple = (12, 5)) -> None:
    """A tiny, valid Fashion-MNIST folder: 12 training and 5 test images of 28x28."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    suffix = ".gz" if gz else ""
    for prefix, count in zip(("train", "t10k"), n):
        write_idx(root / f"{prefix}-images-idx3-ubyte{suffix}", rng.integers(0, 256, (count, 28, 28)), gz)
        write_idx(root / f"{prefix}-labels-idx1-ubyte{suffix}", rng.integers(0, 10, (count,)), gz)


def truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def cifar(root: Path) -> Path:
    """A tiny, valid cifar-10-batches-py folder (4 images per batch)."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": [int(x) for x in rng.integers(0, 10, 4)]}, f)
    return folder


def imagefolder(root: Path, classes=("cat", "dog"), val_classes=None) -> None:
    """A tiny, valid ImageNet-style tree: train/<class>/0.png and val/<class>/0.png."""
    from PIL import Image

    for split, names in (("train", classes), ("val", val_classes or classes)):
        for cls in names:
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (10, 200, 30)).save(root / split / cls / "0.png")


def image16(path: Path) -> None:
    from PIL import Image

    Image.new("I;16", (8, 8)).save(path)


FASHION = spec(data="{name: fashion_mnist, img_size: 32}")
CIFAR = spec(data="{name: cifar10, img_size: 32}")
FOLDER = spec(data="{name: imagefolder, img_size: 16}")


# ----------------------------------------------------------------------------- the corpus
@dataclass
class Bad:
    id: str
    text: str | bytes | None  # the spec's content (None: no spec written; `spec_name` must name what is there)
    key: str  # the key the line names
    says: str  # what the line says (a fragment)
    argv: tuple = ()  # more arguments to `plan` ({data} = the data folder, {tmp} = the test's folder)
    data: Callable[[Path], None] | None = None  # writes the data folder
    source: str = "spec"  # the file the line names: 'spec', a path under {tmp}, or 'command line'
    files: dict = field(default_factory=dict)  # other files beside the spec: name -> text
    spec_name: str = "spec.yaml"
    cli: bool = True  # through `python3 -m bench plan`; False: load_study (+ check_data) in-process
    kind: str = "spec"


CASES = [
    # --- the file itself: not text, not YAML, not a mapping ---------------------------------------
    Bad("binary-file", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\xff\xfe", "<file>", "not UTF-8 text (byte 0x89 at offset 0"),
    Bad("nul-in-text", "name: a\x00b\n", "<yaml>", "not YAML text: character U+0000 at offset 7"),
    Bad("yaml-syntax", "name: [bad\n", "<yaml>", "not valid YAML at line 2, column 1"),
    Bad("top-is-a-list", "- name: a\n", "<top>", "a spec is a mapping with keys name, description, base"),
    Bad("empty-file", "", "<top>", "a spec is a mapping", cli=False),
    Bad("missing-file", None, "<file>", "cannot read the spec (No such file or directory)", spec_name="nope.yaml"),
    Bad("a-folder", None, "<file>", "cannot read the spec (Is a directory)", spec_name="folder.yaml",
        files={"folder.yaml/x": ""}, cli=False),
    Bad("python-tag", spec("seeds: !!python/object/apply:os.system [ls]"), "<yaml>",
        "could not determine a constructor for the tag", cli=False),
    Bad("recursive-alias", spec("grid: {masking.ratio: &a [0.5, *a]}"), "grid.masking.ratio[1]",
        "an alias that contains itself", cli=False),
    Bad("huge-integer", spec("seeds: 1" + "0" * 5000), "<yaml>", "a value cannot be read: Exceeds the limit", cli=False),
    # --- duplicate keys -------------------------------------------------------------------------------
    Bad("duplicate-top-key", "name: a\nname: b\n", "name", "duplicate key (line 1 and line 2); allowed: each key once"),
    Bad("duplicate-base-section", spec("  masking: {ratio: 0.5}"), "base.masking", "duplicate key (line 5 and line 7)"),
    Bad("duplicate-nested-key", spec(masking="{ratio: 0.5, ratio: 0.6}"), "base.masking.ratio",
        "duplicate key (line 5, columns 13 and 25)", cli=False),
    Bad("duplicate-grid-key", spec("grid:\n  masking.ratio: [0.5]\n  masking.ratio: [0.6]"), "grid.masking.ratio",
        "duplicate key (line 8 and line 9)"),
    # --- the spec's own keys ------------------------------------------------------------------------
    Bad("unknown-top-key", spec("nmae: x"), "nmae", "unknown key; allowed: name, description, base"),
    Bad("bad-name", spec().replace("name: bad", "name: my study"), "name", "'my study' is not allowed; allowed: letters"),
    Bad("description-list", spec("description: [a, b]"), "description", "['a', 'b'] is not allowed; allowed: a string"),
    Bad("description-date", spec("description: 2024-01-31"), "description", "datetime.date(2024, 1, 31) is not allowed",
        cli=False),
    Bad("base-a-list", "name: bad\nbase: [1, 2]\n", "base", "[1, 2] is not allowed; allowed: a mapping with method"),
    Bad("section-not-a-mapping", spec(masking="0.5"), "base.masking", "must be a mapping with keys strategy, ratio"),
    Bad("unknown-base-key", spec(pretrain="{epoch: 3}"), "base.pretrain.epoch", "unknown key; allowed here: epochs"),
    Bad("launch-a-list", spec("launch: [local]"), "launch", "['local'] is not allowed; allowed: a mapping of launch"),
    Bad("launch-unknown-key", spec("launch: {executr: local}"), "launch.executr", "unknown key; allowed here: executor"),
    Bad("launch-bad-executor", spec("launch: {executor: kubernetes}"), "launch.executor",
        "'kubernetes' is not allowed; allowed: one of debug, local, slurm", cli=False),
    Bad("flag-out-of-range", spec(), "--parallel", "0 is out of range; allowed: int >= 1", argv=("--parallel", "0"),
        source="command line"),
    Bad("flag-not-finite", spec(), "--mem-gb", "nan is not a finite number", argv=("--mem-gb", "nan"),
        source="command line"),
    Bad("paper-unknown-subtable", spec("paper: {source: mae, subtable: table9}"), "paper.subtable",
        "'table9' is not in mae; allowed: table1a, table1b"),
    Bad("paper-unknown-source", spec("paper: {source: dino, subtable: table1}"), "paper.source",
        "'dino' is not known; allowed: beit, mae, simmim", cli=False),
    Bad("paper-a-string", spec("paper: mae:table1f"), "paper", "'mae:table1f' is not allowed; allowed: a mapping",
        cli=False),
    # --- numbers: type, range, finiteness, quotes ------------------------------------------------------
    Bad("ratio-nan", spec(masking="{ratio: .nan}"), "base.masking.ratio", "nan is not a finite number; allowed: float 0.0 < x < 1.0"),
    Bad("ratio-nan-text", spec(masking="{ratio: 'nan'}"), "base.masking.ratio", "'nan' is a string, not a finite number"),
    Bad("ratio-quoted", spec(masking="{ratio: '0.5'}"), "base.masking.ratio",
        "'0.5' is a quoted number (a string); allowed: float 0.0 < x < 1.0 — write numbers without quotes"),
    Bad("img-size-quoted", spec(data="{name: synthetic, img_size: '32'}"), "base.data.img_size",
        "'32' is a quoted number (a string); allowed: int >= 8"),
    Bad("blr-inf", spec(pretrain="{epochs: 2, warmup_epochs: 1, blr: .inf}"), "base.pretrain.blr", "inf is not a finite number"),
    Bad("min-lr-minus-inf", spec(pretrain="{epochs: 2, warmup_epochs: 1, min_lr: -.inf}"), "base.pretrain.min_lr",
        "-inf is not a finite number", cli=False),
    Bad("blocks-inf", spec("  evals: {finetune: {blocks: .inf}}"), "base.evals.finetune.blocks", "inf is not a finite number"),
    Bad("blocks-nan", spec("  evals: {finetune: {blocks: .nan}}"), "base.evals.finetune.blocks", "nan is not a finite number",
        cli=False),
    Bad("blocks-fraction", spec("  evals: {finetune: {blocks: 1.5}}"), "base.evals.finetune.blocks",
        "1.5 is not allowed; allowed: null, 0.5, or a whole number of blocks 0..4", cli=False),
    Bad("epochs-a-bool", spec(pretrain="{epochs: true}"), "base.pretrain.epochs", "True has the wrong type (bool); allowed: int"),
    Bad("blr-a-bool", spec(pretrain="{blr: yes}"), "base.pretrain.blr", "True has the wrong type (bool); allowed: float",
        cli=False),
    Bad("epochs-a-float", spec(pretrain="{epochs: 2.0}"), "base.pretrain.epochs", "2.0 has the wrong type (float)", cli=False),
    Bad("epochs-beyond-int64", spec(pretrain="{epochs: 100000000000000000000}"), "base.pretrain.epochs",
        "is out of range; allowed: int >= 1, below 2**63", cli=False),
    Bad("ratio-one", spec(masking="{ratio: 1.0}"), "base.masking.ratio", "1.0 is out of range; allowed: float 0.0 < x < 1.0"),
    Bad("seed-negative", spec("  seed: -1"), "base.seed", "-1 is out of range; allowed: int 0 <= x <= 4294967295", cli=False),
    Bad("seed-too-large", spec("  seed: 99999999999"), "base.seed", "99999999999 is out of range", cli=False),
    Bad("depth-zero", spec(model="{preset: mae_vit_tiny_patch4, depth: 0}"), "base.model.depth", "0 is out of range", cli=False),
    Bad("bad-choice", spec(data="{name: mnist}"), "base.data.name", "'mnist' is not allowed; allowed: one of fashion_mnist",
        cli=False),
    # --- checks across keys ------------------------------------------------------------------------
    Bad("warmup-over-epochs", spec(pretrain="{epochs: 2, warmup_epochs: 3}"), "base.pretrain.warmup_epochs",
        "3 exceeds pretrain.epochs 2"),
    Bad("img-size-not-multiple", spec(data="{name: synthetic, img_size: 30}"), "base.data.img_size",
        "30 is not a multiple of model.patch_size 4", cli=False),
    Bad("one-patch-image", spec(data="{name: synthetic, img_size: 8}", model="{preset: mae_vit_tiny_patch4, patch_size: 8}"),
        "base.data.img_size", "8 px is one patch of model.patch_size 8; allowed: at least 2 patches", cli=False),
    Bad("heads-do-not-divide", spec(model="{preset: mae_vit_tiny_patch4, num_heads: 5}"), "base.model.num_heads",
        "5 does not divide model.embed_dim", cli=False),
    Bad("default-warmup-over-epochs", spec(pretrain="{epochs: 4}"), "pretrain.warmup_epochs",
        "40 exceeds pretrain.epochs 4 (the default: the spec does not set it)", cli=False),
    # --- grid, zip, seeds, size ----------------------------------------------------------------------
    Bad("grid-out-of-range", spec("grid: {masking.ratio: [0.5, 0.75, 1.5]}"), "grid.masking.ratio[2]",
        "1.5 is out of range; allowed: float 0.0 < x < 1.0"),
    Bad("grid-quoted-number", spec("grid: {pretrain.blr: [1e-3, '1e-3']}"), "grid.pretrain.blr[1]",
        "'1e-3' is a quoted number"),
    Bad("grid-not-a-list", spec("grid: {masking.ratio: 0.5}"), "grid.masking.ratio",
        "0.5 is not allowed; allowed: a non-empty list of values"),
    Bad("grid-a-list", spec("grid: [masking.ratio]"), "grid", "['masking.ratio'] is not allowed; allowed: a mapping",
        cli=False),
    Bad("grid-unknown-key", spec("grid: {masking.rato: [0.5]}"), "grid.masking.rato",
        "unknown key; allowed: a dotted config key such as masking.ratio", cli=False),
    Bad("grid-seed", spec("grid: {seed: [1, 2]}"), "grid.seed", "unknown key; allowed: use `seeds` for seeds", cli=False),
    Bad("grid-point-cross-key", spec("grid: {masking.strategy: [random, grid]}", masking="{ratio: 0.6}"),
        "base.masking.ratio", "0.6 cannot be made by grid masking (1x3 cell masks 0.6667); allowed: 1 - 1/(a*b) within 0.02"),
    Bad("grid-point-names-the-run", spec("grid: {masking.strategy: [random, grid]}", masking="{ratio: 0.6}"),
        "base.masking.ratio", "(in the run with masking.strategy = 'grid')", cli=False),
    Bad("grid-params-of-a-target", spec("zip:\n  - pretrain.target: [pixel, hog]\n"
                                        "    pretrain.target_params: [{}, {cell: 3}]"),
        "zip[0].pretrain.target_params[1].cell", "3 does not divide model.patch_size 4; allowed: null or one of 1, 2, 4"),
    Bad("zip-unequal", spec("zip: [{masking.ratio: [0.5, 0.6], pretrain.epochs: [1]}]"), "zip[0]",
        "lists of unequal lengths [1, 2]", cli=False),
    Bad("zip-bad-value", spec("zip: [{masking.ratio: [0.5, 1.5], pretrain.epochs: [1, 2]}]"), "zip[0].masking.ratio[1]",
        "1.5 is out of range", cli=False),
    Bad("zip-clash", spec("grid: {masking.ratio: [0.5]}\nzip: [{masking.ratio: [0.6]}]"), "zip[0].masking.ratio",
        "is already varied elsewhere in the spec", cli=False),
    Bad("seeds-huge-count", spec("seeds: 100000000"), "seeds",
        f"100000000 is out of range; allowed: a count >= 1 or a list of integers >= 0 (at most {MAX_RUNS} seeds"),
    Bad("seeds-zero", spec("seeds: 0"), "seeds", "0 is not allowed; allowed: a count >= 1", cli=False),
    Bad("seeds-bool", spec("seeds: [0, true]"), "seeds[1]", "True is not allowed; allowed: an integer 0..4294967295",
        cli=False),
    Bad("seeds-quoted", spec("seeds: ['3']"), "seeds[0]", "'3' is a quoted number (a string)", cli=False),
    Bad("study-too-large", spec("grid: {pretrain.epochs: [" + ", ".join(map(str, range(2, 202))) + "]}\nseeds: 100"),
        "grid", f"the study would have 20000 runs (grid pretrain.epochs 200 x seeds 100); allowed: at most {MAX_RUNS}"),
    # --- targets and masking parameters --------------------------------------------------------------
    Bad("pca-components-over-patch", spec(pretrain="{target: pca, target_params: {components: 100}}"),
        "base.pretrain.target_params.components",
        "100 exceeds the patch dimension 48 (4x4 px x 3 channels); allowed: 1..48"),
    Bad("pca-default-over-patch", spec(pretrain="{epochs: 2, warmup_epochs: 1, target: pca}"),
        "pretrain.target_params.components", "96 exceeds the patch dimension 48", cli=False),
    Bad("pca-over-grey-patch", spec(data="{name: fashion_mnist, img_size: 32}",
                                    pretrain="{epochs: 2, warmup_epochs: 1, target: pca, target_params: {components: 20}}"),
        "base.pretrain.target_params.components", "20 exceeds the patch dimension 16 (4x4 px x 1 channels)", cli=False),
    Bad("hog-cell-does-not-divide", spec(pretrain="{target: hog, target_params: {cell: 3}}"),
        "base.pretrain.target_params.cell", "3 does not divide model.patch_size 4; allowed: null or one of 1, 2, 4"),
    Bad("target-lr-nan-text", spec(pretrain="{target: dvae_token, target_params: {lr: 'nan'}}"),
        "base.pretrain.target_params.lr", "'nan' is a string, not a finite number", cli=False),
    Bad("masking-param-nan", spec(masking="{strategy: block, params: {min_aspect: .nan}}"),
        "base.masking.params.min_aspect", "nan is not a finite number; allowed: float", cli=False),
    Bad("masking-param-quoted", spec(masking="{strategy: block, params: {min_patches: '4'}}"),
        "base.masking.params.min_patches", "'4' is a quoted number (a string); allowed: int"),
    Bad("masking-max-below-min", spec(masking="{strategy: block, params: {min_patches: 8, max_patches: 4}}"),
        "base.masking.params.max_patches", "4 is out of range; allowed: null or an int >= min_patches 8", cli=False),
    Bad("masking-max-aspect-inf", spec(masking="{strategy: block, params: {max_aspect: .inf}}"),
        "base.masking.params.max_aspect", "inf is not a finite number", cli=False),
    Bad("multi-weight-inf", spec(masking="{strategy: multi, params: {weights: {random: .inf, block: 1}}}"),
        "base.masking.params.weights.random", "inf is not allowed; allowed: a finite number >= 0", cli=False),
    Bad("grid-cell-bool", spec(masking="{strategy: grid, params: {cell: [true, 4]}}"), "base.masking.params.cell",
        "[True, 4] is out of range; allowed: [a, b], two integers >= 1", cli=False),
    Bad("masking-params-a-list", spec(masking="{strategy: tube, params: {spatial_params: [1]}}"),
        "base.masking.params.spatial_params", "[1] has the wrong type", cli=False),
    # --- profiles and extends ------------------------------------------------------------------------
    Bad("profiles-a-list", spec("profiles: [small]"), "profiles", "['small'] is not allowed; allowed: a mapping of profile",
        cli=False),
    Bad("profile-a-list", spec("profiles: {small: [1]}"), "profiles.small", "[1] is not allowed; allowed: a mapping",
        argv=("--profile", "small")),
    Bad("profile-base-a-list", spec("profiles: {small: {base: [1]}}"), "profiles.small.base",
        "[1] is not allowed; allowed: a mapping with method", argv=("--profile", "small")),
    Bad("profile-unknown-key", spec("profiles: {small: {bse: {}}}"), "profiles.small.bse",
        "unknown key; allowed: description, base", argv=("--profile", "small"), cli=False),
    Bad("profile-extends-unknown", spec("profiles: {small: {extends: big}}"), "profiles.small.extends",
        "'big' is not allowed; allowed: none", argv=("--profile", "small"), cli=False),
    Bad("profile-extends-a-list", spec("profiles: {small: {extends: [a]}}"), "profiles.small.extends",
        "['a'] is not allowed; allowed: the name of another profile", argv=("--profile", "small"), cli=False),
    Bad("profile-not-defined", spec("profiles: {small: {}}"), "profiles", "'huge' is not defined; allowed: small",
        argv=("--profile", "huge")),
    Bad("profile-base-value", spec("profiles: {small: {base: {pretrain: {epochs: 0}}}}"),
        "profiles.small.base.pretrain.epochs", "0 is out of range; allowed: int >= 1", argv=("--profile", "small")),
    Bad("profile-grid-value", spec("profiles: {small: {grid: {masking.ratio: [.nan]}}}"),
        "profiles.small.grid.masking.ratio[0]", "nan is not a finite number", argv=("--profile", "small"), cli=False),
    Bad("profile-seeds", spec("profiles: {small: {seeds: -2}}"), "profiles.small.seeds", "-2 is not allowed",
        argv=("--profile", "small"), cli=False),
    Bad("extends-not-a-path", spec("extends: 3"), "extends", "3 is not allowed; allowed: a path to a spec", cli=False),
    Bad("extends-missing", spec("extends: _nope.yaml"), "<file>", "cannot read the spec", source="_nope.yaml"),
    Bad("extends-itself", spec("extends: spec.yaml"), "extends", "spec.yaml extends itself", cli=False),
    Bad("recipe-value", "extends: _recipe.yaml\nname: child\n", "base.masking.ratio",
        "1.5 is out of range", files={"_recipe.yaml": spec(masking="{ratio: 1.5}")}, source="_recipe.yaml"),
    Bad("recipe-profile-value", "extends: _recipe.yaml\nname: child\nprofiles: {small: {grid: {pretrain.epochs: [1, 2]}}}\n",
        "profiles.small.base.pretrain.warmup_epochs", "2 exceeds pretrain.epochs 1 (in the run with pretrain.epochs = 1)",
        files={"_recipe.yaml": spec("profiles: {small: {base: {pretrain: {warmup_epochs: 2}}}}")},
        argv=("--profile", "small"), source="_recipe.yaml"),
    # --- the data ---------------------------------------------------------------------------------
    Bad("data-root-missing", spec("launch: {data_root: /nonexistent/data}"), "launch.data_root",
        "/nonexistent/data does not exist; allowed: a folder holding the data", kind="data"),
    Bad("data-root-flag-missing", FASHION, "--data-root", "{tmp}/nowhere does not exist; allowed: a folder",
        argv=("--data-root", "{tmp}/nowhere"), source="command line", kind="data"),
    Bad("data-root-a-file", FASHION, "--data-root", "{tmp}/spec.yaml is not a folder", argv=("--data-root", "{tmp}/spec.yaml"),
        source="command line", kind="data", cli=False),
    Bad("dataset-not-found", CIFAR, "data.name", "cifar10 not found (looked for data_batch_1 in {data}",
        argv=("--data-root", "{data}"), data=lambda d: d.mkdir(), kind="data"),
    Bad("idx-truncated-gz", FASHION, "fashion_mnist", "truncated or corrupt; expected an unsigned-byte IDX file of 3",
        argv=("--data-root", "{data}"), data=lambda d: (fashion(d), truncate(d / "train-images-idx3-ubyte.gz", 300)),
        source="{data}/train-images-idx3-ubyte.gz", kind="data"),
    Bad("idx-truncated-plain", FASHION, "fashion_mnist", "holds 5000 bytes, not the 9424 its header declares (12x28x28)",
        argv=("--data-root", "{data}"), data=lambda d: (fashion(d, gz=False), truncate(d / "train-images-idx3-ubyte", 5000)),
        source="{data}/train-images-idx3-ubyte", kind="data"),
    Bad("idx-bad-magic", FASHION, "fashion_mnist", "not an unsigned-byte IDX file of 1 dimension (header 00000d01)",
        argv=("--data-root", "{data}"),
        data=lambda d: (fashion(d, gz=False), (d / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x0d\x01\0\0\0\x05" + b"\0" * 20)),
        source="{data}/t10k-labels-idx1-ubyte", kind="data", cli=False),
    Bad("idx-not-gzip", FASHION, "fashion_mnist", "cannot be read (Not a gzipped file",
        argv=("--data-root", "{data}"),
        data=lambda d: (fashion(d), (d / "train-labels-idx1-ubyte.gz").write_bytes(b"plain text, not gzip")),
        source="{data}/train-labels-idx1-ubyte.gz", kind="data", cli=False),
    Bad("idx-count-mismatch", FASHION, "fashion_mnist", "holds 4 labels for 5 images in t10k-images-idx3-ubyte.gz",
        argv=("--data-root", "{data}"),
        data=lambda d: (fashion(d), write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(4))),
        source="{data}/t10k-labels-idx1-ubyte.gz", kind="data"),
    Bad("idx-label-out-of-range", FASHION, "fashion_mnist", "holds label 12; expected labels 0..9",
        argv=("--data-root", "{data}"),
        data=lambda d: (fashion(d), write_idx(d / "train-labels-idx1-ubyte.gz", np.full(12, 12))),
        source="{data}/train-labels-idx1-ubyte.gz", kind="data", cli=False),
    Bad("idx-labels-missing", FASHION, "fashion_mnist", "is missing beside train-images-idx3-ubyte.gz",
        argv=("--data-root", "{data}"),
        data=lambda d: (fashion(d), (d / "train-labels-idx1-ubyte.gz").unlink()),
        source="{data}/train-labels-idx1-ubyte", kind="data", cli=False),
    Bad("cifar-truncated", CIFAR, "cifar10", "is truncated (", argv=("--data-root", "{data}"),
        data=lambda d: truncate(cifar(d) / "data_batch_3", 1000),
        source="{data}/cifar-10-batches-py/data_batch_3", kind="data"),
    Bad("cifar-garbage", CIFAR, "cifar10", "is not a pickle (", argv=("--data-root", "{data}"),
        data=lambda d: (cifar(d) / "test_batch").write_bytes(b"GIF89a" + bytes(100)),
        source="{data}/cifar-10-batches-py/test_batch", kind="data", cli=False),
    Bad("cifar-file-missing", CIFAR, "cifar10", "cannot be read (No such file or directory)",
        argv=("--data-root", "{data}"), data=lambda d: (cifar(d) / "data_batch_5").unlink(),
        source="{data}/cifar-10-batches-py/data_batch_5", kind="data", cli=False),
    Bad("imagefolder-no-val", FOLDER, "data.name", "imagefolder: no val/ folder under {data}",
        argv=("--data-root", "{data}"), data=lambda d: (imagefolder(d), __import__("shutil").rmtree(d / "val")),
        kind="data", cli=False),
    Bad("imagefolder-empty-class", FOLDER, "imagefolder", "holds no image; expected at least one file ending in .jpg",
        argv=("--data-root", "{data}"), data=lambda d: (imagefolder(d), (d / "train" / "empty").mkdir()),
        source="{data}/train/empty", kind="data"),
    Bad("imagefolder-unreadable-image", FOLDER, "imagefolder", "is not a readable image (cannot identify image file",
        argv=("--data-root", "{data}"), data=lambda d: (imagefolder(d), (d / "val" / "dog" / "0.png").write_bytes(b"no")),
        source="{data}/val/dog/0.png", kind="data"),
    Bad("imagefolder-16-bit-image", FOLDER, "imagefolder", "has image mode I;16; expected an 8-bit image",
        argv=("--data-root", "{data}"), data=lambda d: (imagefolder(d), image16(d / "train" / "cat" / "0.png")),
        source="{data}/train/cat/0.png", kind="data", cli=False),
    Bad("imagefolder-classes-differ", FOLDER, "imagefolder", "has class folder cow that train/ lacks (2 classes here, "
        "2 in train/); expected only classes of train/", argv=("--data-root", "{data}"),
        data=lambda d: imagefolder(d, val_classes=("cat", "cow")), source="{data}/val", kind="data", cli=False),
    Bad("imagefolder-classes-only-in-val", FOLDER, "imagefolder", "has class folders cow, pig that train/ lacks",
        argv=("--data-root", "{data}"), data=lambda d: imagefolder(d, val_classes=("cat", "cow", "dog", "pig")),
        source="{data}/val", kind="data"),
    Bad("imagefolder-no-train", FOLDER, "data.name", "imagefolder: no train/ folder under {data}",
        argv=("--data-root", "{data}"), data=lambda d: (imagefolder(d), __import__("shutil").rmtree(d / "train")),
        kind="data", cli=False),
    Bad("imagefolder-no-class-folders", FOLDER, "imagefolder", "has no class folders; expected <class>/<image> folders",
        argv=("--data-root", "{data}"),
        data=lambda d: (imagefolder(d), __import__("shutil").rmtree(d / "train"), (d / "train").mkdir(),
                        (d / "train" / "0.png").write_bytes(b"")),
        source="{data}/train", kind="data", cli=False),
    Bad("idx-no-images", FASHION, "fashion_mnist", "holds 0x28x28 images; expected N x H x W, all at least 1",
        argv=("--data-root", "{data}"),
        data=lambda d: (fashion(d), write_idx(d / "t10k-images-idx3-ubyte.gz", np.zeros((0, 28, 28))),
                        write_idx(d / "t10k-labels-idx1-ubyte.gz", np.zeros(0))),
        source="{data}/t10k-images-idx3-ubyte.gz", kind="data", cli=False),
    # --- a limit larger than its split (the split's file or folder named in the line) --------------
    Bad("train-limit-over-idx", spec(data="{name: fashion_mnist, img_size: 32, train_limit: 50}"), "data.train_limit",
        "50 is more than the 12 images of fashion_mnist's train split (in {data}/train-images-idx3-ubyte.gz); "
        "allowed: at most 12", argv=("--data-root", "{data}"), data=fashion, kind="data"),
    Bad("test-limit-over-folder", spec(data="{name: imagefolder, img_size: 16, test_limit: 3}"), "data.test_limit",
        "3 is more than the 2 images of imagefolder's val split (in {data}/val); allowed: at most 2",
        argv=("--data-root", "{data}"), data=imagefolder, kind="data", cli=False),
    Bad("test-limit-over-cifar", spec(data="{name: cifar10, img_size: 32, test_limit: 5}"), "data.test_limit",
        "5 is more than the 4 images of cifar10's test split", argv=("--data-root", "{data}"), data=cifar,
        kind="data", cli=False),
    Bad("train-limit-over-synthetic", spec(data="{name: synthetic, img_size: 16, train_limit: 5001}"),
        "data.train_limit", "5001 is more than the 5000 images of synthetic's train split (in the generated set)",
        kind="data", cli=False),
    Bad("identity-in-a-spec", spec(data="{name: synthetic, img_size: 16, identity: 606cdc38eb87}"),
        "base.data.identity", "is filled in from the data the launch reads; allowed: leave it out", kind="data"),
]


def _fill(text: str, tmp: Path) -> str:
    return text.replace("{tmp}", str(tmp)).replace("{data}", str(tmp / "data"))


def _prepare(case: Bad, tmp: Path) -> tuple[Path, list[str], str]:
    """Write the case's files; return the spec's path, the extra argv and the line's expected start."""
    path = tmp / case.spec_name
    for name, text in case.files.items():
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_text(text)
    if case.text is not None:
        path.write_bytes(case.text if isinstance(case.text, bytes) else case.text.encode())
    if case.data is not None:
        case.data(tmp / "data")
    argv = [_fill(a, tmp) for a in case.argv]
    source = {"spec": str(path), "command line": "command line"}.get(case.source)
    if source is None:
        source = _fill(case.source, tmp) if case.source.startswith("{") else str((tmp / case.source).resolve())
    return path, argv, f"{source}: {case.key}: "


@pytest.fixture(autouse=True)
def _no_data_env(monkeypatch):
    monkeypatch.delenv("MIMBENCH_DATA", raising=False)


def test_the_corpus_is_large_and_covers_every_kind():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)
    assert sum(c.cli for c in CASES) >= 30  # a good share through the real command line
    assert sum(c.kind == "data" for c in CASES) >= 15


@pytest.mark.parametrize("case", [c for c in CASES if c.cli], ids=lambda c: c.id)
def test_plan_stops_with_one_line_and_exit_2(case, tmp_path):
    path, argv, start = _prepare(case, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "MIMBENCH_DATA"}
    proc = subprocess.run([sys.executable, "-m", "bench", "plan", str(path), "--results", str(tmp_path / "r"), *argv],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr + proc.stdout
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # exactly one line
    line = proc.stderr.rstrip("\n")
    assert line.startswith("mimbench: error: " + start), line
    assert _fill(case.says, tmp_path) in line, line
    assert not (tmp_path / "r").exists()  # nothing ran, nothing was written


@pytest.mark.parametrize("case", [c for c in CASES if not c.cli], ids=lambda c: c.id)
def test_load_study_stops_with_one_line(case, tmp_path):
    path, argv, start = _prepare(case, tmp_path)
    flags = dict(zip(argv[::2], argv[1::2]))
    overrides = {"data_root": flags["--data-root"]} if "--data-root" in flags else {}
    with pytest.raises(ConfigError) as info:
        check_data(load_study(path, overrides, flags.get("--profile")))
    line = str(info.value)
    assert "\n" not in line and line.startswith(start), line
    assert _fill(case.says, tmp_path) in line, line


# ----------------------------------------------------------------------------- the loaders say the same
def test_the_loaders_name_the_bad_file_in_one_line(tmp_path):
    """What check_data does not read (every byte) the loader still reports as one line naming the file."""
    from bench.data import create_dataset

    data = tmp_path / "fm"
    fashion(data)
    with gzip.open(data / "t10k-images-idx3-ubyte.gz", "rb") as f:
        raw = f.read()
    with gzip.open(data / "t10k-images-idx3-ubyte.gz", "wb") as f:  # a complete gzip of a short IDX
        f.write(raw[:-100])
    with pytest.raises(ConfigError) as info:
        create_dataset({"name": "fashion_mnist", "img_size": 32}, "test", str(data))
    assert str(info.value).startswith(f"{data / 't10k-images-idx3-ubyte.gz'}: fashion_mnist: holds 3820 bytes of "
                                      "data, not the 3920 its header declares")
    folder = cifar(tmp_path / "c")
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"pixels": [1, 2, 3]}, f)
    with pytest.raises(ConfigError) as info:
        create_dataset({"name": "cifar10", "img_size": 32}, "test", str(tmp_path / "c"))
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"{folder / 'test_batch'}: cifar10: holds [\"b'pixels'\"]; expected a "
                                                "python pickle of {b'data': N x 3072 bytes, b'labels': N labels 0..9}")


def test_an_imagefolder_image_that_breaks_later_names_its_file(tmp_path):
    from bench.data.streaming import load_image

    image16(tmp_path / "deep.png")
    with pytest.raises(ConfigError, match=r"deep.png: imagefolder: has image mode I;16; expected an 8-bit image"):
        load_image(str(tmp_path / "deep.png"))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really")
    with pytest.raises(ConfigError, match=r"bad.jpg: imagefolder: is not a readable image"):
        load_image(str(tmp_path / "bad.jpg"))


# ----------------------------------------------------------------------------- good input still loads
def test_yaml_reads_numbers_as_yaml_1_2_and_strings_stay_strings():
    data = load_text("a: 1e-3\nb: 1.5e-4\nc: 1.0e3\nd: -.5\ne: 32\nf: '0.5'\ng: 1_000\nh: 0.75\ni: yes\nj: 1e\n")
    assert data == {"a": 0.001, "b": 0.00015, "c": 1000.0, "d": -0.5, "e": 32, "f": "0.5", "g": 1000, "h": 0.75,
                    "i": True, "j": "1e"}
    assert type(data["e"]) is int and type(data["a"]) is float


def _every_committed_spec_and_profile():
    for path in sorted((REPO / "ablations").rglob("*.yaml")):
        if path.name.startswith("_"):
            continue
        raw = yaml.safe_load(path.read_text())
        if "arms" in raw:  # a collection (bench/study/arms.py): its arms are specs of their own, loaded here
            continue
        profiles = set(raw.get("profiles") or {})
        if raw.get("extends"):
            profiles |= set(yaml.safe_load((path.parent / raw["extends"]).read_text()).get("profiles") or {})
        for profile in [None, *sorted(profiles)]:
            yield path, profile


def test_every_committed_spec_loads_at_every_profile():
    loaded = []
    for path, profile in _every_committed_spec_and_profile():
        study = load_study(path, profile=profile)
        assert study.runs, (path, profile)
        loaded.append(f"{path.relative_to(REPO)}:{profile or ''}")
    assert "ablations/mae/fig7_schedule.yaml:small_long" in loaded and "ablations/quickstart.yaml:" in loaded
    assert len(loaded) == 71  # MAE 34, BEiT 4, SimMIM 10, SparK 8, VideoMAE 6, masking across methods 9


def test_the_quickstart_plans_with_its_data_checked():
    if not (Path("/usr/share/datasets/fashion-mnist") / "train-images-idx3-ubyte.gz").exists():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    check_data(load_study(REPO / "ablations" / "quickstart.yaml"))  # raises on a bad file
    proc = subprocess.run([sys.executable, "-m", "bench", "plan", "ablations/quickstart.yaml", "--results", "/nonexistent"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    # three settings and two baselines (random init, raw pixels)
    assert proc.returncode == 0 and "5 runs, 0 done, 5 to run" in proc.stdout, proc.stderr


def test_empty_sections_of_a_profile_are_left_alone(tmp_path):
    path = tmp_path / "spec.yaml"
    path.write_text(spec("profiles: {small: {base: null, grid: null, seeds: null, launch: null}}"))
    assert [r.run_id for r in load_study(path, profile="small").runs] == [r.run_id for r in load_study(path).runs]


def test_a_good_data_root_passes_the_check(tmp_path):
    fashion(tmp_path / "fm")
    imagefolder(tmp_path / "if")
    cifar(tmp_path / "c")
    for text, root in ((FASHION, "fm"), (FOLDER, "if"), (CIFAR, "c")):
        path = tmp_path / "spec.yaml"
        path.write_text(text)
        check_data(load_study(path, {"data_root": str(tmp_path / root)}))
