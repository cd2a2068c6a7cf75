#!/usr/bin/env bash
# Installs what the local stack needs from the machine's package manager: Debian's redis-server.
# Java 17 and Maven run the Kafka broker (jars from Maven Central); they are checked, not installed.
set -euo pipefail

if ! command -v redis-server >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "redis-server is missing and this user cannot install it: apt-get install redis-server" >&2; exit 1
    fi
    echo "installing Debian's redis-server..."
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq redis-server >/dev/null
fi
if ! command -v java >/dev/null 2>&1; then
    echo "Java 17 is missing; it runs the Kafka broker (Debian: apt-get install openjdk-17-jre-headless)" >&2; exit 1
fi
if ! command -v mvn >/dev/null 2>&1; then
    echo "Maven is missing; it fetches the Kafka broker jars (Debian: apt-get install maven)" >&2; exit 1
fi
