import warnings
from pathlib import Path

import dagster as dg

# Dagster's own open_pipes_session calls a preview API of the message reader
# (expected_writer_count) and would print a PreviewWarning in every run; nothing here uses it.
warnings.filterwarnings(
    "ignore", message=r".*PipesMessageReader\.expected_writer_count", category=dg.PreviewWarning
)


@dg.definitions
def defs() -> dg.Definitions:
    # The work happens in the function, so a step needs no process of its own: every step
    # runs in the run's process (the multiprocess executor would start a second Python
    # process and load this code location again, per run).
    return dg.Definitions.merge(
        dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
        dg.Definitions(executor=dg.in_process_executor),
    )
