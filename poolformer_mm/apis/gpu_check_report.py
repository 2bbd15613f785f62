"""The table of ``tools/gpu_check.sh``: what its parts
(:mod:`.gpu_check`) left in the work folder, as ``table.md`` and
``summary.json`` in the output folder.

A part that wrote its JSON and its ``<part>.done.json`` finished; one with
the JSON alone was stopped at its time limit and is shown with what it
finished; one with neither gave no result.
"""
import json
import os
import os.path as osp
import platform
import subprocess
from typing import Dict, List, Optional, Tuple

from .benchmark import paired_ratio

PARTS = ('tests', 'bench', 'recompiles', 'train')
# Variant columns of the benchmark table; the floor has a column of its own.
SHOWN = ('ours', 'reference', 'triton', 'compile', 'deploy')
HEADS = {'ours': "'auto'", 'reference': 'reference', 'triton': 'triton',
         'compile': 'compile', 'deploy': 'deploy'}


def machine() -> Dict[str, str]:
    """GPU, driver, torch, CUDA, triton, timm and Python versions."""
    import torch
    info = dict(python=platform.python_version(), torch=torch.__version__,
                cuda=str(torch.version.cuda))
    if torch.cuda.is_available():
        info['gpu'] = torch.cuda.get_device_name()
    try:
        info['driver'] = subprocess.run(
            ['nvidia-smi', '--query-gpu=driver_version',
             '--format=csv,noheader'], capture_output=True, text=True,
            timeout=20).stdout.strip() or 'n/a'
    except (OSError, subprocess.SubprocessError):
        info['driver'] = 'n/a'
    for name in ('triton', 'timm'):
        try:
            info[name] = __import__(name).__version__
        except Exception:  # absent or broken: reported, not fatal
            info[name] = 'not importable'
    return info


def read_parts(work: str) -> Dict[str, dict]:
    """Per part: its JSON (``data``, None if none), whether it finished,
    and its seconds and budget (from ``<part>.done.json``)."""
    found = {}
    for part in PARTS:
        entry = dict(data=None, finished=False, seconds=None, budget_s=None)
        for suffix, key in (('', 'data'), ('.done', 'done')):
            path = osp.join(work, f'{part}{suffix}.json')
            if osp.isfile(path):
                with open(path) as f:
                    entry[key] = json.load(f)
        done = entry.pop('done', None)
        if done:
            entry.update(finished=True, seconds=done.get('seconds'),
                         budget_s=done.get('budget_s'),
                         error=done.get('error'))
        found[part] = entry
    return found


def _state(entry: dict, ok: bool) -> str:
    if entry['data'] is None:
        return 'no result (not run, or killed before its first step)'
    if not entry['finished']:
        return 'stopped at its time limit (partial)'
    if entry.get('error'):
        return entry['error']
    return 'ok' if ok else 'FAILED'


def _time(entry: dict, seconds: Optional[float] = None) -> str:
    seconds = entry['seconds'] if seconds is None else seconds
    budget = entry['budget_s']
    return (f'{seconds:.0f}' if seconds is not None else '-') + (
        f' / {budget:.0f}' if budget is not None else '')


