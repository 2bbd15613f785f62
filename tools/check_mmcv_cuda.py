"""Check an mmcv build with CUDA ops without a GPU: it imports, its
extension holds the CUDA kernels the configs' heads call, and device code
for the architectures asked for.

Run it with the build first on ``PYTHONPATH`` (``tools/setup_cuda.sh`` does,
from a throw-away ``pip install --target`` folder).

Example:
    PYTHONPATH=/tmp/mmcv_cuda python tools/check_mmcv_cuda.py \
        --archs '8.0;9.0' --inside /tmp/mmcv_cuda
    python tools/check_mmcv_cuda.py --archs 9.0 --ext path/to/_ext.so
"""
import argparse
import glob
import os.path as osp
import re
import struct
import subprocess
import sys

# Host-side launchers of the CUDA kernels that RetinaNet (sigmoid focal
# loss, NMS), Mask R-CNN (NMS, RoIAlign for boxes, masks and mask targets)
# and Semantic FPN (none) call through mmcv.ops.
REQUIRED = {
    'nms': ('NMSCUDAKernelLauncher', ),
    'roi_align': ('ROIAlignForwardCUDAKernelLauncher',
                  'ROIAlignBackwardCUDAKernelLauncher'),
    'sigmoid_focal_loss': ('SigmoidFocalLossForwardCUDAKernelLauncher',
                           'SigmoidFocalLossBackwardCUDAKernelLauncher'),
}
FATBIN_MAGIC = 0xBA55ED50


def elf_section(data: bytes, wanted: str) -> bytes:
    """The bytes of an ELF64 little-endian section, b'' if absent."""
    shoff, = struct.unpack_from('<Q', data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from('<HHH', data, 0x3A)
    headers = [struct.unpack_from('<IIQQQQIIQQ', data, shoff + i * shentsize)
               for i in range(shnum)]
    names = headers[shstrndx]
    for header in headers:
        start = names[4] + header[0]
        name = data[start:data.index(b'\0', start)].decode()
        if name == wanted:
            return data[header[4]:header[4] + header[5]]
    return b''


def fatbin_archs(fatbin: bytes) -> set:
    """The SM versions (e.g. {80, 90}) of the entries of the fat binaries in
    an ``.nv_fatbin`` section: a container header (magic, version, header
    size, size), then entries whose header holds kind, header size, payload
    size and, at byte 28, the target architecture."""
    archs, offset = set(), 0
    while offset + 16 <= len(fatbin):
        magic, _, header_size, size = struct.unpack_from('<IHHQ', fatbin,
                                                         offset)
        if magic != FATBIN_MAGIC:
            offset += 8  # containers are 8-byte aligned
            continue
        entry, end = offset + header_size, offset + header_size + size
        while entry + 32 <= end:
            _, _, entry_header, payload = struct.unpack_from(
                '<HHIQ', fatbin, entry)
            archs.add(struct.unpack_from('<I', fatbin, entry + 28)[0])
            entry += entry_header + payload
        offset = end
    return archs


def device_archs(path: str) -> set:
    """The SM versions of the device code in the shared library ``path``."""
    with open(path, 'rb') as f:
        return fatbin_archs(elf_section(f.read(), '.nv_fatbin'))


def kernel_launchers(path: str) -> set:
    """Names of the ``*CUDAKernelLauncher`` functions that the shared
    library ``path`` defines. ``nm -DC`` prints them demangled, with their
    argument lists (``NMSCUDAKernelLauncher(at::Tensor, float, int)``)."""
    symbols = subprocess.run(['nm', '-DC', '--defined-only', path],
                             capture_output=True, text=True,
                             check=True).stdout
    return set(re.findall(r'\b(\w+CUDAKernelLauncher)\(', symbols))


def imported_extension(inside=None) -> str:
    """The ops extension of the mmcv that imports here (from ``inside``,
    when given)."""
    import mmcv
    import mmcv.ops  # noqa: F401  (loads the extension)
    folder = osp.dirname(mmcv.__file__)
    if inside and not osp.abspath(folder).startswith(osp.abspath(inside)):
        sys.exit(f'error: mmcv imports from {folder}, not from {inside}')
    ext = glob.glob(osp.join(folder, '_ext*.so'))
    if not ext:
        sys.exit(f'error: no mmcv/_ext*.so in {folder}: built without ops')
    print(f'mmcv {mmcv.__version__} from {folder}')
    return ext[0]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument(
        '--archs', required=True,
        help="TORCH_CUDA_ARCH_LIST of the build, e.g. '8.0;9.0'")
    parser.add_argument('--inside', help='mmcv must import from this folder')
    parser.add_argument(
        '--ext', help='check this shared library instead of the extension '
        'of the mmcv that imports')
    args = parser.parse_args(argv)
    ext = args.ext or imported_extension(args.inside)
    launchers = kernel_launchers(ext)
    print(f'{len(launchers)} CUDA kernel launchers in {osp.basename(ext)}')
    missing = [f'{op}: {name}' for op, names in REQUIRED.items()
               for name in names if name not in launchers]
    for op, names in REQUIRED.items():
        found_all = all(n in launchers for n in names)
        print(f'  {op}: {"ok" if found_all else "MISSING"}')
    expected = {round(float(a) * 10) for a in args.archs.replace(
        ' ', ';').split(';') if a}
    found = device_archs(ext)
    print(f'  device code for sm {sorted(found)}; asked for '
          f'{sorted(expected)}')
    if missing or not expected <= found:
        print(f'error: missing kernels {missing} or architectures '
              f'{sorted(expected - found)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
