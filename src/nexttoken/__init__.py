"""nexttoken: reproduce landmark next-token-prediction systems on your own machine."""

__version__ = "0.1.0"
