"""DeepSpeed training loop for the LLaVA-Phi segmentation model.

``tools/train_llava.py`` parses PSALM's argument names and calls
:func:`train`. Runs under the ``deepspeed`` launcher, ``torchrun`` or plain
``python`` (a single process then sets up its own one-rank process group);
on a machine without CUDA, DeepSpeed's CPU accelerator and the ``gloo``
backend are used.
"""
import json
import logging
import math
import os
import socket
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

from .config import LlavaSegConfig
from .data import ToyReferringSegDataset, collate_referring
from .ds_checkpoint import use_safe_loading
from .ds_config import resolve_ds_config
from .model import LlavaPhiSegModel, load_pretrained_phi
from .projector_summary import describe_projector
from .tokenizer import add_llava_tokens, build_toy_tokenizer

logger = logging.getLogger('plugins.llava.train')

LOSS_NAMES = ('loss', 'loss_llm', 'loss_mask', 'loss_dice')


# -- process group -----------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def init_distributed() -> Tuple[int, int]:
    """Initialise DeepSpeed's process group; return ``(rank, world_size)``.

    A plain ``python`` run gets the environment of a one-process group.
    Without CUDA the backend is ``gloo`` (DeepSpeed's CPU accelerator asks
    for oneCCL, which is only there with Intel's extension).
    """
    if 'RANK' not in os.environ:
        os.environ.update(RANK='0', LOCAL_RANK='0', WORLD_SIZE='1',
                          MASTER_ADDR='127.0.0.1',
                          MASTER_PORT=str(_free_port()))
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    backend = get_accelerator().communication_backend_name()
    if not torch.cuda.is_available():
        if backend == 'ccl':
            try:
                import oneccl_bindings_for_pytorch  # noqa: F401
            except ImportError:
                backend = 'gloo'
        # DeepSpeed JIT-compiles a shared-memory all-reduce op for its CPU
        # accelerator (about 2 minutes on 2 cores, again for every new
        # interpreter path). Its TorchBackend uses that op only for
        # `inference_all_reduce`; training reduces gradients through the
        # process group (gloo) in any case, so the build buys nothing here.
        import deepspeed.ops
        deepspeed.ops.__compatible_ops__['deepspeed_shm_comm'] = False
    deepspeed.init_distributed(dist_backend=backend)
    return dist.get_rank(), dist.get_world_size()


def setup_logging(rank: int, output_dir: Path) -> None:
    """INFO to stdout (rank 0) and to ``output_dir/train.log``."""
    fmt = logging.Formatter('%(asctime)s %(name)s %(levelname)s: %(message)s',
                            datefmt='%H:%M:%S')
    root = logging.getLogger('plugins')
    root.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    root.propagate = False
    for handler in list(root.handlers):
        root.removeHandler(handler)
    stream = logging.StreamHandler()
    stream.setFormatter(fmt)
    root.addHandler(stream)
    if rank == 0:
        output_dir.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(output_dir / 'train.log')
        file_handler.setFormatter(fmt)
        root.addHandler(file_handler)


# -- data --------------------------------------------------------------------
class _EpochSampler(Sampler):
    """This rank's shard of a seeded per-epoch permutation, from an offset.

    Resuming mid-epoch skips the indices already consumed without loading
    them.
    """

    def __init__(self, size: int, rank: int, world_size: int, seed: int):
        self.size, self.rank, self.world = size, rank, world_size
        self.seed, self.epoch, self.start = seed, 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def _indices(self) -> List[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.size, generator=g).tolist()
        per_rank = self.size // self.world  # drop the ragged tail
        return order[self.rank * per_rank:(self.rank + 1) * per_rank]

    def __iter__(self):
        return iter(self._indices()[self.start:])

    def __len__(self) -> int:
        return self.size // self.world - self.start


# -- model -------------------------------------------------------------------
def compute_dtype(args) -> torch.dtype:
    if args.bf16:
        return torch.bfloat16
    if args.fp16:
        return torch.float16
    return torch.float32


def build_tokenizer(args):
    """The toy word-level tokenizer, or a local tokenizer (e.g. Phi-1.5's)
    from ``--model_name_or_path`` with ``<image>``/``[SEG]`` added."""
    if not args.model_name_or_path:
        return build_toy_tokenizer()
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(
        args.model_name_or_path, local_files_only=True)
    add_llava_tokens(tokenizer)
    return tokenizer


