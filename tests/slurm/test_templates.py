"""The sbatch templates: rendered with realistic values, checked by bash and shellcheck, and run.

The job scripts run here with plain `bash` (no sbatch): SLURM_JOB_ID comes from the test, and
for the multi-node script `srun` / `scontrol` are small stand-ins on PATH. That proves the
scripts' own logic (key file, port, readiness, ready file, drain, requeue); running them under
a real Slurm is the e2e suite's job.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from endpoints.engines.apptainer import apptainer_wrap
from endpoints.engines.base import WORKER_KEY_ENV, WORKER_PORT_ENV, Command, EngineLaunch, EnvRef
from endpoints.engines.llamacpp import llamacpp_launch
from endpoints.engines.simulated import sim_launch
from endpoints.engines.vllm import RAY_PORT_ENV, ray_head_command, ray_worker_command, vllm_launch
from endpoints.templates import TemplateRenderError, render, template_dirs

REPO = Path(__file__).resolve().parents[2]
SECRET = "hk-worker-5ecret-0123456789abcdef"
PORT = EnvRef(WORKER_PORT_ENV)
VLLM_IMAGE = "/sw/hearth/images/vllm-v0.12.0.sif"
LLAMACPP_IMAGE = "/sw/hearth/images/llamacpp-0.3.36.sif"
BINDS = ["/scratch/hearth/models:/models:ro"]

WORKER_REQUIRED: dict[str, Any] = {
    "cluster": "delta",
    "model": "meta-llama/Llama-3.1-8B-Instruct",
    "worker_id": "w-3f9a",
    "key_file": "/u/hearth/.hearth/keys/w-3f9a.key",
    "ready_dir": "/scratch/hearth/run/ready",
    "log_dir": "/scratch/hearth/logs",
    "walltime": "08:00:00",
    "engine_command": "vllm serve m",
    "health_path": "/health",
}
MULTINODE_REQUIRED: dict[str, Any] = {
    **WORKER_REQUIRED,
    "model": "meta-llama/Llama-3.1-405B-Instruct",
    "nodes": 2,
    "gpus_per_node": 4,
    "ray_head_command": "ray start --head",
    "ray_worker_command": "ray start",
}
BATCH_REQUIRED: dict[str, Any] = {
    "cluster": "delta",
    "batch_id": "batch_6f1c",
    "command": "vllm run-batch",
    "input_path": "/scratch/hearth/batches/batch_6f1c/input.jsonl",
    "output_path": "/scratch/hearth/batches/batch_6f1c/output.jsonl",
    "checkpoint_dir": "/scratch/hearth/batches/batch_6f1c/checkpoint",
    "log_dir": "/scratch/hearth/logs",
    "walltime": "12:00:00",
}
REQUIRED: dict[str, dict[str, Any]] = {
    "worker": WORKER_REQUIRED,
    "worker-multinode": MULTINODE_REQUIRED,
    "batch": BATCH_REQUIRED,
}
SITE: dict[str, Any] = {
    "partition": "gpuA100x4",
    "account": "bbka-delta-gpu",
    "mem": "200G",
    "setup": ["module load cuda/12.4"],
}


# ---------------------------------------------------------------- realistic renderings


def engine(name: str, containers: bool, gpus: int) -> EngineLaunch:
    if name == "vllm":
        launch = vllm_launch(
            "/models/Llama-3.1-8B-Instruct", "llama-8b", "0.0.0.0", PORT, WORKER_KEY_ENV, tensor_parallel=gpus
        )
        return apptainer_wrap(launch, VLLM_IMAGE, gpus=True, binds=BINDS) if containers else launch
    if name == "llamacpp":
        launch = llamacpp_launch("/models/tiny.gguf", "tiny", "0.0.0.0", PORT, WORKER_KEY_ENV, n_threads=8)
        return apptainer_wrap(launch, LLAMACPP_IMAGE, gpus=False, binds=BINDS) if containers else launch
    return sim_launch("sim-model", "0.0.0.0", PORT, WORKER_KEY_ENV, python="/opt/hearth/venv/bin/python")


def worker_case(name: str, containers: bool, gpus: int) -> dict[str, Any]:
    return {
        **WORKER_REQUIRED,
        **SITE,
        "gpus": gpus,
        "cpus": 16,
        **engine(name, containers, gpus).template_context(),
    }


def multinode_case(containers: bool) -> dict[str, Any]:
    launch = vllm_launch(
        "/models/Llama-3.1-405B-Instruct",
        "llama-405b",
        "0.0.0.0",
        PORT,
        WORKER_KEY_ENV,
        tensor_parallel=4,
        pipeline_parallel=2,
        distributed=True,
    )
    head, worker = ray_head_command(num_gpus=4), ray_worker_command(num_gpus=4)
    if containers:
        launch = apptainer_wrap(launch, VLLM_IMAGE, gpus=True, binds=BINDS)
        head = apptainer_wrap(head, VLLM_IMAGE, gpus=True, binds=BINDS)
        worker = apptainer_wrap(worker, VLLM_IMAGE, gpus=True, binds=BINDS)
    return {
        **MULTINODE_REQUIRED,
        **SITE,
        "cpus_per_node": 64,
        "ray_head_command": head.shell(),
        "ray_worker_command": worker.shell(),
        **launch.template_context(),
    }


def batch_case(containers: bool, gpus: int) -> dict[str, Any]:
    command = Command(
        (
            "vllm",
            "run-batch",
            "-i",
            EnvRef("HEARTH_BATCH_INPUT"),
            "-o",
            EnvRef("HEARTH_BATCH_OUTPUT"),
            "--model",
            "/models/Llama-3.1-8B-Instruct",
        )
    )
    if containers:
        command = apptainer_wrap(
            command, VLLM_IMAGE, gpus=gpus > 0, binds=[*BINDS, "/scratch/hearth/batches"]
        )
    return {**BATCH_REQUIRED, **SITE, "gpus": gpus, "command": command.shell()}


@dataclass(frozen=True)
class Case:
    template: str
    context: dict[str, Any]
    containers: bool
    gpus: int


CASES = {
    "worker-vllm-apptainer-4gpu": Case("worker", worker_case("vllm", True, 4), True, 4),
    "worker-vllm-native-4gpu": Case("worker", worker_case("vllm", False, 4), False, 4),
    "worker-llamacpp-apptainer-cpu": Case("worker", worker_case("llamacpp", True, 0), True, 0),
    "worker-sim-native-cpu": Case("worker", worker_case("sim", False, 0), False, 0),
    "multinode-apptainer-2x4": Case("worker-multinode", multinode_case(True), True, 4),
    "multinode-native-2x4": Case("worker-multinode", multinode_case(False), False, 4),
    "batch-apptainer-1gpu": Case("batch", batch_case(True, 1), True, 1),
    "batch-native-cpu": Case("batch", batch_case(False, 0), False, 0),
}


@pytest.fixture(params=sorted(CASES), scope="module")
def rendered(request: pytest.FixtureRequest) -> tuple[Case, str]:
    case = CASES[request.param]
    return case, render(case.template, **case.context)


def sbatch_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line.startswith("#SBATCH ")]


def test_rendered_scripts_pass_bash_n(rendered: tuple[Case, str]) -> None:
    _, script = rendered
    proc = subprocess.run(["bash", "-n"], input=script, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_rendered_scripts_pass_shellcheck(rendered: tuple[Case, str]) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is not installed (apt-get install shellcheck); CI must have it"
    proc = subprocess.run([shellcheck, "-s", "bash", "-"], input=rendered[1], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rendered_scripts_directives_and_protocol(rendered: tuple[Case, str]) -> None:
    case, script = rendered
    assert script.startswith("#!/bin/bash\n#SBATCH ")
    directives = sbatch_lines(script)
    # sbatch reads directives only up to the first command: they all come first.
    first_command = next(i for i, line in enumerate(script.splitlines()) if line.startswith("set -euo"))
    assert all(script.splitlines().index(d) < first_command for d in directives)
    assert "#SBATCH --partition=gpuA100x4" in directives
    assert "#SBATCH --account=bbka-delta-gpu" in directives
    assert "#SBATCH --mem=200G" in directives
    assert not any("--qos" in d for d in directives)
    assert "\nmodule load cuda/12.4\n" in script
    assert "set -euo pipefail\n" in script
    assert SECRET not in script
    gres = [d for d in directives if d.startswith("#SBATCH --gres=")]
    assert gres == ([f"#SBATCH --gres=gpu:{case.gpus}"] if case.gpus else [])
    assert ("apptainer exec --cleanenv" in script) == case.containers
    assert (" --nv " in script) == (case.containers and case.gpus > 0)
    if case.template == "batch":
        assert "#SBATCH --job-name=hearth-batch-delta-batch_6f1c" in directives
        assert "#SBATCH --requeue" in directives
        assert "#SBATCH --open-mode=append" in directives
        assert "#SBATCH --signal=B:USR1@150" in directives
        assert "trap 'checkpoint USR1' USR1" in script
        assert "trap 'checkpoint TERM' TERM" in script
        assert 'scontrol requeue "$job_id"' in script
        return
    assert "#SBATCH --signal=B:USR1@90" in directives
    assert "trap 'drain USR1' USR1" in script
    assert "trap 'drain TERM' TERM" in script
    assert 'HEARTH_WORKER_KEY="$(<"$key_file")"' in script
    assert "key_file=/u/hearth/.hearth/keys/w-3f9a.key" in script
    assert 'write_json "$ready_file"' in script
    assert 'mv -f "$tmp" "$1"' in script  # ready and draining files appear whole
    assert case.context["engine_command"] + " &\n" in script
    if case.template == "worker":
        assert "#SBATCH --job-name=hearth-delta-meta-llama-Llama-3.1-8B-Instruct-w-3f9a" in directives
        assert "#SBATCH --nodes=1" in directives
        assert "#SBATCH --cpus-per-task=16" in directives
    else:
        assert "#SBATCH --nodes=2" in directives
        assert "#SBATCH --ntasks-per-node=1" in directives
        assert "#SBATCH --cpus-per-task=64" in directives
        assert '--nodelist="$head_node" bash -euc "$ray_head_command" &' in script
        assert '--nodelist="$worker_list" bash -euc "$ray_worker_command" &' in script
        assert "--distributed-executor-backend=ray" in script
        assert "--tensor-parallel-size=4 --pipeline-parallel-size=2" in script


# ---------------------------------------------------------------- strictness


@pytest.mark.parametrize(
    ("template", "variable"),
    [(template, variable) for template, required in REQUIRED.items() for variable in required],
)
def test_a_missing_variable_is_an_error_naming_it(template: str, variable: str) -> None:
    context = dict(REQUIRED[template])
    render(template, **context)  # everything else is optional
    del context[variable]
    with pytest.raises(TemplateRenderError, match=rf"\b{variable}\b"):
        render(template, **context)


@pytest.mark.parametrize(
    ("template", "overrides", "message"),
    [
        ("worker", {"partition": "gpu\nrm -rf ~"}, "newline"),
        ("worker", {"walltime": "1:00:00 \\"}, "backslash"),
        ("worker", {"gpus": "4; rm -rf ~"}, "integer"),
        ("worker", {"drain_seconds": 1.5}, "integer"),
        ("worker-multinode", {"nodes": 1}, "at least 2"),
        ("batch", {"checkpoint_signal": "KILL"}, "checkpoint_signal"),
    ],
)
def test_unsafe_values_are_refused(template: str, overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(TemplateRenderError, match=message):
        render(template, **{**REQUIRED[template], **overrides})


def test_odd_values_stay_inert() -> None:
    odd = 'it\'s "odd" $(touch /tmp/hearth-pwned) `id`'
    script = render(
        "worker",
        **{
            **WORKER_REQUIRED,
            "model": odd,
            "worker_id": odd,
            "key_file": odd,
            "ready_dir": odd,
            "qos": "a b",
        },
    )
    name = "hearth-delta-it-s-odd-touch-tmp-hearth-pwned-id-it-s-odd-touch-tmp-hearth-pwned-id"
    assert f"#SBATCH --job-name={name}\n" in script
    assert "#SBATCH --qos='a b'" in script
    assert "key_file='it'\"'\"'s \"odd\" $(touch /tmp/hearth-pwned) `id`'" in script
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0


def test_admin_search_path_comes_first(tmp_path: Path) -> None:
    (tmp_path / "worker.sbatch.j2").write_text("#!/bin/bash\n# site copy for {{ cluster }}\n")
    assert render("worker", search_path=[tmp_path], cluster="delta") == "#!/bin/bash\n# site copy for delta\n"
    assert template_dirs([tmp_path])[:2] == [tmp_path, REPO / "slurm"]


def test_without_a_checkout_the_installed_copy_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed Hearth has the templates in <prefix>/share/hearth/slurm (pyproject data-files)."""
    import sysconfig

    import endpoints.templates

    installed = tmp_path / "prefix" / "share" / "hearth" / "slurm"
    installed.mkdir(parents=True)
    shutil.copy(REPO / "slurm" / "worker.sbatch.j2", installed)
    monkeypatch.setattr(endpoints.templates, "_REPO_TEMPLATES", tmp_path / "no-checkout")
    monkeypatch.setattr(sysconfig, "get_path", lambda name, scheme=None: str(tmp_path / "prefix"))
    assert template_dirs() == [installed]
    assert render("worker", **WORKER_REQUIRED).startswith("#!/bin/bash\n#SBATCH --job-name=hearth-delta-")


