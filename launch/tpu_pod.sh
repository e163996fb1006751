#!/usr/bin/env bash
# One jax3d command on every worker of a Cloud TPU pod slice: copies this checkout to each
# worker, installs it with jax[tpu], and runs the command there with --distributed (JAX
# detects the pod's coordinator and process ids).
#
#   launch/tpu_pod.sh my-v4-32 us-central2-b jax3d generate "a red cube" --method vsd \
#       --particles 16 --prior /mnt/models/stable-diffusion-v1-5 --config prolificdreamer:sd \
#       --workdir /mnt/shared/runs/red-cube-vsd
#
# The workdir (and the prior folder) must be visible to every worker at the same path, e.g. a
# Filestore NFS mount: orbax writes each checkpoint there from every worker. Rerunning the
# same line resumes from the last complete checkpoint.
set -euo pipefail
if [[ $# -lt 3 ]]; then
  echo "usage: launch/tpu_pod.sh TPU_NAME ZONE jax3d COMMAND ARGS..." >&2
  exit 2
fi
name=$1
zone=$2
shift 2
repo=$(cd "$(dirname "$0")/.." && pwd)
command=$(printf '%q ' "$@")
gcloud compute tpus tpu-vm scp --recurse "$repo" "${name}:~/jax3d-src" --zone "$zone" \
  --worker=all
gcloud compute tpus tpu-vm ssh "$name" --zone "$zone" --worker=all --command "
  set -e
  python3 -m pip install -q 'jax[tpu]' -e ~/jax3d-src
  export PATH=\$HOME/.local/bin:\$PATH
  ${command} --distributed"
