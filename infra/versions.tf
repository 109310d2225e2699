terraform {
  # startswith()/endswith() and lifecycle preconditions need 1.3+; 1.5 is the oldest tested line.
  required_version = ">= 1.5.0, < 2.0.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.0"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.7"
    }
  }
}
