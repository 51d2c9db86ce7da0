"""A small authoritative-and-recursive-looking DNS server for tests, serving UDP and TCP.

It answers from records set with `add` (zone-file rdata text), follows CNAMEs, answers NXDOMAIN
for names without any record and NODATA for names with other types, SERVFAIL for names marked
with `fail`, sets the AD flag for names under a suffix marked with `set_secure` (pretending to be
a validating resolver, and only when the query asked with AD or DO, as RFC 6840 5.7 says), and
truncates UDP answers larger than the client's payload so the client must retry over TCP. Every
query it gets is recorded for assertions.

Usage:
    with ZoneServer("127.0.53.1") as server:
        server.add("example.test", "MX", "10 mx1.example.test.")
        resolver = Resolver([server.nameserver])

Security: test code only; it listens on the loopback address it is given and drops malformed
messages.
"""

from __future__ import annotations

import errno
import selectors
import socket
import struct
import threading
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rdtypes.ANY.CNAME
import dns.rrset
from tests.support.loopback import ThreadedServer

_MAX_CHAIN = 8  # CNAME hops followed before giving up (loops end here)
_UDP_MIN_PAYLOAD = 512  # RFC 1035 size for clients without EDNS
_SEND_TIMEOUT = 10.0  # a client that stops reading cannot hang the server longer


@dataclass(frozen=True, slots=True)
class Query:
    """One query as received: name (lower case, no trailing dot), type, transport, header."""

    name: str
    rdtype: str
    transport: str  # "udp" or "tcp"
    flags: int  # header flags (dns.flags.AD, dns.flags.RD, ...)
    edns: int  # EDNS version, -1 without EDNS
    payload: int  # EDNS payload size (0 without EDNS)
    ednsflags: int  # EDNS flags (dns.flags.DO)


