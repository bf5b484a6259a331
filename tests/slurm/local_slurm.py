"""Start and stop a private single-node SLURM cluster for tests.

Not a test module: ``tests/conftest.py`` turns :func:`local_slurm_cluster` into the
session fixture ``slurm_env``, the environment under which the tests run ``snakemake`` (or
``sbatch``) as subprocesses. Install the programs with ``tests/slurm/install_slurm.sh``.

The cluster (Debian slurm-wlm 22.05 + munge):

* slurm.conf + gres.conf in /etc/slurm, the path compiled into Slurm (the plugin's job step
  strips ``SLURM_*`` variables before it calls ``srun``, so a private ``SLURM_CONF`` would not
  reach it). The files carry a marker line; a slurm.conf without it (a real installation) is
  never overwritten, ours are removed on exit, and an flock on /etc/slurm/.local_slurm.lock
  makes a second test session wait its turn;
* state, spool, PID and log files in the caller's ``workdir``; ports picked free at start-up;
* one node ``localhost`` with 2 CPUs, 16000 MB and one fake GPU (``File=/dev/null``) so that
  ``--gpus=1`` jobs can be scheduled on a CPU machine; one partition ``debug``; no accounting;
* munge: a running munged is reused, otherwise one is started as ``munge`` and stopped on exit.

Daemons are stopped by the PID of the process we started, never by name.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, Iterator, List, Optional

__all__ = ["SlurmUnavailable", "SlurmStartError", "local_slurm_cluster", "client_env"]

CONF_DIR = Path("/etc/slurm")
MARKER = "# written by tests/slurm/local_slurm.py (private test cluster)"
NODE, PARTITION = "localhost", "debug"
MUNGE_KEY, MUNGE_PIDFILE = Path("/etc/munge/munge.key"), Path("/run/munge/munged.pid")
MUNGE_DIRS = {"/etc/munge": 0o700, "/run/munge": 0o755, "/var/lib/munge": 0o711, "/var/log/munge": 0o700}
COMMANDS = ("slurmctld", "slurmd", "munged", "mungekey", "munge", "unmunge", "runuser",
            "sinfo", "squeue", "scancel", "scontrol", "sbatch")
PATH = os.pathsep.join(dict.fromkeys([*os.environ.get("PATH", "").split(os.pathsep),
                                      "/usr/sbin", "/sbin", "/usr/bin", "/bin"]))  # daemons: /usr/sbin
SLURM_PREFIXES = ("SLURM_", "SBATCH_", "SALLOC_", "SRUN_")

SLURM_CONF = MARKER + """
ClusterName=localcluster
SlurmctldHost={node}(127.0.0.1)
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
# squeue-based status checks need finished jobs to stay visible a while, and the
# tests read finished jobs back with scontrol after a run of up to 20 min (loaded cores)
MinJobAge=3600
ReturnToService=2
# Trust the node sizes below even if the machine is smaller (tests only)
SlurmdParameters=config_overrides
StateSaveLocation={work}/state
SlurmdSpoolDir={spool}
SlurmctldPidFile={work}/run/slurmctld.pid
SlurmdPidFile={work}/run/slurmd.pid
SlurmctldLogFile={work}/log/slurmctld.log
SlurmdLogFile={work}/log/slurmd.log
SlurmctldTimeout=30
SlurmdTimeout=60
InactiveLimit=0
KillWait=5
Waittime=0
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={real_memory} Gres=gpu:1 State=UNKNOWN
PartitionName={partition} Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""
# A GPU needs a device file or the node is drained; /dev/null stands in.
GRES_CONF = MARKER + "\nNodeName={node} Name=gpu File=/dev/null\n"


class SlurmUnavailable(Exception):
    """SLURM cannot run here at all (programs missing, not root): tests skip with this reason."""


class SlurmStartError(RuntimeError):
    """SLURM is installed but the cluster did not come up; the message holds the log tails."""


def client_env(extra: Dict[str, str] | None = None) -> Dict[str, str]:
    """os.environ without an outer allocation's SLURM variables, with the daemons' folders and
    this interpreter's (jobs rerun snakemake) on PATH, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SLURM_PREFIXES)}
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), PATH])
    return {**env, **(extra or {})}


def _run(args: List[str], env: Dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(args, env=env, capture_output=True, timeout=kw.pop("timeout", 15), **kw)


def _alive(pid: Optional[int]) -> bool:
    """True while the process exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] not in "ZX"
    except (OSError, IndexError, TypeError):
        return False


