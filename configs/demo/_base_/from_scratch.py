# Shared by every demo: PoolFormer-S12 trained from scratch on a CPU.

# Same numbers on every run of the demo (up to non-deterministic CPU kernels).
randomness = dict(seed=0)
# The parent configs hold these keys too; each demo config merges them over.
demo = dict(
    model=dict(
        backbone=dict(
            # From scratch residual branches start at full strength, not 1e-5.
            layer_scale_init_value=1.0,
            # Offline: no ImageNet download (PRETRAINED= in run_demo.sh).
            init_cfg=None)),
    # From scratch a higher rate than fine-tuning's (AdamW, as the paper).
    optim_wrapper=dict(
        optimizer=dict(lr=1e-3), clip_grad=dict(_delete_=True, max_norm=10)),
    default_hooks=dict(
        logger=dict(interval=25), checkpoint=dict(max_keep_ckpts=1)))
