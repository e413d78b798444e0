"""Tokens for the auth tests: an HS256 secret, RSA, EC P-256 and Ed25519 key pairs with their
public JWKS, `mint` to sign claims, hand-made tokens PyJWT refuses to make (`alg: none`, HS256
keyed with a public key), and a key set served over HTTP on loopback that counts its reads and
can change its keys (the refetch tests)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from boxoffice.service.settings import Settings

ISSUER = "https://issuer.boxoffice.test/"
AUDIENCE = "boxoffice-api"
SECRET = "the-hmac-secret-of-the-boxoffice-tests-long-enough-for-hs512-too"
"""The service's own HMAC secret (64 bytes: PyJWT warns below 64 for HS512 tokens)."""
OTHER_SECRET = "another-hmac-secret-that-nobody-gave-the-boxoffice-service-at-all"
ADMIN_ROLE = "boxoffice:admin"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class KeyPair:
    """A signing key, the JOSE algorithm it signs with and the `kid` it is published under."""

    kid: str
    alg: str
    private: PrivateKey

    def jwk(self) -> dict[str, Any]:
        """The public half as a JWK (with kid, alg and use)."""
        public = self.private.public_key()
        jwk: dict[str, Any]
        if isinstance(public, rsa.RSAPublicKey):
            jwk = dict(RSAAlgorithm.to_jwk(public, as_dict=True))
        elif isinstance(public, ec.EllipticCurvePublicKey):
            jwk = dict(ECAlgorithm.to_jwk(public, as_dict=True))
        else:
            jwk = dict(OKPAlgorithm.to_jwk(public, as_dict=True))
        return {**jwk, "kid": self.kid, "alg": self.alg, "use": "sig"}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


def rsa_pair(kid: str = "rsa-1") -> KeyPair:
    return KeyPair(kid, "RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048))


def ec_pair(kid: str = "ec-1") -> KeyPair:
    return KeyPair(kid, "ES256", ec.generate_private_key(ec.SECP256R1()))


def ed25519_pair(kid: str = "ed-1") -> KeyPair:
    return KeyPair(kid, "EdDSA", ed25519.Ed25519PrivateKey.generate())


def jwks(*pairs: KeyPair) -> dict[str, Any]:
    """The public JSON Web Key Set of `pairs`."""
    return {"keys": [pair.jwk() for pair in pairs]}


def claims(user: str | None, **overrides: Any) -> dict[str, Any]:
    """Claims the tests' service accepts for `user` (None: no `sub`), valid for 5 minutes;
    `overrides` replace or add claims, a None value removes one."""
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": user,
        "iat": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,  # every token its own text: no cache answers for another
        **overrides,
    }
    return {name: value for name, value in values.items() if value is not None}


def mint(
    values: dict[str, Any],
    key: KeyPair | str = SECRET,
    *,
    alg: str | None = None,
    kid: str | None = None,
) -> str:
    """`values` signed with `key`: a key pair (its algorithm, its kid unless `kid` is given) or
    an HMAC secret (HS256 unless `alg` is given)."""
    if isinstance(key, str):
        headers = {"kid": kid} if kid else None
        return jwt.encode(values, key, algorithm=alg or "HS256", headers=headers)
    return jwt.encode(
        values, key.private, algorithm=alg or key.alg, headers={"kid": kid or key.kid}
    )


def token_for(user: str, key: KeyPair | str = SECRET, *, admin: bool = False) -> str:
    """A valid token of `user` (with the admin role in its scope when `admin`)."""
    return mint(claims(user, scope=ADMIN_ROLE if admin else "profile"), key)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _segment(value: dict[str, Any]) -> str:
    return _b64(json.dumps(value, separators=(",", ":")).encode())


def unsigned(values: dict[str, Any]) -> str:
    """`alg: none`: a header, the claims and an empty signature, made by hand."""
    return f"{_segment({'alg': 'none', 'typ': 'JWT'})}.{_segment(values)}."


def hs256_keyed_with(secret: bytes, values: dict[str, Any], kid: str | None = None) -> str:
    """An HS256 token whose HMAC key is `secret` — a public key's PEM, the classic confusion
    (made by hand: PyJWT refuses a key that looks like a public key as an HMAC secret)."""
    header: dict[str, Any] = {"alg": "HS256", "typ": "JWT"}
    if kid is not None:
        header["kid"] = kid
    signing_input = f"{_segment(header)}.{_segment(values)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{_b64(signature)}"


def jwt_settings(settings: Settings, **changes: Any) -> Settings:
    """`settings` (stores, key prefix) in jwt mode with the tests' issuer, audience and HS256
    secret; `changes` on top."""
    values: dict[str, Any] = {
        "redis_url": settings.redis_url,
        "database_url": settings.database_url,
        "key_prefix": settings.key_prefix,
        "auth": "jwt",
        "jwt_secret": SECRET,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
        **changes,
    }
    return Settings(**values)


class KeySetServer:
    """A JSON Web Key Set at `url` on 127.0.0.1 (a threaded `http.server`): counts the GETs it
    answered, and serves whatever `publish` last set."""

    def __init__(self, *pairs: KeyPair) -> None:
        self._lock = threading.Lock()
        self._body = b""
        self._gets = 0
        self.delay_s = 0.0
        """How long each GET takes to answer (a slow issuer)."""
        self.publish(*pairs)
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with owner._lock:
                    owner._gets += 1
                    body = owner._body
                time.sleep(owner.delay_s)  # counted as begun, answered later
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: the counts are what the tests read

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def gets(self) -> int:
        """How many times the key set was read."""
        with self._lock:
            return self._gets

    def publish(self, *pairs: KeyPair) -> None:
        """Serve the key set of `pairs` from now on."""
        body = json.dumps(jwks(*pairs)).encode()
        with self._lock:
            self._body = body

    @contextmanager
    def running(self) -> Iterator[KeySetServer]:
        self._thread.start()
        try:
            yield self
        finally:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(10)
