"""Contract checks between ``infra/*.tf`` and the code on either side of it.

Each ``check_*`` takes a parsed :class:`Terraform` (plus what the Python code declares) and
returns a list of problems; an empty list means the contract holds. Tests run every check on
the real ``infra/`` and on deliberately broken copies, so each one is shown to be able to fail.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hcl2

from infra.scripts.cloud_env import ENV_FROM_OUTPUTS, USER_SETTINGS

INFRA_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = INFRA_DIR.parent
FUNCTION_DIR = REPO_ROOT / "cloud_function"
FUNCTION_SETTINGS = FUNCTION_DIR / "people_lake" / "settings.py"
ORCHESTRATOR_SETTINGS = REPO_ROOT / "demo" / "src" / "gcf_demo" / "settings.py"
INVOCATION = REPO_ROOT / "dagster" / "src" / "dagster_pipes_gcf" / "invocation.py"
CLIENT_PACKAGE = REPO_ROOT / "dagster" / "src" / "dagster_pipes_gcf"

PUBLIC_PRINCIPALS = ("allUsers", "allAuthenticatedUsers")
BASIC_ROLES = ("roles/owner", "roles/editor", "roles/viewer")
DEFAULT_COMPUTE_SA = "-compute@developer.gserviceaccount.com"
STORAGE_API = "storage.googleapis.com"
# The APIs each resource type calls when Terraform creates it (an empty project has none of
# them on). A resource type missing here fails check_required_apis: add it with its APIs.
RESOURCE_APIS: dict[str, frozenset[str]] = {
    "google_project_service": frozenset(),  # Service Usage: on in every project
    "google_project_iam_member": frozenset({"cloudresourcemanager.googleapis.com"}),
    "google_project_iam_custom_role": frozenset({"iam.googleapis.com"}),
    "google_service_account": frozenset({"iam.googleapis.com"}),
    "google_service_account_iam_member": frozenset({"iam.googleapis.com"}),
    "google_storage_bucket": frozenset({STORAGE_API}),
    "google_storage_bucket_object": frozenset({STORAGE_API}),
    "google_storage_bucket_iam_member": frozenset({STORAGE_API}),
    "google_artifact_registry_repository": frozenset({"artifactregistry.googleapis.com"}),
    "google_artifact_registry_repository_iam_member": frozenset(
        {"artifactregistry.googleapis.com"}
    ),
    "google_cloudfunctions2_function": frozenset(
        {
            "cloudfunctions.googleapis.com",
            "cloudbuild.googleapis.com",  # builds the source
            "artifactregistry.googleapis.com",  # stores the image
            "run.googleapis.com",  # runs it
            "logging.googleapis.com",  # build and request logs
            STORAGE_API,  # reads the source
        }
    ),
    "google_cloud_run_service_iam_member": frozenset({"run.googleapis.com"}),
    "google_cloud_run_v2_job": frozenset({"run.googleapis.com"}),
    "google_cloud_run_v2_job_iam_member": frozenset({"run.googleapis.com"}),
    "time_sleep": frozenset(),
}
# What the deployment needs at run time rather than at apply time.
RUNTIME_APIS = frozenset(
    {
        "iamcredentials.googleapis.com",  # the orchestrator's impersonated ID tokens
        STORAGE_API,  # Pipes messages and the data lake
    }
)
# The resource that enables the APIs; every API-calling resource must come after it.
API_ENABLER = ("google_project_service", "required")
# Grants must propagate before Cloud Build runs as the build account (the google provider's
# cloudfunctions2 builder example waits 60 s).
MIN_PROPAGATION_WAIT_S = 60
# The IAM permission each Cloud Run v2 call needs ("Authorization requires the following IAM
# permission" in Google's REST reference, cloud.google.com/run/docs/reference/rest/v2; a run
# with overrides needs run.jobs.runWithOverrides besides run.jobs.run).
CLOUD_RUN_CALL_PERMISSIONS: dict[str, frozenset[str]] = {
    "jobs.run_job": frozenset({"run.jobs.run", "run.jobs.runWithOverrides"}),
    "executions.get_execution": frozenset({"run.executions.get"}),
    "executions.list_executions": frozenset({"run.executions.list"}),
    "executions.cancel_execution": frozenset({"run.executions.cancel"}),
    "tasks.get_task": frozenset({"run.tasks.get"}),
    "tasks.list_tasks": frozenset({"run.tasks.list"}),
}
# Permissions of the predefined Cloud Run roles granted here, as Google's role reference lists
# them (docs.cloud.google.com/iam/docs/roles-permissions/run, "Cloud Run Jobs Executor With
# Overrides": reading an execution or its tasks is not among them). A role missing here fails
# the check: add it with its permissions.
PREDEFINED_ROLE_PERMISSIONS: dict[str, frozenset[str]] = {
    "roles/run.jobsExecutorWithOverrides": frozenset(
        {"run.jobs.run", "run.jobs.runWithOverrides", "run.executions.cancel"}
    ),
}

Problems = list[str]
Body = dict[str, Any]

# --- parsing -------------------------------------------------------------------------------


def _unquote(text: str) -> str:
    """python-hcl2 keeps the quotes of string literals and block labels; drop them."""
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1]
    return text


def _normalize(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            _unquote(key): _normalize(item)
            for key, item in value.items()
            if not key.startswith("__")  # python-hcl2 markers: __is_block__, __comments__, ...
        }
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    return _unquote(value) if isinstance(value, str) else value


@dataclass
class Terraform:
    """The top-level blocks of every ``*.tf`` file in one directory, merged."""

    variables: dict[str, Body] = field(default_factory=dict)
    locals: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, dict[str, Body]] = field(default_factory=dict)
    data: dict[str, dict[str, Body]] = field(default_factory=dict)
    outputs: dict[str, Body] = field(default_factory=dict)
    settings: list[Body] = field(default_factory=list)  # `terraform {}` blocks
    providers: list[Body] = field(default_factory=list)
    texts: dict[str, str] = field(default_factory=dict)  # file name -> source

    @classmethod
    def load(cls, directory: Path = INFRA_DIR) -> Terraform:
        tf = cls()
        for path in sorted(directory.glob("*.tf")):
            text = path.read_text()
            tf.texts[path.name] = text
            tf._add(_normalize(hcl2.loads(text)))
        return tf

    def _add(self, parsed: Mapping[str, Any]) -> None:
        for block in parsed.get("variable", []):
            self.variables.update(block)
        for block in parsed.get("locals", []):
            self.locals.update(block)
        for block in parsed.get("output", []):
            self.outputs.update(block)
        for kind, target in (("resource", self.resources), ("data", self.data)):
            for block in parsed.get(kind, []):
                for type_, named in block.items():
                    target.setdefault(type_, {}).update(named)
        self.settings.extend(parsed.get("terraform", []))
        self.providers.extend(parsed.get("provider", []))

    def all_resources(self) -> Iterator[tuple[str, str, Body]]:
        for type_, named in self.resources.items():
            for name, body in named.items():
                yield type_, name, body


def block(body: Mapping[str, Any], name: str) -> Body:
    """The first nested block ``name`` of ``body`` (python-hcl2 gives blocks as lists)."""
    value = body.get(name)
    if isinstance(value, list) and value and isinstance(value[0], dict):
        return value[0]
    return value if isinstance(value, dict) else {}


def strings(value: Any) -> Iterator[str]:
    """Every string anywhere inside ``value``."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def expression(value: Any) -> str:
    """``"${x}"`` -> ``"x"``; other values as text, for comparisons."""
    text = str(value)
    return text[2:-1] if text.startswith("${") and text.endswith("}") else text


