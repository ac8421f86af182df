# Sourced by the ensure_*.sh scripts: `apt_install WHAT PACKAGE...` installs Debian packages as
# root or through passwordless sudo. Returns 2 when this user cannot (or there is no apt-get),
# 1 when apt-get failed, 0 when installed; the caller decides whether that is fatal.
apt_install() {
    local what="$1"
    shift
    local sudo=()
    if [ "$(id -u)" != 0 ]; then
        if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
            sudo=(sudo -n)
        else
            return 2
        fi
    fi
    command -v apt-get >/dev/null 2>&1 || return 2
    echo "installing Debian's $* for $what (apt-get) ..." >&2
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq >&2 \
        && DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" >&2 \
        || return 1
}
