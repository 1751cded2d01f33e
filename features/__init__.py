"""Feature logic shared by the speed and batch layers (no clock inside: ``as_of`` is explicit)."""
