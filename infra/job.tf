# The people job: Cloud Run Jobs runs `python -m people_lake.task` from the function's source,
# fanned out over tasks (PipesCloudRunJobClient, dagster_pipes_gcf/cloud_run_job.py).
#
# The image is built from ../cloud_function with Google's Python buildpack and pushed to the
# function images repository, e.g.:
#   gcloud builds submit cloud_function --pack image=<region>-docker.pkg.dev/<project>/<prefix>-functions/people-job
# then set job_image to that image (by digest, so a new build is a new revision).

locals {
  # What people_lake.task reads: the function's settings, without the HTTP server's THREADS.
  job_env = { for name, value in local.function_env : name => value if name != "THREADS" }
}

resource "google_service_account" "job" {
  account_id   = "${var.name_prefix}-job"
  display_name = "People job runtime"
  description  = "Runs the ${var.job_name} tasks: writes Pipes messages and the data lake."
  depends_on   = [google_project_service.required]
}

resource "google_cloud_run_v2_job" "people" {
  name                = var.job_name
  location            = var.region
  deletion_protection = false

  template {
    # The client overrides task_count per execution; one task when started by hand.
    task_count = 1

    template {
      service_account = google_service_account.job.email
      max_retries     = var.job_max_retries
      timeout         = "${var.job_task_timeout_seconds}s"

      containers {
        image   = var.job_image
        command = ["python", "-m", "people_lake.task"]

        dynamic "env" {
          for_each = local.job_env
          content {
            name  = env.key
            value = env.value
          }
        }

        resources {
          limits = {
            cpu    = "1"
            memory = var.job_memory
          }
        }
      }
    }
  }

  depends_on = [google_project_service.required]
}

# --- the job's runtime: create Pipes chunks, use the lake (no marker: SIGTERM cancels a task)

resource "google_storage_bucket_iam_member" "job_pipes_writer" {
  bucket = google_storage_bucket.pipes.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.job.email}"
}

resource "google_storage_bucket_iam_member" "job_data_lake_user" {
  bucket = google_storage_bucket.data_lake.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.job.email}"
}

# --- orchestrator: run this job with overrides, watch and cancel its executions -------------

resource "google_cloud_run_v2_job_iam_member" "orchestrator_executor" {
  project  = google_cloud_run_v2_job.people.project
  location = google_cloud_run_v2_job.people.location
  name     = google_cloud_run_v2_job.people.name
  # run.jobs.run, run.jobs.runWithOverrides (env, args, task_count, timeout) and
  # run.executions.cancel, on this job only. It cannot read an execution or its tasks: the
  # watcher role below can.
  role   = "roles/run.jobsExecutorWithOverrides"
  member = "serviceAccount:${google_service_account.orchestrator.email}"
}

# What the client reads while it waits: the execution (run.executions.get) and, once it has
# ended, its tasks (run.tasks.list). No predefined role holds just these (roles/run.viewer adds
# every Cloud Run resource and IAM policy), hence a custom role, granted on this job only.
resource "google_project_iam_custom_role" "job_watcher" {
  project     = var.project_id
  role_id     = "${replace(var.name_prefix, "-", "_")}_job_watcher"
  title       = "People job watcher"
  description = "Reads the executions and tasks of the Cloud Run job it is granted on."
  permissions = ["run.executions.get", "run.tasks.list"]
  depends_on  = [google_project_service.required]
}

resource "google_cloud_run_v2_job_iam_member" "orchestrator_watcher" {
  project  = google_cloud_run_v2_job.people.project
  location = google_cloud_run_v2_job.people.location
  name     = google_cloud_run_v2_job.people.name
  role     = google_project_iam_custom_role.job_watcher.name
  member   = "serviceAccount:${google_service_account.orchestrator.email}"
}
