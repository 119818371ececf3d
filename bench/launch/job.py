"""One run, end to end: pre-train, evaluate, write the result. This is what a job executes.

`run_one` takes the run's lease first (one process per run, see bench.launch.lease), writes the
resolved config, identifies the data it is about to read (bench.data.identify: a run planned on
other files than are there now fails in setup with one line), appends a metrics line per epoch of
every phase, and writes result.json last and atomically — the one file that marks the run done,
with the data's identity and the folder it was read from. A failure leaves error.txt (the phase
and the traceback, whose last line is the one-line error) in the run folder and no result.json.

Under DDP (a process group the caller set up, e.g. bench.launch.launcher.RunJob) every rank runs
the run: the main process (rank 0) decides, writes and logs; the workers follow it (`_follow`)
through the pre-training and the same evals in the same order, writing nothing. The main
process's choices (skip the run, resume at the evals, reuse a cached encoder or baseline) reach
them by broadcast, so every rank enters the same collectives. The caller ends the group.
"""
from __future__ import annotations

import functools
import os
import platform
import subprocess
import time
import traceback
from pathlib import Path

import timm
import torch

from bench import __version__
from bench.core import cache
from bench.core.errors import ConfigError
from bench.data import create_dataset, identify_read
from bench.launch.lease import Lease, describe
from bench.launch.store import RunFolder, read_result, write_failure
from bench.methods import create_method
from bench.study.config import resolve
from bench.study.run_ids import run_id as config_run_id
from bench.train import distributed
from bench.train.checkpoint import Checkpointer, Preempted
from bench.train.evals import create_eval, list_evals
from bench.train.pretrain import pretrain, random_init_encoder_state


def pretrain_config(config: dict) -> dict:
    """What the pre-trained encoder depends on: everything but the evals. Runs that differ only
    in their evals (partial fine-tuning depths, kNN) share one pre-training through the cache.
    Its run id is the encoder's cache key: it holds `data.identity` (which run_one checks against
    the files before it trains), so an encoder trained on other data is never reused. (A config
    not identified — null, made without load_study — keys as configs did before the key existed.)"""
    return {k: v for k, v in config.items() if k != "evals"}


def read_data_identity(config: dict, data_root: str | None) -> tuple[dict, str | None]:
    """(the identity of the data the run reads, the folder it is read from): bench.data.identify,
    before anything trains. A one-line ConfigError when the data cannot be found or read, or is
    not the data the run was planned on (its files changed since `load_study` identified them)."""
    identity, folder = identify_read(config["data"], data_root)
    planned = config["data"].get("identity")
    if planned is not None and identity["digest"] != planned:
        raise ConfigError("data.identity", f"the data read from {folder or 'the generator'} is {identity['digest']}, "
                                           f"not the {planned} this run was planned on: its files changed since; "
                                           "expected the same files (launch the study again to run on them as "
                                           "they are now)")
    return identity, folder


@functools.lru_cache(maxsize=1)
def git_commit() -> str:
    """The commit of the code that ran, with '-dirty' when the working tree had changes."""
    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=here, capture_output=True,
                              text=True, timeout=10)
        commit = head.stdout.strip() if head.returncode == 0 else ""
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=here,
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (commit or "unknown") + ("-dirty" if dirty else "")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("launch.device is cuda but no CUDA device is visible")
    return torch.device(f"cuda:{local_rank}") if name == "cuda" else torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"cpu ({platform.processor() or platform.machine()}, {threads} thread{'' if threads == 1 else 's'})"