def test_an_unknown_template_says_where_it_looked() -> None:
    with pytest.raises(TemplateRenderError, match=r"not found.*slurm"):
        render("no-such-template")


# ---------------------------------------------------------------- running the scripts


@dataclass
class Job:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, what: str, check: Callable[[], bool], timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            if self.proc.poll() is not None:
                pytest.fail(f"the job exited ({self.proc.returncode}) before {what}:\n{self.output()}")
            if time.monotonic() > deadline:
                pytest.fail(f"no {what} within {timeout:.0f} s:\n{self.output()}")
            time.sleep(0.05)

    def exit_status(self, timeout: float = 30.0) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the job did not exit within {timeout:.0f} s:\n{self.output()}")


@contextlib.contextmanager
def run_job(script: str, tmp_path: Path, **env: str) -> Iterator[Job]:
    """Run `script` with bash in its own session; whatever is left is killed at the end."""
    path = tmp_path / "job.sh"
    path.write_text(script)
    log = tmp_path / "job.log"
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("HEARTH_", "SLURM"))}
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", str(path)],
            env={**environ, **env},
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield Job(proc, log)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def key_file(tmp_path: Path, mode: int = 0o600) -> Path:
    path = tmp_path / "worker.key"
    path.write_text(SECRET + "\n")
    path.chmod(mode)
    return path


