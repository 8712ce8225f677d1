"""Signing in through a tenant's OpenID provider: authorization code flow with PKCE (S256),
`state` and `nonce`, through Authlib; the ID token checked with joserfc (Authlib's JOSE
library) against the provider's JWKS, then Authlib's CodeIDToken rules (iss, aud, exp,
iat, nonce, azp, at_hash), then `email_verified`. The caller commits.

Every refusal raises SsoRefused with the status and a sentence for the person signing in;
nobody is signed in, and the view records the refusal in the audit log.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta

import requests
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError
from authlib.integrations.requests_client import OAuth2Session
from authlib.oidc.core import CodeIDToken
from joserfc import jwt
from joserfc.errors import (
    BadSignatureError,
    ClaimError,
    ExpiredTokenError,
    InvalidKeyIdError,
    JoseError,
)
from joserfc.jwk import KeySet
from sqlalchemy import delete, select, update

from app import audit, secretbox
from app.accounts import service as accounts
from app.audit import Actor
from app.errors import InvalidInput
from app.extensions import db
from app.models import SsoConfig, SsoLogin, Tenant, User
from app.sso import outbound
from app.sso.service import Provider, client_secret, provider_of

LOGIN_VALID_FOR = timedelta(minutes=10)
VERIFIER_PURPOSE = "sso-pkce-verifier"
SCOPE = "openid email"
CLOCK_LEEWAY = 60  # seconds of clock skew allowed between Keydesk and the provider


class SsoRefused(Exception):
    """A sign-in that must not happen; `str()` is shown to the person, `reason` is a short
    code for the audit log."""

    def __init__(self, message: str, *, reason: str, status: int = 400, email: str | None = None):
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.email = email


def _digest(state: str) -> str:
    return hashlib.sha256(state.encode()).hexdigest()


# --- starting ------------------------------------------------------------------------


def start(
    *,
    tenant: Tenant,
    config: SsoConfig,
    redirect_uri: str,
    next_url: str | None,
    login_hint: str | None,
    now: datetime,
) -> tuple[str, str]:
    """Record a new sign-in attempt; returns (URL to send the browser to, state). The view
    keeps the state in the browser's session: only that browser can finish this attempt."""
    provider = provider_of(config)
    state = secrets.token_urlsafe(32)
    nonce = secrets.token_urlsafe(32)
    verifier = generate_token(64)  # RFC 7636: 43-128 characters of the unreserved set
    # Attempts nobody finished are worth nothing after LOGIN_VALID_FOR; drop day-old ones.
    db.session.execute(delete(SsoLogin).where(SsoLogin.created_at < now - timedelta(days=1)))
    db.session.add(
        SsoLogin(
            state_digest=_digest(state),
            tenant_id=tenant.id,
            nonce=nonce,
            code_verifier_sealed=secretbox.seal(verifier, purpose=VERIFIER_PURPOSE),
            next_url=next_url,
            created_at=now,
        )
    )
    client = OAuth2Session(
        client_id=config.client_id,
        scope=SCOPE,
        redirect_uri=redirect_uri,
        code_challenge_method="S256",
    )
    extra = {"login_hint": login_hint} if login_hint else {}
    url, _ = client.create_authorization_url(
        provider.authorization_endpoint,
        state=state,
        nonce=nonce,
        code_verifier=verifier,
        **extra,
    )
    return url, state


# --- finishing ------------------------------------------------------------------------


@dataclass
class SignedIn:
    user: User
    created: bool
    next_url: str | None
    subject: str


