"""`python -m esctl`: the same as the `esctl` script."""

from esctl.app import main

main()
