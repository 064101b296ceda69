"""Build configuration, cache keys, loader order, fallback and info."""
import os
import subprocess
import sys
import warnings

import pytest
import torch

from plugins.ops import ms_deform_attn, ms_deform_attn_reference
from plugins.ops.ms_deform_attn import build_config, loader


def test_cache_key_hashes_contents_not_mtimes():
    key = loader.cache_key('cpu')
    source = build_config.cpu_sources(absolute=True)[0]
    stat = os.stat(source)
    try:
        os.utime(source, (stat.st_atime, stat.st_mtime + 1000))
        assert loader.cache_key('cpu') == key
    finally:
        os.utime(source, (stat.st_atime, stat.st_mtime))


def test_cuda_key_depends_on_arch_list(monkeypatch):
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '8.0')
    key_80 = loader.cache_key('cuda')
    monkeypatch.setenv('TORCH_CUDA_ARCH_LIST', '9.0')
    assert loader.cache_key('cuda') != key_80
    monkeypatch.delenv('TORCH_CUDA_ARCH_LIST')
    assert build_config.cuda_arch_list() == build_config.DEFAULT_CUDA_ARCHS


def test_want_cuda_switches(monkeypatch):
    monkeypatch.setenv('PLUGINS_BUILD_CUDA', '0')
    monkeypatch.setenv('FORCE_CUDA', '1')
    assert not build_config.want_cuda()
    monkeypatch.setenv('PLUGINS_BUILD_CUDA', 'auto')
    assert build_config.want_cuda()


@pytest.mark.skipif(not torch.version.cuda, reason='torch is a CPU build')
def test_cuda_include_dirs_have_the_pip_cuda_headers():
    # torch's CUDA headers include cusparse.h, which the pip wheels provide.
    major = torch.version.cuda.split('.')[0]
    assert any(d.endswith(os.path.join('nvidia', f'cu{major}', 'include'))
               for d in build_config.cuda_include_dirs())


def test_sources_are_relative_for_setup_py(monkeypatch):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(build_config.HERE)))
    monkeypatch.chdir(repo)  # where setup.py runs
    sources = build_config.cpu_sources()
    assert sources and not any(os.path.isabs(s) for s in sources)
    assert all(os.path.isfile(s) for s in sources)


def test_build_skips_a_cached_key(kernel_loaded, capsys):
    if not os.path.isfile(loader.cached_library('cpu')):
        pytest.skip('the CPU kernel was not loaded from the build cache')
    from plugins.ops.build import build
    assert build(['cpu']) == 0
    assert 'cached' in capsys.readouterr().out


def test_nothing_is_loaded_on_import():
    code = ('import torch, plugins, plugins.ops; '
            'from plugins.ops.ms_deform_attn import loader; '
            'print(loader._state, any("plugins_msda" in p or "_C_cpu" in p '
            'for p in torch.ops.loaded_libraries))')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True,
                         text=True, check=True).stdout.strip().splitlines()[-1]
    assert out == '{} False'


_FRESH_CALL = r"""
import sys, torch
import plugins.ops
from plugins.ops.ms_deform_attn import loader
op = torch.ops.plugins.ms_deform_attn.default  # the schema, from the import
assert not loader._state, loader._state
assert not torch._C._dispatch_has_kernel_for_dispatch_key(
    'plugins::ms_deform_attn', 'CPU'), 'a CPU kernel before the first call'
out = op(*torch.load(sys.argv[1]))
assert torch._C._dispatch_has_kernel_for_dispatch_key(
    'plugins::ms_deform_attn', 'CPU')
torch.save(out, sys.argv[2])
print(op._schema, loader.status('cpu')['source'])
"""


def test_import_registers_the_op_and_its_first_call_loads_the_kernel(
        inputs, kernel_loaded, repo_root, tmp_path):
    """What an AOTInductor package needs of a fresh process: after ``import
    plugins.ops`` the op resolves by name (its schema), and calling it
    directly loads the compiled kernel (here a cached build: a dlopen) and
    runs it (issue 24: aoti_load_package with import plugins.ops only)."""
    args = inputs(dtype=torch.float32)
    torch.save(args, tmp_path / 'args.pt')
    result = subprocess.run(
        [sys.executable, '-c', _FRESH_CALL, str(tmp_path / 'args.pt'),
         str(tmp_path / 'out.pt')], cwd=repo_root, capture_output=True,
        text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    schema, source = result.stdout.strip().splitlines()[-1].rsplit(' ', 1)
    assert schema.startswith('plugins::ms_deform_attn(Tensor value')
    assert source in ('installed', 'cache', 'jit')
    torch.testing.assert_close(torch.load(tmp_path / 'out.pt'),
                               ms_deform_attn_reference(*args))


def test_fallback_to_reference_warns_once(inputs, monkeypatch):
    monkeypatch.setattr(loader, '_state', {'cpu': dict(source='none',
                                                       reason='test')})
    monkeypatch.setattr(loader, '_warned', set())
    args = inputs()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        out = ms_deform_attn(*args)
        ms_deform_attn(*args)
    messages = [str(w.message) for w in caught
                if 'falling back to the PyTorch reference' in str(w.message)]
    assert len(messages) == 1 and 'test' in messages[0]
    assert torch.equal(out, ms_deform_attn_reference(*args))


def test_backend_env_forces_the_reference(inputs, monkeypatch, kernel_loaded):
    monkeypatch.setenv('PLUGINS_MSDA_BACKEND', 'reference')
    args = inputs()
    assert torch.equal(ms_deform_attn(*args), ms_deform_attn_reference(*args))


def test_info_reports_the_cpu_backend(kernel_loaded):
    from plugins.ops.info import collect
    info = collect(load_cuda=False)
    assert info['backend cpu'].startswith('compiled kernel')
    assert info['torch'] == torch.__version__


def test_cuda_library_links():
    """The CUDA kernel built by `python -m plugins.ops.build` loads (proves it
    compiled and linked against this torch), even without a GPU."""
    path = loader.installed_library('cuda')
    if path is None and os.path.isfile(loader.cached_library('cuda')):
        path = loader.cached_library('cuda')
    if path is None:
        # Where set-up was meant to build the kernel (nvcc present, or
        # FORCE_CUDA=1), a missing library is a failure, not a skip: CI must
        # prove that the CUDA sources compile and link.
        assert not build_config.want_cuda(), (
            'set-up should have built the CUDA kernel (nvcc found) but no '
            f'library is at {loader.cached_library("cuda")}')
        pytest.skip('no CUDA toolchain here (nvcc missing or PLUGINS_BUILD_CUDA=0)')
    assert loader.load('cpu')
    assert loader.load('cuda', compile=False)
    assert torch._C._dispatch_has_kernel_for_dispatch_key(
        'plugins::ms_deform_attn', 'CUDA')
    archs = torch.ops.plugins.ms_deform_attn_cuda_archs()
    requested = {int(round(float(a.split('+')[0]) * 100))
                 for a in build_config.cuda_arch_list().replace(' ', ';').split(';')
                 if a and a[0].isdigit()}
    assert set(archs) == requested
