"""
compat.py: each probe of a private Twisted/autobahn API passes on the installed versions,
and each fallback works when its probe fails.
"""

from __future__ import annotations

import socket
from functools import partial

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import abstract, asyncioreactor, epollreactor, pollreactor, selectreactor
from twisted.internet import defer, endpoints, tcp
from twisted.internet.base import ReactorBase
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper

from test_startup import certificate  # noqa: F401  (a fixture)
from yimmo_twisted import compat


@pytest.fixture
def probes():
    """Probes computed afresh in the test (they are cached per process), and after it."""
    cached = [probe for _, probe in compat.PROBES]
    for probe in cached:
        probe.cache_clear()
    yield
    for probe in cached:
        probe.cache_clear()


@pytest.fixture
def warnings():
    events = []

    def observe(event):
        if event.get("log_namespace") == "yimmo.compat":
            events.append(event)

    globalLogPublisher.addObserver(observe)
    yield events
    globalLogPublisher.removeObserver(observe)


def test_every_probe_passes_on_the_installed_versions(probes, warnings):
    assert all(probe() for _, probe in compat.PROBES)
    assert compat.check() == []
    assert warnings == []


def test_check_warns_once_naming_what_fell_back(probes, warnings, monkeypatch):
    monkeypatch.delattr(abstract.FileDescriptor, "_writeDisconnecting")
    failed = compat.check()
    assert len(failed) == 1 and "tcp.Connection" in failed[0]
    assert len(warnings) == 1 and "tcp.Connection" in warnings[0]["failed"]


# -- writer --------------------------------------------------------------------------------

@pytest.fixture
def connection():
    a, b = socket.socketpair()
    b.settimeout(2)
    conn = tcp.Connection(a, Protocol(), compat._NoReactor())
    conn.connected = True
    yield conn, b
    a.close()
    b.close()


def test_writer_writes_a_tcp_connection_directly(probes, connection):
    conn, peer = connection
    write = compat.writer(conn)
    assert isinstance(write, partial) and write.func is compat.write_direct
    write(b"at once")
    assert peer.recv(16) == b"at once"
    conn.write(b"queued")
    write(b" behind")  # buffered data goes first: this goes behind it
    assert conn._tempDataBuffer == [b"queued", b" behind"]


def test_writer_falls_back_to_transport_write(probes, connection, monkeypatch):
    class Transport:  # no tcp.Connection (TLS, PROXY): never its private attributes
        def write(self, data):
            pass

    other = Transport()
    assert compat.writer(other) == other.write
    conn, _ = connection
    monkeypatch.delattr(abstract.FileDescriptor, "_writeDisconnecting")
    assert not compat.direct_write_ok()
    assert compat.writer(conn) == conn.write


# -- one accept per wake-up --------------------------------------------------------------

def test_one_accept_per_wake_up(probes):
    port = tcp.Port(0, Factory(), reactor=compat._NoReactor())
    compat.one_accept_per_wake_up(port)
    port.numberAccepts = 100  # as Twisted sets it
    assert isinstance(port, tcp.Port) and port.numberAccepts == 1
    compat.one_accept_per_wake_up(object())  # not a port: left alone


def test_accept_loop_left_alone_when_it_changed(probes, monkeypatch):
    monkeypatch.setattr(tcp.Port, "doRead", lambda self: None)
    assert not compat.accept_limit_ok()
    port = tcp.Port(0, Factory(), reactor=compat._NoReactor())
    compat.one_accept_per_wake_up(port)
    assert type(port) is tcp.Port


# -- how an endpoint listens -------------------------------------------------------------

def test_listen_arguments(certificate):  # noqa: F811
    cert, key = certificate
    assert compat.listen_arguments("tcp:81:interface=127.0.0.1:backlog=5") == {
        "port": 81, "interface": "127.0.0.1", "backlog": 5}
    assert compat.listen_arguments("unix:/run/a.sock:mode=640") == {
        "address": "/run/a.sock", "backlog": 50, "mode": 0o640, "wantPID": True}
    tls = compat.listen_arguments("ssl:443:backlog=9:privateKey=%s:certKey=%s" % (key, cert))
    assert (tls["port"], tls["interface"], tls["backlog"]) == (443, "", 9)
    assert tls["contextFactory"].getContext() is not None


# -- PROXY protocol ----------------------------------------------------------------------

def test_proxy_wrapper_is_twisteds(probes):
    wrapper = compat.HAProxyProtocolWrapper
    assert issubclass(wrapper, ProtocolWrapper) and wrapper.__name__ == "HAProxyProtocolWrapper"
    assert compat.proxy_info_ok()


def test_proxy_info_probe_fails_without_proxy_info(probes, monkeypatch):
    class Renamed(compat.HAProxyProtocolWrapper):
        def __init__(self, *args):
            super().__init__(*args)
            del self._proxyInfo

    monkeypatch.setattr(compat, "HAProxyProtocolWrapper", Renamed)
    assert not compat.proxy_info_ok()


# -- autobahn ----------------------------------------------------------------------------

def test_websocket_data_received(probes, monkeypatch):
    assert compat.websocket_data_received() is WebSocketServerProtocol._dataReceived
    compat.autobahn_receive_ok.cache_clear()

    def data_received(self, data):  # a dataReceived that no longer delegates
        pass

    monkeypatch.setattr(WebSocketServerProtocol, "dataReceived", data_received)
    assert compat.websocket_data_received() is data_received


# -- the reactor's loop ------------------------------------------------------------------

@pytest.mark.parametrize("cls, calls", [
    (epollreactor.EPollReactor, True),
    (pollreactor.PollReactor, True),
    (selectreactor.SelectReactor, True),
    (asyncioreactor.AsyncioSelectorReactor, False),
])
def test_runs_do_iteration(cls, calls):
    assert compat.runs_do_iteration(cls.__new__(cls)) is calls


def test_runs_do_iteration_not_for_a_loop_of_its_own():
    class OwnLoop(selectreactor.SelectReactor):
        def mainLoop(self):
            pass

    class NoIteration(selectreactor.SelectReactor):
        doIteration = ReactorBase.doIteration  # raises NotImplementedError

    assert not compat.runs_do_iteration(OwnLoop.__new__(OwnLoop))
    assert not compat.runs_do_iteration(NoIteration.__new__(NoIteration))


# -- TLS ---------------------------------------------------------------------------------

def test_ssl_context_factory(certificate, monkeypatch):  # noqa: F811
    cert, key = certificate
    description = "ssl:0:privateKey=%s:certKey=%s" % (key, cert)
    assert compat.ssl_context_factory(description).getContext() is not None
    # An endpoint that no longer goes through listenSSL stops the start, saying why.
    monkeypatch.setattr(endpoints.SSL4ServerEndpoint, "listen",
                        lambda self, factory: defer.succeed(None))
    with pytest.raises(ValueError, match="cannot find how 'ssl:0:.*' listens"):
        compat.ssl_context_factory(description)
