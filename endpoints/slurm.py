"""The Slurm client of the site side: submit, inspect and cancel jobs, look at nodes.

Shaped like Parsl's SlurmProvider: a tiny surface named after operations, job states as a
neutral `JobState` filled from lookup tables of Slurm's codes, and every shell-out through one
`Runner` that tests can replace. Commands are argv lists (never a shell string); output is asked
for in fixed, delimited formats and parsed robustly. Light dependencies only: this module runs
on a cluster's login node.

Slurm's contracts (22.05): https://slurm.schedmd.com/archive/slurm-22.05.8/ — sbatch.html,
squeue.html (JOB STATE CODES), scontrol.html, scancel.html, sinfo.html, sacct.html.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import enum
import logging
import os
import re
import shlex
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

logger = logging.getLogger(__name__)

__all__ = [
    "CommandResult",
    "JobInfo",
    "JobState",
    "NodeInfo",
    "Runner",
    "Slurm",
    "SlurmError",
    "job_state",
    "parse_duration",
    "parse_sacct",
    "parse_sbatch",
    "parse_scontrol_job",
    "parse_sinfo",
    "parse_squeue",
    "run_command",
]


class JobState(enum.Enum):
    """Where a job is in its life, independent of the scheduler's own vocabulary."""

    PENDING = "pending"
    RUNNING = "running"
    COMPLETING = "completing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMEOUT = "timeout"
    PREEMPTED = "preempted"
    NODE_FAIL = "node_fail"
    OUT_OF_MEMORY = "out_of_memory"
    UNKNOWN = "unknown"

    @property
    def finished(self) -> bool:
        """The job will not run (again) by itself: its resources are or will soon be free."""
        return self in _FINISHED


_FINISHED = frozenset(
    {JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED, JobState.TIMEOUT, JobState.PREEMPTED}
    | {JobState.NODE_FAIL, JobState.OUT_OF_MEMORY}
)

# Slurm's long names (squeue %T, scontrol JobState, sacct State) and compact codes (squeue %t)
# for each neutral state, from squeue(1) JOB STATE CODES. Suspended and stopped jobs keep their
# allocation but serve nothing: they count as PENDING.
_SLURM_CODES: dict[JobState, str] = {
    JobState.PENDING: "PENDING PD CONFIGURING CF REQUEUED RQ REQUEUE_HOLD RH REQUEUE_FED RF "
    "RESV_DEL_HOLD RD SUSPENDED S STOPPED ST",
    JobState.RUNNING: "RUNNING R RESIZING RS SIGNALING SI",
    JobState.COMPLETING: "COMPLETING CG STAGE_OUT SO",
    JobState.COMPLETED: "COMPLETED CD",
    JobState.FAILED: "FAILED F BOOT_FAIL BF SPECIAL_EXIT SE",
    JobState.CANCELLED: "CANCELLED CA REVOKED RV",
    JobState.TIMEOUT: "TIMEOUT TO DEADLINE DL",
    JobState.PREEMPTED: "PREEMPTED PR",
    JobState.NODE_FAIL: "NODE_FAIL NF",
    JobState.OUT_OF_MEMORY: "OUT_OF_MEMORY OOM",
}
_STATES: dict[str, JobState] = {
    code: state for state, codes in _SLURM_CODES.items() for code in codes.split()
}


def job_state(code: str) -> JobState:
    """The neutral state of a Slurm state code: "RUNNING", "R", "CANCELLED by 0", "COMPLETED+"."""
    words = code.strip().upper().split()
    key = words[0].rstrip("+") if words else ""
    state = _STATES.get(key)
    if state is None:
        logger.warning("unknown Slurm job state %r; treating it as UNKNOWN", code)
        return JobState.UNKNOWN
    return state


@dataclass(frozen=True)
class JobInfo:
    """One job as Slurm reports it. Times are seconds; `node` is Slurm's node list, if any."""

    job_id: str
    name: str
    state: JobState
    reason: str | None = None
    node: str | None = None
    partition: str | None = None
    time_used_s: int | None = None
    time_limit_s: int | None = None
    exit_code: int | None = None  # the script's exit status; None until known (squeue never says)
    exit_signal: int | None = None  # the signal that ended it (15: cancelled, 9: killed), 0 if none
    start_time: datetime | None = None  # actual start, or Slurm's expected start while pending
    slurm_state: str = ""  # Slurm's own word, e.g. "CANCELLED by 0", for messages and logs


