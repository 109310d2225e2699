"""The local stack: GCS emulator, the function under functions-framework, and Dagster."""
