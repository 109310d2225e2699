variable "project_id" {
  description = "ID of the GCP project to deploy into (billing enabled)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a GCP project ID: 6-30 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of the function, its buckets and its image repository."
  type        = string
  default     = "europe-west4"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a GCP region such as europe-west4 or us-central1."
  }
}

variable "name_prefix" {
  description = "Prefix of the service account IDs and the image repository (4-17 characters)."
  type        = string
  default     = "dagster-pipes"

  validation {
    # Longest derived ID is "<prefix>-orchestrator"; service account IDs allow 30 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{2,15}[a-z0-9]$", var.name_prefix))
    error_message = "name_prefix must be 4-17 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "bucket_prefix" {
  description = "Prefix of the three bucket names (globally unique). Defaults to project_id."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_prefix == null || can(regex("^[a-z0-9][a-z0-9-]{1,38}[a-z0-9]$", var.bucket_prefix))
    error_message = "bucket_prefix must be 3-40 lowercase letters, digits or hyphens."
  }
}

variable "function_name" {
  description = "Name of the Cloud Function (and of the Cloud Run service behind it)."
  type        = string
  default     = "dagster-pipes-gcp"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,47}[a-z0-9]$", var.function_name))
    error_message = "function_name must be 2-49 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "python_runtime" {
  description = "Cloud Functions Python runtime; must be a version cloud_function/pyproject.toml supports."
  type        = string
  default     = "python312"

  validation {
    condition     = contains(["python311", "python312", "python313"], var.python_runtime)
    error_message = "python_runtime must be python311, python312 or python313 (the function requires Python >=3.11,<3.14)."
  }
}

variable "function_memory" {
  description = "Memory of one function instance, e.g. 4Gi: at least function_concurrency x the peak of one request (about 700 MiB at any num_rows, the writes are batched)."
  type        = string
  default     = "4Gi"

  validation {
    condition     = can(regex("^[1-9][0-9]*(Mi|Gi)$", var.function_memory))
    error_message = "function_memory must be a quantity in Mi or Gi, e.g. 512Mi or 2Gi."
  }
}

variable "function_cpu" {
  description = "vCPUs of one function instance, e.g. \"1\" or \"2\". Concurrency above 1 needs at least 1."
  type        = string
  default     = "1"

  validation {
    condition     = try(tonumber(var.function_cpu) > 0 && tonumber(var.function_cpu) <= 8, false)
    error_message = "function_cpu must be a number of vCPUs greater than 0 and at most 8, as a string."
  }
}

variable "function_max_rows_per_request" {
  description = "Most rows one request may write (num_rows x days of a range); the function refuses more with HTTP 400. Sets MAX_ROWS_PER_REQUEST."
  type        = number
  default     = 5000000

  validation {
    condition     = var.function_max_rows_per_request >= 1 && var.function_max_rows_per_request <= 5000000 && floor(var.function_max_rows_per_request) == var.function_max_rows_per_request
    error_message = "function_max_rows_per_request must be a whole number between 1 and 5,000,000."
  }
}

variable "function_timeout_seconds" {
  description = "Request timeout of the function. Keep equal to the Dagster client's InvocationPolicy.timeout (540 s)."
  type        = number
  default     = 540

  validation {
    condition     = var.function_timeout_seconds >= 1 && var.function_timeout_seconds <= 3600 && floor(var.function_timeout_seconds) == var.function_timeout_seconds
    error_message = "function_timeout_seconds must be a whole number between 1 and 3600 (HTTP functions)."
  }
}

variable "function_concurrency" {
  description = "Requests one instance serves at once; also sets THREADS (the function's request threads)."
  type        = number
  default     = 4

  validation {
    condition     = var.function_concurrency >= 1 && var.function_concurrency <= 1000 && floor(var.function_concurrency) == var.function_concurrency
    error_message = "function_concurrency must be a whole number between 1 and 1000."
  }
}