def run_one(config: dict, study: str, results_root: str, launch: dict, raise_on_failure: bool = True,
            catch_preemption: bool = False) -> dict:
    """Execute one run. Returns {'run_id', 'status': 'done'|'failed'|'running_elsewhere', ...}.

    The run's lease (bench.launch.lease) is taken first: if another live process holds it, the
    folder is not touched and the outcome is 'running_elsewhere' ('message': already running on
    HOST pid N) — not a failure. A run found done is not run again ('already_done': True) unless
    launch['force'] (which also drops its checkpoint; the launcher drops cached pre-trainings).
    A checkpoint left in the run folder (by a preempted or killed attempt of this same config)
    is resumed; a corrupt one is set aside and the run starts again. With
    `catch_preemption`, SIGUSR2 saves a checkpoint at the next training step and is then handed
    to submitit, which requeues the job. A failure leaves error.txt with the phase it happened
    in; one caused by a results folder that refuses writes (read-only, full) carries
    'cannot_write': [path, reason].
    """
    config = resolve(config)  # one pickled by an older launch gains keys added since (ADDED_LATER: same id)
    rid = config_run_id(config)
    folder = RunFolder(results_root, study, rid)
    if launch.get("threads"):
        torch.set_num_threads(launch["threads"])
    force = bool(launch.get("force"))
    checkpointer = Checkpointer(folder.checkpoint_path, launch.get("checkpoint_every", 0), warn=folder.warn)
    rank = distributed.current()
    cache_dir = cache.cache_root(results_root)
    encoder_path = cache.entry_path(cache_dir, "encoders", config_run_id(pretrain_config(config)))
    data_root = launch.get("data_root")

    # the main process takes the lease, decides, and readies the folder; workers follow its verdict
    lease, verdict, holder, saved, setup_error, data = None, "run", None, None, None, (None, None)
    if rank.is_main:
        lease = Lease(folder.path, kind=launch.get("executor") or "")
        try:
            holder = lease.acquire()
        except OSError as err:
            reason = write_failure(err)
            if reason is None or raise_on_failure:
                raise
            return {"run_id": rid, "status": "failed", "error": f"{type(err).__name__}: {err}", "phase": "lease",
                    "cannot_write": [str(folder.path), reason.strerror]}
        if holder is not None:
            verdict = "elsewhere"
        elif not force and folder.is_done():
            verdict = "done"
        else:
            try:
                saved = _prepare(folder, config, checkpointer, force)
                data = read_data_identity(config, data_root)  # before anything trains
            except Exception as err:  # reported below, once the workers know
                setup_error = err
    if rank.world > 1:  # one verdict for every rank: a worker never trains a run its main skips
        device = pick_device(launch.get("device", "auto"), rank.local_rank)
        stop, at_evals = distributed.from_main([verdict != "run" or setup_error is not None,
                                                saved is not None and saved["phase"] == "evals"], rank, device)
        if stop and not rank.is_main:
            return {"run_id": rid, "status": "skipped", "rank": rank.rank}
        if not rank.is_main:  # a DDP worker: the main's run, step for step; the main process writes
            return _follow(config, rid, launch, checkpointer, encoder_path, cache_dir, rank, device, bool(at_evals),
                           catch_preemption)

    if verdict == "elsewhere":
        return {"run_id": rid, "status": "running_elsewhere", "holder": holder,
                "message": f"already running on {describe(holder)}"}
    try:
        if verdict == "done":  # finished by another launch meanwhile; tidy what a kill after the result left
            checkpointer.remove()
            folder.clean_temp_files()
            return {"run_id": rid, "status": "done", "already_done": True, "result": read_result(folder.result_path)}
        return _execute(config, rid, study, folder, launch, lease, checkpointer, saved, setup_error, data,
                        encoder_path, cache_dir, rank, raise_on_failure, catch_preemption)
    finally:
        lease.release()


def _prepare(folder: RunFolder, config: dict, checkpointer: Checkpointer, force: bool) -> dict | None:
    """With the lease held: clear a killed writer's temporaries, start over or resume. Returns the
    checkpoint resumed from (None: from scratch)."""
    removed = folder.clean_temp_files()
    if removed:
        folder.warn(f"removed temporary files a killed attempt left: {', '.join(sorted(removed))}")
    if force:  # start over: no resuming from an earlier attempt's checkpoint (the launcher clears the cache)
        checkpointer.remove()
    saved = checkpointer.load()  # a corrupt checkpoint is set aside here (warnings.log)
    if saved is not None:
        try:
            folder.resume(config, pretrain_epochs_done=saved["epoch"])
        except ValueError as err:  # config.yaml unreadable or not this run's: its checkpoint is no use
            checkpointer.set_aside(str(err))
            saved = None
    if saved is None:
        folder.start(config, force=force)
    return saved


def _agree(ok: bool, rank, device, what: str) -> None:
    """Under DDP: raise on every rank as soon as `ok` is False on one, so that none waits for the others."""
    if rank.world > 1 and distributed.any_across(not ok, rank, device):
        raise RuntimeError(f"{what} on {'this' if not ok else 'another'} rank (rank {rank.rank} of {rank.world})")


