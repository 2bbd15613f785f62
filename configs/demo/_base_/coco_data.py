# The demo data in the COCO layout (tools/make_demo_data.py), for detectors.
_base_ = ['./from_scratch.py']

metainfo = dict(
    classes=('circle', 'square', 'triangle', 'star'),
    palette=[(220, 20, 60), (0, 130, 230), (250, 170, 30), (120, 60, 220)])

data_root = 'data/demo/coco/'
dataset = dict(data_root=data_root, metainfo=metainfo)
# Small batches: more steps in the same CPU time train faster from scratch.
train_dataloader = dict(
    batch_size=4,
    num_workers=2,
    dataset=dict(dataset, data_prefix=dict(img='train/'),
                 ann_file='annotations/instances_train.json'))
val_dataloader = dict(
    batch_size=8,
    num_workers=2,
    dataset=dict(dataset, data_prefix=dict(img='val/'),
                 ann_file='annotations/instances_val.json'))
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val.json')

# The parent configs hold these keys too; each demo config merges them over.
demo = dict(
    data_root=data_root,
    train_dataloader=train_dataloader,
    val_dataloader=val_dataloader,
    val_evaluator=val_evaluator,
    auto_scale_lr=dict(base_batch_size=4),
    test_dataloader=val_dataloader,
    test_evaluator=val_evaluator)
del data_root, dataset, train_dataloader, val_dataloader, val_evaluator
