"""Start and stop a private single-node SLURM cluster for tests.

Not a test module: tests import :func:`local_slurm_cluster` and run
``snakemake`` (or ``sbatch``) as subprocesses with the environment it yields.

The cluster (Debian slurm-wlm 22.05 + munge, see tests/install_slurm.sh):

* configuration (slurm.conf + gres.conf) in /etc/slurm, the path compiled
  into Slurm. A private directory named by ``SLURM_CONF`` would do for the
  daemons and for sbatch/squeue/sinfo, but snakemake-executor-plugin-slurm's
  job step strips every ``SLURM_*`` variable except the job identity before
  it calls ``srun`` inside the job, so that ``srun`` only finds the default
  path (and otherwise fails with "DNS SRV lookup failed"). The files carry a
  marker line; a slurm.conf without it (a real installation) is never
  overwritten, and ours are removed on exit so that later snakemake runs do
  not wait on a controller that is gone. An flock on
  /etc/slurm/.local_slurm.lock makes concurrent users wait their turn;
* state, spool, PID and log files in the caller's ``workdir``;
* one node ``localhost`` with 2 CPUs, 16000 MB and one fake GPU
  (``File=/dev/null``) so that ``--gpus=1`` jobs can be scheduled on a CPU
  machine; one partition ``debug``; no accounting database;
* controller and node daemon listen on free TCP ports picked at start-up, so
  two clusters (e.g. two test sessions) do not collide;
* munge: the system munged is reused when one already answers, otherwise one
  is started as the ``munge`` user and stopped again on exit.

Daemons are stopped by the PID in their PID file, never by name.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

__all__ = ["SlurmUnavailable", "SlurmStartError", "local_slurm_cluster"]

MUNGE_SOCKET = Path("/run/munge/munge.socket.2")
MUNGE_KEY = Path("/etc/munge/munge.key")
MUNGE_PIDFILE = Path("/run/munge/munged.pid")
# Directories munged insists on owning (mode as the Debian package makes them).
MUNGE_DIRS = {
    Path("/etc/munge"): 0o700,
    Path("/run/munge"): 0o755,
    Path("/var/lib/munge"): 0o711,
    Path("/var/log/munge"): 0o700,
}
REQUIRED_COMMANDS = (
    "slurmctld",
    "slurmd",
    "munged",
    "sinfo",
    "squeue",
    "sbatch",
    "scontrol",
    "munge",
    "unmunge",
    "runuser",
)
PARTITION = "debug"
NODE = "localhost"
CONF_DIR = Path("/etc/slurm")
MARKER = "# written by tests/local_slurm.py (private test cluster)"


class SlurmUnavailable(Exception):
    """SLURM cannot be run here at all (missing programs, not root).

    Tests should turn this into ``pytest.skip(str(exc))``.
    """


class SlurmStartError(RuntimeError):
    """SLURM is installed but the cluster did not come up; carries log tails."""


# --------------------------------------------------------------------------
# small helpers


def _search_path() -> str:
    # Daemons live in /usr/sbin, which is not on every user's PATH.
    parts = os.environ.get("PATH", "").split(os.pathsep)
    for extra in ("/usr/sbin", "/sbin", "/usr/bin", "/bin"):
        if extra not in parts:
            parts.append(extra)
    return os.pathsep.join(p for p in parts if p)


def _which(cmd: str) -> Optional[str]:
    return shutil.which(cmd, path=_search_path())


def _check_available() -> Dict[str, str]:
    missing = [c for c in REQUIRED_COMMANDS if _which(c) is None]
    if missing:
        raise SlurmUnavailable(
            "SLURM/munge programs not found: "
            + ", ".join(missing)
            + " (run tests/install_slurm.sh as root)"
        )
    if os.geteuid() != 0:
        raise SlurmUnavailable(
            "a local SLURM cluster needs root (munged runs as 'munge', "
            "slurmd as root)"
        )
    return {c: _which(c) for c in REQUIRED_COMMANDS}  # type: ignore[misc]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_total_mb() -> Optional[int]:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except OSError:
        pass
    return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"  <cannot read {path}: {exc}>"
    if not text:
        return f"  <{path} is empty>"
    return "\n".join("  " + line for line in text[-lines:])


def _pid_alive(pid: int) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            # state is the field after the parenthesised command name
            state = fh.read().rsplit(")", 1)[1].split()[0]
        return state not in ("Z", "X")
    except (OSError, IndexError):
        return False


def _read_pid(pidfile: Path) -> Optional[int]:
    try:
        return int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _munge_works(env: Dict[str, str]) -> bool:
    if not MUNGE_SOCKET.exists():
        return False
    try:
        cred = subprocess.run(
            [_which("munge") or "munge", "-n"],
            capture_output=True,
            timeout=5,
            env=env,
        )
        if cred.returncode != 0:
            return False
        check = subprocess.run(
            [_which("unmunge") or "unmunge"],
            input=cred.stdout,
            capture_output=True,
            timeout=5,
            env=env,
        )
        return check.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


# --------------------------------------------------------------------------
# daemon bookkeeping


class _Daemon:
    """A daemon we started: name, PID file, optional Popen and log file."""

    def __init__(
        self,
        name: str,
        pidfile: Path,
        logfile: Path,
        proc: Optional[subprocess.Popen] = None,
        pid: Optional[int] = None,
    ):
        self.name = name
        self.pidfile = pidfile
        self.logfile = logfile
        self.proc = proc
        self.pid = pid

    def current_pid(self) -> Optional[int]:
        pid = _read_pid(self.pidfile)
        if pid is None:
            pid = self.pid or (self.proc.pid if self.proc else None)
        return pid

    def has_exited(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is not None
        pid = self.current_pid()
        return pid is None or not _pid_alive(pid)

    def stop(self, timeout: float = 15.0) -> None:
        pid = self.current_pid()
        # Only signal a PID that belongs to what we started: the PID file
        # normally names it; if it was overwritten by someone else, fall back
        # to the PID recorded at start-up (munged) or our Popen child.
        started = self.pid or (self.proc.pid if self.proc else None)
        if started is not None and pid != started:
            pid = started
        if pid is not None and _pid_alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if self.proc is not None and self.proc.pid == pid:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        self.proc.wait(timeout=0.1)
                if not _pid_alive(pid):
                    break
                time.sleep(0.1)
            else:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                time.sleep(0.2)
        if self.proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=5)


# --------------------------------------------------------------------------
# configuration


def _write_config(
    conf_dir: Path,
    state: Path,
    spool: Path,
    logs: Path,
    run: Path,
    ctld_port: int,
    slurmd_port: int,
    cpus: int,
    real_memory: int,
) -> Path:
    conf = conf_dir / "slurm.conf"
    conf.write_text(
        f"""{MARKER}