class ZoneServer(ThreadedServer):
    """A DNS server on (address, port), UDP and TCP, run by one background thread.

    `port=0` picks a free port (the same for UDP and TCP); `nameserver` is (address, port)
    once started.
    """

    def __init__(self, address: str, port: int = 53) -> None:
        super().__init__(f"dns-{address}")
        self.address = address
        self.port = port
        self._family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._lock = threading.Lock()
        self._records: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}
        self._secure: list[dns.name.Name] = []
        self._failing: set[tuple[dns.name.Name, dns.rdatatype.RdataType | None]] = set()
        self._queries: list[Query] = []
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None

    @property
    def nameserver(self) -> tuple[str, int]:
        return (self.address, self.port)

    # -- records ----------------------------------------------------------------------------

    def add(self, name: str, rdtype: str, text: str, ttl: int = 300) -> None:
        """Add one record; `text` is zone-file rdata, relative names are taken as absolute."""
        owner = _name(name)
        rdata = dns.rdata.from_text(
            dns.rdataclass.IN, rdtype, text, origin=dns.name.root, relativize=False
        )
        with self._lock:
            rrset = self._records.setdefault(
                (owner, rdata.rdtype), dns.rrset.RRset(owner, dns.rdataclass.IN, rdata.rdtype)
            )
            rrset.add(rdata, ttl)

    def remove(self, name: str, rdtype: str) -> None:
        with self._lock:
            self._records.pop((_name(name), dns.rdatatype.from_text(rdtype)), None)

    def clear(self) -> None:
        """Forget all records, failures, secure suffixes and recorded queries."""
        with self._lock:
            self._records.clear()
            self._failing.clear()
            self._secure.clear()
            self._queries.clear()

    def set_secure(self, zone_suffix: str) -> None:
        """Answers for names at or under `zone_suffix` carry AD (if the query asked for it)."""
        with self._lock:
            self._secure.append(_name(zone_suffix))

    def fail(self, name: str, rdtype: str | None = None) -> None:
        """Queries for `name` (of `rdtype`, or of any type) get SERVFAIL."""
        qtype = None if rdtype is None else dns.rdatatype.from_text(rdtype)
        with self._lock:
            self._failing.add((_name(name), qtype))

    @property
    def queries(self) -> list[Query]:
        with self._lock:
            return list(self._queries)

    # -- serving ----------------------------------------------------------------------------

    def _bind(self) -> None:
        self._wake = socket.socketpair()
        self._sockets = self._bind_pair()
        self.port = self._sockets[0].getsockname()[1]

    def _release(self) -> None:
        for pair in (self._sockets, self._wake):
            for sock in pair or ():
                sock.close()
        self._sockets = self._wake = None

    def _interrupt(self) -> None:
        assert self._wake is not None
        self._wake[1].send(b"x")

    def _bind_pair(self) -> tuple[socket.socket, socket.socket]:
        # With port 0, UDP picks the port and TCP must get the same one; retry if it is taken.
        for _ in range(20):
            udp = socket.socket(self._family, socket.SOCK_DGRAM)
            tcp = socket.socket(self._family, socket.SOCK_STREAM)
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                udp.bind((self.address, self.port))
                tcp.bind((self.address, udp.getsockname()[1]))
            except OSError as e:
                udp.close()
                tcp.close()
                if self.port != 0 or e.errno != errno.EADDRINUSE:
                    raise
                continue
            tcp.listen(16)
            return udp, tcp
        raise RuntimeError(f"no free port for UDP and TCP on {self.address}")

    def _serve(self) -> None:
        assert self._sockets is not None
        assert self._wake is not None
        udp, tcp = self._sockets
        wake = self._wake[0]
        buffers: dict[socket.socket, bytearray] = {}
        with selectors.DefaultSelector() as selector:
            selector.register(udp, selectors.EVENT_READ)
            selector.register(tcp, selectors.EVENT_READ)
            selector.register(wake, selectors.EVENT_READ)
            self._serving()
            try:
                while True:
                    for key, _ in selector.select():
                        sock = key.fileobj
                        assert isinstance(sock, socket.socket)
                        if sock is wake:
                            return
                        try:
                            self._dispatch(selector, sock, udp, tcp, buffers)
                        except Exception as e:  # kept for stop() to raise
                            self._failed(e)
            finally:
                for conn in buffers:
                    conn.close()

    def _dispatch(
        self,
        selector: selectors.BaseSelector,
        sock: socket.socket,
        udp: socket.socket,
        tcp: socket.socket,
        buffers: dict[socket.socket, bytearray],
    ) -> None:
        if sock is udp:
            self._serve_udp(sock)
        elif sock is tcp:
            conn, _ = sock.accept()
            conn.setblocking(False)
            buffers[conn] = bytearray()
            selector.register(conn, selectors.EVENT_READ)
        elif not self._serve_tcp(sock, buffers[sock]):
            selector.unregister(sock)
            del buffers[sock]
            sock.close()

    def _serve_udp(self, sock: socket.socket) -> None:
        data, peer = sock.recvfrom(65535)
        query = _parse(data)
        if query is None:
            return
        limit = max(_UDP_MIN_PAYLOAD, query.payload) if query.edns >= 0 else _UDP_MIN_PAYLOAD
        response = self._respond(query, "udp")
        try:
            wire = response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            # Header and question only, TC set: the client must ask again over TCP.
            truncated = dns.message.make_response(query)
            truncated.flags |= dns.flags.TC
            truncated.set_rcode(response.rcode())
            wire = truncated.to_wire(max_size=limit)
        sock.sendto(wire, peer)

    def _serve_tcp(self, conn: socket.socket, buffer: bytearray) -> bool:
        """Read what arrived and answer each complete message; False when the peer closed."""
        try:
            data = conn.recv(65535)
        except OSError:
            return False
        if not data:
            return False
        buffer += data
        while len(buffer) >= 2:
            (length,) = struct.unpack("!H", buffer[:2])
            if len(buffer) < 2 + length:
                break
            message = bytes(buffer[2 : 2 + length])
            del buffer[: 2 + length]
            query = _parse(message)
            if query is None:
                return False
            wire = self._respond(query, "tcp").to_wire(max_size=65535)
            conn.settimeout(_SEND_TIMEOUT)
            try:
                conn.sendall(struct.pack("!H", len(wire)) + wire)
            except OSError:
                return False
            finally:
                conn.setblocking(False)
        return True

    def _respond(self, query: dns.message.Message, transport: str) -> dns.message.Message:
        response = dns.message.make_response(query, our_payload=4096)
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        asked_for_ad = bool(query.flags & dns.flags.AD or query.ednsflags & dns.flags.DO)
        with self._lock:
            self._queries.append(
                Query(
                    name=_text(question.name),
                    rdtype=dns.rdatatype.to_text(question.rdtype),
                    transport=transport,
                    flags=int(query.flags),
                    edns=query.edns,
                    payload=int(query.payload) if query.edns >= 0 else 0,
                    ednsflags=int(query.ednsflags),
                )
            )
            secure = self._resolve(question.name, question.rdtype, response)
        if secure and asked_for_ad and response.rcode() != dns.rcode.SERVFAIL:
            response.flags |= dns.flags.AD
        return response

    def _resolve(
        self, qname: dns.name.Name, qtype: dns.rdatatype.RdataType, response: dns.message.Message
    ) -> bool:
        """Fill `response` (answer section, rcode); whether every name on the way is secure."""
        name = qname
        secure = True
        for _ in range(_MAX_CHAIN):
            secure = secure and any(name.is_subdomain(suffix) for suffix in self._secure)
            if (name, None) in self._failing or (name, qtype) in self._failing:
                response.set_rcode(dns.rcode.SERVFAIL)
                del response.answer[:]
                return False
            rrset = self._records.get((name, qtype))
            if rrset is not None:
                response.answer.append(_copy(rrset))
                return secure
            cname = self._records.get((name, dns.rdatatype.CNAME))
            if cname is None:
                if not any(owner == name for owner, _ in self._records):
                    response.set_rcode(dns.rcode.NXDOMAIN)
                return secure
            response.answer.append(_copy(cname))
            target = cname[0]
            assert isinstance(target, dns.rdtypes.ANY.CNAME.CNAME)
            name = target.target
        return secure


def _name(text: str) -> dns.name.Name:
    return dns.name.from_text(text, origin=dns.name.root)


def _text(name: dns.name.Name) -> str:
    text: str = name.canonicalize().to_text(omit_final_dot=True)
    return text


def _copy(rrset: dns.rrset.RRset) -> dns.rrset.RRset:
    """A copy to render outside the lock while `add` may change the original."""
    return dns.rrset.from_rdata_list(rrset.name, rrset.ttl, list(rrset))


def _parse(data: bytes) -> dns.message.Message | None:
    try:
        query = dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError):
        return None
    if query.flags & dns.flags.QR:
        return None  # a response, not a query
    return query
