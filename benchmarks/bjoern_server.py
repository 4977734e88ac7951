#!/usr/bin/env python3
"""bjoern serving one of benchmarks/apps.py, for ``run.py``.

    python benchmarks/bjoern_server.py PORT MODULE:APP    # e.g. benchmarks.apps:hello

bjoern has no command line of its own: this is its documented ``bjoern.run(app, host,
port)``, one process, one thread (libev), on 127.0.0.1.
"""

import importlib
import sys

import bjoern


def main() -> None:
    port, (module, _, name) = int(sys.argv[1]), sys.argv[2].partition(":")
    bjoern.run(getattr(importlib.import_module(module), name), "127.0.0.1", port)


if __name__ == "__main__":
    main()