def finish(
    *,
    tenant: Tenant,
    config: SsoConfig | None,
    params: dict[str, str],
    browser_state: str | None,
    redirect_uri: str,
    allow_private: bool,
    actor: Actor,
    now: datetime,
) -> SignedIn:
    """Check the provider's answer (the callback's query `params`) and decide who signs in:
    the tenant's user with the ID token's verified email, or a new member when its domain
    is allowed. Raises SsoRefused for anything else."""
    if config is None:
        raise SsoRefused(
            "Single sign-on is not set up for this organization.", reason="not_configured",
            status=404,
        )  # fmt: skip
    if params.get("error"):
        code = str(params.get("error"))[:64]
        raise SsoRefused(
            f"The identity provider did not sign you in ({code}).", reason="provider_error"
        )
    state = params.get("state") or ""
    if not browser_state or not hmac.compare_digest(state.encode(), browser_state.encode()):
        raise SsoRefused(
            "This sign-in was not started in this browser, or was already finished "
            "(state mismatch). Start again from the sign-in page.",
            reason="state_mismatch",
        )
    attempt = _consume(tenant=tenant, state=state, now=now)
    provider = provider_of(config)
    issued_by = params.get("iss")
    if issued_by is not None and issued_by != provider.issuer:
        # RFC 9207: the answer comes from another provider than the one we sent you to.
        raise SsoRefused("The answer came from another identity provider (iss).", reason="iss")
    code = params.get("code")
    if not code or len(code) > 2048:
        raise SsoRefused("The identity provider sent no authorization code.", reason="no_code")
    verifier = secretbox.unseal(attempt.code_verifier_sealed, purpose=VERIFIER_PURPOSE)
    token = _exchange(
        config=config,
        provider=provider,
        code=code,
        verifier=verifier,
        redirect_uri=redirect_uri,
        allow_private=allow_private,
    )
    claims = validate_id_token(
        token.get("id_token"),
        provider=provider,
        client_id=config.client_id,
        nonce=attempt.nonce,
        access_token=token.get("access_token"),
        allow_private=allow_private,
        now=now,
    )
    if "email" not in claims and provider.userinfo_endpoint and token.get("access_token"):
        claims = _with_userinfo(
            claims, provider=provider, access_token=token["access_token"],
            allow_private=allow_private,
        )  # fmt: skip
    user, created = _user_for(tenant=tenant, config=config, claims=claims, actor=actor, now=now)
    return SignedIn(
        user=user, created=created, next_url=attempt.next_url, subject=str(claims["sub"])[:255]
    )


def _consume(*, tenant: Tenant, state: str, now: datetime) -> SsoLogin:
    """Mark the attempt used: one conditional UPDATE, so of two requests carrying the same
    state (a replay, a double click) exactly one gets past here."""
    digest = _digest(state)
    won = db.session.execute(
        update(SsoLogin)
        .where(
            SsoLogin.state_digest == digest,
            SsoLogin.tenant_id == tenant.id,
            SsoLogin.used_at.is_(None),
            SsoLogin.created_at > now - LOGIN_VALID_FOR,
        )
        .values(used_at=now)
        .execution_options(synchronize_session=False)
    )
    if won.rowcount != 1:
        raise SsoRefused(
            "This sign-in link was already used or has expired (replayed callback). "
            "Start again from the sign-in page.",
            reason="replayed_or_expired",
        )
    return db.session.execute(select(SsoLogin).where(SsoLogin.state_digest == digest)).scalar_one()


def _exchange(
    *,
    config: SsoConfig,
    provider: Provider,
    code: str,
    verifier: str,
    redirect_uri: str,
    allow_private: bool,
) -> dict:
    http = outbound.session(
        allow_private=allow_private,
        cls=OAuth2Session,
        client_id=config.client_id,
        client_secret=client_secret(config),
        token_endpoint_auth_method=provider.token_endpoint_auth_method,
        redirect_uri=redirect_uri,
    )
    with http:
        try:
            token = http.fetch_token(
                provider.token_endpoint,
                grant_type="authorization_code",
                code=code,
                code_verifier=verifier,
                timeout=outbound.TIMEOUT,
            )
        except OAuthError as exc:
            raise SsoRefused(
                f"The identity provider did not accept the sign-in ({str(exc.error)[:64]}).",
                reason="token_refused",
            ) from None
        except requests.RequestException as exc:
            message = outbound.describe(exc, "The provider's token endpoint")
            raise SsoRefused(message, reason="provider_unreachable", status=502) from None
        except ValueError:  # not JSON
            raise SsoRefused(
                "The identity provider's token endpoint answered nonsense.",
                reason="token_unreadable", status=502,
            ) from None  # fmt: skip
    return dict(token)


