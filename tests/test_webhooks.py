"""Callback signatures: HMAC-SHA256 of the raw body, checked against every secret."""

from __future__ import annotations

import hashlib
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runflow_async import (
    REQUEST_ID_HEADER,
    SIGNATURE_HEADER,
    RunflowError,
    WebhookVerificationError,
    sign,
    verify_signature,
)

SECRET = "whsec_0123456789abcdef"
OTHER = "whsec_fedcba9876543210"
BODY = b'{"event":"run.completed","run_id":"r-1","status":"succeeded"}'


def reference(body: bytes, secret: str) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def reason_of(body: bytes, header: str | None, secrets: list[str] | str) -> str:
    with pytest.raises(WebhookVerificationError) as info:
        verify_signature(body, header, secrets)
    return info.value.reason


def test_header_names_are_the_documented_ones() -> None:
    assert SIGNATURE_HEADER == "Runflow-Signature"
    assert REQUEST_ID_HEADER == "Runflow-Request-Id"


def test_sign_matches_rfc_4231_test_case_2() -> None:
    expected = "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
    assert sign(b"what do ya want for nothing?", "Jefe") == expected


def test_sign_is_lowercase_hex_hmac_sha256_keyed_with_the_whole_secret() -> None:
    signature = sign(BODY, SECRET)
    assert signature == reference(BODY, SECRET)
    assert len(signature) == 64
    assert signature == signature.lower()
    assert signature != reference(BODY, SECRET.removeprefix("whsec_"))


def test_sign_keys_with_utf8_and_signs_the_raw_bytes() -> None:
    secret = "whsec_clé"
    body = '{"metadata":{"name":"café"}}'.encode()
    assert sign(body, secret) == hmac.new(secret.encode("utf-8"), body, "sha256").hexdigest()
    assert sign(body, secret) != sign(body + b" ", secret)


def test_a_correct_signature_verifies() -> None:
    verify_signature(BODY, sign(BODY, SECRET), [SECRET])


def test_upper_case_and_surrounding_whitespace_are_tolerated() -> None:
    verify_signature(BODY, f"  {sign(BODY, SECRET).upper()}\t", [SECRET])


def test_both_secrets_verify_during_a_rotation() -> None:
    verify_signature(BODY, sign(BODY, SECRET), [OTHER, SECRET])
    verify_signature(BODY, sign(BODY, OTHER), [OTHER, SECRET])


def test_a_single_string_is_one_secret_not_many_one_letter_ones() -> None:
    verify_signature(BODY, sign(BODY, SECRET), SECRET)
    assert reason_of(BODY, sign(BODY, SECRET[0]), SECRET) == "mismatch"


def test_a_missing_header_is_refused() -> None:
    assert reason_of(BODY, None, [SECRET]) == "missing"


@pytest.mark.parametrize(
    "header",
    [
        "",
        "abc",
        "z" * 64,
        sign(BODY, SECRET)[:-1],
        sign(BODY, SECRET) + "0",
        f"sha256={sign(BODY, SECRET)}",
        f"v1={sign(BODY, SECRET)}",
        sign(BODY, SECRET)[:32] + " " + sign(BODY, SECRET)[32:],
        "\u0660" * 64,  # Arabic-Indic zeros are digits, but not hex digits
    ],
)
def test_a_malformed_header_is_refused(header: str) -> None:
    assert reason_of(BODY, header, [SECRET]) == "malformed"


def test_without_secrets_nothing_verifies() -> None:
    assert reason_of(BODY, sign(BODY, SECRET), []) == "no_secrets"
    assert reason_of(BODY, sign(BODY, ""), [""]) == "no_secrets"
    assert reason_of(BODY, sign(BODY, ""), "") == "no_secrets"


def test_an_empty_secret_is_ignored_beside_real_ones() -> None:
    assert reason_of(BODY, sign(BODY, ""), ["", SECRET]) == "mismatch"


def test_a_wrong_secret_or_an_altered_body_is_a_mismatch() -> None:
    assert reason_of(BODY, sign(BODY, OTHER), [SECRET]) == "mismatch"
    altered = BODY.replace(b"succeeded", b"failed")
    assert reason_of(altered, sign(BODY, SECRET), [SECRET]) == "mismatch"


def test_errors_never_reveal_a_secret_or_the_expected_signature() -> None:
    with pytest.raises(WebhookVerificationError) as info:
        verify_signature(BODY, "0" * 64, [SECRET, OTHER])
    text = f"{info.value} {info.value!r}"
    for hidden in (SECRET, OTHER, sign(BODY, SECRET), sign(BODY, OTHER)):
        assert hidden not in text
    assert isinstance(info.value, RunflowError)


hex64 = st.from_regex(r"[0-9a-fA-F]{64}", fullmatch=True)


@settings(max_examples=200, deadline=None)
@given(
    body=st.binary(max_size=256),
    secrets=st.lists(st.text(max_size=24), max_size=3),
    forged=st.one_of(st.none(), st.text(max_size=70), hex64),
    data=st.data(),
)
def test_nothing_verifies_unless_this_body_is_signed_by_a_configured_secret(
    body: bytes, secrets: list[str], forged: str | None, data: st.DataObject
) -> None:
    with pytest.raises(WebhookVerificationError):
        verify_signature(body, forged, secrets)
    # Sometimes the right body and a configured secret, sometimes not.
    signed_body = data.draw(st.one_of(st.just(body), st.binary(max_size=256)))
    signer = data.draw(st.sampled_from(secrets) if secrets else st.text(max_size=24))
    signer = data.draw(st.one_of(st.just(signer), st.text(max_size=24)))
    genuine = signed_body == body and signer != "" and signer in secrets
    try:
        verify_signature(body, sign(signed_body, signer), secrets)
    except WebhookVerificationError:
        assert not genuine
    else:
        assert genuine
