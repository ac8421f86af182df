#!/usr/bin/env bash
# Spark ML (ALS) calls BLAS/LAPACK through netlib: with Debian's OpenBLAS and LAPACK present it
# uses them natively (JNIBLAS), otherwise it falls back to pure-Java loops, several times slower
# at rank 64. Install them when this user can (root or passwordless sudo); otherwise say so in
# one line and go on: results are the same, only slower.
set -uo pipefail

if ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0' && ldconfig -p 2>/dev/null | grep -q 'liblapack.so.3'; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    echo "note: native BLAS missing (Spark ALS runs in pure Java, slower); to fix: sudo apt-get install libopenblas0 liblapack3" >&2
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "note: native BLAS missing and no apt-get here; install OpenBLAS and LAPACK for faster Spark ALS" >&2
    exit 0
fi
echo "installing Debian's libopenblas0 and liblapack3 for Spark ALS (apt-get) ..." >&2
export DEBIAN_FRONTEND=noninteractive
if ! { "${SUDO[@]}" apt-get update -qq && "${SUDO[@]}" apt-get install -y -qq --no-install-recommends libopenblas0 liblapack3; } >&2; then
    echo "note: apt-get could not install libopenblas0 liblapack3; Spark ALS runs in pure Java (slower)" >&2
fi
exit 0
