"""Reading the URLs clients name (attachments, training datasets): one policy, one place.

- ``data:`` URLs, base64 or percent-encoded;
- ``file://`` URLs, only for files inside one of ``file_roots`` once symlinks and ``..`` are resolved (no
  roots configured: ``file://`` is refused). A path outside the roots gets the same answer whether or not
  it exists, so that the server cannot be asked what is on its disk;
- ``http://`` and ``https://`` URLs, only where the provider's config turns ``allow_http`` on: a server that
  fetches whatever a client names can be made to reach what it guards (loopback services, the private
  network, a cloud's metadata endpoint). When on, this module resolves each host itself, checks every
  address it resolves to (loopback, private, link-local, multicast, unspecified, reserved and other
  non-global addresses are refused unless ``allowed_hosts`` names the host) and connects to the checked
  address only, the URL's host kept in the Host header and in TLS SNI (so certificates are still verified
  against it). Redirects are followed one at a time, each hop checked the same way; the whole fetch has a
  deadline; the body is abandoned as soon as it passes the size limit.

Every problem is a 400 naming the request field. A policy answer says "refused"; a fetch that did not work
says "failed", in one text whatever went wrong (no connection, a reset, a timeout, an error status), and
never carries what the remote server answered: the answers must not map the network behind the server.
What is read is called by its ``noun`` ("attachment", "dataset") and its settings by their config block
(``attachments.max_bytes``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import ipaddress
import logging
import os
import re
import socket
import urllib.parse
import urllib.request
from pathlib import Path

import httpx
from pydantic import BaseModel, ConfigDict, Field, field_validator

from llama_stack.apis.errors import BadRequestError

MIB = 1024 * 1024

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# IPv6 forms that carry an IPv4 address which is what the packets finally reach.
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_HOST_NAME = re.compile(r"^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$")


def host_key(host: str) -> str:
    """How a host is compared with ``allowed_hosts``: lower case, no trailing dot or IPv6 brackets, an IP
    address in its canonical text."""
    bare = host.strip().removeprefix("[").removesuffix("]").lower()
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        return bare.rstrip(".")


class URLSourceConfig(BaseModel):
    """Where URLs may be read from; a provider's config blocks subclass it with their own defaults."""

    model_config = ConfigDict(extra="forbid")

    file_roots: list[Path] = Field(
        default_factory=list,
        description="Folders whose files file:// URLs may name (after resolving symlinks and '..'); empty refuses file://.",
    )
    max_bytes: int = Field(default=MIB, ge=1, description="The most bytes read (after base64 decoding); more is a 400.")
    allow_http: bool = Field(
        default=False,
        description=(
            "Fetch http:// and https:// URLs that clients name. Off by default: a server that fetches any URL can "
            "be made to reach what it guards. When on, hosts resolving to loopback, private, link-local and other "
            "non-public addresses are still refused unless allowed_hosts names them."
        ),
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Hosts (names or IP addresses, as written in URLs) fetched even though they resolve to loopback, "
            "private or other non-public addresses, e.g. ['127.0.0.1', 'files.internal.example']; only with allow_http."
        ),
    )
    http_timeout_s: float = Field(
        default=10.0, gt=0, description="Seconds allowed to connect to, and then between reads from, a URL's server."
    )
    http_deadline_s: float = Field(
        default=30.0,
        gt=0,
        description="Seconds one http(s):// fetch may take in all: resolving, every redirect and the whole body.",
    )
    max_redirects: int = Field(default=5, ge=0, description="Redirects followed (each one checked like the first URL).")

    @field_validator("allowed_hosts")
    @classmethod
    def _hosts_only(cls, hosts: list[str]) -> list[str]:
        keys = []
        for host in hosts:
            key = host_key(host)
            if not _is_ip(key) and not _HOST_NAME.match(key):
                raise ValueError(
                    f"{host!r} is not a host name or IP address (write the host alone: no scheme, port or path; "
                    "international names in their xn-- form)"
                )
            keys.append(key)
        return keys


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def non_public_kind(address: IPAddress) -> str | None:
    """What makes ``address`` one the server must not reach on a client's word ("loopback", "private", ...);
    None for a public address. An IPv4 address carried in IPv6 (mapped, 6to4, NAT64) is judged as itself."""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return non_public_kind(address.ipv4_mapped)
        embedded = address.sixtofour or (ipaddress.IPv4Address(address.packed[-4:]) if address in _NAT64 else None)
        if embedded is not None and (kind := non_public_kind(embedded)):
            return kind
    checks = (
        ("unspecified", address.is_unspecified),
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("reserved", address.is_reserved),
        ("private", address.is_private),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        ("non-global", not address.is_global),
    )
    return next((kind for kind, hit in checks if hit), None)