def _read_pid(pidfile: Path) -> Optional[int]:
    with contextlib.suppress(OSError, ValueError, IndexError):
        return int(pidfile.read_text().split()[0])
    return None


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join("  " + line for line in path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"  <cannot read {path}: {exc}>"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_works(env: Dict[str, str]) -> bool:
    with contextlib.suppress(OSError, subprocess.TimeoutExpired):
        cred = _run(["munge", "-n"], env, timeout=5)
        return cred.returncode == 0 and _run(["unmunge"], env, input=cred.stdout, timeout=5).returncode == 0
    return False


class _Daemon:
    """A daemon started in the foreground by us; `pid` is the daemon itself (for munged, the
    child of runuser, read from its PID file)."""

    def __init__(self, name: str, args: List[str], env: Dict[str, str], log: Path):
        self.name, self.log = name, log
        with open(log.with_suffix(".stdout"), "ab") as out:
            self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, start_new_session=True)
        self.pid: Optional[int] = self.proc.pid

    def exited(self) -> bool:
        return self.proc.poll() is not None

    def stop(self, timeout: float = 15.0) -> None:
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if _alive(self.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, sig)
            deadline = time.monotonic() + timeout
            while _alive(self.pid) and time.monotonic() < deadline:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.proc.wait(timeout=0.1)
            if not _alive(self.pid):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=5)  # runuser exits once munged has


def _start_munged(env: Dict[str, str], logs: Path) -> _Daemon:
    import grp
    import pwd

    try:
        pw = pwd.getpwnam("munge")
    except KeyError as exc:
        raise SlurmUnavailable("no 'munge' user (is the munge package installed?)") from exc
    gid = pw.pw_gid
    with contextlib.suppress(KeyError):
        gid = grp.getgrnam("munge").gr_gid
    for path, mode in MUNGE_DIRS.items():  # munged insists on owning these
        Path(path).mkdir(parents=True, exist_ok=True)
        os.chown(path, pw.pw_uid, gid)
        os.chmod(path, mode)
    if not MUNGE_KEY.exists():
        res = _run(["runuser", "-u", "munge", "--", "mungekey", "--create", "--keyfile", str(MUNGE_KEY)], env)
        if res.returncode != 0:
            raise SlurmStartError(f"mungekey --create failed: {res.stderr.decode().strip()}")
    if not _alive(_read_pid(MUNGE_PIDFILE)):
        MUNGE_PIDFILE.unlink(missing_ok=True)  # a dead munged's PID could be recycled
    # -F: munged stays the child of runuser, which is reaped here once munged stops.
    daemon = _Daemon("munged", ["runuser", "-u", "munge", "--", "munged", "-F", f"--pid-file={MUNGE_PIDFILE}"],
                     env, logs / "munged.log")
    daemon.log, daemon.pid = Path("/var/log/munge/munged.log"), None
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and not daemon.exited():
        daemon.pid = _read_pid(MUNGE_PIDFILE)
        if _alive(daemon.pid) and _munge_works(env):
            return daemon
        time.sleep(0.1)
    daemon.pid = daemon.pid if _alive(daemon.pid) else daemon.proc.pid
    daemon.stop()
    raise SlurmStartError(f"munged did not come up (`munge -n | unmunge` fails):\n{_tail(daemon.log)}")


@contextlib.contextmanager
def _own_conf_dir(lock_timeout: float) -> Iterator[None]:
    """Hold /etc/slurm (an flock) while our cluster uses it; refuse a real installation's."""
    CONF_DIR.mkdir(parents=True, exist_ok=True)
    with open(CONF_DIR / ".local_slurm.lock", "w") as lock:
        deadline = time.monotonic() + lock_timeout
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise SlurmStartError(f"another local test cluster held {CONF_DIR} for "
                                          f"{lock_timeout:.0f} s (lock {lock.name})") from None
                time.sleep(0.5)
        files = [CONF_DIR / "slurm.conf", CONF_DIR / "gres.conf"]
        foreign = [str(p) for p in files if p.exists() and p.read_text().split("\n", 1)[0] != MARKER]
        if foreign:
            raise SlurmUnavailable(f"{', '.join(foreign)} belongs to a real SLURM installation; "
                                   "not overwriting it for a test cluster")
        try:
            yield
        finally:
            for p in files:
                p.unlink(missing_ok=True)  # ours (checked above): later runs must not wait on it


