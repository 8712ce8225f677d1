"""The peer for `bench/run.py --prod`: djangorestframework-api-key on PostgreSQL.

Installed from PyPI into a virtualenv of its own (bench/.peer-venv, ignored by git); its
code is not in this repository. What is here is the small Django glue project the
benchmark generates into a temporary folder: settings for PostgreSQL with persistent
connections (CONN_MAX_AGE=None), one APIView behind the package's HasAPIKey permission,
and a seeding script that bulk-inserts keys made by the package's own KeyGenerator.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / "bench" / ".peer-venv"
PEER_PYTHON = VENV / "bin" / "python"
REQUIREMENTS = [
    "djangorestframework-api-key==3.1.0",
    "djangorestframework>=3.15,<4",
    "Django>=4.2,<6",
    "gunicorn>=22",
    "psycopg[binary]>=3.1",
]


def ensure_venv(log) -> Path:
    stamp = VENV / (".installed-" + hashlib.sha256(repr(REQUIREMENTS).encode()).hexdigest()[:12])
    if stamp.exists():
        return PEER_PYTHON
    log("installing the peer (djangorestframework-api-key) into bench/.peer-venv")
    if not PEER_PYTHON.exists():
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    subprocess.run(
        [str(PEER_PYTHON), "-m", "pip", "install", "--quiet", *REQUIREMENTS],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    for old in VENV.glob(".installed-*"):
        old.unlink()
    stamp.touch()
    return PEER_PYTHON


SETTINGS = """
SECRET_KEY = "peer-bench-only"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "rest_framework",
    "rest_framework_api_key",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "peerbench.urls"
WSGI_APPLICATION = "peerbench.wsgi.application"
DATABASES = {{
    "default": {{
        "ENGINE": "django.db.backends.postgresql",
        "NAME": {name!r},
        "USER": {user!r},
        "PASSWORD": {password!r},
        "HOST": {host!r},
        "PORT": {port!r},
        "CONN_MAX_AGE": None,  # persistent connections, as the issue's measurement
    }}
}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
REST_FRAMEWORK = {{
    "DEFAULT_AUTHENTICATION_CLASSES": [],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework_api_key.permissions.HasAPIKey"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "UNAUTHENTICATED_USER": None,
}}
"""

URLS = """
from django.http import JsonResponse
from django.urls import path
from rest_framework.response import Response
from rest_framework.views import APIView


class Me(APIView):
    def get(self, request):
        return Response({"ok": True})


def ping(request):
    return JsonResponse({"pong": True})


urlpatterns = [path("me", Me.as_view()), path("ping", ping)]
"""

WSGI = """
import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peerbench.settings")
application = get_wsgi_application()
"""

SEED = """
import json
import os
import sys

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "peerbench.settings")
django.setup()
from rest_framework_api_key.crypto import concatenate  # noqa: E402
from rest_framework_api_key.models import APIKey  # noqa: E402

count = int(sys.argv[1])
generator = APIKey.objects.key_generator
batch = []
for n in range(count - 1):
    _, prefix, hashed = generator.generate()
    batch.append(APIKey(id=concatenate(prefix, hashed), prefix=prefix, hashed_key=hashed,
                        name=f"seed {n}"))
    if len(batch) == 5000:
        APIKey.objects.bulk_create(batch)
        batch = []
APIKey.objects.bulk_create(batch)
_, key = APIKey.objects.create_key(name="bench")
print(json.dumps({"key": key, "count": APIKey.objects.count()}))
"""


def write_project(folder: Path, database_url: str) -> Path:
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    package = folder / "peerbench"
    package.mkdir(parents=True, exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "settings.py").write_text(
        SETTINGS.format(
            name=url.database,
            user=url.username or "postgres",
            password=url.password or "",
            host=url.host or "127.0.0.1",
            port=str(url.port or 5432),
        )  # fmt: skip
    )
    (package / "urls.py").write_text(URLS)
    (package / "wsgi.py").write_text(WSGI)
    (folder / "seed.py").write_text(SEED)
    return folder


def migrate_and_seed(python: Path, folder: Path, count: int) -> str:
    """Django's migrations, then `count` keys; returns the one valid key the bench uses."""
    import json

    env = {"DJANGO_SETTINGS_MODULE": "peerbench.settings", "PATH": "/usr/bin:/bin"}
    subprocess.run(
        [str(python), "-m", "django", "migrate", "--noinput", "-v", "0"],
        cwd=folder, env={**env, "PYTHONPATH": str(folder)}, check=True,
        capture_output=True, text=True,
    )  # fmt: skip
    out = subprocess.run(
        [str(python), "seed.py", str(count)], cwd=folder,
        env={**env, "PYTHONPATH": str(folder)}, check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return json.loads(out.strip().splitlines()[-1])["key"]
