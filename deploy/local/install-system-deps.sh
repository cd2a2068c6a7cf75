#!/usr/bin/env bash
# Installs what the local stack and the tests need from the machine's package manager: Debian's
# redis-server, and Debian's chromium (the analytics page's browser test drives it).
# Java 17 and Maven run the Kafka broker (jars from Maven Central), npm installs the page's chart
# library; they are checked, not installed.
set -euo pipefail

install() {  # install() COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "$1 is missing and this user cannot install it: apt-get install $2" >&2; exit 1
    fi
    echo "installing Debian's $2..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$2" >/dev/null
}

install redis-server redis-server
install chromium chromium
if ! command -v java >/dev/null 2>&1; then
    echo "Java 17 is missing; it runs the Kafka broker (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 1
fi
if ! command -v mvn >/dev/null 2>&1; then
    echo "Maven is missing; it fetches the Kafka broker jars (Debian: apt-get install maven)" >&2; exit 1
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "npm is missing; it installs the analytics page's chart library (Debian: apt-get install npm)" >&2; exit 1
fi
