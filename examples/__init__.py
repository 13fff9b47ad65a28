"""Runnable examples. Each module registers itself with ``jaxsecond tour`` and also runs
as a script (``python examples/<name>.py [--full] [--out DIR]``)."""