def _follow(config, rid, launch, checkpointer, encoder_path, cache_dir, rank, device, at_evals,
            catch_preemption) -> dict:
    """A DDP worker's part of a run: what `_execute` does on the main process, collective for
    collective — pre-train its share of every batch (or take the encoder the main process takes:
    from the evals checkpoint, from the cache), then run the same evals, logging nothing."""
    data_root = launch.get("data_root")
    train_set = create_dataset(config["data"], "train", data_root)
    test_set = create_dataset(config["data"], "test", data_root)
    if catch_preemption:
        checkpointer.install()
    if config.get("baseline"):
        if distributed.from_main([False], rank, device)[0]:  # the main process found its evals cached
            return {"run_id": rid, "status": "done", "rank": rank.rank}
        encoder_state = ({} if config["baseline"] == "raw_pixels"
                         else random_init_encoder_state(config, train_set.channels))
    elif at_evals:  # the main process resumes the evals from the checkpoint's encoder: so does this rank
        saved = checkpointer.load()
        _agree(saved is not None and saved["phase"] == "evals", rank, device, "the evals checkpoint could not be read")
        encoder_state = saved["encoder"]
    elif distributed.from_main([False], rank, device)[0]:  # the main process found the encoder cached
        entry = cache.load(encoder_path)
        _agree(entry is not None, rank, device, f"the cached encoder {encoder_path} could not be read")
        encoder_state = entry["encoder"]
    else:
        model, _ = pretrain(config, train_set, device, checkpointer=checkpointer, cache_dir=cache_dir,
                            compile=launch.get("compile", False))
        encoder_state = create_method(config["method"]).encoder_state(model)  # every rank holds the same weights
    checkpointer.defer = False
    shared = {}  # features the probe and k-NN both read (bench.train.features.frozen_features), as on the main
    for name in list_evals():
        if config["evals"][name]["enabled"]:
            create_eval(name)(config, encoder_state, train_set, test_set, device, lambda row: None, shared=shared)
    return {"run_id": rid, "status": "done", "rank": rank.rank}


