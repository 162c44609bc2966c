# Faster R-CNN with balanced_l1's Balanced L1 loss as its box regression loss, smoke-sized.
#
# mmdetection's own Faster R-CNN config (ResNet-50 FPN, 1x COCO) with a ResNet-18 backbone trained
# from scratch (no pretrained weights), the tiny generated set of make_tiny_coco.py (16 images of
# 128 x 128 pixels, 3 classes), 20 iterations on the CPU and no evaluation. It proves the plugin
# trains inside mmdetection's runner; it learns nothing useful. Needs mmcv with its compiled ops
# (docs/mmdetection.md). Run it with train_tiny.py beside it:
#
#     python examples/mmdet/make_tiny_coco.py data/tiny_coco
#     python examples/mmdet/train_tiny.py --data-root data/tiny_coco --work-dir work_dirs/tiny
#
# tests/test_mmdet_training.py trains with this file.
_base_ = "mmdet::faster_rcnn/faster-rcnn_r50_fpn_1x_coco.py"

# The plugin: import it, then name its loss (scope "balanced_l1") where the box loss is configured.
custom_imports = dict(imports=["balanced_l1.mmdet"], allow_failed_imports=False)
model = dict(
    backbone=dict(
        depth=18,
        frozen_stages=-1,  # nothing is frozen: there are no pretrained weights to keep
        norm_eval=False,  # BatchNorm statistics are learned, for the same reason
        init_cfg=None,  # no pretrained weights (the base config loads torchvision's ResNet-50)
    ),
    # Narrower than mmdetection's 256 channels and 1024-wide fully connected layers, to train fast on a CPU.
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    rpn_head=dict(in_channels=64, feat_channels=64),
    roi_head=dict(
        bbox_roi_extractor=dict(out_channels=64),
        bbox_head=dict(
            in_channels=64,
            fc_out_channels=256,
            num_classes=3,
            loss_bbox=dict(type="balanced_l1.BalancedL1Loss", alpha=0.5, gamma=1.5, beta=1.0, loss_weight=1.0),
        ),
    ),
)

data_root = "data/tiny_coco/"
metainfo = dict(classes=("red", "green", "blue"))
train_pipeline = [
    dict(type="LoadImageFromFile"),
    dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", scale=(128, 128), keep_ratio=True),
    dict(type="RandomFlip", prob=0.5),
    dict(type="PackDetInputs"),
]
train_dataloader = dict(
    batch_size=2,
    num_workers=0,  # data loading in the training process: deterministic, and no worker processes
    persistent_workers=False,
    sampler=dict(type="InfiniteSampler", shuffle=True),  # iteration-based training: no epoch boundary
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file="annotations.json",
        data_prefix=dict(img="images/"),
        filter_cfg=dict(filter_empty_gt=True, min_size=8),
        pipeline=train_pipeline,
    ),
)
# Training only: no validation or test loop.
val_dataloader = val_evaluator = val_cfg = None
test_dataloader = test_evaluator = test_cfg = None

train_cfg = dict(_delete_=True, type="IterBasedTrainLoop", max_iters=20, val_interval=1_000_000)
optim_wrapper = dict(optimizer=dict(lr=0.01))
param_scheduler = [dict(type="LinearLR", start_factor=0.1, by_epoch=False, begin=0, end=10)]
default_hooks = dict(
    logger=dict(type="LoggerHook", interval=1),
    checkpoint=None,  # no checkpoints
)
log_processor = dict(by_epoch=False, window_size=1)
randomness = dict(seed=0)
