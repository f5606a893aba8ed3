"""A throwaway single-node Slurm cluster for tests, from Debian's slurm-wlm and munge.

Each `SlurmCluster` is a real slurmctld and slurmd running as root from a slurm.conf in its own
directory, on its own ports, so two of them run side by side (federation tests). Every Slurm
command must be given `cluster.env` (it sets SLURM_CONF). munged is shared by all clusters
on the machine: it is started once, as the munge user, and left running.

The keys are those of slurm.conf(5), as verified with Debian 12's slurm-wlm 22.05:
https://slurm.schedmd.com/archive/slurm-22.05.8/slurm.conf.html
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from tests.support.procs import free_port

MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_LOCK = Path("/tmp/hearth-munge.lock")
DAEMONS = ("slurmctld", "slurmd", "slurmstepd", "sbatch", "squeue", "scontrol", "munged", "munge")
INSTALL_HINT = "run scripts/setup.sh --dev (as root): it installs slurm-wlm and munge"


class SlurmClusterError(RuntimeError):
    """The test cluster could not be set up or did not come up."""


def _tail(path: Path, limit: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-limit:]
    except OSError:
        return f"({path} unreadable)"


def check_prerequisites() -> None:
    """Fail with a clear message when this machine cannot run a test cluster."""
    missing = [name for name in DAEMONS if shutil.which(name) is None]
    if missing:
        raise SlurmClusterError(f"missing Slurm/munge commands {missing}: {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise SlurmClusterError("the test Slurm cluster runs its daemons as root (SlurmUser=root)")


def _munge_works() -> bool:
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5, check=False)
        if cred.returncode != 0:
            return False
        out = subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=5, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and b"Success" in out.stdout


def ensure_munge() -> None:
    """Start munged once per machine (shared by every cluster), creating its key if missing."""
    with MUNGE_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers may race here
        if _munge_works():
            return
        munge = pwd.getpwnam("munge")
        if not MUNGE_KEY.exists():
            MUNGE_KEY.parent.mkdir(mode=0o700, exist_ok=True)
            os.chown(MUNGE_KEY.parent, munge.pw_uid, munge.pw_gid)
            fd = os.open(MUNGE_KEY, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as f:
                f.write(os.urandom(1024))
            os.chown(MUNGE_KEY, munge.pw_uid, munge.pw_gid)
        MUNGE_RUN_DIR.mkdir(mode=0o755, exist_ok=True)
        os.chown(MUNGE_RUN_DIR, munge.pw_uid, munge.pw_gid)
        # munged daemonises itself; runuser drops to the munge user as munged requires.
        subprocess.run(["runuser", "-u", "munge", "--", "munged"], check=True, timeout=15)
        deadline = time.monotonic() + 10
        while not _munge_works():
            if time.monotonic() > deadline:
                raise SlurmClusterError("munged started but `munge -n | unmunge` does not succeed")
            time.sleep(0.1)


def _machine_memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 2048


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # the name in (…) may contain spaces
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (PID 1 here may not reap orphans)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _environ_has(pid: int, needle: bytes) -> bool:
    try:
        return needle in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False


class SlurmCluster:
    """One controller and one node, all state under `root`; a context manager.

    The node advertises `cpus` CPUs (default 4, more than the machine has, through
    SlurmdParameters=config_overrides) so several 1-CPU jobs run side by side.
    """

    def __init__(self, root: Path, name: str = "hearth-a", cpus: int | None = None) -> None:
        self.root = Path(root).resolve()
        if len(str(self.root)) > 80:  # slurmstepd's sockets live in the spool dir (108-byte limit)
            raise SlurmClusterError(f"cluster root {self.root} is too long for Slurm's socket paths")
        self._name = name
        self.cpus = cpus or 4
        self.memory_mb = max(256, min(2048, _machine_memory_mb() // 4))
        self.hostname = socket.gethostname().split(".")[0]
        self.ctld_port = free_port()
        self.slurmd_port = free_port()
        while self.slurmd_port == self.ctld_port:
            self.slurmd_port = free_port()
        self._partition = "debug"
        self._ctld: subprocess.Popen[bytes] | None = None
        self._slurmd: subprocess.Popen[bytes] | None = None

    # -- what tests use ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        return self._name

    @property
    def partition(self) -> str:
        return self._partition

    @property
    def conf_path(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def env(self) -> dict[str, str]:
        """The process environment for Slurm commands aimed at this cluster.

        Other SLURM_* variables (say, from a job the test suite runs inside) are dropped.
        """
        base = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
        return {**base, "SLURM_CONF": str(self.conf_path)}

    def log(self, daemon: str = "slurmctld") -> str:
        """The tail of a daemon's log ("slurmctld" or "slurmd"), and of its stdout/stderr, where
        it complains before it has opened its log."""
        parts = []
        for path in (self.root / "log" / f"{daemon}.log", self.root / "log" / f"{daemon}.out"):
            if path.exists() and path.stat().st_size:
                parts.append(f"[{path.name}]\n{_tail(path)}")
        return "\n".join(parts) or f"({daemon} wrote nothing)"

    # -- lifecycle --------------------------------------------------------------------------

    def start(self, timeout_s: float = 30.0) -> SlurmCluster:
        check_prerequisites()
        ensure_munge()
        for sub in ("state", "spool", "log", "run", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self.conf_path.write_text(self.render_conf())
        self.start_controller()
        self._slurmd = self._spawn("slurmd")
        self.wait_idle(timeout_s)
        return self

    def stop(self) -> None:
        """Cancel every job, stop both daemons and kill anything they left behind."""
        if self._ctld is not None and self._ctld.poll() is None:
            self._slurm("scancel", "--quiet", f"--user={pwd.getpwuid(os.geteuid()).pw_name}")
            deadline = time.monotonic() + 5  # let slurmstepd end its jobs as it would normally
            while time.monotonic() < deadline and self._slurm("squeue", "--noheader", "--format=%i").strip():
                time.sleep(0.1)
        for proc in (self._slurmd, self._ctld):
            self._terminate(proc)
        self._slurmd = self._ctld = None
        self._sweep()

    def stop_controller(self) -> None:
        """Stop slurmctld only (slurmd and running jobs carry on), for failover tests."""
        self._terminate(self._ctld)
        self._ctld = None

    def start_controller(self) -> None:
        """(Re)start slurmctld; it recovers its jobs from StateSaveLocation."""
        if self._ctld is not None and self._ctld.poll() is None:
            return
        self._ctld = self._spawn("slurmctld")
        deadline = time.monotonic() + 15
        while not self._controller_answers():
            if self._ctld.poll() is not None:
                raise SlurmClusterError(
                    f"slurmctld of {self.name} exited {self._ctld.returncode}:\n{self.log('slurmctld')}"
                )
            if time.monotonic() > deadline:
                raise SlurmClusterError(f"slurmctld of {self.name} does not answer:\n{self.log('slurmctld')}")
            time.sleep(0.1)

    def wait_idle(self, timeout_s: float = 30.0) -> None:
        """Wait until sinfo shows the node idle (or mixed/allocated: it takes jobs)."""
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            for proc, daemon in ((self._ctld, "slurmctld"), (self._slurmd, "slurmd")):
                if proc is not None and proc.poll() is not None:
                    raise SlurmClusterError(
                        f"{daemon} of {self.name} exited {proc.returncode}:\n{self.log(daemon)}"
                    )
            state = self._slurm("sinfo", "--noheader", "--Node", "--format=%T").strip()
            if state in ("idle", "mixed", "allocated"):
                return
            time.sleep(0.1)
        raise SlurmClusterError(
            f"node of Slurm cluster {self.name} not idle after {timeout_s:.0f} s (sinfo: {state!r})\n"
            f"--- slurmctld.log\n{self.log('slurmctld')}\n--- slurmd.log\n{self.log('slurmd')}"
        )

    def __enter__(self) -> SlurmCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals --------------------------------------------------------------------------

    def render_conf(self) -> str:
        r = self.root
        return f"""\
