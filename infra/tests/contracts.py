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

from infra.scripts.cloud_env import ENV_FROM_OUTPUTS

INFRA_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = INFRA_DIR.parent
FUNCTION_DIR = REPO_ROOT / "cloud_function"
FUNCTION_SETTINGS = FUNCTION_DIR / "people_lake" / "settings.py"
ORCHESTRATOR_SETTINGS = REPO_ROOT / "dagster" / "src" / "gcf_demo" / "settings.py"
INVOCATION = REPO_ROOT / "dagster" / "src" / "dagster_pipes_gcf" / "invocation.py"

PUBLIC_PRINCIPALS = ("allUsers", "allAuthenticatedUsers")
BASIC_ROLES = ("roles/owner", "roles/editor", "roles/viewer")
DEFAULT_COMPUTE_SA = "-compute@developer.gserviceaccount.com"
REQUIRED_APIS = frozenset(
    {
        "cloudfunctions.googleapis.com",
        "run.googleapis.com",
        "cloudbuild.googleapis.com",
        "artifactregistry.googleapis.com",
        "storage.googleapis.com",
        "iam.googleapis.com",
        "iamcredentials.googleapis.com",
    }
)

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


_RESOURCE_REF = re.compile(r"(?<![\w.])((?:google|archive)_[a-z0-9_]+)\.([A-Za-z_][\w-]*)")
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


def grants_of(tf: Terraform, account: str) -> set[tuple[str, str, str]]:
    """``(iam resource type, target, role)`` granted to service account ``account``."""
    grants = set()
    for type_, _, body in tf.all_resources():
        if type_.endswith("_iam_member") and _grantee(tf, body) == account:
            target = next(
                (
                    str(body[key])
                    for key in ("bucket", "service", "repository", "project")
                    if key in body
                ),
                "",
            )
            grants.add((type_, expression(target), str(body.get("role"))))
    return grants


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
    for name in ("google", "archive"):
        spec = providers.get(name, {})
        if spec.get("source") != f"hashicorp/{name}" or not re.match(
            r"^~>\s*\d+\.\d+", str(spec.get("version", ""))
        ):
            problems.append(f"provider {name} must be hashicorp/{name} pinned with ~> MAJOR.MINOR")
    return problems


def check_function_env(tf: Terraform, expected: Sequence[str]) -> Problems:
    """The function gets exactly the variables it reads; THREADS equals its concurrency."""
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
) -> Problems:
    """`just cloud-env` writes every orchestrator setting, from outputs that exist and fit."""
    problems = [
        f"orchestrator reads {name} but cloud-env does not write it"
        for name in sorted(orchestrator_vars - set(env_from_outputs))
    ]
    problems += [
        f"cloud-env writes {name} but the orchestrator does not read it"
        for name in sorted(set(env_from_outputs) - orchestrator_vars)
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
    """Runtime: write Pipes, admin the lake. Orchestrator: invoke the function, read Pipes."""
    function_name, _ = the_function(tf)
    pipes = f"google_storage_bucket.{output_bucket(tf, env_from_outputs['PIPES_BUCKET'])}.name"
    lake = expression(
        resolve_local(tf, tf.outputs.get(env_from_outputs["DATA_LAKE_URI"], {}).get("value"))
    )
    lake = re.sub(r"^gs://\$\{(.*)\}$", r"\1", lake)
    service = f"google_cloudfunctions2_function.{function_name}.service_config[0].service"
    expected = {
        "runtime": (
            runtime_account(tf),
            {
                ("google_storage_bucket_iam_member", pipes, "roles/storage.objectCreator"),
                ("google_storage_bucket_iam_member", lake, "roles/storage.objectAdmin"),
            },
        ),
        "orchestrator": (
            orchestrator_account(tf, env_from_outputs),
            {
                ("google_cloud_run_service_iam_member", service, "roles/run.invoker"),
                ("google_storage_bucket_iam_member", pipes, "roles/storage.objectViewer"),
            },
        ),
    }
    problems = []
    for who, (account, want) in expected.items():
        if account is None:
            problems.append(f"cannot tell which service account is the {who}")
            continue
        have = grants_of(tf, account)
        problems += [
            f"{who} ({account}) lacks {role} on {target}" for _, target, role in sorted(want - have)
        ]
        problems += [
            f"{who} ({account}) has unexpected {role} on {target}"
            for _, target, role in sorted(have - want)
        ]
    return problems


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


def check_required_apis(tf: Terraform) -> Problems:
    """Terraform enables every API the deployment uses."""
    enabled = {
        api
        for text in strings(tf.locals.get("required_apis"))
        for api in re.findall(r"[a-z0-9.-]+\.googleapis\.com", text)
    }
    return [f"API {api} is not enabled" for api in sorted(REQUIRED_APIS - enabled)]


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
