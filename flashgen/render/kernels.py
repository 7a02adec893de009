"""Checked spec + tile plan -> the kernel translation units of one (dtype, head dim).

Each unit includes the spec's variant.cuh and one kernel header from
templates/kernels/, instantiates the kernel with the plan's tile sizes, and exports
an extern "C" launcher. No torch header is included anywhere: the units compile with
plain nvcc, and the host calls them through ctypes (flashgen/runtime/launch.py)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .. import resources
from ..ir.nodes import AttentionSpec
from ..plan.tiles import DEFAULT_ARCH, BackwardPlan, ForwardPlan, TileOverride, plan_for
from .tile_class import scans_tables
from .variant import environment, render_variant

C_DTYPES = {"fp16": "__half", "bf16": "__nv_bfloat16"}
PASSES = ("forward", "backward")


@dataclass(frozen=True)
class KernelView:
    name: str
    namespace: str
    source_path: str
    pass_name: str
    dtype: str
    c_dtype: str
    d: int
    dv: int
    dropout: bool
    runtime_tiles: bool   # export flashgen_tile_classes (tile_class.scans_tables)
    arch: str
    variant: str          # Variant, or FramedVariant for shards of a sequence (frame.cuh)
    variant_note: str
    fwd: ForwardPlan
    bwd: BackwardPlan
    plan: tuple[str, ...]


def unit_name(pass_name: str, dtype: str, head_dim: int) -> str:
    return f"{pass_name}_{dtype}_d{head_dim}.cu"


VARIANTS = {False: ("Variant", "whole sequences"),
            True: ("FramedVariant", "shards of longer sequences (common/frame.cuh)")}


def render_units(spec: AttentionSpec, source_path: str, dtype: str, head_dim: int,
                 tiles: TileOverride | None = None, arch: str = DEFAULT_ARCH,
                 framed: bool = False) -> dict[str, str]:
    """{file name: text} of the forward and backward units of one (dtype, head dim),
    planned for `arch` (its shared memory decides the backward's Q/dO stages). framed:
    the kernels of shards (context parallelism), which map indices through a Frame."""
    dv = spec.value_dim_for(head_dim)
    plan = plan_for(spec, head_dim, tiles, arch)
    units = {}
    for pass_name in PASSES:
        view = KernelView(spec.name, f"fg_{spec.name}", source_path, pass_name, dtype,
                          C_DTYPES[dtype], head_dim, dv, spec.dropout, scans_tables(spec), arch,
                          *VARIANTS[framed], plan.forward,
                          plan.backward, tuple(plan.describe()))
        text = environment().get_template(f"kernels/{pass_name}.cu.j2").render(k=view)
        units[unit_name(pass_name, dtype, head_dim)] = text.rstrip() + "\n"
    return units


def support_headers(root: Path | None = None) -> dict[str, str]:
    """The hand-written headers, under the names the units include them by: common/ at
    the top (expr.cuh, interval.cuh), kernels/ as kernels/*.cuh. root: another templates
    folder's (an A/B against another tree, tests/gpu/switch_ab.py)."""
    root = root or resources.templates_dir()
    headers = {p.name: p.read_text() for p in sorted((root / "common").glob("*.cuh"))}
    headers.update({f"kernels/{p.name}": p.read_text()
                    for p in sorted((root / "kernels").glob("*.cuh"))})
    return headers


def render_module(spec: AttentionSpec, source_path: str, dtype: str, head_dim: int,
                  tiles: TileOverride | None = None, arch: str = DEFAULT_ARCH,
                  framed: bool = False) -> dict[str, str]:
    """Every source of one build module, headers included (they are part of its hash)."""
    return {**support_headers(), "variant.cuh": render_variant(spec, source_path),
            **render_units(spec, source_path, dtype, head_dim, tiles, arch, framed)}
