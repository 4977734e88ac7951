"""
compat.py: each probe of a private Twisted/autobahn API passes on the installed versions,
and each fallback works when its probe fails.
"""

from __future__ import annotations

import os
import socket
import stat
import struct
from functools import partial

import pytest
from autobahn.twisted.websocket import WebSocketServerProtocol
from twisted.internet import abstract, asyncioreactor, epollreactor, pollreactor, selectreactor
from twisted.internet import defer, endpoints, tcp, unix
from twisted.internet.address import IPv4Address
from twisted.internet.base import ReactorBase
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from twisted.protocols.policies import ProtocolWrapper
from zope.interface import implementer

from test_listening import PROXY_HEADERS, _backlogs
from yimmo_twisted import compat
from yimmo_twisted.server import ProxiedFactory, proxy_header_undecided


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


# -- endpoint strings --------------------------------------------------------------------

ENDPOINTS = [
    "tcp:8081", "tcp:8081:interface=127.0.0.1:backlog=5", r"unix:/run/a\:b.sock:mode=600",
    r"ssl:443:privateKey=C\:/key.pem:certKey=/x\=y.crt", "tcp6:port=80:interface=\\:\\:1",
    "systemd:domain=INET:index=0", "unix:/a=b=c", "", "tcp:", "a\\\\b:c",
]


def test_parse_endpoint_is_twisteds(probes):
    assert compat.endpoint_parse_ok()
    assert compat.parse_endpoint("unix:/run/a\\:b:backlog=5") == (["unix", "/run/a:b"],
                                                                  {"backlog": "5"})


@pytest.mark.parametrize("description", ENDPOINTS)
def test_parse_endpoint_fallback_reads_as_twisted_does(description):
    assert compat._parse_quoted(description) == endpoints._parse(description)


def test_parse_endpoint_falls_back(probes, monkeypatch):
    monkeypatch.delattr(endpoints, "_parse")
    assert not compat.endpoint_parse_ok()
    assert compat.parse_endpoint(r"unix:/run/a\:b\=c.sock:mode=600:backlog=5") == (
        ["unix", "/run/a:b=c.sock"], {"mode": "600", "backlog": "5"})


# -- listening sockets shared between processes ------------------------------------------

class Accepted(Protocol):
    def connectionMade(self):
        self.factory.accepted.append(self)


def accepting_factory():
    factory = Factory.forProtocol(Accepted)
    factory.accepted = []
    return factory


def still_listening(sock: socket.socket, address) -> bool:
    """Another process's descriptor ``sock`` of a listening socket still accepts."""
    with socket.socket(sock.family) as client:
        try:
            client.connect(address)
        except OSError:
            return False
        sock.settimeout(2)
        try:
            sock.accept()[0].close()
        except OSError:
            return False
        return True


@pytest.mark.parametrize("alone", [True, False])
def test_close_alone(probes, alone):
    """Twisted's close shuts a shared listening socket down for every process; after
    close_alone, closing it here leaves it listening for the others."""
    assert compat.close_alone_ok()
    reactor = selectreactor.SelectReactor()
    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    other = port.socket.dup()  # a server process's
    address = other.getsockname()
    if alone:
        compat.close_alone(port)
    port.stopListening()
    reactor.runUntilCurrent()
    try:
        assert not port.connected
        assert still_listening(other, address) is alone
    finally:
        other.close()


def test_stop_adopted_leaves_the_socket_open_when_close_alone_cannot(probes, monkeypatch):
    def shut_down(self, orderly):  # a Twisted whose close ignores _shouldShutdown
        self.socket.shutdown(socket.SHUT_RDWR)
        self.socket.close()

    monkeypatch.setattr(tcp._SocketCloser, "_closeSocket", shut_down)
    assert not compat.close_alone_ok()
    manager = socket.create_server(("127.0.0.1", 0))
    manager.setblocking(False)
    reactor = selectreactor.SelectReactor()
    port = reactor.adoptStreamPort(manager.fileno(), socket.AF_INET, Factory())
    compat.close_alone(port)
    try:
        assert compat.stop_adopted(port).called
        reactor.runUntilCurrent()
        assert port not in reactor.getReaders()
        assert still_listening(manager, manager.getsockname())
    finally:
        port.socket.close()  # what the process's exit does
        manager.close()


