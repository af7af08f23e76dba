"""Route-specific flows: one per (surface, endpoint), driven by the Exchange."""
