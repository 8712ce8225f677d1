from flask_wtf import FlaskForm
from wtforms import (
    BooleanField,
    EmailField,
    HiddenField,
    IntegerField,
    PasswordField,
    SelectField,
    StringField,
)
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange

from app import once
from app.auth.forms import new_password_fields
from app.keys.scopes import ALL_SCOPES
from app.portal.forms import MultiCheckboxField


class PolicyForm(FlaskForm):
    max_key_lifetime_days = IntegerField(
        "Maximum key lifetime (days)",
        validators=[
            InputRequired(message="Enter a number of days (0 for no maximum)"),
            NumberRange(min=0, max=3650, message="Enter 0 (no maximum) to 3650 days"),
        ],
        description="0 = no maximum. New keys and rotations may not live longer.",
    )
    require_expiry = BooleanField("Every key must expire")
    member_scopes = MultiCheckboxField(
        "Scopes members may grant",
        choices=[SelectChoice(s, s) for s in ALL_SCOPES],
        description="Admins may always grant every scope.",
    )
    # "yes" once the admin confirmed that members may grant no scope (and so create no key).
    confirm_no_member_scopes = HiddenField()
    require_2fa = BooleanField("Members must use two-factor authentication")


class InviteForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    submission = once.token_field()  # create once: the same form again shows what it made


class RoleForm(FlaskForm):
    role = SelectField("Role", choices=[SelectChoice(r, r) for r in ("member", "admin")])


class AcceptInviteForm(FlaskForm):
    password, confirm = new_password_fields("Choose a password")


class SsoForm(FlaskForm):
    issuer = StringField(
        "Issuer URL",
        validators=[DataRequired(message="Enter the provider's issuer URL"), Length(max=500)],
        description="e.g. https://login.example.com/realms/acme; Keydesk reads its "
        "/.well-known/openid-configuration.",
    )
    client_id = StringField(
        "Client ID", validators=[DataRequired(message="Enter the client ID"), Length(max=255)]
    )
    client_secret = PasswordField(
        "Client secret",
        validators=[Length(max=1000)],
        description="Write-only: never shown again. Leave empty to keep the stored one.",
    )
    email_domains = StringField(
        "Email domains",
        validators=[Length(max=2000)],
        description="Space-separated, e.g. example.com example.org. People with these "
        "addresses sign in through this provider and join as the default role.",
    )
    default_role = SelectField(
        "Role of people who join by SSO", choices=[SelectChoice(r, r) for r in ("member", "admin")]
    )
    enforce = BooleanField("Members may sign in only by SSO")
