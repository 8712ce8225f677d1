from flask_wtf import FlaskForm
from wtforms import (
    DateField,
    IntegerField,
    SelectField,
    SelectMultipleField,
    StringField,
    TextAreaField,
)
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

from app import once
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
CUSTOM = "custom"  # expires_in_days=custom: the date in expires_on (SPEC)
KEEP = ""  # a rotation's "same lifetime as now"
DATE_MESSAGE = "Enter a date as YYYY-MM-DD, e.g. 2027-01-31"


def _days_or_word(value):
    return value if value in (CUSTOM, KEEP) else int(value)


class ExpiryField(SelectField):
    """Expiry in days from the offered choices ("custom": a date of one's own), with one
    plain message for anything else. A standard period the policy removed (e.g. "never")
    passes through, so the policy check refuses it naming the rule instead."""

    def process_formdata(self, valuelist) -> None:
        if not valuelist:
            return
        if valuelist[0] in (CUSTOM, KEEP):
            self.data = valuelist[0]
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


class ExpiryDateField(DateField):
    """YYYY-MM-DD or empty, with a message that shows the format."""

    def process_formdata(self, valuelist) -> None:
        if valuelist and not (valuelist[0] or "").strip():
            self.data = None
            return
        try:
            super().process_formdata([(v or "").strip() for v in valuelist])
        except ValueError:
            raise ValueError(DATE_MESSAGE) from None
        if self.data is None and valuelist:
            raise ValueError(DATE_MESSAGE)


def expiry_label(days: int) -> str:
    return "Never" if days == 0 else f"{days} days"


def lifetime_label(days: int) -> str:
    return "never expires" if days == 0 else f"{days} day{'' if days == 1 else 's'}"


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
        "Expires in", coerce=_days_or_word, validators=[InputRequired(message=EXPIRY_MESSAGE)]
    )
    expires_on = ExpiryDateField(
        "Expiry date", validators=[Optional()],
        description="With “A date of your choice”: the key expires on this day (UTC).",
    )  # fmt: skip
    allowed_ips = TextAreaField(
        "Allowed IP addresses (optional)",
        validators=[Optional(), Length(max=2000)],
        description="One address or CIDR range per line, IPv4 or IPv6. Empty: any address.",
    )
    submission = once.token_field()

    def set_policy(self, scopes: list[str], expiry_days: list[int]) -> None:
        self.scopes.choices = [SelectChoice(s, s) for s in scopes]
        self.expires_in_days.choices = [
            *(SelectChoice(d, expiry_label(d)) for d in expiry_days),
            SelectChoice(CUSTOM, "A date of your choice"),
        ]
        if self.expires_in_days.data is None and expiry_days:
            self.expires_in_days.data = 90 if 90 in expiry_days else expiry_days[0]

    def validate_scopes(self, field) -> None:
        if not field.data:
            raise ValidationError("Choose at least one scope")

    def validate(self, extra_validators=None) -> bool:
        valid = super().validate(extra_validators)
        # Here, not in validate_expires_on: Optional() ends the field's own chain when empty.
        field = self.expires_on
        if self.expires_in_days.data == CUSTOM and field.data is None and not field.errors:
            field.errors = ["Choose the date the key expires on"]
            return False
        return valid


class EditKeyForm(FlaskForm):
    name = NewKeyForm.name
    description = StringField(
        "Description (optional)",
        validators=[Optional(), Length(max=100, message="Use at most 100 characters")],
        description="What the key is for or who to ask about it; shown to your admins too.",
    )
    scopes = ScopesField("Scopes", choices=[SelectChoice(s, s) for s in ALL_SCOPES])
    expires_on = ExpiryDateField(
        "Expires on", validators=[Optional()],
        description="The day the key stops working (UTC). Empty: never expires, where your"
        " organization allows it.",
    )  # fmt: skip
    allowed_ips = NewKeyForm.allowed_ips

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
    expires_in_days = ExpiryField(
        "New key expires in", coerce=_days_or_word, validators=[Optional()]
    )
    submission = once.token_field()

    def set_lifetimes(self, *, current_days: int, allowed: list[int], keep_allowed: bool):
        """Offer the old key's lifetime where the policy still allows it, and every lifetime
        it allows; when the old one is no longer allowed, preselect the longest allowed."""
        choices = [SelectChoice(d, expiry_label(d)) for d in allowed]
        if keep_allowed:
            keep = SelectChoice(KEEP, f"Same as the old key ({lifetime_label(current_days)})")
            choices.insert(0, keep)
        self.expires_in_days.choices = choices
        if self.expires_in_days.data is None and not self.is_submitted():
            longest = max(allowed, key=lambda d: d or 10**6) if allowed else KEEP
            self.expires_in_days.data = KEEP if keep_allowed else longest


class AllowedIpsForm(FlaskForm):
    allowed_ips = TextAreaField(
        "Allowed IP addresses",
        validators=[Optional(), Length(max=2000)],
        description="One address or CIDR range per line, IPv4 or IPv6. Empty: any address.",
    )