def part_rows(parts: Dict[str, dict]) -> Tuple[List[str], bool]:
    """The rows of the parts' table, and whether everything passed."""
    rows, all_ok = [], True
    tests = parts['tests']
    groups = (tests['data'] or {}).get('groups', [])
    for g in groups:
        ok = g['status'] == 'ok' and not g.get('failed') and not g.get(
            'errors')
        all_ok &= ok
        counts = (f'{g.get("passed", 0)} passed, {g.get("failed", 0)} '
                  f'failed, {g.get("errors", 0)} errors, '
                  f'{g.get("skipped", 0)} skipped' if 'tests' in g else '-')
        if g.get('failures'):
            counts += ': ' + ', '.join(g['failures'][:5])
        status = g['status'] if ok else f'FAILED ({g["status"]})'
        rows.append(f'| tests: {g["group"]} | {status} | '
                    f'{_time(tests, g.get("seconds"))} | {counts} |')
    if not groups:
        all_ok = False
        rows.append(f'| tests | {_state(tests, False)} | {_time(tests)} | - |')
    rec = parts['recompiles']
    data = rec['data'] or {}
    for phase, r in data.get('phases', {}).items():
        ok = 'status' not in r and r['eager_frames'] == 0
        all_ok &= 'status' not in r
        text = r.get('status') or (
            f'{r["calls"]}/{r["sizes"]} sizes ({r["distinct_sizes"]} '
            f'distinct): {r["first_graphs"]} graphs at the first call, '
            f'**{r["recompiles"]} recompiles** after it, '
            f'{r["eager_frames"]} frames run eagerly; first call '
            f'{r["first_s"]:.1f} s, the others {r["rest_s"]:.1f} s')
        rows.append(f'| recompiles {phase} ({data["arch"]}, {data["dtype"]},'
                    f' batch {data["batch"]}) | '
                    f'{"ok" if ok else "see result"} | {_time(rec)} | '
                    f'{text} |')
    if not data.get('phases'):
        all_ok = False
        rows.append(f'| recompiles | {_state(rec, False)} | {_time(rec)} '
                    '| - |')
    train = parts['train']
    runs = (train['data'] or {}).get('runs', [])
    for r in runs:
        ok = r['status'] == 'ok' and r['all_finite']
        all_ok &= ok
        finite = ('every loss finite' if r.get('all_finite') else
                  f'NON-FINITE at steps {r.get("nonfinite")}')
        text = r['status'] if r['status'] != 'ok' else (
            f'{r["steps"]} steps at lr {r["lr"]:g}, {finite}; '
            f'loss {r["first_loss"]:.3f} -> {r["last_loss"]:.3f}; scaler '
            f'skipped {r["scaler_skipped"]}, scale {r["final_scale"]}; '
            f'{r["median_step_ms"]:.1f} ms/step')
        rows.append(f'| train {r["arch"]} {r["impl"]} {r.get("dtype", "")} '
                    f'| {"ok" if ok else "FAILED"} | {_time(train)} | '
                    f'{text} |')
    if not runs:
        all_ok = False
        rows.append(f'| train | {_state(train, False)} | {_time(train)} '
                    '| - |')
    bench = parts['bench']
    configs = (bench['data'] or {}).get('configs', [])
    ran = [c for c in configs if c['status'] == 'ok']
    errors = [c for c in configs if c['status'].startswith('error')]
    all_ok &= not errors and bool(ran)
    text = (f'{len(ran)} of {len(configs)} configs timed (below)' +
            ''.join(f'; {c["arch"]} {c["input"]} {c["dtype"]}: '
                    f'{c["status"]}' for c in errors[:3]))
    rows.append(f'| bench | {_state(bench, bool(ran) and not errors)} | '
                f'{_time(bench)} | {text} |')
    return rows, all_ok


def _cell(results: dict, key: str, base: str) -> str:
    timing = results.get(key)
    if not timing:
        return '-'
    return (f'{timing["median_ms"]:.1f} '
            f'({paired_ratio(results.get(base), timing)})')


def bench_rows(configs: List[dict]) -> List[str]:
    """One row per config and phase: timm's ms, each variant's ms with its
    paired ratio to timm, the floor's ms and the fastest variant over the
    floor."""
    rows = []
    for c in configs:
        if c['status'] != 'ok':
            rows.append(f'| {c["arch"]} | {c["input"]} | {c["dtype"]} | - | '
                        f'{c["status"]} |' + ' |' * (len(SHOWN) + 2))
            continue
        for phase, results in c['results'].items():
            prefix = '' if phase == 'eval' else 'train_'
            base = prefix + 'timm'
            timm = results.get(base, {}).get('median_ms')
            floor = results.get(prefix + 'floor_1x1', {}).get('median_ms')
            times = [results[prefix + v]['median_ms'] for v in SHOWN
                     if prefix + v in results]
            best = (f'{min(times) / floor:.2f}' if times and floor else '-')
            cells = ' | '.join(_cell(results, prefix + v, base)
                               for v in SHOWN)
            rows.append(
                f'| {c["arch"]} | {c["input"]} | {c["dtype"]} | {phase} | '
                f'{"-" if timm is None else f"{timm:.1f}"} | {cells} | '
                f'{"-" if floor is None else f"{floor:.1f}"} | {best} |')
    return rows


def table(work: str, out: str, info: Optional[dict] = None) -> dict:
    """Write ``table.md`` and ``summary.json`` into ``out`` from the parts
    in ``work``; return the summary (``ok``: every part finished and
    passed)."""
    info = machine() if info is None else info
    parts = read_parts(work)
    rows, ok = part_rows(parts)
    ok &= all(p['finished'] and not p.get('error') for p in parts.values())
    lines = ['# gpu_check: ' + ', '.join(f'{k} {v}' for k, v in info.items()),
             '', '| part | status | seconds / budget | result |',
             '| --- | --- | --- | --- |'] + rows
    configs = (parts['bench']['data'] or {}).get('configs', [])
    if configs:
        lines += [
            '', '# benchmark: median ms (timm time / variant time, paired by '
            'round: median [quartiles]); floor: the 1x1 convolutions alone; '
            'best / floor: the fastest variant over it', '',
            '| arch | input | dtype | phase | timm | ' +
            ' | '.join(HEADS[v] for v in SHOWN) + ' | floor | best / floor |',
            '|' + ' --- |' * (len(SHOWN) + 7)
        ] + bench_rows(configs)
    text = '\n'.join(lines) + '\n'
    os.makedirs(out, exist_ok=True)
    with open(osp.join(out, 'table.md'), 'w') as f:
        f.write(text)
    summary = dict(ok=ok, machine=info, table=text,
                   parts={k: dict(v) for k, v in parts.items()})
    with open(osp.join(out, 'summary.json'), 'w') as f:
        json.dump(summary, f, indent=1, default=str)
    return summary
