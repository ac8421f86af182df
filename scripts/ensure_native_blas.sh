#!/usr/bin/env bash
# Spark ML (ALS) calls BLAS/LAPACK through netlib: with Debian's OpenBLAS and LAPACK present it
# uses them natively (JNIBLAS), otherwise it falls back to pure-Java loops, several times slower
# at the default rank. Install them when this user can (root or passwordless sudo); otherwise say so in
# one line and go on: results are the same, only slower.
set -uo pipefail
source "$(dirname "$0")/apt_install.sh"

if ldconfig -p 2>/dev/null | grep -q 'libopenblas.so.0' && ldconfig -p 2>/dev/null | grep -q 'liblapack.so.3'; then
    exit 0
fi
if ! apt_install "Spark ALS" libopenblas0 liblapack3; then
    echo "note: native BLAS missing (Spark ALS runs in pure Java, slower); to fix: sudo apt-get install libopenblas0 liblapack3" >&2
fi
exit 0