def bad_field(where: str, message: str, provider: str | None = None) -> BadRequestError:
    """A 400 naming the request field ``where``."""
    return BadRequestError(
        f"{where}: {message}", details=[{"loc": where, "in": "body", "message": message}], provider=provider
    )


class _Refused(Exception):
    """The policy does not fetch this URL; raised before anything is sent to it."""

    def __init__(self, reason: str, detail: str | None = None, *, by_address: bool = False):
        super().__init__(reason)
        self.reason = reason  # what the client is told
        self.detail = detail or reason  # what the server's log says (the address a name resolved to, a hop's URL)
        self.by_address = by_address  # allowed_hosts could let it through


class _Failed(Exception):
    """The server was reached but its answer cannot be used (an error status, a redirect without a target)."""


async def public_addresses(host: str, port: int) -> list[IPAddress]:
    """The addresses to connect to for ``host``, in the resolver's order: every one must be public.

    A name that does not resolve is refused in the same words as one resolving to a private address, so
    that clients cannot use the server to learn which internal names exist.
    """
    try:
        literal: IPAddress | None = ipaddress.ip_address(host)
    except ValueError:
        literal = None
    if literal is not None:
        if kind := non_public_kind(literal):
            raise _Refused(f"{host} is a {kind} address", by_address=True)
        return [literal]
    not_public = f"its host {host!r} does not resolve to public addresses only"
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise _Refused(not_public, f"{host!r} does not resolve: {exc}", by_address=True) from None
    addresses = [ipaddress.ip_address(str(info[4][0]).partition("%")[0]) for info in infos]
    if not addresses:
        raise _Refused(not_public, f"{host!r} resolves to no address", by_address=True)
    for address in addresses:
        if kind := non_public_kind(address):
            raise _Refused(not_public, f"{host!r} resolves to {address}, a {kind} address", by_address=True)
    return list(dict.fromkeys(addresses))


class PinnedTransport(httpx.AsyncBaseTransport):
    """Sends each request to an address checked here, never to one resolved again later.

    The URL's host is resolved and checked (:func:`public_addresses`), then the request goes to those
    addresses (the next one when a connection cannot be made) with the host kept in the Host header and as
    the TLS server name. Hosts in ``allowed_hosts`` are sent as they are.
    """

    def __init__(self, allowed_hosts: list[str], inner: httpx.AsyncBaseTransport | None = None):
        self._allowed = frozenset(allowed_hosts)
        # No connection is kept for reuse: one to an address must not serve a request for another host.
        self._inner = inner or httpx.AsyncHTTPTransport(limits=httpx.Limits(max_keepalive_connections=0), retries=0)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise _Refused(f"it leads to a {url.scheme}: URL; only http:// and https:// are fetched")
        host = url.raw_host.decode("ascii")
        if not host:
            raise _Refused("it names no host")
        if host_key(host) in self._allowed:
            return await self._inner.handle_async_request(request)
        port = url.port or (443 if url.scheme == "https" else 80)
        addresses = await public_addresses(host, port)
        for index, address in enumerate(addresses):
            pinned = httpx.Request(
                request.method,
                url.copy_with(host=str(address)),
                headers=request.headers,  # still names the URL's host (the client set Host from it)
                stream=request.stream,  # GET: nothing to send, so it can go again to the next address
                extensions={**request.extensions, "sni_hostname": host},
            )
            try:
                return await self._inner.handle_async_request(pinned)
            except httpx.ConnectError:
                if index == len(addresses) - 1:
                    raise
        raise AssertionError("unreachable: public_addresses returns at least one address")

    async def aclose(self) -> None:
        await self._inner.aclose()


def _loggable(url: httpx.URL | str) -> str:
    """A URL without its query, fragment or user info (which may hold a client's tokens)."""
    parts = httpx.URL(str(url))
    return str(parts.copy_with(query=None, fragment=None, username=None, password=None))


