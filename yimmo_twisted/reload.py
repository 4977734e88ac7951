"""
``reload`` (``--reload``), for development: the manager replaces its server processes
when the app's code changes, through the SIGHUP path (``Manager.reload``).

Which files: each server process, once it has imported the app, reports the source files
of the modules it loaded that are not the standard library's, an installed package's or
the server's own (``user_files``) to the manager over its control pipe (``watch: [...]``;
a process whose import failed reports what it reached, and the file of the error).  The
manager watches the union of what its processes reported, plus ``reload_paths``, with
watchfiles: a module's folder is watched (not recursively) rather than the file itself,
as editors that save by renaming a new file over the old would end a watch on the file.

A change replaces the processes one by one as SIGHUP does: a successor that cannot start
(a syntax error) logs its error and leaves the old process serving, and the next change
tries again.
"""

from __future__ import annotations

import os
import site
import sys
import sysconfig
import threading
import traceback
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Optional, Sequence, Set

from .logs import logger

log = logger("yimmo.reload")

# watchfiles groups the changes that come within STEP ms of each other, for at most
# DEBOUNCE ms: an editor's save (write, rename, chmod) is one reload, not three.
DEBOUNCE = 400
STEP = 50
SET_UP_CHECK = 500  # ms: watchfiles yields (nothing) this often, the first time once set up
RETRY = 1.0  # seconds before watching again after watchfiles failed (a folder removed)
PENDING = 0.2  # seconds between looks at a reload under way, for a change that came meanwhile


def _skipped() -> List[str]:
    """Folders whose modules are not the user's: the standard library, the installed
    packages (whatever the layout: venv, Debian's dist-packages, user site) and ours."""
    paths = sysconfig.get_paths()
    folders = [paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]
    try:
        folders += site.getsitepackages()
    except AttributeError:  # an old virtualenv's site module
        pass
    if site.ENABLE_USER_SITE and site.USER_SITE:
        folders.append(site.USER_SITE)
    folders.append(os.path.dirname(os.path.abspath(__file__)))
    return [os.path.join(os.path.abspath(f), "") for f in folders if f]


def _source(path: Optional[str]) -> Optional[str]:
    if not path or not isinstance(path, str):
        return None
    path = os.path.abspath(path)
    if path.endswith((".pyc", ".pyo")):  # a sourceless module: its .py, if there is one
        path = path[:-1]
    return path if os.path.isfile(path) else None


def user_files(error: Optional[BaseException] = None) -> List[str]:
    """
    The source files of the loaded modules that are the user's code; with ``error`` (the
    exception that stopped the import of the app), also the user's files it came through
    (a module that failed to import is not in ``sys.modules``).
    """
    skipped = tuple(_skipped())
    found = set()
    for module in list(sys.modules.values()):
        found.add(_source(getattr(module, "__file__", None)))
    if error is not None:
        found.add(_source(getattr(error, "filename", None)))  # SyntaxError's
        for frame in traceback.extract_tb(error.__traceback__):
            found.add(_source(frame.filename))
    return sorted(f for f in found if f is not None and not f.startswith(skipped))


def _mtimes(files: Iterable[str]) -> Dict[str, Optional[int]]:
    """Each file's modification time (ns; None if it is gone)."""
    times: Dict[str, Optional[int]] = {}
    for f in files:
        try:
            times[f] = os.stat(f).st_mtime_ns
        except OSError:
            times[f] = None
    return times


