from flask_wtf import FlaskForm
from wtforms import EmailField, PasswordField, StringField
from wtforms.validators import DataRequired, EqualTo, Length


class LoginForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])


def new_password_fields(label: str) -> tuple[PasswordField, PasswordField]:
    """A new password and its confirmation (registration, accepting an invitation)."""
    password = PasswordField(
        label,
        validators=[DataRequired(), Length(min=12, max=128, message="Use 12 to 128 characters")],
        description="At least 12 characters; not your email; not a common password.",
    )
    confirm = PasswordField(
        "Confirm password",
        validators=[DataRequired(), EqualTo("password", message="The passwords do not match")],
    )
    return password, confirm


class RegisterForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])
    password, confirm = new_password_fields("Password")
    organization = StringField(
        "Organization",
        validators=[DataRequired(), Length(max=100)],
        description="Your team or company; you become its admin.",
    )


class SudoForm(FlaskForm):
    """Re-authentication for sudo mode. `code` is removed for a user without a second
    factor (app/auth/sudo_views.py)."""

    password = PasswordField("Password", validators=[DataRequired(), Length(max=1024)])
    code = StringField(
        "Authentication code",
        validators=[Length(max=64)],
        description="From your authenticator app, or a recovery code.",
        render_kw={"autocomplete": "one-time-code", "inputmode": "numeric"},
    )


class ForgotPasswordForm(FlaskForm):
    email = EmailField("Email", validators=[DataRequired(), Length(max=254)])


class ResetPasswordForm(FlaskForm):
    password, confirm = new_password_fields("New password")


class ChangePasswordForm(FlaskForm):
    current_password = PasswordField(
        "Current password", validators=[DataRequired(), Length(max=1024)]
    )
    password, confirm = new_password_fields("New password")
