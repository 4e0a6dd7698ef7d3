# The artifact's container (README, "Container").
#   make docker       docker build --build-arg UID="$(id -u)" --build-arg GIT_COMMIT="$(git rev-parse HEAD)" -t repro .
#   make docker-run   the run whose outputs land in ./repro-state on the host and that resumes
#                     there after an interruption (scripts/docker-entrypoint.sh)
#   docker run --gpus all repro make all    outputs stay in the container: docker cp them out
#   docker run --rm repro make smoke        CPU: the pipeline check
# UID: the id the image runs as, the user's (to own what it writes to mounted host folders); any id
# builds, 0 included (then it runs as root). GIT_COMMIT and IMAGE_DIGEST are recorded by
# mnclglf.envinfo in every stage's env_<stage>.json; an image cannot know its own digest while
# it is built, so pass it when running: -e MNCLGLF_IMAGE_DIGEST="$(docker inspect --format
# '{{index .RepoDigests 0}}' repro)" (or build-arg a registry reference you publish).
#
# Base: NVIDIA's CUDA 13.0.3 "base" image (CUDA runtime and compat libraries only: no cuDNN,
# no cuBLAS). The torch wheels of requirements.lock bring their own CUDA 13 libraries and
# cuDNN, so nothing is installed twice. Tag for the reader, digest for the builder.
# Digest source: the same tag@digest pair is pinned by two unrelated public projects (the docs of
# hfyeomans/deepseek-v4-flash-nvfp4-tp2, and an offline verification script of an NVIDIA Dynamo
# snapshot build: `ARG AGENT_BASE_IMAGE=...`). It was not checked against the registry (no network
# where this was written); re-check with
#   docker buildx imagetools inspect nvidia/cuda:13.0.3-base-ubuntu22.04
# CUDA 13 needs an NVIDIA driver >= 580 on the host; the torch CUDA 13 wheels run on compute
# capability 7.5 (Turing) and newer.
FROM nvidia/cuda:13.0.3-base-ubuntu22.04@sha256:73ab6dfb3814a5097cd456736e70650ef9dc72343be4117d0400de78168760fe

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
    MNCLGLF_BASE_IMAGE=nvidia/cuda:13.0.3-base-ubuntu22.04@sha256:73ab6dfb3814a5097cd456736e70650ef9dc72343be4117d0400de78168760fe

# Python 3.11 from Ubuntu 22.04 (universe), make for the entry points. The base image's digest
# fixes the distribution; the Ubuntu archive keeps no superseded versions, so pinning package
# versions here would only make old builds fail, not make them reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv make ca-certificates \
    && rm -rf /var/lib/apt/lists/*

# Declared here, not above, so that another UID rebuilds from this layer on, not the apt one.
ARG UID=1000
# The user "app" with id and group id UID, unless the base image has them: groupadd and useradd
# refuse an existing id (0, root, is one), and the image then runs as that user or group.
RUN if ! getent group "${UID}" > /dev/null; then groupadd --gid "${UID}" app; fi \
    && if ! getent passwd "${UID}" > /dev/null; then \
        useradd --no-log-init --create-home --home-dir /home/app --uid "${UID}" --gid "${UID}" --shell /bin/bash app; \
    fi \
    && install -d -o "${UID}" -g "${UID}" /home/app /home/app/mnclglf

USER ${UID}:${UID}
WORKDIR /home/app/mnclglf

# Dependencies first (their own layer, rebuilt only when the lock changes), with every
# file's hash checked: the same command as `make install`. Before it, the venv's pip, Ubuntu's
# old one from python3.11-venv, is replaced (hash-checked too) by the pip that the checkout's
# `make install` runs with: 23.2.1, the one Python 3.11.7's venv brings.
COPY --chown=${UID}:${UID} requirements.lock pyproject.toml ./
RUN python3.11 -m venv .venv \
    && echo "pip==23.2.1 --hash=sha256:7ccf472345f20d35bdc9d1841ff5f313260c2c33fe417f48c30ac46cccabf5be" > /tmp/pip.lock \
    && .venv/bin/python -m pip install --disable-pip-version-check -q --require-hashes -r /tmp/pip.lock \
    && rm /tmp/pip.lock \
    && .venv/bin/python -m pip install --disable-pip-version-check -q --require-hashes -r requirements.lock

# The source. `make install` then finds the lock installed, installs the package itself
# (editable, no dependencies) and writes the stamp `make all` checks; DVC runs without git
# (.git is not in the image): core.no_scm goes into the untracked .dvc/config.local.
COPY --chown=${UID}:${UID} . .
RUN make install PYTHON=python3.11 \
    && .venv/bin/dvc config --local core.no_scm true \
    && .venv/bin/dvc config --local core.check_update false \
    && .venv/bin/mnclglf --help > /dev/null

# Last, so that a new commit rebuilds no layer above.
ARG IMAGE_DIGEST=""
ARG GIT_COMMIT=""
ENV PATH=/home/app/mnclglf/.venv/bin:$PATH \
    MNCLGLF_IMAGE_DIGEST=${IMAGE_DIGEST} \
    MNCLGLF_GIT_COMMIT=${GIT_COMMIT}

# The command runs in the image's tree, or in a host folder mounted at /state, which then keeps
# the outputs and lets an interrupted run resume (scripts/docker-entrypoint.sh).
ENTRYPOINT ["/bin/bash", "/home/app/mnclglf/scripts/docker-entrypoint.sh"]
CMD ["make", "all"]
