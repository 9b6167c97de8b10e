"""Convert an official PyTorch checkpoint into an orbax checkpoint that lgvit loads.

    python -m lgvit.convert --model nommer_t --checkpoint nommer_t.pth --out /ckpt/nommer_t
    python main.py --config=configs/nommer_t.py --workdir=... --config.init_from=/ckpt/nommer_t

`.pth` needs PyTorch installed; `.npz` and `.safetensors` do not. A `.pth` is read with
`torch.load(weights_only=True)`: tensors and plain containers only, so opening a file from an
unknown source runs no code. One that needs full unpickling is refused unless `--trust-pickle`.
"""
import argparse
import json
import os
import sys

from lgvit import checkpoint, cli, cpu_kernels
from lgvit.convert import ConversionError, from_torch, load_state_dict_file, strip_prefix


def main(argv=None):
  cpu_kernels.use()  # before the first JAX computation: XLA reads XLA_FLAGS when its CPU client starts
  parser = argparse.ArgumentParser(prog='python -m lgvit.convert', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', required=True, help='registered lgvit model name')
  parser.add_argument('--checkpoint', required=True, help='.pth/.pt, .npz or .safetensors state_dict')
  parser.add_argument('--out', required=True, help='output directory (orbax)')
  parser.add_argument('--num_classes', type=int, default=None)
  parser.add_argument('--image_size', type=int, default=None, help='input size of the target model')
  parser.add_argument('--model_kwargs', default='{}', help='JSON dict of create_model overrides')
  parser.add_argument('--ema', action='store_true', help='take the EMA weights of a training checkpoint')
  parser.add_argument('--trust-pickle', '--trust_pickle', dest='trust_pickle', action='store_true',
                      help='unpickle a .pth in full (torch.load weights_only=False). A pickle can run any code '
                      'on this machine when it is opened: only for files from a source you trust. Without it, '
                      '.pth files are read with weights_only=True and a file that needs more is refused.')
  args = parser.parse_args(argv)
  cli.quiet_logs()
  return cli.report_errors(lambda: convert(args))


def convert(args):
  try:
    overrides = json.loads(args.model_kwargs)
  except json.JSONDecodeError as e:
    raise ConversionError(f'--model_kwargs is not a JSON dict ({e})') from None
  if not isinstance(overrides, dict):
    raise ConversionError(f'--model_kwargs is a JSON {type(overrides).__name__}, not a dict '
                          '(e.g. \'{"drop_path_rate": 0.1}\')')
  if os.path.exists(args.out) and (not os.path.isdir(args.out) or os.listdir(args.out)):
    raise ConversionError(f'--out {args.out} already exists and is not empty; give a new directory (nothing '
                          'was written)')
  state_dict = load_state_dict_file(args.checkpoint, prefer_ema=args.ema, trust_pickle=args.trust_pickle)
  if args.num_classes is None:
    heads = [v.shape[0] for k, v in state_dict.items()
             if strip_prefix(k) in ('fc.bias', 'mlp_head.1.bias', 'head.bias', 'head.fc.bias')]
    args.num_classes = heads[0] if heads else 1000
  variables = from_torch(args.model, state_dict, image_size=args.image_size, num_classes=args.num_classes,
                         **overrides)
  checkpoint.save_variables(args.out, variables, {'model': args.model, 'num_classes': args.num_classes,
                                                  'source': args.checkpoint, 'model_kwargs': overrides})
  print(f'wrote {args.out}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
