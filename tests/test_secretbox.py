"""app/secretbox.py: sealed secrets read back under the same key and purpose only."""

import pytest

from app.secretbox import SecretUnreadable, seal, unseal


def test_seal_round_trips_and_binds_purpose(app):
    with app.app_context():
        blob = seal("JBSWY3DPEHPK3PXP", purpose="totp")
        assert b"JBSWY3DPEHPK3PXP" not in blob
        assert unseal(blob, purpose="totp") == "JBSWY3DPEHPK3PXP"
        assert seal("x", purpose="totp") != seal("x", purpose="totp")  # fresh nonce
        with pytest.raises(SecretUnreadable):
            unseal(blob, purpose="sso")
        with pytest.raises(SecretUnreadable):
            unseal(blob[:-1] + bytes([blob[-1] ^ 1]), purpose="totp")


def test_another_secret_key_cannot_read(app):
    with app.app_context():
        blob = seal("s3cret", purpose="totp")
        app.config["SECRET_KEY"] = "another-key"
        with pytest.raises(SecretUnreadable):
            unseal(blob, purpose="totp")