def build_model(args, tokenizer) -> Tuple[LlavaPhiSegModel, LlavaSegConfig]:
    """Build the model from ``--model_config`` plus the projector arguments;
    with ``--model_name_or_path``, the LLM's config and weights come from
    that local folder."""
    overrides = dict(
        mm_projector_type=args.mm_projector_type,
        mm_hidden_dim=args.mm_hidden_dim, mm_n_heads=args.mm_n_heads,
        mm_n_points=args.mm_n_points, projector_outdim=args.projector_outdim,
        swin_type=args.swin_type, image_size=args.image_size,
        mm_num_tokens=args.mm_num_tokens)
    config = LlavaSegConfig.from_file(args.model_config, **overrides)
    config.image_token_id = tokenizer.convert_tokens_to_ids('<image>')
    config.seg_token_id = tokenizer.convert_tokens_to_ids('[SEG]')
    if args.model_name_or_path:
        from transformers import PhiConfig
        config.llm = PhiConfig.from_pretrained(
            args.model_name_or_path, local_files_only=True).to_dict()
    config.llm['vocab_size'] = max(int(config.llm['vocab_size']),
                                   len(tokenizer))
    config.llm['use_cache'] = False
    llm = None
    if args.model_name_or_path:
        llm = load_pretrained_phi(args.model_name_or_path,
                                  config.llm['vocab_size'])
    model = LlavaPhiSegModel(config, vision_dtype=compute_dtype(args), llm=llm)
    return model, config


def load_adapter(model: LlavaPhiSegModel, path: str):
    """``--pretrain_mm_mlp_adapter``: load with every key checked (PSALM's
    ``strict=False`` silently loads nothing on a name mismatch); return the
    loader's ``LoadResult``."""
    from .projector_weights import load_projector_weights
    result = load_projector_weights(model.mm_projector, path, strict=True)
    logger.info('pretrain_mm_mlp_adapter %s: loaded %d of %d mm_projector '
                'keys (missing %d, unexpected %d)', path, len(result.loaded),
                len(model.mm_projector.state_dict()), len(result.missing),
                len(result.unexpected))
    return result