def sim_worker(tmp_path: Path, **overrides: Any) -> dict[str, Any]:
    launch = sim_launch(
        "sim-model", "127.0.0.1", PORT, WORKER_KEY_ENV, ttft_ms=1, itl_ms=1, python=sys.executable
    )
    return {
        **WORKER_REQUIRED,
        "key_file": str(key_file(tmp_path)),
        "ready_dir": str(tmp_path / "ready"),
        "log_dir": str(tmp_path),
        "python": sys.executable,
        "drain_seconds": 20,
        "stop_timeout": 10,
        "start_timeout": 60,
        **launch.template_context(),
        **overrides,
    }


def secret_in_any_command_line() -> list[int]:
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            if SECRET.encode() in cmdline.read_bytes():
                found.append(int(cmdline.parent.name))
    return found


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["TERM", "USR1"])
def test_worker_script_serves_the_sim_engine_and_drains(tmp_path: Path, sig: signal.Signals) -> None:
    ready_file = tmp_path / "ready" / "4242.ready.json"
    draining_file = tmp_path / "ready" / "4242.draining.json"
    with run_job(render("worker", **sim_worker(tmp_path)), tmp_path, SLURM_JOB_ID="4242") as job:
        job.wait_for("the ready file", ready_file.exists)
        ready = json.loads(ready_file.read_text())
        assert set(ready) == {"host", "port", "job_id", "pid", "started_at"}
        assert ready["job_id"] == "4242"
        assert ready["host"] == socket.gethostname()
        assert isinstance(ready["port"], int)
        assert isinstance(ready["pid"], int)
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", ready["started_at"])
        assert ready_file.stat().st_mode & 0o077 == 0
        assert list(ready_file.parent.iterdir()) == [ready_file]  # no temporary file left behind

        url = f"http://127.0.0.1:{ready['port']}/v1/models"
        key = (tmp_path / "worker.key").read_text().strip()
        answer = httpx.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=5)
        assert answer.status_code == 200
        assert answer.json()["data"][0]["id"] == "sim-model"
        assert httpx.get(url, timeout=5).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}, timeout=5).status_code == 401
        assert secret_in_any_command_line() == []

        job.proc.send_signal(sig)
        job.wait_for("the draining marker", draining_file.exists, timeout=10)
        draining = json.loads(draining_file.read_text())
        assert draining["job_id"] == "4242"
        assert draining["signal"] == sig.name.removeprefix("SIG")
        assert job.exit_status() == 0, job.output()
        assert not ready_file.exists()
        assert not Path(f"/proc/{ready['pid']}").exists()
        assert "draining" in job.output()


