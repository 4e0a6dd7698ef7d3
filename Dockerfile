# The artifact's container.
#   docker build --build-arg UID="$(id -u)" --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t mnclglf .
#   docker run --rm mnclglf make smoke                                      # CPU: the pipeline check
#   docker run --gpus all --name mnclglf-run -v "$PWD/data:/home/app/mnclglf/data" mnclglf   # make all
#   docker cp mnclglf-run:/home/app/mnclglf/results ./results-from-image    # (results/ holds paper.yaml:
#                                                                           #  copy it out, do not mount over it)
# UID: the user's id (to own a mounted data folder). GIT_COMMIT and IMAGE_DIGEST are recorded by
# mnclglf.envinfo in every stage's env_<stage>.json; an image cannot know its own digest while
# it is built, so pass it when running: -e MNCLGLF_IMAGE_DIGEST="$(docker inspect --format
# '{{index .RepoDigests 0}}' mnclglf)" (or build-arg a registry reference you publish).
#
# Base: NVIDIA's CUDA 13.0.3 "base" image (CUDA runtime and compat libraries only: no cuDNN,
# no cuBLAS). The torch wheels of requirements.lock bring their own CUDA 13 libraries and
# cuDNN, so nothing is installed twice. Tag for the reader, digest for the builder.
# Digest source: the same tag@digest pair is pinned by two unrelated public projects (the docs of
# hfyeomans/deepseek-v4-flash-nvfp4-tp2, and an offline verification script of an NVIDIA Dynamo
# snapshot build: `ARG AGENT_BASE_IMAGE=...`). It was not checked against the registry (no network
# where this was written); re-check with
#   docker buildx imagetools inspect nvidia/cuda:13.0.3-base-ubuntu22.04
# CUDA 13 needs an NVIDIA driver >= 580 on the host.
FROM nvidia/cuda:13.0.3-base-ubuntu22.04@sha256:73ab6dfb3814a5097cd456736e70650ef9dc72343be4117d0400de78168760fe

ARG UID=1000
ARG IMAGE_DIGEST=""
ARG GIT_COMMIT=""

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

ENV DEBIAN_FRONTEND=noninteractive \
    LANG=C.UTF-8 \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    DVC_NO_ANALYTICS=1 \
    DVC_STUDIO_OFFLINE=true \
    CUBLAS_WORKSPACE_CONFIG=:4096:8 \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    MNCLGLF_BASE_IMAGE=nvidia/cuda:13.0.3-base-ubuntu22.04@sha256:73ab6dfb3814a5097cd456736e70650ef9dc72343be4117d0400de78168760fe \
    MNCLGLF_IMAGE_DIGEST=${IMAGE_DIGEST} \
    MNCLGLF_GIT_COMMIT=${GIT_COMMIT}

# Python 3.11 from Ubuntu 22.04 (universe), make for the entry points. The base image's digest
# fixes the distribution; the Ubuntu archive keeps no superseded versions, so pinning package
# versions here would only make old builds fail, not make them reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv make ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid "${UID}" app \
    && useradd --no-log-init --create-home --uid "${UID}" --gid "${UID}" --shell /bin/bash app

USER ${UID}:${UID}
WORKDIR /home/app/mnclglf

# Dependencies first (their own layer, rebuilt only when the lock changes), with every
# file's hash checked: the same command as `make install`.
COPY --chown=${UID}:${UID} requirements.lock pyproject.toml ./
RUN python3.11 -m venv .venv \
    && .venv/bin/python -m pip install --disable-pip-version-check -q --require-hashes -r requirements.lock

# The source. `make install` then finds the lock installed, installs the package itself
# (editable, no dependencies) and writes the stamp `make all` checks; DVC runs without git
# (.git is not in the image): core.no_scm goes into the untracked .dvc/config.local.
COPY --chown=${UID}:${UID} . .
RUN make install PYTHON=python3.11 \
    && .venv/bin/dvc config --local core.no_scm true \
    && .venv/bin/dvc config --local core.check_update false \
    && .venv/bin/mnclglf --help > /dev/null

ENV PATH=/home/app/mnclglf/.venv/bin:$PATH

CMD ["make", "all"]
