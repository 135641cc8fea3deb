# syntax=docker/dockerfile:1
# detrec's Beam worker image (Dataflow; any Job API runner with --sdk_container_image): the official
# Beam SDK container + detrec + its dependencies.
# The same image is the Flex Template image (it carries Google's template launcher).
#
#   docker build -f docker/beam.Dockerfile -t "$IMAGE" .      # from the repository root
#   docker push "$IMAGE"
#   pipelines/dataflow/launch.sh with MODE=image IMAGE="$IMAGE"  (see pipelines/dataflow/README.md)
#
# The Beam version and Python minor here must equal the launching machine's (Dataflow refuses or
# misbehaves otherwise); tests/test_docker.py checks this tag against pyproject.toml.
FROM apache/beam_python3.11_sdk:2.77.0

# Google's Flex Template launcher binary, pinned by tag; without it this image could serve
# only as an SDK container, not as a Flex Template image.
COPY --from=gcr.io/dataflow-templates-base/python311-template-launcher-base:20230622_RC00 \
     /opt/google/dataflow/python_template_launcher /opt/google/dataflow/python_template_launcher

# RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT: since Beam 2.44 the boot entrypoint creates a fresh venv
# under /opt/apache/beam-venv at start-up, which a non-root user cannot write and which would hide
# nothing we need; the dependencies below are installed into the default environment instead.
# MALLOC_*: detrec's malloc settings (preprocess/malloc_arenas.py) for every process of the worker
# from its start, the SDK harness included; a detrec DoFn's setup applies them too, but only to
# the arenas made after it. The same image serves the portable runners (--sdk_container_image).
ENV MALLOC_ARENA_MAX=2 \
    MALLOC_MMAP_THRESHOLD_=262144 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1 \
    FLEX_TEMPLATE_PYTHON_PY_FILE=/opt/detrec/src/pipelines/dataflow/main.py

WORKDIR /opt/detrec/src

# Dependencies first, in their own layer, so editing detrec's code does not reinstall TensorFlow.
COPY pipelines/dataflow/requirements.txt pipelines/dataflow/requirements.txt
RUN pip install -r pipelines/dataflow/requirements.txt

COPY pyproject.toml setup.py ./
# Every folder pyproject.toml's package-dir maps into `detrec` (tests/test_docker.py checks).
COPY detrec detrec
COPY core core
COPY preprocess preprocess
COPY train train
COPY inspector inspector
COPY pipelines pipelines
# --no-deps: every dependency is already pinned above; pip check proves the set is consistent,
# and the import proves the worker SDK is the version the launcher uses.
RUN pip install --no-deps . \
 && pip check \
 && python -c "import apache_beam, detrec.core.schema, detrec.preprocess.dofns; assert apache_beam.__version__ == '2.77.0', apache_beam.__version__"

RUN groupadd --gid 1000 detrec \
 && useradd --uid 1000 --gid detrec --create-home --shell /usr/sbin/nologin detrec
USER detrec
WORKDIR /home/detrec
# ENTRYPOINT stays the base image's /opt/apache/beam/boot (the SDK harness Dataflow starts).
