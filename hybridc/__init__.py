"""hybridc: a declarative graph compiler for hybrid analog/digital neural networks."""