variable "function_min_instances" {
  description = "Instances kept warm (0 scales to zero; each warm instance is billed)."
  type        = number
  default     = 0

  validation {
    condition     = var.function_min_instances >= 0 && floor(var.function_min_instances) == var.function_min_instances
    error_message = "function_min_instances must be a whole number >= 0."
  }
}

variable "function_max_instances" {
  description = "Upper bound on instances: caps cost and the parallel writers to the data lake."
  type        = number
  default     = 5

  validation {
    condition     = var.function_max_instances >= 1 && var.function_max_instances <= 1000 && floor(var.function_max_instances) == var.function_max_instances
    error_message = "function_max_instances must be a whole number between 1 and 1000."
  }
}

variable "ingress_settings" {
  description = "Who can reach the function's URL. ALLOW_ALL lets an orchestrator outside GCP (a laptop, Dagster+) call it; IAM still requires an ID token of a principal with roles/run.invoker."
  type        = string
  default     = "ALLOW_ALL"

  validation {
    condition     = contains(["ALLOW_ALL", "ALLOW_INTERNAL_ONLY", "ALLOW_INTERNAL_AND_GCLB"], var.ingress_settings)
    error_message = "ingress_settings must be ALLOW_ALL, ALLOW_INTERNAL_ONLY or ALLOW_INTERNAL_AND_GCLB."
  }
}

variable "pipes_message_retention_days" {
  description = "Days before Pipes message chunks are deleted from the Pipes bucket."
  type        = number
  default     = 7

  validation {
    condition     = var.pipes_message_retention_days >= 1 && var.pipes_message_retention_days <= 365 && floor(var.pipes_message_retention_days) == var.pipes_message_retention_days
    error_message = "pipes_message_retention_days must be a whole number between 1 and 365."
  }
}

variable "data_lake_noncurrent_version_retention_days" {
  description = "Days an overwritten or deleted data-lake object stays recoverable (bucket versioning)."
  type        = number
  default     = 30

  validation {
    condition     = var.data_lake_noncurrent_version_retention_days >= 1 && floor(var.data_lake_noncurrent_version_retention_days) == var.data_lake_noncurrent_version_retention_days
    error_message = "data_lake_noncurrent_version_retention_days must be a whole number >= 1."
  }
}

variable "data_lake_force_destroy" {
  description = "Let `terraform destroy` delete the data-lake bucket with its data. Keep false except to tear down."
  type        = bool
  default     = false
}

variable "orchestrator_impersonators" {
  description = "Principals (user:, group: or serviceAccount:) granted roles/iam.serviceAccountTokenCreator on the orchestrator service account, so Dagster can run as it from their credentials."
  type        = list(string)
  default     = []

  validation {
    condition = alltrue([
      for member in var.orchestrator_impersonators :
      can(regex("^(user|group|serviceAccount):[^@\\s]+@[^@\\s]+$", member))
    ])
    error_message = "Each orchestrator_impersonators entry must be user:EMAIL, group:EMAIL or serviceAccount:EMAIL (no public principals)."
  }
}

variable "labels" {
  description = "Extra labels on every resource that supports them."
  type        = map(string)
  default     = {}
}

variable "job_name" {
  description = "Name of the Cloud Run job that runs people_lake.task."
  type        = string
  default     = "people-job"
}

variable "job_image" {
  description = "Container image of the job, built from ../cloud_function with the Python buildpack (see job.tf)."
  type        = string
}

variable "job_max_retries" {
  description = "Retries of a failed task attempt (each task commits its share once, so retries are safe)."
  type        = number
  default     = 1
}

variable "job_task_timeout_seconds" {
  description = "Timeout of one task attempt, in seconds."
  type        = number
  default     = 3600
}

variable "job_memory" {
  description = "Memory of one task (a task peaks at about 700 MiB whatever its rows)."
  type        = string
  default     = "1Gi"
}
