"""gunicorn settings for the benchmark: gunicorn's defaults (no access log) for both the
bare app and Keydesk, so the two are served exactly the same way."""
