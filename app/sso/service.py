"""A tenant's identity provider: saving the settings (after reading and checking the
provider's discovery document), the email domains that route /login to it, and whether
members may still sign in with a password. The caller commits."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import datetime

from joserfc.errors import JoseError
from joserfc.jwk import KeySet
from sqlalchemy import delete, select

from app import audit, secretbox
from app.accounts.members import ROLES
from app.audit import Actor
from app.errors import InvalidInput, NotFound
from app.extensions import db
from app.models import SsoConfig, SsoDomain, Tenant, User
from app.sso import outbound

SECRET_PURPOSE = "sso-client-secret"  # noqa: S105 - a secretbox label, not a secret
# Asymmetric signatures only: with HS256 the key is the client secret, and a provider
# that offers only "none" signs nothing. joserfc refuses every other "alg" before a check.
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512")
MAX_DOMAINS = 20
_DOMAIN_RE = re.compile(r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")
_PRINTABLE_RE = re.compile(r"^[\x21-\x7e]+$")


@dataclass(frozen=True)
class Provider:
    """What sign-in needs from the discovery document, as checked when it was saved."""

    issuer: str
    authorization_endpoint: str
    token_endpoint: str
    jwks_uri: str
    userinfo_endpoint: str | None
    token_endpoint_auth_method: str
    algorithms: tuple[str, ...]

    def to_json(self) -> str:
        return json.dumps({**self.__dict__, "algorithms": list(self.algorithms)})

    @classmethod
    def from_json(cls, text: str) -> Provider:
        data = json.loads(text)
        return cls(**{**data, "algorithms": tuple(data["algorithms"])})


def get_config(*, tenant_id: int) -> SsoConfig | None:
    return db.session.get(SsoConfig, tenant_id)


def provider_of(config: SsoConfig) -> Provider:
    return Provider.from_json(config.provider)


def client_secret(config: SsoConfig) -> str | None:
    if config.client_secret_sealed is None:
        return None
    return secretbox.unseal(config.client_secret_sealed, purpose=SECRET_PURPOSE)


def tenant_for_email(email: str) -> Tenant | None:
    """The tenant whose provider signs in this address (its domain is claimed by one)."""
    domain = (email or "").strip().rpartition("@")[2].lower()
    if not domain or len(domain) > 253:
        return None
    claim = db.session.get(SsoDomain, domain)
    if claim is None or get_config(tenant_id=claim.tenant_id) is None:
        return None
    return db.session.get(Tenant, claim.tenant_id)


def password_sign_in_allowed(user: User) -> bool:
    """False for a member of a tenant that enforces SSO. Admins keep their password (and
    second factor): a broken provider must not lock the whole tenant out."""
    if user.role == "admin":
        return True
    config = get_config(tenant_id=user.tenant_id)
    return config is None or not config.enforce


# --- saving the settings ---------------------------------------------------------------


def parse_domains(text: str) -> list[str]:
    """Space- or comma-separated domains, lowercased, in order, without duplicates."""
    if not isinstance(text, str):
        raise InvalidInput("Enter domains such as example.com", field="email_domains")
    domains: list[str] = []
    for raw in re.split(r"[\s,]+", text.strip()):
        if not raw:
            continue
        domain = raw.lower().removeprefix("@").rstrip(".")
        if not _DOMAIN_RE.match(domain):
            raise InvalidInput(
                f"{raw[:100]!r} is not a domain such as example.com", field="email_domains"
            )
        if domain not in domains:
            domains.append(domain)
    if len(domains) > MAX_DOMAINS:
        raise InvalidInput(f"At most {MAX_DOMAINS} domains", field="email_domains")
    return domains


def _clean_issuer(issuer: str, *, allow_private: bool) -> str:
    issuer = (issuer or "").strip() if isinstance(issuer, str) else ""
    if not issuer:
        raise InvalidInput("Enter the provider's issuer URL", field="issuer")
    try:
        return outbound.check_url(issuer, allow_private=allow_private, what="The issuer URL")
    except outbound.ProviderError as exc:
        raise InvalidInput(str(exc), field="issuer") from None


def _clean_client_id(client_id: str) -> str:
    client_id = (client_id or "").strip() if isinstance(client_id, str) else ""
    if not client_id:
        raise InvalidInput("Enter the client ID the provider gave you", field="client_id")
    if len(client_id) > 255 or not _PRINTABLE_RE.match(client_id):
        raise InvalidInput(
            "The client ID is up to 255 visible ASCII characters, no spaces", field="client_id"
        )
    return client_id


def _clean_secret(secret: str | None) -> str | None:
    if secret is None or secret == "":
        return None
    if not isinstance(secret, str) or len(secret) > 1000 or not _PRINTABLE_RE.match(secret):
        raise InvalidInput(
            "The client secret is up to 1000 visible ASCII characters, no spaces",
            field="client_secret",
        )
    return secret


def discover(issuer: str, *, allow_private: bool) -> Provider:
    """Read and check the issuer's discovery document and its JWKS; InvalidInput on the
    issuer field saying what is wrong."""

    def wrong(message: str) -> InvalidInput:
        return InvalidInput(message, field="issuer")

    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        doc = outbound.fetch_json(url, allow_private=allow_private, what="The discovery document")
    except outbound.ProviderError as exc:
        raise wrong(f"{exc} ({url[:200]})") from None
    named = doc.get("issuer")
    if named != issuer:
        if isinstance(named, str) and named.rstrip("/") == issuer.rstrip("/"):
            raise wrong(f"The provider names its issuer {named[:200]!r}: enter exactly that")
        raise wrong("The discovery document names another issuer than the URL you entered")
    endpoints = {}
    for name in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
        try:
            endpoints[name] = outbound.check_url(
                doc.get(name), allow_private=allow_private, what=f"The provider's {name}"
            )
        except outbound.ProviderError as exc:
            raise wrong(str(exc)) from None
    userinfo = doc.get("userinfo_endpoint")
    if userinfo is not None:
        try:
            outbound.check_url(userinfo, allow_private=allow_private, what="userinfo_endpoint")
        except outbound.ProviderError:
            userinfo = None  # optional: sign-in then relies on the ID token's claims alone
    response_types = doc.get("response_types_supported")
    if isinstance(response_types, list) and "code" not in response_types:
        raise wrong("The provider does not offer the authorization code flow (response type code)")
    offered = doc.get("id_token_signing_alg_values_supported")
    if not isinstance(offered, list):
        offered = ["RS256"]  # the default OIDC Discovery gives
    algorithms = tuple(alg for alg in offered if alg in ALGORITHMS)
    if not algorithms:
        shown = ", ".join(str(a)[:20] for a in offered[:10])
        raise wrong(
            f"The provider signs ID tokens with {shown or 'nothing'}; Keydesk accepts "
            + ", ".join(ALGORITHMS)
        )
    challenge = doc.get("code_challenge_methods_supported")
    if isinstance(challenge, list) and "S256" not in challenge:
        raise wrong("The provider does not support PKCE with S256")
    methods = doc.get("token_endpoint_auth_methods_supported")
    if not isinstance(methods, list):
        methods = ["client_secret_basic"]  # the default OIDC Discovery gives
    method = next((m for m in ("client_secret_basic", "client_secret_post") if m in methods), None)
    if method is None:
        raise wrong("The provider's token endpoint takes neither client_secret_basic nor _post")
    try:
        jwks = outbound.fetch_json(
            endpoints["jwks_uri"], allow_private=allow_private, what="The provider's JWKS"
        )
        keys = KeySet.import_key_set(jwks)
    except outbound.ProviderError as exc:
        raise wrong(str(exc)) from None
    except (JoseError, ValueError, TypeError, KeyError):
        raise wrong("The provider's JWKS (jwks_uri) holds no keys Keydesk can read") from None
    if not keys.keys:
        raise wrong("The provider's JWKS (jwks_uri) holds no keys")
    return Provider(
        issuer=issuer,
        authorization_endpoint=endpoints["authorization_endpoint"],
        token_endpoint=endpoints["token_endpoint"],
        jwks_uri=endpoints["jwks_uri"],
        userinfo_endpoint=userinfo,
        token_endpoint_auth_method=method,
        algorithms=algorithms,
    )


def save_config(
    *,
    tenant: Tenant,
    issuer: str,
    client_id: str,
    client_secret: str | None,
    email_domains: str,
    default_role: str,
    enforce: bool,
    allow_private: bool,
    actor: Actor,
    now: datetime,
) -> SsoConfig:
    """Create or change the tenant's provider. An empty `client_secret` keeps the stored one.
    The discovery document is read and checked last, after the cheap checks."""
    issuer = _clean_issuer(issuer, allow_private=allow_private)
    client_id = _clean_client_id(client_id)
    secret = _clean_secret(client_secret)
    domains = parse_domains(email_domains)
    if default_role not in ROLES:
        raise InvalidInput("The default role is member or admin", field="default_role")
    config = get_config(tenant_id=tenant.id)
    if secret is None and (config is None or config.client_secret_sealed is None):
        raise InvalidInput("Enter the client secret the provider gave you", field="client_secret")
    taken = db.session.execute(
        select(SsoDomain.domain).where(
            SsoDomain.domain.in_(domains), SsoDomain.tenant_id != tenant.id
        )
    ).scalar()
    if taken is not None:
        # First come, first served: a domain routes /login to one provider only, so another
        # tenant cannot send this domain's people to its own sign-in page.
        raise InvalidInput(
            f"{taken} already signs in through another organization", field="email_domains"
        )
    provider = discover(issuer, allow_private=allow_private)

    before = _public_fields(config) if config else None
    if config is None:
        config = SsoConfig(tenant_id=tenant.id, created_at=now)
        db.session.add(config)
    config.issuer = issuer
    config.client_id = client_id
    if secret is not None:
        config.client_secret_sealed = secretbox.seal(secret, purpose=SECRET_PURPOSE)
    config.email_domains = " ".join(domains)
    config.default_role = default_role
    config.enforce = bool(enforce)
    config.provider = provider.to_json()
    config.updated_at = now
    config.updated_by = actor.label
    db.session.execute(delete(SsoDomain).where(SsoDomain.tenant_id == tenant.id))
    db.session.add_all(SsoDomain(domain=d, tenant_id=tenant.id) for d in domains)
    db.session.flush()
    audit.record(
        "sso.config_changed",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="sso",
        target=tenant.slug,
        before=before,
        after=_public_fields(config),
        client_secret_changed=secret is not None,  # whether, never what
    )
    return config


def remove_config(*, tenant: Tenant, actor: Actor, now: datetime) -> None:
    config = get_config(tenant_id=tenant.id)
    if config is None:
        raise NotFound("Single sign-on is not set up")
    before = _public_fields(config)
    db.session.execute(delete(SsoDomain).where(SsoDomain.tenant_id == tenant.id))
    db.session.delete(config)
    db.session.flush()
    audit.record(
        "sso.config_removed",
        actor=actor,
        now=now,
        tenant_id=tenant.id,
        target_type="sso",
        target=tenant.slug,
        before=before,
    )


def _public_fields(config: SsoConfig) -> dict:
    return {
        "issuer": config.issuer,
        "client_id": config.client_id,
        "email_domains": config.email_domains,
        "default_role": config.default_role,
        "enforce": bool(config.enforce),
    }


def record_password_refused(
    *, user: User, actor: Actor, now: datetime, method: str | None = None
) -> None:
    """A sign-in refused because the tenant enforces SSO; `method` names a way other than
    the password (e.g. "passkey")."""
    extra = {"method": method} if method else {}
    audit.record(
        "sso.password_refused",
        actor=Actor("anonymous", user.email, actor.ip, actor.user_agent),
        now=now,
        tenant_id=user.tenant_id,
        target_type="user",
        target=user.email,
        reason="sso_enforced",
        **extra,
    )
