# Identities. Three dedicated service accounts, each with only what it needs, granted on the
# individual bucket or service (never project-wide basic roles). No keys are created here.

resource "google_service_account" "runtime" {
  account_id   = "${var.name_prefix}-runtime"
  display_name = "People function runtime"
  description  = "Runs ${var.function_name}: writes Pipes messages and the data lake."
  depends_on   = [google_project_service.required]
}

resource "google_service_account" "orchestrator" {
  account_id   = "${var.name_prefix}-orchestrator"
  display_name = "Dagster orchestrator"
  description  = "Invokes ${var.function_name} and reads its Pipes messages."
  depends_on   = [google_project_service.required]
}

resource "google_service_account" "build" {
  account_id   = "${var.name_prefix}-build"
  display_name = "People function build"
  description  = "Cloud Build identity that builds ${var.function_name} (instead of the default compute account)."
  depends_on   = [google_project_service.required]
}

# --- runtime: write Pipes messages, read cancellation markers, read and write the data lake ---

resource "google_storage_bucket_iam_member" "runtime_pipes_writer" {
  bucket = google_storage_bucket.pipes.name
  # Create only: chunks are written once with if_generation_match=0, never read back.
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.runtime.email}"
}

resource "google_storage_bucket_iam_member" "runtime_cancel_reader" {
  bucket = google_storage_bucket.pipes.name
  # The function polls `<key_prefix>/cancel` to learn that Dagster terminated the run; it may
  # read nothing else in the Pipes bucket (not even list it).
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.runtime.email}"

  condition {
    title       = "cancel-markers-only"
    description = "Only objects named */cancel: the orchestrator's cancellation markers."
    expression  = local.cancel_marker_condition
  }
}

resource "google_storage_bucket_iam_member" "runtime_data_lake_user" {
  bucket = google_storage_bucket.data_lake.name
  # Delta writes list, read and create objects (data files, commits, checkpoints); objectUser
  # covers that without objectAdmin's control over object ACLs and the bucket's IAM.
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.runtime.email}"
}

# --- orchestrator: invoke the function, read Pipes messages, request cancellation ----------

resource "google_cloud_run_service_iam_member" "orchestrator_invoker" {
  project  = google_cloudfunctions2_function.people.project
  location = google_cloudfunctions2_function.people.location
  # A 2nd-gen function is invoked through its Cloud Run service, so that is where the grant goes.
  service = google_cloudfunctions2_function.people.service_config[0].service
  role    = "roles/run.invoker"
  member  = "serviceAccount:${google_service_account.orchestrator.email}"
}

resource "google_storage_bucket_iam_member" "orchestrator_pipes_reader" {
  bucket = google_storage_bucket.pipes.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.orchestrator.email}"
}

resource "google_storage_bucket_iam_member" "orchestrator_cancel_writer" {
  bucket = google_storage_bucket.pipes.name
  # Terminating a run writes the marker `<key_prefix>/cancel` (once, if_generation_match=0);
  # the orchestrator may create no other object, so it cannot forge Pipes messages.
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.orchestrator.email}"

  condition {
    title       = "cancel-markers-only"
    description = "Only objects named */cancel: cancellation markers for running invocations."
    expression  = local.cancel_marker_condition
  }
}

resource "google_service_account_iam_member" "orchestrator_impersonators" {
  for_each = toset(var.orchestrator_impersonators)

  service_account_id = google_service_account.orchestrator.name
  # Lets these principals act as the orchestrator (GOOGLE_IMPERSONATE_SERVICE_ACCOUNT): its ID
  # tokens to invoke the function and its access tokens to read the Pipes bucket.
  role   = "roles/iam.serviceAccountTokenCreator"
  member = each.value
}

# --- build: what Google documents for a user-specified Cloud Build service account ----------

resource "google_project_iam_member" "build_run_builder" {
  project = var.project_id
  role    = "roles/run.builder"
  member  = "serviceAccount:${google_service_account.build.email}"
}

resource "google_artifact_registry_repository_iam_member" "build_writer" {
  project    = google_artifact_registry_repository.function_images.project
  location   = google_artifact_registry_repository.function_images.location
  repository = google_artifact_registry_repository.function_images.name
  role       = "roles/artifactregistry.writer"
  member     = "serviceAccount:${google_service_account.build.email}"
}

# Cloud Build checks the build account's roles when the build starts; a grant made seconds
# earlier may not have propagated yet, so a first apply would fail the build. The google
# provider's own cloudfunctions2 builder example waits 60 s the same way.
resource "time_sleep" "build_grants_propagation" {
  create_duration = "60s"
  # A re-made grant waits again before the function is next updated.
  triggers = {
    run_builder       = google_project_iam_member.build_run_builder.id
    artifact_registry = google_artifact_registry_repository_iam_member.build_writer.id
  }

  depends_on = [
    google_project_iam_member.build_run_builder,
    google_artifact_registry_repository_iam_member.build_writer,
  ]
}
