"""The op's export form: the gather implementation against the compiled op,
and the ONNX graph it becomes (standard operators only) in ONNX Runtime."""
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from plugins.ops import ms_deform_attn
from plugins.ops.ms_deform_attn.export import export_decompositions
from plugins.ops.ms_deform_attn.gather import ms_deform_attn_gather

pytestmark = pytest.mark.usefixtures('kernel_loaded')

# Levels 1-4 and points 1-8; map sizes include 1-pixel rows and columns.
CASES = {
    'L1-P1': (((5, 7),), 1),
    'L2-P8': (((6, 4), (1, 3)), 8),
    'L3-P2': (((4, 4), (2, 5), (1, 1)), 2),
    'L4-P4': (((8, 6), (4, 3), (2, 2), (1, 1)), 4),
}


@pytest.mark.parametrize('case', list(CASES))
def test_gather_form_matches_op(case, inputs):
    shapes, P = CASES[case]
    # Locations in [-0.3, 1.3]: corners outside the map must weigh zero.
    args = inputs(N=2, Lq=9, M=3, D=4, shapes=shapes, P=P,
                       loc_range=(-0.3, 1.3), seed=1)
    err = (ms_deform_attn_gather(*args) - ms_deform_attn(*args)).abs().max()
    assert err.item() <= 1e-12


def test_gather_form_zero_far_outside(inputs):
    value, shapes, starts, loc, weights = inputs(shapes=((3, 3),), P=2)
    far = loc + 5.0  # every corner of every point off the map
    assert ms_deform_attn_gather(value, shapes, starts, far, weights).abs().max() == 0
    assert ms_deform_attn(value, shapes, starts, far, weights).abs().max() == 0


class _Attn(nn.Module):
    def forward(self, value, shapes, starts, loc, weights):
        return ms_deform_attn(value, shapes, starts, loc, weights)


def _export_onnx(example, path):
    """The export route of plugins/mmdet_custom/apis/export.py: torch.export
    (our registered op in the graph), the gather rewrite, torch.onnx.  Every
    size but N and the head sizes is symbolic, levels and points included,
    so one graph serves all the cases."""
    Dim = torch.export.Dim
    S, Lq = Dim('S', min=2, max=4096), Dim('Lq', min=1, max=4096)
    L, P = Dim('L', min=1, max=8), Dim('P', min=1, max=16)
    dynamic = ({1: S}, {0: L}, {0: L}, {1: Lq, 3: L, 4: P},
               {1: Lq, 3: L, 4: P})
    program = torch.export.export(_Attn(), example, dynamic_shapes=dynamic,
                                  strict=False)
    targets = {str(n.target) for n in program.graph.nodes}
    assert 'plugins.ms_deform_attn.default' in targets
    table = torch.export.default_decompositions()
    table.update(export_decompositions())
    program = program.run_decompositions(table)
    onnx_program = torch.onnx.export(
        program, dynamo=True, verbose=False,
        input_names=['value', 'spatial_shapes', 'level_start_index',
                     'sampling_locations', 'attention_weights'],
        output_names=['output'])
    onnx_program.save(str(path))
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    return model


def test_onnx_form_matches_op(tmp_path, inputs):
    example = inputs(N=2, Lq=9, M=3, D=4, shapes=((6, 4), (3, 5)), P=3,
                     dtype=torch.float32, loc_range=(-0.3, 1.3), seed=2)
    model = _export_onnx(example, tmp_path / 'msda.onnx')
    op_types = {(n.domain or 'ai.onnx', n.op_type) for n in model.graph.node}
    assert all(domain == 'ai.onnx' for domain, _ in op_types), op_types
    assert ('ai.onnx', 'GridSample') not in op_types
    assert ('ai.onnx', 'Gather') in op_types
    session = ort.InferenceSession(str(tmp_path / 'msda.onnx'),
                                   providers=['CPUExecutionProvider'])
    # One graph for levels 1-4, points 1-8, other map sizes and query
    # counts: shapes and level offsets are graph inputs, not constants.
    for seed, (case, (shapes, P)) in enumerate(CASES.items()):
        for Lq in (1, 17):
            args = inputs(N=2, Lq=Lq, M=3, D=4, shapes=shapes, P=P,
                          dtype=torch.float32, loc_range=(-0.3, 1.3),
                          seed=10 + seed)
            feeds = {i.name: a.numpy()
                     for i, a in zip(session.get_inputs(), args)}
            got = torch.from_numpy(session.run(None, feeds)[0])
            want = ms_deform_attn(*[a.double() if a.is_floating_point()
                                    else a for a in args])
            assert got.shape == want.shape, case
            err = (got.double() - want).abs().max().item()
            assert err <= 1e-6, f'{case}, Lq={Lq}: max error {err}'
