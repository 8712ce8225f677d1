"""Accounts: passwords, tenants, users, members and tenant policy."""
