from flask_wtf import FlaskForm
from wtforms import StringField
from wtforms.validators import DataRequired, Length


def code_field(label: str, description: str) -> StringField:
    return StringField(
        label,
        validators=[
            DataRequired(message="Enter the code."),
            Length(max=64, message="That is too long for a code."),
        ],
        description=description,
        render_kw={
            "autocomplete": "one-time-code",
            "autocapitalize": "none",
            "spellcheck": "false",
        },
    )


class EnableTotpForm(FlaskForm):
    code = code_field("Code from your app", "The 6-digit code your app shows for Keydesk now.")


class SecondFactorForm(FlaskForm):
    code = code_field(
        "Authentication code",
        "The 6-digit code from your authenticator app, or one of your recovery codes.",
    )


class ConfirmForm(FlaskForm):
    """A button only (CSRF token)."""


class PasskeyNameForm(FlaskForm):
    name = StringField(
        "Name", validators=[DataRequired(message="Give the passkey a name."), Length(max=100)]
    )
