"""WSGI apps for the start-up and process tests (test_startup.py, test_proc.py)."""

import os
import time

# An app whose server processes die at start-up: the manager imports nothing, each server
# process does, and finds this variable.
if os.environ.get("PROC_APPS_DIE_AT_START"):
    os._exit(7)


def pid(environ, start_response):
    """The server process's PID, and what the environ says about it."""
    body = ("%d %s %s %s" % (os.getpid(), environ["wsgi.multiprocess"],
                             environ["wsgi.url_scheme"], environ["REMOTE_ADDR"])).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]


def slow(environ, start_response):
    """Answers after ?s= seconds (default 1) with the PID: a request in flight."""
    query = dict(p.split("=", 1) for p in environ.get("QUERY_STRING", "").split("&") if "=" in p)
    time.sleep(float(query.get("s", "1")))
    return pid(environ, start_response)


def routes(environ, start_response):
    """/spin and /sleep hang (in Python, in C); anything else answers with the PID."""
    path = environ["PATH_INFO"]
    if path == "/spin":
        spin_forever()
    elif path == "/sleep":
        time.sleep(60)
    return pid(environ, start_response)


def spin_forever():
    while True:  # hung in Python: the stack shows this line
        time.sleep(0.01)
