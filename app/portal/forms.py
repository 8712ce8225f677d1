from flask_wtf import FlaskForm
from wtforms import IntegerField, SelectField, SelectMultipleField, StringField, TextAreaField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import (
    DataRequired,
    InputRequired,
    Length,
    NumberRange,
    Optional,
    ValidationError,
)
from wtforms.widgets import CheckboxInput, ListWidget

from app.accounts.policy import EXPIRY_CHOICES
from app.keys.scopes import ALL_SCOPES


class MultiCheckboxField(SelectMultipleField):
    widget = ListWidget(prefix_label=False)
    option_widget = CheckboxInput()


class ScopesField(MultiCheckboxField):
    """Scope checkboxes; names an unknown scope instead of WTForms' generic "not a valid
    choice". A real scope that is not offered passes through, so the tenant policy check
    in keys.service refuses it naming the rule ("does not let members grant: …")."""

    def pre_validate(self, form) -> None:
        offered = {choice.value for choice in self.choices} | set(ALL_SCOPES)
        refused = [value for value in self.data or () if value not in offered]
        if refused:
            shown = ", ".join(str(v)[:40] for v in refused[:5])
            raise ValidationError(f"Not a scope you can grant: {shown}")


EXPIRY_MESSAGE = "Choose one of the offered expiry periods"


class ExpiryField(SelectField):
    """Expiry in days from the offered choices, with one plain message for anything else.
    A standard period the policy removed (e.g. "never") passes through, so the policy check
    refuses it naming the rule instead."""

    def process_formdata(self, valuelist) -> None:
        if not valuelist:
            return
        try:
            self.data = int(valuelist[0])
        except ValueError:
            raise ValueError(EXPIRY_MESSAGE) from None

    def pre_validate(self, form) -> None:
        if self.process_errors:
            return  # already explained
        offered = {choice.value for choice in self.choices} | set(EXPIRY_CHOICES)
        if self.data not in offered:
            raise ValidationError(EXPIRY_MESSAGE)


def expiry_label(days: int) -> str:
    return "Never" if days == 0 else f"{days} days"


class NewKeyForm(FlaskForm):
    name = StringField(
        "Name",
        validators=[
            DataRequired(message="Give the key a name"),
            Length(max=100, message="Use at most 100 characters"),
        ],
        description="Say where the key will live, e.g. 'CI deploy' or 'laptop scripts'.",
    )
    scopes = ScopesField("Scopes", choices=[SelectChoice(s, s) for s in ALL_SCOPES])
    expires_in_days = ExpiryField(
        "Expires in", coerce=int, validators=[InputRequired(message=EXPIRY_MESSAGE)]
    )
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
        if not field.data:
            raise ValidationError("Choose at least one scope")


class RotateForm(FlaskForm):
    grace_hours = IntegerField(
        "Grace period (hours)",
        default=24,
        validators=[
            InputRequired(message="Enter a whole number of hours from 0 to 168"),
            NumberRange(min=0, max=168, message="Enter a whole number of hours from 0 to 168"),
        ],
        description="How long the old key keeps working (0 to 168 hours).",
    )


class AllowedIpsForm(FlaskForm):
    allowed_ips = TextAreaField(
        "Allowed IP addresses",
        validators=[Optional(), Length(max=2000)],
        description="One address or CIDR range per line, IPv4 or IPv6. Empty: any address.",
    )
