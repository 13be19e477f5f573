"""Callback signatures, fuzzed beyond tests/test_webhooks.py.

That file checks the scheme on fixed examples and that random headers do not
verify. Here: every near miss an integrator makes (one flipped body byte, one
changed hex digit, the secret without its prefix or with a newline, the body
re-serialised) fails; any one of several secrets verifies wherever it sits in
the list; the outcome depends only on the set of non-empty secrets; and no
error, whatever went wrong, carries a secret or a signature it computed.
"""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from runflow_async import RunflowError, WebhookVerificationError, sign, verify_signature

HEX = "0123456789abcdef"
REASONS = {"no_secrets", "missing", "malformed", "mismatch"}

bodies = st.binary(max_size=512)
# Secrets shaped like Runflow's: "whsec_" and then anything (so no message text can contain one).
secrets = st.text(min_size=1, max_size=40).map(lambda s: "whsec_" + s)
secret_lists = st.lists(secrets, min_size=1, max_size=5, unique=True)


def outcome(body: bytes, header: str | None, keys: list[str]) -> str:
    """``"ok"`` or the failure's reason."""
    try:
        verify_signature(body, header, keys)
    except WebhookVerificationError as exc:
        return exc.reason
    return "ok"


@given(bodies, secret_lists, st.data())
def test_a_signature_by_any_one_of_the_secrets_verifies(
    body: bytes, keys: list[str], data: st.DataObject
) -> None:
    signer = data.draw(st.sampled_from(keys))
    header = sign(body, signer)
    assert header == hmac.new(signer.encode(), body, hashlib.sha256).hexdigest()
    verify_signature(body, header, keys)
    verify_signature(body, header, tuple(reversed(keys)))
    # Any mix of upper and lower case, and surrounding whitespace, still verifies.
    cased = "".join(
        c.upper() if flip else c
        for c, flip in zip(
            header, data.draw(st.lists(st.booleans(), min_size=64, max_size=64)), strict=True
        )
    )
    padding = data.draw(st.sampled_from(["", " ", "\t", "\r\n", "  "]))
    verify_signature(body, padding + cased + padding, keys)


@given(bodies.filter(bool), secret_lists, st.data())
def test_flipping_any_bit_of_the_body_fails(
    body: bytes, keys: list[str], data: st.DataObject
) -> None:
    header = sign(body, data.draw(st.sampled_from(keys)))
    index = data.draw(st.integers(0, len(body) - 1))
    mask = data.draw(st.integers(1, 255))
    forged = body[:index] + bytes([body[index] ^ mask]) + body[index + 1 :]
    assert outcome(forged, header, keys) == "mismatch"


@given(bodies, secret_lists, st.integers(0, 63), st.integers(1, 15), st.booleans())
def test_changing_any_hex_digit_of_the_signature_fails(
    body: bytes, keys: list[str], index: int, shift: int, upper: bool
) -> None:
    header = sign(body, keys[0])
    digit = HEX[(HEX.index(header[index]) + shift) % 16]
    forged = header[:index] + (digit.upper() if upper else digit) + header[index + 1 :]
    assert outcome(body, forged, keys) == "mismatch"


@given(
    bodies, secret_lists, st.integers(1, 62), st.characters().filter(lambda c: c.lower() not in HEX)
)
def test_any_non_hex_character_inside_the_signature_is_malformed(
    body: bytes, keys: list[str], index: int, char: str
) -> None:
    header = sign(body, keys[0])
    for forged in (
        header[:index] + char + header[index + 1 :],
        header[:index] + char + header[index:],
    ):
        assert outcome(body, forged, keys) == "malformed"


@given(
    st.dictionaries(
        st.text(max_size=6), st.text(max_size=6) | st.integers(), min_size=1, max_size=4
    ),
    secret_lists,
    st.sampled_from(["no_prefix", "newline", "space", "upper", "reserialised", "appended"]),
)
def test_the_usual_integration_mistakes_never_verify(
    payload: dict[str, object], keys: list[str], mistake: str
) -> None:
    body = json.dumps(payload, separators=(",", ":")).encode()
    secret = keys[0]
    if mistake == "reserialised":  # hashing json.dumps(json.loads(raw)) instead of raw
        signed, header = body, sign(json.dumps(payload, indent=1).encode(), secret)
    elif mistake == "appended":  # a trailing newline added by a framework
        signed, header = body + b"\n", sign(body, secret)
    else:  # the secret mangled on its way out of the environment
        mangled = {
            "no_prefix": secret.removeprefix("whsec_"),
            "newline": secret + "\n",
            "space": " " + secret,
            "upper": secret.upper(),
        }[mistake]
        assume(mangled not in keys)
        signed, header = body, sign(body, mangled)
    assert outcome(signed, header, keys) == "mismatch"


@given(bodies, secret_lists, secret_lists, st.data())
def test_the_outcome_depends_only_on_the_set_of_non_empty_secrets(
    body: bytes, keys: list[str], others: list[str], data: st.DataObject
) -> None:
    signer = data.draw(st.sampled_from(keys + others))
    header = sign(body, signer)
    configured = data.draw(st.permutations(keys + [""] * data.draw(st.integers(0, 2))))
    twice = configured + data.draw(st.lists(st.sampled_from(keys), max_size=3))
    expected = "ok" if signer in keys else "mismatch"
    assert outcome(body, header, configured) == expected
    assert outcome(body, header, twice) == expected
    assert outcome(body, header, sorted(set(keys))) == expected


headers = (
    st.none() | st.text(max_size=80) | st.text(alphabet=HEX + HEX.upper(), min_size=60, max_size=68)
)


@given(bodies, st.lists(secrets, max_size=4), headers, st.data())
def test_no_error_ever_shows_a_secret_or_a_signature_it_computed(
    body: bytes, keys: list[str], header: str | None, data: st.DataObject
) -> None:
    if bool(keys) and data.draw(st.booleans()):
        header = sign(body + b"x", data.draw(st.sampled_from(keys)))  # near miss: mismatch
    with pytest.raises(WebhookVerificationError) as info:
        verify_signature(body, header, keys)
    error = info.value
    assert isinstance(error, RunflowError)
    assert error.reason in REASONS
    shown = " ".join([str(error), repr(error), *map(str, error.args), repr(vars(error))])
    for key in keys:
        assert key not in shown
        assert sign(body, key) not in shown
    assert error.__cause__ is None
    assert error.__context__ is None
    assert "whsec_" not in shown
    # Not even a part of a secret: the text is the same under any other secrets.
    stand_ins = [f"whsec_stand_in_{i}" for i in range(len(keys))]
    with pytest.raises(WebhookVerificationError) as other:
        verify_signature(body, header, stand_ins)
    assert (str(other.value), repr(other.value), other.value.reason) == (
        str(error),
        repr(error),
        error.reason,
    )