def _execute(config, rid, study, folder, launch, lease, checkpointer, saved, setup_error, data, encoder_path,
             cache_dir, rank, raise_on_failure, catch_preemption) -> dict:
    phase = ["setup"]

    def enter(name: str) -> None:
        phase[0] = name
        lease.set_phase(name)

    try:
        if setup_error is not None:
            raise setup_error
        if catch_preemption:
            checkpointer.install()
        keep_checkpoints = catch_preemption or checkpointer.every_epochs > 0
        device = pick_device(launch.get("device", "auto"), rank.local_rank)
        start = time.perf_counter()
        data_root = launch.get("data_root")
        identity, data_folder = data
        data_cfg = {**config["data"], "identity": identity["digest"]}  # the in-process copy: of the files read
        train_set = create_dataset(data_cfg, "train", data_root)
        test_set = create_dataset(data_cfg, "test", data_root)
        log = folder.log_metrics
        if config.get("baseline"):  # no pre-training: the random-init encoder, or the pixels themselves
            encoder_state = ({} if config["baseline"] == "raw_pixels"
                             else random_init_encoder_state(config, train_set.channels))
            stats = {"images_per_s": None, "wall_s": 0.0, "final_loss": None, "step_parts": None}
            n_params, pretrained_by = sum(v.numel() for v in encoder_state.values()), None
        elif saved is not None and saved["phase"] == "evals":  # pre-training had finished
            _agree(True, rank, device, "the evals checkpoint could not be read")  # the workers read it too
            encoder_state, stats, n_params = saved["encoder"], saved["stats"], saved["n_params"]
            pretrained_by = saved.get("pretrained_by", rid)
        else:
            enter("pretrain")
            built = []

            def pretrain_encoder() -> dict:
                rows = []
                model, stats = pretrain(config, train_set, device, lambda row: (rows.append(row), log(row)),
                                        checkpointer, cache_dir=cache_dir, compile=launch.get("compile", False))
                built.append(True)
                return {"encoder": create_method(config["method"]).encoder_state(model), "stats": stats,
                        "run_id": rid, "study": study,
                        "n_params": sum(p.numel() for p in model.parameters()), "metrics": rows}
            if rank.world > 1:  # every rank trains together; the cache cannot make some of them wait
                entry = cache.load(encoder_path)
                if distributed.from_main([entry is not None], rank, device)[0]:  # the workers load it too
                    _agree(True, rank, device, f"the cached encoder {encoder_path} could not be read")
                else:
                    entry = pretrain_encoder()
                    cache.save(encoder_path, entry)
            else:
                entry = cache.get_or_build(cache_dir, "encoders", encoder_path.stem, pretrain_encoder,
                                           warn=folder.warn)
            if not built:  # reused: the pre-training's own metrics, marked with the run that made them
                for row in entry.get("metrics", []):
                    log({**row, "from_run": entry["run_id"]})
            encoder_state, stats, n_params = entry["encoder"], entry["stats"], entry["n_params"]
            pretrained_by = entry["run_id"]
            if keep_checkpoints:
                checkpointer.save({"phase": "evals", "epoch": config["pretrain"]["epochs"],
                                   "encoder": encoder_state, "stats": stats, "n_params": n_params,
                                   "pretrained_by": pretrained_by})
        checkpointer.defer = False  # the evals restart from the encoder if interrupted
        n_params_encoder = sum(v.numel() for k, v in encoder_state.items() if k != "pos_embed")
        def run_evals() -> dict:
            evals, rows, shared = {}, [], {}  # shared: bench.train.features.frozen_features
            for name in list_evals():
                if config["evals"][name]["enabled"]:
                    enter(name)
                    evals[name] = create_eval(name)(config, encoder_state, train_set, test_set, device,
                                                    lambda row: (rows.append(row), log(row)), shared=shared)
            return {"evals": evals, "metrics": rows, "run_id": rid, "study": study}
        if config.get("baseline"):  # a baseline is the same computation in every study: run once, shared
            computed = []
            if rank.world > 1:  # the main process's look in the cache decides for every rank
                baseline_path = cache.entry_path(cache_dir, "baselines", rid)
                entry = cache.load(baseline_path)
                if not distributed.from_main([entry is not None], rank, device)[0]:
                    entry = computed.append(1) or run_evals()
                    cache.save(baseline_path, entry)
            else:
                entry = cache.get_or_build(cache_dir, "baselines", rid, lambda: computed.append(1) or run_evals(),
                                           warn=folder.warn)
            if not computed:
                for row in entry["metrics"]:
                    log({**row, "from_run": f"{entry['study']}/{entry['run_id']}"})
            evals = entry["evals"]
        else:
            evals = run_evals()["evals"]
        enter("result")
        result = {
            "run_id": rid,
            "study": study,
            "finetune_top1": evals.get("finetune", {}).get("top1"),
            "linear_probe_top1": evals.get("linear_probe", {}).get("top1"),
            "knn_top1": evals.get("knn", {}).get("top1"),
            "linear_probe_feature": config["evals"]["linear_probe"]["feature"],
            "finetune_feature": config["evals"]["finetune"]["feature"],
            "evals": evals,
            "pretrain_images_per_s": stats["images_per_s"],
            "pretrain_wall_s": stats["wall_s"],
            "pretrain_final_loss": stats["final_loss"],
            "pretrained_by": pretrained_by,  # this run's id, or the run whose identical pre-training it reused
            "pretrain_gflops_per_image": stats.get("gflops_per_image"),
            "pretrain_step_parts": stats.get("step_parts", 1),  # sub-batches per step (one per CPU thread)
            "total_wall_s": time.perf_counter() - start,
            "n_params": n_params,
            "n_params_encoder": n_params_encoder,
            "torch_version": torch.__version__,
            "timm_version": timm.__version__,
            "mimbench_version": __version__,
            "git_commit": git_commit(),
            "device": device_name(device),
            "host": platform.node(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "data_identity": identity,  # bench.data.identify of the files read (its digest: data.identity)
            "data_root": data_folder,  # the folder they were read from (null: generated)
            "config": config,  # the resolved config again, so result.json alone says what was run
        }
        folder.write_result(result)
        checkpointer.remove()
        return {"run_id": rid, "status": "done", "result": result}
    except Preempted:
        raise
    except Exception as err:
        refused = write_failure(err)
        try:
            folder.write_error(traceback.format_exc(), phase=phase[0])
        except OSError:
            pass  # a full or read-only folder: the launcher says so in one line
        if raise_on_failure:
            raise
        outcome = {"run_id": rid, "status": "failed", "error": f"{type(err).__name__}: {err}", "phase": phase[0]}
        if refused is not None:
            outcome["cannot_write"] = [str(folder.path), refused.strerror]
        return outcome
