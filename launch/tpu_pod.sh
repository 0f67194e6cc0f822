#!/usr/bin/env bash
# TPU pod slice: run the same command on every worker; jax.distributed reads the TPU environment.
#   gcloud compute tpus tpu-vm ssh $TPU --worker=all --command="cd mrisr_jax && bash launch/tpu_pod.sh"
set -euo pipefail
python -m mrisr_jax.main --config configs/casrgan_x4.py --workdir "${WORKDIR:?gs:// or shared path}" \
  --distributed=on --config.batch_size=256 --config.model.dtype=bfloat16 \
  --config.data.root="${FASTMRI_ROOT:?}" --config.loss.vgg_weights="${VGG19_PTH:?}"
