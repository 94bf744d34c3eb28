"""Webhook authentication: each method, its failure reasons, and garbage that must not crash it."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from bridge.auth import AUTH_REASONS, Authenticator, AuthError, sign
from bridge.config import AuthSettings

HMAC_SECRET = "hmac-secret-0123456789abcdef"
TOKEN = "token-secret-0123456789abcdef"
USER = "apizee"
PASSWORD = "basic-secret-0123456789abcdef"
BODY = b'{"event":"conversationevent.create","objectId":"42"}'
NOW = 1_700_000_000.0


def authenticator(**auth: Any) -> Authenticator:
    return Authenticator(AuthSettings(**auth))


def headers(**values: str) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict({k.replace("_", "-"): v for k, v in values.items()}))


def reason_of(auth: Authenticator, hdrs: Any, body: bytes = BODY, **query: str) -> str:
    with pytest.raises(AuthError) as excinfo:
        auth.verify(hdrs, query, body, NOW)
    return excinfo.value.reason


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def test_sign_matches_rfc_4231_test_vector() -> None:
    # RFC 4231, test case 2: HMAC-SHA256 with key "Jefe".
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign(b"Jefe", b"what do ya want for nothing?", None, "hex") == expected
    assert base64.b64decode(sign(b"Jefe", b"what do ya want for nothing?", None, "base64")) == (
        bytes.fromhex(expected)
    )


def test_sign_with_timestamp_signs_timestamp_dot_body() -> None:
    assert sign(b"k", b"body", 123, "hex") == sign(b"k", b"123.body", None, "hex")


@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_hmac_passes_with_the_right_signature(encoding: str) -> None:
    auth = authenticator(hmac_secret=HMAC_SECRET, hmac_encoding=encoding)
    signature = sign(HMAC_SECRET.encode(), BODY, None, encoding)  # type: ignore[arg-type]
    assert auth.verify(headers(X_Apizee_Signature=signature), {}, BODY, NOW) == "hmac"


@pytest.mark.parametrize("encoding", ["hex", "base64"])
def test_hmac_refuses_a_tampered_body(encoding: str) -> None:
    auth = authenticator(hmac_secret=HMAC_SECRET, hmac_encoding=encoding)
    signature = sign(HMAC_SECRET.encode(), BODY, None, encoding)  # type: ignore[arg-type]
    tampered = BODY.replace(b"42", b"43")
    assert reason_of(auth, headers(X_Apizee_Signature=signature), tampered) == "bad_signature"


def test_hmac_refuses_the_other_encoding_and_a_wrong_key() -> None:
    auth = authenticator(hmac_secret=HMAC_SECRET, hmac_encoding="hex")
    as_base64 = sign(HMAC_SECRET.encode(), BODY, None, "base64")
    wrong_key = sign(b"another-secret", BODY, None, "hex")
    assert reason_of(auth, headers(X_Apizee_Signature=as_base64)) == "bad_signature"
    assert reason_of(auth, headers(X_Apizee_Signature=wrong_key)) == "bad_signature"
    assert reason_of(auth, headers(X_Apizee_Signature="not hex at all")) == "bad_signature"


def test_hmac_prefix_is_stripped_and_required() -> None:
    auth = authenticator(hmac_secret=HMAC_SECRET, hmac_prefix="sha256=")
    signature = sign(HMAC_SECRET.encode(), BODY, None, "hex")
    assert auth.verify(headers(X_Apizee_Signature="sha256=" + signature), {}, BODY, NOW) == "hmac"
    assert auth.verify(headers(X_Apizee_Signature="SHA256=" + signature), {}, BODY, NOW) == "hmac"
    assert reason_of(auth, headers(X_Apizee_Signature=signature)) == "bad_signature"


def test_hmac_header_name_is_configurable() -> None:
    auth = authenticator(hmac_secret=HMAC_SECRET, hmac_header="X-Hub-Signature-256")
    signature = sign(HMAC_SECRET.encode(), BODY, None, "hex")
    assert auth.verify(headers(X_Hub_Signature_256=signature), {}, BODY, NOW) == "hmac"
    assert reason_of(auth, headers(X_Apizee_Signature=signature)) == "missing_credentials"


def test_header_lookup_ignores_case_even_for_plain_dicts() -> None:
    auth = authenticator(hmac_secret=HMAC_SECRET)
    signature = sign(HMAC_SECRET.encode(), BODY, None, "hex")
    assert auth.verify({"x-apizee-signature": signature}, {}, BODY, NOW) == "hmac"
    lower = CIMultiDict({"X-APIZEE-SIGNATURE": signature})
    assert auth.verify(lower, {}, BODY, NOW) == "hmac"


class TestSignedTimestamp:
    auth = authenticator(
        hmac_secret=HMAC_SECRET,
        timestamp_header="X-Apizee-Timestamp",
        timestamp_tolerance_seconds=300,
    )

    def signed(self, timestamp: int, body: bytes = BODY) -> CIMultiDictProxy[str]:
        signature = sign(HMAC_SECRET.encode(), body, timestamp, "hex")
        return headers(X_Apizee_Signature=signature, X_Apizee_Timestamp=str(timestamp))

    @pytest.mark.parametrize("skew", [0, 299, -299])
    def test_within_tolerance_passes(self, skew: int) -> None:
        assert self.auth.verify(self.signed(int(NOW) + skew), {}, BODY, NOW) == "hmac"

    @pytest.mark.parametrize("skew", [301, -301])
    def test_outside_tolerance_is_refused(self, skew: int) -> None:
        assert reason_of(self.auth, self.signed(int(NOW) + skew)) == "bad_timestamp"

    def test_a_replayed_old_request_is_refused(self) -> None:
        captured = self.signed(int(NOW))
        assert self.auth.verify(captured, {}, BODY, NOW) == "hmac"
        with pytest.raises(AuthError) as excinfo:
            self.auth.verify(captured, {}, BODY, NOW + 3600)
        assert excinfo.value.reason == "bad_timestamp"

    def test_a_fresh_timestamp_on_an_old_signature_is_refused(self) -> None:
        old = self.signed(int(NOW) - 3600)
        forged = headers(
            X_Apizee_Signature=old["X-Apizee-Signature"], X_Apizee_Timestamp=str(int(NOW))
        )
        assert reason_of(self.auth, forged) == "bad_signature"

    def test_body_only_signature_is_refused(self) -> None:
        body_only = sign(HMAC_SECRET.encode(), BODY, None, "hex")
        hdrs = headers(X_Apizee_Signature=body_only, X_Apizee_Timestamp=str(int(NOW)))
        assert reason_of(self.auth, hdrs) == "bad_signature"

    @pytest.mark.parametrize(
        "timestamp", ["", "soon", "1.5e9", "-1", "\uff11\uff17\uff10\uff10", "9" * 21]
    )
    def test_unparseable_timestamp_is_refused(self, timestamp: str) -> None:
        signature = sign(HMAC_SECRET.encode(), BODY, int(NOW), "hex")
        hdrs = headers(X_Apizee_Signature=signature, X_Apizee_Timestamp=timestamp)
        assert reason_of(self.auth, hdrs) == "bad_timestamp"

    def test_missing_timestamp_is_refused(self) -> None:
        signature = sign(HMAC_SECRET.encode(), BODY, int(NOW), "hex")
        assert reason_of(self.auth, headers(X_Apizee_Signature=signature)) == "bad_timestamp"


def test_token_in_header_passes_and_wrong_token_fails() -> None:
    auth = authenticator(token=TOKEN)
    assert auth.verify(headers(X_Webhook_Token=TOKEN), {}, BODY, NOW) == "token"
    assert reason_of(auth, headers(X_Webhook_Token=TOKEN[:-1])) == "bad_token"
    assert reason_of(auth, headers(X_Webhook_Token=TOKEN + "x")) == "bad_token"


def test_token_in_query_parameter() -> None:
    auth = authenticator(token=TOKEN)
    assert auth.verify(headers(), {"token": TOKEN}, BODY, NOW) == "token"
    assert reason_of(auth, headers(), token="guess") == "bad_token"


def test_query_token_can_be_disabled() -> None:
    auth = authenticator(token=TOKEN, token_query_param=None)
    assert reason_of(auth, headers(), token=TOKEN) == "missing_credentials"


def test_basic_passes_with_the_right_credentials() -> None:
    auth = authenticator(basic_username=USER, basic_password=PASSWORD)
    assert auth.verify(headers(Authorization=basic(USER, PASSWORD)), {}, BODY, NOW) == "basic"


def test_basic_password_may_contain_a_colon() -> None:
    auth = authenticator(basic_username=USER, basic_password="a:b")
    assert auth.verify(headers(Authorization=basic(USER, "a:b")), {}, BODY, NOW) == "basic"


@pytest.mark.parametrize(
    "authorization",
    [
        basic(USER, "wrong"),
        basic("someone", PASSWORD),
        basic(USER, PASSWORD + "x"),
        "Basic !!!not-base64!!!",
        "Basic " + base64.b64encode(b"no-colon-here").decode(),
    ],
)
def test_basic_fails_with_wrong_credentials(authorization: str) -> None:
    auth = authenticator(basic_username=USER, basic_password=PASSWORD)
    assert reason_of(auth, headers(Authorization=authorization)) == "bad_basic"


def test_other_authorization_schemes_are_not_basic_credentials() -> None:
    auth = authenticator(basic_username=USER, basic_password=PASSWORD)
    assert reason_of(auth, headers(Authorization="Bearer abc")) == "missing_credentials"


@pytest.mark.parametrize(
    "auth",
    [
        authenticator(hmac_secret=HMAC_SECRET),
        authenticator(token=TOKEN),
        authenticator(basic_username=USER, basic_password=PASSWORD),
    ],
)
def test_no_credentials_at_all(auth: Authenticator) -> None:
    assert reason_of(auth, headers(Content_Type="application/json")) == "missing_credentials"


class TestSeveralMethods:
    auth = authenticator(
        hmac_secret=HMAC_SECRET, token=TOKEN, basic_username=USER, basic_password=PASSWORD
    )
    good_signature = sign(HMAC_SECRET.encode(), BODY, None, "hex")

    def test_any_one_method_passes(self) -> None:
        assert self.auth.verify(headers(X_Webhook_Token=TOKEN), {}, BODY, NOW) == "token"
        assert self.auth.verify(headers(Authorization=basic(USER, PASSWORD)), {}, BODY, NOW) == (
            "basic"
        )
        hdrs = headers(X_Apizee_Signature=self.good_signature)
        assert self.auth.verify(hdrs, {}, BODY, NOW) == "hmac"

    def test_a_bad_method_does_not_block_a_good_one(self) -> None:
        hdrs = headers(X_Apizee_Signature="00" * 32, X_Webhook_Token=TOKEN)
        assert self.auth.verify(hdrs, {}, BODY, NOW) == "token"

    def test_all_bad_reports_the_first_failure(self) -> None:
        hdrs = headers(X_Webhook_Token="wrong", Authorization=basic(USER, "wrong"))
        assert reason_of(self.auth, hdrs) == "bad_token"
        hdrs = headers(X_Apizee_Signature="00" * 32, X_Webhook_Token="wrong")
        assert reason_of(self.auth, hdrs) == "bad_signature"


def test_insecure_mode_admits_anything() -> None:
    auth = authenticator(insecure_no_auth=True)
    assert auth.verify(headers(), {}, b"", NOW) == "none"


def test_refuses_to_build_without_any_method() -> None:
    with pytest.raises(ValueError, match="no authentication method"):
        Authenticator(AuthSettings.model_construct())


def test_secrets_stay_out_of_reprs_and_errors() -> None:
    auth = authenticator(
        hmac_secret=HMAC_SECRET, token=TOKEN, basic_username=USER, basic_password=PASSWORD
    )
    assert repr(auth) == "Authenticator(methods=hmac,token,basic)"
    with pytest.raises(AuthError) as excinfo:
        auth.verify(headers(X_Webhook_Token=TOKEN[:-1]), {}, BODY, NOW)
    for text in (str(excinfo.value), repr(excinfo.value)):
        assert TOKEN[:-1] not in text
        assert "bad_token" in text


_everything = authenticator(
    hmac_secret=HMAC_SECRET,
    timestamp_header="X-Apizee-Timestamp",
    token=TOKEN,
    basic_username=USER,
    basic_password=PASSWORD,
)
# Lone surrogates included: aiohttp decodes undecodable header bytes with surrogateescape.
_any_text = st.text(st.one_of(st.characters(), st.integers(0xD800, 0xDFFF).map(chr)), max_size=80)
_header_names = st.sampled_from(
    ["X-Apizee-Signature", "X-Apizee-Timestamp", "X-Webhook-Token", "Authorization", "X-Other"]
)
_header_values = st.one_of(
    _any_text,
    st.binary(max_size=64).map(lambda b: "Basic " + base64.b64encode(b).decode()),
    st.binary(min_size=32, max_size=32).map(bytes.hex),
    st.integers(min_value=-(10**30), max_value=10**30).map(str),
)


@settings(max_examples=400, deadline=None)
@given(
    hdrs=st.dictionaries(_header_names, _header_values, max_size=5),
    query=st.dictionaries(st.sampled_from(["token", "x"]), _any_text, max_size=2),
    body=st.binary(max_size=256),
    now=st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12),
)
def test_garbage_only_ever_raises_auth_error(
    hdrs: dict[str, str], query: dict[str, str], body: bytes, now: float
) -> None:
    with pytest.raises(AuthError) as excinfo:
        _everything.verify(hdrs, query, body, now)
    assert excinfo.value.reason in AUTH_REASONS


# -- decided from the headers, before the body is read (issue 10) ---------------------------


def test_token_and_basic_admit_from_the_headers_alone() -> None:
    auth = authenticator(token=TOKEN, basic_username=USER, basic_password=PASSWORD)
    assert auth.admit(headers(X_Webhook_Token=TOKEN), {}, NOW) == "token"
    assert auth.admit(headers(Authorization=basic(USER, PASSWORD)), {}, NOW) == "basic"


@pytest.mark.parametrize(
    ("hdrs", "reason"),
    [
        ({}, "missing_credentials"),
        ({"X_Webhook_Token": "wrong"}, "bad_token"),
        ({"Authorization": "Basic !!"}, "bad_basic"),
        # A signature header that is not even hex or lacks its timestamp: no body needed.
        ({"X_Apizee_Signature": "zz"}, "bad_signature"),
        ({"X_Apizee_Signature": "00" * 32}, "bad_timestamp"),
    ],
)
def test_strangers_are_refused_from_the_headers(hdrs: dict[str, str], reason: str) -> None:
    auth = authenticator(
        token=TOKEN,
        basic_username=USER,
        basic_password=PASSWORD,
        hmac_secret=HMAC_SECRET,
        timestamp_header="X-Apizee-Timestamp",
    )
    with pytest.raises(AuthError) as caught:
        auth.admit(headers(**hdrs), {}, NOW)
    assert caught.value.reason == reason


def test_a_well_formed_signature_needs_the_body_and_its_reason_comes_first() -> None:
    auth = authenticator(token=TOKEN, hmac_secret=HMAC_SECRET)
    good = headers(X_Apizee_Signature=sign(HMAC_SECRET.encode(), BODY, None, "hex"))
    assert auth.admit(good, {}, NOW) is None
    assert auth.verify_body(good, BODY, NOW) == "hmac"
    forged = headers(X_Apizee_Signature="00" * 32, X_Webhook_Token="wrong")
    assert auth.admit(forged, {}, NOW) is None
    with pytest.raises(AuthError) as caught:
        auth.verify_body(forged, BODY, NOW)
    assert caught.value.reason == "bad_signature"
