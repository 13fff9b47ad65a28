"""``python -m jaxsecond``: the same command line as the ``jaxsecond`` script.

Example:
    $ python -m jaxsecond info
"""

from jaxsecond._cli import main

if __name__ == "__main__":
    raise SystemExit(main())
