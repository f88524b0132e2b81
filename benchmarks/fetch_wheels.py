"""Download the wheels the lent GPU machine lacks, for its Python (CPython 3.12, manylinux x86_64), into ``.whl/``.

``make gpu-wheels`` (or ``python -m benchmarks.fetch_wheels [--dest .whl]``). The GPU machine has no package
registry; it has its own Python 3.12 and torch (2.11, CUDA 13) and most of the scientific stack (numpy, pandas,
scipy, statsmodels, matplotlib, seaborn, tqdm, PyYAML, jinja2, ...: :data:`ON_DEVICE`, its package list as read on
2026-11-17). What the study needs beyond that is the notebook runner: papermill, nbconvert, nbclient, nbformat and
the Jupyter kernel (ipykernel) with everything they depend on. :data:`NAMES` names each of them, :func:`wheels`
pins each at its version in ``requirements.lock`` (never what is installed or what a registry serves), and each is
downloaded with ``--no-deps``, so that nothing else comes along (torch never does). The folder is ignored by git
and travels with the device call (``carry: [".whl"]``); its size counts towards the 64 MiB that a call may carry,
so the script fails above :data:`MAX_TOTAL_BYTES`.

``tests/test_gpu_campaign.py`` checks that :data:`NAMES` is exactly what the locked notebook runner needs, minus
:data:`ON_DEVICE`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

from packaging.utils import canonicalize_name

from benchmarks.lockfile import LOCK, locked_versions

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The notebook runner the study needs: the roots of :data:`NAMES` (closed over their requirements).
ROOTS: tuple[str, ...] = ("papermill", "nbconvert", "nbclient", "nbformat", "ipykernel")

#: Every distribution the GPU machine lacks that :data:`ROOTS` need; :func:`wheels` pins them from the lock.
NAMES: tuple[str, ...] = (
    "asttokens", "beautifulsoup4", "bleach", "comm", "debugpy", "defusedxml", "entrypoints", "executing",
    "fastjsonschema", "ipykernel", "ipython", "ipython-pygments-lexers", "jedi", "jsonschema",
    "jsonschema-specifications", "jupyter-client", "jupyter-core", "jupyterlab-pygments", "matplotlib-inline",
    "mistune", "nbclient", "nbconvert", "nbformat", "nest-asyncio2", "pandocfilters", "papermill", "parso", "pexpect",
    "platformdirs", "prompt-toolkit", "ptyprocess", "pure-eval", "pyzmq", "referencing", "rpds-py", "soupsieve",
    "stack-data", "tenacity", "tinycss2", "tornado", "traitlets", "wcwidth", "webencodings",
)

#: The Python packages of the GPU machine's image (device/KINDS.md, "Python packages already there", read
#: 2026-11-17): carried only if another version were needed.
ON_DEVICE: frozenset[str] = frozenset("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build certifi
charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core cuda-pathfinder
cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools
formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize hypothesis idna
imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver
lazy-loader lightning lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe
matplotlib mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse nvidia-cusparselt-cu13
nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript
opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist
python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers
statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope
triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
""".split())

#: The GPU machine's interpreter (Python 3.12.3, as sessions saw it) and the manylinux tags its pip accepts.
PYTHON_VERSION = "3.12.3"
PLATFORMS: tuple[str, ...] = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
                              "manylinux2014_x86_64", "manylinux1_x86_64")
#: The most the wheels may take: the device call carries 64 MiB in all, the repository's files included. The wheels
#: of the locked versions took 15.1 MiB (2026-12-07); the rest of the 64 MiB is the repository's.
MAX_TOTAL_BYTES = 20 * 2**20


def wheels(lock: Path = LOCK) -> tuple[str, ...]:
    """``name==version`` of each of :data:`NAMES`, at its version in the lock (a ValueError if one has no pin)."""
    versions = locked_versions(lock)
    missing = [name for name in NAMES if canonicalize_name(name) not in versions]
    if missing:
        raise ValueError(f"{lock}: no pin for {', '.join(missing)} (run make lock)")
    return tuple(f"{name}=={versions[canonicalize_name(name)]}" for name in NAMES)


def download_command(dest: Path, python: str = sys.executable, lock: Path = LOCK) -> list[str]:
    """pip's download of :func:`wheels` for the GPU machine, each without its dependencies."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
            "--implementation", "cp", *platforms, "--dest", str(dest), *wheels(lock)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fetch_wheels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(REPO_ROOT / ".whl"), help="the wheels' folder (default: .whl)")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    try:
        command = download_command(dest)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, check=False)
    if done.returncode != 0:
        print(f"error: pip download failed (exit status {done.returncode})", file=sys.stderr)
        return done.returncode
    files = sorted(dest.glob("*.whl"))
    total = sum(f.stat().st_size for f in files)
    print(f"{len(files)} wheels in {dest}, {total / 2**20:.1f} MiB")
    if len(files) != len(NAMES):
        print(f"error: {dest} holds {len(files)} wheels, not the {len(NAMES)} of NAMES: remove the others "
              "(two versions of one package stop the install there)", file=sys.stderr)
        return 1
    if total > MAX_TOTAL_BYTES:
        print(f"error: {total / 2**20:.1f} MiB is over the {MAX_TOTAL_BYTES / 2**20:.0f} MiB left for wheels in a "
              "device call's 64 MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
