#!/bin/sh
# Download the wheels the GPU machine (CPython 3.12, manylinux x86_64) lacks into .gpu/wheels.
# Versions match the project's .venv. polars (a 40 MB wheel) is left out on purpose: dicom_ai.train.detect
# replaces the one ultralytics call that needs it, and plots=False avoids the others.
set -eu
dest=${1:-.gpu/wheels}
mkdir -p "$dest"
for spec in ultralytics==8.4.190 ultralytics-thop==2.2.3 ultralytics-platform==0.1.99 \
            segmentation-models-pytorch==0.6.0 pydicom==3.0.2 psutil==7.2.2 PyYAML==6.0.4 tqdm==4.70.1 \
            requests==2.34.2 urllib3==2.8.0 idna==3.20 certifi==2026.10.19.post1 charset-normalizer==3.5.3 \
            nvidia-ml-py==13.615.71; do
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform any -d "$dest" "$spec"
done
