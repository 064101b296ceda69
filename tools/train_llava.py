"""Train the compact LLaVA-Phi segmentation model with DeepSpeed.

PSALM's argument names, so PSALM launch lines carry over::

    deepspeed --num_gpus 1 tools/train_llava.py \\
        --deepspeed zero2 \\
        --mm_projector_type deformable --mm_hidden_dim 256 --mm_n_heads 8 \\
        --mm_n_points 4 --swin_type base --bf16 True \\
        --per_device_train_batch_size 4 --gradient_accumulation_steps 1 \\
        --learning_rate 6e-5 --num_train_epochs 1 --output_dir work_dirs/llava

On a machine without a GPU the same command runs on DeepSpeed's CPU
accelerator (``gloo`` backend); ``python tools/train_llava.py ...`` runs a
single process without the launcher. See ``docs/llava_phi.md``.
"""
import argparse
import os
import sys

# `python tools/train_llava.py` puts tools/ on sys.path, not the repository.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def str2bool(value) -> bool:
    """``--bf16``, ``--bf16 True`` and ``--bf16 false`` all parse (PSALM's
    scripts use Hugging Face's ``--flag True`` form)."""
    if isinstance(value, bool):
        return value
    if value.lower() in ('1', 'true', 'yes', 'y'):
        return True
    if value.lower() in ('0', 'false', 'no', 'n'):
        return False
    raise argparse.ArgumentTypeError(f'expected a boolean, got {value!r}')


def _flag(parser, name: str, help: str) -> None:
    parser.add_argument(name, type=str2bool, nargs='?', const=True,
                        default=False, help=help)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description='Train the LLaVA-Phi segmentation model with DeepSpeed')
    model = parser.add_argument_group('model (PSALM ModelArguments names)')
    model.add_argument('--model_config', default='llava-phi-seg_tiny',
                       help='shipped name or path of a LlavaSegConfig JSON '
                       '(plugins/llava/configs/)')
    model.add_argument('--model_name_or_path', default=None,
                       help='local Hugging Face folder with Phi weights and '
                       'tokenizer; random weights from --model_config if '
                       'omitted (nothing is downloaded)')
    model.add_argument('--mm_projector_type', default=None,
                       help='deformable | swin_conv | linear | mlp2x_gelu | '
                       'identity (default: the model config\'s)')
    model.add_argument('--mm_hidden_dim', type=int, default=None,
                       help='deformable attention width (default 256)')
    model.add_argument('--mm_n_heads', type=int, default=None,
                       help='deformable attention heads (default 8)')
    model.add_argument('--mm_n_points', type=int, default=None,
                       help='sampling points per head and level (default 4)')
    model.add_argument('--mm_num_tokens', type=int, default=None,
                       help='image tokens of the deformable projector')
    model.add_argument('--projector_outdim', type=int, default=None,
                       help='projector output width (default: LLM hidden '
                       'size; 2048 for Phi-1.5)')
    model.add_argument('--swin_type', choices=['base', 'large'], default=None)
    model.add_argument('--image_size', type=int, default=None)
    model.add_argument('--pretrain_mm_mlp_adapter', default=None,
                       help='mm_projector weights (e.g. from '
                       'tools/adapt_pretrain_to_deformable.py), loaded with '
                       'every key checked')
    data = parser.add_argument_group('data')
    data.add_argument('--data_root', default='data/toy',
                      help='toy dataset folder (tools/make_toy_dataset.py)')
    data.add_argument('--ann_file', default=None,
                      help='annotation file in annotations/ (default '
                      'instances_train.json)')
    data.add_argument('--dataloader_num_workers', type=int, default=0)
    train = parser.add_argument_group('training (Hugging Face names)')
    train.add_argument('--deepspeed', default='zero2',
                       help='DeepSpeed JSON config: a path, or zero2 / zero3 (shipped '
                       'in plugins/llava/configs/); "auto" values are filled')
    train.add_argument('--output_dir', required=True)
    train.add_argument('--per_device_train_batch_size', type=int, default=4)
    train.add_argument('--gradient_accumulation_steps', type=int, default=1)
    train.add_argument('--learning_rate', type=float, default=6e-5)
    train.add_argument('--weight_decay', type=float, default=0.0)
    train.add_argument('--warmup_ratio', type=float, default=0.03)
    train.add_argument('--max_grad_norm', type=float, default=1.0)
    train.add_argument('--num_train_epochs', type=float, default=1.0)
    train.add_argument('--max_steps', type=int, default=-1,
                       help='optimizer steps; overrides --num_train_epochs')
    _flag(train, '--bf16', 'bfloat16 compute (vision tower cast too)')
    _flag(train, '--fp16', 'float16 compute with loss scaling')
    _flag(train, '--gradient_checkpointing', 'recompute LLM activations')
    train.add_argument('--logging_steps', type=int, default=1)
    train.add_argument('--save_steps', type=int, default=0,
                       help='checkpoint every N steps (0: only at the end)')
    train.add_argument('--resume_from_checkpoint', default=None,
                       help='a checkpoint-N folder, or "auto" for the latest '
                       'in --output_dir')
    train.add_argument('--seed', type=int, default=42)
    # The deepspeed launcher appends --local_rank=N.
    train.add_argument('--local_rank', '--local-rank', type=int, default=-1)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.bf16 and args.fp16:
        raise SystemExit('--bf16 and --fp16 are mutually exclusive')
    from plugins.llava.trainer import train
    summary = train(args)
    first, last = summary.get('first'), summary.get('last')
    if first and last and os.environ.get('RANK', '0') == '0':
        print('[train_llava] steps {} | loss {:.4f} -> {:.4f} | loss_dice '
              '{:.4f} -> {:.4f} | checkpoint {}'.format(
                  summary['steps'], first['loss'], last['loss'],
                  first.get('loss_dice', float('nan')),
                  last.get('loss_dice', float('nan')),
                  summary['checkpoint']))
    return 0


if __name__ == '__main__':
    sys.exit(main())
