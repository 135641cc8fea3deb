# syntax=docker/dockerfile:1
# detrec's trainer image: the official TensorFlow GPU image + NVIDIA DALI (GPU-side JPEG decode)
# + detrec. Also runs `detrec data-service dispatcher|worker` (the tf.data service servers).
#
#   docker build -f docker/train.Dockerfile -t detrec-train:0.1.0 .   # from the repository root
#   docker run --rm --gpus all -v "$PWD/shards:/data:ro" -v "$PWD/runs:/runs" detrec-train:0.1.0 train ...
#
# tests/test_docker.py checks the TensorFlow tag and DALI_VERSION against locks/gpu.txt.
FROM tensorflow/tensorflow:2.21.0-gpu

ARG DALI_VERSION=2.4.0

# Ubuntu-based images may mark the system Python as externally managed (PEP 668); this image
# exists to hold one application, so installing into it is the intent.
# TF_FORCE_GPU_ALLOW_GROWTH: TensorFlow takes GPU memory as it needs it instead of nearly
# all of it at start-up, leaving DALI's decoder room (`detrec train` also sets it itself:
# train/gpu.py; this covers anything else run in the image).
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TF_FORCE_GPU_ALLOW_GROWTH=true

# The DALI TensorFlow plugin compiles against the TensorFlow already in the image, so it needs a
# C++ compiler and must be installed after TensorFlow with --no-build-isolation (an isolated
# build would pull a different TensorFlow to compile against).
RUN apt-get update \
 && apt-get install -y --no-install-recommends g++ \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/detrec/src
COPY locks/gpu.txt locks/gpu.txt
COPY pyproject.toml setup.py ./
# Every folder pyproject.toml's package-dir maps into `detrec` (tests/test_docker.py checks).
COPY detrec detrec
COPY core core
COPY preprocess preprocess
COPY train train
COPY inspector inspector
COPY pipelines pipelines

# detrec's own dependencies at the versions of the gpu lock, which CI's cpu lock agrees with
# (-c: constraints; the base image's TensorFlow is the locked version, so it stays).
RUN python3 -m pip install -c locks/gpu.txt . "nvidia-dali-cuda120==${DALI_VERSION}" \
 && python3 -m pip install --no-build-isolation "nvidia-dali-tf-plugin-cuda120==${DALI_VERSION}" \
 && python3 -c "import tensorflow as tf, nvidia.dali.plugin.tf, train; assert tf.__version__ == '2.21.0', tf.__version__"

RUN groupadd --gid 1000 detrec \
 && useradd --uid 1000 --gid detrec --create-home --shell /bin/bash detrec \
 && mkdir -p /data /runs \
 && chown detrec:detrec /runs
USER detrec
WORKDIR /home/detrec

# tf.data service ports (dispatcher, worker) when this image runs `detrec data-service`.
EXPOSE 5050 5051
ENTRYPOINT ["detrec"]
CMD ["--help"]
