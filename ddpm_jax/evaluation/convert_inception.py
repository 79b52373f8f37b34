"""Convert pytorch-fid's FID Inception weights (.pth) to the `.npz` that `load_inception_params` reads.

    python -m ddpm_jax.evaluation.convert_inception pt_inception-2015-12-05-6726825d.pth OUT.npz

Needs torch (only here). The npz keeps pytorch-fid's state-dict names and layouts; the weights are checked against
`InceptionV3FID` before anything is written, and the npz records the input's sha256, which is the weights hash that
stats files carry whichever of the two files is used (pytorch-fid's file name carries its first 8 hex digits,
6726825d). Prints it and the number of tensors.
"""
import argparse

import numpy as np

from ddpm_jax.models.inception import SOURCE_KEY, params_from_torch_state_dict, read_torch_state_dict, sha256_of


def save_state_dict_npz(state_dict: dict, out_path: str, source_sha256: str = None) -> int:
    """Check `state_dict` against the network and write it as a flat npz (keys = torch names, plus the source's
    sha256 when given); returns the number of tensors."""
    params_from_torch_state_dict(state_dict)
    extra = {SOURCE_KEY: np.asarray(source_sha256)} if source_sha256 else {}
    np.savez(out_path, **{k: np.asarray(v) for k, v in state_dict.items()}, **extra)
    return len(state_dict)


def convert(in_path: str, out_path: str) -> tuple[str, int]:
    """Convert one `.pth` file; returns (sha256 of the input, number of tensors written)."""
    digest = sha256_of(in_path)
    return digest, save_state_dict_npz(read_torch_state_dict(in_path), out_path, digest)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("input", help="pytorch-fid weights, e.g. pt_inception-2015-12-05-6726825d.pth")
    parser.add_argument("output", help="output .npz")
    args = parser.parse_args(argv)
    digest, count = convert(args.input, args.output)
    print(f"{args.input}: sha256 {digest} (the weights hash stats files record, recorded in {args.output} too)")
    print(f"wrote {count} tensors to {args.output}")


if __name__ == "__main__":
    main()
