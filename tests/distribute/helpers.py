"""Starting, watching and killing scenario processes; comparing states."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

SCRIPT = Path(__file__).with_name("scenario.py")
REPO = SCRIPT.parents[2]
# Every scenario process ends by itself after this many seconds (SIGALRM);
# the tests wait a little less for any one phase.
LIFETIME = 240


def free_ports(count):
    """`count` distinct free TCP ports on 127.0.0.1.

    The sockets stay open until all ports are picked, so the ports are
    distinct; another program could still take one before the workers bind
    it, which makes the workers fail (and the test with them), not hang.
    """
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Processes(contextlib.AbstractContextManager):
    """Scenario processes started by one test; leftovers killed on exit."""

    def __init__(self, log_dir):
        self.log_dir = Path(log_dir)
        self.started = []

    def start(self, name, *args):
        env = dict(os.environ)
        env.pop("TF_CONFIG", None)
        env["KERAS_BACKEND"] = "tensorflow"
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        env["PYTHONPATH"] = os.pathsep.join(
            [str(REPO), env.get("PYTHONPATH", "")]
        ).rstrip(os.pathsep)
        log = open(self.log_dir / f"{name}.log", "w")
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), *map(str, args)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=REPO,
            # Its own process group, so that a kill reaches anything it
            # spawned too.
            start_new_session=True,
        )
        log.close()
        process.name = name
        self.started.append(process)
        return process

    def log(self, process, lines=30):
        text = (self.log_dir / f"{process.name}.log").read_text()
        # TensorFlow's C++ start-up chatter says nothing about failures.
        kept = [line for line in text.splitlines() if line[:5] != "I0000"]
        return "\n".join(kept[-lines:])

    def describe(self, processes):
        return "\n".join(
            f"--- {p.name} (exit status {p.poll()}):\n{self.log(p)}"
            for p in processes
        )

    def wait(self, processes, timeout):
        """Waits for every process to exit with status 0.

        Fails (killing the others) as soon as one exits with another
        status: its peers could otherwise wait for it until they time out.
        """
        deadline = time.monotonic() + timeout
        while any(p.poll() is None for p in processes):
            failed = [p for p in processes if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                self.kill(processes)
                raise AssertionError(
                    ("a scenario process failed" if failed
                     else f"still running after {timeout} s")
                    + "\n"
                    + self.describe(processes)
                )
            time.sleep(0.2)
        if any(p.returncode != 0 for p in processes):
            raise AssertionError(
                "a scenario process failed\n" + self.describe(processes)
            )

    def wait_for_files(self, paths, processes, timeout):
        """Waits until every path exists; fails if a process exits first."""
        deadline = time.monotonic() + timeout
        while not all(Path(p).exists() for p in paths):
            exited = [p for p in processes if p.poll() is not None]
            if exited or time.monotonic() > deadline:
                self.kill(processes)
                raise AssertionError(
                    f"waiting for {[str(p) for p in paths]}: "
                    + ("a process exited" if exited else f"{timeout} s passed")
                    + "\n"
                    + self.describe(processes)
                )
            time.sleep(0.2)

    @staticmethod
    def kill(processes, sig=signal.SIGKILL):
        """Sends `sig` to each live process's group and reaps it."""
        for p in processes:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, sig)
        for p in processes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(30)

    def __exit__(self, *exc):
        self.kill(self.started)
        return False


def run_scenario(tmp_path, name, *args, timeout=LIFETIME - 20):
    """Runs one scenario process to completion."""
    with Processes(tmp_path) as processes:
        process = processes.start(name, *args, "--lifetime", LIFETIME)
        processes.wait([process], timeout)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def assert_close(actual, expected, what, atol=1e-5):
    np.testing.assert_allclose(
        np.asarray(actual, dtype=np.float64),
        np.asarray(expected, dtype=np.float64),
        rtol=1e-5,
        atol=atol,
        err_msg=what,
    )


def assert_bn_state_close(actual, expected, what):
    """Every replica's copy of every BN weight equals the reference.

    `expected` holds one copy per weight (one device) or one per replica.
    """
    assert sorted(actual) == sorted(expected), what
    for name, copies in actual.items():
        reference = np.asarray(expected[name], dtype=np.float64)
        reference = np.broadcast_to(reference, np.shape(copies))
        assert_close(copies, reference, f"{what}: {name}")


def assert_training_state_close(actual, expected, what):
    """Same step, counter, schedule position, BN state and weights."""
    assert actual["iterations"] == expected["iterations"], what
    for copies, (step,) in zip(actual["renorm_step"], expected["renorm_step"]):
        assert copies == [step] * len(copies), what
    assert len(actual["clipping"]) == len(expected["clipping"]), what
    for got, want in zip(actual["clipping"], expected["clipping"]):
        assert got.keys() == want.keys(), what
        for key in want:
            assert_close(got[key], want[key], f"{what}: clipping {key}")
    assert_bn_state_close(actual["bn"], expected["bn"], what)
    assert len(actual["weights"]) == len(expected["weights"]), what
    pairs = zip(actual["weights"], expected["weights"])
    for i, (got, want) in enumerate(pairs):
        assert_close(got, want, f"{what}: weight {i}")
