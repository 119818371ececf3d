#!/usr/bin/env bash
# Install mimbench on a fresh machine: Debian's Fashion-MNIST (and chromium with its driver, for
# the HTML report's browser test) where apt-get can, then the
# Python package (torch 2.14.1 + torchvision 0.29.1, timm, submitit, ...) with its test extras.
set -euo pipefail
cd "$(dirname "$0")"

if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq dataset-fashion-mnist; }; then
    echo "install.sh: could not install Debian's dataset-fashion-mnist; point --data-root or MIMBENCH_DATA at the IDX files" >&2
  fi
fi

if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; } && command -v apt-get >/dev/null; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo -n"
  if ! { $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium chromium-driver; }; then
    echo "install.sh: could not install Debian's chromium and chromium-driver; tests/test_html_report.py needs them" >&2
  fi
fi

python3 -m pip install --quiet --disable-pip-version-check -e '.[dev]'
python3 -c "import bench, torch, torchvision, timm, submitit; print('mimbench installed: torch', torch.__version__, '| timm', timm.__version__, '| submitit', submitit.__version__)"