class Watcher:
    """
    Watches files (``add``) and ``paths`` (files, or folders watched recursively) in
    threads of its own; ``changed(paths)`` is called on the reactor thread.
    """

    def __init__(self, reactor: Any, changed: Callable[[List[str]], None],
                 paths: Sequence[str] = ()) -> None:
        self.reactor = reactor
        self.changed = changed
        self.trees = [p for p in paths if os.path.isdir(p)]
        # Swapped whole, never changed in place: the watching thread reads it unlocked.
        self.files: FrozenSet[str] = frozenset(os.path.abspath(p) for p in paths
                                               if not os.path.isdir(p))
        # Each file's time when it was added or last reported changed (see _catch_up);
        # swapped whole, as files.
        self.known: Dict[str, Optional[int]] = _mtimes(self.files)
        self._stop = threading.Event()
        self._rewatch = threading.Event()  # the files' folders changed: watch them afresh
        self._threads: List[threading.Thread] = []

    def add(self, files: Iterable[str]) -> bool:
        """Watch ``files`` too; True if any is new."""
        new = self.files | {os.path.abspath(f) for f in files}
        if new == self.files:
            return False
        folders = {os.path.dirname(f) for f in self.files}
        self.known = dict(_mtimes(new - self.files), **self.known)
        self.files = frozenset(new)
        if {os.path.dirname(f) for f in new} != folders:
            self._rewatch.set()
        return True

    def start(self) -> None:
        targets: List[Callable[[], None]] = [self._watch_files]
        if self.trees:
            targets.append(self._watch_trees)
        for target in targets:
            thread = threading.Thread(target=target, name="yimmo-reload", daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self, timeout: float = 1.0) -> None:
        """Stop watching: watchfiles looks at its stop event every STEP ms."""
        self._stop.set()
        self._rewatch.set()
        for thread in self._threads:
            thread.join(timeout)

    def _report(self, changes: Iterable[Any]) -> None:
        paths = sorted({os.path.abspath(path) for _, path in changes})
        if paths:
            self.known = dict(self.known, **_mtimes(p for p in paths if p in self.files))
            self.reactor.callFromThread(self.changed, paths)

    def _catch_up(self, seen: Set[str]) -> None:
        """
        A change made while watchfiles sets up is not seen by it (a server process reports
        its files as it becomes ready, and an editor may save right then): the files'
        times when added, compared once the watch is set up.
        """
        now = _mtimes(self.files)
        missed = sorted(f for f, t in now.items()
                        if f in self.known and self.known[f] != t and f not in seen)
        self.known = now
        if missed:
            self.reactor.callFromThread(self.changed, missed)

    def _watch_files(self) -> None:
        import watchfiles

        while not self._stop.is_set():
            self._rewatch.clear()  # before reading files: an add() from now on rewatches
            folders = sorted({os.path.dirname(f) for f in self.files} - {""})
            folders = [f for f in folders if os.path.isdir(f)]
            if not folders:
                self._rewatch.wait()
                continue
            first = True
            try:
                for changes in watchfiles.watch(
                        *folders, watch_filter=lambda _, path: path in self.files,
                        stop_event=self._rewatch, recursive=False, debounce=DEBOUNCE,
                        step=STEP, rust_timeout=SET_UP_CHECK, yield_on_timeout=True,
                        raise_interrupt=False):
                    if first:  # set up now: what changed since add() and was not seen?
                        first = False
                        self._catch_up({os.path.abspath(path) for _, path in changes})
                    self._report(changes)
            except Exception as e:  # a folder removed meanwhile: look again soon
                self._failed(e)

    def _watch_trees(self) -> None:
        import watchfiles

        while not self._stop.is_set():
            try:
                # The default filter: no __pycache__, .git, editors' swap files.
                for changes in watchfiles.watch(*self.trees, stop_event=self._stop,
                                                debounce=DEBOUNCE, step=STEP,
                                                raise_interrupt=False):
                    self._report(changes)
            except Exception as e:
                self._failed(e)

    def _failed(self, error: Exception) -> None:
        self.reactor.callFromThread(log.warn, "reload: watching failed ({error}); trying "
                                    "again", error="%s: %s" % (type(error).__name__, error))
        self._stop.wait(RETRY)


class Reloader:
    """The manager's side: its server processes replaced on changes, one reload at a time."""

    def __init__(self, manager: Any) -> None:
        self.manager = manager
        self.reactor = manager.reactor
        self.watcher = Watcher(self.reactor, self._changed, manager.settings.reload_paths)
        self._pending: Any = None  # the DelayedCall of a change that came during a reload

    def start(self) -> None:
        for path in self.manager.settings.reload_paths:
            if not os.path.exists(path):  # watched anyway: it may be created later
                log.warn("reload_paths: no such file or folder {path}", path=path)
        self.watcher.start()

    def watch(self, files: Iterable[str]) -> None:
        """Files a server process reported (``watch: [...]``); kept after it ends."""
        if self.watcher.add(files):
            log.debug("reload: watching {n} files", n=len(self.watcher.files))

    def stop(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
        self.watcher.stop()

    def _changed(self, paths: List[str]) -> None:
        here = os.getcwd()
        shown = [os.path.relpath(p, here) if p.startswith(os.path.join(here, "")) else p
                 for p in paths]
        log.info("reload: {paths} changed", paths=", ".join(shown))
        if self._pending is None:  # else the reload to come sees this change too
            self._reload()

    def _reload(self) -> None:
        self._pending = None
        manager = self.manager
        if manager.stopping:
            return
        if manager.reloading or manager.replacing:
            # Once the reload (or recycle) under way is over: its successors may have
            # imported the code from before this change.
            self._pending = self.reactor.callLater(PENDING, self._reload)
            return
        manager.reload("files changed")
