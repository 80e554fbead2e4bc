"""The one base class for errors a person can fix; the CLI prints them as one line."""


class UserError(ValueError):
    """Bad input, missing setup or a service that is down: the message says which and what to do."""
