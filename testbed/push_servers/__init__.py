"""Local stand-ins for the push providers (FCM HTTP v1 with Google's token endpoint; APNs over
HTTP/2 + TLS), for the push gateway's integration tests, benchmark and load tests. Never product code.

    fcm = fcm_like.start_in_thread(); sa = make_service_account(tmp, fcm.token_url); fcm.add_service_account(sa)
    apns = apns_like.start_in_thread(tls=make_tls(tmp), apns_key=make_apns_key(tmp), topic="com.vicino.app")
    fcm.script(token, fcm_like.unregistered()); ...; fcm.received; fcm.stop()
"""
import importlib

# Resolved on first use, so that `python -m testbed.push_servers.fcm_like` does not find its own
# module already imported by the package (runpy warns about that).
_EXPORTS = {
    "fcm_like": ".fcm_like", "apns_like": ".apns_like", "keys": ".keys",
    "FcmLikeServer": ".fcm_like", "ApnsLikeServer": ".apns_like",
    "FakeServer": "._core", "Received": "._core", "Reply": "._core", "free_port": "._core",
    "ApnsKey": ".keys", "ServiceAccount": ".keys", "Tls": ".keys", "make_apns_key": ".keys",
    "make_service_account": ".keys", "make_tls": ".keys", "google_assertion": ".keys",
    "apns_provider_token": ".keys",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    target = _EXPORTS.get(name)
    if target is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(target, __name__)
    value = module if name in ("fcm_like", "apns_like", "keys") else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
