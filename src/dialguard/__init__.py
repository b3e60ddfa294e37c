"""dialguard: a compliance gate that decides every outbound call before it reaches the carrier."""

__version__ = "0.1.0"