ClusterName=localcluster
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# squeue-based status checks need finished jobs to stay visible a while
MinJobAge=300
ReturnToService=2
# Trust the node sizes below even if the machine is smaller (tests only)
SlurmdParameters=config_overrides
StateSaveLocation={state}
SlurmdSpoolDir={spool}
SlurmctldPidFile={run}/slurmctld.pid
SlurmdPidFile={run}/slurmd.pid
SlurmctldLogFile={logs}/slurmctld.log
SlurmdLogFile={logs}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
GresTypes=gpu
NodeName={NODE} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory} Gres=gpu:1 State=UNKNOWN
PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
    )
    # A GPU needs a device file or the node is drained; /dev/null stands in.
    (conf_dir / "gres.conf").write_text(
        f"{MARKER}\nNodeName={NODE} Name=gpu File=/dev/null\n"
    )
    return conf


def _is_ours(path: Path) -> bool:
    try:
        with open(path) as fh:
            return fh.readline().rstrip("\n") == MARKER
    except OSError:
        return False


@contextlib.contextmanager
def _conf_dir_lock(conf_dir: Path, timeout: float) -> Iterator[None]:
    """Hold an exclusive flock on ``conf_dir`` while a cluster uses it."""
    import fcntl

    conf_dir.mkdir(parents=True, exist_ok=True)
    fh = open(conf_dir / ".local_slurm.lock", "w")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SlurmStartError(
                        f"another local test cluster held {conf_dir} for "
                        f"{timeout:.0f} s (lock {fh.name})"
                    ) from None
                time.sleep(0.5)
        yield
    finally:
        fh.close()  # releases the lock


# --------------------------------------------------------------------------
# munge


def _prepare_munge(runuser: str, env: Dict[str, str]) -> None:
    import grp
    import pwd

    try:
        pw = pwd.getpwnam("munge")
    except KeyError as exc:
        raise SlurmUnavailable("no 'munge' user (is the munge package installed?)") from exc
    gid = pw.pw_gid
    with contextlib.suppress(KeyError):
        gid = grp.getgrnam("munge").gr_gid
    for path, mode in MUNGE_DIRS.items():
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, pw.pw_uid, gid)
        os.chmod(path, mode)
    if not MUNGE_KEY.exists():
        mungekey = _which("mungekey")
        if mungekey is None:
            raise SlurmUnavailable(f"{MUNGE_KEY} missing and no mungekey to create it")
        res = subprocess.run(
            [runuser, "-u", "munge", "--", mungekey, "--create", "--keyfile", str(MUNGE_KEY)],
            capture_output=True,
            text=True,
            env=env,
        )
        if res.returncode != 0:
            raise SlurmStartError(f"mungekey --create failed: {res.stderr.strip()}")


