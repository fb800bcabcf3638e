"""`python -m actindex ...` is `actindex ...`: what a Ray batch job runs where no console script is installed.

ray job submit --working-dir . -- python -m actindex index PHOTOS/ --layers 'layer*' --out /shared/idx/
"""

from actindex.jobs.cli import main

main(prog_name="python -m actindex")
