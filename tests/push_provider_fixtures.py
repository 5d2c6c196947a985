"""pytest fixtures for the provider stand-ins of testbed/push_servers: key material, an FCM-like and an APNs-like server
per test module (reset before each test). Import them into a test module to use them."""
from __future__ import annotations

import pytest

from testbed.push_servers import apns_like, fcm_like
from testbed.push_servers.keys import make_apns_key, make_service_account, make_tls

TOPIC = "com.vicino.app"


@pytest.fixture(scope="module")
def material(tmp_path_factory):
    d = tmp_path_factory.mktemp("push-keys")
    return {"tls": make_tls(d), "apns_key": make_apns_key(d), "dir": d}


@pytest.fixture(scope="module")
def fcm_server(material):
    server = fcm_like.start_in_thread(project_id="vicino-test")
    server.sa = make_service_account(material["dir"], server.token_url)
    server.add_service_account(server.sa)
    yield server
    server.stop()


@pytest.fixture
def fcm(fcm_server):
    fcm_server.reset()
    return fcm_server


@pytest.fixture(scope="module")
def apns_server(material):
    server = apns_like.start_in_thread(tls=material["tls"], apns_key=material["apns_key"], topic=TOPIC)
    yield server
    server.stop()


@pytest.fixture
def apns(apns_server):
    apns_server.reset()
    return apns_server