def _with_userinfo(claims: dict, *, provider: Provider, access_token: str, allow_private: bool):
    """Some providers keep email claims for the userinfo endpoint (OIDC Core §5.4 for the
    code flow). Its answer counts only for the ID token's own subject (§5.3.2)."""
    http = outbound.session(allow_private=allow_private)
    with http:
        try:
            response = http.get(
                provider.userinfo_endpoint,
                headers={"Authorization": f"Bearer {access_token}", "Accept": "application/json"},
                timeout=outbound.TIMEOUT,
                allow_redirects=False,
            )
            info = response.json() if response.status_code == 200 else None
        except requests.RequestException as exc:
            message = outbound.describe(exc, "The provider's userinfo endpoint")
            raise SsoRefused(message, reason="provider_unreachable", status=502) from None
        except ValueError:
            info = None
    if not isinstance(info, dict):
        return claims  # no usable answer: the ID token's claims decide (no email: refused)
    if info.get("sub") != claims.get("sub"):
        raise SsoRefused(
            "The identity provider's user info does not match the ID token (sub).",
            reason="userinfo",
        )
    merged = dict(claims)
    for name in ("email", "email_verified"):
        if name in info:
            merged[name] = info[name]
    return merged


# --- the ID token -------------------------------------------------------------------


class _JwksCache:
    """The providers' public keys, per jwks_uri and per worker. Kept until a token names a
    key id we do not have (the provider rotated its keys): then fetched again, at most once
    per REFRESH_INTERVAL, so forged tokens with random key ids cannot make us hammer it."""

    MAX_AGE = 24 * 3600.0
    REFRESH_INTERVAL = 10.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[KeySet, float]] = {}

    def get(self, uri: str, *, allow_private: bool, refresh: bool = False) -> KeySet:
        with self._lock:
            entry = self._entries.get(uri)
            age = time.monotonic() - entry[1] if entry else None
            if entry and (age < self.REFRESH_INTERVAL or (not refresh and age < self.MAX_AGE)):
                return entry[0]
        data = outbound.fetch_json(uri, allow_private=allow_private, what="The provider's JWKS")
        try:
            keys = KeySet.import_key_set(data)
        except (JoseError, ValueError, TypeError, KeyError):
            raise outbound.ProviderError("The provider's JWKS holds no usable keys") from None
        with self._lock:
            self._entries[uri] = (keys, time.monotonic())
        return keys

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


jwks_cache = _JwksCache()

_CLAIM_MESSAGES = {
    "iss": "The ID token was issued by another provider (iss).",
    "aud": "The ID token was issued for another application (aud).",
    "azp": "The ID token was issued for another application (azp).",
    "exp": "The ID token has expired (exp).",
    "iat": "The ID token has no usable issue time (iat).",
    "nbf": "The ID token is not valid yet (nbf).",
    "nonce": "The ID token does not belong to this sign-in (nonce).",
    "sub": "The ID token names no subject (sub).",
    "at_hash": "The ID token does not match its access token (at_hash).",
}


def _claim_refusal(claim: str) -> SsoRefused:
    first = claim.split(",")[0]
    message = _CLAIM_MESSAGES.get(first, f"The ID token's {first[:32]} claim is not valid.")
    return SsoRefused(message, reason=first[:32] or "claims")


