"""Installs torch into a virtual environment, its CPU build where pip finds
one, else the package index's default build.

    python tools/install_torch.py VERSION [PIP_OPTION ...]

Run with the environment's own Python (`make install-torch` runs it with
`.venv-torch/bin/python`). PyTorch publishes its CPU builds as
`torch==VERSION+cpu` on its own index, not on PyPI, where the Linux wheel
of `torch==VERSION` brings CUDA libraries (about 3 GB). So pip is first
asked, without installing anything, whether it can find the CPU build:
in a folder of wheels of pip's `find-links`, or on PyTorch's CPU index
when the options name it (`--extra-index-url
https://download.pytorch.org/whl/cpu`, passed through `make
TORCH_INDEX=...`). If it cannot, the index's default build is installed.
One line says which of the two is installed, and why.
"""

import subprocess
import sys

PREFIX = "install-torch:"


def _pip(arguments, options, quiet=False):
    """`python -m pip install ...` in this interpreter; its exit status.
    `quiet`: its output is dropped."""
    command = [sys.executable, "-m", "pip", "install", *arguments, *options]
    output = subprocess.DEVNULL if quiet else None
    result = subprocess.run(command, stdout=output, stderr=output, check=False)
    return result.returncode


def _findable(requirement, options):
    """Whether pip finds a distribution for `requirement`, asked with
    `--dry-run` (nothing is installed; at most its metadata is read)."""
    arguments = ["--dry-run", "--no-deps", requirement]
    return _pip(arguments, options, quiet=True) == 0


def choose(version, options, findable=_findable):
    """The requirement to install (`torch==VERSION+cpu` where `findable`
    says pip finds it, else `torch==VERSION`) and the line that says so."""
    cpu = f"torch=={version}+cpu"
    if findable(cpu, options):
        return cpu, f"{PREFIX} installing {cpu}, the CPU build of torch."
    default = f"torch=={version}"
    return default, (
        f"{PREFIX} no {cpu} where pip looks (find-links, TORCH_INDEX); "
        f"installing the index's {default} (on Linux with about 3 GB of CUDA "
        "libraries)."
    )


def main(argv=None):
    """Chooses, says which, and installs; returns pip's exit status."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0].startswith("-"):
        print(
            f"usage: {sys.argv[0]} VERSION [PIP_OPTION ...]. "
            f"Received: {' '.join(argv)!r}",
            file=sys.stderr,
        )
        return 2
    version, options = argv[0], argv[1:]
    requirement, line = choose(version, options)
    print(line, flush=True)
    return _pip(["--quiet", requirement], options)


if __name__ == "__main__":
    sys.exit(main())
