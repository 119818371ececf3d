"""What a run leaves for people watching it: plain progress lines when the output is not a terminal,
and TensorBoard events that mirror metrics.jsonl (scalars per phase and epoch, hparams once done)."""
import io
import json
from types import SimpleNamespace

from rich.console import Console
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from bench.launch.progress import RunProgress
from bench.launch.store import RESULT_KEYS, RunFolder
from bench.study.spec import Run

CONFIG = {"pretrain": {"epochs": 3}, "evals": {"finetune": {"enabled": True, "epochs": 1},
                                              "linear_probe": {"enabled": True, "epochs": 2}},
          "masking": {"strategy": "block", "ratio": 0.75, "params": {"min_patches": None}}, "seed": 0}


def result_of(rid: str, **scores) -> dict:
    return {**dict.fromkeys(RESULT_KEYS), "run_id": rid, "study": "watched", **scores, "config": CONFIG}


def events(path) -> EventAccumulator:
    acc = EventAccumulator(str(path))
    acc.Reload()
    return acc


def test_plain_lines_without_a_terminal_at_most_one_per_interval(tmp_path):
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=200)
    assert not console.is_terminal
    study = SimpleNamespace(name="watched")
    done, broken = Run(CONFIG, "a" * 12, {"masking.strategy": "block", "seed": 0}), Run(CONFIG, "b" * 12, {"seed": 1})
    folders = {r.run_id: RunFolder(tmp_path, "watched", r.run_id) for r in (done, broken)}
    for folder in folders.values():
        folder.path.mkdir(parents=True)
    with RunProgress(study, tmp_path, 2, console, every_s=3600) as progress:
        progress.started(done)
        progress.started(broken)
        folders[done.run_id].log_metrics({"phase": "pretrain", "epoch": 1, "loss": 0.61234, "lr": 1e-3})
        progress.refresh()  # within the interval: nothing yet
        assert "epoch" not in out.getvalue()
        progress.every_s = 0
        folders[done.run_id].log_metrics({"phase": "pretrain", "epoch": 2, "loss": 0.5, "lr": 1e-3})
        progress.refresh()
        progress.refresh()  # no new row: no new line
        folders[done.run_id].log_metrics({"phase": "finetune", "epoch": 1, "loss": 0.4, "top1": 74.61})
        folders[done.run_id].write_result(result_of(done.run_id, finetune_top1=74.61, linear_probe_top1=71.7))
        progress.finished(done)
        folders[broken.run_id].write_error("Traceback (most recent call last):\nValueError: loss is nan\n",
                                           phase="pretrain")
        progress.finished(broken)
    lines = out.getvalue().splitlines()
    text = [line.split(" ", 1)[1] for line in lines]  # without the time of day
    assert text == [f"watched: started strategy=block seed=0 ({done.run_id})",
                    f"watched: started seed=1 ({broken.run_id})",
                    f"watched: {done.run_id} pretrain epoch 2/3 loss 0.5000",
                    f"watched: {done.run_id} finetune epoch 1/1 loss 0.4000 top1 74.6",
                    f"watched: {done.run_id} finished: fine-tune 74.6, linear probe 71.7",
                    f"watched: {broken.run_id} failed: ValueError: loss is nan"]
    assert all(line[2] == ":" and line[5] == ":" for line in lines)  # HH:MM:SS first


def test_tensorboard_mirrors_the_metrics_and_records_hparams_when_done(tmp_path):
    folder = RunFolder(tmp_path, "watched", "c" * 12)
    folder.path.mkdir(parents=True)
    folder.start(CONFIG)
    for epoch, loss in ((1, 0.9), (2, 0.7), (3, 0.5)):
        folder.log_metrics({"phase": "pretrain", "epoch": epoch, "loss": loss, "lr": 1e-3 * epoch,
                            "images_per_s": 100.0})
    folder.log_metrics({"phase": "finetune", "epoch": 1, "loss": 0.4, "top1": 74.5})
    board = folder.path / "tensorboard"
    scalars = events(board).Scalars("pretrain/loss")
    assert [(e.step, round(e.value, 4)) for e in scalars] == [(1, 0.9), (2, 0.7), (3, 0.5)]
    assert events(board).Scalars("finetune/top1")[0].value == 74.5
    assert {"pretrain/lr", "pretrain/images_per_s", "finetune/loss"} <= set(events(board).Tags()["scalars"])

    folder.write_result(result_of(folder.run_id, finetune_top1=74.5, linear_probe_top1=70.25))
    acc = events(board)
    assert acc.Scalars("final/finetune_top1")[0].value == 74.5
    assert acc.Scalars("final/linear_probe_top1")[0].value == 70.25
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin
    session = plugin["_hparams_/session_start_info"]
    assert b"masking.strategy" in session and b"block" in session and b"masking.ratio" in session


def test_a_resumed_run_shows_each_epoch_once_and_a_restarted_one_starts_clean(tmp_path):
    folder = RunFolder(tmp_path, "watched", "d" * 12)
    folder.path.mkdir(parents=True)
    folder.start(CONFIG)
    for epoch in (1, 2, 3):
        folder.log_metrics({"phase": "pretrain", "epoch": epoch, "loss": 1.0 / epoch})
    folder.resume(folder.read_config(), pretrain_epochs_done=2)  # the checkpoint covers epochs 1-2; epoch 3 runs again
    folder.log_metrics({"phase": "pretrain", "epoch": 3, "loss": 0.25})
    steps = [(e.step, round(e.value, 4)) for e in events(folder.path / "tensorboard").Scalars("pretrain/loss")]
    assert steps == [(1, 1.0), (2, 0.5), (3, 0.25)]
    assert [json.loads(line)["loss"] for line in folder.metrics_path.read_text().splitlines()] == [1.0, 0.5, 0.25]
    folder.start(CONFIG)  # begun again from nothing
    assert not (folder.path / "tensorboard").exists()
