"""The one exception the lab raises for anything an operator can fix."""

from __future__ import annotations


class LabError(Exception):
    """A lab could not be built, found or torn down; the message says what to do.

    One class (rather than a hierarchy) because every caller does the same
    thing with it: show the message. The CLI prints it and exits 1; tests let
    it fail the test with the message intact.
    """
