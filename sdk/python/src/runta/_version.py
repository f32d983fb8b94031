"""The SDK's version: sent in the User-Agent so server logs tell SDK traffic from the CLI's."""

__version__ = "0.1.0"
