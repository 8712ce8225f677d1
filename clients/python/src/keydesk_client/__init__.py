"""Keydesk from a terminal and from Python.

- `Keydesk(url, token)`: the key-management API, typed;
- `KeyVerifier(url, client_key)`: for services that let Keydesk decide whether a key is good;
- `KeydeskError`: every refusal, with Keydesk's `error` and `error_description`;
- the `keydesk` command (keydesk_client.cli).
"""

from keydesk_client.api import Key, Keydesk, KeydeskError, Me, NewKey
from keydesk_client.verifier import KeyVerifier, Verification

__all__ = ["Key", "KeyVerifier", "Keydesk", "KeydeskError", "Me", "NewKey", "Verification"]
__version__ = "0.1.0"