def unix_listener(tmp_path, mode: int, backlog: int):
    """(path, socket) of a listening Unix socket, as the manager sets one up."""
    path = str(tmp_path / "adopted.sock")
    manager = socket.socket(socket.AF_UNIX)
    manager.bind(path)
    os.chmod(path, mode)
    manager.listen(backlog)
    manager.setblocking(False)
    return path, manager


@pytest.mark.parametrize("private", [True, False])
def test_adopt_unix_port(probes, monkeypatch, tmp_path, private):
    """A Unix socket the manager listens on (with others), with its endpoint's backlog and
    mode: by Twisted's private constructor, adopted as it is; or by its public
    adoptStreamPort, fixed up after.  Stopped, it stays listening at its path, for the
    manager to remove."""
    assert compat.unix_adoption_ok()
    if not private:
        monkeypatch.setattr(compat, "unix_adoption_ok", lambda: False)
    path, manager = unix_listener(tmp_path, 0o600, 7)
    reactor = selectreactor.SelectReactor()
    factory = accepting_factory()
    port = compat.adopt_unix_port(reactor, manager.fileno(), factory, 7, 0o600)
    compat.close_alone(port)
    try:
        assert isinstance(port, compat._AdoptedUNIXPort) is private
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert _backlogs().get(path) == 7
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(path)
            for _ in range(20):
                if factory.accepted:
                    break
                reactor.iterate(0.05)
            assert len(factory.accepted) == 1
        compat.stop_adopted(port)
        reactor.runUntilCurrent()
        assert port not in reactor.getReaders()
        assert still_listening(manager, path)
    finally:
        if not private:
            port.socket.close()  # left open by stop_adopted, for the process's exit
        manager.close()


def test_adopted_unix_port_is_not_chmodded(probes, tmp_path):
    """The server process leaves the mode to the manager, who set it once."""
    path, manager = unix_listener(tmp_path, 0o640, 5)  # the mode set by hand, say
    reactor = selectreactor.SelectReactor()
    port = compat.adopt_unix_port(reactor, manager.fileno(), Factory(), 5, 0o600)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    finally:
        compat.close_alone(port)
        compat.stop_adopted(port)
        reactor.runUntilCurrent()
        manager.close()


@pytest.mark.parametrize("change", ["renamed", "listens otherwise"])
def test_unix_adoption_probe_fails_when_twisted_changed(probes, monkeypatch, change):
    if change == "renamed":
        monkeypatch.delattr(unix.Port, "_fromListeningDescriptor")
    else:
        monkeypatch.setattr(unix.Port, "startListening", lambda self: None)
    assert not compat.unix_adoption_ok()


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


class Session(Protocol):
    """What the PROXY wrapper starts: when, with which peer, and what it then receives."""

    def __init__(self):
        self.peer = None
        self.received = b""

    def connectionMade(self):
        self.peer = self.transport.getPeer()

    def dataReceived(self, data):
        self.received += data


class Server:
    """The part of server.Server that a ProxiedSession uses."""

    def __init__(self):
        self.awaiting_header = set()

    def now(self):
        return 0.0


def proxied_session():
    server, session = Server(), Session()
    factory = ProxiedFactory(server, Factory.forProtocol(lambda: session))
    wrapper = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1234))
    wrapper.makeConnection(StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1",
                                                                   5678)))
    return server, wrapper, session


V2_LOCAL = b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"  # a health check: no address


