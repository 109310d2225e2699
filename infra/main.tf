provider "google" {
  project        = var.project_id
  region         = var.region
  default_labels = local.labels
}

locals {
  labels = merge({ app = "dagster-pipes-gcf", managed-by = "terraform" }, var.labels)

  bucket_prefix         = coalesce(var.bucket_prefix, var.project_id)
  pipes_bucket_name     = "${local.bucket_prefix}-dagster-pipes-logs"
  data_lake_bucket_name = "${local.bucket_prefix}-data-lake"
  source_bucket_name    = "${local.bucket_prefix}-function-source"

  # What the orchestrator sends as `dl_bucket` and what the function accepts as a lake root.
  data_lake_uri = "gs://${google_storage_bucket.data_lake.name}"

  required_apis = toset([
    "artifactregistry.googleapis.com", # function images
    "cloudbuild.googleapis.com",       # builds the function from source
    "cloudfunctions.googleapis.com",
    "iam.googleapis.com",            # service accounts
    "iamcredentials.googleapis.com", # ID tokens when impersonating the orchestrator
    "logging.googleapis.com",
    "run.googleapis.com", # 2nd-gen functions run as Cloud Run services
    "storage.googleapis.com",
  ])
}

resource "google_project_service" "required" {
  for_each = local.required_apis

  project = var.project_id
  service = each.value
  # Other workloads in the project may use these APIs too: never disable them on destroy.
  disable_on_destroy = false
}