_RESOURCE_REF = re.compile(r"(?<![\w.])((?:google|archive|time)_[a-z0-9_]+)\.([A-Za-z_][\w-]*)")
_DATA_REF = re.compile(r"\bdata\.([a-z][a-z0-9_]*)\.([A-Za-z_][\w-]*)")
_VAR_REF = re.compile(r"\bvar\.([A-Za-z_][\w-]*)")
_LOCAL_REF = re.compile(r"\blocal\.([A-Za-z_][\w-]*)")


def resource_refs(value: Any, type_: str) -> set[str]:
    """Names of the ``type_`` resources that ``value`` refers to."""
    return {m[2] for text in strings(value) for m in _RESOURCE_REF.finditer(text) if m[1] == type_}


def resolve_local(tf: Terraform, value: Any) -> Any:
    """``"${local.x}"`` -> the value of local ``x``; anything else unchanged."""
    match = re.fullmatch(r"\$\{local\.([A-Za-z_][\w-]*)\}", str(value))
    return tf.locals.get(match[1], value) if match else value


# --- what the Python code declares ----------------------------------------------------------


def _module_constants(tree: ast.Module) -> dict[str, Any]:
    constants: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1:
            target = node.targets[0]
            if isinstance(target, ast.Name):
                try:
                    constants[target.id] = _literal(node.value, constants)
                except ValueError:
                    continue
    return constants


