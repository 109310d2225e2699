# The people function: a 2nd-gen HTTP Cloud Function built from ../cloud_function.

locals {
  # Every environment variable the function reads (cloud_function/people_lake/settings.py,
  # FUNCTION_ENV_VARS) and nothing else; infra/tests fails on drift in either direction.
  function_env = {
    DATA_LAKE_URI           = local.data_lake_uri
    ALLOWED_DATA_LAKE_ROOTS = local.data_lake_uri
    # The only bucket the function writes Pipes messages to: the one Dagster reads.
    PIPES_BUCKET = google_storage_bucket.pipes.name
    # functions-framework's gunicorn runs this many request threads; equal to the per-instance
    # concurrency so every request Cloud Run routes to an instance gets a thread.
    THREADS              = tostring(var.function_concurrency)
    MAX_ROWS_PER_REQUEST = tostring(var.function_max_rows_per_request)
    # Project of the trace names in the function's structured log lines (Cloud Logging groups
    # a call's lines by them).
    GOOGLE_CLOUD_PROJECT = var.project_id
    # The platform's timeout (service_config.timeout_seconds below): a request stops at its
    # next check once this minus a margin has passed, instead of committing after a 504.
    FUNCTION_TIMEOUT_S = tostring(var.function_timeout_seconds)
  }

  # Sizing rule: one request peaks at about this much memory whatever its num_rows (rows are
  # generated and written in batches; `just bench`, peak memory at 5,000,000 rows), and an
  # instance serves function_concurrency requests at once.
  request_peak_memory_mib = 700
  function_memory_mib     = tonumber(regex("^[0-9]+", var.function_memory)) * (endswith(var.function_memory, "Gi") ? 1024 : 1)

  # Kept out of the upload: tests and caches; the root pyproject.toml so the buildpack installs
  # requirements.txt (exported from uv.lock) rather than the workspace project. gcf_pipes/
  # keeps its own pyproject.toml: requirements.txt names that folder and pip builds it
  # (infra/tests/test_function_source.py installs the zip this makes and imports main).
  source_excludes = [
    "tests/**",
    "**/__pycache__/**",
    "**/*.pyc",
    "**/.pytest_cache/**",
    "**/.mypy_cache/**",
    "**/.ruff_cache/**",
    ".venv/**",
    "pyproject.toml",
  ]
}

data "archive_file" "function_source" {
  type        = "zip"
  source_dir  = "${path.module}/../cloud_function"
  output_path = "${path.module}/.build/function-source.zip"
  excludes    = local.source_excludes
  # Same modes on every machine, so the content hash (and the object name) only changes with code.
  output_file_mode = "0644"
}

resource "google_storage_bucket_object" "function_source" {
  # Named by content hash: a code change is a new object, which redeploys the function.
  name         = "${var.function_name}/source-${data.archive_file.function_source.output_sha256}.zip"
  bucket       = google_storage_bucket.function_source.name
  source       = data.archive_file.function_source.output_path
  content_type = "application/zip"
}

resource "google_artifact_registry_repository" "function_images" {
  #checkov:skip=CKV_GCP_84: Google-managed encryption is adequate for rebuildable function images; add kms_key_name for CMEK.
  repository_id          = "${var.name_prefix}-functions"
  location               = var.region
  format                 = "DOCKER"
  description            = "Images built from the ${var.function_name} function source."
  cleanup_policy_dry_run = false

  cleanup_policies {
    id     = "keep-recent"
    action = "KEEP"
    most_recent_versions {
      keep_count = 5
    }
  }

  cleanup_policies {
    id     = "delete-old"
    action = "DELETE"
    condition {
      tag_state  = "ANY"
      older_than = "2592000s" # 30 days; the keep-recent policy wins for the latest images
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_cloudfunctions2_function" "people" {
  #checkov:skip=CKV_GCP_124: The orchestrator runs outside GCP by default; IAM (run.invoker, no public principal) keeps the function private. Set ingress_settings to restrict further.
  name        = var.function_name
  location    = var.region
  description = "Writes fake people to a Delta table; orchestrated by Dagster through Pipes."

  build_config {
    runtime           = var.python_runtime
    entry_point       = "main"
    service_account   = google_service_account.build.id
    docker_repository = google_artifact_registry_repository.function_images.id

    source {
      storage_source {
        bucket = google_storage_bucket.function_source.name
        object = google_storage_bucket_object.function_source.name
      }
    }
  }

  service_config {
    service_account_email = google_service_account.runtime.email
    environment_variables = local.function_env

    available_memory                 = var.function_memory
    available_cpu                    = var.function_cpu
    timeout_seconds                  = var.function_timeout_seconds
    max_instance_request_concurrency = var.function_concurrency
    min_instance_count               = var.function_min_instances
    max_instance_count               = var.function_max_instances

    # ALLOW_ALL by default: the orchestrator usually runs outside Google's network. Access is
    # still private: only principals with roles/run.invoker (iam.tf) get past the ID-token check.
    ingress_settings               = var.ingress_settings
    all_traffic_on_latest_revision = true
  }

  lifecycle {
    precondition {
      condition     = var.function_concurrency == 1 || tonumber(var.function_cpu) >= 1
      error_message = "function_concurrency > 1 needs function_cpu >= 1 (a Cloud Run requirement)."
    }
    precondition {
      condition     = local.function_memory_mib >= var.function_concurrency * local.request_peak_memory_mib
      error_message = "function_memory must hold function_concurrency requests of about 700 MiB each: raise function_memory or lower function_concurrency."
    }
    precondition {
      condition     = local.function_memory_mib <= 4096 || tonumber(var.function_cpu) >= 2
      error_message = "function_memory above 4Gi needs function_cpu >= 2 (a Cloud Run requirement)."
    }
    precondition {
      condition     = var.function_min_instances <= var.function_max_instances
      error_message = "function_min_instances must not exceed function_max_instances."
    }
  }

  # After the build account's grants have propagated (iam.tf), not just been made.
  depends_on = [
    google_project_service.required,
    time_sleep.build_grants_propagation,
  ]
}
