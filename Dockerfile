# vitalcast: the prediction service and, from the same image, the training CLI.
#   docker build -t vitalcast .
#   docker run -p 127.0.0.1:8000:8000 -v vitalcast-models:/models \
#       -e VITALCAST_API_KEYS=... vitalcast                      # serve (the default command)
#   docker run -v vitalcast-models:/models vitalcast train --data /data ...   # see README
# tests/test_deploy.py runs this file's install path and command without a Docker engine.

# ---- builder: a venv holding the CPU build of torch and vitalcast (non-editable) ----------
FROM python:3.11-slim AS builder

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# torch first, pinned, from the CPU index: `pip install .` then finds its torch range satisfied
# and never pulls the multi-GB CUDA build from PyPI.
RUN pip install --no-cache-dir --index-url https://download.pytorch.org/whl/cpu torch==2.13.0

# Only what the package is built from; tests, data and checkpoints stay out (.dockerignore).
WORKDIR /src
COPY pyproject.toml README.md ./
COPY app ./app
COPY models ./models
COPY training ./training
# -I: import from the installed venv, not from /src, so a file the wheel misses fails here.
RUN pip install --no-cache-dir . \
    && python -I -c "import app.main, training.train, training.synthesize"

# ---- runtime: slim, non-root, the venv and the entrypoint only --------------------------
FROM python:3.11-slim AS runtime

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    VITALCAST_HOST=0.0.0.0 \
    VITALCAST_PORT=8000 \
    VITALCAST_MODEL_DIR=/models \
    VITALCAST_DATA_DIR=/data

RUN groupadd --system --gid 10001 vitalcast \
    && useradd --system --uid 10001 --gid vitalcast --create-home vitalcast \
    && mkdir -p /models /data \
    && chown vitalcast:vitalcast /models /data

COPY --from=builder /opt/venv /opt/venv
COPY --chmod=0755 docker/ /opt/vitalcast/

USER 10001:10001
WORKDIR /home/vitalcast
# Checkpoints live outside the image: the api reads them, a train job publishes into them.
VOLUME ["/models"]
EXPOSE 8000

# slim has no curl; urlopen raises (exit 1) on a refused connection or a non-2xx answer.
HEALTHCHECK --interval=30s --timeout=5s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request as u; u.urlopen('http://127.0.0.1:' + os.environ.get('VITALCAST_PORT', '8000') + '/healthz', timeout=4)"]

# serve (default) | train ... | synthesize ... | evaluate ... | retrain ... | any command
ENTRYPOINT ["/opt/vitalcast/entrypoint.sh"]
CMD ["serve"]