def _start_munged(cmds: Dict[str, str], env: Dict[str, str], logs: Path) -> _Daemon:
    _prepare_munge(cmds["runuser"], env)
    log = Path("/var/log/munge/munged.log")
    # A PID file left by a dead munged would make us signal a recycled PID.
    if MUNGE_PIDFILE.exists():
        old = _read_pid(MUNGE_PIDFILE)
        if old is None or not _pid_alive(old):
            MUNGE_PIDFILE.unlink()
    # -F keeps munged in the foreground under runuser, which waits for it:
    # the PID file names munged itself, and once it is stopped runuser exits
    # and is reaped here (a forked-off daemon would stay a zombie in
    # containers whose init does not reap orphans).
    out = open(logs / "munged.stdout", "ab")
    try:
        proc = subprocess.Popen(
            [
                cmds["runuser"], "-u", "munge", "--",
                cmds["munged"], "-F", f"--pid-file={MUNGE_PIDFILE}",
            ],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    finally:
        out.close()
    deadline = time.monotonic() + 10
    pid = None
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SlurmStartError(
                f"munged exited at start-up (rc={proc.returncode}):\n{_tail(log)}"
            )
        pid = _read_pid(MUNGE_PIDFILE)
        if pid is not None and _pid_alive(pid) and _munge_works(env):
            return _Daemon("munged", MUNGE_PIDFILE, log, proc=proc, pid=pid)
        time.sleep(0.1)
    daemon = _Daemon("munged", MUNGE_PIDFILE, log, proc=proc, pid=pid)
    daemon.stop()
    raise SlurmStartError(f"munged started but `munge -n | unmunge` fails:\n{_tail(log)}")


# --------------------------------------------------------------------------
# the context manager


def _diagnostics(daemons: List[_Daemon], env: Dict[str, str]) -> str:
    parts = []
    for d in daemons:
        state = "exited" if d.has_exited() else "running"
        parts.append(f"--- {d.name} ({state}), last lines of {d.logfile}:\n{_tail(d.logfile)}")
    with contextlib.suppress(Exception):
        res = subprocess.run(
            [_which("scontrol") or "scontrol", "show", "node", NODE],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
        )
        parts.append("--- scontrol show node:\n" + (res.stdout or res.stderr))
    return "\n".join(parts)


def _cancel_all_jobs(env: Dict[str, str]) -> None:
    """Cancel jobs still queued/running on this private cluster."""
    with contextlib.suppress(Exception):
        res = subprocess.run(
            [_which("squeue") or "squeue", "-h", "-o", "%i"],
            capture_output=True,
            text=True,
            env=env,
            timeout=10,
        )
        ids = res.stdout.split()
        if res.returncode == 0 and ids:
            subprocess.run(
                [_which("scancel") or "scancel", *ids],
                capture_output=True,
                env=env,
                timeout=10,
            )
            time.sleep(1)


@contextlib.contextmanager
def local_slurm_cluster(
    workdir: Path,
    *,
    cpus: int = 2,
    real_memory: int = 16000,
    timeout: float = 30.0,
    lock_timeout: float = 900.0,
) -> Iterator[Dict[str, str]]:
    """Run a private one-node SLURM cluster while the ``with`` block runs.

    Yields the environment variables (currently ``SLURM_CONF``, naming the
    default path anyway) that every subprocess talking to this cluster
    (snakemake, sbatch, squeue, ...) should get; merge them into a copy of
    ``os.environ``.

    Raises :class:`SlurmUnavailable` when SLURM cannot run here at all and
    :class:`SlurmStartError` when the daemons do not come up within
    ``timeout`` seconds (the message holds the tails of their logs).
    Another cluster of this module running at the same time (another test
    session) is waited for up to ``lock_timeout`` seconds.
    """
    cmds = _check_available()
    conf_dir = CONF_DIR
    workdir = Path(workdir).resolve()
    state, logs, run = (workdir / d for d in ("state", "log", "run"))
    for d in (state, logs, run):
        d.mkdir(parents=True, exist_ok=True)
    with _conf_dir_lock(conf_dir, lock_timeout):
        foreign = [
            p
            for p in (conf_dir / "slurm.conf", conf_dir / "gres.conf")
            if p.exists() and not _is_ours(p)
        ]
        if foreign:
            raise SlurmUnavailable(
                f"{', '.join(map(str, foreign))} belongs to a real SLURM "
                "installation; not overwriting it for a test cluster"
            )
        yield from _run_cluster(
            cmds, conf_dir, workdir, state, logs, run, cpus, real_memory, timeout
        )


def _run_cluster(
    cmds: Dict[str, str],
    conf_dir: Path,
    workdir: Path,
    state: Path,
    logs: Path,
    run: Path,
    cpus: int,
    real_memory: int,
    timeout: float,
) -> Iterator[Dict[str, str]]:
    # slurmd puts per-step unix sockets in its spool dir; sun_path holds 108
    # bytes, so keep that directory short.
    spool = workdir / "spool"
    own_spool = None
    if len(str(spool)) > 50:
        own_spool = spool = Path(tempfile.mkdtemp(prefix="slurmd-"))
    spool.mkdir(parents=True, exist_ok=True)

    conf = _write_config(
        conf_dir,
        state,
        spool,
        logs,
        run,
        ctld_port=_free_port(),
        slurmd_port=_free_port(),
        cpus=cpus,
        real_memory=real_memory,
    )
    cluster_env = {"SLURM_CONF": str(conf)}
    env = {
        k: v
        for k, v in os.environ.items()
        # never let an outer allocation's variables leak into our daemons
        if not k.startswith(("SLURM_", "SBATCH_", "SALLOC_", "SRUN_"))
    }
    env["PATH"] = _search_path()
    env.update(cluster_env)

    daemons: List[_Daemon] = []  # in start order; stopped in reverse
    try:
        if not _munge_works(env):
            daemons.append(_start_munged(cmds, env, logs))

        for name, args in (
            # -D: stay in the foreground so we own the process; -c: clean
            # start, forget jobs of an earlier run in the same workdir.
            ("slurmctld", [cmds["slurmctld"], "-D", "-c", "-f", str(conf)]),
            ("slurmd", [cmds["slurmd"], "-D", "-N", NODE, "-f", str(conf)]),
        ):
            pidfile = run / f"{name}.pid"
            with contextlib.suppress(FileNotFoundError):
                pidfile.unlink()
            out = open(logs / f"{name}.stdout", "ab")
            try:
                proc = subprocess.Popen(
                    args,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            finally:
                out.close()
            daemons.append(_Daemon(name, pidfile, logs / f"{name}.log", proc=proc))

        deadline = time.monotonic() + timeout
        last = ""
        while True:
            dead = [d.name for d in daemons if d.has_exited()]
            if dead:
                raise SlurmStartError(
                    f"{', '.join(dead)} exited during start-up\n" + _diagnostics(daemons, env)
                )
            res = subprocess.run(
                [cmds["sinfo"], "-h", "-N", "-o", "%t"],
                capture_output=True,
                text=True,
                env=env,
                timeout=15,
            )
            last = (res.stdout or res.stderr).strip()
            if res.returncode == 0 and last == "idle":
                break
            if time.monotonic() > deadline:
                raise SlurmStartError(
                    f"node not idle after {timeout:.0f} s (sinfo says {last!r})\n"
                    + _diagnostics(daemons, env)
                )
            time.sleep(0.2)

        yield dict(cluster_env)
    finally:
        if any(d.name == "slurmctld" and not d.has_exited() for d in daemons):
            _cancel_all_jobs(env)
        for d in reversed(daemons):
            d.stop()
        if own_spool is not None:
            shutil.rmtree(own_spool, ignore_errors=True)
        for name in ("slurm.conf", "gres.conf"):
            path = conf_dir / name
            if _is_ours(path):
                with contextlib.suppress(OSError):
                    path.unlink()


if __name__ == "__main__":  # manual check: python tests/local_slurm.py
    import sys

    with tempfile.TemporaryDirectory(prefix="slurm-") as tmp:
        t0 = time.monotonic()
        try:
            with local_slurm_cluster(Path(tmp)) as extra_env:
                print(f"cluster up in {time.monotonic() - t0:.1f} s: {extra_env}")
                full = {**os.environ, **extra_env}
                subprocess.run(["sinfo"], env=full, check=False)
                subprocess.run(
                    ["srun", "--gpus=1", "sh", "-c", "echo job $SLURM_JOB_ID on $(hostname)"],
                    env=full,
                    check=False,
                )
        except SlurmUnavailable as exc:
            print(f"SLURM unavailable: {exc}")
            sys.exit(0)
