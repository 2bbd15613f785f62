"""What the tools do, as functions a script can call after ``pip install``.

Each tool under ``tools/`` is argument parsing over one module here:

- :mod:`.runs`: :func:`train` and :func:`test` from a config
  (``tools/train.py``, ``tools/test.py``), and the config and model helpers
  the other modules share (:func:`load_config`, :func:`build_model`);
- :mod:`.inference`: :func:`infer` on images, folders and videos
  (``tools/infer.py``);
- :mod:`.onnx_export`: :func:`export_onnx`, its verification in ONNX
  Runtime and its benchmark (``tools/export_onnx.py``);
- :mod:`.complexity`: parameters and FLOPs per part, :func:`analyze_config`
  and :func:`analyze_arch` (``tools/analysis/get_flops.py``);
- :mod:`.features`: the stage feature pictures, :func:`visualize`
  (``tools/analysis/vis_features.py``);
- :mod:`.benchmark`: the backbone against timm and the floor
  (``tools/benchmark.py``; its function is :func:`run_benchmark` here, the
  module keeps its name);
- :mod:`.gpu_check`: the parts of ``tools/gpu_check.sh`` (the fast paths
  on one GPU; :mod:`.gpu_check_report` writes its table), not imported
  here;
- :mod:`.common`: the arch-name lookup and the tools' one-line errors.

Example::

    from poolformer_mm.apis import analyze_arch, infer
    print(analyze_arch('s12').flops)  # multiply-adds at 224x224
    infer('configs/demo/retinanet_poolformer_s12_demo.py', 'epoch_7.pth',
          'data/demo/coco/val/', out_dir='outputs/infer')
"""
from . import benchmark, common, complexity, features, inference  # noqa
from . import onnx_export, runs  # noqa
from .benchmark import benchmark as run_benchmark
from .common import build_backbone, resolve_arch
from .complexity import analyze_arch, analyze_config
from .features import visualize
from .inference import infer
from .onnx_export import export_onnx
from .runs import build_model, load_config, test, train

__all__ = [
    'analyze_arch', 'analyze_config', 'build_backbone', 'build_model',
    'export_onnx', 'infer', 'load_config', 'resolve_arch', 'run_benchmark',
    'test', 'train', 'visualize'
]
