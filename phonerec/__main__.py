"""`python -m phonerec ...` (what torchrun runs): the same as the `phonerec` console script."""

from phonerec.cli import main

main()
