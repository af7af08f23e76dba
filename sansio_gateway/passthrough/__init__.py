"""Same-dialect routes: the client's body forwarded with only the model rewritten, and the backend's usage read on the way back."""
