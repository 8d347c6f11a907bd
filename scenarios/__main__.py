"""Entry point: python -m scenarios --out DIR [options]."""

from __future__ import annotations

import os
import sys

from scenarios.cli import main

code = main()
sys.stdout.flush()
sys.stderr.flush()
# The artifact is written and fsynced: skip interpreter teardown, where
# TensorFlow and torch spend seconds joining threads and freeing pools that
# the process is about to lose anyway.
os._exit(code)
