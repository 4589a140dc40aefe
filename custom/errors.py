"""The last line a user sees is the project's message.

A failure inside a bundle run surfaces through MONAI's config machinery, which wraps it
("Failed to evaluate ConfigExpression ...") several times: the message that names the file, row
and fix ends up about 40 lines above the end of the traceback. :func:`install_excepthook` (done
when ``custom`` is imported) keeps Python's traceback and then prints the innermost error raised
by this package's own code as the final line, ``reclf error: ...``.
"""

from __future__ import annotations

import os
import sys
import traceback
from types import TracebackType

PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
_INSTALLED = False


def _raised_here(err: BaseException) -> bool:
    """Whether ``err`` was raised by code of this package (its innermost frame is under custom/)."""
    frames = traceback.extract_tb(err.__traceback__)
    return bool(frames) and os.path.abspath(frames[-1].filename).startswith(PACKAGE_DIR + os.sep)


def project_error(err: BaseException) -> BaseException | None:
    """The innermost error of ``err``'s cause/context chain that this package raised, if any."""
    found, seen = None, set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if _raised_here(err) and not isinstance(err, (KeyboardInterrupt, SystemExit)):
            found = err
        # what Python itself shows: the cause, else the context unless `raise ... from None` hid it
        err = err.__cause__ if err.__cause__ is not None else (None if err.__suppress_context__ else err.__context__)
    return found


def _hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None, previous=sys.__excepthook__) -> None:
    previous(kind, err, tb)
    ours = project_error(err)
    if ours is not None and ours is not err:
        message = str(ours).strip() or type(ours).__name__
        print(f"\nreclf error: {message}", file=sys.stderr, flush=True)


def install_excepthook() -> None:
    """Chain :func:`_hook` in front of the current ``sys.excepthook`` (once per process)."""
    global _INSTALLED
    if _INSTALLED:
        return
    previous = sys.excepthook

    def hook(kind, err, tb):
        _hook(kind, err, tb, previous)

    sys.excepthook = hook
    _INSTALLED = True
