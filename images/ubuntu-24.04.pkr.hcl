# The default agentfleet base image, baked by Packer with the agentfleet
# plugin: the same build as `fleet image build ubuntu-24.04`, stored and
# promoted in the fleet's image store (FLEET_HOME/images) once a booted
# clone passes its checks.
#
#   packer plugins install --path ./bin/packer-plugin-agentfleet github.com/agentfleet/agentfleet
#   sudo packer build images/ubuntu-24.04.pkr.hcl
#   sudo packer build -var mirror=http://ubuntu-mirror.internal/ubuntu images/ubuntu-24.04.pkr.hcl
#
# Every variable maps to a `fleet image build` flag of the same name.

packer {
  required_plugins {
    agentfleet = {
      source  = "github.com/agentfleet/agentfleet"
      version = ">= 0.1.0"
    }
  }
}

variable "image_name" {
  type        = string
  default     = "ubuntu-24.04"
  description = "ubuntu-24.04 or debian-12"
}

variable "mirror" {
  type        = string
  default     = ""
  description = "build the root file system from this package mirror instead of the cloud image"
}

variable "source_url" {
  type        = string
  default     = ""
  description = "another cloud image to start from (needs checksum_url)"
}

variable "checksum_url" {
  type        = string
  default     = ""
  description = "SHA256SUMS file that lists source_url"
}

variable "recipe" {
  type        = string
  default     = "full"
  description = "full (Docker, Node.js, Claude Code) or base"
}

variable "claude_version" {
  type        = string
  default     = "latest"
  description = "Claude Code npm version or dist-tag"
}

variable "scripts" {
  type        = list(string)
  default     = []
  description = "your own shell scripts, run as root after the toolchain and before generalize"
}

variable "outputs" {
  type        = list(string)
  default     = ["qcow2", "ova"]
  description = "exports besides the store's disk: qcow2, ova, vagrant"
}

variable "if_changed" {
  type        = bool
  default     = false
  description = "build nothing when recipe, source and package versions match latest"
}

variable "fleet_home" {
  type        = string
  default     = ""
  description = "image store root (default FLEET_HOME, as for the fleet command)"
}

source "agentfleet" "base" {
  image_name     = var.image_name
  mirror         = var.mirror
  source_url     = var.source_url
  checksum_url   = var.checksum_url
  recipe         = var.recipe
  claude_version = var.claude_version
  scripts        = var.scripts
  outputs        = var.outputs
  if_changed     = var.if_changed
  fleet_home     = var.fleet_home
}

build {
  sources = ["source.agentfleet.base"]
}
