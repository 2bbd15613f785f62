"""Pretrained weights by their Hugging Face hub names, offline.

The test writes a hub cache folder (huggingface_hub's layout:
``hub/models--<owner>--<repo>/refs/main`` and ``snapshots/<commit>/<file>``)
with random weights in timm's naming, and a fresh interpreter with
``HF_HOME`` on it and ``HF_HUB_OFFLINE=1`` (huggingface_hub reads both when
it is imported) loads them through ``init_cfg``.
"""
import json
import subprocess
import sys

import pytest
import timm
import torch
from safetensors.torch import save_file

from poolformer_mm.checkpoint.files import hub_location

COMMIT = '0123456789abcdef0123456789abcdef01234567'


def test_hub_names():
    assert hub_location('timm/convformer_s18.sail_in1k') == (
        'timm/convformer_s18.sail_in1k', None)
    assert hub_location('hf-hub:timm/poolformer_s12.sail_in1k') == (
        'timm/poolformer_s12.sail_in1k', None)
    assert hub_location('hf-hub:sail/dl/convformer/convformer_s18.pth') == (
        'sail/dl', 'convformer/convformer_s18.pth')
    for other in ('poolformer_s12.pth', 'timm/a/b.pth', 'https://x/y.pth',
                  'hf-hub:onlyone'):
        assert hub_location(other) is None, other


def write_cache(home, repo, files):
    folder = home / 'hub' / ('models--' + repo.replace('/', '--'))
    (folder / 'refs').mkdir(parents=True)
    (folder / 'refs' / 'main').write_text(COMMIT)
    snapshot = folder / 'snapshots' / COMMIT
    snapshot.mkdir(parents=True)
    for name, state_dict in files.items():
        save_file(state_dict, str(snapshot / name))


CHECK = r'''
import json, sys, torch
from poolformer_mm import MetaFormer, PoolFormer
from poolformer_mm.errors import CheckpointError
x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
report = {}
for key, cls, arch, name in (
        ('timm_name', PoolFormer, 's12', 'timm/poolformer_s12.sail_in1k'),
        ('hf_hub', MetaFormer, 'convformer_s18',
         'hf-hub:timm/convformer_s18.sail_in1k')):
    model = cls(arch, out_indices=(3, ), init_cfg=dict(
        type='Pretrained', checkpoint=name))
    model.init_weights()
    with torch.no_grad():
        fc1 = model.stages[0].blocks[0].mlp.fc1.weight
        report[key] = fc1.flatten()[:4].tolist()
for key, name in (
        ('unknown', 'timm/no_such_model.x'),
        ('missing_file', 'hf-hub:timm/poolformer_s12.sail_in1k/other.bin')):
    try:
        PoolFormer('s12', init_cfg=dict(type='Pretrained',
                                        checkpoint=name)).init_weights()
        report[key] = 'loaded'
    except CheckpointError as exc:
        report[key] = str(exc)
print(json.dumps(report))
'''


@pytest.mark.integration
def test_hub_names_load_offline(tmp_path):
    poolformer = timm.create_model('poolformer_s12').state_dict()
    convformer = timm.create_model('convformer_s18').state_dict()
    for state_dict in (poolformer, convformer):
        torch.manual_seed(0)
        for value in state_dict.values():
            value.copy_(torch.randn_like(value))
    write_cache(tmp_path, 'timm/poolformer_s12.sail_in1k',
                {'model.safetensors': poolformer})
    # A repository with the older pickle file only.
    write_cache(tmp_path, 'timm/convformer_s18.sail_in1k', {})
    torch.save(convformer, tmp_path / 'hub' /
               'models--timm--convformer_s18.sail_in1k' / 'snapshots' /
               COMMIT / 'pytorch_model.bin')
    env = dict(__import__('os').environ, HF_HOME=str(tmp_path),
               HF_HUB_OFFLINE='1')
    result = subprocess.run([sys.executable, '-c', CHECK], env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    fc1 = 'stages.0.blocks.0.mlp.fc1.weight'
    assert report['timm_name'] == pytest.approx(
        poolformer[fc1].flatten()[:4].tolist())
    # Linear in timm's ConvFormer MLP is a 1x1 convolution here.
    assert report['hf_hub'] == pytest.approx(
        convformer[fc1].flatten()[:4].tolist())
    for key in ('unknown', 'missing_file'):
        assert 'HF_HUB_OFFLINE is set' in report[key], report[key]
        assert 'huggingface-cli download' in report[key], report[key]