@dataclass(frozen=True)
class NodeInfo:
    """One node of one partition (sinfo -N lists a node once per partition)."""

    name: str
    state: str  # sinfo's long state, lower case, flags kept: "idle", "mixed", "down*", "drained"
    cpus: int
    cpus_alloc: int
    cpus_idle: int
    memory_mb: int
    partition: str

    @property
    def free(self) -> bool:
        """Idle, responding and not draining: a whole node a new job could have now."""
        return self.state == "idle" and self.cpus_alloc == 0


class SlurmError(Exception):
    """A Slurm command failed, was refused, or did not answer.

    `reason` is Slurm's own last error line (e.g. "Invalid partition name specified").
    """

    def __init__(
        self, message: str, *, argv: Sequence[str] = (), returncode: int | None = None, stderr: str = ""
    ) -> None:
        super().__init__(message)
        self.argv = list(argv)
        self.returncode = returncode
        self.stderr = stderr

    @property
    def reason(self) -> str:
        lines = [ln.strip() for ln in self.stderr.splitlines() if ln.strip()]
        if not lines:
            return ""
        return re.sub(r"^\S+: (?:error|fatal): ", "", lines[-1])


# -- the one shell-out ------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


class Runner(Protocol):
    """Runs one command to completion. Cancelling the call must end the command."""

    async def __call__(
        self, argv: Sequence[str], *, stdin: str | None, env: Mapping[str, str]
    ) -> CommandResult: ...


async def run_command(argv: Sequence[str], *, stdin: str | None, env: Mapping[str, str]) -> CommandResult:
    """The default Runner: `asyncio.create_subprocess_exec`, killed if the caller gives up."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=dict(env),
    )
    try:
        out, err = await proc.communicate(stdin.encode() if stdin is not None else None)
    except BaseException:  # cancelled (a timeout): do not leave the command behind
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return CommandResult(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


# -- parsers (pure; unit-tested against canned output in tests/fixtures/slurm/) ---------------

_NO_VALUE = frozenset(
    {"N/A", "NONE", "(NULL)", "UNKNOWN", "INVALID", "NOT_SET", "UNLIMITED", "INFINITE", "PARTITION_LIMIT"}
    | {"NONE_ASSIGNED"}
)


def _opt(value: str) -> str | None:
    value = value.strip()
    return None if not value or value.upper().replace(" ", "_") in _NO_VALUE else value


def parse_duration(text: str) -> int | None:
    """Seconds in a Slurm time: "1-02:03:04", "1-02" (D-H), "02:03:04", "2:03" (M:SS), "5" (M).

    "UNLIMITED", "INVALID", "N/A" and the like are None; so is anything unparseable (logged).
    """
    value = _opt(text)
    if value is None:
        return None
    days, _, clock = value.rpartition("-")
    try:
        parts = [float(p) for p in clock.split(":")]
        if len(parts) > 3 or any(p < 0 for p in parts) or (days and not days.isdigit()):
            raise ValueError(value)
    except ValueError:
        logger.warning("unparseable Slurm duration %r", text)
        return None
    if days:  # D-H, D-H:M, D-H:M:S
        hours, minutes, seconds = [*parts, 0.0, 0.0][:3]
    else:  # M, M:S, H:M:S
        hours, minutes, seconds = [0.0, 0.0, *parts][-3:] if len(parts) == 3 else [0.0, *parts, 0.0][:3]
    return int((int(days or 0) * 24 + hours) * 3600 + minutes * 60 + seconds)


def _timestamp(text: str) -> datetime | None:
    """Slurm's local-time "2026-11-23T12:23:45" as an aware datetime; "N/A"/"Unknown" → None."""
    value = _opt(text)
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value).astimezone()
    except ValueError:
        logger.warning("unparseable Slurm timestamp %r", text)
        return None