# Throwaway test cluster {self.name} (tests/support/slurm.py). Not for production.
ClusterName={self.name}
SlurmctldHost={self.hostname}
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/run/slurmctld.pid
SlurmdPidFile={r}/run/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
TmpFS={r}/tmp
ReturnToService=2
MinJobAge=3600
KillWait=2
InactiveLimit=0
Waittime=0
SlurmctldTimeout=30
SlurmdTimeout=30
MessageTimeout=10
SchedulerType=sched/backfill
# Start a batch job at the next scheduler tick (~1 s) instead of up to 3 s later.
SchedulerParameters=batch_sched_delay=0
MailProg=/bin/true
NodeName={self.hostname} NodeAddr=127.0.0.1 CPUs={self.cpus} Boards=1 SocketsPerBoard=1 \
CoresPerSocket={self.cpus} ThreadsPerCore=1 RealMemory={self.memory_mb} State=UNKNOWN
PartitionName={self.partition} Nodes={self.hostname} Default=YES MaxTime=INFINITE State=UP
"""

    def _spawn(self, daemon: str) -> subprocess.Popen[bytes]:
        out = (self.root / "log" / f"{daemon}.out").open("ab")
        with out:
            return subprocess.Popen(
                [daemon, "-D"],
                env=self.env,
                cwd=self.root,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def _controller_answers(self) -> bool:
        out = subprocess.run(["scontrol", "ping"], env=self.env, capture_output=True, text=True, check=False)
        return out.returncode == 0 and "UP" in out.stdout

    @staticmethod
    def _terminate(proc: subprocess.Popen[bytes] | None, timeout_s: float = 10.0) -> None:
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout_s)

    def _slurm(self, *argv: str) -> str:
        """Run a Slurm command against this cluster; its stdout ("" if it fails)."""
        try:
            out = subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=10, check=False)
        except subprocess.TimeoutExpired:
            return ""
        return out.stdout if out.returncode == 0 else ""

    def _sweep(self) -> None:
        """SIGKILL every process left from this cluster: anything whose environment names its
        slurm.conf (slurmstepd, slurmscriptd, jobs) and all their descendants (a job may clear
        its environment). By now the daemons are gone, so there is no one to shut down cleanly."""
        needle = f"SLURM_CONF={self.conf_path}".encode()
        for _ in range(3):  # a dying job may still fork; look again
            children = _children_map()
            stack = [p for ps in children.values() for p in ps if _alive(p) and _environ_has(p, needle)]
            doomed: set[int] = set()
            while stack:
                pid = stack.pop()
                if pid not in doomed and pid != os.getpid():
                    doomed.add(pid)
                    stack.extend(children.get(pid, ()))
            if not doomed:
                return
            for pid in doomed:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline and any(_alive(p) for p in doomed):
                time.sleep(0.02)
