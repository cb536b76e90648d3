"""The one line the CLI prints for a failed command."""

from __future__ import annotations

import huggingface_hub
from huggingface_hub.errors import StrictDataclassClassValidationError

from ..hub.client import without_url_queries
from .hub import HUB_TIMEOUT_VARIABLE, hub_timeout, is_http_timeout


def message(error: Exception) -> str:
    """The one line the CLI prints for an error."""
    if is_http_timeout(error):
        return (
            f"the Hub ({huggingface_hub.constants.ENDPOINT}) did not answer within {hub_timeout():g} s. Check the "
            f"connection, or allow more time with {HUB_TIMEOUT_VARIABLE}=<seconds>."
        )
    if isinstance(error, StrictDataclassClassValidationError) and error.__cause__ is not None:
        return str(error.__cause__)  # the config's own message, without the validator's header line
    if isinstance(error, KeyError) and len(error.args) == 1 and isinstance(error.args[0], str):
        error = error.args[0]  # str() of a KeyError is the repr of its message, in quotes
    return without_url_queries(str(error))  # the Hub client's messages quote URLs, and an upload URL's query signs it
