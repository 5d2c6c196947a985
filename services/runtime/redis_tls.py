"""TLS to Redis from `VICINO_REDIS_URL`: the one reading of a `rediss://` URL's options that
every client shares (redis-py reads the same names itself; the pipelined client builds its
context here), and the refusal of TLS options that would be ignored."""
from __future__ import annotations

import ssl
from urllib.parse import parse_qs, urlsplit


# redis-py's names, which its clients read from the URL themselves; the pipelined client reads
# the same through `tls_context`. No ssl_password: redis-py's asyncio Cluster client has none
# (keep the client key unencrypted, readable by the service's user only).
TLS_OPTIONS = ("ssl_ca_certs", "ssl_certfile", "ssl_keyfile", "ssl_check_hostname")


def tls_options(url: str) -> dict[str, str]:
    """The URL's TLS options; ValueError for an unknown one (a typo would be ignored) or any on
    a plaintext scheme (the password would cross the network in clear)."""
    parts = urlsplit(url)
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    tls = {k: v for k, v in query.items() if k.startswith("ssl")}
    unknown = sorted(set(tls) - set(TLS_OPTIONS))
    if unknown:
        raise ValueError(f"VICINO_REDIS_URL: unknown TLS option(s) {unknown}; known: {', '.join(TLS_OPTIONS)}")
    if tls and parts.scheme != "rediss":
        raise ValueError(f"VICINO_REDIS_URL has TLS options but the scheme {parts.scheme}:// is plaintext; "
                         "use rediss://")
    if "ssl_keyfile" in tls and "ssl_certfile" not in tls:
        raise ValueError("VICINO_REDIS_URL: ssl_keyfile without ssl_certfile")
    return tls


def tls_context(url: str) -> ssl.SSLContext | None:
    """The TLS context a `rediss://` URL asks for (None for `redis://`), as redis-py builds it:
    the chain verified, the host name checked unless `ssl_check_hostname=false`."""
    if urlsplit(url).scheme != "rediss":
        return None
    opts = tls_options(url)
    ctx = ssl.create_default_context(cafile=opts.get("ssl_ca_certs") or None)
    if opts.get("ssl_certfile"):
        ctx.load_cert_chain(opts["ssl_certfile"], opts.get("ssl_keyfile") or None)
    ctx.check_hostname = (opts.get("ssl_check_hostname") or "true").upper() not in ("0", "F", "FALSE", "N", "NO")
    return ctx