def test_worker_drain_waits_for_requests_in_flight(tmp_path: Path) -> None:
    launch = sim_launch(
        "sim-model", "127.0.0.1", PORT, WORKER_KEY_ENV, ttft_ms=1, itl_ms=25, python=sys.executable
    )
    context = sim_worker(tmp_path, **launch.template_context())
    ready_file = tmp_path / "ready" / "77.ready.json"
    with run_job(render("worker", **context), tmp_path, SLURM_JOB_ID="77") as job:
        job.wait_for("the ready file", ready_file.exists)
        port = json.loads(ready_file.read_text())["port"]
        result: dict[str, Any] = {}

        def long_request() -> None:
            response = httpx.post(
                f"http://127.0.0.1:{port}/v1/completions",
                json={"model": "sim-model", "prompt": "hi", "max_tokens": 80},
                headers={"Authorization": f"Bearer {SECRET}"},
                timeout=30,
            )
            result["status"] = response.status_code
            result["tokens"] = response.json()["usage"]["completion_tokens"]
            result["finished_while_running"] = job.proc.poll() is None

        client = threading.Thread(target=long_request)
        client.start()
        time.sleep(0.5)  # the request is running (80 tokens x 25 ms = 2 s)
        job.proc.send_signal(signal.SIGTERM)
        client.join(30)
        assert job.exit_status() == 0, job.output()
    assert result == {"status": 200, "tokens": 80, "finished_while_running": True}


