"""A real single-node SLURM on 127.0.0.1: dask-jobqueue workers are SLURM jobs; results equal a ``local`` run.

The session fixture starts munged, slurmctld and slurmd (Debian ``slurm-wlm`` and
``munge``, installed by ``.ci/run``) in a private temporary folder: own munge key
and socket, ports picked free at start and bound to 127.0.0.1 only
(``CommunicationParameters=NoCtldInAddrAny,NoInAddrAny``), no cgroups
(``proctrack/linuxproc``, ``task/none``). Every wait is bounded polling; the
daemons are stopped at teardown whatever happened. Where they cannot start (not
installed, not root, a container that forbids them) the tests skip with the
daemon's own log lines as the reason.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import run_test_stages as rts
from petcohort.engine import cluster as cl
from petcohort.engine import cluster_jobs as cj
from petcohort.engine.errors import ClusterError
from petcohort.pipelines.run import run_cohort

pytestmark = pytest.mark.slow

HERE = Path(__file__).resolve().parent
BINARIES = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "sinfo", "scancel")
PARTITION = "pctest"            # the default partition: any account
RESTRICTED = "pcrestricted"     # AllowAccounts=pcallowed: a job of another account can never start
NODE = "localhost"
DAEMON_START_S = 60.0           # bound for munged + slurmctld + slurmd to be up and the node idle
JOBS_GONE_S = 60.0              # bound for cancelled jobs to leave the queue
PORT_ATTEMPTS = 3               # a port picked free can be taken before the daemon binds it


def _poll(pred: Callable[[], bool], timeout_s: float, interval_s: float = 0.2) -> bool:
    """True as soon as ``pred()`` holds, False once ``timeout_s`` has passed (bounded polling)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval_s)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, n: int = 12) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"({path.name} not written)"
    return "\n".join(lines[-n:]) or f"({path.name} empty)"