def match_batchnorm_buffers(model: torch.nn.Module, dtype: torch.dtype) -> int:
    """Cast BatchNorm running statistics to the compute dtype.

    DeepSpeed 0.19 casts parameters, not buffers, to bf16/fp16 (so that
    buffers such as rotary ``inv_freq`` keep fp32). A BatchNorm (PSALM's
    ``swin_conv`` projector has three) then gets bf16 weights with fp32
    running statistics and fails (``expected scalar type BFloat16 but found
    Float``). Casting the statistics restores what ``module.bfloat16()`` did
    in the DeepSpeed versions PSALM was written for. Returns the number of
    BatchNorm layers changed.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) \
                and module.running_mean is not None:
            module.running_mean = module.running_mean.to(dtype)
            module.running_var = module.running_var.to(dtype)
            count += 1
    return count


def _param_groups(model: torch.nn.Module, weight_decay: float) -> List[dict]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith('.bias') else decay).append(p)
    return [dict(params=decay, weight_decay=weight_decay),
            dict(params=no_decay, weight_decay=0.0)]


def _lr_lambda(total_steps: int, warmup_steps: int):
    def fn(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    return fn


# -- checkpoints ---------------------------------------------------------------
def _resume_location(arg: str, output_dir: Path) -> Tuple[Path, Optional[str]]:
    """``auto``/``latest``/``true`` -> newest tag in ``output_dir``; a
    ``checkpoint-N`` folder -> (its parent, its name)."""
    if arg.lower() in ('auto', 'latest', 'true'):
        return output_dir, None
    path = Path(arg)
    if (path / 'latest').is_file():
        return path, None
    return path.parent, path.name


def export_weights(engine, out_dir: Path, zero_stage: int) -> None:
    """Write ``model.safetensors`` (every weight, for inference) and PSALM's
    ``mm_projector.bin`` (keys ``model.mm_projector.*``, the file
    ``--pretrain_mm_mlp_adapter`` and the adapter tool read)."""
    from plugins.utils import save_safetensors
    module = engine.module
    params = list(module.parameters())
    if zero_stage == 3:
        import deepspeed
        ctx = deepspeed.zero.GatheredParameters(params, modifier_rank=None)
    else:
        import contextlib
        ctx = contextlib.nullcontext()
    with ctx:
        if dist.get_rank() != 0:
            return
        state = {k: v.detach().float().cpu().contiguous().clone()
                 for k, v in module.state_dict().items()}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_safetensors(state, out_dir / 'model.safetensors')
    projector = {f'model.{k}': v for k, v in state.items()
                 if k.startswith('mm_projector.')}
    torch.save(projector, out_dir / 'mm_projector.bin')


def save_checkpoint(engine, output_dir: Path, step: int,
                    zero_stage: int) -> Path:
    tag = f'checkpoint-{step}'
    engine.save_checkpoint(str(output_dir), tag=tag,
                           client_state=dict(global_step=step))
    export_weights(engine, output_dir / tag, zero_stage)
    logger.info('saved %s', output_dir / tag)
    return output_dir / tag


# -- loop ----------------------------------------------------------------------
def _to_device(batch: dict, device) -> dict:
    return {k: v.to(device) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def _mean_over_ranks(values: Dict[str, float], world: int) -> Dict[str, float]:
    if world == 1:
        return values
    keys = sorted(values)
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / world for k, v in zip(keys, t)}


def _log_step(record: dict, total_steps: int) -> None:
    losses = ' | '.join(f'{k} {record[k]:.4f}' for k in LOSS_NAMES
                        if k in record)
    logger.info('step %d/%d | %s | lr %.2e | %.2f s/step', record['step'],
                total_steps, losses, record['lr'], record['sec_per_step'])


class LlavaTrainer:
    """Builds model, data and DeepSpeed engine from the parsed arguments of
    ``tools/train_llava.py``; :meth:`train` runs the loop.

    One optimizer step = ``gradient_accumulation_steps`` micro-batches of
    ``per_device_train_batch_size`` on every rank. ``metrics.jsonl`` in the
    output folder gets one record per step (losses averaged over the step's
    micro-batches and the ranks).
    """

    def __init__(self, args):
        self.args = args
        self.rank, self.world = init_distributed()
        self.output_dir = Path(args.output_dir)
        setup_logging(self.rank, self.output_dir)
        torch.manual_seed(args.seed)
        self.device = self._device()

        self.tokenizer = build_tokenizer(args)
        model, self.config = build_model(args, self.tokenizer)
        # The builder logs the deformable projector's type and settings as
        # it builds it; this line describes any type, with its size.
        logger.info(describe_projector(model.mm_projector, self.config))
        if args.pretrain_mm_mlp_adapter:
            load_adapter(model, args.pretrain_mm_mlp_adapter)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        logger.info('trainable parameters: %s (vision tower frozen: %s, %s)',
                    f'{model.trainable_parameter_count():,}',
                    self.config.freeze_vision_tower, model.vision_tower.dtype)

        self._build_data()
        self._build_engine(model)
        if self.rank == 0:
            self.config.save(self.output_dir / 'config.json')
            self.tokenizer.save_pretrained(str(self.output_dir / 'tokenizer'))
            with open(self.output_dir / 'ds_config.json', 'w') as f:
                json.dump(self.ds_config, f, indent=2)

    def _device(self) -> torch.device:
        from deepspeed.accelerator import get_accelerator
        accelerator = get_accelerator()
        if self.args.fp16 and not accelerator.is_fp16_supported():
            raise ValueError(f'--fp16 is not supported by DeepSpeed\'s '
                             f'{accelerator.device_name()} accelerator; use '
                             '--bf16 (fp16 needs a GPU)')
        return torch.device(accelerator.device_name(
            int(os.environ.get('LOCAL_RANK', 0))))

    def _build_data(self) -> None:
        args = self.args
        self.dataset = ToyReferringSegDataset(
            args.data_root, self.tokenizer, split='train',
            image_size=self.config.image_size, ann_file=args.ann_file)
        self.sampler = _EpochSampler(len(self.dataset), self.rank, self.world,
                                     args.seed)
        self.micro_bs = args.per_device_train_batch_size
        self.accum = args.gradient_accumulation_steps
        pad_id = self.tokenizer.pad_token_id
        self.loader = DataLoader(
            self.dataset, batch_size=self.micro_bs, sampler=self.sampler,
            drop_last=True, num_workers=args.dataloader_num_workers,
            collate_fn=lambda b: collate_referring(b, pad_id))
        self.micro_per_epoch = (len(self.dataset) // self.world) // self.micro_bs
        if self.micro_per_epoch == 0:
            raise ValueError(f'{len(self.dataset)} samples on {self.world} '
                             f'ranks give no batch of {self.micro_bs}')
        self.total_steps = args.max_steps if args.max_steps > 0 else math.ceil(
            args.num_train_epochs * self.micro_per_epoch / self.accum)

    def _build_engine(self, model: LlavaPhiSegModel) -> None:
        import deepspeed
        args = self.args
        if args.bf16 or args.fp16:
            match_batchnorm_buffers(model, compute_dtype(args))
        optimizer = torch.optim.AdamW(_param_groups(model, args.weight_decay),
                                      lr=args.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_lambda(self.total_steps,
                                  int(args.warmup_ratio * self.total_steps)))
        self.ds_config = resolve_ds_config(
            args.deepspeed, micro_batch_size=self.micro_bs,
            grad_accum_steps=self.accum, world_size=self.world,
            bf16=args.bf16, fp16=args.fp16,
            hidden_size=self.config.hidden_size,
            max_grad_norm=args.max_grad_norm)
        self.zero_stage = self.ds_config.get('zero_optimization',
                                             {}).get('stage', 0)
        self.engine, _, _, _ = deepspeed.initialize(
            model=model, optimizer=optimizer, lr_scheduler=self.scheduler,
            config=self.ds_config)

    def resume(self, location: str) -> int:
        """Load a DeepSpeed checkpoint (safely); return its step."""
        load_dir, tag = _resume_location(location, self.output_dir)
        use_safe_loading(self.engine)
        path, client = self.engine.load_checkpoint(str(load_dir), tag=tag)
        if path is None:
            raise FileNotFoundError(f'no DeepSpeed checkpoint in {load_dir} '
                                    f'(tag {tag or "latest"})')
        step = int(client['global_step'])
        logger.info('resumed from %s at step %d', path, step)
        return step

    def _forward_backward(self, batch: dict) -> Dict[str, float]:
        batch = _to_device(batch, self.device)
        out = self.engine(images=batch['pixel_values'],
                          input_ids=batch['input_ids'],
                          attention_mask=batch['attention_mask'],
                          labels=batch['labels'], masks=batch['masks'])
        self.engine.backward(out.loss)
        self.engine.step()
        values = {k: float(v) for k, v in out.losses.items()}
        values['loss'] = float(out.loss.detach())
        return values

    def train(self) -> dict:
        """Run to ``total_steps``; return the first/last step records."""
        args, step = self.args, 0
        if args.resume_from_checkpoint:
            step = self.resume(args.resume_from_checkpoint)
        logger.info('training %d steps (%d samples, micro batch %d x accum %d '
                    'x %d ranks, ZeRO-%d, %s) on %s', self.total_steps,
                    len(self.dataset), self.micro_bs, self.accum, self.world,
                    self.zero_stage, compute_dtype(args), self.device)
        history: List[dict] = []
        consumed = step * self.accum  # micro-batches already trained on
        epoch, offset = divmod(consumed, self.micro_per_epoch)
        running: Dict[str, float] = {}
        tic = time.time()
        self.engine.train()
        while step < self.total_steps:
            self.sampler.set_epoch(epoch, start=offset * self.micro_bs)
            for batch in self.loader:
                for k, v in self._forward_backward(batch).items():
                    running[k] = running.get(k, 0.0) + v / self.accum
                consumed += 1
                if consumed % self.accum:
                    continue
                step += 1
                record = _mean_over_ranks(running, self.world)
                running = {}
                record.update(step=step, lr=self.scheduler.get_last_lr()[0],
                              sec_per_step=time.time() - tic)
                tic = time.time()
                history.append(record)
                self._record(record)
                if args.save_steps > 0 and step % args.save_steps == 0 \
                        and step < self.total_steps:
                    save_checkpoint(self.engine, self.output_dir, step,
                                    self.zero_stage)
                if step >= self.total_steps:
                    break
            epoch, offset = epoch + 1, 0
        if history:
            final = save_checkpoint(self.engine, self.output_dir, step,
                                    self.zero_stage)
        else:  # resumed at or past the last step: nothing new to save
            final = self.output_dir / f'checkpoint-{step}'
            logger.info('nothing to train: already at step %d of %d', step,
                        self.total_steps)
        summary = dict(steps=step, checkpoint=str(final))
        if history:
            summary.update(first=history[0], last=history[-1])
        return summary

    def _record(self, record: dict) -> None:
        step = record['step']
        if step % self.args.logging_steps == 0 or step in (1, self.total_steps):
            _log_step(record, self.total_steps)
        if self.rank == 0:
            with open(self.output_dir / 'metrics.jsonl', 'a') as f:
                f.write(json.dumps(record) + '\n')


def train(args) -> dict:
    """Train with the parsed ``tools/train_llava.py`` arguments; return a
    summary (``steps``, ``checkpoint``, ``first``/``last`` step records)."""
    return LlavaTrainer(args).train()