def validate_id_token(
    raw: object,
    *,
    provider: Provider,
    client_id: str,
    nonce: str,
    access_token: str | None,
    allow_private: bool,
    now: datetime,
) -> dict:
    if not isinstance(raw, str) or not raw or len(raw) > 16384:
        raise SsoRefused("The identity provider sent no ID token.", reason="no_id_token")
    try:
        keys = jwks_cache.get(provider.jwks_uri, allow_private=allow_private)
        try:
            token = jwt.decode(raw, keys, algorithms=list(provider.algorithms))
        except InvalidKeyIdError:
            keys = jwks_cache.get(provider.jwks_uri, allow_private=allow_private, refresh=True)
            token = jwt.decode(raw, keys, algorithms=list(provider.algorithms))
    except outbound.ProviderError as exc:
        raise SsoRefused(str(exc), reason="jwks_unavailable", status=502) from None
    except InvalidKeyIdError:
        raise SsoRefused(
            "The ID token is signed with a key the provider does not publish (kid).",
            reason="signature",
        ) from None
    except BadSignatureError:
        raise SsoRefused(
            "The ID token's signature does not verify against the provider's keys.",
            reason="signature",
        ) from None
    except JoseError as exc:
        # alg "none", HS256 and every other algorithm the provider did not announce land here.
        raise SsoRefused(
            f"The ID token could not be verified ({exc.error}).", reason="signature"
        ) from None
    except (ValueError, TypeError):
        raise SsoRefused("The ID token is not a signed JWT.", reason="signature") from None
    claims = CodeIDToken(
        token.claims,
        token.header,
        {
            "iss": {"essential": True, "value": provider.issuer},
            "aud": {"essential": True, "value": client_id},
            "sub": {"essential": True},
            "exp": {"essential": True},
        },
        {"nonce": nonce, "client_id": client_id, "access_token": access_token},
    )
    try:
        claims.validate(now=int(now.timestamp()), leeway=CLOCK_LEEWAY)
    except ExpiredTokenError:
        raise _claim_refusal("exp") from None
    except ClaimError as exc:
        raise _claim_refusal(str(getattr(exc, "claim", "") or "claims")) from None
    except JoseError:
        raise _claim_refusal("claims") from None
    return dict(claims)


# --- who signs in ---------------------------------------------------------------------


def _user_for(
    *, tenant: Tenant, config: SsoConfig, claims: dict, actor: Actor, now: datetime
) -> tuple[User, bool]:
    raw_email = claims.get("email")
    if not isinstance(raw_email, str) or not raw_email:
        raise SsoRefused(
            "The identity provider sent no email address (ask it for the email scope).",
            reason="no_email",
        )
    try:
        email = accounts.normalize_email(raw_email)
    except InvalidInput:
        raise SsoRefused(
            "The identity provider sent an email address Keydesk cannot use.",
            reason="bad_email",
        ) from None
    if claims.get("email_verified") is not True:
        raise SsoRefused(
            f"Your identity provider has not verified {email} (email_verified is not true).",
            reason="email_unverified",
            status=403,
            email=email,
        )
    user = accounts.get_user_by_email(email)
    if user is not None:
        if user.tenant_id != tenant.id:
            raise SsoRefused(
                f"{email} belongs to another organization and cannot sign in here.",
                reason="other_tenant",
                status=403,
                email=email,
            )
        if not user.is_active:
            raise SsoRefused(
                f"The account {email} is deactivated. Ask your admin.",
                reason="deactivated",
                status=403,
                email=email,
            )
        return user, False
    domain = email.rpartition("@")[2]
    if domain not in config.domain_list:
        raise SsoRefused(
            f"{domain} is not among the domains that may join {tenant.name} by single "
            "sign-on. Ask your admin for an invitation.",
            reason="domain_not_allowed",
            status=403,
            email=email,
        )
    joined = Actor("user", email, actor.ip, actor.user_agent)
    user = accounts.create_user(
        tenant=tenant,
        email=email,
        password=None,  # signs in through the provider; an admin may invite a password later
        role=config.default_role,
        now=now,
        actor=joined,
        check_rules=False,
    )
    return user, True


def record_sign_in(*, result: SignedIn, tenant: Tenant, config: SsoConfig, actor: Actor, now):
    result.user.last_login_at = now
    audit.record(
        "sso.signed_in",
        actor=Actor("user", result.user.email, actor.ip, actor.user_agent),
        now=now,
        tenant_id=tenant.id,
        target_type="user",
        target=result.user.email,
        issuer=config.issuer,
        subject=result.subject,
        created=result.created,
    )


def record_refusal(*, refusal: SsoRefused, tenant: Tenant | None, actor: Actor, now: datetime):
    audit.record(
        "sso.refused",
        actor=Actor("anonymous", refusal.email or "anonymous", actor.ip, actor.user_agent),
        now=now,
        tenant_id=tenant.id if tenant else None,
        target_type="user" if refusal.email else "sso",
        target=refusal.email or (tenant.slug if tenant else None),
        reason=refusal.reason,
        message=str(refusal),
    )
