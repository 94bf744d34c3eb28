"""Webhook authentication on the raw request bytes, before anything parses them: HMAC-SHA256
signature (optionally over a signed timestamp), shared token, HTTP Basic; constant-time compares.
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Mapping
from typing import Final, Literal, get_args

from multidict import CIMultiDict, CIMultiDictProxy

from bridge.config import AuthSettings
from bridge.errors import BridgeError

AuthMethod = Literal["hmac", "token", "basic", "none"]
AuthReason = Literal[
    "missing_credentials", "bad_signature", "bad_timestamp", "bad_token", "bad_basic"
]
AUTH_REASONS: Final[tuple[AuthReason, ...]] = get_args(AuthReason)
SignatureEncoding = Literal["hex", "base64"]

# A signed timestamp is epoch seconds; 20 digits covers any int64 and bounds int() parsing.
_MAX_TIMESTAMP_DIGITS: Final = 20


class AuthError(BridgeError):
    """The request is not authenticated; `reason` is a bounded label for metrics and logs."""

    def __init__(self, reason: AuthReason) -> None:
        self.reason: AuthReason = reason
        super().__init__(reason)


def sign(secret: bytes, body: bytes, timestamp: int | None, encoding: SignatureEncoding) -> str:
    """The signature header value (without prefix) a sender computes for `body`."""
    message = body if timestamp is None else f"{timestamp}.".encode("ascii") + body
    digest = hmac.digest(secret, message, "sha256")
    return digest.hex() if encoding == "hex" else base64.b64encode(digest).decode("ascii")


def _to_bytes(value: str) -> bytes:
    # surrogatepass: aiohttp decodes header bytes with surrogateescape, and every str must map
    # to some bytes rather than raise.
    return value.encode("utf-8", "surrogatepass")


class Authenticator:
    """Checks one request against the configured methods; any method that passes admits it.

    `headers` must be a case-insensitive mapping (aiohttp's `request.headers` is one); a plain
    dict is copied into a CIMultiDict, which is fine for tests and tools but not the hot path.
    """

    __slots__ = (
        "_basic_password",
        "_basic_username",
        "_encoding",
        "_hmac_header",
        "_hmac_keyed",
        "_hmac_prefix",
        "_insecure",
        "_timestamp_header",
        "_token",
        "_token_header",
        "_token_query_param",
        "_tolerance",
        "methods",
    )

    def __init__(self, settings: AuthSettings) -> None:
        self.methods: tuple[str, ...] = settings.methods
        self._insecure = settings.insecure_no_auth
        if not self.methods and not self._insecure:
            raise ValueError("no authentication method configured and insecure_no_auth is off")
        # Keyed once here; each request copies it instead of re-deriving the key pads.
        self._hmac_keyed = (
            None
            if settings.hmac_secret is None
            else hmac.new(_to_bytes(settings.hmac_secret.get_secret_value()), digestmod="sha256")
        )
        self._hmac_header = settings.hmac_header
        self._hmac_prefix = settings.hmac_prefix.lower()
        self._encoding: SignatureEncoding = settings.hmac_encoding
        self._timestamp_header = settings.timestamp_header
        self._tolerance = settings.timestamp_tolerance_seconds
        self._token = (
            None if settings.token is None else _to_bytes(settings.token.get_secret_value())
        )
        self._token_header = settings.token_header
        self._token_query_param = settings.token_query_param
        basic_on = "basic" in self.methods
        self._basic_username = _to_bytes(settings.basic_username or "") if basic_on else None
        self._basic_password = (
            _to_bytes(settings.basic_password.get_secret_value())
            if basic_on and settings.basic_password is not None
            else None
        )

    def __repr__(self) -> str:
        methods = ",".join(self.methods) or "none"
        return f"Authenticator(methods={methods})"

    def verify(
        self, headers: Mapping[str, str], query: Mapping[str, str], body: bytes, now: float
    ) -> AuthMethod:
        """Return the method that admitted the request, or raise AuthError with the reason.

        When credentials for several methods are present and all fail, the reason is that of
        the first in the order hmac, token, basic.
        """
        method = self.admit(headers, query, now)
        return method if method is not None else self.verify_body(headers, body, now)

    def admit(
        self, headers: Mapping[str, str], query: Mapping[str, str], now: float
    ) -> AuthMethod | None:
        """Decide from the headers alone, before the body is read: the method that admits
        the request (token, basic), None when only the body's HMAC can tell, or AuthError
        when no presented credential can pass (a stranger's body is then never read)."""
        if self._insecure:
            return "none"
        if not isinstance(headers, CIMultiDictProxy | CIMultiDict):
            headers = CIMultiDict(headers)
        failure: AuthReason | None = None
        hmac_pending = False
        if self._hmac_keyed is not None:
            signature = headers.get(self._hmac_header)
            if signature is not None:
                failure = self._hmac_headers(signature, headers)
                hmac_pending = failure is None
        if self._token is not None:
            token = headers.get(self._token_header)
            if token is None and self._token_query_param is not None:
                token = query.get(self._token_query_param)
            if token is not None:
                if hmac.compare_digest(_to_bytes(token), self._token):
                    return "token"
                failure = failure or "bad_token"
        if self._basic_username is not None and self._basic_password is not None:
            authorization = headers.get("Authorization")
            if authorization is not None and authorization[:6].lower() == "basic ":
                if self._check_basic(authorization[6:], self._basic_username, self._basic_password):
                    return "basic"
                failure = failure or "bad_basic"
        if hmac_pending:
            return None
        raise AuthError(failure or "missing_credentials")

    def verify_body(self, headers: Mapping[str, str], body: bytes, now: float) -> AuthMethod:
        """The HMAC check `admit` left to the body: "hmac", or AuthError (its reason wins,
        hmac being first in order)."""
        assert self._hmac_keyed is not None
        if not isinstance(headers, CIMultiDictProxy | CIMultiDict):
            headers = CIMultiDict(headers)
        signature = headers.get(self._hmac_header)
        assert signature is not None
        failure = self._check_hmac(self._hmac_keyed, signature, headers, body, now)
        if failure is not None:
            raise AuthError(failure)
        return "hmac"

    def _hmac_headers(self, signature: str, headers: Mapping[str, str]) -> AuthReason | None:
        """What of the HMAC method the headers alone can refuse: a malformed signature, a
        missing or malformed timestamp."""
        if self._decode_signature(signature) is None:
            return "bad_signature"
        if self._timestamp_header is not None and self._timestamp(headers) is None:
            return "bad_timestamp"
        return None

    def _decode_signature(self, signature: str) -> bytes | None:
        signature = signature.strip()
        if self._hmac_prefix:
            if signature[: len(self._hmac_prefix)].lower() != self._hmac_prefix:
                return None
            signature = signature[len(self._hmac_prefix) :]
        try:
            return (
                bytes.fromhex(signature)
                if self._encoding == "hex"
                else base64.b64decode(signature, validate=True)
            )
        except (ValueError, binascii.Error):
            return None

    def _timestamp(self, headers: Mapping[str, str]) -> str | None:
        assert self._timestamp_header is not None
        raw_timestamp = headers.get(self._timestamp_header)
        if raw_timestamp is None:
            return None
        raw_timestamp = raw_timestamp.strip()
        if not (
            raw_timestamp.isascii()
            and raw_timestamp.isdigit()
            and len(raw_timestamp) <= _MAX_TIMESTAMP_DIGITS
        ):
            return None
        return raw_timestamp

    def _check_hmac(
        self,
        keyed: hmac.HMAC,
        signature: str,
        headers: Mapping[str, str],
        body: bytes,
        now: float,
    ) -> AuthReason | None:
        presented = self._decode_signature(signature)
        if presented is None:
            return "bad_signature"
        mac = keyed.copy()
        if self._timestamp_header is None:
            mac.update(body)
            return None if hmac.compare_digest(presented, mac.digest()) else "bad_signature"

        raw_timestamp = self._timestamp(headers)
        if raw_timestamp is None:
            return "bad_timestamp"
        mac.update(raw_timestamp.encode("ascii"))
        mac.update(b".")
        mac.update(body)
        if not hmac.compare_digest(presented, mac.digest()):
            return "bad_signature"
        # Checked after the signature, so that bad_timestamp means "authentic but stale": a
        # replay or a skewed sender clock, not a forgery.
        if abs(now - int(raw_timestamp)) > self._tolerance:
            return "bad_timestamp"
        return None

    @staticmethod
    def _check_basic(credentials: str, username: bytes, password: bytes) -> bool:
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True)
        except (ValueError, binascii.Error):
            return False
        presented_user, colon, presented_password = decoded.partition(b":")
        if not colon:
            return False
        # Both compares always run, so timing does not tell whether the username was right.
        user_ok = hmac.compare_digest(presented_user, username)
        password_ok = hmac.compare_digest(presented_password, password)
        return user_ok & password_ok
