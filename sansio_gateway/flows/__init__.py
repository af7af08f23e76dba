"""What flows share: the Flow protocol and its plans (base), the context a flow sees (context), and the one stream translator (stream)."""
