# Consumed by `just cloud-env` (infra/scripts/cloud_env.py), which writes the orchestrator's .env.

output "function_url" {
  # The run.app URL: the client derives the ID-token audience from it (scheme + host).
  description = "HTTPS URL of the function (CLOUD_FUNCTION_URL)."
  value       = google_cloudfunctions2_function.people.service_config[0].uri
}

output "project_id" {
  description = "Project the function runs in, for Cloud Logging links to a call's log lines (CLOUD_FUNCTION_PROJECT)."
  value       = var.project_id
}

output "region" {
  description = "Region of the function and its buckets (for gcloud commands: --region)."
  value       = var.region
}

output "function_name" {
  description = "Name of the Cloud Function."
  value       = google_cloudfunctions2_function.people.name
}

output "pipes_bucket_name" {
  description = "Bucket the function writes Pipes messages to and Dagster reads them from (PIPES_BUCKET)."
  value       = google_storage_bucket.pipes.name
}

output "data_lake_bucket_name" {
  description = "Bucket holding the Delta tables."
  value       = google_storage_bucket.data_lake.name
}

output "data_lake_uri" {
  description = "Data-lake root Dagster sends as dl_bucket (DATA_LAKE_URI)."
  value       = local.data_lake_uri
}

output "function_source_bucket_name" {
  description = "Bucket holding the zipped function source."
  value       = google_storage_bucket.function_source.name
}

output "runtime_service_account_email" {
  description = "Identity the function runs as."
  value       = google_service_account.runtime.email
}

output "orchestrator_service_account_email" {
  description = "Identity Dagster invokes the function as (GOOGLE_IMPERSONATE_SERVICE_ACCOUNT)."
  value       = google_service_account.orchestrator.email
}

output "build_service_account_email" {
  description = "Identity Cloud Build builds the function as."
  value       = google_service_account.build.email
}
