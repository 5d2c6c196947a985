"""Test key material for the push-provider stand-ins: a Google service-account key file, an APNs
`.p8` signing key and a private CA with a loopback server certificate. Never real credentials."""
from __future__ import annotations

import datetime as dt
import ipaddress
import json
import secrets
import ssl
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


def _private_pem(key) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def public_pem(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(source):
    """A public key from a key object, PEM bytes/str or a PEM file holding a public *or* private key
    (a `.p8` or a service-account JSON file works too: the public half is derived)."""
    if hasattr(source, "public_bytes") or hasattr(source, "verify"):
        return source
    if hasattr(source, "public_key"):
        return source.public_key()
    if isinstance(source, Path) or (isinstance(source, str) and "-----BEGIN" not in source):
        data = Path(source).read_bytes()
        if data.lstrip().startswith(b"{"):
            data = json.loads(data)["private_key"].encode()
    else:
        data = source.encode() if isinstance(source, str) else source
    if b"PRIVATE KEY" in data:
        return serialization.load_pem_private_key(data, password=None).public_key()
    return serialization.load_pem_public_key(data)


@dataclass(frozen=True)
class ServiceAccount:
    path: Path              # the key file, in the format the Cloud console downloads
    project_id: str
    client_email: str
    private_key_id: str
    public_key: rsa.RSAPublicKey
    public_key_path: Path   # the public half as PEM, for `fcm_like --service-account-public-key`
    token_uri: str

    @property
    def info(self) -> dict:
        return json.loads(self.path.read_text())

    @property
    def private_key(self) -> rsa.RSAPrivateKey:
        return serialization.load_pem_private_key(self.info["private_key"].encode(), password=None)


def make_service_account(dir: Path, token_uri: str, project_id: str = "vicino-test") -> ServiceAccount:
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private_key_id = secrets.token_hex(20)
    client_email = f"vicino-push@{project_id}.iam.gserviceaccount.com"
    info = {
        "type": "service_account",
        "project_id": project_id,
        "private_key_id": private_key_id,
        "private_key": _private_pem(key).decode(),
        "client_email": client_email,
        "client_id": str(secrets.randbelow(10**21 - 10**20) + 10**20),
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/"
                                + urllib.parse.quote(client_email, safe=""),
        "universe_domain": "googleapis.com",
    }
    path = dir / f"{project_id}-{private_key_id[:12]}.json"
    path.write_text(json.dumps(info, indent=2) + "\n")
    path.chmod(0o600)
    pub_path = path.with_suffix(".pub.pem")
    pub_path.write_bytes(public_pem(key.public_key()))
    return ServiceAccount(path, project_id, client_email, private_key_id, key.public_key(), pub_path, token_uri)


def google_assertion(sa: ServiceAccount, *, scope: str | None = FCM_SCOPE, audience: str | None = None,
                     issued_at: float | None = None, lifetime_s: int = 3600, private_key=None,
                     kid: str | None = "") -> str:
    """The signed JWT a client exchanges at the token endpoint (what google-auth builds)."""
    iat = int(time.time() if issued_at is None else issued_at)
    claims = {"iss": sa.client_email, "aud": audience or sa.token_uri, "iat": iat, "exp": iat + lifetime_s}
    if scope is not None:
        claims["scope"] = scope
    kid = sa.private_key_id if kid == "" else kid
    return jwt.encode(claims, private_key or sa.private_key, algorithm="RS256",
                      headers={"kid": kid} if kid else None)


@dataclass(frozen=True)
class ApnsKey:
    path: Path              # AuthKey_<key_id>.p8
    key_id: str
    team_id: str
    public_key: ec.EllipticCurvePublicKey
    public_key_path: Path   # the public half as PEM, for `apns_like --public-key`

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return serialization.load_pem_private_key(self.path.read_bytes(), password=None)


def make_apns_key(dir: Path, key_id: str = "ABC123DEFG", team_id: str = "DEF123GHIJ") -> ApnsKey:
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    path = dir / f"AuthKey_{key_id}.p8"
    # Apple's downloads carry no newline after the END line
    path.write_bytes(_private_pem(key).rstrip(b"\n"))
    path.chmod(0o600)
    pub_path = dir / f"AuthKey_{key_id}.pub.pem"
    pub_path.write_bytes(public_pem(key.public_key()))
    return ApnsKey(path, key_id, team_id, key.public_key(), pub_path)


def apns_provider_token(key: ApnsKey, *, issued_at: float | None = None, private_key=None,
                        key_id: str | None = None, team_id: str | None = None) -> str:
    """A provider authentication token as Apple specifies it: ES256, `kid` header, `iss` + `iat`."""
    iat = int(time.time() if issued_at is None else issued_at)
    return jwt.encode({"iss": team_id or key.team_id, "iat": iat}, private_key or key.private_key,
                      algorithm="ES256", headers={"kid": key_id or key.key_id})


@dataclass(frozen=True)
class Tls:
    ca_cert: Path
    cert: Path
    key: Path
    client_cert: Path | None = None   # a client certificate from the same CA (mutual TLS), if made
    client_key: Path | None = None

    def client_context(self) -> ssl.SSLContext:
        """Trusts only the test CA; pass as httpx `verify=`."""
        return ssl.create_default_context(cafile=str(self.ca_cert))

    def server_context(self, alpn: tuple[str, ...] = ("h2",)) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(str(self.cert), str(self.key))
        if alpn:
            ctx.set_alpn_protocols(list(alpn))
        return ctx


def _leaf(ca_key, ca_name, ca_ski, start, end, common_name: str, usage, names: tuple[str, ...] = ()):
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (x509.CertificateBuilder()
               .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
               .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end))
    if names:
        sans = []
        for name in names:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                sans.append(x509.DNSName(name))
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = (builder
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def make_tls(dir: Path, *, server_names: tuple[str, ...] = ("127.0.0.1", "localhost"), client: bool = False) -> Tls:
    """A private CA and a server certificate for `server_names` (IP addresses or DNS names);
    with `client`, a client certificate from the same CA too (for servers that require one)."""
    dir = Path(dir)
    dir.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    start, end = now - dt.timedelta(days=1), now + dt.timedelta(days=30)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Vicino tests"),
                         x509.NameAttribute(NameOID.COMMON_NAME, "Vicino test CA")])
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(start).not_valid_after(end)
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False, data_encipherment=False,
                                       key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
          .add_extension(ca_ski, critical=False)
          .sign(ca_key, hashes.SHA256()))

    key, cert = _leaf(ca_key, ca_name, ca_ski, start, end, server_names[0], ExtendedKeyUsageOID.SERVER_AUTH,
                      server_names)
    files = {"ca_cert": dir / "ca.pem", "cert": dir / "server.pem", "key": dir / "server.key"}
    files["ca_cert"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files["cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files["key"].write_bytes(_private_pem(key))
    files["key"].chmod(0o600)
    if client:
        client_key, client_cert = _leaf(ca_key, ca_name, ca_ski, start, end, "vicino-client",
                                        ExtendedKeyUsageOID.CLIENT_AUTH)
        files |= {"client_cert": dir / "client.pem", "client_key": dir / "client.key"}
        files["client_cert"].write_bytes(client_cert.public_bytes(serialization.Encoding.PEM))
        files["client_key"].write_bytes(_private_pem(client_key))
        files["client_key"].chmod(0o600)
    return Tls(**files)