def _wait_idle(daemons: List[_Daemon], env: Dict[str, str], timeout: float) -> None:
    deadline, said = time.monotonic() + timeout, ""
    while True:
        dead = [d.name for d in daemons if d.exited()]
        if dead or time.monotonic() > deadline:
            why = f"{', '.join(dead)} exited during start-up" if dead else \
                f"node not idle after {timeout:.0f} s (sinfo says {said!r})"
            logs = [f"--- {d.name}, last lines of {d.log}:\n{_tail(d.log)}" for d in daemons]
            with contextlib.suppress(Exception):
                logs.append(_run(["scontrol", "show", "node", NODE], env, text=True).stdout)
            raise SlurmStartError("\n".join([why, *logs]))
        res = _run(["sinfo", "-h", "-N", "-o", "%t"], env, text=True)
        said = (res.stdout or res.stderr).strip()
        if res.returncode == 0 and said == "idle":
            return
        time.sleep(0.2)


@contextlib.contextmanager
def local_slurm_cluster(workdir: Path, *, cpus: int = 2, real_memory: int = 16000, timeout: float = 30.0,
                        lock_timeout: float = 900.0) -> Iterator[Dict[str, str]]:
    """Run a private one-node SLURM cluster while the ``with`` block runs; yield the
    environment for its clients (:func:`client_env` with ``SLURM_CONF``).

    Raises :class:`SlurmUnavailable` when SLURM cannot run here at all and
    :class:`SlurmStartError` when the daemons do not come up within ``timeout`` seconds. Another
    test session's cluster is waited for up to ``lock_timeout`` seconds.
    """
    missing = [c for c in COMMANDS if shutil.which(c, path=PATH) is None]
    if missing:
        raise SlurmUnavailable(f"SLURM/munge programs not found: {', '.join(missing)} "
                               "(run tests/slurm/install_slurm.sh as root)")
    if os.geteuid() != 0:
        raise SlurmUnavailable("a local SLURM cluster needs root (munged runs as 'munge', slurmd as root)")
    work = Path(workdir).resolve()
    for d in ("state", "log", "run"):
        (work / d).mkdir(parents=True, exist_ok=True)
    # slurmd's per-step unix sockets live in its spool folder: sun_path holds 108 bytes
    spool = work / "spool" if len(str(work)) < 45 else Path(tempfile.mkdtemp(prefix="slurmd-"))
    spool.mkdir(parents=True, exist_ok=True)
    env = client_env({"SLURM_CONF": str(CONF_DIR / "slurm.conf")})
    daemons: List[_Daemon] = []  # in start order; stopped in reverse
    with _own_conf_dir(lock_timeout):
        try:
            facts = dict(node=NODE, partition=PARTITION, work=work, spool=spool, cpus=cpus,
                         real_memory=real_memory, ctld_port=_free_port(), slurmd_port=_free_port())
            (CONF_DIR / "slurm.conf").write_text(SLURM_CONF.format(**facts))
            (CONF_DIR / "gres.conf").write_text(GRES_CONF.format(**facts))
            if not _munge_works(env):
                daemons.append(_start_munged(env, work / "log"))
            conf = str(CONF_DIR / "slurm.conf")
            # -D: in the foreground, so the PID we hold is the daemon's; -c: forget earlier jobs
            for name, args in (("slurmctld", ["slurmctld", "-D", "-c", "-f", conf]),
                               ("slurmd", ["slurmd", "-D", "-N", NODE, "-f", conf])):
                daemons.append(_Daemon(name, args, env, work / "log" / f"{name}.log"))
            _wait_idle(daemons, env, timeout)
            yield env
        finally:
            if any(d.name == "slurmctld" and not d.exited() for d in daemons):
                with contextlib.suppress(Exception):  # cancel what is still queued or running
                    ids = _run(["squeue", "-h", "-o", "%i"], env, text=True).stdout.split()
                    if ids:
                        _run(["scancel", *ids], env)
                        time.sleep(1)
            for d in reversed(daemons):
                d.stop()
            if spool.parent != work:
                shutil.rmtree(spool, ignore_errors=True)


if __name__ == "__main__":  # manual check: python tests/slurm/local_slurm.py
    with tempfile.TemporaryDirectory(prefix="slurm-") as tmp:
        t0 = time.monotonic()
        try:
            with local_slurm_cluster(Path(tmp)) as env:
                print(f"cluster up in {time.monotonic() - t0:.1f} s")
                subprocess.run(["sinfo"], env=env, check=False)
                subprocess.run(["srun", "--gpus=1", "sh", "-c", "echo job $SLURM_JOB_ID on $(hostname)"], env=env,
                               check=False)
        except SlurmUnavailable as exc:
            print(f"SLURM unavailable: {exc}")
