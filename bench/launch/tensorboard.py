"""TensorBoard event files for every run, so `tensorboard --logdir results/<study>` shows a study.

    results/<study>/<run_id>/tensorboard/   (written by the run's main process only)
        <phase>/<key>   one scalar per metrics.jsonl row at step = the row's epoch: pretrain/loss,
                        pretrain/lr, pretrain/images_per_s, linear_probe/loss, finetune/top1, ...
        hparams         when the run is done: the config's scalar keys beside its final top-1s
                        (add_hparams), so TensorBoard's HParams view compares the runs of a grid

The events mirror metrics.jsonl, which stays the record the reports read: a run begun again
starts a fresh folder, and a resumed one rewrites the rows its checkpoint keeps, so TensorBoard
never shows an epoch twice. TensorBoard's own writer (torch.utils.tensorboard) does the writing;
it is imported when a run first logs, not when mimbench starts.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

FOLDER = "tensorboard"
FINAL_METRICS = ("finetune_top1", "linear_probe_top1", "knn_top1", "pretrain_images_per_s", "pretrain_final_loss")


def _scalars(row: dict) -> dict[str, float]:
    """A metrics row's numbers (not its epoch; no booleans; finite only)."""
    return {k: float(v) for k, v in row.items()
            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def hparams_of(config: dict, prefix: str = "") -> dict:
    """The config's leaves as TensorBoard hyper-parameters: numbers, booleans and strings kept,
    lists as their text, None as 'none'."""
    out = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(hparams_of(value, name + "."))
        elif value is None:
            out[name] = "none"
        elif isinstance(value, (bool, int, float, str)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


class RunBoard:
    """The TensorBoard writer of one run folder, opened on the first row."""

    def __init__(self, run_path: Path | str):
        self.path = Path(run_path) / FOLDER
        self._writer = None

    def _open(self):
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter
            self._writer = SummaryWriter(log_dir=str(self.path))
        return self._writer

    def reset(self) -> None:
        """Forget what earlier attempts wrote (a run begun again, or resumed and about to re-log)."""
        self.close()
        shutil.rmtree(self.path, ignore_errors=True)

    def log(self, row: dict) -> None:
        phase, epoch = row.get("phase", "run"), row.get("epoch")
        if epoch is None:
            return
        writer = self._open()
        for key, value in _scalars(row).items():
            writer.add_scalar(f"{phase}/{key}", value, int(epoch))
        writer.flush()

    def finish(self, result: dict) -> None:
        """The run's hyper-parameters beside its final numbers, then close."""
        metrics = {f"final/{k}": float(result[k]) for k in FINAL_METRICS
                   if isinstance(result.get(k), (int, float)) and math.isfinite(result[k])}
        self._open().add_hparams(hparams_of(result.get("config", {})), metrics, run_name=".")
        self.close()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
