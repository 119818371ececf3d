"""The local executor on a machine with GPUs: one run per GPU, as many at once as there are GPUs,
each run's process seeing only its own GPU (CUDA_VISIBLE_DEVICES through submitit's visible_gpus)."""
import submitit
import yaml

from bench.cli import main
from bench.launch import launcher


def test_the_gpus_local_runs_share_out(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert launcher.local_gpus({"device": "auto"}) == [2, 3]
    assert launcher.local_gpus({"device": "cpu"}) == []  # a CPU launch hands out no GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launcher.local_gpus({"device": "auto"}) == []
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-5f3c,GPU-77aa")  # UUIDs: left as the launcher sees them
    assert launcher.local_gpus({"device": "auto"}) == []


def test_each_local_run_gets_a_gpu_of_its_own(tmp_path, tiny_base, monkeypatch):
    seen = []  # (the GPUs a submitted run may see, how many of the launch's jobs were alive then)
    jobs = []

    class Spy(submitit.LocalExecutor):
        def _submit_command(self, command):
            alive = sum(not j.done() for j in jobs)
            seen.append((tuple(self.parameters.get("visible_gpus", ())), self.parameters.get("gpus_per_node"), alive))
            job = super()._submit_command(command)
            jobs.append(job)
            return job

    monkeypatch.setattr(launcher.submitit, "LocalExecutor", Spy)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")  # two GPUs (none is there: each run falls back to the CPU)
    tiny_base["pretrain"]["epochs"] = 1
    spec = tmp_path / "gpus.yaml"
    spec.write_text(yaml.safe_dump({"name": "gpus", "base": tiny_base, "seeds": 3,
                                    "launch": {"executor": "local", "parallel": 3, "threads": 1}}))
    assert main(["run", str(spec), "--results", str(tmp_path / "results"), "--no-report"]) == 0
    assert len(seen) == 3 and all(n == 1 for _, n, _ in seen)
    assert [gpus for gpus, _, _ in seen[:2]] == [(0,), (1,)]  # one GPU each
    assert seen[2][0] in ((0,), (1,)) and seen[2][2] <= 1  # the third waits for a GPU to be free
    assert len(list((tmp_path / "results" / "gpus").glob("*/result.json"))) == 3
