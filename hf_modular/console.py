"""What a run prints: hf_modular's own messages and one progress bar per long phase. The libraries underneath keep
their per-file bars and notices to themselves unless asked (`-v`), and their HTTP loggers never speak below WARNING:
at INFO they would print every request, signed upload URLs included."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import datasets
import huggingface_hub.constants
import huggingface_hub.utils
import transformers.utils.logging

QUIET, DEFAULT, VERBOSE = -1, 0, 1
HTTP_LOGGERS = ("httpx", "httpx2", "httpcore", "httpcore2", "urllib3")
BARS = "hf_modular"  # huggingface_hub's name for hf_modular's group of progress bars


def progress_bar(*args: Any, **kwargs: Any) -> huggingface_hub.utils.tqdm:
    """A progress bar of hf_modular's: huggingface_hub's tqdm, in its own group, so that HF_HUB_DISABLE_PROGRESS_BARS
    silences it as it silences the Hub client's, and the libraries' bars can be off while these stay on."""
    return huggingface_hub.utils.tqdm(*args, name=BARS, **kwargs)


def configure(verbosity: int = DEFAULT) -> None:
    """Set up a command's output. QUIET: warnings only, no bars. DEFAULT: hf_modular's messages and bars; the
    libraries' warnings and errors only, no bars of theirs. VERBOSE: hf_modular's debug messages, and the libraries'
    own messages and bars as they would show them."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("hf_modular")
    ours.handlers[:] = [handler]
    ours.propagate = False
    level = {QUIET: logging.WARNING, DEFAULT: logging.INFO, VERBOSE: logging.DEBUG}[verbosity]
    if int(os.environ.get("RANK", "0")) != 0:  # under accelerate launch / torchrun the main process speaks for all
        level = max(level, logging.WARNING)
    ours.setLevel(level)
    for name in HTTP_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    library_level = logging.INFO if verbosity == VERBOSE else logging.WARNING
    transformers.utils.logging.set_verbosity(library_level)
    datasets.logging.set_verbosity(library_level)
    # huggingface_hub's notices ("No files have been modified since last commit...") repeat what the command prints.
    huggingface_hub.utils.logging.set_verbosity(library_level if verbosity == VERBOSE else logging.ERROR)
    if verbosity < VERBOSE:  # "Loading weights" / "Writing model shards" for every small file: not a long phase
        transformers.utils.logging.disable_progress_bar()  # (it turns huggingface_hub's bars off too)
        datasets.disable_progress_bars()
    if verbosity == QUIET:
        huggingface_hub.utils.disable_progress_bars()
    elif not huggingface_hub.constants.HF_HUB_DISABLE_PROGRESS_BARS:  # the user's switch wins (and would warn)
        huggingface_hub.utils.enable_progress_bars(BARS)


@contextmanager
def library_bars_off() -> Iterator[None]:
    """Inside: no per-file progress bars from transformers (used around the many small saves and loads of one
    phase, so that the phase shows one bar, its own). The earlier setting comes back after."""
    enabled = transformers.utils.logging.is_progress_bar_enabled()
    ours = not huggingface_hub.utils.are_progress_bars_disabled(BARS)
    transformers.utils.logging.disable_progress_bar()  # (all of huggingface_hub's bars too: ours come back below)
    try:
        yield
    finally:
        if enabled:
            transformers.utils.logging.enable_progress_bar()
        if ours:
            huggingface_hub.utils.enable_progress_bars(BARS)
