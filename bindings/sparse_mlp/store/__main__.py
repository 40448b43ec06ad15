"""python3 -m sparse_mlp.store {convert IN OUT | info FILE}"""

import argparse
import sys

from sparse_mlp import store


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python3 -m sparse_mlp.store",
                                     description="sparse_mlp neuron-bundle weight files")
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="a checkpoint's MLP weights to a bundle file")
    c.add_argument("source", help="llama2.c .bin, safetensors file, directory or index.json")
    c.add_argument("output", help="the bundle file to write")
    c.add_argument("--dtype", choices=["float32", "bfloat16", "float16", "int8", "q4"],
                   default=None,
                   help="convert or quantize the weights (default: keep their type)")
    c.add_argument("--group", type=int, default=32,
                   help="int8 / q4: weights per scale along H (int8: 0 = the whole row)")
    c.add_argument("--alignment", type=int, default=None,
                   help="bundle alignment (default 4096; 512 for int8 / q4)")
    c.add_argument("--neurons", default=None, help="a slice BEGIN:END of each layer's neurons")
    c.add_argument("--threads", type=int, default=1)
    i = sub.add_parser("info", help="a bundle file's header")
    i.add_argument("file")
    args = parser.parse_args(argv)
    try:
        if args.command == "convert":
            neurons = None
            if args.neurons:
                begin, end = args.neurons.split(":")
                neurons = (int(begin), int(end))
            layout = store.convert(args.source, args.output, dtype=args.dtype,
                                   alignment=args.alignment, neurons=neurons,
                                   num_threads=args.threads, progress=sys.stderr.isatty(),
                                   group=args.group)
            print(f"wrote {args.output}: {layout['num_layers']} layers x "
                  f"{layout['intermediate_size']} neurons, {layout['dtype']}, "
                  f"{layout['file_bytes'] / 1e6:.1f} MB")
        else:
            for key, value in store.info(args.file).items():
                print(f"{key:<24} {value}")
    except (OSError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
