# tuner on a CUDA-enabled PyTorch base image: the image for workers, the dashboard and `create`.
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    TORCH_HOME=/cache/torch

WORKDIR /opt/tuner
COPY pyproject.toml README.md ./
COPY tuner ./tuner
COPY search_spaces ./search_spaces
# torch and torchvision come with the base image; pip keeps them when they satisfy the ranges.
RUN pip install -e ".[s3]"

# Run as an unprivileged user; /artifacts and /cache are volumes shared with the host.
RUN useradd --create-home --uid 1000 tuner && mkdir -p /artifacts /cache/torch /data \
    && chown -R tuner /artifacts /cache
USER tuner

ENTRYPOINT ["tuner"]
CMD ["--help"]
