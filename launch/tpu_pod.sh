#!/usr/bin/env bash
# TPU pod slice: the same command on every worker; jax.distributed.initialize() reads the TPU
# metadata itself (mrisr_jax.cluster passes no arguments on TPU). v5p-64 = 32 chips (64 TensorCores,
# one JAX device per chip) on 8 hosts of 4 chips: global batch 1024 = 32 per chip.
#   gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command="cd mrisr_jax && \
#     WORKDIR=gs://BUCKET/runs/casrgan_x4 FASTMRI_ROOT=/mnt/fastmri VGG19_PTH=/mnt/vgg19-dcbb9e9d.pth \
#     bash launch/tpu_pod.sh"
# WORKDIR must be the same on every worker: a gs:// path or a shared mount. On a maintenance event
# or spot preemption every host gets SIGTERM, all save the same step and exit 75; run the same
# command again (by hand, or from the queued resource's startup script) to resume.
set -uo pipefail
: "${WORKDIR:?gs:// or a path every worker shares}" "${FASTMRI_ROOT:?}" "${VGG19_PTH:?}"
PREEMPTED=75
python -m mrisr_jax.main --config configs/casrgan_x4.py --workdir "$WORKDIR" \
  --distributed=on --preemption_exit_code=$PREEMPTED \
  --config.batch_size="${BATCH:-1024}" --config.mesh.data=-1 --config.mesh.fsdp=1 \
  --config.lr_scaling=sqrt --config.base_batch_size=16 \
  --config.stages.pretrain.warmup_epochs=2 --config.stages.finetune.warmup_epochs=1 \
  --config.stages.gan.warmup_epochs=1 \
  --config.model.dtype=bfloat16 \
  --config.data.root="$FASTMRI_ROOT" --config.data.num_workers=16 \
  --config.loss.vgg_weights="$VGG19_PTH"
status=$?
[ "$status" = "$PREEMPTED" ] && echo "tpu_pod.sh: saved on SIGTERM (exit $PREEMPTED); run the same command to resume"
exit "$status"