class URLReader:
    """Reads data:, file:// and http(s):// URLs as its config allows."""

    def __init__(
        self,
        config: URLSourceConfig,
        *,
        noun: str,
        block: str,
        provider: str | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ):
        """``transport`` (tests) carries the requests once their host is checked; by default a plain one."""
        self.config = config
        self.noun = noun
        self.block = block
        self.provider = provider
        self._transport = transport
        self._roots = [Path(root).expanduser().resolve() for root in config.file_roots]

    def client(self) -> httpx.AsyncClient:
        """An HTTP client for several reads (the caller closes it)."""
        return httpx.AsyncClient(
            transport=PinnedTransport(self.config.allowed_hosts, self._transport),
            timeout=self.config.http_timeout_s,
            follow_redirects=False,  # followed here, each hop checked
            trust_env=False,  # no proxy from the environment (it would connect for us, unchecked), no .netrc
        )

    async def read(
        self,
        url: str,
        where: str,
        *,
        max_bytes: int | None = None,
        limit: str | None = None,
        client: httpx.AsyncClient | None = None,
    ) -> tuple[bytes, str | None]:
        """The URL's bytes and the mime type it declares (a data: URL's, a server's Content-Type; None for a
        file). ``max_bytes`` lowers the limit (``limit`` says whose it is in the 400); ``client`` (from
        :meth:`client`) is reused for http(s):// when given."""
        cap = min(self.config.max_bytes, max_bytes) if max_bytes else self.config.max_bytes
        limit = limit or f"the {cap} bytes allowed ({self.block}.max_bytes)"
        scheme = url.split(":", 1)[0].lower()
        if scheme == "data":
            return self._read_data(url, where, cap, limit)
        if scheme == "file":
            return await asyncio.to_thread(self._read_file, url, where, cap, limit), None
        if scheme in ("http", "https"):
            self._check_http_allowed(where)
            if client is not None:
                return await self._read_http(client, url, where, cap, limit)
            async with self.client() as own:
                return await self._read_http(own, url, where, cap, limit)
        raise self._bad(where, f"unsupported {self.noun} URL scheme {scheme!r}; use data:, file:// or http(s)://")

    def _bad(self, where: str, message: str) -> BadRequestError:
        return bad_field(where, message, self.provider)

    def _too_large(self, where: str, size: str, limit: str) -> BadRequestError:
        return self._bad(where, f"the {self.noun} ({size}) is larger than {limit}")

    def _read_data(self, url: str, where: str, cap: int, limit: str) -> tuple[bytes, str | None]:
        header, comma, payload = url[5:].partition(",")
        if not comma:
            raise self._bad(where, "a data: URL needs a comma before its data (data:[<mime type>][;base64],<data>)")
        params = header.split(";")
        is_base64 = params[-1].strip().lower() == "base64"
        mime_type = ";".join(params[:-1] if is_base64 else params).strip() or None
        if is_base64:
            encoded = b"".join(urllib.parse.unquote_to_bytes(payload).split())
            if len(encoded) // 4 * 3 > cap + 2:
                raise self._too_large(where, f"about {len(encoded) // 4 * 3} bytes", limit)
            try:
                data = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise self._bad(where, f"the data: URL's base64 data is invalid: {exc}") from None
        else:
            data = urllib.parse.unquote_to_bytes(payload)
        if len(data) > cap:
            raise self._too_large(where, f"{len(data)} bytes", limit)
        return data, mime_type

    # -- file:// ---------------------------------------------------------------------------------------------

    def _read_file(self, url: str, where: str, cap: int, limit: str) -> bytes:
        if not self._roots:
            raise self._bad(
                where,
                f"file:// {self.noun}s are refused: the provider has no {self.block}.file_roots configured "
                f"(add the folder to its config, or send the {self.noun} as a data: URL)",
            )
        parts = urllib.parse.urlsplit(url)
        if parts.netloc not in ("", "localhost"):
            raise self._bad(where, f"file:// URLs name a local file; got host {parts.netloc!r}")
        path = Path(urllib.request.url2pathname(parts.path))
        if not path.is_absolute():
            raise self._bad(where, f"a file:// URL needs an absolute path, got {parts.path!r}")
        if "\x00" in str(path):
            raise self._bad(where, "a file:// URL's path cannot hold a NUL character")
        # realpath without strict: symlinks that exist are followed, the rest resolved as written, and no
        # error tells an existing path outside the roots from a missing one.
        resolved = Path(os.path.realpath(path))
        if not any(resolved == root or resolved.is_relative_to(root) for root in self._roots):
            allowed = ", ".join(str(r) for r in self._roots)
            raise self._bad(
                where,
                f"file {str(path)!r} is refused: it is outside the folders {self.noun}s may come from ({allowed})",
            )
        if not resolved.exists():
            raise self._bad(where, f"file {str(path)!r} does not exist")
        if not resolved.is_file():
            raise self._bad(where, f"{str(path)!r} is not a regular file")
        try:
            with resolved.open("rb") as handle:
                data = handle.read(cap + 1)
        except OSError as exc:
            raise self._bad(where, f"file {str(path)!r} cannot be read: {exc.strerror}") from None
        if len(data) > cap:
            raise self._too_large(where, f"over {cap} bytes", limit)
        return data

    # -- http(s):// ------------------------------------------------------------------------------------------

    def _check_http_allowed(self, where: str) -> None:
        if not self.config.allow_http:
            raise self._bad(
                where,
                f"refused: remote (http:// and https://) {self.noun} URLs are disabled on this server; its "
                f"distribution enables them by setting {self.block}.allow_http to true in this provider's config "
                f"(or send the {self.noun} as a data: URL)",
            )

    def _failed(self, url: str) -> str:
        # One text for every way a fetch goes wrong: telling them apart would tell open, closed and
        # filtered ports apart, and an error status's body is the inside service's to keep.
        return (
            f"fetching {url} failed: it could not be reached, answered with an error, or took longer than allowed "
            f"({self.block}.http_timeout_s, {self.block}.http_deadline_s)"
        )

    async def _read_http(
        self, client: httpx.AsyncClient, url: str, where: str, cap: int, limit: str
    ) -> tuple[bytes, str | None]:
        try:
            request = client.build_request("GET", url)
        except (httpx.InvalidURL, UnicodeError) as exc:
            raise self._bad(where, f"{url!r} is not a valid http(s):// URL: {exc}") from None
        if request.url.scheme not in ("http", "https") or not request.url.raw_host:
            raise self._bad(where, f"{url!r} is not a valid http(s):// URL: it names no host")
        try:
            # wait_for, not asyncio.timeout: the runtime supports Python 3.10, which lacks the latter.
            return await asyncio.wait_for(self._follow(client, request, where, cap, limit), self.config.http_deadline_s)
        except _Refused as refusal:
            log.info("%s: refused to fetch %s: %s", where, _loggable(url), refusal.detail)
            hint = f" (unless {self.block}.allowed_hosts names the host)" if refusal.by_address else ""
            raise self._bad(where, f"refused to fetch {url}: {refusal.reason}{hint}") from None
        # On Python 3.10 asyncio.TimeoutError (what wait_for raises) is not yet the built-in TimeoutError.
        except (httpx.HTTPError, _Failed, asyncio.TimeoutError, TimeoutError, OSError) as exc:
            log.info("%s: fetching %s failed: %s: %s", where, _loggable(url), type(exc).__name__, exc)
            raise self._bad(where, self._failed(url)) from None

    async def _follow(
        self, client: httpx.AsyncClient, request: httpx.Request, where: str, cap: int, limit: str
    ) -> tuple[bytes, str | None]:
        for hop in range(self.config.max_redirects + 1):
            try:
                response = await client.send(request, stream=True)
            except _Refused as refusal:
                if hop == 0:
                    raise
                # Where a redirect points is the redirecting server's to tell, not ours: the log has it.
                raise _Refused(
                    f"redirect {hop} leads to an address this server does not fetch from",
                    f"redirect {hop}: {refusal.detail}",
                    by_address=refusal.by_address,
                ) from None
            try:
                if response.next_request is None:  # set by httpx for a 301, 302, 303, 307 or 308 with a Location
                    if not response.is_success:
                        raise _Failed(f"HTTP {response.status_code} from {_loggable(response.url)}")
                    return await self._body(response, where, cap, limit)
            finally:
                await response.aclose()
            request = response.next_request
            if request.url.scheme not in ("http", "https"):
                raise _Refused(
                    f"redirect {hop + 1} leads to a {request.url.scheme}: URL; only http:// and https:// are fetched"
                )
        raise _Refused(f"it redirects more than {self.config.max_redirects} times ({self.block}.max_redirects)")

    async def _body(self, response: httpx.Response, where: str, cap: int, limit: str) -> tuple[bytes, str | None]:
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > cap:
            raise self._too_large(where, f"{declared} bytes", limit)
        body = bytearray()
        async for piece in response.aiter_bytes():
            body += piece
            if len(body) > cap:
                raise self._too_large(where, f"over {cap} bytes", limit)
        return bytes(body), response.headers.get("content-type")