@pytest.mark.parametrize("private", [True, False])
def test_proxied_session_starts_once_the_header_is_read(probes, monkeypatch, private):
    if not private:
        monkeypatch.setattr(compat, "proxy_info_ok", lambda: False)
        assert compat.proxy_passes_on_ok()
    server, wrapper, session = proxied_session()
    for chunk in (compat._PROXY_V1[:10], compat._PROXY_V1[10:-1]):
        wrapper.dataReceived(chunk)
        assert session.transport is None and server.awaiting_header == {wrapper}
    wrapper.dataReceived(compat._PROXY_V1[-1:] + b"GET")
    assert (session.peer.host, session.peer.port, session.received) == ("192.0.2.1", 1111,
                                                                        b"GET")
    assert not server.awaiting_header
    wrapper.dataReceived(b" / HTTP/1.1")
    assert session.received == b"GET / HTTP/1.1"
    # A header alone, without an address (LOCAL): the session starts with the proxy's.
    server, wrapper, session = proxied_session()
    wrapper.dataReceived(V2_LOCAL)
    assert (session.peer.host, session.peer.port, session.received) == ("127.0.0.1", 5678, b"")
    # No header: closed, never started.
    server, wrapper, session = proxied_session()
    wrapper.dataReceived(b"GET / HTTP/1.1\r\n")
    assert session.transport is None and wrapper.transport.disconnecting


@pytest.mark.parametrize("private", [True, False])
@pytest.mark.parametrize("version", list(PROXY_HEADERS))
def test_proxied_session_reads_a_header_a_byte_at_a_time(probes, monkeypatch, private,
                                                         version):
    """Twisted's wrapper judges by its first read: it gets the first bytes once they are
    enough to tell a header from none."""
    if not private:
        monkeypatch.setattr(compat, "proxy_info_ok", lambda: False)
    server, wrapper, session = proxied_session()
    header = PROXY_HEADERS[version]
    for i in range(len(header) - 1):
        wrapper.dataReceived(header[i:i + 1])
        assert session.transport is None and not wrapper.transport.disconnecting
    wrapper.dataReceived(header[-1:] + b"GET")
    assert (session.peer.host, session.peer.port, session.received) == ("203.0.113.7", 40000,
                                                                        b"GET")


def test_proxy_header_undecided():
    for header in PROXY_HEADERS.values():
        assert all(proxy_header_undecided(header[:n]) for n in range(16))
        assert not proxy_header_undecided(header[:16])
    # A whole v1 line is never held, even one shorter than 16 bytes (the spec's UNKNOWN).
    assert not proxy_header_undecided(b"PROXY UNKNOWN\r\n")
    # Nor are bytes that cannot begin a header: the wrapper closes at once.
    for first in (b"G", b"GET / HTTP/1.1\r\n", b"\r\n\r\nX", b"PROXX"):
        assert not proxy_header_undecided(first)
        server, wrapper, session = proxied_session()
        wrapper.dataReceived(first)
        assert session.transport is None and wrapper.transport.disconnecting


def test_proxy_protocol_refused_at_start_up_when_nothing_tells_the_header_end(monkeypatch):
    compat.check_proxy_protocol()
    monkeypatch.setattr(compat, "proxy_info_ok", lambda: False)
    compat.check_proxy_protocol()
    monkeypatch.setattr(compat.HAProxyProtocolWrapper, "dataReceived", lambda self, data: None)
    with pytest.raises(RuntimeError, match="haproxy: endpoints cannot work"):
        compat.check_proxy_protocol()


# -- autobahn ----------------------------------------------------------------------------

def test_websocket_data_received(probes, monkeypatch):
    assert compat.websocket_data_received() is WebSocketServerProtocol._dataReceived
    compat.autobahn_receive_ok.cache_clear()

    def data_received(self, data):  # a dataReceived that no longer delegates
        pass

    monkeypatch.setattr(WebSocketServerProtocol, "dataReceived", data_received)
    assert compat.websocket_data_received() is data_received


