"""The key domain: format, issuing and revoking, and the hot authentication path."""
