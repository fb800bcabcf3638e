"""`python -m jobs ...` is `actindex ...`: what a Ray batch job runs, where no console script is installed.

ray job submit --working-dir . -- python -m jobs index PHOTOS/ --layers 'layer*' --out /shared/idx/
"""

from jobs.cli import main

main(prog_name="python -m jobs")
