# The web UI (`backprop ui`) in a container, with the `ui` and `export` extras. Usually built and run by
# compose (compose.yaml: `docker compose up -d`); by hand:
#
#   docker build --network host -t backpropagate-ui .
#
# Build arguments:
#   BASE_IMAGE      a Debian 12 (bookworm) based image [debian:bookworm-slim]. Where no image registry is
#                   reachable, docker/make-base-image.sh makes one locally from Debian's package mirror.
#   TORCH_SPEC      the PyTorch requirement [torch==2.13.0], as in the Makefile
#   PIP_TORCH_ARGS  where pip finds it [PyTorch's CPU wheel index; a plain PyPI torch is the CUDA build, gigabytes]
#                   A CUDA build: PIP_TORCH_ARGS="--index-url <the PyTorch wheel index for your CUDA version>".
#                   A wheel you already have: PIP_TORCH_ARGS="--find-links http://127.0.0.1:<port>/" (the build
#                   runs on the host network, so a local `python3 -m http.server` can serve it).
#   CMAKE_ARGS      llama-cpp-python's build flags [-DGGML_NATIVE=OFF: a generic x86-64 build; a native one
#                   crashes on some CPUs, and the image may run on another machine than the one that built it]
ARG BASE_IMAGE=debian:bookworm-slim

# ---- builder: compilers, headers and pip's work; only /opt/venv leaves this stage ----
FROM ${BASE_IMAGE} AS builder
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 python3-venv python3-dev build-essential cmake \
        ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/venv && pip install --upgrade pip

# The slow, rarely changing layers first, so that a change to the package's source rebuilds neither.
ARG TORCH_SPEC=torch==2.13.0
ARG PIP_TORCH_ARGS="--index-url https://download.pytorch.org/whl/cpu"
RUN pip install "$TORCH_SPEC" $PIP_TORCH_ARGS
ARG CMAKE_ARGS=-DGGML_NATIVE=OFF
RUN CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" pip install "llama-cpp-python>=0.3"

# The package itself (.dockerignore lets in only what building it needs).
COPY . /src/
RUN pip install "/src[ui,export]" \
 && python -c "import backpropagate, gradio, llama_cpp, torch; print('torch', torch.__version__)" \
 && find /opt/venv -name __pycache__ -prune -exec rm -rf {} +

# ---- runtime: Python, the venv and nothing to build with ----
FROM ${BASE_IMAGE} AS runtime
# libgomp1: llama.cpp's OpenMP threads (torch carries its own copy).
RUN apt-get update \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends python3 libgomp1 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
ARG UID=1000
RUN useradd --create-home --uid "$UID" --user-group --shell /bin/bash backprop \
 && mkdir -p /home/backprop/.backpropagate /home/backprop/.cache/huggingface \
 && chown -R backprop:backprop /home/backprop
COPY --from=builder /opt/venv /opt/venv

# Runs, the run index and the UI's sandbox live in ~/.backpropagate (mount a volume there); downloaded
# models in ~/.cache/huggingface. Credentials: BACKPROPAGATE_UI__AUTH=user:password from an env file
# (compose.yaml), never on the command line. Without them the UI refuses to listen on 0.0.0.0.
ENV VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH HOME=/home/backprop PYTHONUNBUFFERED=1 \
    GRADIO_ANALYTICS_ENABLED=False BACKPROP_UI_HOST=0.0.0.0 BACKPROP_UI_PORT=7860
USER backprop
WORKDIR /home/backprop
EXPOSE 7860
HEALTHCHECK --interval=10s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ.get('BACKPROP_UI_PORT', '7860'), timeout=4)"]
CMD ["sh", "-c", "exec backprop ui --host \"$BACKPROP_UI_HOST\" --port \"$BACKPROP_UI_PORT\""]
