"""`python -m actindex.jobs.index SOURCE ...`: the older spelling of `python -m actindex index SOURCE ...`.

The job itself is actindex.jobs.indexing; this module only runs the CLI's index command, so that the job
never imports the CLI.
"""

from actindex.jobs.cli import main_index

if __name__ == "__main__":
    main_index(prog_name="python -m actindex.jobs.index")
