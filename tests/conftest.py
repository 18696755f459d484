"""Suite-wide settings.

Property tests (hypothesis) run derandomized: the same examples on every run, so that
``make test`` and CI pass or fail reproducibly. When working on a property, explore new
examples by loading hypothesis's ``default`` profile instead of this one.
"""

from __future__ import annotations

from hypothesis import settings

settings.register_profile("reproducible", derandomize=True)
settings.load_profile("reproducible")