@dataclass
class SlurmHost:
    """A running single-node SLURM: its folder, config file and daemon processes."""

    root: Path
    conf: Path
    env: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)

    def cmd(self, *args: str, timeout_s: float = 15.0) -> subprocess.CompletedProcess:
        return subprocess.run(list(args), env=self.env, capture_output=True, text=True, timeout=timeout_s,
                              check=False)

    def log(self, name: str) -> Path:
        return self.root / "log" / f"{name}.log"

    def dead(self) -> str | None:
        """The first daemon that exited, with its log tail; None while all run."""
        for name, p in self.procs.items():
            if p.poll() is not None:
                return f"{name} exited with status {p.returncode}:\n{_tail(self.log(name))}"
        return None

    def queue(self) -> list[str]:
        res = self.cmd("squeue", "-h", "-o", "%i")
        return res.stdout.split() if res.returncode == 0 else ["<squeue failed>"]

    def cancel_all(self) -> bool:
        """Cancel every job of this cluster and wait (bounded) until the queue is empty."""
        jobs = self.queue()
        if jobs and jobs != ["<squeue failed>"]:
            self.cmd("scancel", *jobs)
        return _poll(lambda: not self.queue(), JOBS_GONE_S)

    def stop(self) -> None:
        """Jobs first (their slurmstepd would outlive slurmd), then slurmd, slurmctld, munged."""
        if self.procs.get("slurmctld") is not None and self.procs["slurmctld"].poll() is None:
            self.cancel_all()
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                os.killpg(p.pid, signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait(timeout=5)


def _slurm_conf(root: Path, ctld_port: int, slurmd_port: int) -> str:
    """slurm.conf(5) for one node without cgroups, accounting or MPI, everything under ``root``."""
    return f"""\
ClusterName=petcohorttest
SlurmctldHost={NODE}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.sock
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
ReturnToService=2
SlurmdParameters=config_overrides
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
NodeName={NODE} NodeAddr=127.0.0.1 CPUs=2 RealMemory=2048 State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
PartitionName={RESTRICTED} Nodes={NODE} MaxTime=INFINITE State=UP AllowAccounts=pcallowed
"""


def _spawn(host: SlurmHost, name: str, args: list[str]) -> None:
    out = open(host.log(name + ".out"), "wb")  # noqa: SIM115 - the daemon owns it until it exits
    host.procs[name] = subprocess.Popen(args, env=host.env, stdout=out, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
    out.close()


def _start_munge(host: SlurmHost) -> str | None:
    d = host.root / "munge"
    d.mkdir(mode=0o700)
    key = d / "munge.key"
    key.write_bytes(secrets.token_bytes(1024))  # munged(8): the key is any random 32..1024 bytes
    key.chmod(0o400)
    _spawn(host, "munged", ["munged", "-F", "--force", f"--socket={d}/munge.sock", f"--key-file={key}",
                            f"--log-file={host.log('munged')}", f"--pid-file={d}/munged.pid",
                            f"--seed-file={d}/munged.seed"])
    if not _poll(lambda: (d / "munge.sock").exists() or host.dead() is not None, DAEMON_START_S):
        return f"munged did not create its socket within {DAEMON_START_S:g} s:\n{_tail(host.log('munged'))}"
    return host.dead()


def _start_slurm(host: SlurmHost) -> str | None:
    """slurmctld + slurmd in the foreground (-D); None once the node is idle, else why not."""
    for attempt in range(PORT_ATTEMPTS):
        host.conf.write_text(_slurm_conf(host.root, _free_port(), _free_port()))
        _spawn(host, "slurmctld", ["slurmctld", "-D", "-f", str(host.conf)])
        _spawn(host, "slurmd", ["slurmd", "-D", "-N", NODE, "-f", str(host.conf)])

        def node_idle() -> bool:
            if host.dead() is not None:
                return True
            res = host.cmd("sinfo", "-h", "-n", NODE, "-o", "%T", timeout_s=10)
            return res.returncode == 0 and res.stdout.strip() == "idle"

        up = _poll(node_idle, DAEMON_START_S)
        why = host.dead()
        if up and why is None:
            return None
        if why is None:
            return (f"node {NODE} not idle within {DAEMON_START_S:g} s:\n{_tail(host.log('slurmctld'))}\n"
                    f"{_tail(host.log('slurmd'))}")
        taken = "Address already in use" in (_tail(host.log("slurmctld"), 40) + _tail(host.log("slurmd"), 40))
        for name in ("slurmd", "slurmctld"):
            p = host.procs.pop(name)
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        if not taken or attempt == PORT_ATTEMPTS - 1:
            return why
    return "unreachable"


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmHost]:
    """A single-node SLURM cluster for the session; ``SLURM_CONF`` points the client commands at it."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        pytest.skip(f"SLURM/munge not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to launch jobs (the test does not use sudo)")
    pytest.importorskip("dask_jobqueue", reason="dask-jobqueue is not installed (pip install petcohort[slurm])")
    root = Path(tempfile.mkdtemp(prefix="petcohort-slurm-"))  # 0700: munged refuses group/world-writable dirs
    for sub in ("log", "state", "spool", "jobs"):
        (root / sub).mkdir()
    conf = root / "slurm.conf"
    env = {**os.environ, "SLURM_CONF": str(conf)}
    host = SlurmHost(root, conf, env)
    mp = pytest.MonkeyPatch()
    try:
        why = _start_munge(host) or _start_slurm(host)
        if why is not None:
            pytest.skip(f"the SLURM daemons cannot start here: {why}")
        mp.setenv("SLURM_CONF", str(conf))  # sbatch/squeue/scancel run by dask-jobqueue and petcohort
        yield host
    finally:
        mp.undo()
        host.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(autouse=True)
def stages():
    with rts.registered():
        yield


@pytest.fixture
def no_jobs_left(slurm):
    """Each test starts and ends with an empty queue (a job left over would take a CPU)."""
    assert slurm.cancel_all(), f"jobs left in the queue: {slurm.queue()}"
    yield slurm
    assert slurm.cancel_all(), f"jobs still queued {JOBS_GONE_S:g} s after cancelling: {slurm.queue()}"


def _slurm_yaml(path: Path, slurm: SlurmHost, **extra: object) -> Path:
    """A cluster.yaml of kind slurm whose workers are jobs on the test node, on 127.0.0.1 only."""
    import yaml

    doc = {"kind": "slurm", "cores": 1, "processes": 1, "memory": "1GiB", "walltime": "00:10:00",
           "queue": PARTITION, "account": "pclab", "n_workers": 2, "interface": "lo",
           "scheduler_host": "127.0.0.1", "dashboard_address": None,
           # job output in the test folder (sbatch's default is the submit directory, the repository)
           "job_extra": [f"--output={slurm.root}/jobs/%j.out", f"--chdir={slurm.root}/jobs"],
           # the job runs the same interpreter; the test stages must be importable by the worker
           "job_script_prologue": [f"export PYTHONPATH={HERE}"],
           "submit_timeout_s": 30, "start_timeout_s": 120}
    doc.update(extra)
    path.write_text(yaml.safe_dump(doc))
    return path


def test_slurm_cohort_matches_local(tmp_path, no_jobs_left):
    slurm = no_jobs_left
    config = cl.load_cluster_config(_slurm_yaml(tmp_path / "slurm.yaml", slurm))
    store = rts.make_cohort(tmp_path / "store", bad=("P-0000000001-T0",))
    with cl.connect(config) as session:
        assert session.cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        session.client.wait_for_workers(2, timeout=120)
        job_of = session.client.run(lambda: os.environ.get("SLURM_JOB_ID"))
        assert sorted(job_of.values()) == cj._job_ids(session.cluster)  # each worker is one of our jobs
        assert all(addr.startswith("tcp://127.0.0.1:") for addr in job_of)
        names = {w["name"] for w in session.client.scheduler_info()["workers"].values()}
        s = run_cohort(store.url, client=session.client, stages=list(rts.NAMES))
    assert len(s.done) == 25 and len(s.failed) == 8
    assert {r["worker"] for r in store.stage_records().values()} <= names
    ref = rts.make_cohort(tmp_path / "ref", bad=("P-0000000001-T0",))
    local = tmp_path / "local.yaml"
    local.write_text("kind: local\nn_workers: 1\nprocesses: false\ndashboard_address: null\n")
    run_cohort(ref.url, cluster_file=local, stages=list(rts.NAMES))
    assert rts.results(store) == rts.results(ref)


def test_unknown_partition_is_refused_before_any_job(tmp_path, no_jobs_left):
    config = cl.load_cluster_config(_slurm_yaml(tmp_path / "c.yaml", no_jobs_left, queue="nosuchpartition"))
    with pytest.raises(ClusterError) as exc:
        cl.connect(config)
    assert exc.value.reason == "CLUSTER_SUBMIT_FAILED"
    assert "Invalid partition name" in str(exc.value)
    assert no_jobs_left.queue() == []  # refused by `sbatch --test-only`: nothing was submitted


def test_account_the_partition_refuses_fails_fast(tmp_path, no_jobs_left):
    # Without slurmdbd an unknown account is only a label; a partition's AllowAccounts is what this
    # controller enforces: the job is queued, pending "AccountNotAllowed" for ever.
    config = cl.load_cluster_config(_slurm_yaml(tmp_path / "c.yaml", no_jobs_left, queue=RESTRICTED,
                                                account="nosuchaccount", start_timeout_s=600))
    with pytest.raises(ClusterError) as exc:
        cl.connect(config)
    # read from the job's pending reason (AccountNotAllowed), not the 600 s deadline (CLUSTER_NO_WORKERS)
    assert exc.value.reason == "CLUSTER_JOB_BLOCKED"
    assert "account" in str(exc.value) and RESTRICTED in str(exc.value)


def test_job_that_never_starts_times_out(tmp_path, no_jobs_left):
    # A held job (squeue reason JobHeldUser) could be released by hand, so only the deadline ends the wait.
    config = cl.load_cluster_config(_slurm_yaml(tmp_path / "c.yaml", no_jobs_left, n_workers=1,
                                                job_extra=[f"--output={no_jobs_left.root}/jobs/%j.out", "--hold"],
                                                start_timeout_s=3))
    with pytest.raises(ClusterError) as exc:
        cl.connect(config)
    assert exc.value.reason == "CLUSTER_NO_WORKERS" and "3 s" in str(exc.value)
