from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, SelectMultipleField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired, Length, NumberRange, Optional
from wtforms.widgets import CheckboxInput, ListWidget

from app.keys.scopes import ALL_SCOPES, DESCRIPTIONS


class MultiCheckboxField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


def expiry_label(days: int) -> str:
    return "Never" if days == 0 else f"{days} days"


class NewKeyForm(FlaskForm):
    name = StringField(
        "Name",
        validators=[DataRequired(message="Give the key a name"), Length(max=100)],
        description="Say where the key will live, e.g. 'CI deploy' or 'laptop scripts'.",
    )
    scopes = MultiCheckboxField("Scopes", choices=[SelectChoice(s, s) for s in ALL_SCOPES])
    expires_in_days = SelectField("Expires in", coerce=int, validators=[InputRequired()])
    allowed_ips = TextAreaField(
        "Allowed IP addresses (optional)",
        validators=[Optional(), Length(max=2000)],
        description="One address or CIDR range per line, IPv4 or IPv6. Empty: any address.",
    )

    def set_policy(self, scopes: list[str], expiry_days: list[int]) -> None:
        self.scopes.choices = [SelectChoice(s, s) for s in scopes]
        self.expires_in_days.choices = [SelectChoice(d, expiry_label(d)) for d in expiry_days]
        if self.expires_in_days.data is None and expiry_days:
            self.expires_in_days.data = 90 if 90 in expiry_days else expiry_days[0]

    def validate_scopes(self, field) -> None:
        from wtforms.validators import ValidationError

        if not field.data:
            raise ValidationError("Choose at least one scope")


SCOPE_HELP = DESCRIPTIONS


class RotateForm(FlaskForm):
    grace_hours = IntegerField(
        "Grace period (hours)",
        default=24,
        validators=[
            InputRequired(message="Enter 0 to 168 hours"),
            NumberRange(min=0, max=168, message="Enter 0 to 168 hours"),
        ],
        description="How long the old key keeps working (0 to 168 hours).",
    )


class AllowedIpsForm(FlaskForm):
    allowed_ips = TextAreaField(
        "Allowed IP addresses",
        validators=[Optional(), Length(max=2000)],
        description="One address or CIDR range per line, IPv4 or IPv6. Empty: any address.",
    )


class ConfirmForm(FlaskForm):
    """A POST with only the CSRF token (revoke buttons)."""