def _exit_status(text: str) -> tuple[int | None, int | None]:
    """Slurm's "code:signal" pair: "3:0" → (3, 0); killed by SIGTERM "0:15" → (0, 15)."""
    code, _, sig = text.strip().partition(":")
    return (int(code) if code.isdigit() else None, int(sig) if sig.isdigit() else None)


# What to ask each command for, and the neutral key each field fills. The job name goes last:
# it is the only field a user chooses, so it may hold the delimiter ("|"), and the split stops
# before it.
_SQUEUE_FIELDS = {"%i": "job_id", "%T": "state", "%r": "reason", "%N": "node", "%P": "partition",
                  "%M": "used", "%l": "limit", "%S": "start", "%j": "name"}  # fmt: skip
_SACCT_FIELDS = {"JobIDRaw": "job_id", "State": "state", "Reason": "reason", "NodeList": "node",
                 "Partition": "partition", "Elapsed": "used", "Timelimit": "limit", "Start": "start",
                 "ExitCode": "exit_code", "JobName": "name"}  # fmt: skip
_SCONTROL_FIELDS = {"JobId": "job_id", "JobState": "state", "Reason": "reason", "NodeList": "node",
                    "Partition": "partition", "RunTime": "used", "TimeLimit": "limit",
                    "StartTime": "start", "ExitCode": "exit_code", "JobName": "name"}  # fmt: skip
SQUEUE_FORMAT = "|".join(_SQUEUE_FIELDS)
SACCT_FORMAT = ",".join(_SACCT_FIELDS)
SINFO_FORMAT = "%N|%T|%c|%C|%m|%P"  # node, state, CPUs, CPUs alloc/idle/other/total, MB, partition


def _job(f: Mapping[str, str]) -> JobInfo:
    state = f.get("state", "").strip()
    exit_code, exit_signal = _exit_status(f.get("exit_code", ""))
    return JobInfo(
        job_id=f["job_id"].strip(),
        name=f.get("name", ""),
        state=job_state(state),
        reason=_opt(f.get("reason", "")),
        node=_opt(f.get("node", "")),
        partition=_opt(f.get("partition", "")),
        time_used_s=parse_duration(f.get("used", "")),
        time_limit_s=parse_duration(f.get("limit", "")),
        exit_code=exit_code,
        exit_signal=exit_signal,
        start_time=_timestamp(f.get("start", "")),
        slurm_state=state,
    )


def _rows(text: str, keys: Iterable[str], command: str) -> Iterator[dict[str, str]]:
    """Each "|"-delimited line as {key: field}; the last field takes any extra "|"."""
    names = list(keys)
    for line in text.splitlines():
        fields = line.split("|", len(names) - 1)
        if len(fields) == len(names):
            yield dict(zip(names, fields, strict=True))
        elif line.strip():
            logger.warning("skipping unparseable %s line %r", command, line)


def parse_squeue(text: str) -> list[JobInfo]:
    """Rows of `squeue --noheader --format=SQUEUE_FORMAT` (no exit codes: squeue has none)."""
    return [_job(row) for row in _rows(text, _SQUEUE_FIELDS.values(), "squeue")]


def parse_sacct(text: str) -> list[JobInfo]:
    """Rows of `sacct --parsable2 --noheader --allocations --format=SACCT_FORMAT`."""
    return [_job(row) for row in _rows(text, _SACCT_FIELDS.values(), "sacct")]


_SCONTROL_KEY = re.compile(r"(?:^|\s)([A-Z][A-Za-z0-9_/:]*)=")


def _key_values(line: str) -> dict[str, str]:
    """scontrol's one-line "Key=Value Key=Value" record. Values may hold spaces and "=";
    a key is a capitalised word after whitespace. JobName (user-chosen) runs up to UserId=."""
    marks = list(_SCONTROL_KEY.finditer(line))
    pairs = {
        m.group(1): line[m.end() : marks[i + 1].start() if i + 1 < len(marks) else len(line)].strip()
        for i, m in reversed(list(enumerate(marks)))  # the first occurrence wins
    }
    name = re.search(r"(?:^|\s)JobName=(.*?) UserId=", line)
    if name:
        pairs["JobName"] = name.group(1)
    return pairs


