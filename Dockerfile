# narrate worker image: `docker run --gpus all IMAGE run MANIFEST --out gs://... --database ...`
# Without arguments it runs `narrate doctor` (what works on this machine, with fix hints).
#
# Base: python:3.11-slim rather than nvidia/cuda. torch 2.9.1's PyPI wheel is the CUDA 12.8
# build and brings its own CUDA runtime, cuBLAS, cuDNN and NCCL as pip wheels, loaded from
# site-packages; an nvidia/cuda:12.8.1-cudnn-runtime base would ship a second, unused copy
# (~3 GB). Only the driver comes from the host (CUDA 12.x driver): Docker's `--gpus` (NVIDIA
# container toolkit) or GKE's device plugin mounts it into the container.
# Build stage: narrate's wheel, with its C++ text core compiled (the runtime image has no g++).
FROM python:3.11-slim-bookworm AS build
# Unpinned on purpose: the compiler lives only in this throwaway stage, and bookworm's security
# updates replace old package versions (a pinned version stops resolving within weeks).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends g++ \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml README.md ./
COPY narrate ./narrate
RUN pip wheel --no-deps --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim-bookworm

# GKE mounts the node's driver at /usr/local/nvidia (the nvidia/cuda images use the same paths);
# the NVIDIA_* variables make the container toolkit expose the GPUs, as nvidia/cuda images do.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PATH=/opt/narrate/bin:/usr/local/nvidia/bin:$PATH \
    LD_LIBRARY_PATH=/usr/local/nvidia/lib64 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility

RUN python -m venv /opt/narrate
WORKDIR /src

# Dependencies first, from pyproject.toml alone: this multi-GB layer (torch, transformers, ...)
# is rebuilt only when the dependency list changes, not on every source change.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

COPY --from=build /wheels /wheels
RUN pip install --no-deps /wheels/*.whl && rm -rf /wheels /src

# Weights are never baked in: the CSM-1B, Mimi and AudioSeal downloads (and compiled kernels)
# live on the /models volume, so pods that share it download once. Mount it writable by uid
# 10001 (Kubernetes: fsGroup 10001), or read-only with HF_HUB_OFFLINE=1 when pre-filled.
#
# Compilation (CUDA only): TORCHINDUCTOR_CACHE_DIR keeps compiled kernels on the volume, so only
# the first pod pays the compile time. NO_TORCH_COMPILE=1 stops moshi compiling Mimi with
# torch.compile, which on CUDA needs a C compiler at run time (this image has none: without it
# the first decode on a GPU fails; `narrate doctor` checks it). TORCH_COMPILE_DISABLE=1 turns
# torch.compile off everywhere (use it if compiling fails on a driver/GPU combination;
# generation is then slower but unchanged).
ENV HF_HOME=/models/hf \
    AUDIOSEAL_CACHE_DIR=/models/audioseal \
    TORCHINDUCTOR_CACHE_DIR=/models/torchinductor \
    NO_TORCH_COMPILE=1

# Non-root, with a numeric uid so Kubernetes' runAsNonRoot can verify it.
RUN useradd --uid 10001 --user-group --create-home --home-dir /home/narrate \
        --shell /usr/sbin/nologin narrate \
    && mkdir -p /models \
    && chown 10001:10001 /models
VOLUME /models
USER 10001:10001
WORKDIR /home/narrate

# The demo catalog, to smoke-test the image anywhere (CPU only, no credentials, no downloads):
#   docker run --rm IMAGE run manifests/demo.jsonl --engine preview --no-watermark --out /tmp/out
COPY manifests/demo.jsonl manifests/demo.jsonl

# No credentials here: Cloud Storage and the Realtime Database use Application Default
# Credentials (GKE Workload Identity, or GOOGLE_APPLICATION_CREDENTIALS pointing at a mounted
# key); the gated CSM-1B download uses HF_TOKEN from a secret.
ENTRYPOINT ["narrate"]
CMD ["doctor"]
