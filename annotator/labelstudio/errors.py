"""The two failures of talking to Label Studio; both are one line a person can act on."""

from __future__ import annotations

from bookcounter.errors import UserError


class LabelStudioError(UserError):
    """Label Studio refused something or is set up wrongly; the message says what to do."""


class LabelStudioUnavailable(LabelStudioError):
    """The server did not answer, even after retries."""
