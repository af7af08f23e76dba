"""Wire models and strict parsers, one module per client dialect: a body in, a frozen typed request (or the dialect's own 400) out."""
