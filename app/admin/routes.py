"""Admin pages (filled in by the tenant-admin work)."""
