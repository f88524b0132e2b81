"""Download the wheels the lent GPU machine lacks, for its Python (CPython 3.12, manylinux x86_64), into ``.whl/``.

``make gpu-wheels`` (or ``python -m benchmarks.fetch_wheels [--dest .whl]``). The GPU machine has no package
registry; it has its own Python 3.12 and torch (2.11, CUDA 13) and most of the scientific stack (numpy, pandas,
scipy, statsmodels, matplotlib, seaborn, tqdm, PyYAML, jinja2, ...: :data:`ON_DEVICE`, its package list as read on
2026-11-17). What the study needs beyond that is the notebook runner: papermill, nbconvert, nbclient, nbformat and
the Jupyter kernel (ipykernel) with everything they depend on. :data:`WHEELS` names each of them at the version
``requirements.txt`` resolves to here, and each is downloaded with ``--no-deps``, so that nothing else comes along
(torch never does). The folder is ignored by git and travels with the device call (``carry: [".whl"]``); its size
counts towards the 64 MiB that a call may carry, so the script fails above :data:`MAX_TOTAL_BYTES`.

``tests/test_gpu_campaign.py`` checks that :data:`WHEELS` is exactly what the pinned notebook runner needs, minus
:data:`ON_DEVICE`, at the versions installed from ``requirements.txt``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]

#: The notebook runner the study needs: the roots of :data:`WHEELS` (closed over their requirements).
ROOTS: tuple[str, ...] = ("papermill", "nbconvert", "nbclient", "nbformat", "ipykernel")

#: Every distribution the GPU machine lacks that :data:`ROOTS` need, at the version of this repository's venv.
WHEELS: tuple[str, ...] = (
    "asttokens==3.0.2", "beautifulsoup4==4.15.0", "bleach==6.4.0", "comm==0.2.3", "debugpy==1.8.22",
    "defusedxml==0.7.1", "entrypoints==0.4.2", "executing==2.3.0", "fastjsonschema==2.22.3", "ipykernel==7.4.0",
    "ipython==9.18.1", "ipython-pygments-lexers==1.1.1", "jedi==0.20.1", "jsonschema==4.26.0",
    "jsonschema-specifications==2025.9.1", "jupyter-client==8.10.0", "jupyter-core==5.9.1",
    "jupyterlab-pygments==0.3.0", "matplotlib-inline==0.2.2", "mistune==3.4.0", "nbclient==0.11.0",
    "nbconvert==7.17.2", "nbformat==5.11.1", "nest-asyncio2==1.7.4", "pandocfilters==1.5.1", "papermill==2.7.0",
    "parso==0.8.7", "pexpect==4.9.0", "platformdirs==4.14.9", "prompt-toolkit==3.0.53", "ptyprocess==0.7.0",
    "pure-eval==0.2.4", "pyzmq==27.3.0", "referencing==0.37.0", "rpds-py==2026.9.1", "soupsieve==4.1.4",
    "stack-data==0.6.3", "tenacity==9.2.1", "tinycss2==1.5.1", "tornado==6.6.1", "traitlets==5.16.1",
    "wcwidth==0.9.4", "webencodings==0.6.1",
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
#: The most the wheels may take: the device call carries 64 MiB in all, the repository's files included.
MAX_TOTAL_BYTES = 40 * 2**20


def download_command(dest: Path, python: str = sys.executable) -> list[str]:
    """pip's download of :data:`WHEELS` for the GPU machine, each without its dependencies."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    return [python, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON_VERSION,
            "--implementation", "cp", *platforms, "--dest", str(dest), *WHEELS]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.fetch_wheels", description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", default=str(REPO_ROOT / ".whl"), help="the wheels' folder (default: .whl)")
    args = parser.parse_args(argv)
    dest = Path(args.dest)
    dest.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(download_command(dest), check=False)
    if done.returncode != 0:
        print(f"error: pip download failed (exit status {done.returncode})", file=sys.stderr)
        return done.returncode
    wheels = sorted(dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels)
    print(f"{len(wheels)} wheels in {dest}, {total / 2**20:.1f} MiB")
    if len(wheels) != len(WHEELS):
        print(f"error: {dest} holds {len(wheels)} wheels, not the {len(WHEELS)} of WHEELS: remove the others "
              "(two versions of one package stop the install there)", file=sys.stderr)
        return 1
    if total > MAX_TOTAL_BYTES:
        print(f"error: {total / 2**20:.1f} MiB is over the {MAX_TOTAL_BYTES / 2**20:.0f} MiB left for wheels in a "
              "device call's 64 MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
