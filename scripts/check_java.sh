#!/usr/bin/env bash
# Spark 4 needs Java 17 or newer; say so in one line instead of a JVM stack trace later.
set -u
if ! command -v java >/dev/null 2>&1 && [ -z "${JAVA_HOME:-}" ]; then
  echo "Java not found: install Java 17 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless) or set JAVA_HOME." >&2
  exit 1
fi
java_bin="${JAVA_HOME:+$JAVA_HOME/bin/}java"
version=$("$java_bin" -version 2>&1 | awk -F'"' '/version/ {print $2; exit}')
major=${version%%.*}
[ "$major" = "1" ] && major=$(echo "$version" | cut -d. -f2)
if ! [ "$major" -ge 17 ] 2>/dev/null; then
  echo "Java ${version:-unknown} is too old: Spark 4 needs Java 17 or newer (Debian/Ubuntu: apt-get install openjdk-17-jre-headless)." >&2
  exit 1
fi
