"""endpoints/slurm.py without a cluster: parsers on canned output, errors through the Runner seam."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path

import pytest

from endpoints.slurm import (
    SACCT_FORMAT,
    SINFO_FORMAT,
    SQUEUE_FORMAT,
    CommandResult,
    JobInfo,
    JobState,
    Slurm,
    SlurmError,
    job_state,
    parse_duration,
    parse_sacct,
    parse_sbatch,
    parse_scontrol_job,
    parse_sinfo,
    parse_squeue,
    run_command,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "slurm"


def canned(name: str) -> str:
    return (FIXTURES / name).read_text()


def by_id(jobs: Sequence[JobInfo]) -> dict[str, JobInfo]:
    return {j.job_id: j for j in jobs}


# -- time strings -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0:00", 0),
        ("0:05", 5),  # squeue %M: M:SS
        ("59:59", 3599),
        ("1:02:03", 3723),
        ("02:03:04", 7384),
        ("1-02:03:04", 93784),
        ("2-00:00:00", 172800),
        ("1-02", 93600),  # sbatch's D-H
        ("1-02:03", 93780),  # D-H:M
        ("30", 1800),  # a bare number is minutes
        ("00:00:01.234", 1),  # sacct may print fractions
        ("  10:00 ", 600),
    ],
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text", ["UNLIMITED", "INVALID", "NOT_SET", "N/A", "Partition_Limit", "", "  ", "infinite"]
)
def test_parse_duration_without_a_value(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize("text", ["garbage", "1:2:3:4", "x-01:00:00", "-", "1:-5"])
def test_parse_duration_rejects_junk_with_a_warning(text: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="endpoints.slurm"):
        assert parse_duration(text) is None
    assert "unparseable Slurm duration" in caplog.text


# -- states -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "state"),
    [
        ("PENDING", JobState.PENDING),
        ("PD", JobState.PENDING),
        ("CONFIGURING", JobState.PENDING),
        ("SUSPENDED", JobState.PENDING),
        ("RUNNING", JobState.RUNNING),
        ("R", JobState.RUNNING),
        ("COMPLETING", JobState.COMPLETING),
        ("CG", JobState.COMPLETING),
        ("COMPLETED", JobState.COMPLETED),
        ("COMPLETED+", JobState.COMPLETED),  # sacct truncates with "+"
        ("FAILED", JobState.FAILED),
        ("BOOT_FAIL", JobState.FAILED),
        ("CANCELLED", JobState.CANCELLED),
        ("CANCELLED by 0", JobState.CANCELLED),  # sacct names who cancelled
        ("TIMEOUT", JobState.TIMEOUT),
        ("DEADLINE", JobState.TIMEOUT),
        ("PREEMPTED", JobState.PREEMPTED),
        ("NODE_FAIL", JobState.NODE_FAIL),
        ("OUT_OF_MEMORY", JobState.OUT_OF_MEMORY),
        ("OOM", JobState.OUT_OF_MEMORY),
        ("running", JobState.RUNNING),
    ],
)
def test_job_state_lookup(code: str, state: JobState) -> None:
    assert job_state(code) is state


@pytest.mark.parametrize("code", ["REBOOTING_SOMEHOW", "", "   "])
def test_unknown_state_is_unknown_with_a_warning(code: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="endpoints.slurm"):
        assert job_state(code) is JobState.UNKNOWN
    assert "unknown Slurm job state" in caplog.text


def test_finished_states() -> None:
    assert {s for s in JobState if s.finished} == {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMEOUT,
        JobState.PREEMPTED,
        JobState.NODE_FAIL,
        JobState.OUT_OF_MEMORY,
    }


# -- squeue -----------------------------------------------------------------------------------


def test_squeue_format_puts_the_job_name_last() -> None:
    assert SQUEUE_FORMAT.endswith("|%j")
    assert SINFO_FORMAT.count("|") == 5
    assert SACCT_FORMAT.endswith(",JobName")


def test_parse_squeue_captured() -> None:
    jobs = by_id(parse_squeue(canned("squeue.txt")))
    assert sorted(jobs, key=int) == ["1", "2", "3", "4", "5", "6", "7"]

    done = jobs["1"]
    assert done.name == "hearth-w|odd name=x y"  # the delimiter inside a name survives
    assert done.state is JobState.COMPLETED
    assert (done.reason, done.node, done.partition) == (None, "vm", "debug")
    assert (done.time_used_s, done.time_limit_s, done.exit_code) == (0, None, None)
    assert done.start_time == datetime(2026, 11, 23, 12, 27, 3).astimezone()
    assert done.start_time is not None
    assert done.start_time.tzinfo is not None

    sleeper = jobs["3"]
    assert (sleeper.state, sleeper.time_used_s, sleeper.time_limit_s) == (JobState.CANCELLED, 7, 86400)
    assert jobs["2"].state is JobState.FAILED
    assert jobs["2"].reason == "NonZeroExitCode"
    assert jobs["2"].time_limit_s == 300

    cancelled_while_pending = jobs["4"]
    assert cancelled_while_pending.node is None
    assert cancelled_while_pending.reason == "Priority"
    assert jobs["6"].state is JobState.FAILED
    assert jobs["7"].reason == "JobHeldUser"


def test_parse_squeue_odd_lines(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="endpoints.slurm"):
        jobs = by_id(parse_squeue(canned("squeue_odd.txt")))
    assert sorted(jobs, key=int) == [str(i) for i in range(101, 111)]
    assert "skipping unparseable squeue line 'this line is not squeue output'" in caplog.text

    big = jobs["101"]
    assert (big.state, big.node, big.partition) == (JobState.COMPLETING, "gpu[001-002]", "gpu")
    assert (big.time_used_s, big.time_limit_s) == (93784, 172800)
    assert jobs["102"].state is JobState.RUNNING
    assert (jobs["102"].time_used_s, jobs["102"].time_limit_s) == (3599, 3600)

    pending = jobs["103"]
    assert pending.state is JobState.PENDING
    assert pending.reason == "ReqNodeNotAvail, UnavailableNodes:cn[01-02]"
    assert (pending.node, pending.time_limit_s, pending.start_time) == (None, None, None)
    assert pending.name == "spaces in | and pipes|"

    assert jobs["104"].state is JobState.TIMEOUT
    assert jobs["105"].state is JobState.OUT_OF_MEMORY
    assert jobs["105"].time_limit_s is None
    assert jobs["106"].state is JobState.NODE_FAIL
    assert jobs["107"].state is JobState.PREEMPTED
    assert jobs["107"].time_limit_s == 1800
    assert jobs["108"].state is JobState.PENDING
    assert jobs["108"].time_limit_s == 86400  # "1-00": D-H

    future = jobs["109"]
    assert future.state is JobState.UNKNOWN
    assert future.slurm_state == "REBOOTING_SOMEHOW"
    assert "unknown Slurm job state 'REBOOTING_SOMEHOW'" in caplog.text

    bad = jobs["110"]
    assert bad.state is JobState.TIMEOUT
    assert (bad.time_used_s, bad.time_limit_s, bad.start_time) == (None, None, None)


@pytest.mark.parametrize("text", ["", "\n", "\n\n  \n"])
def test_parse_squeue_empty(text: str) -> None:
    assert parse_squeue(text) == []


# -- scontrol ---------------------------------------------------------------------------------


def test_parse_scontrol_finished_jobs() -> None:
    jobs = [parse_scontrol_job(line) for line in canned("scontrol_show_job.txt").splitlines()]
    done, failed, cancelled, cancelled_pending, killed, held = (j for j in jobs if j is not None)

    assert done.job_id == "1"
    assert done.name == "hearth-w|odd name=x y"  # JobName runs up to UserId=
    assert (done.state, done.exit_code, done.exit_signal) == (JobState.COMPLETED, 0, 0)
    assert (done.node, done.partition, done.time_used_s, done.time_limit_s) == ("vm", "debug", 0, None)

    assert (failed.state, failed.exit_code, failed.reason) == (JobState.FAILED, 3, "NonZeroExitCode")
    assert failed.time_limit_s == 300
    assert (cancelled.state, cancelled.exit_signal, cancelled.time_used_s) == (JobState.CANCELLED, 15, 7)
    assert cancelled.time_limit_s == 86400
    assert cancelled_pending.node is None  # "NodeList=" empty
    assert (killed.state, killed.reason, killed.exit_signal) == (JobState.FAILED, "JobLaunchFailure", 9)
    assert (held.state, held.reason, held.start_time) == (JobState.PENDING, "JobHeldUser", None)


def test_parse_scontrol_whole_file_takes_the_first_job() -> None:
    job = parse_scontrol_job(canned("scontrol_show_job.txt"))
    assert job is not None
    assert job.job_id == "1"


@pytest.mark.parametrize(
    "text", ["", "slurm_load_jobs error: Invalid job id specified\n", "No jobs in the system"]
)
def test_parse_scontrol_nothing(text: str) -> None:
    assert parse_scontrol_job(text) is None


def test_parse_scontrol_values_with_spaces_and_equals() -> None:
    line = (
        "JobId=9 JobName=x UserId=a(1) JobState=RUNNING Reason=None ExitCode=0:0 RunTime=1-00:00:01 "
        "TimeLimit=2-00:00:00 StartTime=2026-11-23T00:00:00 Partition=p NodeList=n[1-4] "
        "TRES=cpu=4,mem=1G Command=/path with spaces/run.sh a=b WorkDir=/w d"
    )
    job = parse_scontrol_job(line)
    assert job is not None
    assert (job.state, job.node, job.time_used_s, job.time_limit_s) == (
        JobState.RUNNING,
        "n[1-4]",
        86401,
        172800,
    )


# -- sinfo ------------------------------------------------------------------------------------


def test_parse_sinfo_captured() -> None:
    (node,) = parse_sinfo(canned("sinfo.txt"))
    assert (node.name, node.state, node.cpus, node.cpus_alloc, node.cpus_idle) == ("vm", "mixed", 4, 1, 3)
    assert (node.memory_mb, node.partition, node.free) == (2048, "debug", False)


def test_parse_sinfo_many_partitions_and_states(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="endpoints.slurm"):
        nodes = parse_sinfo(canned("sinfo_multi.txt"))
    assert "skipping unparseable sinfo line 'broken line'" in caplog.text
    assert len(nodes) == 9
    assert [n.partition for n in nodes if n.name == "gpu001"] == ["gpu", "debug"]
    free = {(n.name, n.partition) for n in nodes if n.free}
    assert free == {("gpu002", "gpu"), ("cn003", "cpu")}  # not idle*, idle~, drained, down*
    cn001 = next(n for n in nodes if n.name == "cn001")
    assert (cn001.cpus, cn001.memory_mb, cn001.state) == (48, 190000, "idle~")


# -- sacct ------------------------------------------------------------------------------------


def test_parse_sacct() -> None:
    jobs = by_id(parse_sacct(canned("sacct.txt")))
    assert sorted(jobs, key=int) == [str(i) for i in range(201, 209)]
    assert (jobs["201"].state, jobs["201"].exit_code, jobs["201"].time_used_s) == (JobState.COMPLETED, 0, 600)
    cancelled = jobs["202"]
    assert (cancelled.state, cancelled.slurm_state, cancelled.exit_signal) == (
        JobState.CANCELLED,
        "CANCELLED by 0",
        15,
    )
    assert cancelled.name == "hearth-vllm|with pipe"
    assert (jobs["203"].state, jobs["203"].exit_code) == (JobState.FAILED, 3)
    assert (jobs["204"].state, jobs["204"].time_used_s) == (JobState.TIMEOUT, 86400)
    assert (jobs["205"].state, jobs["205"].time_limit_s) == (JobState.OUT_OF_MEMORY, None)
    assert jobs["206"].state is JobState.NODE_FAIL
    pending = jobs["207"]
    assert (pending.state, pending.node, pending.start_time) == (JobState.PENDING, None, None)
    assert jobs["208"].state is JobState.COMPLETED


# -- sbatch -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "job_id"), [("42\n", "42"), (canned("sbatch.txt"), "4242"), ("\n7\n\n", "7")]
)
def test_parse_sbatch(text: str, job_id: str) -> None:
    assert parse_sbatch(text) == job_id


@pytest.mark.parametrize("text", ["", "Submitted batch job 42", "abc;x"])
def test_parse_sbatch_without_an_id(text: str) -> None:
    with pytest.raises(SlurmError, match="without a job id"):
        parse_sbatch(text)


# -- the Runner seam --------------------------------------------------------------------------


class FakeRunner:
    """Answers each command from a table of argv[0] → result; records what it was asked."""

    def __init__(self, answers: Mapping[str, CommandResult | float]) -> None:
        self.answers = answers
        self.calls: list[tuple[list[str], str | None, dict[str, str]]] = []

    async def __call__(
        self, argv: Sequence[str], *, stdin: str | None, env: Mapping[str, str]
    ) -> CommandResult:
        self.calls.append((list(argv), stdin, dict(env)))
        answer = self.answers[argv[0]]
        if isinstance(answer, float):  # a command that hangs
            await asyncio.sleep(answer)
            raise AssertionError("should have timed out")
        return answer


def ok(stdout: str = "", stderr: str = "") -> CommandResult:
    return CommandResult(0, stdout, stderr)


def failed(stderr: str, returncode: int = 1) -> CommandResult:
    return CommandResult(returncode, "", stderr)


async def test_submit_sends_the_script_on_stdin_with_the_env() -> None:
    runner = FakeRunner({"sbatch": ok("77\n", "sbatch: warning: something harmless\n")})
    slurm = Slurm(env={"SLURM_CONF": "/x/slurm.conf"}, runner=runner)
    job_id = await slurm.submit("#!/bin/bash\ntrue\n", job_name="hearth-w1", extra_args=["--time=5"])
    assert job_id == "77"
    argv, stdin, env = runner.calls[0]
    assert argv == ["sbatch", "--parsable", "--job-name=hearth-w1", "--time=5"]
    assert stdin == "#!/bin/bash\ntrue\n"
    assert env["SLURM_CONF"] == "/x/slurm.conf"
    assert "PATH" in env  # the process environment, overridden, not replaced


async def test_submit_refused_names_slurms_reason() -> None:
    runner = FakeRunner({"sbatch": failed(canned("sbatch_bad_partition.stderr"))})
    slurm = Slurm(env={"SLURM_CONF": "/x/slurm.conf"}, runner=runner)
    with pytest.raises(SlurmError) as caught:
        await slurm.submit("#!/bin/sh\n", extra_args=["--partition=nope"])
    err = caught.value
    assert err.reason == "Batch job submission failed: Invalid partition name specified"
    assert err.returncode == 1
    assert err.argv == ["sbatch", "--parsable", "--partition=nope"]
    message = str(err)
    assert "`sbatch --parsable --partition=nope` failed with exit status 1" in message
    assert "SLURM_CONF=/x/slurm.conf" in message
    assert "invalid partition specified: nope" in message


async def test_no_controller_error_carries_a_hint() -> None:
    slurm = Slurm(runner=FakeRunner({"sbatch": failed(canned("sbatch_no_controller.stderr"))}))
    with pytest.raises(SlurmError, match="is slurmctld running and reachable"):
        await slurm.submit("#!/bin/sh\n")


async def test_a_command_that_hangs_times_out() -> None:
    slurm = Slurm(timeout_s=0.05, runner=FakeRunner({"squeue": 10.0}))
    with pytest.raises(SlurmError, match=r"`squeue --noheader .*` did not answer within 0.05 s"):
        await slurm.jobs()


async def test_a_real_command_that_hangs_is_killed() -> None:
    """The default runner kills the command it gave up on."""
    marker = f"{30 + random.random():.9f}"  # an argv no other process has

    async def sleepy(argv: Sequence[str], *, stdin: str | None, env: Mapping[str, str]) -> CommandResult:
        return await run_command(["sleep", marker], stdin=stdin, env=env)

    slurm = Slurm(timeout_s=0.3, runner=sleepy)
    with pytest.raises(SlurmError, match=r"did not answer within 0\.3 s"):
        await slurm.cancel("1")
    cmdlines = []
    for proc in Path("/proc").glob("[0-9]*"):
        with contextlib.suppress(OSError):
            cmdlines.append((proc / "cmdline").read_bytes())
    assert f"sleep\0{marker}\0".encode() not in cmdlines


async def test_missing_command_is_a_slurm_error() -> None:
    async def missing(argv: Sequence[str], *, stdin: str | None, env: Mapping[str, str]) -> CommandResult:
        raise FileNotFoundError(2, "No such file or directory", argv[0])

    with pytest.raises(SlurmError, match="are Slurm's commands installed and on PATH"):
        await Slurm(runner=missing).nodes()


async def test_jobs_filters_and_copes_with_gone_jobs() -> None:
    runner = FakeRunner({"squeue": ok(canned("squeue.txt"))})
    slurm = Slurm(runner=runner)
    mine = await slurm.jobs(["1", "2"], name_prefix="hearth-", user="alice", include_finished=True)
    assert [j.job_id for j in mine] == ["3", "4", "1", "2", "6"]  # the filter is by name only
    assert runner.calls[0][0] == [
        "squeue",
        "--noheader",
        f"--format={SQUEUE_FORMAT}",
        "--jobs=1,2",
        "--user=alice",
        "--states=all",
    ]
    assert await slurm.jobs([]) == []
    gone = Slurm(runner=FakeRunner({"squeue": failed(canned("squeue_gone.stderr"))}))
    assert await gone.jobs(["999"]) == []
    broken = Slurm(runner=FakeRunner({"squeue": failed("squeue: error: Invalid user: nobody-here")}))
    with pytest.raises(SlurmError, match="Invalid user"):
        await broken.jobs(user="nobody-here")


async def test_job_running_from_squeue_only() -> None:
    running = "5|RUNNING|None|vm|debug|0:03|UNLIMITED|2026-11-23T12:27:10|wide\n"
    runner = FakeRunner({"squeue": ok(running)})
    job = await Slurm(runner=runner).job("5")
    assert job is not None
    assert job.state is JobState.RUNNING
    assert [c[0][0] for c in runner.calls] == ["squeue"]


async def test_job_finished_adds_scontrols_exit_code_and_keeps_squeues_name() -> None:
    squeue_line = "2|FAILED|NonZeroExitCode|vm|debug|0:00|5:00|2026-11-23T12:27:03|a b=c\n"
    scontrol_line = canned("scontrol_show_job.txt").splitlines()[1]  # job 2, ExitCode=3:0
    runner = FakeRunner({"squeue": ok(squeue_line), "scontrol": ok(scontrol_line)})
    job = await Slurm(runner=runner).job("2")
    assert job is not None
    assert (job.state, job.exit_code, job.name) == (JobState.FAILED, 3, "a b=c")
    assert runner.calls[1][0] == ["scontrol", "show", "job", "--oneliner", "2"]


async def test_job_forgotten_is_none() -> None:
    gone = failed(canned("squeue_gone.stderr"))
    runner = FakeRunner({"squeue": ok(""), "scontrol": gone})
    assert await Slurm(runner=runner).job("999") is None


async def test_cancel_tolerates_gone_jobs_but_not_other_errors() -> None:
    runner = FakeRunner({"scancel": failed(canned("scancel_gone.stderr"))})
    await Slurm(runner=runner).cancel("999", signal="USR1")
    assert runner.calls[0][0] == ["scancel", "--signal=USR1", "999"]
    refused = Slurm(runner=FakeRunner({"scancel": failed("scancel: error: Invalid job id abc")}))
    with pytest.raises(SlurmError, match="Invalid job id abc"):
        await refused.cancel("abc")


async def test_free_nodes_counts_each_idle_node_once() -> None:
    slurm = Slurm(runner=FakeRunner({"sinfo": ok(canned("sinfo_multi.txt"))}))
    assert await slurm.free_nodes() == 2


async def test_accounting_disabled_is_empty_not_an_error() -> None:
    disabled = Slurm(runner=FakeRunner({"sacct": failed(canned("sacct_disabled.stderr"))}))
    assert await disabled.accounting(["1"]) == []
    assert await disabled.accounting([]) == []
    enabled = Slurm(runner=FakeRunner({"sacct": ok(canned("sacct.txt"))}))
    assert len(await enabled.accounting(["201", "202"])) == 8
    broken = Slurm(runner=FakeRunner({"sacct": failed("sacct: error: Problem talking to the database")}))
    with pytest.raises(SlurmError, match="Problem talking to the database"):
        await broken.accounting(["1"])
