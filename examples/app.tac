"""
A .tac file: ``twistd -ny examples/app.tac`` (from the repository root) serves
examples/hello.py on port 8081 with 4 threads per process and 2 processes.

The keywords of YimmoService are the keys of the YAML file's ``wsgi:`` section (plus
``log_level`` and ``config``); YIMMO_* environment variables apply below them.
"""

import os
import sys

from twisted.application import service

from yimmo_twisted import YimmoService

# twistd runs this file with exec: put its folder on the path so that hello:app imports.
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

application = service.Application("hello")
YimmoService(app="hello:app", port=8081, no_threads=4, no_proc=2).setServiceParent(application)
