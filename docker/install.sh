#!/bin/sh
# Installs one hashed lock into /opt/venv, inside a throw-away container
# whose file system is then committed as an image (matrix/environments/images.py).
#
#   sh /krm/install.sh MODE STAGE
#     MODE   wheelhouse: the wheels come from /krm/wheels (mounted read-only;
#                        no network in the container)
#            index:      uv fetches them from the package index
#     STAGE  layer: only the lock (a subset of large wheels, shared by images)
#            final: the lock, a dependency check, the unprivileged user
#
# Mounted read-only: /krm/uv (uv's Linux binary), /krm/lock.txt, this script.
# The base is any image with CPython 3.11 and its venv module as `python3`.
set -eu
mode=$1
stage=$2

python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version'
[ -x /opt/venv/bin/python ] || python3 -m venv --without-pip /opt/venv

if [ "$mode" = wheelhouse ]; then
    set -- --no-index --find-links /krm/wheels
else
    set --
fi
# Copies, not hardlinks into a cache: the cache is deleted before the commit,
# so the layer holds each file once.
/krm/uv pip install --quiet --python /opt/venv/bin/python --require-hashes --no-deps \
    --link-mode copy --cache-dir /var/cache/krm-uv "$@" -r /krm/lock.txt
rm -rf /var/cache/krm-uv

# Bytecode now: the root is read-only when cells run, so without it every
# import would compile again. compileall skips files whose bytecode is
# current, so a final stage on top of a layer adds only its own. Some wheels
# ship files that are not Python 3.11 (torch's and triton's templates):
# they fail to compile here exactly as they would fail to import, so they
# do not fail the build.
/opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib > /dev/null || true

if [ "$stage" = final ]; then
    /krm/uv pip check --python /opt/venv/bin/python
    # Written directly rather than with useradd: the slim and Debian bases
    # agree on /etc/passwd but not on which user tools they ship.
    grep -q '^krm:' /etc/passwd || echo 'krm:x:10001:10001:keras-repro-matrix:/tmp:/usr/sbin/nologin' >> /etc/passwd
    grep -q '^krm:' /etc/group || echo 'krm:x:10001:' >> /etc/group
    mkdir -p /opt/krm /out
fi