def test_autobahn_frames(probes, monkeypatch):
    from autobahn.websocket import protocol

    assert compat.autobahn_frames_ok()
    compat.autobahn_frames_ok.cache_clear()
    # A frame that autobahn counts somewhere else: the server leaves all frames to it.
    reset = protocol.TrafficStats.reset

    def renamed(self):
        reset(self)
        del self.incomingWebSocketFrames
        self.incomingFrames = 0

    monkeypatch.setattr(protocol.TrafficStats, "reset", renamed)
    assert not compat.autobahn_frames_ok()


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


class _Reader(abstract.FileDescriptor):
    """One end of a socket pair on a reactor: records its reads, or raises in them."""

    def __init__(self, sock, reactor, fail=False):
        super().__init__(reactor)
        self.sock = sock
        self.fail = fail
        self.read = b""
        self.lost = []

    def fileno(self):
        return self.sock.fileno()

    def doRead(self):
        if self.fail:
            raise RuntimeError("the protocol's own bug")
        self.read += self.sock.recv(100)

    def connectionLost(self, reason):
        self.lost.append(reason)
        super().connectionLost(reason)


@pytest.fixture
def epoll():
    reactor = epollreactor.EPollReactor()  # built, not installed: its poll is called here
    yield reactor
    reactor._poller.close()
    reactor.waker.connectionLost(None)


def test_plain_poll_dispatches_reads_and_errors_as_dopoll_does(epoll):
    poll = compat.plain_poll(epoll)
    assert poll is not None
    a, b = socket.socketpair()
    c, d = socket.socketpair()
    errors = []

    def observe(event):
        failure = event.get("log_failure") or event.get("failure")  # log.err's: legacy
        if failure is not None:
            errors.append(failure.getErrorMessage())

    try:
        good, bad = _Reader(a, epoll), _Reader(c, epoll, fail=True)
        epoll.addReader(good)
        epoll.addReader(bad)
        b.send(b"ping")
        d.send(b"boom")
        globalLogPublisher.addObserver(observe)
        try:
            poll(1.0)
        finally:
            globalLogPublisher.removeObserver(observe)
        assert good.read == b"ping" and not good.lost
        # What a protocol raises is logged, its connection dropped, the loop goes on.
        assert len(bad.lost) == 1 and bad not in epoll.getReaders()
        assert errors == ["the protocol's own bug"]
        b.send(b"pong")
        poll(1.0)
        assert good.read == b"pingpong"
        poll(0)  # nothing ready: returns at once
    finally:
        for s in (a, b, c, d):
            s.close()


class _Recorder(Protocol):
    """What a TCP connection's protocol is told, in order; it raises when told to."""

    def __init__(self, events, fail=False):
        self.events = events
        self.fail = fail

    def dataReceived(self, data):
        self.events.append(("data", data))
        if self.fail:
            raise RuntimeError("the protocol's own bug")

    def readConnectionLost(self):
        self.events.append(("read lost",))
        self.transport.loseConnection()

    def connectionLost(self, reason):
        self.events.append(("lost", reason.type.__name__))


@implementer(IHalfCloseableProtocol)
class _HalfCloser(_Recorder):
    pass


def _tcp_pair():
    """Two connected TCP sockets on 127.0.0.1 (a reset needs TCP, not a socket pair)."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        b = socket.create_connection(listener.getsockname())
        a, _ = listener.accept()
    return a, b


class _FailingRecv:
    """A socket whose reads fail as a reset connection's do."""

    def __init__(self, sock):
        self.sock = sock

    def __getattr__(self, name):  # the rest (fileno, shutdown, close) is the socket's
        return getattr(self.sock, name)

    def recv(self, size):
        raise ConnectionResetError(104, "Connection reset by peer")


@pytest.mark.parametrize("case", ["data", "end", "half-close", "reset", "recv-fails",
                                  "raises"])
