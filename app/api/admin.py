"""Admin API routes (tenant-admin work)"""
