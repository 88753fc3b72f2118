"""Calling the user's code (a model's forward, a ``loss_fn``): its exception passes unchanged,
with a note saying which deadspec function ran it and on what.

An exception raised by the user's model is theirs: its type and traceback point into their
code, and deadspec neither replaces nor wraps it. :class:`user_code` only adds a note
(``BaseException.add_note``, Python >= 3.11; on 3.10 the exception passes as it is), printed
under the traceback::

    RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x5 and 3x4)
    deadspec.read: raised by the model's forward on batch 0 of the inputs (rows 0:4)

No note is added to an exception that deadspec itself raised inside the block: a message that
starts with ``deadspec.``, one that already carries a deadspec note, or one raised in a frame of
the deadspec package below the block (a capture hook, a deadspec loss; the reference models of
:mod:`deadspec.models` count as the user's). Such an error stays deadspec's to explain.
"""

from __future__ import annotations

import os
from types import TracebackType

__all__ = ["MODEL_FORWARD", "note_user_error", "user_code"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Modules of the package that define models: their frames are the model's, not deadspec's.
_MODEL_MODULES = tuple(_PACKAGE + name for name in ("models.py", "models_transformer.py"))
#: The note's wording for a forward pass of the model.
MODEL_FORWARD = "the model's forward"


def _deadspec_frame_below(tb: TracebackType | None) -> bool:
    """Whether a frame below the first (the ``with`` block's own) is deadspec code."""
    tb = tb.tb_next if tb is not None else None
    while tb is not None:
        path = os.path.abspath(tb.tb_frame.f_code.co_filename)
        if path.startswith(_PACKAGE) and not path.startswith(_MODEL_MODULES):
            return True
        tb = tb.tb_next
    return False


def note_user_error(exc: BaseException, fn: str, what: str) -> None:
    """Add ``"deadspec.<fn>: raised by <what>"`` to ``exc``'s notes, unless deadspec raised it
    (see the module docstring) or the Python has no ``add_note``."""
    if not isinstance(exc, Exception) or not hasattr(exc, "add_note"):
        return
    if str(exc).startswith("deadspec."):
        return
    if any(str(n).startswith("deadspec.") for n in getattr(exc, "__notes__", ())):
        return  # the innermost call of the user's code says it
    if _deadspec_frame_below(exc.__traceback__):
        return
    exc.add_note(f"deadspec.{fn}: raised by {what}")


class user_code:
    """``with user_code("read", "the model's forward on batch 0 of the inputs"):`` around a
    call of the user's code: an exception from it gets a note (:func:`note_user_error`) and
    propagates unchanged."""

    __slots__ = ("fn", "what")

    def __init__(self, fn: str, what: str) -> None:
        self.fn = fn
        self.what = what

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool:
        if exc is not None:
            note_user_error(exc, self.fn, self.what)
        return False
