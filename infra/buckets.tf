# Three buckets, all private: uniform bucket-level access, public access prevention enforced,
# and IAM granted per bucket to the service accounts that need it (iam.tf).

resource "google_storage_bucket" "pipes" {
  #checkov:skip=CKV_GCP_62: Usage logs are legacy; Cloud Audit Logs record access to these transient messages.
  #checkov:skip=CKV_GCP_78: Pipes chunks are transient and written once (if_generation_match=0); versions would only add cost.
  name                        = local.pipes_bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # Holds nothing but Pipes messages, which the lifecycle rule deletes anyway.
  force_destroy = true

  lifecycle_rule {
    condition {
      age = var.pipes_message_retention_days
    }
    action {
      type = "Delete"
    }
  }

  soft_delete_policy {
    retention_duration_seconds = 0
  }

  depends_on = [google_project_service.required]
}

resource "google_storage_bucket" "data_lake" {
  #checkov:skip=CKV_GCP_62: Usage logs are legacy; use Cloud Audit Logs (Data Access) for object-level auditing.
  name                        = local.data_lake_bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.data_lake_force_destroy

  # Delta tables are the data worth protecting: overwritten or deleted objects stay recoverable.
  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.data_lake_noncurrent_version_retention_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.required]
}

resource "google_storage_bucket" "function_source" {
  #checkov:skip=CKV_GCP_62: Usage logs are legacy; Cloud Audit Logs record who changed the source.
  #checkov:skip=CKV_GCP_78: Objects are content-addressed zips rebuilt from git, so versions protect nothing.
  name                        = local.source_bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true

  depends_on = [google_project_service.required]
}