def _literal(node: ast.expr, constants: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    if isinstance(node, ast.Tuple | ast.List):
        return tuple(_literal(item, constants) for item in node.elts)
    return ast.literal_eval(node)


def function_env_vars(path: Path = FUNCTION_SETTINGS) -> tuple[str, ...]:
    """``FUNCTION_ENV_VARS`` of the function's settings module."""
    return tuple(_module_constants(ast.parse(path.read_text()))["FUNCTION_ENV_VARS"])


def orchestrator_env_vars(path: Path = ORCHESTRATOR_SETTINGS) -> frozenset[str]:
    """Names of the variables the demo code location reads (keys of ``LOCAL_DEFAULTS``)."""
    return frozenset(_module_constants(ast.parse(path.read_text()))["LOCAL_DEFAULTS"])


_CLOUD_RUN_CALL = re.compile(r"\bapi\.(jobs|executions|tasks)\.(\w+)\b")


def job_client_calls(package: Path = CLIENT_PACKAGE) -> frozenset[str]:
    """The Cloud Run v2 calls the Dagster client makes (``api.<client>.<method>``)."""
    return frozenset(
        f"{client}.{method}"
        for path in sorted(package.glob("*.py"))
        for client, method in _CLOUD_RUN_CALL.findall(path.read_text())
    )


def client_timeout(path: Path = INVOCATION) -> float:
    """Default ``InvocationPolicy.timeout`` of the Dagster client."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == "InvocationPolicy":
            for item in node.body:
                if (
                    isinstance(item, ast.AnnAssign)
                    and isinstance(item.target, ast.Name)
                    and item.target.id == "timeout"
                    and item.value is not None
                ):
                    return float(ast.literal_eval(item.value))
    raise LookupError(f"InvocationPolicy.timeout not found in {path}")


# --- the function and its identities ----------------------------------------------------------


def the_function(tf: Terraform) -> tuple[str, Body]:
    functions = tf.resources.get("google_cloudfunctions2_function", {})
    if len(functions) != 1:
        raise LookupError(f"expected one google_cloudfunctions2_function, found {len(functions)}")
    return next(iter(functions.items()))


def function_env(tf: Terraform) -> dict[str, Any]:
    _, function = the_function(tf)
    env = resolve_local(tf, block(function, "service_config").get("environment_variables"))
    return env if isinstance(env, dict) else {}


def output_bucket(tf: Terraform, output: str) -> str | None:
    """The google_storage_bucket an output refers to."""
    refs = resource_refs(tf.outputs.get(output, {}).get("value"), "google_storage_bucket")
    return next(iter(refs)) if len(refs) == 1 else None


def _grantee(tf: Terraform, body: Body) -> str | None:
    refs = resource_refs(body.get("member"), "google_service_account")
    return next(iter(refs)) if len(refs) == 1 else None


Grant = tuple[str, str, str, str]  # (IAM resource type, target, role, condition or "")


def condition_of(tf: Terraform, body: Body) -> str:
    """The CEL expression of an IAM member's condition (locals resolved), or ``""``."""
    value = resolve_local(tf, block(body, "condition").get("expression", ""))
    return " ".join(str(value).replace('\\"', '"').split())


def grants_of(tf: Terraform, account: str) -> set[Grant]:
    """Everything granted to service account ``account``."""
    grants = set()
    for type_, _, body in tf.all_resources():
        if type_.endswith("_iam_member") and _grantee(tf, body) == account:
            target = next(
                (
                    str(body[key])
                    for key in ("bucket", "service", "repository", "name", "project")
                    if key in body
                ),
                "",
            )
            grants.add((type_, expression(target), str(body.get("role")), condition_of(tf, body)))
    return grants


def cancel_marker_condition(bucket: str) -> str:
    """Objects named ``*/cancel`` in ``bucket`` (a Terraform expression for its name)."""
    return (
        f'resource.name.startsWith("projects/_/buckets/${{{bucket}}}/objects/") '
        '&& resource.name.endsWith("/cancel")'
    )


def runtime_account(tf: Terraform) -> str | None:
    _, function = the_function(tf)
    email = block(function, "service_config").get("service_account_email")
    refs = resource_refs(email, "google_service_account")
    return next(iter(refs)) if len(refs) == 1 else None


def orchestrator_account(
    tf: Terraform, env_from_outputs: Mapping[str, str] = ENV_FROM_OUTPUTS
) -> str | None:
    """The service account whose email the orchestrator impersonates (via the outputs)."""
    output = env_from_outputs["GOOGLE_IMPERSONATE_SERVICE_ACCOUNT"]
    refs = resource_refs(tf.outputs.get(output, {}).get("value"), "google_service_account")
    return next(iter(refs)) if len(refs) == 1 else None


# --- checks ----------------------------------------------------------------------------------


def check_references(tf: Terraform) -> Problems:
    """Every var./local./resource/data reference resolves; every variable and local is used."""
    everything = [tf.variables, tf.locals, tf.resources, tf.data, tf.outputs, tf.providers]
    texts = [text for part in everything for text in strings(part)]
    problems = []
    declared_resources = {(t, n) for t, n, _ in tf.all_resources()}
    declared_data = {(t, n) for t, named in tf.data.items() for n in named}
    for text in texts:
        problems += [
            f"undefined variable var.{m[1]}"
            for m in _VAR_REF.finditer(text)
            if m[1] not in tf.variables
        ]
        problems += [
            f"undefined local local.{m[1]}"
            for m in _LOCAL_REF.finditer(text)
            if m[1] not in tf.locals
        ]
        problems += [
            f"undefined resource {m[1]}.{m[2]}"
            for m in _RESOURCE_REF.finditer(text)
            if (m[1], m[2]) not in declared_resources
        ]
        problems += [
            f"undefined data source data.{m[1]}.{m[2]}"
            for m in _DATA_REF.finditer(text)
            if (m[1], m[2]) not in declared_data
        ]
    used_vars = {m[1] for text in texts for m in _VAR_REF.finditer(text)}
    used_locals = {m[1] for text in texts for m in _LOCAL_REF.finditer(text)}
    problems += [f"variable {name} is never used" for name in tf.variables if name not in used_vars]
    problems += [f"local {name} is never used" for name in tf.locals if name not in used_locals]
    return sorted(set(problems))


def check_variables_documented(tf: Terraform) -> Problems:
    """Every variable has a description and a type."""
    return [
        f"variable {name} needs a {attribute}"
        for name, body in tf.variables.items()
        for attribute in ("description", "type")
        if not body.get(attribute)
    ]


def check_provider_pins(tf: Terraform) -> Problems:
    """Terraform's version and both providers' versions are constrained."""
    settings = tf.settings[0] if tf.settings else {}
    problems = [] if settings.get("required_version") else ["terraform.required_version is unset"]
    providers = block(settings, "required_providers")
    for name in ("google", "archive", "time"):
        spec = providers.get(name, {})
        if spec.get("source") != f"hashicorp/{name}" or not re.match(
            r"^~>\s*\d+\.\d+", str(spec.get("version", ""))
        ):
            problems.append(f"provider {name} must be hashicorp/{name} pinned with ~> MAJOR.MINOR")
    return problems


def check_function_env(tf: Terraform, expected: Sequence[str]) -> Problems:
    """The function gets exactly the variables it reads; THREADS is its concurrency,
    PIPES_BUCKET the bucket Dagster reads, GOOGLE_CLOUD_PROJECT the deployed project."""
    env = function_env(tf)
    problems = [
        f"function reads {name} but Terraform does not set it"
        for name in expected
        if name not in env
    ]
    problems += [
        f"Terraform sets {name} but the function does not read it (FUNCTION_ENV_VARS)"
        for name in env
        if name not in expected
    ]
    _, function = the_function(tf)
    concurrency = expression(
        block(function, "service_config").get("max_instance_request_concurrency")
    )
    if "THREADS" in expected and expression(env.get("THREADS")) != f"tostring({concurrency})":
        problems.append(f"THREADS must be tostring({concurrency}) (the per-instance concurrency)")
    pipes = output_bucket(tf, ENV_FROM_OUTPUTS["PIPES_BUCKET"])
    bucket = expression(env.get("PIPES_BUCKET"))
    if "PIPES_BUCKET" in expected and bucket != f"google_storage_bucket.{pipes}.name":
        problems.append(
            f"PIPES_BUCKET must be google_storage_bucket.{pipes}.name (the bucket Dagster "
            f"reads), got {bucket}"
        )
    project = expression(env.get("GOOGLE_CLOUD_PROJECT"))
    if "GOOGLE_CLOUD_PROJECT" in expected and project != "var.project_id":
        problems.append(f"GOOGLE_CLOUD_PROJECT must be var.project_id, got {project}")
    return problems


def check_data_lake_settings(
    tf: Terraform, env_from_outputs: Mapping[str, str] = ENV_FROM_OUTPUTS
) -> Problems:
    """The lake the orchestrator sends is the one the function defaults to and allows."""
    env = function_env(tf)
    sent = tf.outputs.get(env_from_outputs["DATA_LAKE_URI"], {}).get("value")
    problems = [
        f"function {name} ({env.get(name)}) differs from the orchestrator's DATA_LAKE_URI ({sent})"
        for name in ("DATA_LAKE_URI", "ALLOWED_DATA_LAKE_ROOTS")
        if name in env and env[name] != sent
    ]
    uri = str(resolve_local(tf, sent))
    if not re.fullmatch(r"gs://\$\{google_storage_bucket\.[\w-]+\.name\}", uri):
        problems.append(f"DATA_LAKE_URI must be gs://<a bucket declared here>, got {uri}")
    return problems


def check_orchestrator_outputs(
    tf: Terraform,
    orchestrator_vars: frozenset[str],
    env_from_outputs: Mapping[str, str] = ENV_FROM_OUTPUTS,
    user_settings: frozenset[str] = USER_SETTINGS,
) -> Problems:
    """`just cloud-env` writes every orchestrator setting, from outputs that exist and fit,
    except the few only the user can know (``USER_SETTINGS``, kept from .env)."""
    problems = [
        f"orchestrator reads {name} but cloud-env does not write it"
        for name in sorted(orchestrator_vars - set(env_from_outputs) - user_settings)
    ]
    problems += [
        f"cloud-env writes {name} but the orchestrator does not read it"
        for name in sorted((set(env_from_outputs) | user_settings) - orchestrator_vars)
    ]
    problems += [
        f"cloud-env needs output {output} ({name}) but outputs.tf has none"
        for name, output in env_from_outputs.items()
        if output not in tf.outputs
    ]
    function_name, _ = the_function(tf)
    url = expression(
        tf.outputs.get(env_from_outputs.get("CLOUD_FUNCTION_URL", ""), {}).get("value")
    )
    if url != f"google_cloudfunctions2_function.{function_name}.service_config[0].uri":
        problems.append(f"CLOUD_FUNCTION_URL must be the function's run.app URI, got {url}")
    if output_bucket(tf, env_from_outputs.get("PIPES_BUCKET", "")) is None:
        problems.append("PIPES_BUCKET output must name one google_storage_bucket")
    return problems


def check_no_public_access(tf: Terraform, extra_texts: Mapping[str, str] | None = None) -> Problems:
    """No public principal, basic role, service-account key or authoritative IAM resource."""
    problems = []
    for name, text in {**tf.texts, **(extra_texts or {})}.items():
        problems += [
            f"{name}: public principal {principal}"
            for principal in PUBLIC_PRINCIPALS
            if principal in text
        ]
        problems += [
            f"{name}: basic role {role}"
            for role in BASIC_ROLES
            if re.search(rf'"{re.escape(role)}"', text)
        ]
    for type_, name, _ in tf.all_resources():
        if type_ == "google_service_account_key":
            problems.append(f"{type_}.{name}: Terraform must not create service-account keys")
        if type_.endswith(("_iam_policy", "_iam_binding")):
            problems.append(f"{type_}.{name}: authoritative IAM would drop existing grants")
    return problems


def check_buckets_private(tf: Terraform) -> Problems:
    """Every bucket enforces public access prevention and uniform bucket-level access."""
    problems = []
    for name, body in tf.resources.get("google_storage_bucket", {}).items():
        if body.get("public_access_prevention") != "enforced":
            problems.append(f"bucket {name}: public_access_prevention must be enforced")
        if body.get("uniform_bucket_level_access") is not True:
            problems.append(f"bucket {name}: uniform_bucket_level_access must be true")
    return problems


def check_pipes_lifecycle(
    tf: Terraform, env_from_outputs: Mapping[str, str] = ENV_FROM_OUTPUTS
) -> Problems:
    """The Pipes bucket deletes message chunks after N days."""
    bucket = output_bucket(tf, env_from_outputs["PIPES_BUCKET"])
    body = tf.resources.get("google_storage_bucket", {}).get(bucket or "", {})
    for rule in body.get("lifecycle_rule", []):
        age = block(rule, "condition").get("age")
        if block(rule, "action").get("type") == "Delete" and age not in (None, 0):
            return []
    return [f"Pipes bucket {bucket}: needs a lifecycle_rule deleting objects after N days"]


def check_function_identity(tf: Terraform) -> Problems:
    """The function runs and builds as dedicated service accounts, not the default one."""
    name, function = the_function(tf)
    accounts = tf.resources.get("google_service_account", {})
    runtime = runtime_account(tf)
    problems = []
    if runtime not in accounts:
        problems.append(f"function {name}: service_account_email must be a dedicated account")
    elif runtime == orchestrator_account(tf):
        problems.append(f"function {name}: runs as the orchestrator's account")
    build = resource_refs(
        block(function, "build_config").get("service_account"), "google_service_account"
    )
    if not build or not build <= set(accounts):
        problems.append(
            f"function {name}: build_config.service_account must be a dedicated account"
        )
    if any(DEFAULT_COMPUTE_SA in text for text in tf.texts.values()):
        problems.append("the default compute service account is referenced")
    return problems


def check_iam_grants(
    tf: Terraform, env_from_outputs: Mapping[str, str] = ENV_FROM_OUTPUTS
) -> Problems:
    """Each account has exactly its grants, the cancellation ones limited to ``*/cancel``.

    Runtime: create Pipes chunks, read cancel markers, use the lake's objects (not admin them).
    Orchestrator: invoke the function, read Pipes chunks, create cancel markers, run the
    people job with overrides (and watch and cancel its executions).
    Job: the runtime's grants but the marker read, for the Cloud Run job's own account (Cloud
    Run cancels a task with SIGTERM; no marker is written for it).
    """
    function_name, _ = the_function(tf)
    pipes = f"google_storage_bucket.{output_bucket(tf, env_from_outputs['PIPES_BUCKET'])}.name"
    lake = expression(
        resolve_local(tf, tf.outputs.get(env_from_outputs["DATA_LAKE_URI"], {}).get("value"))
    )
    lake = re.sub(r"^gs://\$\{(.*)\}$", r"\1", lake)
    service = f"google_cloudfunctions2_function.{function_name}.service_config[0].service"
    bucket_member = "google_storage_bucket_iam_member"
    cancel_only = cancel_marker_condition(pipes)
    expected: dict[str, tuple[str | None, set[Grant]]] = {
        "runtime": (
            runtime_account(tf),
            {
                (bucket_member, pipes, "roles/storage.objectCreator", ""),
                (bucket_member, pipes, "roles/storage.objectViewer", cancel_only),
                (bucket_member, lake, "roles/storage.objectUser", ""),
            },
        ),
        "orchestrator": (
            orchestrator_account(tf, env_from_outputs),
            {
                ("google_cloud_run_service_iam_member", service, "roles/run.invoker", ""),
                (bucket_member, pipes, "roles/storage.objectViewer", ""),
                (bucket_member, pipes, "roles/storage.objectCreator", cancel_only),
                (
                    "google_cloud_run_v2_job_iam_member",
                    "google_cloud_run_v2_job.people.name",
                    "roles/run.jobsExecutorWithOverrides",
                    "",
                ),
                (
                    "google_cloud_run_v2_job_iam_member",
                    "google_cloud_run_v2_job.people.name",
                    "${google_project_iam_custom_role.job_watcher.name}",
                    "",
                ),
            },
        ),
        "job": (
            "job" if "job" in tf.resources.get("google_service_account", {}) else None,
            {
                (bucket_member, pipes, "roles/storage.objectCreator", ""),
                (bucket_member, lake, "roles/storage.objectUser", ""),
            },
        ),
    }
    problems = []
    for who, (account, want) in expected.items():
        if account is None:
            problems.append(f"cannot tell which service account is the {who}")
            continue
        have = grants_of(tf, account)
        problems += [f"{who} ({account}) lacks {_describe(grant)}" for grant in sorted(want - have)]
        problems += [
            f"{who} ({account}) has unexpected {_describe(grant)}" for grant in sorted(have - want)
        ]
    return problems


def role_permissions(tf: Terraform, role: str) -> frozenset[str] | None:
    """What ``role`` grants: a predefined role from the table above, or a custom role of this
    configuration by its permissions (None: unknown)."""
    if role in PREDEFINED_ROLE_PERMISSIONS:
        return PREDEFINED_ROLE_PERMISSIONS[role]
    custom = resource_refs(role, "google_project_iam_custom_role")
    roles = tf.resources.get("google_project_iam_custom_role", {})
    if len(custom) == 1 and (name := next(iter(custom))) in roles:
        return frozenset(strings(roles[name].get("permissions")))
    return None


def check_job_client_permissions(
    tf: Terraform,
    calls: frozenset[str],
    env_from_outputs: Mapping[str, str] = ENV_FROM_OUTPUTS,
) -> Problems:
    """The orchestrator's grants on the job hold every permission the client's calls need,
    and its custom roles nothing more."""
    account = orchestrator_account(tf, env_from_outputs)
    problems = [f"unknown Cloud Run call {call}" for call in sorted(calls)
                if call not in CLOUD_RUN_CALL_PERMISSIONS]  # fmt: skip
    needed = frozenset().union(*(CLOUD_RUN_CALL_PERMISSIONS.get(call, ()) for call in calls))
    granted: set[str] = set()
    for type_, target, role, _ in sorted(grants_of(tf, account or "")):
        if type_ != "google_cloud_run_v2_job_iam_member":
            continue
        permissions = role_permissions(tf, role)
        if permissions is None:
            problems.append(f"role {expression(role)} on {target}: its permissions are unknown")
            continue
        granted |= permissions
        if role not in PREDEFINED_ROLE_PERMISSIONS and permissions - needed:
            extra = ", ".join(sorted(permissions - needed))
            problems.append(
                f"custom role {expression(role)} grants {extra}, which the client never calls"
            )
    problems += [
        f"the orchestrator lacks {permission} on the job (the client calls it)"
        for permission in sorted(needed - granted)
    ]
    return problems


def _describe(grant: Grant) -> str:
    _, target, role, condition = grant
    return f"{role} on {target}" + (f" if {condition}" if condition else "")


def check_timeout_matches_client(tf: Terraform, client_timeout_s: float) -> Problems:
    """The function's timeout equals the Dagster client's HTTP timeout."""
    _, function = the_function(tf)
    timeout = expression(block(function, "service_config").get("timeout_seconds"))
    variable = re.fullmatch(r"var\.([\w-]+)", timeout)
    default = tf.variables.get(variable[1], {}).get("default") if variable else timeout
    if default is None or float(default) != client_timeout_s:
        return [f"function timeout ({default}) != InvocationPolicy.timeout ({client_timeout_s:g})"]
    return []


def check_function_source(tf: Terraform) -> Problems:
    """Source zipped from cloud_function/, named by content hash, entry point main()."""
    _, function = the_function(tf)
    problems = []
    archives = tf.data.get("archive_file", {})
    source_dirs = {str(body.get("source_dir", "")) for body in archives.values()}
    if "${path.module}/../cloud_function" not in source_dirs:
        problems.append("archive_file must zip ${path.module}/../cloud_function")
    objects = tf.resources.get("google_storage_bucket_object", {}).values()
    if not any(
        re.search(r"data\.archive_file\.[\w-]+\.output_(sha256|md5|sha)\b", str(o.get("name")))
        for o in objects
    ):
        problems.append("the source object's name must contain the archive's content hash")
    entry_point = block(function, "build_config").get("entry_point")
    if not re.search(rf"^def {entry_point}\(", (FUNCTION_DIR / "main.py").read_text(), re.M):
        problems.append(f"entry point {entry_point} is not a function in cloud_function/main.py")
    return problems


def enabled_apis(tf: Terraform) -> set[str]:
    return {
        api
        for text in strings(tf.locals.get("required_apis"))
        for api in re.findall(r"[a-z0-9.-]+\.googleapis\.com", text)
    }


def check_required_apis(tf: Terraform) -> Problems:
    """Terraform enables every API its resources (and the deployment at run time) call."""
    enabled = enabled_apis(tf)
    problems = [
        f"resource type {type_}: unknown APIs (add it to RESOURCE_APIS in infra/tests)"
        for type_ in sorted(set(tf.resources) - set(RESOURCE_APIS))
    ]
    needed: dict[str, set[str]] = {api: set() for api in RUNTIME_APIS}
    for type_ in tf.resources:
        for api in RESOURCE_APIS.get(type_, frozenset()):
            needed.setdefault(api, set()).add(type_)
    problems += [
        f"API {api} is not enabled (needed by {', '.join(sorted(users)) or 'the deployment'})"
        for api, users in sorted(needed.items())
        if api not in enabled
    ]
    return problems


def _texts_with_locals(tf: Terraform, value: Any) -> list[str]:
    """Every string in ``value`` and in the locals it refers to, transitively."""
    texts: list[str] = []
    seen: set[str] = set()
    todo = [value]
    while todo:
        found = list(strings(todo.pop()))
        texts += found
        for name in {m[1] for text in found for m in _LOCAL_REF.finditer(text)} - seen:
            seen.add(name)
            todo.append(tf.locals.get(name))
    return texts


def dependencies(tf: Terraform) -> dict[tuple[str, str], set[tuple[str, str]]]:
    """Resource -> the resources it refers to (directly or through locals) or depends on."""
    declared = {(type_, name) for type_, name, _ in tf.all_resources()}
    return {
        (type_, name): {
            (m[1], m[2])
            for text in _texts_with_locals(tf, body)
            for m in _RESOURCE_REF.finditer(text)
        }
        & declared
        for type_, name, body in tf.all_resources()
    }


def _reaches(
    graph: Mapping[tuple[str, str], set[tuple[str, str]]],
    start: tuple[str, str],
    goal: tuple[str, str],
) -> bool:
    seen: set[tuple[str, str]] = set()
    todo = [start]
    while todo:
        node = todo.pop()
        if node == goal:
            return True
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return False


def check_apis_enabled_first(tf: Terraform) -> Problems:
    """Every resource that calls an API is created after the APIs are enabled."""
    graph = dependencies(tf)
    return [
        f"{type_}.{name} may be created before {'.'.join(API_ENABLER)} enables its API"
        for type_, name in sorted(graph)
        if RESOURCE_APIS.get(type_) and not _reaches(graph, (type_, name), API_ENABLER)
    ]


def _duration_s(text: str) -> float:
    """Seconds of a Go duration such as ``60s``, ``1m30s`` (0 when unreadable)."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)([hms])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        return 0.0
    return sum(float(number) * units[unit] for number, unit in parts)


def check_build_grants_propagate(tf: Terraform) -> Problems:
    """The function is created only after every grant to its build account has propagated."""
    name, function = the_function(tf)
    build = resource_refs(
        block(function, "build_config").get("service_account"), "google_service_account"
    )
    grants = {
        (type_, grant)
        for type_, grant, body in tf.all_resources()
        if type_.endswith("_iam_member") and _grantee(tf, body) in build
    }
    waits = {
        wait: body
        for wait, body in tf.resources.get("time_sleep", {}).items()
        if ("time_sleep", wait) in dependencies(tf)[("google_cloudfunctions2_function", name)]
    }
    if not waits:
        return [f"function {name} must depend on a time_sleep after the build account's grants"]
    problems = []
    for wait, body in waits.items():
        waited = {
            (m[1], m[2])
            for text in strings(body.get("depends_on"))
            for m in _RESOURCE_REF.finditer(text)
        }
        problems += [
            f"time_sleep.{wait} does not wait for {type_}.{grant}"
            for type_, grant in sorted(grants - waited)
        ]
        if _duration_s(str(body.get("create_duration", ""))) < MIN_PROPAGATION_WAIT_S:
            problems.append(
                f"time_sleep.{wait}: create_duration must be at least {MIN_PROPAGATION_WAIT_S}s"
            )
    return problems


def _mib(quantity: str) -> float:
    """``"4Gi"`` -> 4096; ``"512Mi"`` -> 512 (0 when unreadable)."""
    match = re.fullmatch(r"(\d+)(Mi|Gi)", quantity)
    return float(match[1]) * (1024 if match[2] == "Gi" else 1) if match else 0.0


def check_function_sizing(tf: Terraform) -> Problems:
    """The default instance holds its default concurrency of peak-memory requests, and a
    precondition enforces the same rule on every plan."""
    _, function = the_function(tf)
    config = block(function, "service_config")
    defaults = {
        name: tf.variables.get(expression(config.get(key)).removeprefix("var."), {}).get("default")
        for name, key in (
            ("memory", "available_memory"),
            ("concurrency", "max_instance_request_concurrency"),
        )
    }
    peak = request_peak_memory_mib(tf)
    memory, concurrency = _mib(str(defaults["memory"])), float(defaults["concurrency"] or 0)
    problems = []
    if not peak or memory < concurrency * peak:
        problems.append(
            f"default function memory ({defaults['memory']}) must hold {concurrency:g} "
            f"requests of request_peak_memory_mib ({peak:g} MiB)"
        )
    conditions = [
        str(precondition.get("condition", ""))
        for lifecycle in function.get("lifecycle", [])
        for precondition in lifecycle.get("precondition", [])
    ]
    if not any("local.request_peak_memory_mib" in condition for condition in conditions):
        problems.append("a lifecycle precondition must check memory against the sizing rule")
    return problems


def request_peak_memory_mib(tf: Terraform) -> float:
    """The sizing rule's memory peak of one request (0 when missing)."""
    return float(tf.locals.get("request_peak_memory_mib") or 0)


def check_request_peak_measured(tf: Terraform, measured_mib: float) -> Problems:
    """The sizing rule's per-request peak is no less than what one request was measured using."""
    declared = request_peak_memory_mib(tf)
    if measured_mib > declared:
        return [
            f"one request peaked at {measured_mib:.0f} MiB, above "
            f"request_peak_memory_mib ({declared:g} MiB)"
        ]
    return []


def check_checkov_skips_have_reasons(tf: Terraform) -> Problems:
    """Every checkov skip sits inside a resource and states why."""
    problems = []
    for name, text in tf.texts.items():
        in_resource = False
        for number, line in enumerate(text.splitlines(), start=1):
            if line.startswith("resource "):
                in_resource = True
            elif line == "}":
                in_resource = False
            match = re.search(r"#\s*checkov:skip=([^:\s]+)(?::\s*(.*))?$", line)
            if not match:
                continue
            where = f"{name}:{number}: checkov skip {match[1]}"
            if not in_resource:
                problems.append(f"{where} must be inside the resource it applies to")
            if not match[1].startswith("CKV_") or len(match[2] or "") < 15:
                problems.append(f"{where} needs a reason")
    return problems