def test_worker_refuses_a_key_file_other_users_can_read(tmp_path: Path) -> None:
    context = sim_worker(tmp_path)
    key_file(tmp_path, mode=0o644)
    with run_job(render("worker", **context), tmp_path, SLURM_JOB_ID="5") as job:
        assert job.exit_status() == 1
        assert "open to other users (mode 644)" in job.output()
        assert not (tmp_path / "ready").exists()


def test_worker_reports_an_engine_that_dies_while_starting(tmp_path: Path) -> None:
    dying = Command((sys.executable, "-c", "import sys; sys.exit(3)"))
    context = sim_worker(tmp_path, engine_command=dying.shell())
    with run_job(render("worker", **context), tmp_path, SLURM_JOB_ID="6") as job:
        assert job.exit_status() == 1
        assert "the engine exited (status 3) before" in job.output()


def test_worker_needs_a_job_id(tmp_path: Path) -> None:
    with run_job(render("worker", **sim_worker(tmp_path)), tmp_path) as job:
        assert job.exit_status() != 0
        assert "not running under Slurm" in job.output()


SRUN = """#!/bin/bash
# Stand-in for srun: note the call, then run the command on this machine (as its own pid).
printf '%s\\n' "$*" >>"$SHIM_LOG"
echo "$$" >>"$SHIM_PIDS"
while [[ $# -gt 0 && "$1" == -* ]]; do shift; done
exec "$@"
"""
SCONTROL = """#!/bin/bash
# Stand-in for scontrol: two nodes for `show hostnames`; anything else is noted.
if [[ "$1" == show && "$2" == hostnames ]]; then printf 'node1\\nnode2\\n'; exit 0; fi
printf 'scontrol %s\\n' "$*" >>"$SHIM_LOG"
"""


def shims(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "SHIM_LOG": str(tmp_path / "shim.log"),
        "SHIM_PIDS": str(tmp_path / "shim.pids"),
    }


