"""
The client behind a proxy: ``X-Forwarded-For``/``-Proto``/``-Host``/``-Port`` and RFC 7239
``Forwarded``, trusted only from the peers ``forwarded_allow_ips`` names.

From a trusted peer, the headers rewrite ``REMOTE_ADDR`` (and ``REMOTE_PORT`` when
``Forwarded`` gives one), ``wsgi.url_scheme``, ``HTTP_HOST``, ``SERVER_NAME`` and
``SERVER_PORT``; from any other peer they are left in environ as sent and nothing is
taken from them.  The allow list names IP addresses, CIDR networks, ``unix`` (clients
of a Unix socket: a proxy on the same machine) and ``*`` (any peer).

Which address is the client: a proxy appends the address it saw to the right of the
list, so the list is read from the right, skipping the hops that are themselves trusted
proxies; the first one that is not is the client (uvicorn's and waitress's reading).
Taking the leftmost entry instead (as a naive reading does) would let any client put
an address of its choosing there.  With ``*`` every hop is trusted: the leftmost is the
client.  ``-Proto``, ``-Host`` and ``-Port`` come from the nearest proxy, the rightmost
entry; ``Forwarded``, when present, wins over the ``X-Forwarded-*`` headers, and its
element for the chosen hop gives the scheme and host.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

Network = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

DEFAULT = ("127.0.0.1", "::1", "unix")

_SCHEMES = {"http": "80", "https": "443"}
_HOST = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.\-_~%!$&'()*+,;=]+)(?::([0-9]{1,5}))?\Z")
_PAIR = re.compile(r'\s*([!#$%&\'*+.^_`|~0-9A-Za-z-]+)=("(?:[^"\\]|\\.)*"|[^;,"]*)\s*')


class Trusted:
    """The peers whose forwarding headers are believed (ValueError names a bad entry)."""

    def __init__(self, items: Sequence[str]) -> None:
        self.any = False
        self.unix = False
        self.networks: List[Network] = []
        for item in items:
            item = item.strip()
            if item == "*":
                self.any = True
            elif item == "unix":
                self.unix = True
            elif item:
                try:
                    self.networks.append(ipaddress.ip_network(item, strict=False))
                except ValueError:
                    raise ValueError("%r is not an IP address, a network, unix or *"
                                     % item) from None
        self._cache: Dict[str, bool] = {}

    def __bool__(self) -> bool:
        return self.any or self.unix or bool(self.networks)

    def __contains__(self, address: str) -> bool:
        """``address``: an IP address as REMOTE_ADDR has it, or "unix:"."""
        if self.any:
            return True
        if address == "unix:":
            return self.unix
        known = self._cache.get(address)
        if known is None:
            try:
                ip = ipaddress.ip_address(address)
            except ValueError:
                known = False
            else:
                if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
                    ip = ip.ipv4_mapped  # ::ffff:127.0.0.1 on a dual-stack socket
                known = any(ip in net for net in self.networks)
            if len(self._cache) < 4096:
                self._cache[address] = known
        return known


def _split(value: str) -> List[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _node(text: str) -> Tuple[Optional[str], Optional[str]]:
    """An RFC 7239 node (``192.0.2.1``, ``"[2001:db8::1]:80"``) -> (address, port)."""
    text = text.strip().strip('"')
    port = None
    if text.startswith("["):
        address, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = rest[1:]
    elif text.count(":") == 1:
        address, port = text.split(":")
    else:
        address = text
    try:
        ipaddress.ip_address(address)
    except ValueError:
        return None, None  # "unknown", an obfuscated "_hidden" name, or garbage
    if port is not None and not (port.isdigit() and len(port) <= 5):
        port = None
    return address, port


def _forwarded(value: str) -> List[Dict[str, str]]:
    """The elements of RFC 7239 ``Forwarded`` (lower-case parameter names), in order."""
    elements = []
    for element in value.split(","):
        params: Dict[str, str] = {}
        for pair in element.split(";"):
            m = _PAIR.fullmatch(pair)
            if m:
                params[m.group(1).lower()] = m.group(2).strip('"')
        if params:
            elements.append(params)
    return elements


def _pick(hops: Sequence[Optional[str]], trusted: Trusted) -> int:
    """The index of the client among ``hops`` (addresses, left to right)."""
    for i in range(len(hops) - 1, -1, -1):
        address = hops[i]
        if address is None or address not in trusted:
            return i
    return 0


def apply(env: Dict[str, Any], trusted: Trusted) -> None:
    """Rewrite ``env`` from its forwarding headers (the peer is trusted: checked before)."""
    address = port = scheme = host = None
    forwarded = env.get("HTTP_FORWARDED")
    if forwarded is not None:
        elements = _forwarded(forwarded)
        if elements:
            nodes = [_node(e.get("for", "")) for e in elements]
            chosen = _pick([n[0] for n in nodes], trusted)
            address, port = nodes[chosen]
            scheme = elements[chosen].get("proto") or elements[-1].get("proto")
            host = elements[chosen].get("host") or elements[-1].get("host")
    else:
        xff = env.get("HTTP_X_FORWARDED_FOR")
        if xff is not None:
            hops = [_node(h)[0] for h in _split(xff)]
            if hops:
                address = hops[_pick(hops, trusted)]
        proto = env.get("HTTP_X_FORWARDED_PROTO")
        if proto:
            scheme = _split(proto)[-1] if _split(proto) else None
        xhost = env.get("HTTP_X_FORWARDED_HOST")
        if xhost:
            host = _split(xhost)[-1] if _split(xhost) else None
    if address is not None:
        env["REMOTE_ADDR"] = address
        env["REMOTE_PORT"] = port or ""
    if scheme is not None and scheme.lower() in _SCHEMES:
        env["wsgi.url_scheme"] = scheme = scheme.lower()
    else:
        scheme = None
    server_port = None
    if host is not None:
        m = _HOST.match(host)
        if m:
            env["HTTP_HOST"] = host
            env["SERVER_NAME"] = m.group(1).strip("[]")
            server_port = m.group(2)
    if forwarded is None:
        xport = env.get("HTTP_X_FORWARDED_PORT", "").strip()
        if xport.isdigit() and len(xport) <= 5:
            server_port = xport
    if server_port is None and (scheme is not None or host is not None):
        # The proxy's scheme or host without a port: the scheme's default port.
        server_port = _SCHEMES[env["wsgi.url_scheme"]]
    if server_port is not None:
        env["SERVER_PORT"] = server_port
