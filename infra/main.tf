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

  # IAM condition of the cancellation grants (iam.tf): objects named `<key_prefix>/cancel` in
  # the Pipes bucket, and nothing else.
  cancel_marker_condition = "resource.name.startsWith(\"projects/_/buckets/${google_storage_bucket.pipes.name}/objects/\") && resource.name.endsWith(\"/cancel\")"

  # Every API the resources here call, so a first apply works on an empty project
  # (infra/tests checks each resource type against this list).
  required_apis = toset([
    "artifactregistry.googleapis.com",     # function images
    "cloudbuild.googleapis.com",           # builds the function from source
    "cloudfunctions.googleapis.com",       # the function
    "cloudresourcemanager.googleapis.com", # project-level IAM (the build account's role)
    "iam.googleapis.com",                  # service accounts and who may impersonate them
    "iamcredentials.googleapis.com",       # ID tokens when impersonating the orchestrator
    "logging.googleapis.com",              # build and function logs
    "run.googleapis.com",                  # 2nd-gen functions run as Cloud Run services
    "storage.googleapis.com",              # buckets, the source upload, bucket IAM
  ])
}

resource "google_project_service" "required" {
  for_each = local.required_apis

  project = var.project_id
  service = each.value
  # Other workloads in the project may use these APIs too: never disable them on destroy.
  disable_on_destroy = false
}