def test_plain_poll_reads_tcp_connections_as_twisteds_doread_does(epoll, case):
    # The same connection and peer, read by plain_poll's reading and by the reactor's own
    # doPoll: the protocol is told the same things, and the connection ends the same way.
    told = {}

    def observe(event):
        failure = event.get("log_failure") or event.get("failure")
        if failure is not None:
            errors.append(failure.getErrorMessage())

    for name, poll in (("plain", compat.plain_poll(epoll)), ("twisted", epoll.doPoll)):
        assert poll is not None
        events: list = []
        errors: list = []
        a, b = _tcp_pair()
        a.setblocking(False)
        protocol = (_HalfCloser if case == "half-close" else _Recorder)(
            events, fail=case == "raises")
        conn = tcp.Connection(a, protocol, epoll)
        if case == "recv-fails":
            conn.socket = _FailingRecv(a)
        conn.connected = True
        protocol.makeConnection(conn)
        conn.startReading()
        globalLogPublisher.addObserver(observe)
        try:
            b.send(b"ping")
            if case in ("end", "half-close"):
                b.shutdown(socket.SHUT_WR)
            elif case == "reset":
                poll(1.0)
                b.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                b.close()  # with a zero linger: a reset
            for _ in range(3):
                poll(0.2)
        finally:
            globalLogPublisher.removeObserver(observe)
            reading = conn in epoll.getReaders()
            if reading:
                conn.stopReading()
            a.close()
            b.close()
        told[name] = (events, errors, reading)
    assert told["plain"] == told["twisted"]
    events, errors, reading = told["plain"]
    if case == "recv-fails":
        assert events == [("lost", "ConnectionLost")] and not reading
        return
    assert events[0] == ("data", b"ping")
    if case == "data":
        assert events == [("data", b"ping")] and reading
    if case == "raises":
        assert errors == ["the protocol's own bug"] and events[-1] == ("lost", "RuntimeError")
    if case == "end":
        assert events[-1] == ("lost", "ConnectionDone")
    if case == "half-close":
        assert ("read lost",) in events
    if case == "reset":
        assert events[-1] == ("lost", "ConnectionLost")


def test_plain_poll_only_for_the_epoll_reactor_as_twisted_wrote_it(epoll):
    class OwnPoll(epollreactor.EPollReactor):
        def doPoll(self, timeout):
            pass

    assert compat.plain_poll(OwnPoll.__new__(OwnPoll)) is None
    assert compat.plain_poll(pollreactor.PollReactor.__new__(pollreactor.PollReactor)) is None
    assert compat.plain_poll(selectreactor.SelectReactor.__new__(
        selectreactor.SelectReactor)) is None
    del epoll._selectables  # renamed in a release to come, say
    assert compat.plain_poll(epoll) is None
    epoll._selectables = {}


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


def test_h2_answers_after_the_clients_goaway(probes):
    from h2.exceptions import ProtocolError
    client, server = compat._h2_pair()
    compat.h2_open_after_goaway(server)
    client.send_headers(1, [(":method", "GET"), (":path", "/"), (":scheme", "http"),
                            (":authority", "x")], end_stream=True)
    # The client's GOAWAY and a frame after it, read at once.
    events = server.receive_data(client.data_to_send() + compat._goaway_and_more())
    assert [type(e).__name__ for e in events] == ["RequestReceived", "StreamEnded",
                                                  "ConnectionTerminated", "WindowUpdated"]
    server.send_headers(1, [(":status", "200")], end_stream=True)
    assert server.data_to_send()
    with pytest.raises(ProtocolError):  # and new streams are still not for the server
        server.send_headers(2, [(":status", "200")])
    plain = compat._h2_pair()  # h2 as released: the frame after a GOAWAY fails
    with pytest.raises(ProtocolError):
        plain[1].receive_data(compat._goaway_and_more())