def parse_scontrol_job(text: str) -> JobInfo | None:
    """The first job of `scontrol show job --oneliner <id>`, or None if there is none."""
    for line in text.splitlines():
        kv = _key_values(line)
        if "JobId" in kv:
            return _job({key: kv.get(field, "") for field, key in _SCONTROL_FIELDS.items()})
    return None


def _count(text: str) -> int:
    digits = re.match(r"\d+", text.strip())
    return int(digits.group()) if digits else 0


def parse_sinfo(text: str) -> list[NodeInfo]:
    """Rows of `sinfo --noheader --Node --format=SINFO_FORMAT` (%C is alloc/idle/other/total)."""
    nodes = []
    for row in _rows(text, ("name", "state", "cpus", "counts", "memory", "partition"), "sinfo"):
        name, state, cpus, cpu_counts, memory, partition = (f.strip() for f in row.values())
        counts = [*(_count(c) for c in cpu_counts.split("/")), 0, 0]
        nodes.append(
            NodeInfo(name=name, state=state.lower(), cpus=_count(cpus), cpus_alloc=counts[0],
                     cpus_idle=counts[1], memory_mb=_count(memory), partition=partition.rstrip("*"))
        )  # fmt: skip
    return nodes


def parse_sbatch(text: str) -> str:
    """The job id from `sbatch --parsable`: "123" or "123;cluster"."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    job_id = lines[-1].split(";")[0] if lines else ""
    if not job_id.isdigit():
        raise SlurmError(f"sbatch answered without a job id: {text.strip()!r}")
    return job_id


# -- the client -------------------------------------------------------------------------------

_GONE = ("invalid job id specified", "already completing or completed")
_ACCOUNTING_OFF = "accounting storage is disabled"
_HINTS = {
    "unable to contact slurm controller": "is slurmctld running and reachable from here?",
    "could not establish a configuration source": "point SLURM_CONF at the cluster's slurm.conf",
}


class Slurm:
    """The scheduler client. `env` overrides this process's environment for every command
    (SLURM_CONF picks the cluster); each command gets `timeout_s` to answer."""

    def __init__(
        self, env: Mapping[str, str] | None = None, timeout_s: float = 30.0, runner: Runner | None = None
    ) -> None:
        self.env = dict(env or {})
        self.timeout_s = timeout_s
        self._runner: Runner = runner or run_command

    def _where(self) -> str:
        return f" (SLURM_CONF={self.env['SLURM_CONF']})" if "SLURM_CONF" in self.env else ""

    async def _run(
        self, argv: Sequence[str], *, stdin: str | None = None, allow: Sequence[str] = ()
    ) -> CommandResult:
        """Every Slurm command goes through here: one timeout, one error path.

        A failure whose stderr holds one of the `allow` phrases is returned, not raised.
        """
        try:
            async with asyncio.timeout(self.timeout_s):
                result = await self._runner(argv, stdin=stdin, env={**os.environ, **self.env})
        except TimeoutError:
            raise SlurmError(
                f"`{shlex.join(argv)}` did not answer within {self.timeout_s:g} s{self._where()}; "
                "is slurmctld overloaded or down?",
                argv=argv,
            ) from None
        except OSError as exc:  # not installed, not executable
            raise SlurmError(
                f"cannot run `{shlex.join(argv)}`: {exc}; are Slurm's commands installed and on PATH?",
                argv=argv,
            ) from exc
        if result.returncode == 0:
            if result.stderr.strip():
                logger.info("%s said: %s", argv[0], result.stderr.strip())
            return result
        said = result.stderr.strip() or result.stdout.strip() or "(no output)"
        if any(phrase in said.lower() for phrase in allow):
            return result
        hint = next((h for k, h in _HINTS.items() if k in said.lower()), "")
        raise SlurmError(
            f"`{shlex.join(argv)}` failed with exit status {result.returncode}{self._where()}: {said}"
            + (f" — {hint}" if hint else ""),
            argv=argv,
            returncode=result.returncode,
            stderr=result.stderr,
        )

    async def submit(
        self, script: str, *, job_name: str | None = None, extra_args: Sequence[str] = ()
    ) -> str:
        """Submit a batch script (its text, sent on stdin; it must start with "#!"); return the job id.

        `extra_args` are more sbatch options, e.g. ["--partition=gpu", "--time=1:00:00"].
        """
        argv = ["sbatch", "--parsable"]
        if job_name is not None:
            argv.append(f"--job-name={job_name}")
        argv.extend(extra_args)
        return parse_sbatch((await self._run(argv, stdin=script)).stdout)

    async def jobs(
        self,
        job_ids: Sequence[str] | None = None,
        *,
        name_prefix: str | None = None,
        user: str | None = None,
        include_finished: bool = False,
    ) -> list[JobInfo]:
        """Jobs slurmctld knows: by default those pending, running or completing.

        With `include_finished`, also the finished ones it still remembers (MinJobAge). Jobs
        that are gone are simply absent. `name_prefix` filters here (squeue matches whole names).
        """
        if job_ids is not None and not job_ids:
            return []
        argv = ["squeue", "--noheader", f"--format={SQUEUE_FORMAT}"]
        if job_ids is not None:
            argv.append(f"--jobs={','.join(job_ids)}")
        if user is not None:
            argv.append(f"--user={user}")
        if include_finished:
            argv.append("--states=all")
        result = await self._run(argv, allow=_GONE)
        found = parse_squeue(result.stdout) if result.returncode == 0 else []
        if name_prefix is not None:
            found = [j for j in found if j.name.startswith(name_prefix)]
        return found

    async def job(self, job_id: str) -> JobInfo | None:
        """One job in any state slurmctld still remembers, or None once it has forgotten it.

        squeue first; for a finished job `scontrol show job` adds the exit code.
        """
        listed = [j for j in await self.jobs([job_id], include_finished=True) if j.job_id == job_id]
        queued = listed[0] if listed else None
        if queued is not None and not queued.state.finished:
            return queued
        argv = ["scontrol", "show", "job", "--oneliner", job_id]
        result = await self._run(argv, allow=_GONE)
        shown = parse_scontrol_job(result.stdout) if result.returncode == 0 else None
        if shown is None:
            return queued
        # squeue's name survives any character; scontrol's key=value line may not.
        return dataclasses.replace(shown, name=queued.name) if queued is not None else shown

    async def cancel(self, job_id: str, *, signal: str | None = None, batch: bool = False) -> None:
        """Cancel a job, or only send it `signal` (e.g. "TERM", "USR1"). A job already gone is fine.

        With `batch`, the signal goes to the job's batch script (and its children), which is
        how a Hearth worker script is asked to drain; by default scancel signals job steps only.
        """
        argv = ["scancel"]
        if signal is not None:
            argv.append(f"--signal={signal}")
        if batch:
            argv.append("--batch")
        argv.append(job_id)
        await self._run(argv, allow=_GONE)

    async def nodes(self, partition: str | None = None) -> list[NodeInfo]:
        """Every node (of `partition`, or all), once per partition it is in."""
        argv = ["sinfo", "--noheader", "--Node", f"--format={SINFO_FORMAT}"]
        if partition is not None:
            argv.append(f"--partition={partition}")
        return parse_sinfo((await self._run(argv)).stdout)

    async def free_nodes(self, partition: str | None = None) -> int:
        """How many whole nodes (of `partition`, or any) are idle right now."""
        return len({n.name for n in await self.nodes(partition) if n.free})

    async def accounting(self, job_ids: Sequence[str]) -> list[JobInfo]:
        """Jobs from the accounting database (sacct), finished ones included.

        [] when the cluster keeps no accounting (AccountingStorageType=accounting_storage/none):
        then `job()` is the way to see a finished job, while slurmctld remembers it.
        """
        if not job_ids:
            return []
        argv = [
            "sacct",
            "--parsable2",
            "--noheader",
            "--allocations",
            f"--format={SACCT_FORMAT}",
            f"--jobs={','.join(job_ids)}",
        ]
        result = await self._run(argv, allow=[_ACCOUNTING_OFF])
        if result.returncode != 0:
            logger.debug("sacct: accounting storage is disabled on this cluster")
            return []
        return parse_sacct(result.stdout)