def test_multinode_script_starts_ray_then_the_engine_and_stops_both(tmp_path: Path) -> None:
    # Ray stands in as a plain TCP listener (head) and a sleeper (worker); the engine is the sim.
    head = Command(
        (
            sys.executable,
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "-d",
            str(tmp_path),
            EnvRef(RAY_PORT_ENV),
        )
    )
    worker = Command(("sleep", "300"))
    context = {
        **sim_worker(tmp_path),
        "nodes": 2,
        "gpus_per_node": 4,
        "cpus_per_node": 8,
        "ray_head_command": head.shell(),
        "ray_worker_command": worker.shell(),
        "ray_head_ip_command": "echo 127.0.0.1",
    }
    ready_file = tmp_path / "ready" / "900.ready.json"
    env = {
        **shims(tmp_path),
        "SLURM_JOB_ID": "900",
        "SLURMD_NODENAME": "node1",
        "SLURM_JOB_NODELIST": "node[1-2]",
    }
    with run_job(render("worker-multinode", **context), tmp_path, **env) as job:
        job.wait_for("the ready file", ready_file.exists)
        calls = (tmp_path / "shim.log").read_text().splitlines()
        assert len(calls) == 2
        step = "--cpus-per-task=8 --mem=0 --gres=gpu:4 --nodelist"
        assert calls[0].startswith(f"--nodes=1 --ntasks=1 {step}=node1 bash -euc")
        assert calls[1].startswith(f"--nodes=1 --ntasks=1 --ntasks-per-node=1 {step}=node2 bash -euc")
        ray_pids = [int(p) for p in (tmp_path / "shim.pids").read_text().split()]
        assert all(Path(f"/proc/{pid}").exists() for pid in ray_pids)
        port = json.loads(ready_file.read_text())["port"]
        answer = httpx.get(
            f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": f"Bearer {SECRET}"}, timeout=5
        )
        assert answer.status_code == 200

        job.proc.send_signal(signal.SIGUSR1)
        assert job.exit_status() == 0, job.output()
        assert (tmp_path / "ready" / "900.draining.json").exists()
        assert not ready_file.exists()
        assert not any(Path(f"/proc/{pid}").exists() for pid in ray_pids)


BATCH_COMMAND = """
import os, signal, sys, time
source, target, checkpoint = sys.argv[1:4]

def stop(signum, frame):
    with open(os.path.join(checkpoint, "progress"), "w") as f:
        f.write("line 1")
    sys.exit(3)

signal.signal(signal.SIGTERM, stop)
open(os.path.join(checkpoint, "started"), "w").close()
time.sleep(float(os.environ.get("BATCH_DELAY", "0")))
with open(source) as f, open(target, "w") as g:
    g.write(f.read().upper())
"""


def batch_job(tmp_path: Path) -> dict[str, Any]:
    (tmp_path / "input.jsonl").write_text('{"custom_id": "r1"}\n')
    command = Command(
        (
            sys.executable,
            "-c",
            BATCH_COMMAND,
            EnvRef("HEARTH_BATCH_INPUT"),
            EnvRef("HEARTH_BATCH_OUTPUT"),
            EnvRef("HEARTH_CHECKPOINT_DIR"),
        )
    )
    return {
        **BATCH_REQUIRED,
        "command": command.shell(),
        "input_path": str(tmp_path / "input.jsonl"),
        "output_path": str(tmp_path / "out" / "output.jsonl"),
        "checkpoint_dir": str(tmp_path / "ckpt"),
        "log_dir": str(tmp_path),
        "drain_seconds": 10,
    }


def test_batch_script_runs_its_command_to_the_end(tmp_path: Path) -> None:
    with run_job(render("batch", **batch_job(tmp_path)), tmp_path, SLURM_JOB_ID="31") as job:
        assert job.exit_status() == 0, job.output()
    assert (tmp_path / "out" / "output.jsonl").read_text() == '{"CUSTOM_ID": "R1"}\n'
    status = json.loads((tmp_path / "ckpt" / "status.json").read_text())
    assert status | {"at": None} == {
        "job_id": "31",
        "state": "finished",
        "restarts": 0,
        "exit_status": 0,
        "at": None,
    }


@pytest.mark.parametrize(
    ("sig", "state", "requeued"),
    [(signal.SIGUSR1, "requeued", True), (signal.SIGTERM, "stopped", False)],
    ids=["USR1-time-limit", "TERM-preempted"],
)
def test_batch_script_checkpoints_on_a_signal(
    tmp_path: Path, sig: signal.Signals, state: str, requeued: bool
) -> None:
    env = {**shims(tmp_path), "SLURM_JOB_ID": "32", "SLURM_RESTART_COUNT": "1", "BATCH_DELAY": "60"}
    with run_job(render("batch", **batch_job(tmp_path)), tmp_path, **env) as job:
        job.wait_for("the command", (tmp_path / "ckpt" / "started").exists)
        job.proc.send_signal(sig)
        assert job.exit_status() == 3, job.output()
    assert (tmp_path / "ckpt" / "progress").read_text() == "line 1"
    assert not (tmp_path / "out" / "output.jsonl").exists()
    status = json.loads((tmp_path / "ckpt" / "status.json").read_text())
    assert (status["state"], status["restarts"], status["exit_status"]) == (state, 1, 3)
    shim_log = tmp_path / "shim.log"
    assert (shim_log.exists() and "scontrol requeue 32" in shim_log.read_text()) == requeued
