"""Flask extensions, created unbound and bound to the app in create_app()."""

from flask_limiter import Limiter
from flask_login import LoginManager
from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from flask_wtf import CSRFProtect
from sqlalchemy import MetaData

from app.net import client_ip

# Stable constraint names so Alembic migrations are identical on SQLite and PostgreSQL.
naming_convention = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

db = SQLAlchemy(metadata=MetaData(naming_convention=naming_convention))
migrate = Migrate()
login_manager = LoginManager()
csrf = CSRFProtect()


class KeydeskLimiter(Limiter):
    """Flask-Limiter remembers "storage is dead" on the extension object, not per app; a newly
    bound app (each test, a re-created app) starts by trying its configured storage again."""

    def init_app(self, app) -> None:
        self._storage_dead = False
        super().init_app(app)


# Limits are declared per blueprint/view; nothing is limited by default.
limiter = KeydeskLimiter(key_func=client_ip, default_limits=[])
